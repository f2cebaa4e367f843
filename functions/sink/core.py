"""Build the prediction record and deliver it to one sink: S3, DynamoDB, SNS, SQS or EventBridge.

Every sink receives the same record, identified by ``record_id``: a hash of the source object
version and the model version. Writes are keyed by it (S3 key per object, DynamoDB item per
object version, FIFO deduplication ids, a ``record_id`` attribute on every message) so a retried
or replayed delivery does not create a second record.

Example::

    record = build_record(source, prediction, execution_id="arn:aws:states:…")
    location = deliver("dynamodb", record, Destinations.from_env())
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

from functions.common import config
from functions.common.aws import client, raise_transient
from functions.common.errors import InvalidRequestError, SinkNotConfiguredError, TransientError
from functions.common.log import object_uri

SCHEMA = "inferpipe.prediction/1"
EVENT_SOURCE = "inferpipe"
EVENT_DETAIL_TYPE = "Image Classified"
SINKS = ("s3", "dynamodb", "sns", "sqs", "eventbridge")


@dataclass(frozen=True)
class Destinations:
    """Where each sink writes; ``None`` means the sink is not deployed."""

    output_bucket: str | None = None
    output_prefix: str = "predictions/"
    table: str | None = None
    topic_arn: str | None = None
    queue_url: str | None = None
    event_bus: str | None = None

    @classmethod
    def from_env(cls) -> Destinations:
        return cls(
            output_bucket=config.optional(config.OUTPUT_BUCKET),
            output_prefix=config.optional(config.OUTPUT_PREFIX) or "predictions/",
            table=config.optional(config.PREDICTIONS_TABLE),
            topic_arn=config.optional(config.PREDICTIONS_TOPIC_ARN),
            queue_url=config.optional(config.PREDICTIONS_QUEUE_URL),
            event_bus=config.optional(config.PREDICTIONS_EVENT_BUS),
        )


def record_id(source: Mapping[str, Any], model: Mapping[str, Any]) -> str:
    """Stable id of one (object version, model version) prediction."""
    parts = [source["bucket"], source["key"], source.get("version_id") or "", model["name"], model["version"]]
    return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()[:32]


def build_record(
    source: Mapping[str, Any], prediction: Mapping[str, Any], execution_id: str, now: datetime | None = None
) -> dict[str, Any]:
    """The prediction record every sink stores."""
    try:
        model = prediction["model"]
        top_k = list(prediction["top_k"])
        bucket, key = source["bucket"], source["key"]
    except (KeyError, TypeError) as missing:
        raise InvalidRequestError(f"sink input lacks {missing}: expected source{{bucket,key}} and prediction{{model,top_k}}") from None
    if not top_k:
        raise InvalidRequestError("sink input has an empty prediction.top_k")
    created = (now or datetime.now(timezone.utc)).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return {
        "schema": SCHEMA,
        "record_id": record_id(source, model),
        "status": "SUCCEEDED",
        "source": {
            "bucket": bucket,
            "key": key,
            "version_id": source.get("version_id"),
            "etag": source.get("etag"),
            "size": source.get("size"),
            "uri": object_uri(bucket, key, source.get("version_id")),
        },
        "model": {
            "name": model["name"],
            "version": model["version"],
            "architecture": model.get("architecture"),
            "inference_mode": model.get("inference_mode"),
        },
        "top1": top_k[0],
        "top_k": top_k,
        "execution_id": execution_id,
        "recorded_at": created,
    }


def _is_fifo(name: str) -> bool:
    return name.endswith(".fifo")


def output_key(prefix: str, source: Mapping[str, Any]) -> str:
    """``predictions/<source bucket>/<source key>.json``: one result object per input object."""
    return f"{prefix}{source['bucket']}/{source['key']}.json"


def _to_s3(record: dict[str, Any], dest: Destinations) -> str:
    bucket = _need(dest.output_bucket, "s3", config.OUTPUT_BUCKET)
    key = output_key(dest.output_prefix, record["source"])
    client("s3").put_object(
        Bucket=bucket,
        Key=key,
        Body=json.dumps(record, ensure_ascii=False, indent=2).encode("utf-8"),
        ContentType="application/json",
        Metadata={"record-id": record["record_id"], "model-version": record["model"]["version"]},
    )
    return f"s3://{bucket}/{key}"


def _to_dynamodb(record: dict[str, Any], dest: Destinations) -> str:
    table = _need(dest.table, "dynamodb", config.PREDICTIONS_TABLE)
    source = record["source"]
    item = {
        "object": {"S": f"s3://{source['bucket']}/{source['key']}"},
        "version": {"S": source["version_id"] or "null"},
        "record_id": {"S": record["record_id"]},
        "status": {"S": record["status"]},
        "model": {"S": record["model"]["name"]},
        "model_version": {"S": record["model"]["version"]},
        "label": {"S": str(record["top1"]["label"])},
        "probability": {"N": str(Decimal(str(round(float(record["top1"]["probability"]), 6))))},
        "top_k": {"S": json.dumps(record["top_k"], ensure_ascii=False)},
        "execution_id": {"S": record["execution_id"]},
        "recorded_at": {"S": record["recorded_at"]},
    }
    client("dynamodb").put_item(TableName=table, Item=item)
    return f"dynamodb://{table}/{item['object']['S']}#{item['version']['S']}"


def _message_attributes(record: dict[str, Any]) -> dict[str, dict[str, str]]:
    return {
        "record_id": {"DataType": "String", "StringValue": record["record_id"]},
        "label": {"DataType": "String", "StringValue": str(record["top1"]["label"])},
        "model_version": {"DataType": "String", "StringValue": record["model"]["version"]},
    }


def _to_sns(record: dict[str, Any], dest: Destinations) -> str:
    topic = _need(dest.topic_arn, "sns", config.PREDICTIONS_TOPIC_ARN)
    extra: dict[str, str] = {}
    if _is_fifo(topic):
        extra = {"MessageGroupId": record["source"]["uri"][:128], "MessageDeduplicationId": record["record_id"]}
    client("sns").publish(
        TopicArn=topic, Message=json.dumps(record, ensure_ascii=False), MessageAttributes=_message_attributes(record), **extra
    )
    return topic


def _to_sqs(record: dict[str, Any], dest: Destinations) -> str:
    queue = _need(dest.queue_url, "sqs", config.PREDICTIONS_QUEUE_URL)
    extra: dict[str, str] = {}
    if _is_fifo(queue):
        extra = {"MessageGroupId": record["source"]["uri"][:128], "MessageDeduplicationId": record["record_id"]}
    client("sqs").send_message(
        QueueUrl=queue, MessageBody=json.dumps(record, ensure_ascii=False), MessageAttributes=_message_attributes(record), **extra
    )
    return queue


def _to_eventbridge(record: dict[str, Any], dest: Destinations) -> str:
    bus = _need(dest.event_bus, "eventbridge", config.PREDICTIONS_EVENT_BUS)
    answer = client("events").put_events(
        Entries=[
            {
                "Source": EVENT_SOURCE,
                "DetailType": EVENT_DETAIL_TYPE,
                "Detail": json.dumps(record, ensure_ascii=False),
                "EventBusName": bus,
                "Resources": [record["execution_id"]],
            }
        ]
    )
    if answer.get("FailedEntryCount"):
        entry = answer["Entries"][0]
        raise TransientError(f"EventBridge put_events to {bus} rejected the record: {entry.get('ErrorCode')} {entry.get('ErrorMessage')}")
    return f"events://{bus}"


def _need(value: str | None, sink: str, variable: str) -> str:
    if not value:
        raise SinkNotConfiguredError(f"sink '{sink}' is not deployed here ({variable} is not set)")
    return value


_WRITERS: dict[str, Callable[[dict[str, Any], Destinations], str]] = {
    "s3": _to_s3,
    "dynamodb": _to_dynamodb,
    "sns": _to_sns,
    "sqs": _to_sqs,
    "eventbridge": _to_eventbridge,
}


def deliver(sink: str, record: dict[str, Any], dest: Destinations) -> str:
    """Write ``record`` to ``sink``; returns where it went. Transient AWS failures raise TransientError."""
    writer = _WRITERS.get(sink)
    if writer is None:
        raise SinkNotConfiguredError(f"unknown sink '{sink}'; known sinks: {', '.join(SINKS)}")
    try:
        return writer(record, dest)
    except (SinkNotConfiguredError, TransientError):
        raise
    except Exception as exc:  # botocore errors: retry only what retrying can fix
        raise_transient(exc, f"delivering to sink '{sink}'")
