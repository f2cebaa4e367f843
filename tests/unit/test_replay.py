"""Replay selection (pure) and the RedriveExecution request path (botocore Stubber on a real client)."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

import boto3
import pytest
from botocore.stub import ANY, Stubber

from inferpipe.replay import (
    Execution,
    client_token,
    parse_duration,
    parse_statuses,
    plan_replays,
    replay_name,
    run_replays,
    split_replay_name,
)

NOW = datetime(2025, 1, 2, 12, 0, tzinfo=UTC)
MACHINE = "arn:aws:states:us-east-1:123456789012:stateMachine:inferpipe-pipeline"


def _ex(name: str, status: str, minutes_ago: float) -> Execution:
    return Execution(
        f"{MACHINE.replace(':stateMachine:', ':execution:')}:{name}", name, status, NOW - timedelta(minutes=minutes_ago)
    )


def test_durations_and_statuses() -> None:
    assert parse_duration("24h") == timedelta(hours=24)
    assert parse_duration("1h30m") == timedelta(minutes=90)
    assert parse_duration("7d") == timedelta(days=7)
    for bad in ("", "yesterday", "10x", "5"):
        with pytest.raises(ValueError):
            parse_duration(bad)
    assert parse_statuses("failed, TIMED_OUT") == ("FAILED", "TIMED_OUT")
    with pytest.raises(ValueError):
        parse_statuses("SUCCEEDED")


def test_replay_names_link_to_the_original_and_stay_valid() -> None:
    assert replay_name("abc", 1) == "abc-r1"
    assert split_replay_name("abc-r12") == ("abc", 12)
    assert split_replay_name("abc") == ("abc", 0)
    long = "x" * 80
    name = replay_name(long, 3)
    assert len(name) == 80 and name.endswith("-r3")
    assert replay_name("a b:c/d", 1) == "a_b_c_d-r1"


def test_failed_executions_in_the_window_are_replayed_once_with_the_next_number() -> None:
    executions = [
        _ex("old", "FAILED", 60 * 30),  # outside --since
        _ex("a", "FAILED", 50),
        _ex("b", "TIMED_OUT", 40),
        _ex("b-r1", "FAILED", 30),  # a failed replay: replay b again, as b-r2
        _ex("ok", "SUCCEEDED", 20),
        _ex("c", "ABORTED", 10),
    ]
    plan = plan_replays(executions, statuses=("FAILED", "TIMED_OUT", "ABORTED"), since=NOW - timedelta(hours=24))
    assert [(d.execution.name, d.action, d.new_name) for d in plan] == [
        ("a", "replay", "a-r1"),
        ("b", "replay", "b-r2"),
        ("c", "replay", "c-r1"),
    ]


def test_executions_replayed_successfully_or_still_replaying_are_skipped_with_the_reason() -> None:
    executions = [
        _ex("a", "FAILED", 50),
        _ex("a-r1", "SUCCEEDED", 40),
        _ex("b", "FAILED", 30),
        _ex("b-r1", "RUNNING", 1),
    ]
    plan = {d.execution.name: d for d in plan_replays(executions, since=NOW - timedelta(hours=1))}
    assert plan["a"].action == "skip" and "already replayed successfully (a-r1)" in plan["a"].reason
    assert plan["b"].action == "skip" and "still running (b-r1)" in plan["b"].reason


def test_only_restricts_to_named_executions_whatever_their_age() -> None:
    executions = [_ex("a", "FAILED", 60 * 24 * 3), _ex("b", "FAILED", 5), _ex("s", "SUCCEEDED", 5)]
    plan = plan_replays(
        executions, since=NOW - timedelta(hours=1), only=[executions[0].arn, executions[2].arn, "arn:x:gone"]
    )
    actions = {d.execution.name: (d.action, d.reason) for d in plan}
    assert actions["a"] == ("replay", "")
    assert actions["s"][0] == "skip" and "succeeded" in actions["s"][1]
    assert actions["gone"][0] == "skip" and "no such execution" in actions["gone"][1]
    assert "b" not in actions


def _sfn() -> object:
    return boto3.session.Session().client(
        "stepfunctions", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
    )


def test_redrive_calls_redrive_execution_with_an_idempotency_token() -> None:
    sfn = _sfn()
    (decision,) = plan_replays([_ex("a", "FAILED", 5)])
    described = {
        "executionArn": decision.execution.arn,
        "stateMachineArn": MACHINE,
        "status": "FAILED",
        "startDate": NOW,
        "input": "{}",
        "redriveStatus": "REDRIVABLE",
        "redriveCount": 2,
    }
    with Stubber(sfn) as stub:
        stub.add_response("describe_execution", described, {"executionArn": decision.execution.arn})
        stub.add_response(
            "redrive_execution",
            {"redriveDate": NOW},
            {"executionArn": decision.execution.arn, "clientToken": client_token(decision.execution.arn, 2)},
        )
        summary = run_replays(sfn, MACHINE, [decision], mode="redrive", wait=False, out=io.StringIO())
        stub.assert_no_pending_responses()
    assert [(o.how, o.arn) for o in summary.replayed] == [("redriven", decision.execution.arn)]


@pytest.mark.parametrize("refusal", ["status", "api"])
def test_an_execution_that_cannot_be_redriven_is_restarted_and_says_why(refusal: str) -> None:
    sfn = _sfn()
    (decision,) = plan_replays([_ex("a", "FAILED", 5)])
    described = {
        "executionArn": decision.execution.arn,
        "stateMachineArn": MACHINE,
        "status": "FAILED",
        "startDate": NOW,
        "input": '{"bucket": "b", "key": "k"}',
        "redriveStatus": "NOT_REDRIVABLE" if refusal == "status" else "REDRIVABLE",
        "redriveStatusReason": "Execution is older than 14 days",
    }
    new_arn = decision.execution.arn + "-r1"
    with Stubber(sfn) as stub:
        stub.add_response("describe_execution", described, {"executionArn": decision.execution.arn})
        if refusal == "api":
            stub.add_client_error(
                "redrive_execution",
                "ExecutionNotRedrivable",
                "Execution can't be redriven",
                400,
                expected_params={"executionArn": decision.execution.arn, "clientToken": ANY},
            )
        stub.add_response(
            "start_execution",
            {"executionArn": new_arn, "startDate": NOW},
            {"stateMachineArn": MACHINE, "name": "a-r1", "input": '{"bucket": "b", "key": "k"}'},
        )
        summary = run_replays(sfn, MACHINE, [decision], mode="redrive", wait=False, out=io.StringIO())
        stub.assert_no_pending_responses()
    (outcome,) = summary.replayed
    assert outcome.how == "restarted" and outcome.arn == new_arn
    expected = "older than 14 days" if refusal == "status" else "ExecutionNotRedrivable"
    assert expected in outcome.note and "restarted instead" in outcome.note


def _entered(name: str, kind: str = "TaskStateEntered", event_id: int = 1) -> dict[str, object]:
    return {"timestamp": NOW, "type": kind, "id": event_id, "stateEnteredEventDetails": {"name": name}}


@pytest.mark.parametrize(
    ("last_state", "kind", "expected"),
    [
        ("Deliver", "TaskStateEntered", "redriven"),  # a sink that stayed down: the execution stopped there
        ("PipelineFailed", "FailStateEntered", "restarted"),  # the input is at fault: a redrive would fail again
    ],
)
def test_auto_redrives_what_stopped_at_a_task_and_restarts_what_ended_in_pipeline_failed(
    last_state: str, kind: str, expected: str
) -> None:
    sfn = _sfn()
    (decision,) = plan_replays([_ex("a", "FAILED", 5)])
    arn = decision.execution.arn
    described = {
        "executionArn": arn,
        "stateMachineArn": MACHINE,
        "status": "FAILED",
        "startDate": NOW,
        "input": "{}",
        "redriveStatus": "REDRIVABLE",
        "redriveCount": 0,
        "error": "SinkUnavailableError" if kind == "TaskStateEntered" else "NotAnImageError",
    }
    # its history newest first, as GetExecutionHistory answers reverseOrder
    history = [
        {"timestamp": NOW, "type": "ExecutionFailed", "id": 9},
        _entered(last_state, kind, 8),
        _entered("Inference", event_id=5),
    ]
    with Stubber(sfn) as stub:
        stub.add_response("describe_execution", described, {"executionArn": arn})
        stub.add_response("get_execution_history", {"events": history}, {"executionArn": arn, "reverseOrder": True})
        if expected == "redriven":
            stub.add_response(
                "redrive_execution", {"redriveDate": NOW}, {"executionArn": arn, "clientToken": client_token(arn, 0)}
            )
        else:
            stub.add_response(
                "start_execution",
                {"executionArn": arn + "-r1", "startDate": NOW},
                {"stateMachineArn": MACHINE, "name": "a-r1", "input": "{}"},
            )
        out = io.StringIO()
        summary = run_replays(sfn, MACHINE, [decision], wait=False, out=out)  # mode auto is the default
        stub.assert_no_pending_responses()
    (outcome,) = summary.replayed
    assert outcome.how == expected
    # AND the progress line says why
    if expected == "redriven":
        assert outcome.arn == arn and "stopped at Deliver (SinkUnavailableError)" in out.getvalue()
    else:
        assert (
            outcome.arn == arn + "-r1"
            and "ended in PipelineFailed" in out.getvalue()
            and "would fail again" in outcome.note
        )


def _s3_event(version: str, sequencer: str) -> str:
    import json

    return json.dumps(
        {
            "version": "0",
            "detail-type": "Object Created",
            "source": "aws.s3",
            "detail": {
                "bucket": {"name": "in-bucket"},
                "object": {"key": "a b.jpg", "version-id": version, "sequencer": sequencer, "size": 10},
            },
        }
    )


def test_an_execution_whose_object_has_a_newer_version_that_succeeded_is_superseded() -> None:
    import json

    from moto import mock_aws

    from functions.sink.records import latest_key
    from inferpipe.replay import superseded

    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="out")
        # GIVEN nothing recorded yet: nothing supersedes the execution
        assert superseded(s3, "out", "predictions/", _s3_event("v1", "0A")) is None
        # GIVEN the key's latest prediction is of version v2, whose event came after v1's
        record = {
            "status": "SUCCEEDED",
            "source": {"bucket": "in-bucket", "key": "a b.jpg", "version_id": "v2", "sequencer": "0B"},
        }
        s3.put_object(
            Bucket="out", Key=latest_key("predictions/", "in-bucket", "a b.jpg"), Body=json.dumps(record).encode()
        )
        # THEN v1's execution is superseded, saying by what; v2's and a later v3's are not
        assert (
            superseded(s3, "out", "predictions/", _s3_event("v1", "0A"))
            == "s3://in-bucket/a b.jpg has a newer version (v2) that succeeded"
        )
        assert superseded(s3, "out", "predictions/", _s3_event("v2", "0B")) is None
        assert superseded(s3, "out", "predictions/", _s3_event("v3", "0C")) is None
        # AND a hand-typed input without a version (it reads the current one) never is
        assert superseded(s3, "out", "predictions/", json.dumps({"bucket": "in-bucket", "key": "a b.jpg"})) is None
        assert superseded(s3, "out", "predictions/", "not json") is None
