"""The prediction record, where each sink is deployed, and where records are kept in the output bucket.

Every sink receives the same record, identified by ``record_id``: a hash of the source object
version, the model version and how many classes were asked for. Each sink's writer
(:mod:`functions.sink.writers`) delivers it idempotently; :mod:`functions.sink.batch` delivers a
whole batch to one sink; :mod:`functions.sink.failure_record` builds and writes failure records.

A manual re-run with other options (``top_k`` 3 after 5) is a new record: every sink gets it.

Example::

    record = build_record(source, prediction, execution_id="arn:aws:states:…")
    key = output_key(Destinations.from_env().output_prefix, record["source"])
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from functions.common import config, stack
from functions.common.errors import InvalidRequestError, SinkNotConfiguredError
from functions.common.log import object_uri
from functions.sink import records as views

SCHEMA = "inferpipe.prediction/1"
EVENT_SOURCE = stack.EVENT_SOURCE
EVENT_DETAIL_TYPE = stack.EVENT_DETAIL_TYPE
SINKS = stack.SINKS
MESSAGE_SINKS = stack.MESSAGE_SINKS
FAILURE_SCHEMA = "inferpipe.failure/1"
#: Output-bucket prefixes (fixed, next to OUTPUT_PREFIX): failure records and the delivery ledger.
FAILURE_PREFIX = stack.FAILURE_PREFIX
LEDGER_PREFIX = stack.LEDGER_PREFIX
#: Failure records of inputs that name no object (rejected before normalisation, invalid names).
INVALID_INPUT_FOLDER = "_invalid"
SUCCEEDED = "SUCCEEDED"
FAILED = "FAILED"


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


@dataclass(frozen=True)
class PredictionRecord:
    """The prediction record every sink stores; :meth:`to_dict` is its JSON form (schema SCHEMA)."""

    record_id: str
    #: bucket, key, version_id, etag, size, last_modified, sequencer, uri
    source: Mapping[str, Any]
    #: name, version, architecture, inference_mode
    model: Mapping[str, Any]
    #: the classes, most probable first: label, index, probability
    top_k: tuple[Mapping[str, Any], ...]
    execution_id: str
    recorded_at: str

    @property
    def top1(self) -> Mapping[str, Any]:
        return self.top_k[0]

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "record_id": self.record_id,
            "status": SUCCEEDED,
            "source": dict(self.source),
            "model": dict(self.model),
            "top1": self.top1,
            "top_k": list(self.top_k),
            "execution_id": self.execution_id,
            "recorded_at": self.recorded_at,
        }


def build_record(
    source: Mapping[str, Any], prediction: Mapping[str, Any], execution_id: str, now: datetime | None = None
) -> PredictionRecord:
    """The prediction record of one classified object."""
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
    return PredictionRecord(
        record_id=record_id(source, model, len(top_k)),
        source={
            "bucket": bucket,
            "key": key,
            "version_id": source.get("version_id"),
            "etag": source.get("etag"),
            "size": source.get("size"),
            "last_modified": source.get("last_modified"),
            "sequencer": source.get("sequencer"),
            "uri": object_uri(bucket, key, source.get("version_id")),
        },
        model={
            "name": model["name"],
            "version": model["version"],
            "architecture": model.get("architecture"),
            "inference_mode": model.get("inference_mode"),
        },
        top_k=tuple(top_k),
        execution_id=execution_id,
        recorded_at=timestamp(now),
    )


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


def need(value: str | None, sink: str, variable: str) -> str:
    """``value``, the sink's destination; SinkNotConfiguredError when ``variable`` left it unset."""
    if not value:
        raise SinkNotConfiguredError(f"sink '{sink}' is not deployed here ({variable} is not set)")
    return value


def timestamp(now: datetime | None = None) -> str:
    """``recorded_at`` of a record: UTC, milliseconds, ``Z``."""
    return (now or datetime.now(UTC)).isoformat(timespec="milliseconds").replace("+00:00", "Z")


__all__ = [
    "EVENT_DETAIL_TYPE",
    "EVENT_SOURCE",
    "FAILED",
    "FAILURE_PREFIX",
    "FAILURE_SCHEMA",
    "LEDGER_PREFIX",
    "MESSAGE_SINKS",
    "SCHEMA",
    "SINKS",
    "SUCCEEDED",
    "Destinations",
    "PredictionRecord",
    "build_record",
    "failure_key",
    "need",
    "output_key",
    "prefixes",
    "record_id",
    "timestamp",
]
