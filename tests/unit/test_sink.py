"""The sink function writes one identical, idempotent record per sink (moto as AWS)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from types import SimpleNamespace

import boto3
import pytest
from moto import mock_aws

from functions.common.config import invocation_environment
from functions.common.errors import InvalidRequestError, SinkNotConfiguredError, TransientError
from functions.sink import core
from functions.sink.handler import lambda_handler

SOURCE = {"bucket": "in-bucket", "key": "holiday photos/café+1%.jpg", "version_id": "v1", "etag": "abc", "size": 10}
PREDICTION = {
    "model": {"name": "demo", "version": "0123456789ab", "architecture": "resnet", "inference_mode": "fp32"},
    "top_k": [{"label": "circle", "index": 0, "probability": 0.9}, {"label": "ring", "index": 4, "probability": 0.05}],
}
EXECUTION = "arn:aws:states:us-east-1:123456789012:execution:pipeline:abc"
CONTEXT = SimpleNamespace(function_name="sink", memory_limit_in_mb=256, invoked_function_arn="arn:aws:lambda:us-east-1:123456789012:function:sink", aws_request_id="req-1")


@pytest.fixture
def aws() -> Iterator[dict[str, str]]:
    """GIVEN every sink resource exists, and taps to read SNS and EventBridge back."""
    with mock_aws():
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="out-bucket")
        ddb = boto3.client("dynamodb")
        ddb.create_table(
            TableName="preds",
            KeySchema=[{"AttributeName": "object", "KeyType": "HASH"}, {"AttributeName": "version", "KeyType": "RANGE"}],
            AttributeDefinitions=[{"AttributeName": "object", "AttributeType": "S"}, {"AttributeName": "version", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        sqs = boto3.client("sqs")
        queue = sqs.create_queue(QueueName="preds")["QueueUrl"]
        tap = sqs.create_queue(QueueName="tap")["QueueUrl"]
        tap_arn = sqs.get_queue_attributes(QueueUrl=tap, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        topic = boto3.client("sns").create_topic(Name="preds")["TopicArn"]
        boto3.client("sns").subscribe(TopicArn=topic, Protocol="sqs", Endpoint=tap_arn, Attributes={"RawMessageDelivery": "true"})
        events = boto3.client("events")
        events.create_event_bus(Name="preds-bus")
        events_tap = sqs.create_queue(QueueName="events-tap")["QueueUrl"]
        events_tap_arn = sqs.get_queue_attributes(QueueUrl=events_tap, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        events.put_rule(Name="all", EventBusName="preds-bus", EventPattern=json.dumps({"source": ["inferpipe"]}))
        events.put_targets(Rule="all", EventBusName="preds-bus", Targets=[{"Id": "tap", "Arn": events_tap_arn}])
        env = {
            "OUTPUT_BUCKET": "out-bucket",
            "OUTPUT_PREFIX": "predictions/",
            "PREDICTIONS_TABLE": "preds",
            "PREDICTIONS_TOPIC_ARN": topic,
            "PREDICTIONS_QUEUE_URL": queue,
            "PREDICTIONS_EVENT_BUS": "preds-bus",
        }
        with invocation_environment(env):
            yield {**env, "sns_tap": tap, "events_tap": events_tap}


def _deliver(sink: str) -> dict[str, str]:
    return lambda_handler({"sink": sink, "source": SOURCE, "prediction": PREDICTION, "execution_id": EXECUTION}, CONTEXT)


def _drain(queue_url: str) -> list[dict]:
    messages = boto3.client("sqs").receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, MessageAttributeNames=["All"])
    return messages.get("Messages", [])


def test_every_sink_holds_the_same_record(aws: dict[str, str]) -> None:
    # WHEN the record is delivered to all five sinks
    results = {sink: _deliver(sink) for sink in core.SINKS}

    # THEN each sink holds exactly one record with the same id, model version and top-1
    record_ids = {result["record_id"] for result in results.values()}
    assert len(record_ids) == 1
    body = boto3.client("s3").get_object(Bucket="out-bucket", Key="predictions/in-bucket/holiday photos/café+1%.jpg.json")["Body"].read()
    s3_record = json.loads(body)
    assert s3_record["top1"]["label"] == "circle" and s3_record["model"]["version"] == "0123456789ab"
    assert s3_record["source"]["key"] == SOURCE["key"]
    items = boto3.client("dynamodb").scan(TableName="preds")["Items"]
    assert [(i["object"]["S"], i["version"]["S"], i["label"]["S"]) for i in items] == [
        ("s3://in-bucket/holiday photos/café+1%.jpg", "v1", "circle")
    ]
    queued = _drain(aws["PREDICTIONS_QUEUE_URL"])
    assert [json.loads(m["Body"])["record_id"] for m in queued] == list(record_ids)
    assert queued[0]["MessageAttributes"]["record_id"]["StringValue"] in record_ids
    published = _drain(aws["sns_tap"])
    assert [json.loads(m["Body"])["record_id"] for m in published] == list(record_ids)
    emitted = _drain(aws["events_tap"])
    assert len(emitted) == 1
    event = json.loads(emitted[0]["Body"])
    assert event["detail-type"] == "Image Classified" and event["detail"]["record_id"] in record_ids


def test_redelivery_overwrites_instead_of_duplicating_in_storage_sinks(aws: dict[str, str]) -> None:
    # WHEN the same prediction is delivered twice (a retried Map branch)
    first, second = _deliver("dynamodb"), _deliver("dynamodb")
    _deliver("s3"), _deliver("s3")

    # THEN storage sinks still hold one record, under the same id
    assert first["record_id"] == second["record_id"]
    assert boto3.client("dynamodb").scan(TableName="preds")["Count"] == 1
    listed = boto3.client("s3").list_objects_v2(Bucket="out-bucket")["KeyCount"]
    assert listed == 1


def test_a_new_model_version_gets_a_new_record_id() -> None:
    other = {**PREDICTION, "model": {**PREDICTION["model"], "version": "ffffffffffff"}}
    assert core.build_record(SOURCE, PREDICTION, EXECUTION)["record_id"] != core.build_record(SOURCE, other, EXECUTION)["record_id"]


def test_undeployed_sink_is_a_permanent_error_naming_the_variable(aws: dict[str, str]) -> None:
    with invocation_environment({"OUTPUT_BUCKET": "out-bucket"}):
        with pytest.raises(SinkNotConfiguredError, match="PREDICTIONS_QUEUE_URL"):
            _deliver("sqs")
    with pytest.raises(SinkNotConfiguredError, match="unknown sink 'kafka'"):
        _deliver("kafka")


def test_missing_prediction_is_rejected_clearly(aws: dict[str, str]) -> None:
    with pytest.raises(InvalidRequestError, match="prediction"):
        lambda_handler({"sink": "s3", "source": SOURCE, "execution_id": EXECUTION}, CONTEXT)


@pytest.mark.parametrize(
    ("code", "status", "transient"),
    [
        ("ProvisionedThroughputExceededException", 400, True),
        ("ThrottlingException", 400, True),
        ("SlowDown", 503, True),
        ("InternalError", 500, True),
        ("ResourceNotFoundException", 400, False),
        ("AccessDenied", 403, False),
    ],
)
def test_aws_failures_are_retried_only_when_retrying_can_help(code: str, status: int, transient: bool) -> None:
    from botocore.exceptions import ClientError

    from functions.common.aws import raise_transient

    error = ClientError({"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}, "PutItem")
    expected = TransientError if transient else ClientError
    with pytest.raises(expected):
        raise_transient(error, "delivering to sink 'dynamodb'")
