"""The failure record of one object: built from what the state machine knows of a failed
execution, written to the S3 and DynamoDB sinks where they are deployed.

The state machine's ``RecordFailure`` state and the status recorder write them, through
:func:`functions.sink.failures.record_batch_failures`; see docs/operations.md.

Example::

    record = build_failure({"failure": {"state": "Preprocess", "error": "NotAnImageError", "cause": "..."},
                            "context": {"request": {"bucket": "in", "key": "a.png"}}, "execution_id": arn})
    record.error_type, record.to_dict()["source"]["uri"]   # ("NotAnImageError", "s3://in/a.png")
    written = record_failure(record, Destinations.from_env())   # {"s3": "s3://out/failures/in/a.png.json", ...}
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from functions.common.aws import client, error_code, is_transient, raise_transient
from functions.common.errors import InvalidRequestError
from functions.common.log import object_uri
from functions.common.request import check_bucket, check_key
from functions.sink import records as views
from functions.sink.core import FAILED, SUCCEEDED, Destinations, failure_key, prefixes, timestamp

FAILURE_SCHEMA = "inferpipe.failure/1"
_MAX_MESSAGE_CHARS = 2000
_MAX_INPUT_CHARS = 8192


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


@dataclass(frozen=True)
class FailureRecord:
    """The failure record of one object (or of an input that names none); :meth:`to_dict` is its
    JSON form (schema FAILURE_SCHEMA), as the S3 sink stores it."""

    #: bucket, key, version_id, etag, last_modified, sequencer, uri; None for an input naming no object
    source: Mapping[str, Any] | None
    #: name, version, resolved (preprocess resolved the alias); None when the input named none
    model: Mapping[str, Any] | None
    error_type: str
    error_message: str
    failed_state: str
    execution_id: str
    recorded_at: str
    #: the FanOut's outcome by sink, when the failure happened delivering
    delivered_sinks: tuple[str, ...] | None = None
    failed_sinks: tuple[str, ...] | None = None
    #: the input as it was (cut to 8 KiB) when it names no object
    input: Any = None
    #: the object's place in its batch, for an input naming no object in a batch of several
    item: int | None = None

    @property
    def execution_name(self) -> str:
        return self.execution_id.rsplit(":", 1)[-1] if self.execution_id else ""

    def with_item(self, item: int | None) -> FailureRecord:
        return replace(self, item=item)

    def to_dict(self) -> dict[str, Any]:
        record: dict[str, Any] = {
            "schema": FAILURE_SCHEMA,
            "status": FAILED,
            "source": dict(self.source) if self.source is not None else None,
            "model": dict(self.model) if self.model is not None else None,
            "error": {"type": self.error_type, "message": self.error_message},
            "failed_state": self.failed_state,
            "execution_id": self.execution_id,
            "execution_name": self.execution_name,
            "recorded_at": self.recorded_at,
        }
        if self.delivered_sinks is not None and self.failed_sinks is not None:
            record.update(delivered_sinks=list(self.delivered_sinks), failed_sinks=list(self.failed_sinks))
        if self.source is None:
            record["input"] = self.input
        if self.item is not None:
            record["item"] = self.item
        return record


def build_failure(event: Mapping[str, Any], now: datetime | None = None) -> FailureRecord:
    """The failure record of one execution, from the RecordFailure state's input.

    ``event`` is ``{"mode": "failure", "failure": {state, error, cause}, "context": <the execution's
    data>, "execution_id"}``; the context holds ``job`` (the located object and resolved model)
    when preprocessing succeeded, else ``request`` (the object as requested), else only the raw
    ``failure.input`` (an input rejected before normalisation).
    """
    failure = event.get("failure")
    if not isinstance(failure, Mapping) or not isinstance(failure.get("error"), str):
        raise InvalidRequestError("failure input must hold failure{state, error, cause}")
    context = _mapping(event.get("context")) or {}
    job, request = _mapping(context.get("job")), _mapping(context.get("request"))
    source = _failed_source(job, request)
    deliveries = context.get("deliveries") if isinstance(context.get("deliveries"), list) else []
    delivered, failed = _sinks_by_outcome(deliveries) if deliveries else (None, None)
    return FailureRecord(
        source=None
        if source is None
        else {**source, "uri": object_uri(source["bucket"], source["key"], source["version_id"])},
        model=_failed_model(job, request),
        error_type=failure["error"],
        error_message=_error_message(failure.get("cause", "")),
        failed_state=str(failure.get("state") or "?"),
        execution_id=str(event.get("execution_id") or ""),
        recorded_at=timestamp(now),
        delivered_sinks=delivered,
        failed_sinks=failed,
        input=_shortened_input(failure.get("input", request)) if source is None else None,
    )


def _mapping(value: Any) -> Mapping[str, Any] | None:
    return value if isinstance(value, Mapping) else None


def _failed_source(job: Mapping[str, Any] | None, request: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The object as preprocess located it, else as it was requested, when either names one validly."""
    source = _valid_source(job.get("source")) if job else None
    if source is None and request is not None:
        source = _valid_source(request)
    return source


def _failed_model(job: Mapping[str, Any] | None, request: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The model preprocess resolved (``resolved``), else the one requested, else None."""
    if job and isinstance(job.get("model"), Mapping):
        return {"name": job["model"].get("name"), "version": job["model"].get("version"), "resolved": True}
    if request is not None and "model" in request:
        return {"name": request.get("model"), "version": request.get("model_version"), "resolved": False}
    return None


def _sinks_by_outcome(deliveries: list[Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``delivered_sinks`` and ``failed_sinks`` of the FanOut's deliveries."""
    outcomes = [d for d in deliveries if isinstance(d, Mapping)]
    return (
        tuple(sorted(d["sink"] for d in outcomes if d.get("status") != FAILED)),
        tuple(sorted(d["sink"] for d in outcomes if d.get("status") == FAILED)),
    )


def _shortened_input(raw: Any) -> Any:
    """The input that named no object, as it was, or its JSON cut to 8 KiB."""
    text = json.dumps(raw, ensure_ascii=False, default=str)
    return raw if len(text) <= _MAX_INPUT_CHARS else text[: _MAX_INPUT_CHARS - 3] + "..."


def record_failure(record: FailureRecord, dest: Destinations) -> dict[str, str]:
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
    document = record.to_dict()
    try:
        if dest.output_bucket and record.source is None:
            name = record.execution_name or "unknown"
            key = failure_key(None, f"{name}-{record.item}" if record.item is not None else name)
            client("s3").put_object(
                Bucket=dest.output_bucket,
                Key=key,
                Body=json.dumps(document, ensure_ascii=False, indent=2).encode("utf-8"),
                ContentType="application/json",
                Metadata=_failure_metadata(record),
            )
            written.update(s3=f"s3://{dest.output_bucket}/{key}", s3_key=key)
        elif dest.output_bucket:
            outcome = views.publish(
                client("s3"), dest.output_bucket, views.FAILURE, document, prefixes(dest), _failure_metadata(record)
            )
            written.update(
                s3=f"s3://{dest.output_bucket}/{outcome.key}", s3_version_key=outcome.version_key, view=outcome.view
            )
            if outcome.view != "kept":
                written["s3_key"] = outcome.latest_key
        if dest.table and record.source is not None:
            written["dynamodb"] = _failure_item(record, record.source, dest.table)
    except (ClientError, BotoCoreError) as exc:
        if isinstance(exc, BotoCoreError) or is_transient(exc):
            raise_transient(exc, "recording the failure")
        raise
    return written


def _failure_metadata(record: FailureRecord) -> dict[str, str]:
    return {"error-type": record.error_type[:256], "failed-state": record.failed_state[:256]}


def _failure_item(record: FailureRecord, source: Mapping[str, Any], table: str) -> str:
    item = {
        "object": {"S": f"s3://{source['bucket']}/{source['key']}"},
        "version": {"S": source["version_id"] or "null"},
        "status": {"S": FAILED},
        "error_type": {"S": record.error_type},
        "error_message": {"S": record.error_message or "-"},
        "failed_state": {"S": record.failed_state},
        "execution_id": {"S": record.execution_id or "-"},
        "recorded_at": {"S": record.recorded_at},
    }
    model = record.model or {}
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


__all__ = ["FAILURE_SCHEMA", "FailureRecord", "build_failure", "record_failure"]
