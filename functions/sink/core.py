"""Build the prediction record and deliver it to S3 or DynamoDB; write failure records.

Every sink receives the same record, identified by ``record_id``: a hash of the source object
version, the model version and how many classes were asked for. Delivery is idempotent per record:

* S3: the key's latest view (``predictions/<bucket>/<key>.json``) is the newest version's record
  and never goes back to an older version; every other version's record is its version's entry
  (``predictions/_versions/<bucket>/<key>/<version>.json``): see :mod:`functions.sink.records`
  (layout, key encoding, order).
* DynamoDB: one item per object version, written with a condition so that a duplicate of a
  delivered record is a no-op, while a different record of that version (another model version,
  another ``top_k``) *replaces* the item and a FAILED item is resolved.
* SNS, SQS, EventBridge publish a whole batch: :mod:`functions.sink.batch` (and its ledger).

A manual re-run with other options (``top_k`` 3 after 5) is a new record: every sink gets it.

Failures are recorded here too (:func:`record_failure`): the state machine's ``RecordFailure``
state and the status recorder write them; see docs/operations.md.

Example::

    record = build_record(source, prediction, execution_id="arn:aws:states:…")
    location = deliver("dynamodb", record, Destinations.from_env())
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from functions.common import config, stack
from functions.common.aws import client, error_code, is_transient, raise_transient
from functions.common.errors import InvalidRequestError, SinkNotConfiguredError, SinkUnavailableError, TransientError
from functions.common.log import logger, object_uri
from functions.sink import records as views

SCHEMA = "inferpipe.prediction/1"
EVENT_SOURCE = "inferpipe"
EVENT_DETAIL_TYPE = "Image Classified"
SINKS = stack.SINKS
MESSAGE_SINKS = stack.MESSAGE_SINKS
FAILURE_SCHEMA = "inferpipe.failure/1"
#: Output-bucket prefixes (fixed, next to OUTPUT_PREFIX): failure records and the delivery ledger.
FAILURE_PREFIX = "failures/"
LEDGER_PREFIX = "deliveries/"
#: Failure records of inputs that name no object (rejected before normalisation, invalid names).
INVALID_INPUT_FOLDER = "_invalid"
SUCCEEDED = "SUCCEEDED"
FAILED = "FAILED"
_MAX_MESSAGE_CHARS = 2000


@dataclass(frozen=True)
class Destinations:
    """Where each sink writes; ``None`` means the sink is not deployed."""

    output_bucket: str | None = None
    output_prefix: str = stack.SETTINGS[config.OUTPUT_PREFIX]
    table: str | None = None
    topic_arn: str | None = None
    queue_url: str | None = None
    event_bus: str | None = None

    @classmethod
    def from_env(cls) -> Destinations:
        return cls(
            output_bucket=config.optional(config.OUTPUT_BUCKET),
            output_prefix=config.Settings.from_env().output_prefix,
            table=config.optional(config.PREDICTIONS_TABLE),
            topic_arn=config.optional(config.PREDICTIONS_TOPIC_ARN),
            queue_url=config.optional(config.PREDICTIONS_QUEUE_URL),
            event_bus=config.optional(config.PREDICTIONS_EVENT_BUS),
        )


def record_id(source: Mapping[str, Any], model: Mapping[str, Any], top_k: int) -> str:
    """Stable id of one prediction: (object version, model version, number of classes)."""
    parts = [
        source["bucket"],
        source["key"],
        source.get("version_id") or "",
        model["name"],
        model["version"],
        str(top_k),
    ]
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
        raise InvalidRequestError(
            f"sink input lacks {missing}: expected source{{bucket,key}} and prediction{{model,top_k}}"
        ) from None
    if not top_k:
        raise InvalidRequestError("sink input has an empty prediction.top_k")
    created = (now or datetime.now(UTC)).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return {
        "schema": SCHEMA,
        "record_id": record_id(source, model, len(top_k)),
        "status": "SUCCEEDED",
        "source": {
            "bucket": bucket,
            "key": key,
            "version_id": source.get("version_id"),
            "etag": source.get("etag"),
            "size": source.get("size"),
            "last_modified": source.get("last_modified"),
            "sequencer": source.get("sequencer"),
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


def prefixes(dest: Destinations) -> dict[str, str]:
    """Where each kind of record lives in the output bucket."""
    return {views.PREDICTION: dest.output_prefix, views.FAILURE: FAILURE_PREFIX}


def output_key(prefix: str, source: Mapping[str, Any]) -> str:
    """``predictions/<source bucket>/<encoded source key>.json``: the key's latest prediction."""
    return views.latest_key(prefix, source["bucket"], source["key"])


def failure_key(source: Mapping[str, Any] | None, execution_name: str) -> str:
    """``failures/<bucket>/<encoded key>.json``; ``failures/_invalid/<execution name>.json`` without an object."""
    if source is None:
        return f"{FAILURE_PREFIX}{INVALID_INPUT_FOLDER}/{execution_name}.json"
    return views.latest_key(FAILURE_PREFIX, source["bucket"], source["key"])


def _to_s3(record: dict[str, Any], dest: Destinations) -> str:
    bucket = _need(dest.output_bucket, "s3", config.OUTPUT_BUCKET)
    metadata = {"record-id": record["record_id"], "model-version": record["model"]["version"]}
    outcome = views.publish(client("s3"), bucket, views.PREDICTION, record, prefixes(dest), metadata)
    return f"s3://{bucket}/{outcome.key}"


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
        "top_k": {
            "S": json.dumps(record["top_k"], ensure_ascii=False, separators=(",", ":"))
        },  # compact: billed by the KB
        "execution_id": {"S": record["execution_id"]},
        "recorded_at": {"S": record["recorded_at"]},
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
            ExpressionAttributeValues={":succeeded": {"S": SUCCEEDED}, ":rid": {"S": record["record_id"]}},
        )
    except ClientError as exc:
        if error_code(exc) != "ConditionalCheckFailedException":
            raise
        logger.info("record already in DynamoDB; nothing written", extra={"record_id": record["record_id"]})
    return location


def _need(value: str | None, sink: str, variable: str) -> str:
    if not value:
        raise SinkNotConfiguredError(f"sink '{sink}' is not deployed here ({variable} is not set)")
    return value


_WRITERS: dict[str, Callable[[dict[str, Any], Destinations], str]] = {
    "s3": _to_s3,
    "dynamodb": _to_dynamodb,
}


def deliver(sink: str, record: dict[str, Any], dest: Destinations) -> str:
    """Write ``record`` to the S3 or DynamoDB sink; returns where it went. Transient AWS failures raise TransientError."""
    writer = _WRITERS.get(sink)
    if writer is None:
        raise SinkNotConfiguredError(f"sink '{sink}' has no per-record writer; these do: {', '.join(_WRITERS)}")
    try:
        return writer(record, dest)
    except (SinkNotConfiguredError, TransientError):
        raise
    except ClientError as exc:  # retry only what retrying can fix; the rest is the sink's resource saying no
        if is_transient(exc):
            raise TransientError(f"delivering to sink '{sink}': {exc}") from exc
        error = exc.response.get("Error", {})
        raise SinkUnavailableError(
            f"sink '{sink}' refused the record {record['record_id']}: {error_code(exc)}: {error.get('Message', '')}".rstrip(
                ": "
            )
        ) from exc
    except BotoCoreError as exc:  # connection problems, timeouts
        raise_transient(exc, f"delivering to sink '{sink}'")


# --------------------------------------------------------------------------- failure records


def _error_message(cause: Any) -> str:
    """The human part of a Catch's Cause: a Lambda error's errorMessage, else the text itself."""
    text = cause if isinstance(cause, str) else json.dumps(cause, default=str)
    try:
        parsed = json.loads(text)
    except (TypeError, ValueError):
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("errorMessage"), str):
        text = parsed["errorMessage"]
    return text if len(text) <= _MAX_MESSAGE_CHARS else text[: _MAX_MESSAGE_CHARS - 3] + "..."


def _valid_source(candidate: Any) -> dict[str, Any] | None:
    """``{bucket, key, version_id, ...}`` if ``candidate`` names an object by valid names, else None.

    What orders versions (``sequencer``, ``last_modified``, ``etag``) is kept when it is there."""
    from functions.common.request import check_bucket, check_key

    if not isinstance(candidate, Mapping):
        return None
    try:
        bucket, key = check_bucket(candidate.get("bucket")), check_key(candidate.get("key"))
    except InvalidRequestError:
        return None
    source: dict[str, Any] = {"bucket": bucket, "key": key}
    for name in ("version_id", "etag", "last_modified", "sequencer"):
        value = candidate.get(name)
        source[name] = value if isinstance(value, str) and value else None
    return source


def build_failure(event: Mapping[str, Any], now: datetime | None = None) -> dict[str, Any]:
    """The failure record of one execution, from the RecordFailure state's input.

    ``event`` is ``{"mode": "failure", "failure": {state, error, cause}, "context": <the execution's
    data>, "execution_id"}``; the context holds ``job`` (the located object and resolved model)
    when preprocessing succeeded, else ``request`` (the object as requested), else only the raw
    ``failure.input`` (an input rejected before normalisation).
    """
    failure = event.get("failure")
    if not isinstance(failure, Mapping) or not isinstance(failure.get("error"), str):
        raise InvalidRequestError("failure input must hold failure{state, error, cause}")
    context = event.get("context") if isinstance(event.get("context"), Mapping) else {}
    execution_id = str(event.get("execution_id") or "")
    job = context.get("job") if isinstance(context.get("job"), Mapping) else None
    request = context.get("request") if isinstance(context.get("request"), Mapping) else None
    source = _valid_source(job.get("source")) if job else None
    if source is None and request is not None:
        source = _valid_source(request)
    model: dict[str, Any] | None = None
    if job and isinstance(job.get("model"), Mapping):
        model = {"name": job["model"].get("name"), "version": job["model"].get("version"), "resolved": True}
    elif request is not None and "model" in request:
        model = {"name": request.get("model"), "version": request.get("model_version"), "resolved": False}
    deliveries = context.get("deliveries") if isinstance(context.get("deliveries"), list) else []
    created = (now or datetime.now(UTC)).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    record: dict[str, Any] = {
        "schema": FAILURE_SCHEMA,
        "status": FAILED,
        "source": None,
        "model": model,
        "error": {"type": failure["error"], "message": _error_message(failure.get("cause", ""))},
        "failed_state": str(failure.get("state") or "?"),
        "execution_id": execution_id,
        "execution_name": execution_id.rsplit(":", 1)[-1] if execution_id else "",
        "recorded_at": created,
    }
    if source is not None:
        record["source"] = {**source, "uri": object_uri(source["bucket"], source["key"], source["version_id"])}
    if deliveries:
        record["delivered_sinks"] = sorted(
            d["sink"] for d in deliveries if isinstance(d, Mapping) and d.get("status") != FAILED
        )
        record["failed_sinks"] = sorted(
            d["sink"] for d in deliveries if isinstance(d, Mapping) and d.get("status") == FAILED
        )
    if source is None:
        raw = failure.get("input", request)
        text = json.dumps(raw, ensure_ascii=False, default=str)
        record["input"] = raw if len(text) <= 8192 else text[:8189] + "..."
    return record


def record_failure(record: dict[str, Any], dest: Destinations) -> dict[str, str]:
    """Write the failure record where it is deployed; which writes happened, by sink.

    * S3: the key's latest view ``failures/<bucket>/<key>.json`` unless a newer version of the key
      has an outcome, else the version's entry ``failures/_versions/<bucket>/<key>/<version>.json``
      (a later failure of another version moves this one there, never erases it: see
      :mod:`functions.sink.records`); ``failures/_invalid/<execution name>.json`` without an object.
    * DynamoDB: the object version's item with ``status = FAILED`` -- never over a SUCCEEDED item
      (conditional write): a duplicate execution failing after another one succeeded does not
      hide the success.

    A destination that is not deployed is skipped. Transient AWS failures raise TransientError.
    """
    written: dict[str, str] = {}
    source = record["source"]
    try:
        if dest.output_bucket and source is None:
            name = record["execution_name"] or "unknown"
            key = failure_key(None, f"{name}-{record['item']}" if "item" in record else name)
            client("s3").put_object(
                Bucket=dest.output_bucket,
                Key=key,
                Body=json.dumps(record, ensure_ascii=False, indent=2).encode("utf-8"),
                ContentType="application/json",
                Metadata=_failure_metadata(record),
            )
            written.update(s3=f"s3://{dest.output_bucket}/{key}", s3_key=key)
        elif dest.output_bucket:
            outcome = views.publish(
                client("s3"), dest.output_bucket, views.FAILURE, record, prefixes(dest), _failure_metadata(record)
            )
            written.update(
                s3=f"s3://{dest.output_bucket}/{outcome.key}", s3_version_key=outcome.version_key, view=outcome.view
            )
            if outcome.view != "kept":
                written["s3_key"] = outcome.latest_key
        if dest.table and source is not None:
            written["dynamodb"] = _failure_item(record, dest.table)
    except (ClientError, BotoCoreError) as exc:
        if isinstance(exc, BotoCoreError) or is_transient(exc):
            raise_transient(exc, "recording the failure")
        raise
    return written


def _failure_metadata(record: Mapping[str, Any]) -> dict[str, str]:
    return {"error-type": record["error"]["type"][:256], "failed-state": record["failed_state"][:256]}


def _failure_item(record: dict[str, Any], table: str) -> str:
    source = record["source"]
    item = {
        "object": {"S": f"s3://{source['bucket']}/{source['key']}"},
        "version": {"S": source["version_id"] or "null"},
        "status": {"S": FAILED},
        "error_type": {"S": record["error"]["type"]},
        "error_message": {"S": record["error"]["message"] or "-"},
        "failed_state": {"S": record["failed_state"]},
        "execution_id": {"S": record["execution_id"] or "-"},
        "recorded_at": {"S": record["recorded_at"]},
    }
    model = record.get("model") or {}
    if isinstance(model.get("name"), str):
        item["model"] = {"S": model["name"]}
    if isinstance(model.get("version"), str):
        item["model_version"] = {"S": model["version"]}
    location = f"dynamodb://{table}/{item['object']['S']}#{item['version']['S']}"
    try:
        client("dynamodb").put_item(
            TableName=table,
            Item=item,
            ConditionExpression="attribute_not_exists(#o) OR #s <> :succeeded",
            ExpressionAttributeNames={"#o": "object", "#s": "status"},
            ExpressionAttributeValues={":succeeded": {"S": SUCCEEDED}},
        )
    except ClientError as exc:
        if error_code(exc) != "ConditionalCheckFailedException":
            raise
        return f"{location} (kept: already SUCCEEDED)"
    return location
