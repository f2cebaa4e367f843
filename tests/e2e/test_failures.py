"""Nothing lost: bad input, duplicates, transient AWS faults and a broken sink, end to end on the local stack.

Every execution that fails leaves a failure record (``failures/`` in the output bucket and a FAILED
item per object version); every success leaves exactly one record per sink, however often the
same object version is delivered.
"""

from __future__ import annotations

import io
import json
import struct
import time
import uuid
import zlib
from typing import Any

import pytest

from functions.sink.core import failure_key
from inferpipe import replay
from tests.e2e.conftest import DEMO_MODEL_DIR, executions_for_key, image_bytes, wait_for_execution

ALL_SINKS = ("s3", "dynamodb", "sns", "sqs", "eventbridge")


# --------------------------------------------------------------------------- helpers


def _input_bucket(stack: Any) -> str:
    return stack.resources.buckets["input"]


def _upload(stack: Any, key: str, data: bytes) -> str | None:
    return stack.client("s3").put_object(Bucket=_input_bucket(stack), Key=key, Body=data).get("VersionId")


def _run_upload(stack: Any, key: str, data: bytes, timeout: float = 90.0) -> dict[str, Any]:
    _upload(stack, key, data)
    executions = executions_for_key(stack, key)
    assert len(executions) == 1, f"{len(executions)} executions for {key}"
    return wait_for_execution(stack, executions[0]["executionArn"], timeout=timeout)


def _start(stack: Any, execution_input: Any, name: str | None = None) -> dict[str, Any]:
    started = stack.client("stepfunctions").start_execution(
        stateMachineArn=stack.state_machine_arn, name=name or f"t-{uuid.uuid4().hex}", input=json.dumps(execution_input)
    )
    return wait_for_execution(stack, started["executionArn"], timeout=90)


def failure_record(
    stack: Any, bucket: str | None, key: str | None, execution_name: str | None = None
) -> dict[str, Any] | None:
    s3 = stack.client("s3")
    path = failure_key({"bucket": bucket, "key": key} if bucket else None, execution_name or "")
    try:
        return json.loads(s3.get_object(Bucket=stack.resources.buckets["output"], Key=path)["Body"].read())
    except s3.exceptions.NoSuchKey:
        return None


def table_items(stack: Any, bucket: str, key: str) -> list[dict[str, Any]]:
    return stack.client("dynamodb").query(
        TableName=stack.resources.table,
        KeyConditionExpression="#o = :o",
        ExpressionAttributeNames={"#o": "object"},
        ExpressionAttributeValues={":o": {"S": f"s3://{bucket}/{key}"}},
    )["Items"]


def _png_header_claiming(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
    )


def _png(label: str) -> bytes:
    return image_bytes(label, fmt="PNG", seed=2)


BAD_INPUTS = {
    "zero-byte": (b"", "NotAnImageError", "empty (0 bytes)"),
    "not-an-image": (bytes(range(256)) * 8, "NotAnImageError", "is not a JPEG"),
    "html-named-png": (
        b"<!DOCTYPE html><html><body>404 Not Found</body></html>",
        "NotAnImageError",
        "starts like text",
    ),
    "truncated-jpeg": (image_bytes("circle", seed=4)[:1500], "NotAnImageError", "truncated or corrupt (JPEG)"),
    "truncated-png": (None, "NotAnImageError", "truncated or corrupt (PNG)"),
    "gigapixel-png": (_png_header_claiming(100_000, 100_000), "DecompressionBombError", "MAX_IMAGE_PIXELS"),
}


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_upload_fails_once_with_a_failure_record_naming_the_problem(stack: Any, sinks: Any, case: str) -> None:
    data, error, says = BAD_INPUTS[case]
    if data is None:
        data = _png("ring")[:-200]
    # GIVEN a key with spaces, '+', '%' and non-ASCII characters
    key = f"bad/{case} {uuid.uuid4().hex[:4]} +%é.png"

    final = _run_upload(stack, key, data)

    # THEN the execution fails with the error naming the problem...
    assert final["status"] == "FAILED" and final["error"] == error, final.get("cause")
    assert says in final["cause"]
    # ...and the failure record says the same, for exactly this object version
    record = failure_record(stack, _input_bucket(stack), key)
    assert record is not None, "no failure record"
    assert record["error"]["type"] == error and says in record["error"]["message"]
    assert record["failed_state"] == "Preprocess" and record["execution_id"] == final["executionArn"]
    assert record["source"]["key"] == key and record["source"]["version_id"]
    (item,) = table_items(stack, _input_bucket(stack), key)
    assert item["status"]["S"] == "FAILED" and item["error_type"]["S"] == error
    assert item["version"]["S"] == record["source"]["version_id"]
    # AND no sink holds a prediction for it
    records = sinks.records(_input_bucket(stack), key)
    assert all(not records[s] for s in ("s3", "sns", "sqs", "eventbridge"))


def test_an_object_over_the_size_limit_is_refused_before_download(stack: Any) -> None:
    # The stack's MAX_OBJECT_BYTES (config/stack.json) is 50 MiB; one byte more is refused from HEAD.
    limit = int(stack.resources.settings["MAX_OBJECT_BYTES"])
    key = f"bad/huge {uuid.uuid4().hex[:4]}.jpg"
    final = _run_upload(stack, key, b"\xff" * (limit + 1))
    assert final["status"] == "FAILED" and final["error"] == "ObjectTooLargeError"
    record = failure_record(stack, _input_bucket(stack), key)
    assert record is not None
    assert record["error"]["type"] == "ObjectTooLargeError" and str(limit) in record["error"]["message"]


def test_an_object_deleted_between_event_and_processing_is_not_found(stack: Any) -> None:
    # GIVEN an upload whose Preprocess is slow to start reading (its claim held for 3 s)
    key = f"gone/deleted {uuid.uuid4().hex[:4]}.jpg"
    stack.inject_aws_faults("dynamodb", "PutItem", count=1, match=key, delay=3.0)
    version = _upload(stack, key, image_bytes("square", seed=9))

    # WHEN the object version is deleted meanwhile
    stack.client("s3").delete_object(Bucket=_input_bucket(stack), Key=key, VersionId=version)
    (execution,) = executions_for_key(stack, key)
    final = wait_for_execution(stack, execution["executionArn"], timeout=90)

    # THEN ObjectNotFoundError, recorded against that version
    assert stack.aws_faults.pending() == 0  # the claim was held, then written
    assert final["status"] == "FAILED" and final["error"] == "ObjectNotFoundError", final.get("cause")
    record = failure_record(stack, _input_bucket(stack), key)
    assert record is not None
    assert record["error"]["type"] == "ObjectNotFoundError" and "does not exist" in record["error"]["message"]
    assert record["source"]["version_id"] == version


def test_a_late_copy_of_a_classified_objects_event_changes_nothing_even_once_the_object_is_gone(stack: Any) -> None:
    # GIVEN an object's "Object Created" event that was classified, and the object version deleted since
    key = f"gone/late {uuid.uuid4().hex[:4]}.jpg"
    first = _run_upload(stack, key, image_bytes("square", seed=9))
    assert first["status"] == "SUCCEEDED"
    event = json.loads(first["input"])
    stack.client("s3").delete_object(
        Bucket=_input_bucket(stack), Key=key, VersionId=event["detail"]["object"]["version-id"]
    )

    # WHEN the same event is delivered again (EventBridge delivers at least once)
    final = _start(stack, event)

    # THEN it is a duplicate of the first execution: nothing read, nothing failed, nothing recorded
    assert final["status"] == "SUCCEEDED" and json.loads(final["output"])["duplicates"] == 1
    assert failure_record(stack, _input_bucket(stack), key) is None
    (item,) = table_items(stack, _input_bucket(stack), key)
    assert item["status"]["S"] == "SUCCEEDED" and item["execution_id"]["S"] == first["executionArn"]


def test_a_foreign_bucket_is_a_clear_permanent_error_and_its_events_start_nothing(stack: Any) -> None:
    # A manual request naming a bucket the pipeline does not own
    final = _start(stack, {"bucket": "someone-elses-bucket", "key": "cat.jpg"})
    assert final["status"] == "FAILED" and final["error"] == "InvalidRequestError"
    assert (
        f"bucket 'someone-elses-bucket' is not this pipeline's input bucket '{_input_bucket(stack)}'" in final["cause"]
    )
    record = failure_record(stack, "someone-elses-bucket", "cat.jpg")
    assert record is not None and record["error"]["type"] == "InvalidRequestError"
    assert "someone-elses-bucket" in record["error"]["message"]

    # An S3 event for another bucket does not match the trigger rule: no execution at all
    key = f"foreign/{uuid.uuid4().hex}.jpg"
    detail = {"bucket": {"name": "someone-elses-bucket"}, "object": {"key": key, "size": 10}}
    stack.client("events").put_events(
        Entries=[
            {
                "Source": "aws.s3",
                "DetailType": "Object Created",
                "Detail": json.dumps(detail),
                "EventBusName": "default",
            }
        ]
    )
    time.sleep(1.0)
    assert executions_for_key(stack, key, timeout=0.5) == []


def test_an_input_naming_no_object_is_recorded_under_invalid(stack: Any) -> None:
    name = f"junk-{uuid.uuid4().hex[:8]}"
    final = _start(stack, ["not", "an", "event"], name=name)
    assert final["status"] == "FAILED" and final["error"] == "InvalidInputError"
    record = failure_record(stack, None, None, execution_name=name)
    assert record is not None
    assert record["input"] == ["not", "an", "event"] and record["failed_state"] == "Preprocess"


def test_a_later_success_for_the_key_resolves_its_failure_record(stack: Any, sinks: Any) -> None:
    key = f"fixme/{uuid.uuid4().hex[:6]}.jpg"
    bad = _run_upload(stack, key, b"not a jpeg")
    assert bad["status"] == "FAILED" and failure_record(stack, _input_bucket(stack), key) is not None

    good = executions_for_key(stack, key)
    _upload(stack, key, image_bytes("circle", seed=21))
    deadline = time.monotonic() + 30
    while len(good) < 2 and time.monotonic() < deadline:
        good = executions_for_key(stack, key)
    newest = max(good, key=lambda e: e["startDate"])
    assert wait_for_execution(stack, newest["executionArn"])["status"] == "SUCCEEDED"

    assert failure_record(stack, _input_bucket(stack), key) is None  # removed by the s3 sink
    statuses = sorted(item["status"]["S"] for item in table_items(stack, _input_bucket(stack), key))
    assert statuses == ["FAILED", "SUCCEEDED"]  # one item per object version: v1 stays failed


# --------------------------------------------------------------------------- duplicates


def test_the_same_object_version_delivered_twice_is_one_record_per_sink(stack: Any, sinks: Any) -> None:
    key = f"dup/{uuid.uuid4().hex[:6]} twice.jpg"
    first = _run_upload(stack, key, image_bytes("triangle", seed=5))
    assert first["status"] == "SUCCEEDED"

    # WHEN the same S3 event arrives again (EventBridge delivers at least once)
    second = _start(stack, json.loads(first["input"]))
    assert second["status"] == "SUCCEEDED"

    # THEN still exactly one record everywhere, all with the same record_id
    records = sinks.records(_input_bucket(stack), key)
    for sink in ALL_SINKS:
        assert len(records[sink]) == 1, f"{sink}: {len(records[sink])}"
    ids = {records[s][0]["record_id"] for s in ("s3", "sns", "sqs", "eventbridge")} | {
        records["dynamodb"][0]["record_id"]["S"]
    }
    assert len(ids) == 1
    assert records["dynamodb"][0]["execution_id"]["S"] == first["executionArn"]


def test_a_replay_with_another_model_replaces_the_item_and_publishes_a_new_record(stack: Any, sinks: Any) -> None:
    from inferpipe.models import publish

    other = publish(stack.client("s3"), stack.resources.buckets["models"], DEMO_MODEL_DIR, name="demo-alt")
    key = f"remodel/{uuid.uuid4().hex[:6]}.jpg"
    assert _run_upload(stack, key, image_bytes("circle", seed=8))["status"] == "SUCCEEDED"
    again = _start(
        stack, {"bucket": _input_bucket(stack), "key": key, "model": "demo-alt", "model_version": other.version}
    )
    assert again["status"] == "SUCCEEDED", again.get("cause")

    records = sinks.records(_input_bucket(stack), key)
    (item,) = records["dynamodb"]
    assert item["model"]["S"] == "demo-alt"  # replaced, not added
    assert records["s3"][0]["model"]["name"] == "demo-alt"
    assert sorted(r["model"]["name"] for r in records["sqs"]) == ["demo", "demo-alt"]  # two different records


# --------------------------------------------------------------------------- faults


def test_transient_faults_everywhere_still_end_in_exactly_one_record_per_sink(stack: Any, sinks: Any) -> None:
    key = f"faults/{uuid.uuid4().hex[:8]}.jpg"
    # GIVEN every AWS call of this object's run fails at first: 4 requests = beyond botocore's own
    # retries (1 + 3), so the functions raise TransientError and the state machine retries them;
    # 2 requests are absorbed by botocore
    stack.inject_aws_faults("s3", "GetObject", 4, match=key)
    stack.inject_aws_faults("dynamodb", "PutItem", 4, match=key)
    stack.inject_aws_faults("sns", "PublishBatch", 4, match=key)
    stack.inject_aws_faults("sqs", "SendMessageBatch", 4, match=key, status=500, code="InternalError")
    stack.inject_aws_faults("events", "PutEvents", 2, match=key)
    stack.inject_failures("inference", 2)

    final = _run_upload(stack, key, image_bytes("ring", seed=12))

    assert final["status"] == "SUCCEEDED", final.get("cause")
    assert stack.aws_faults.pending() == 0
    fired = {(service, operation) for service, operation, _ in stack.aws_faults.fired()}
    assert {
        ("s3", "GetObject"),
        ("dynamodb", "PutItem"),
        ("sns", "PublishBatch"),
        ("sqs", "SendMessageBatch"),
        ("events", "PutEvents"),
    } <= fired
    records = sinks.records(_input_bucket(stack), key)
    for sink in ALL_SINKS:
        assert len(records[sink]) == 1, f"{sink}: {len(records[sink])}"
    assert failure_record(stack, _input_bucket(stack), key) is None


def test_a_slow_aws_call_fails_as_a_retryable_error_before_the_function_times_out(stack: Any, sinks: Any) -> None:
    key = f"slow-sink/{uuid.uuid4().hex[:8]}.jpg"
    lam = stack.client("lambda")
    sink_function = stack.resources.functions["sink"].name
    # GIVEN the sink function may run 3 s, and this object's first SNS publish takes 6 s (AWS slow,
    # not failing): the SDK's timeouts, derived from the invocation's remaining time, give up first
    lam.update_function_configuration(FunctionName=sink_function, Timeout=3)
    stack.inject_aws_faults("sns", "PublishBatch", 1, match=key, delay=6.0)
    runs_before = len(stack.invocations("sink"))
    try:
        final = _run_upload(stack, key, image_bytes("triangle", seed=21))
    finally:
        lam.update_function_configuration(
            FunctionName=sink_function, Timeout=stack.resources.functions["sink"].timeout_s
        )

    # THEN the slow call ended as a TransientError (not a Lambda timeout), which the Retry retried,
    # and the execution succeeded
    assert final["status"] == "SUCCEEDED", final.get("cause")
    errors = [r.error_type for r in stack.invocations("sink")[runs_before:] if r.error_type]
    assert errors == ["TransientError"], errors
    assert ("sns", "PublishBatch", "delayed 6 s") in stack.aws_faults.fired()
    # AND once the abandoned publish lands, SNS holds two copies (the window
    # docs/operations.md describes) that carry one record id, for consumers to drop the repeat
    deadline = time.monotonic() + 15
    records = sinks.records(_input_bucket(stack), key)
    while len(records["sns"]) < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
        records = sinks.records(_input_bucket(stack), key)
    assert len(records["sns"]) == 2
    assert {r["record_id"] for r in records["sns"]} == {records["s3"][0]["record_id"]}
    # AND every other sink holds the prediction once, and no failure was recorded
    for sink in ("s3", "dynamodb", "sqs", "eventbridge"):
        assert len(records[sink]) == 1, f"{sink}: {len(records[sink])}"
    assert failure_record(stack, _input_bucket(stack), key) is None


def _status_recorded(stack: Any) -> None:
    """Wait for the status recorder (EventBridge invokes it asynchronously after the execution ends)."""
    from inferpipe.local import lambda_service

    assert lambda_service.wait_for_async_invocations(timeout=30)


def test_a_sink_that_stays_down_stops_the_execution_at_fanout_and_a_redrive_completes_it_once(
    stack: Any, sinks: Any
) -> None:
    key = f"broken-sink/{uuid.uuid4().hex[:8]}.jpg"
    # GIVEN the SQS queue refuses everything for good (as a deleted queue would), after a slow
    # start (its ledger read), so that the other sinks' iterations have finished when it fails
    stack.inject_aws_faults(
        "sqs", "SendMessageBatch", 50, match=key, status=400, code="AWS.SimpleQueueService.NonExistentQueue"
    )
    stack.inject_aws_faults("s3", "GetObject", 1, match="deliveries/sqs/", delay=3.0)
    final = _run_upload(stack, key, image_bytes("checkerboard", seed=3))

    # THEN the execution stops at the step that failed, naming the sink: redrivable, not in a Fail state
    assert final["status"] == "FAILED" and final["error"] == "SinkUnavailableError", final.get("cause")
    assert "sink 'sqs'" in final["cause"]
    sfn = stack.client("stepfunctions")
    events = sfn.get_execution_history(executionArn=final["executionArn"], maxResults=1000)["events"]
    assert not [e for e in events if e["type"] == "FailStateEntered"]
    assert sfn.describe_execution(executionArn=final["executionArn"])["redriveStatus"] == "REDRIVABLE"
    # AND the status recorder wrote its failure record
    _status_recorded(stack)
    record = failure_record(stack, _input_bucket(stack), key)
    assert record is not None and record["error"]["type"] == "SinkUnavailableError", record
    assert record["failed_state"] == "Deliver" and record["execution_id"] == final["executionArn"]
    assert "sink 'sqs'" in record["error"]["message"]
    assert sinks.records(_input_bucket(stack), key)["sqs"] == []

    # WHEN the queue is fixed and the execution redriven (the console's Redrive button)
    stack.aws_faults.clear()
    sink_runs = len(stack.invocations("sink"))
    upstream_runs = len(stack.invocations("preprocess")) + len(stack.invocations("inference"))
    sfn.redrive_execution(executionArn=final["executionArn"])
    done = wait_for_execution(stack, final["executionArn"], timeout=90)

    # THEN it succeeds with the same ARN, without running Preprocess or Inference again
    assert done["status"] == "SUCCEEDED", done.get("cause")
    assert done["redriveCount"] == 1
    assert len(stack.invocations("preprocess")) + len(stack.invocations("inference")) == upstream_runs
    assert len(stack.invocations("sink")) > sink_runs
    # AND only the FanOut iterations that failed or were aborted ran again (AWS redrives only those
    # of an inline Map): sqs, and none of the sinks that had delivered
    history = sfn.get_execution_history(executionArn=final["executionArn"], maxResults=1000)["events"]
    redriven_at = next(i for i, e in enumerate(history) if e["type"] == "ExecutionRedriven")
    succeeded_before = {
        e["mapIterationSucceededEventDetails"]["index"]
        for e in history[:redriven_at]
        if e["type"] == "MapIterationSucceeded"
    }
    rerun = [
        e["mapIterationStartedEventDetails"]["index"]
        for e in history[redriven_at:]
        if e["type"] == "MapIterationStarted"
    ]
    assert succeeded_before, "no sink had delivered before sqs failed: nothing to leave out"
    assert sorted(rerun) == sorted(set(range(len(ALL_SINKS))) - succeeded_before), (rerun, succeeded_before)
    scheduled = [
        json.loads(e["lambdaFunctionScheduledEventDetails"]["input"])
        for e in history[redriven_at:]
        if e["type"] == "LambdaFunctionScheduled"
    ]
    assert "sqs" in {job.get("sink") for job in scheduled} and len(scheduled) == len(rerun), scheduled
    # AND every sink holds the record exactly once, and the failure record is resolved
    after = sinks.records(_input_bucket(stack), key)
    assert [len(after[s]) for s in ALL_SINKS] == [1, 1, 1, 1, 1], {s: len(after[s]) for s in ALL_SINKS}
    _status_recorded(stack)
    assert failure_record(stack, _input_bucket(stack), key) is None

    # AND a replay now does nothing: the execution succeeded
    again = replay.replay(sfn, stack.state_machine_arn, executions=[final["executionArn"]], out=io.StringIO())
    assert not again.replayed


def _hold_preprocess(stack: Any, key: str, seconds: float) -> None:
    """Preprocess's reads of ``key`` take ``seconds`` (AWS slow, not failing)."""
    for operation in ("GetObject", "HeadObject"):
        stack.inject_aws_faults("s3", operation, 1, match=key, delay=seconds)


def test_a_stopped_execution_gets_a_failure_record_naming_where_it_stopped(stack: Any) -> None:
    key = f"aborted/{uuid.uuid4().hex[:8]}.jpg"
    sfn = stack.client("stepfunctions")
    _hold_preprocess(stack, key, 6.0)
    try:
        started = sfn.start_execution(
            stateMachineArn=stack.state_machine_arn, input=json.dumps({"bucket": _input_bucket(stack), "key": key})
        )
        time.sleep(1.0)
        # WHEN an operator stops it while Preprocess runs (no Catch sees this)
        sfn.stop_execution(executionArn=started["executionArn"], error="Operator", cause="stopped for a rehearsal")
        final = wait_for_execution(stack, started["executionArn"], timeout=30)
        assert final["status"] == "ABORTED"
        _status_recorded(stack)
    finally:
        stack.aws_faults.clear()
    # THEN its object has a failure record from the status change event
    record = failure_record(stack, _input_bucket(stack), key)
    assert record is not None, "no failure record for an ABORTED execution"
    assert record["execution_id"] == started["executionArn"] and record["failed_state"] == "Preprocess"
    # (the stopped Lambda invocation still finishes, as in AWS: when its batch document lands first,
    # the object's own error, here that it does not exist, is the more precise one and is kept)
    assert record["error"]["type"] in ("Operator", "ExecutionAborted", "ObjectNotFoundError"), record["error"]


def test_an_execution_over_the_state_machines_timeout_gets_a_failure_record(stack: Any) -> None:
    key = f"timed-out/{uuid.uuid4().hex[:8]}.jpg"
    sfn = stack.client("stepfunctions")
    described = sfn.describe_state_machine(stateMachineArn=stack.state_machine_arn)
    definition = json.loads(described["definition"])
    # GIVEN the state machine times out after 2 s, and this object's Preprocess takes 6
    sfn.update_state_machine(
        stateMachineArn=stack.state_machine_arn, definition=json.dumps({**definition, "TimeoutSeconds": 2})
    )
    _hold_preprocess(stack, key, 6.0)
    try:
        started = sfn.start_execution(
            stateMachineArn=stack.state_machine_arn, input=json.dumps({"bucket": _input_bucket(stack), "key": key})
        )
        final = wait_for_execution(stack, started["executionArn"], timeout=30)
        assert final["status"] == "TIMED_OUT"
        _status_recorded(stack)
    finally:
        sfn.update_state_machine(stateMachineArn=stack.state_machine_arn, definition=described["definition"])
        stack.aws_faults.clear()
    # THEN the object has a failure record saying so, and the execution can be redriven
    record = failure_record(stack, _input_bucket(stack), key)
    assert record is not None, "no failure record for a TIMED_OUT execution"
    assert record["error"]["type"] == "States.Timeout" and record["failed_state"] == "Preprocess", record
    assert sfn.describe_execution(executionArn=started["executionArn"])["redriveStatus"] == "REDRIVABLE"


def test_an_unexpected_error_in_a_sink_ends_as_pipeline_error_with_a_record(stack: Any) -> None:
    """A bug's exception (here a KeyError on a corrupted batch document) is reported as
    ``PipelineError`` naming it, caught, recorded, and the execution ends in PipelineFailed."""
    from functions.common.work import CLASSIFIED, work_key

    s3, sfn = stack.client("s3"), stack.client("stepfunctions")
    work = stack.resources.buckets["work"]
    key = f"unexpected/{uuid.uuid4().hex[:6]}.jpg"
    # GIVEN every sink's read of the classified batch document is held for a moment ...
    stack.inject_aws_faults("s3", "GetObject", count=5, match=f"/{CLASSIFIED}", delay=3.0)
    _upload(stack, key, image_bytes("circle", seed=61))
    arn = executions_for_key(stack, key)[0]["executionArn"]
    document_key = work_key(stack.resources.settings["WORK_PREFIX"], arn, CLASSIFIED)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            document = json.loads(s3.get_object(Bucket=work, Key=document_key)["Body"].read())
            break
        except s3.exceptions.NoSuchKey:
            time.sleep(0.05)
    # ... while it is corrupted the way a bug would: a prediction whose model has no version
    del document["items"][0]["prediction"]["model"]["version"]
    s3.put_object(Bucket=work, Key=document_key, Body=json.dumps(document).encode())

    final = wait_for_execution(stack, arn)
    # THEN the execution ends in PipelineFailed with PipelineError, naming the exception
    assert final["status"] == "FAILED" and final["error"] == "PipelineError", final
    assert "KeyError" in final["cause"] and "'version'" in final["cause"]
    history = sfn.get_execution_history(executionArn=arn, maxResults=1000)["events"]
    entered = [e["stateEnteredEventDetails"]["name"] for e in history if e["type"].endswith("StateEntered")]
    assert "RecordFailure" in entered and entered[-1] == "PipelineFailed"
    # AND the object has a failure record saying so
    record = failure_record(stack, _input_bucket(stack), key)
    assert (
        record is not None and record["error"]["type"] == "PipelineError" and "KeyError" in record["error"]["message"]
    )
    stack.aws_faults.clear()
