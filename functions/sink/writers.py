"""Every sink's writer, registered by name: how one prediction record reaches S3, DynamoDB, SNS, SQS
or EventBridge.

A sink is one entry in config/stack.json ``sinks.known`` plus one writer in :data:`WRITERS`
(docs/adding-a-sink.md):

* a :class:`RecordWriter` stores each record, one request per object, idempotently by ``record_id``:

  * S3: the key's latest view (``predictions/<bucket>/<key>.json``) is the newest version's record
    and never goes back to an older version; every other version's record is its version's entry
    (``predictions/_versions/<bucket>/<key>/<version>.json``): see :mod:`functions.sink.records`.
  * DynamoDB: one item per object version, written with a condition so that a duplicate of a
    delivered record is a no-op, while a different record of that version (another model version,
    another ``top_k``) *replaces* the item and a FAILED item is resolved.

* a :class:`MessageWriter` (stack.json ``publishes: true``) turns each record into one entry of its
  service's batch API (SNS PublishBatch, SQS SendMessageBatch, EventBridge PutEvents);
  :mod:`functions.sink.batch` sends them and keeps the ledger that stops a retry publishing twice.

Example::

    location = deliver("dynamodb", record, Destinations.from_env())
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from types import MappingProxyType
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from functions.common import config
from functions.common.aws import client, error_code, is_transient, raise_transient
from functions.common.errors import SinkNotConfiguredError, SinkUnavailableError, TransientError
from functions.common.log import logger
from functions.sink import records as views
from functions.sink.core import (
    EVENT_DETAIL_TYPE,
    EVENT_SOURCE,
    SUCCEEDED,
    Destinations,
    PredictionRecord,
    need,
    prefixes,
)

#: EventBridge PutEvents entry error codes worth retrying (the others are the entry's fault):
#: https://docs.aws.amazon.com/eventbridge/latest/APIReference/API_PutEventsResultEntry.html
RETRIED_ENTRY_CODES = frozenset({"InternalFailure", "ThrottlingException", "ServiceUnavailable", "InternalException"})

#: ``(transient, permanent, detail)`` of a batch API's answer: the record ids of the entries that
#: failed for a reason worth retrying, of those that failed for good, and the last failure's text.
EntryFailures = tuple[list[str], list[str], str]


@dataclass(frozen=True)
class RecordWriter:
    """A sink that stores each record: one request per object."""

    name: str
    #: writes one record; where it went. AWS errors propagate: :func:`deliver` classifies them.
    write: Callable[[PredictionRecord, Destinations], str]


@dataclass(frozen=True)
class Channel:
    """A message sink's destination, ready to publish to."""

    #: what the delivery answers as its location (topic ARN, queue URL, ``events://<bus>``)
    location: str
    #: one batch API request of at most ENTRIES_PER_REQUEST entries; the service's response
    send: Callable[[list[dict[str, Any]]], Any]
    #: which entries of a response failed, by record id
    failures: Callable[[Any, list[str]], EntryFailures]


@dataclass(frozen=True)
class MessageWriter:
    """A sink that publishes each record as a message, many a request."""

    name: str
    #: the sink's channel; SinkNotConfiguredError when it is not deployed
    open: Callable[[Destinations], Channel]
    #: one record as one entry of the batch API
    entry: Callable[[PredictionRecord, Destinations], dict[str, Any]]
    #: the API wants an ``Id`` per entry, unique within its request (PublishBatch, SendMessageBatch)
    numbered_entries: bool


Writer = RecordWriter | MessageWriter


# --------------------------------------------------------------------------- S3, DynamoDB


def _to_s3(record: PredictionRecord, dest: Destinations) -> str:
    bucket = need(dest.output_bucket, "s3", config.OUTPUT_BUCKET)
    metadata = {"record-id": record.record_id, "model-version": record.model["version"]}
    outcome = views.publish(client("s3"), bucket, views.PREDICTION, record.to_dict(), prefixes(dest), metadata)
    return f"s3://{bucket}/{outcome.key}"


def _to_dynamodb(record: PredictionRecord, dest: Destinations) -> str:
    table = need(dest.table, "dynamodb", config.PREDICTIONS_TABLE)
    source = record.source
    item = {
        "object": {"S": f"s3://{source['bucket']}/{source['key']}"},
        "version": {"S": source["version_id"] or "null"},
        "record_id": {"S": record.record_id},
        "status": {"S": SUCCEEDED},
        "model": {"S": record.model["name"]},
        "model_version": {"S": record.model["version"]},
        "label": {"S": str(record.top1["label"])},
        "probability": {"N": str(Decimal(str(round(float(record.top1["probability"]), 6))))},
        "top_k": {
            "S": json.dumps(list(record.top_k), ensure_ascii=False, separators=(",", ":"))
        },  # compact: billed by the KB
        "execution_id": {"S": record.execution_id},
        "recorded_at": {"S": record.recorded_at},
    }
    location = f"dynamodb://{table}/{item['object']['S']}#{item['version']['S']}"
    try:
        # Written unless this very record is already there and SUCCEEDED: a duplicate is a no-op,
        # a FAILED item is resolved, a different model version replaces the item.
        client("dynamodb").put_item(
            TableName=table,
            Item=item,
            ConditionExpression="attribute_not_exists(#o) OR #s <> :succeeded OR #r <> :rid",
            ExpressionAttributeNames={"#o": "object", "#s": "status", "#r": "record_id"},
            ExpressionAttributeValues={":succeeded": {"S": SUCCEEDED}, ":rid": {"S": record.record_id}},
        )
    except ClientError as exc:
        if error_code(exc) != "ConditionalCheckFailedException":
            raise
        logger.info("record already in DynamoDB; nothing written", extra={"record_id": record.record_id})
    return location


# --------------------------------------------------------------------------- SNS, SQS, EventBridge


def _message_attributes(record: PredictionRecord) -> dict[str, dict[str, str]]:
    """What a subscriber can filter on without parsing the body (SNS filter policies, SQS attributes)."""
    return {
        "record_id": {"DataType": "String", "StringValue": record.record_id},
        "label": {"DataType": "String", "StringValue": str(record.top1["label"])},
        "model_version": {"DataType": "String", "StringValue": record.model["version"]},
    }


def _sns_open(dest: Destinations) -> Channel:
    topic = need(dest.topic_arn, "sns", config.PREDICTIONS_TOPIC_ARN)

    def send(entries: list[dict[str, Any]]) -> Any:
        return client("sns").publish_batch(TopicArn=topic, PublishBatchRequestEntries=entries)

    return Channel(topic, send, _sender_fault_answer)


def _sns_entry(record: PredictionRecord, dest: Destinations) -> dict[str, Any]:
    body = json.dumps(record.to_dict(), ensure_ascii=False)
    return {"Id": "", "Message": body, "MessageAttributes": _message_attributes(record)}


def _sqs_open(dest: Destinations) -> Channel:
    queue = need(dest.queue_url, "sqs", config.PREDICTIONS_QUEUE_URL)

    def send(entries: list[dict[str, Any]]) -> Any:
        return client("sqs").send_message_batch(QueueUrl=queue, Entries=entries)

    return Channel(queue, send, _sender_fault_answer)


def _sqs_entry(record: PredictionRecord, dest: Destinations) -> dict[str, Any]:
    body = json.dumps(record.to_dict(), ensure_ascii=False)
    return {"Id": "", "MessageBody": body, "MessageAttributes": _message_attributes(record)}


def _sender_fault_answer(response: Any, ids: list[str]) -> EntryFailures:
    """(transient, permanent, detail) of a PublishBatch / SendMessageBatch answer: ``SenderFault``
    entries are the request's fault (retrying cannot help), the others the service's."""
    transient: list[str] = []
    permanent: list[str] = []
    detail = ""
    by_entry = {f"e{i}": record_id for i, record_id in enumerate(ids)}
    for failed in response.get("Failed") or []:
        record_id = by_entry.get(str(failed.get("Id")), str(failed.get("Id")))
        (permanent if failed.get("SenderFault") else transient).append(record_id)
        detail = f"{failed.get('Code')}: {failed.get('Message')}"
    return transient, permanent, detail


def _events_open(dest: Destinations) -> Channel:
    bus = need(dest.event_bus, "eventbridge", config.PREDICTIONS_EVENT_BUS)

    def send(entries: list[dict[str, Any]]) -> Any:
        return client("events").put_events(Entries=entries)

    return Channel(f"events://{bus}", send, _events_answer)


def _events_answer(response: Any, ids: list[str]) -> EntryFailures:
    """PutEvents answers every entry in order; a failed one carries an ErrorCode."""
    transient: list[str] = []
    permanent: list[str] = []
    detail = ""
    if not response.get("FailedEntryCount"):
        return transient, permanent, detail
    for record_id, entry in zip(ids, response.get("Entries") or [], strict=False):
        code = entry.get("ErrorCode")
        if code:
            (transient if code in RETRIED_ENTRY_CODES else permanent).append(record_id)
            detail = f"{code}: {entry.get('ErrorMessage')}"
    return transient, permanent, detail


def _events_entry(record: PredictionRecord, dest: Destinations) -> dict[str, Any]:
    return {
        "Source": EVENT_SOURCE,
        "DetailType": EVENT_DETAIL_TYPE,
        "Detail": json.dumps(record.to_dict(), ensure_ascii=False),
        "EventBusName": dest.event_bus,
        "Resources": [record.execution_id],
    }


#: Every sink's writer, by the name config/stack.json ``sinks.known`` gives it.
WRITERS: Mapping[str, Writer] = MappingProxyType(
    {
        writer.name: writer
        for writer in (
            RecordWriter("s3", _to_s3),
            RecordWriter("dynamodb", _to_dynamodb),
            MessageWriter("sns", _sns_open, _sns_entry, numbered_entries=True),
            MessageWriter("sqs", _sqs_open, _sqs_entry, numbered_entries=True),
            MessageWriter("eventbridge", _events_open, _events_entry, numbered_entries=False),
        )
    }
)


def deliver(sink: str, record: PredictionRecord, dest: Destinations) -> str:
    """Write ``record`` with a :class:`RecordWriter` sink (S3, DynamoDB); returns where it went.
    Transient AWS failures raise TransientError, the sink's refusals SinkUnavailableError."""
    writer = WRITERS.get(sink)
    if not isinstance(writer, RecordWriter):
        stores = [name for name, each in WRITERS.items() if isinstance(each, RecordWriter)]
        raise SinkNotConfiguredError(f"sink '{sink}' has no per-record writer; these do: {', '.join(stores)}")
    try:
        return writer.write(record, dest)
    except (SinkNotConfiguredError, TransientError):
        raise
    except ClientError as exc:  # retry only what retrying can fix; the rest is the sink's resource saying no
        if is_transient(exc):
            raise TransientError(f"delivering to sink '{sink}': {exc}") from exc
        error = exc.response.get("Error", {})
        raise SinkUnavailableError(
            f"sink '{sink}' refused the record {record.record_id}: {error_code(exc)}: {error.get('Message', '')}".rstrip(
                ": "
            )
        ) from exc
    except BotoCoreError as exc:  # connection problems, timeouts
        raise_transient(exc, f"delivering to sink '{sink}'")


__all__ = [
    "RETRIED_ENTRY_CODES",
    "WRITERS",
    "Channel",
    "EntryFailures",
    "MessageWriter",
    "RecordWriter",
    "Writer",
    "deliver",
]
