"""The sink's idempotent writes, delivery ledger and failure records (moto as AWS)."""

from __future__ import annotations

import json
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from functions.common.aws import client
from functions.common.errors import RECORDED_ERROR_NAMES, PipelineError, SinkUnavailableError, TransientError
from functions.common.work import PREPROCESSED
from functions.sink import core, writers
from functions.sink.failure_record import build_failure
from functions.sink.failures import MIXED_ERRORS
from functions.sink.handler import lambda_handler
from tests.unit.test_sink import (
    CONTEXT,
    EXECUTION,
    PREDICTION,
    SOURCE,
    _drain,
    classified,
    failed,
    put_batch,
)

OTHER_MODEL = {**PREDICTION, "model": {**PREDICTION["model"], "version": "fedcba987654"}}
DEFAULTS = {"sinks": "s3,dynamodb,sns,sqs,eventbridge", "top_k": "5", "model": "demo", "model_version": "prod"}
NOT_AN_IMAGE = "s3://in-bucket/holiday photos/café+1%.jpg?versionId=v1 (12 bytes) is not an image"


def _deliver(sink: str, prediction: dict = PREDICTION, execution: str = EXECUTION) -> dict[str, Any]:
    ref = put_batch([classified(prediction=prediction)], execution=execution)
    return lambda_handler({"sink": sink, "batch": ref, "execution_id": execution}, CONTEXT)


def _items() -> list[dict[str, Any]]:
    return boto3.client("dynamodb").scan(TableName="preds")["Items"]


def _failure_records(history: bool = False) -> dict[str, dict[str, Any]]:
    """Every failure record in the output bucket, by key: the keys' latest views, or (``history``)
    the object versions' own records under failures/_versions/."""
    s3 = boto3.client("s3")
    listed = s3.list_objects_v2(Bucket="out-bucket", Prefix="failures/").get("Contents", [])
    keys = [o["Key"] for o in listed if o["Key"].startswith("failures/_versions/") == history]
    return {key: json.loads(s3.get_object(Bucket="out-bucket", Key=key)["Body"].read()) for key in keys}


def _record_failure(
    batch: dict[str, str] | None,
    failure: dict[str, Any] | None = None,
    deliveries: list[dict[str, Any]] | None = None,
    raw_input: Any = None,
) -> dict[str, Any]:
    """RecordFailure's input, as the state machine builds it (the Note*/…Failed states, then the task's Parameters)."""
    event = {
        "mode": "failure",
        "failure": failure
        or {
            "state": "Batch",
            "error": "BatchItemsFailed",
            "cause": "objects of this batch failed; see their failure records",
        },
        "batch": batch,
        "deliveries": deliveries,
        "input": raw_input if raw_input is not None else {"bucket": SOURCE["bucket"], "key": SOURCE["key"]},
        "defaults": DEFAULTS,
        "execution_id": EXECUTION,
    }
    return lambda_handler(event, CONTEXT)


def _lambda_cause(error: str, message: str) -> str:
    """A Catch's Cause for a Lambda function error: the error as JSON."""
    return json.dumps({"errorMessage": message, "errorType": error, "requestId": "req-1", "stackTrace": []})


def test_a_duplicate_delivery_writes_nothing_new_and_publishes_nothing_new(sink_resources: dict[str, str]) -> None:
    first = {sink: _deliver(sink) for sink in core.SINKS}
    again = {sink: _deliver(sink, execution=EXECUTION + "-r1") for sink in core.SINKS}
    assert (
        {s: r["delivered"] for s, r in first.items()}
        == {s: r["delivered"] for s, r in again.items()}
        == dict.fromkeys(core.SINKS, 1)
    )
    items = _items()
    assert len(items) == 1 and items[0]["execution_id"]["S"] == EXECUTION  # the first delivery's item, untouched
    assert len(_drain(sink_resources["PREDICTIONS_QUEUE_URL"])) == 1
    assert len(_drain(sink_resources["sns_tap"])) == 1
    assert len(_drain(sink_resources["events_tap"])) == 1
    listed = boto3.client("s3").list_objects_v2(Bucket="out-bucket", Prefix="predictions/")["Contents"]
    assert [o["Key"] for o in listed] == [
        "predictions/in-bucket/holiday photos/café+1%25.jpg.json"
    ]  # the version's record, once


def test_a_different_model_version_replaces_the_item_and_is_a_new_message(sink_resources: dict[str, str]) -> None:
    _deliver("dynamodb")
    _deliver("sqs")
    _deliver("dynamodb", prediction=OTHER_MODEL, execution=EXECUTION + "-2")
    _deliver("sqs", prediction=OTHER_MODEL, execution=EXECUTION + "-2")
    items = _items()
    assert len(items) == 1 and items[0]["model_version"]["S"] == "fedcba987654"
    bodies = [json.loads(m["Body"]) for m in _drain(sink_resources["PREDICTIONS_QUEUE_URL"])]
    assert sorted(b["model"]["version"] for b in bodies) == ["0123456789ab", "fedcba987654"]


def test_a_failure_record_names_the_object_error_state_and_execution(sink_resources: dict[str, str]) -> None:
    # GIVEN a batch of one whose object is not an image (NoteAllFailed: preprocess failed every object)
    ref = put_batch([failed(SOURCE, "NotAnImageError", NOT_AN_IMAGE)], name=PREPROCESSED)
    # WHEN the failure is recorded
    answer = _record_failure(ref)
    # THEN the execution ends with the object's own error and message
    assert (answer["error"], answer["cause"]) == ("NotAnImageError", NOT_AN_IMAGE)
    assert answer["failed"] == 1 and answer["objects"] == 1 and answer["failed_state"] == "Preprocess"
    assert answer["written"] == {"records": 1, "s3": 1, "dynamodb": 1}
    # AND the record names the object, the error, the state and the execution
    record = _failure_records()["failures/in-bucket/holiday photos/café+1%25.jpg.json"]
    assert record["error"] == {"type": "NotAnImageError", "message": NOT_AN_IMAGE}
    assert record["failed_state"] == "Preprocess" and record["execution_id"] == EXECUTION
    assert record["source"]["version_id"] == "v1" and record["execution_name"] == "abc"
    assert record["model"] == {"name": "demo", "version": "prod", "resolved": False}
    (item,) = _items()
    assert (
        item["status"]["S"] == "FAILED"
        and item["error_type"]["S"] == "NotAnImageError"
        and item["version"]["S"] == "v1"
    )


def test_a_failure_never_overwrites_a_success_and_a_success_resolves_a_failure(sink_resources: dict[str, str]) -> None:
    _record_failure(put_batch([failed(SOURCE, "NotAnImageError", NOT_AN_IMAGE)], name=PREPROCESSED))
    _deliver("dynamodb")
    _deliver("s3")
    (item,) = _items()
    assert item["status"]["S"] == "SUCCEEDED"
    assert _failure_records() == {}  # the s3 sink removed the resolved failure record
    # WHEN a later execution of the same object version fails in a sink
    ref = put_batch([classified()], execution=EXECUTION + "-2")
    deliveries: list[dict[str, Any]] = [
        {"sink": "s3", "status": "DELIVERED", "delivered": 1},
        {
            "sink": "sqs",
            "status": "FAILED",
            "error": "SinkUnavailableError",
            "cause": _lambda_cause("SinkUnavailableError", "queue gone"),
        },
    ]
    answer = _record_failure(ref, deliveries=deliveries)
    # THEN its failure is recorded, but the item still says SUCCEEDED
    assert answer["error"] == "SinkUnavailableError"
    (item,) = _items()
    assert item["status"]["S"] == "SUCCEEDED" and item["execution_id"]["S"] == EXECUTION


def test_an_input_without_an_object_is_recorded_under_invalid(sink_resources: dict[str, str]) -> None:
    # GIVEN Preprocess rejected the whole input (PreprocessFailed: no batch document)
    cause = _lambda_cause(
        "InvalidInputError", "the input has no object to classify. Expected an S3 'Object Created' event"
    )
    failure = {"state": "Preprocess", "error": "InvalidInputError", "cause": cause}
    # WHEN the failure is recorded
    answer = _record_failure(None, failure, raw_input={"hello": "world"})
    # THEN it is one record, under the execution's name, holding the input
    assert answer["error"] == "InvalidInputError" and answer["failed"] == 1 and answer["objects"] == 0
    assert answer["written"] == {"records": 1, "s3": 1, "dynamodb": 0}
    records = _failure_records()
    assert list(records) == ["failures/_invalid/abc.json"]
    record = records["failures/_invalid/abc.json"]
    assert record["source"] is None and record["input"] == {"hello": "world"}
    assert record["failed_state"] == "Preprocess"
    assert record["error"] == {
        "type": "InvalidInputError",
        "message": "the input has no object to classify. Expected an S3 'Object Created' event",
    }
    assert answer["cause"] == record["error"]["message"]
    assert _items() == []


def test_a_delivery_failure_lists_delivered_and_failed_sinks() -> None:
    context = {
        "job": {"source": SOURCE, "model": {"name": "demo", "version": "0123456789ab"}},
        "deliveries": [
            {"sink": "s3", "status": "DELIVERED"},
            {"sink": "sqs", "status": "FAILED", "error": "SinkUnavailableError"},
        ],
    }
    event = {
        "failure": {"state": "Deliver", "error": "SinkUnavailableError", "cause": "queue gone"},
        "context": context,
        "execution_id": EXECUTION,
    }
    record = build_failure(event).to_dict()
    assert record["delivered_sinks"] == ["s3"] and record["failed_sinks"] == ["sqs"]
    assert record["model"] == {"name": "demo", "version": "0123456789ab", "resolved": True}


def test_aws_refusals_are_typed_throttles_are_transient(
    sink_resources: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(code: str, status: int) -> Any:
        def put(*args: Any, **kwargs: Any) -> None:
            raise ClientError(
                {"Error": {"Code": code, "Message": "no"}, "ResponseMetadata": {"HTTPStatusCode": status}}, "PutItem"
            )

        return put

    record = core.build_record(SOURCE, PREDICTION, EXECUTION)
    dynamodb = client("dynamodb")
    monkeypatch.setattr(dynamodb, "put_item", refuse("ResourceNotFoundException", 400))
    with pytest.raises(SinkUnavailableError, match="sink 'dynamodb' refused"):
        writers.deliver("dynamodb", record, core.Destinations.from_env())
    monkeypatch.setattr(dynamodb, "put_item", refuse("ProvisionedThroughputExceededException", 400))
    with pytest.raises(TransientError):
        writers.deliver("dynamodb", record, core.Destinations.from_env())
    monkeypatch.setattr(dynamodb, "put_item", refuse("InternalServerError", 500))
    with pytest.raises(TransientError):
        writers.deliver("dynamodb", record, core.Destinations.from_env())


# --------------------------------------------------------------------------- a batch's failures


def _source(key: str) -> dict[str, Any]:
    return {**SOURCE, "key": key, "version_id": f"v-{key}"}


def test_one_failed_object_of_a_classified_batch_gets_the_only_failure_record(sink_resources: dict[str, str]) -> None:
    # GIVEN a batch whose first object was classified and delivered everywhere, and whose second was not an image
    bad_message = "s3://in-bucket/b.png (3 bytes) is not an image"
    ref = put_batch(
        [classified(_source("a.jpg"), index=0), failed(_source("b.png"), "NotAnImageError", bad_message, index=1)]
    )
    deliveries = [{"sink": sink, "status": "DELIVERED", "delivered": 1} for sink in ("s3", "dynamodb")]
    # WHEN the state machine records the batch's failures (NoteObjectFailures)
    answer = _record_failure(ref, deliveries=deliveries)
    # THEN exactly one failure record is written, for the failed object, and the execution ends with its error
    assert (answer["error"], answer["failed"], answer["objects"]) == ("NotAnImageError", 1, 2)
    assert bad_message in answer["cause"]
    records = _failure_records()
    assert list(records) == ["failures/in-bucket/b.png.json"]
    assert records["failures/in-bucket/b.png.json"]["source"]["version_id"] == "v-b.png"
    assert "delivered_sinks" not in records["failures/in-bucket/b.png.json"]  # it never reached a sink
    assert [(i["object"]["S"], i["status"]["S"]) for i in _items()] == [("s3://in-bucket/b.png", "FAILED")]


def test_objects_failing_with_different_errors_end_as_batch_items_failed_counting_them(
    sink_resources: dict[str, str],
) -> None:
    # GIVEN a batch of three: one not an image, one deleted before it was read, one classified
    ref = put_batch(
        [
            failed(_source("a.png"), "NotAnImageError", "s3://in-bucket/a.png is not an image", index=0),
            classified(_source("b.jpg"), index=1),
            failed(_source("c.jpg"), "ObjectNotFoundError", "s3://in-bucket/c.jpg does not exist", index=2),
        ]
    )
    # WHEN recorded
    answer = _record_failure(ref, deliveries=[{"sink": "s3", "status": "DELIVERED", "delivered": 1}])
    # THEN the execution's error says the objects' errors differ, and the cause counts them
    assert answer["error"] == MIXED_ERRORS == "BatchItemsFailed"
    assert answer["cause"].startswith("2 of 3 objects failed: ")
    assert "NotAnImageError x1" in answer["cause"] and "ObjectNotFoundError x1" in answer["cause"]
    assert "first: s3://in-bucket/a.png?versionId=v-a.png: s3://in-bucket/a.png is not an image" in answer["cause"]
    # AND each failed object has its own record with its own error
    records = _failure_records()
    assert {k: r["error"]["type"] for k, r in records.items()} == {
        "failures/in-bucket/a.png.json": "NotAnImageError",
        "failures/in-bucket/c.jpg.json": "ObjectNotFoundError",
    }


def test_objects_sharing_an_error_end_with_that_error(sink_resources: dict[str, str]) -> None:
    ref = put_batch(
        [failed(_source(f"{n}.png"), "NotAnImageError", f"{n}.png is not an image", index=n) for n in range(3)],
        name=PREPROCESSED,
    )
    answer = _record_failure(ref)
    assert answer["error"] == "NotAnImageError" and answer["cause"].startswith(
        "3 of 3 objects failed: NotAnImageError x3; first: "
    )
    assert len(_failure_records()) == 3


def test_a_failed_sink_fails_every_classified_object_naming_the_sinks(sink_resources: dict[str, str]) -> None:
    # GIVEN two classified objects; S3 took them, the queue refused them
    ref = put_batch([classified(_source("a.jpg"), index=0), classified(_source("b.jpg"), index=1)])
    deliveries: list[dict[str, Any]] = [
        {"sink": "s3", "status": "DELIVERED", "delivered": 2},
        {
            "sink": "sqs",
            "status": "FAILED",
            "error": "SinkUnavailableError",
            "cause": _lambda_cause(
                "SinkUnavailableError", "sink 'sqs' refused the batch: AWS.SimpleQueueService.NonExistentQueue"
            ),
        },
    ]
    # WHEN recorded
    answer = _record_failure(ref, deliveries=deliveries)
    # THEN both objects fail with the sink's error, their records say which sinks have them
    assert answer["error"] == "SinkUnavailableError" and answer["failed_state"] == "Deliver"
    assert answer["cause"].startswith("2 of 2 objects failed: SinkUnavailableError x2; first: ")
    records = _failure_records()
    assert sorted(records) == ["failures/in-bucket/a.jpg.json", "failures/in-bucket/b.jpg.json"]
    for record in records.values():
        assert record["delivered_sinks"] == ["s3"] and record["failed_sinks"] == ["sqs"]
        assert record["error"]["message"] == "sink 'sqs' refused the batch: AWS.SimpleQueueService.NonExistentQueue"
        assert record["model"] == {"name": "demo", "version": "0123456789ab", "resolved": True}


def test_a_task_failing_before_any_document_fails_every_object_of_the_input(sink_resources: dict[str, str]) -> None:
    # GIVEN Preprocess failed as a whole for a manual batch of two (retries exhausted)
    failure = {
        "state": "Preprocess",
        "error": "TransientError",
        "cause": _lambda_cause("TransientError", "GetObject throttled"),
    }
    raw = {"objects": [{"bucket": "in-bucket", "key": "a.jpg"}, {"bucket": "in-bucket", "key": "b.jpg"}]}
    # WHEN recorded
    answer = _record_failure(None, failure, raw_input=raw)
    # THEN each object the input named has a record with the task's error
    assert answer["error"] == "TransientError" and answer["objects"] == 2 and answer["failed"] == 2
    assert {k: (r["error"]["type"], r["failed_state"]) for k, r in _failure_records().items()} == {
        "failures/in-bucket/a.jpg.json": ("TransientError", "Preprocess"),
        "failures/in-bucket/b.jpg.json": ("TransientError", "Preprocess"),
    }


def test_a_task_failing_with_a_states_error_is_recorded_as_a_pipeline_error(sink_resources: dict[str, str]) -> None:
    # GIVEN Inference timed out over a preprocessed batch: one object ready, one already failed
    ref = put_batch(
        [
            {**classified(_source("a.jpg")), "status": "READY"},
            failed(_source("b.png"), "NotAnImageError", "not an image", index=1),
        ],
        name=PREPROCESSED,
    )
    failure = {"state": "Inference", "error": "States.Timeout", "cause": "the task timed out"}
    answer = _record_failure(ref, failure)
    # THEN the ready object fails with PipelineError (a Fail state may not end with States.*), the other keeps its own
    records = _failure_records()
    a, b = records["failures/in-bucket/a.jpg.json"], records["failures/in-bucket/b.png.json"]
    assert (
        a["error"] == {"type": "PipelineError", "message": "States.Timeout: the task timed out"}
        and a["failed_state"] == "Inference"
    )
    assert b["error"]["type"] == "NotAnImageError" and b["failed_state"] == "Preprocess"
    assert answer["error"] == "BatchItemsFailed"


def test_an_unexpected_error_in_a_handler_is_reported_as_pipeline_error_with_its_own_type_and_message() -> None:
    from functions.common.log import lambda_context

    @lambda_context
    def handler(event: dict[str, Any], context: Any) -> Any:
        return event["missing"]  # a bug: a KeyError

    # THEN the function reports PipelineError, which the state machine catches and records,
    # naming the original KeyError (its stack trace goes to the log only)
    with pytest.raises(PipelineError, match=r"^KeyError: 'missing'"):
        handler({}, CONTEXT)
    assert "PipelineError" in RECORDED_ERROR_NAMES
