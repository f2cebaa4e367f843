"""The sink's idempotent writes, delivery ledger and failure records (moto as AWS)."""

from __future__ import annotations

import json
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from functions.common.errors import SinkUnavailableError, TransientError
from functions.sink import core
from functions.sink.handler import lambda_handler
from tests.unit.test_sink import CONTEXT, EXECUTION, PREDICTION, SOURCE, _drain, aws  # noqa: F401 - fixture

OTHER_MODEL = {**PREDICTION, "model": {**PREDICTION["model"], "version": "fedcba987654"}}


def _deliver(sink: str, prediction: dict = PREDICTION, execution: str = EXECUTION) -> dict[str, Any]:
    return lambda_handler({"sink": sink, "source": SOURCE, "prediction": prediction, "execution_id": execution}, CONTEXT)


def _items() -> list[dict[str, Any]]:
    return boto3.client("dynamodb").scan(TableName="preds")["Items"]


def _failure_event(state: str = "Preprocess", error: str = "NotAnImageError", context: dict | None = None) -> dict[str, Any]:
    cause = json.dumps({"errorMessage": f"s3://in-bucket/x.png is not an image ({error})", "errorType": error})
    return {
        "mode": "failure",
        "failure": {"state": state, "error": error, "cause": cause},
        "context": context if context is not None else {"request": {**SOURCE, "model": "demo", "model_version": "prod"}},
        "execution_id": EXECUTION,
    }


def test_a_duplicate_delivery_writes_nothing_new_and_publishes_nothing_new(aws: dict[str, str]) -> None:
    first = {sink: _deliver(sink) for sink in core.SINKS}
    again = {sink: _deliver(sink, execution=EXECUTION + "-r1") for sink in core.SINKS}
    assert {r["record_id"] for r in first.values()} == {r["record_id"] for r in again.values()}
    items = _items()
    assert len(items) == 1 and items[0]["execution_id"]["S"] == EXECUTION  # the first delivery's item, untouched
    assert len(_drain(aws["PREDICTIONS_QUEUE_URL"])) == 1
    assert len(_drain(aws["sns_tap"])) == 1
    assert len(_drain(aws["events_tap"])) == 1
    listed = boto3.client("s3").list_objects_v2(Bucket="out-bucket", Prefix="predictions/")["Contents"]
    assert len(listed) == 1


def test_a_different_model_version_replaces_the_item_and_is_a_new_message(aws: dict[str, str]) -> None:
    _deliver("dynamodb")
    _deliver("sqs")
    _deliver("dynamodb", prediction=OTHER_MODEL)
    _deliver("sqs", prediction=OTHER_MODEL)
    items = _items()
    assert len(items) == 1 and items[0]["model_version"]["S"] == "fedcba987654"
    bodies = [json.loads(m["Body"]) for m in _drain(aws["PREDICTIONS_QUEUE_URL"])]
    assert sorted(b["model"]["version"] for b in bodies) == ["0123456789ab", "fedcba987654"]


def test_a_failure_record_names_the_object_error_state_and_execution(aws: dict[str, str]) -> None:
    answer = lambda_handler(_failure_event(), CONTEXT)
    assert answer["error"] == "NotAnImageError" and set(answer["written"]) == {"s3", "dynamodb"}
    body = boto3.client("s3").get_object(Bucket="out-bucket", Key=f"failures/in-bucket/{SOURCE['key']}.json")["Body"].read()
    record = json.loads(body)
    assert record["error"] == {"type": "NotAnImageError", "message": "s3://in-bucket/x.png is not an image (NotAnImageError)"}
    assert record["failed_state"] == "Preprocess" and record["execution_id"] == EXECUTION
    assert record["source"]["version_id"] == "v1" and record["execution_name"] == "abc"
    (item,) = _items()
    assert item["status"]["S"] == "FAILED" and item["error_type"]["S"] == "NotAnImageError" and item["version"]["S"] == "v1"


def test_a_failure_never_overwrites_a_success_and_a_success_resolves_a_failure(aws: dict[str, str]) -> None:
    lambda_handler(_failure_event(), CONTEXT)
    _deliver("dynamodb")
    _deliver("s3")
    (item,) = _items()
    assert item["status"]["S"] == "SUCCEEDED"
    listed = boto3.client("s3").list_objects_v2(Bucket="out-bucket", Prefix="failures/").get("KeyCount")
    assert listed == 0  # the s3 sink removed the resolved failure record
    answer = lambda_handler(_failure_event(state="Deliver", error="SinkUnavailableError"), CONTEXT)
    assert "kept: already SUCCEEDED" in answer["written"]["dynamodb"]
    (item,) = _items()
    assert item["status"]["S"] == "SUCCEEDED"


def test_an_input_without_an_object_is_recorded_under_invalid(aws: dict[str, str]) -> None:
    event = _failure_event(state="DetectInput", error="InvalidInputError", context={"failure": {"input": {"hello": "world"}}})
    event["failure"]["cause"] = "Expected an S3 'Object Created' event"
    event["failure"]["input"] = {"hello": "world"}
    answer = lambda_handler(event, CONTEXT)
    assert answer["written"] == {"s3": "s3://out-bucket/failures/_invalid/abc.json"}
    record = json.loads(boto3.client("s3").get_object(Bucket="out-bucket", Key="failures/_invalid/abc.json")["Body"].read())
    assert record["source"] is None and record["input"] == {"hello": "world"}
    assert record["error"]["message"] == "Expected an S3 'Object Created' event"


def test_a_delivery_failure_lists_delivered_and_failed_sinks() -> None:
    context = {
        "job": {"source": SOURCE, "model": {"name": "demo", "version": "0123456789ab"}},
        "deliveries": [{"sink": "s3", "status": "DELIVERED"}, {"sink": "sqs", "status": "FAILED", "error": "SinkUnavailableError"}],
    }
    record = core.build_failure(_failure_event(state="Deliver", error="SinkUnavailableError", context=context))
    assert record["delivered_sinks"] == ["s3"] and record["failed_sinks"] == ["sqs"]
    assert record["model"] == {"name": "demo", "version": "0123456789ab", "resolved": True}


def test_aws_refusals_are_typed_throttles_are_transient(aws: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(code: str, status: int) -> Any:
        def send(*args: Any, **kwargs: Any) -> None:
            raise ClientError({"Error": {"Code": code, "Message": "no"}, "ResponseMetadata": {"HTTPStatusCode": status}}, "SendMessage")
        return send

    record = core.build_record(SOURCE, PREDICTION, EXECUTION)
    sqs = core.client("sqs")
    monkeypatch.setattr(sqs, "send_message", refuse("AWS.SimpleQueueService.NonExistentQueue", 400))
    with pytest.raises(SinkUnavailableError, match="sink 'sqs' refused"):
        core.deliver("sqs", record, core.Destinations.from_env())
    monkeypatch.setattr(sqs, "send_message", refuse("ThrottlingException", 400))
    with pytest.raises(TransientError):
        core.deliver("sqs", record, core.Destinations.from_env())
    monkeypatch.setattr(sqs, "send_message", refuse("InternalError", 500))
    with pytest.raises(TransientError):
        core.deliver("sqs", record, core.Destinations.from_env())
