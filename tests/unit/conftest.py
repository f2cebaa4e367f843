"""Fixtures shared by the sink's unit tests (test_sink.py, test_sink_failures.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import boto3
import pytest
from moto import mock_aws

from functions.common.config import invocation_environment


@pytest.fixture
def sink_resources() -> Iterator[dict[str, str]]:
    """GIVEN every sink resource exists (moto), the sink function's environment naming them,, and taps to read SNS and EventBridge back."""
    with mock_aws():
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="out-bucket")
        s3.create_bucket(Bucket="work-bucket")
        ddb = boto3.client("dynamodb")
        ddb.create_table(
            TableName="preds",
            KeySchema=[
                {"AttributeName": "object", "KeyType": "HASH"},
                {"AttributeName": "version", "KeyType": "RANGE"},
            ],
            AttributeDefinitions=[
                {"AttributeName": "object", "AttributeType": "S"},
                {"AttributeName": "version", "AttributeType": "S"},
            ],
            BillingMode="PAY_PER_REQUEST",
        )
        sqs = boto3.client("sqs")
        queue = sqs.create_queue(QueueName="preds")["QueueUrl"]
        tap = sqs.create_queue(QueueName="tap")["QueueUrl"]
        tap_arn = sqs.get_queue_attributes(QueueUrl=tap, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        topic = boto3.client("sns").create_topic(Name="preds")["TopicArn"]
        boto3.client("sns").subscribe(
            TopicArn=topic, Protocol="sqs", Endpoint=tap_arn, Attributes={"RawMessageDelivery": "true"}
        )
        events = boto3.client("events")
        events.create_event_bus(Name="preds-bus")
        events_tap = sqs.create_queue(QueueName="events-tap")["QueueUrl"]
        events_tap_arn = sqs.get_queue_attributes(QueueUrl=events_tap, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]
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
