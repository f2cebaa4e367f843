"""One sink, a whole batch: every classified object of an execution delivered in one invocation.

* S3 and DynamoDB write one object / one item per image (that is what they store); the requests
  run :data:`PARALLEL_WRITES` at a time.
* SNS, SQS and EventBridge publish with their batch APIs, 10 entries a request (PublishBatch,
  SendMessageBatch, PutEvents): SNS and SQS bill each request by 64 KB chunk, so ten small
  records cost one request.
* The delivery ledger of a message sink is one object per (sink, set of records):
  ``deliveries/<sink>/<ledger id>.json`` lists the record ids published. It is read first (a
  refusal to read it is an error, never "nothing published yet"), written *before* publishing
  with the records about to go out (so a ledger that cannot be written stops the delivery with
  nothing published), and written after with what did go out, also before a failure is raised.
  A retry, a redrive or a replay of the same batch publishes only what is missing; a record goes
  out twice only if the process dies between a publish and the ledger write just after it.
  The bucket's lifecycle rule expires the ledger after ``ledger_days`` (config/stack.json).

Example::

    deliver_batch("sns", {"bucket": "work", "key": ".../classified.json"}, execution_id, Destinations.from_env())
    # {"sink": "sns", "status": "DELIVERED", "delivered": 16, "location": "arn:aws:sns:..."}
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from functions.common.aws import client, error_code, is_not_found, is_transient, raise_transient
from functions.common.errors import (
    ConfigurationError,
    InvalidRequestError,
    SinkNotConfiguredError,
    SinkUnavailableError,
    TransientError,
)
from functions.common.log import logger
from functions.common.timing import since_ms
from functions.common.work import CLASSIFIED_STATUS, get_document
from functions.sink.core import LEDGER_PREFIX, SINKS, Destinations, PredictionRecord, build_record
from functions.sink.writers import WRITERS, Channel, MessageWriter, deliver

DELIVERED = "DELIVERED"
#: Entries per request of PublishBatch, SendMessageBatch and PutEvents (each service's maximum).
ENTRIES_PER_REQUEST = 10
#: ... and at most this many bytes of messages per request (each service allows 256 KiB).
BYTES_PER_REQUEST = 240 * 1024
#: Concurrent PutObject / PutItem requests of the S3 and DynamoDB sinks.
PARALLEL_WRITES = 8
#: Attempts at entries a batch API answered as failed for a reason worth retrying.
ENTRY_ATTEMPTS = 3


def records_of(document: Mapping[str, Any], execution_id: str) -> list[PredictionRecord]:
    """The prediction record of every classified object of a batch document, in batch order."""
    records = []
    for entry in document["items"]:
        if entry.get("status") != CLASSIFIED_STATUS:
            continue
        if not isinstance(entry.get("source"), dict) or not isinstance(entry.get("prediction"), dict):
            raise InvalidRequestError(
                f"batch entry {entry.get('index')!r} is CLASSIFIED without a source and a prediction"
            )
        records.append(build_record(entry["source"], entry["prediction"], execution_id))
    return records


def ledger_id(records: Sequence[PredictionRecord]) -> str:
    return hashlib.sha256("\n".join(sorted(r.record_id for r in records)).encode()).hexdigest()[:32]


def ledger_key(sink: str, records: Sequence[PredictionRecord]) -> str:
    return f"{LEDGER_PREFIX}{sink}/{ledger_id(records)}.json"


def _ledger_read(dest: Destinations, key: str) -> tuple[set[str], set[str]]:
    """(record ids the ledger says went out, ids an earlier attempt was sending when it stopped)."""
    if not dest.output_bucket:
        return set(), set()  # no ledger without an output bucket: at-least-once
    try:
        body = client("s3").get_object(Bucket=dest.output_bucket, Key=key)["Body"].read()
    except ClientError as exc:
        if is_not_found(exc):
            return set(), set()
        if is_transient(exc):
            raise_transient(exc, f"reading the delivery ledger s3://{dest.output_bucket}/{key}")
        # An AccessDenied here must not read as "nothing published yet": that is duplicates.
        raise SinkUnavailableError(
            f"cannot read the delivery ledger s3://{dest.output_bucket}/{key}: {error_code(exc)}"
        ) from exc
    except BotoCoreError as exc:
        raise_transient(exc, f"reading the delivery ledger s3://{dest.output_bucket}/{key}")
    try:
        ledger = json.loads(body)
        return set(ledger.get("delivered") or []), set(ledger.get("sending") or [])
    except (ValueError, AttributeError):
        logger.warning("unreadable delivery ledger; publishing everything again", extra={"key": key})
        return set(), set()


def _ledger_write(
    dest: Destinations,
    key: str,
    sink: str,
    delivered: set[str],
    execution_id: str,
    location: str,
    sending: set[str] | None = None,
) -> None:
    """Write the ledger; a refusal is SinkUnavailableError, never a silent "published" (that is duplicates)."""
    if not dest.output_bucket:
        return
    body = {
        "sink": sink,
        "location": location,
        "execution_id": execution_id,
        "delivered": sorted(delivered),
        **({"sending": sorted(sending)} if sending else {}),
    }
    where = f"the delivery ledger s3://{dest.output_bucket}/{key}"
    try:
        client("s3").put_object(
            Bucket=dest.output_bucket, Key=key, Body=json.dumps(body).encode(), ContentType="application/json"
        )
    except ClientError as exc:
        if is_transient(exc):
            raise_transient(exc, f"writing {where}")
        raise SinkUnavailableError(
            f"cannot write {where}: {error_code(exc)}: {exc.response.get('Error', {}).get('Message', '')}".rstrip(": ")
        ) from exc
    except BotoCoreError as exc:
        raise_transient(exc, f"writing {where}")


def _chunks(entries: list[tuple[str, dict[str, Any]]]) -> Iterator[list[tuple[str, dict[str, Any]]]]:
    """Entries in requests of at most ENTRIES_PER_REQUEST entries and BYTES_PER_REQUEST bytes."""
    chunk: list[tuple[str, dict[str, Any]]] = []
    size = 0
    for record_id, entry in entries:
        entry_size = len(json.dumps(entry, ensure_ascii=False).encode())
        if chunk and (len(chunk) == ENTRIES_PER_REQUEST or size + entry_size > BYTES_PER_REQUEST):
            yield chunk
            chunk, size = [], 0
        chunk.append((record_id, entry))
        size += entry_size
    if chunk:
        yield chunk


def _publish(writer: MessageWriter, records: list[PredictionRecord], dest: Destinations, execution_id: str) -> str:
    """Publish what the ledger does not list yet; where it went. The ledger is noted before and after."""
    sink = writer.name
    channel = writer.open(dest)
    if channel.location.endswith(".fifo"):  # they need MessageGroupId; the pipeline deduplicates by its ledger instead
        raise ConfigurationError(
            f"sink '{sink}' is a FIFO topic or queue ({channel.location}): the pipeline publishes to standard ones; "
            "point it at a standard topic or queue (Terraform creates standard ones)"
        )
    key = ledger_key(sink, records)
    delivered, interrupted = _ledger_read(dest, key)
    pending = [record for record in records if record.record_id not in delivered]
    if not pending:
        logger.info("batch already published to this sink; not publishing again", extra={"ledger": key})
        return channel.location
    if interrupted - delivered:
        logger.warning(
            "an earlier attempt stopped while publishing; those records go out again and may arrive twice",
            extra={"ledger": key, "records": len(interrupted - delivered)},
        )
    # Written before anything goes out: a ledger that cannot be written stops the delivery here,
    # with nothing published, instead of publishing what a retry would publish again.
    _ledger_write(dest, key, sink, delivered, execution_id, channel.location, sending={r.record_id for r in pending})
    failure = _publish_pending(writer, channel, pending, dest, delivered)
    try:
        _ledger_write(dest, key, sink, delivered, execution_id, channel.location)
    except (SinkUnavailableError, TransientError, ConfigurationError) as ledger_failure:
        if failure is None:
            raise  # published: the retry publishes again what the ledger could not note (at least once)
        logger.error(
            "could not note the delivery ledger after a failed publish",
            extra={"ledger": key, "reason": str(ledger_failure)},
        )
    if failure is not None:
        raise failure
    return channel.location


def _publish_pending(
    writer: MessageWriter, channel: Channel, pending: list[PredictionRecord], dest: Destinations, delivered: set[str]
) -> Exception | None:
    """Publish ``pending``, adding to ``delivered`` what went out; the error that stopped it, classified, or None."""
    sink = writer.name
    try:
        _publish_with_retries(writer, channel, pending, dest, delivered)
    except (SinkUnavailableError, TransientError, ConfigurationError) as exc:
        return exc
    except ClientError as exc:
        if is_transient(exc):
            return TransientError(f"delivering to sink '{sink}': {exc}")
        message = exc.response.get("Error", {}).get("Message", "")
        return SinkUnavailableError(f"sink '{sink}' refused the batch: {error_code(exc)}: {message}".rstrip(": "))
    except BotoCoreError as exc:  # a connection problem is transient, a missing region or credentials is not
        try:
            raise_transient(exc, f"delivering to sink '{sink}'")
        except (TransientError, ConfigurationError) as classified:
            return classified
    return None


def _publish_with_retries(
    writer: MessageWriter, channel: Channel, pending: list[PredictionRecord], dest: Destinations, delivered: set[str]
) -> None:
    """Up to ENTRY_ATTEMPTS rounds, each sending again only the entries the last answered as worth retrying."""
    for attempt in range(ENTRY_ATTEMPTS):
        retry, detail = _publish_round(writer, channel, pending, dest, delivered)
        if not retry:
            return
        pending = retry
        if attempt + 1 == ENTRY_ATTEMPTS:
            raise TransientError(
                f"sink '{writer.name}': {len(retry)} record(s) still failing after {ENTRY_ATTEMPTS} attempts: {detail}"
            )
        time.sleep(0.2 * 2**attempt)


def _publish_round(
    writer: MessageWriter, channel: Channel, pending: list[PredictionRecord], dest: Destinations, delivered: set[str]
) -> tuple[list[PredictionRecord], str]:
    """Every pending record sent once, in requests of ENTRIES_PER_REQUEST; (the records to retry,
    the last request's failure text). A permanent failure raises SinkUnavailableError."""
    by_id = {record.record_id: record for record in pending}
    entries = [(record.record_id, writer.entry(record, dest)) for record in pending]
    retry: list[PredictionRecord] = []
    detail = ""
    for chunk in _chunks(entries):
        request = chunk
        if writer.numbered_entries:  # ids unique within a request, as PublishBatch / SendMessageBatch require
            request = [(record_id, {**entry, "Id": f"e{j}"}) for j, (record_id, entry) in enumerate(chunk)]
        transient, permanent, detail = channel.failures(
            channel.send([entry for _, entry in request]), [r for r, _ in request]
        )
        delivered |= {record_id for record_id, _ in request} - set(transient) - set(permanent)
        if permanent:
            raise SinkUnavailableError(
                f"sink '{writer.name}' refused {len(permanent)} record(s), e.g. {permanent[0]}: {detail}"
            )
        retry.extend(by_id[record_id] for record_id in transient)
    return retry, detail


def _write_each(sink: str, records: list[PredictionRecord], dest: Destinations) -> str:
    """One PutObject / PutItem per record, PARALLEL_WRITES at a time; where they went (their common prefix)."""

    def one(record: PredictionRecord) -> str:
        return deliver(sink, record, dest)

    if len(records) == 1:
        return one(records[0])
    with ThreadPoolExecutor(max_workers=PARALLEL_WRITES, thread_name_prefix=f"sink-{sink}") as pool:
        locations = list(pool.map(one, records))
    common = os.path.commonprefix(locations)  # noqa: RUF071  (a string prefix, cut back to its last '/' below)
    return common if common.endswith("/") else common.rsplit("/", 1)[0] + "/"


def deliver_batch(sink: str, batch: Any, execution_id: str, dest: Destinations) -> dict[str, Any]:
    """Deliver every classified record of the batch document ``batch`` to ``sink``."""
    if sink not in SINKS:
        raise SinkNotConfiguredError(f"unknown sink '{sink}'; known sinks: {', '.join(SINKS)}")
    document = get_document(client("s3"), batch)
    records = records_of(document, execution_id)
    if not records:
        return {"sink": sink, "status": DELIVERED, "delivered": 0, "location": None}
    started = time.perf_counter()
    writer = WRITERS[sink]
    if isinstance(writer, MessageWriter):
        location = _publish(writer, records, dest, execution_id)
    else:
        location = _write_each(sink, records, dest)
    logger.info(
        "batch delivered",
        extra={
            "delivered": len(records),
            "location": location,
            "ms": round(since_ms(started), 1),
        },
    )
    return {"sink": sink, "status": DELIVERED, "delivered": len(records), "location": location}


__all__ = ["DELIVERED", "ENTRIES_PER_REQUEST", "deliver_batch", "ledger_key", "records_of"]
