"""``inferpipe executions list|show`` against the local stack, as an operator looks at what happened."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from inferpipe.cli import main
from tests.e2e.conftest import image_bytes, run_upload

SINKS = ("s3", "dynamodb", "sns", "sqs", "eventbridge")


def _show(stack: Any, name: str, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    assert main(["executions", "show", name, "--json", "--endpoint-url", stack.endpoint_url]) == 0
    return json.loads(capsys.readouterr().out)


def test_show_gives_a_succeeded_executions_path_records_and_log_lines(
    stack: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    key = f"executions/{uuid.uuid4().hex[:8]} ok.jpg"
    final = run_upload(stack, key, image_bytes("circle", seed=4))
    assert final["status"] == "SUCCEEDED"

    # WHEN the operator shows it by name
    shown = _show(stack, final["name"], capsys)

    # THEN it names its object, and the path through the states in order, each with its duration
    assert shown["status"] == "SUCCEEDED" and shown["arn"] == final["executionArn"]
    assert [(o["bucket"], o["key"]) for o in shown["objects"]] == [(stack.resources.buckets["input"], key)]
    top = [s["name"] for s in shown["steps"] if s["iteration"] is None]
    assert top == ["Preprocess", "AnyReady", "Inference", "FanOut", "Outcome", "Done"]
    assert all(s["outcome"] == "succeeded" and s["seconds"] is not None and s["seconds"] >= 0 for s in shown["steps"])
    # AND each sink's delivery under its Map iteration, one iteration per sink
    delivers = sorted(s["iteration"] for s in shown["steps"] if s["name"] == "Deliver")
    assert delivers == list(range(len(SINKS)))
    fan_out = next(s for s in shown["steps"] if s["name"] == "FanOut")
    assert fan_out["seconds"] >= max(s["seconds"] for s in shown["steps"] if s["name"] == "Deliver")
    # AND nothing failed
    assert shown["error"] is None and shown["failed_state"] is None
    # AND the prediction this execution wrote
    (prediction,) = [r for r in shown["records"] if r["kind"] == "prediction"]
    assert prediction["by_this_execution"] and prediction["summary"].startswith("circle ")
    # AND the log lines of its three functions, with Lambda's REPORT line of each invocation
    functions = {line["function"] for line in shown["log_lines"]}
    assert functions == {"preprocess", "inference", "sink"}, functions
    mine = [json.loads(line["message"]) for line in shown["log_lines"] if line["message"].startswith("{")]
    assert mine and all(m["execution_id"] == final["executionArn"] for m in mine)
    assert any(line["message"].startswith("REPORT RequestId:") for line in shown["log_lines"])

    # AND the text form says the same, one line a state
    assert main(["executions", "show", final["executionArn"], "--endpoint-url", stack.endpoint_url]) == 0
    text = capsys.readouterr().out
    assert f"execution  {final['name']}  SUCCEEDED" in text and "  [3] Deliver" in text and "REPORT RequestId:" in text


def test_show_names_where_a_failed_execution_stopped_its_input_and_a_clean_error(
    stack: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    key = f"executions/{uuid.uuid4().hex[:8]} down.jpg"
    # GIVEN SQS refuses every send for this object for good (a deleted queue)
    final = run_upload(stack, key, image_bytes("square", seed=5), sqs_down=True)
    assert final["status"] == "FAILED" and final["error"] == "SinkUnavailableError"

    shown = _show(stack, final["name"], capsys)

    # THEN it stopped at FanOut, in the sqs iteration's Deliver, with the input FanOut was entered with
    assert shown["failed_state"] == "FanOut > Deliver"
    assert set(shown["failed_input"]) >= {"inference", "sinks"} and "sqs" in shown["failed_input"]["sinks"]
    failed = [s for s in shown["steps"] if s["outcome"] == "failed"]
    assert {s["name"] for s in failed} == {"FanOut", "Deliver"}
    # AND the error is its type and message, without Lambda's stack trace or file paths
    assert shown["error"]["type"] == "SinkUnavailableError" and "sink 'sqs'" in shown["error"]["message"]
    assert "stackTrace" not in shown["error"]["message"] and ".py" not in shown["error"]["message"]
    # AND the execution's own Cause, as the Step Functions console shows it, has no stack trace
    cause = json.loads(final["cause"])
    assert cause["errorType"] == "SinkUnavailableError" and cause["stackTrace"] == [], cause
    assert "sink 'sqs'" in cause["errorMessage"]
    # AND the failure record the status recorder wrote for it
    assert any(r["kind"] == "failure" and r["by_this_execution"] for r in shown["records"]), shown["records"]

    # AND the list of failed executions has it, with the same clean error; --key narrows the list
    assert (
        main(
            [
                "executions",
                "list",
                "--status",
                "FAILED",
                "--key",
                key.split("/")[1],
                "--json",
                "--endpoint-url",
                stack.endpoint_url,
            ]
        )
        == 0
    )
    (row,) = json.loads(capsys.readouterr().out)
    assert row["arn"] == final["executionArn"] and row["status"] == "FAILED"
    assert row["error"] == shown["error"] and row["objects"] == [f"s3://{stack.resources.buckets['input']}/{key}"]
    assert (
        main(
            [
                "executions",
                "list",
                "--status",
                "SUCCEEDED",
                "--key",
                key.split("/")[1],
                "--json",
                "--endpoint-url",
                stack.endpoint_url,
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out) == []


def test_show_of_an_unknown_execution_and_a_bad_status_are_clear_errors(
    stack: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["executions", "show", "no-such-execution", "--endpoint-url", stack.endpoint_url]) == 2
    assert "no execution 'no-such-execution'" in capsys.readouterr().err
    assert main(["executions", "list", "--status", "BROKEN", "--endpoint-url", stack.endpoint_url]) == 2
    assert "unknown status BROKEN" in capsys.readouterr().err
