"""The whole pipeline on the local stack: S3 upload -> EventBridge -> Step Functions -> Lambdas -> sinks."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from tests.e2e.conftest import (
    DEMO_MODEL_DIR,
    batch_entry,
    direct_top1,
    executions_for_key,
    history,
    image_bytes,
    wait_for_execution,
)

ALL_SINKS = ("s3", "dynamodb", "sns", "sqs", "eventbridge")


def _upload(stack: Any, key: str, data: bytes) -> str | None:
    answer = stack.client("s3").put_object(Bucket=stack.resources.buckets["input"], Key=key, Body=data)
    return answer.get("VersionId")


def _task_attempts(events: list[dict[str, Any]], state: str) -> int:
    """How many times a Task state scheduled its Lambda (1 = no retry)."""
    entered = [
        e["id"] for e in events if e["type"] == "TaskStateEntered" and e["stateEnteredEventDetails"]["name"] == state
    ]
    if not entered:
        return 0
    # Until the next state is entered (the failure-recording task schedules a Lambda too).
    left = min((e["id"] for e in events if e["id"] > entered[0] and e["type"].endswith("StateEntered")), default=10**9)
    return sum(1 for e in events if e["type"] == "LambdaFunctionScheduled" and entered[0] < e["id"] < left)


@pytest.mark.parametrize("label", ["circle", "checkerboard"])
def test_upload_is_classified_into_every_sink_once(stack: Any, sinks: Any, label: str) -> None:
    # GIVEN an image of a known class
    data = image_bytes(label, seed=11)
    key = f"e2e/{label} {uuid.uuid4().hex[:6]} é+%.jpg"

    # WHEN it is uploaded to the input bucket
    version_id = _upload(stack, key, data)

    # THEN S3 -> EventBridge starts exactly one execution, which succeeds
    executions = executions_for_key(stack, key)
    assert len(executions) == 1
    final = wait_for_execution(stack, executions[0]["executionArn"])
    assert final["status"] == "SUCCEEDED", final.get("cause")
    output = json.loads(final["output"])
    assert (output["objects"], output["succeeded"], output["failed"]) == (1, 1, 0)
    prediction = batch_entry(stack, final["executionArn"], key)["prediction"]
    expected = direct_top1(DEMO_MODEL_DIR, data)
    assert prediction["top_k"][0]["label"] == expected == label
    assert prediction["model"]["version"] == stack.demo_version

    # AND every configured sink holds exactly one record with that top-1, model version and object version
    records = sinks.records(stack.resources.buckets["input"], key)
    for sink in ALL_SINKS:
        assert len(records[sink]) == 1, f"{sink} holds {len(records[sink])} records for {key}"
    for sink in ("s3", "sns", "sqs", "eventbridge"):
        record = records[sink][0]
        assert record["top1"]["label"] == expected
        assert record["model"]["version"] == stack.demo_version
        assert record["source"]["version_id"] == version_id
        assert record["execution_id"] == final["executionArn"]
    item = records["dynamodb"][0]
    assert item["label"]["S"] == expected and item["version"]["S"] == version_id


def test_an_s3_event_delivered_twice_is_classified_and_published_once(stack: Any, sinks: Any) -> None:
    # GIVEN an upload whose execution succeeded
    key = f"e2e/twice {uuid.uuid4().hex[:6]}.jpg"
    version_id = _upload(stack, key, image_bytes("ring", seed=12))
    (first,) = executions_for_key(stack, key)
    first = wait_for_execution(stack, first["executionArn"])
    assert first["status"] == "SUCCEEDED", first.get("cause")

    # WHEN EventBridge delivers the same event again (at-least-once): a second execution with that input
    sfn = stack.client("stepfunctions")
    second = sfn.start_execution(stateMachineArn=stack.state_machine_arn, input=first["input"])["executionArn"]
    second = wait_for_execution(stack, second)

    # THEN it succeeds with nothing to do, counting the object as a duplicate
    assert second["status"] == "SUCCEEDED", second.get("cause")
    output = json.loads(second["output"])
    assert (output["objects"], output["succeeded"], output["failed"], output["duplicates"]) == (0, 0, 0, 1)
    entered = [
        e["stateEnteredEventDetails"]["name"]
        for e in history(stack, second["executionArn"])
        if e["type"].endswith("StateEntered")
    ]
    assert entered == ["Preprocess", "AnyReady", "AllDuplicates"]
    # AND every sink still holds exactly one record, the first execution's
    records = sinks.records(stack.resources.buckets["input"], key)
    for sink in ALL_SINKS:
        assert len(records[sink]) == 1, f"{sink} holds {len(records[sink])} records for {key}"
    assert records["sns"][0]["execution_id"] == first["executionArn"]
    assert records["sns"][0]["source"]["version_id"] == version_id


def test_state_payloads_carry_references_not_pixels(stack: Any) -> None:
    # GIVEN a large photo-sized upload
    data = image_bytes("ring", size=(2400, 1800), seed=3)
    key = f"e2e/big-{uuid.uuid4().hex[:6]}.jpg"
    _upload(stack, key, data)
    final = wait_for_execution(stack, executions_for_key(stack, key)[0]["executionArn"])
    assert final["status"] == "SUCCEEDED", final.get("cause")

    # THEN no state's input or output comes near the 256 KiB limit: the tensor travelled by S3 reference
    largest = max(len(json.dumps(event, default=str)) for event in history(stack, final["executionArn"]))
    assert len(data) > 100_000
    assert largest < 16 * 1024


def test_manual_input_with_options(stack: Any, sinks: Any) -> None:
    # GIVEN an object already in the bucket
    key = f"manual/{uuid.uuid4().hex[:6]} square.png"
    _upload(stack, key, image_bytes("square", fmt="PNG", seed=5))
    executions_for_key(stack, key)  # the upload's own execution runs too; wait for it to exist

    # WHEN an operator starts an execution by hand, choosing sinks and top_k
    sfn = stack.client("stepfunctions")
    manual = {"bucket": stack.resources.buckets["input"], "key": key, "sinks": ["s3", "dynamodb"], "top_k": 2}
    started = sfn.start_execution(
        stateMachineArn=stack.state_machine_arn, name=f"manual-{uuid.uuid4().hex}", input=json.dumps(manual)
    )
    final = wait_for_execution(stack, started["executionArn"])

    # THEN it succeeds with exactly two classes, delivered only to the chosen sinks
    assert final["status"] == "SUCCEEDED", final.get("cause")
    output = json.loads(final["output"])
    prediction = batch_entry(stack, final["executionArn"], key)["prediction"]
    assert [item["label"] for item in prediction["top_k"]][:1] == ["square"]
    assert len(prediction["top_k"]) == 2
    assert sorted(d["sink"] for d in output["deliveries"]) == ["dynamodb", "s3"]


def test_bad_upload_fails_fast_with_a_clear_error_and_no_records(stack: Any, sinks: Any) -> None:
    # GIVEN a file that is not an image, named like one
    key = f"bad/{uuid.uuid4().hex[:6]}.png"

    # WHEN it is uploaded
    _upload(stack, key, b"<html><body>not an image</body></html>")

    # THEN its execution fails with NotAnImageError, naming the object, without any retry
    final = wait_for_execution(stack, executions_for_key(stack, key)[0]["executionArn"])
    assert final["status"] == "FAILED"
    assert final["error"] == "NotAnImageError"
    assert key in final["cause"]
    assert _task_attempts(history(stack, final["executionArn"]), "Preprocess") == 1

    # AND no success sink holds anything for it
    records = sinks.records(stack.resources.buckets["input"], key)
    assert all(not records[sink] for sink in ALL_SINKS)


@pytest.mark.parametrize(
    ("execution_input", "error", "says"),
    [
        ({"hello": "world"}, "InvalidInputError", "Object Created"),
        ({"bucket": "x", "key": "k", "top_k": 0}, "InvalidRequestError", "top_k"),
        ({"bucket": "x", "key": "k", "sinks": ["kafka"]}, "InvalidRequestError", "kafka"),
        ({"bucket": "x", "key": "k", "colour": "blue"}, "InvalidRequestError", "colour"),
    ],
)
def test_malformed_manual_input_is_rejected_with_its_reason(
    stack: Any, execution_input: dict, error: str, says: str
) -> None:
    sfn = stack.client("stepfunctions")
    started = sfn.start_execution(
        stateMachineArn=stack.state_machine_arn, name=f"bad-{uuid.uuid4().hex}", input=json.dumps(execution_input)
    )
    final = wait_for_execution(stack, started["executionArn"])
    assert final["status"] == "FAILED"
    assert final["error"] == error
    assert says in final["cause"]


def test_missing_object_is_a_permanent_failure(stack: Any) -> None:
    sfn = stack.client("stepfunctions")
    manual = {"bucket": stack.resources.buckets["input"], "key": "never/uploaded.jpg"}
    started = sfn.start_execution(
        stateMachineArn=stack.state_machine_arn, name=f"gone-{uuid.uuid4().hex}", input=json.dumps(manual)
    )
    final = wait_for_execution(stack, started["executionArn"])
    assert final["status"] == "FAILED" and final["error"] == "ObjectNotFoundError"
    assert "never/uploaded.jpg" in final["cause"]
