"""The inputs of the three Lambda handlers, parsed from the state machine's (or EventBridge's) JSON
into typed models: each handler parses its event with one of these, then calls its function's core.

* preprocess (ASL state Preprocess): ``{"input": <the execution's input>, "defaults": {...}, "execution_id"}``;
* inference (ASL state Inference): ``{"batch": {bucket, key}, "execution_id"}``, or a warm-up ping
  (``{"warmup": true}`` or an EventBridge scheduled event);
* sink, one of three modes:

  * delivery (state ``Deliver``, one per sink in the FanOut Map): ``{"sink", "batch": {bucket, key},
    "execution_id"}``; see :func:`functions.sink.batch.deliver_batch`;
  * failure (state ``RecordFailure``): ``{"mode": "failure", "failure": {state, error, cause},
    "batch"?, "input", "defaults", "deliveries"?, "execution_id"}``; see
    :func:`functions.sink.failures.record_batch_failures`;
  * status (an EventBridge rule on Step Functions' status change events): ``{"mode": "status",
    "detail": <the event's detail>, "defaults"}``; see :mod:`functions.sink.status`.

A malformed event raises InvalidRequestError saying what was expected.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from functions.common.errors import InvalidRequestError


def _execution_id(event: Mapping[str, Any]) -> str | None:
    value = event.get("execution_id")
    return value if isinstance(value, str) else None


@dataclass(frozen=True)
class PreprocessEvent:
    input: Any
    defaults: Any
    execution_id: str | None

    @classmethod
    def parse(cls, event: Any) -> PreprocessEvent:
        if not isinstance(event, dict) or "input" not in event:
            raise InvalidRequestError(
                'preprocess input must be an object {"input": ..., "defaults": {...}, "execution_id": "..."}'
            )
        return cls(input=event["input"], defaults=event.get("defaults"), execution_id=_execution_id(event))


@dataclass(frozen=True)
class InferenceEvent:
    #: the batch document's reference as given (checked when it is read); None for a warm-up ping
    batch: Any
    execution_id: str | None

    @property
    def warmup(self) -> bool:
        return self.batch is None

    @classmethod
    def parse(cls, event: Any) -> InferenceEvent:
        if is_warmup(event):
            return cls(batch=None, execution_id=None)
        if not isinstance(event, dict) or "batch" not in event:
            raise InvalidRequestError(
                'inference input must be an object {"batch": {"bucket", "key"}, "execution_id": "..."} '
                'or {"warmup": true}'
            )
        return cls(batch=event["batch"], execution_id=_execution_id(event))


def is_warmup(event: Any) -> bool:
    """A warm-up ping: ``{"warmup": true}`` or an EventBridge scheduled event."""
    if not isinstance(event, dict):
        return False
    if event.get("warmup") is True:
        return True
    return event.get("detail-type") == "Scheduled Event" and event.get("source") == "aws.events"


@dataclass(frozen=True)
class DeliveryEvent:
    sink: str
    batch: Any
    execution_id: str | None


@dataclass(frozen=True)
class FailureEvent:
    #: the whole input: :func:`functions.sink.failures.record_batch_failures` reads it as it came
    event: Mapping[str, Any]
    execution_id: str | None


@dataclass(frozen=True)
class StatusEvent:
    #: the whole input: :func:`functions.sink.status.record_status` reads it as it came
    event: Mapping[str, Any]
    execution_arn: str | None


SinkEvent = DeliveryEvent | FailureEvent | StatusEvent


def parse_sink_event(event: Any) -> SinkEvent:
    """The sink's input in one of its three modes (see the module docstring)."""
    if isinstance(event, dict) and event.get("mode") == "failure":
        return FailureEvent(event=event, execution_id=_execution_id(event))
    if isinstance(event, dict) and event.get("mode") == "status":
        detail = event.get("detail")
        return StatusEvent(event=event, execution_arn=detail.get("executionArn") if isinstance(detail, dict) else None)
    if not isinstance(event, dict) or not isinstance(event.get("sink"), str) or "batch" not in event:
        raise InvalidRequestError(
            'sink input must be {"sink": name, "batch": {"bucket", "key"}, "execution_id"}, or {"mode": "failure", ...}'
        )
    return DeliveryEvent(sink=event["sink"], batch=event["batch"], execution_id=_execution_id(event))


__all__ = [
    "DeliveryEvent",
    "FailureEvent",
    "InferenceEvent",
    "PreprocessEvent",
    "SinkEvent",
    "StatusEvent",
    "is_warmup",
    "parse_sink_event",
]
