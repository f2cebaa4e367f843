"""The batch: what one execution of the state machine classifies, 1..N objects.

Every input the state machine accepts becomes one :class:`Batch` (:func:`parse_input`):

* an S3 "Object Created" event delivered by EventBridge (the direct trigger): a batch of one;
* a manual request ``{"bucket", "key", "version_id"?, "sinks"?, "top_k"?, "model"?, "model_version"?}``:
  a batch of one;
* a manual batch ``{"objects": [{"bucket", "key", "version_id"?}, ...], "sinks"?, "top_k"?, ...}``;
* a JSON array, as EventBridge Pipes delivers a batch of SQS messages to a Step Functions target
  ("the batch is converted to a JSON array", https://docs.aws.amazon.com/eventbridge/latest/userguide/pipes-targets-specifics.html):
  each element is an SQS record whose ``body`` is the S3 event, that record reshaped by the pipe's
  input template (``{"bucket", "key", "version_id"}``), or an S3 event itself.

A malformed *object* fails alone (its :class:`Item` carries the problem; the others go on). Only
an input with no recognisable shape, or more than :data:`MAX_BATCH_OBJECTS` objects, is rejected
whole (``InvalidInputError``). The same object version named twice is classified once.

Example::

    batch = parse_input({"objects": [{"bucket": "in", "key": "a.jpg"}, {"bucket": "in", "key": ""}]},
                        Defaults(sinks=("s3",), top_k=5, model="demo", model_version="prod"))
    [item.problem for item in batch.items]   # [None, "key must be a non-empty string, got ''"]
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from functions.common import config, stack
from functions.common.errors import InvalidInputError, InvalidRequestError
from functions.common.request import Request, SourceObject, _describe

#: The most objects one execution may hold (setting MAX_BATCH_OBJECTS in config/stack.json, which
#: also sizes the trigger's and the backfill's batches; README "Choosing the batch size" has the
#: measurements behind it). This default applies where the variable is not set (a unit test).
MAX_BATCH_OBJECTS = int(stack.SETTINGS[config.MAX_BATCH_OBJECTS])


def max_batch_objects() -> int:
    return config.Settings.from_env().max_batch_objects


#: Keys a manual batch may hold beside ``objects``: the options every object of it shares.
BATCH_OPTION_KEYS: tuple[str, ...] = ("sinks", "top_k", "model", "model_version")
OBJECT_KEYS: tuple[str, ...] = ("bucket", "key", "version_id")

EXAMPLE_INPUTS = (
    "an S3 'Object Created' event delivered by EventBridge (with detail.bucket.name and detail.object.key), "
    'a manual request such as {"bucket": "my-input-bucket", "key": "photos/cat.jpg", "version_id": "optional", '
    '"sinks": ["s3", "dynamodb"], "top_k": 5, "model": "demo", "model_version": "prod"}, '
    'a manual batch {"objects": [{"bucket": "my-input-bucket", "key": "photos/cat.jpg"}, ...], "top_k": 5, ...} '
    "of at most MAX_BATCH_OBJECTS objects, or a JSON array of SQS records of S3 events (EventBridge Pipes)"
)


@dataclass(frozen=True)
class Defaults:
    """The deployment's defaults a request may override: stack.json ``defaults``, rendered by the local stack
    (``inferpipe.stack.resources``) and reaching the functions as the ASL placeholders DefaultSinks, DefaultTopK,
    DefaultModel, DefaultModelVersion."""

    sinks: tuple[str, ...]
    top_k: int
    model: str
    model_version: str

    @classmethod
    def from_dict(cls, data: Any) -> Defaults:
        """``{"sinks": "s3,dynamodb" | [...], "top_k": "5" | 5, "model", "model_version"}``."""
        if not isinstance(data, Mapping):
            raise InvalidRequestError(f"defaults must be an object, got {_describe(data)}")
        sinks = data.get("sinks")
        if isinstance(sinks, str):
            sinks = [s.strip() for s in sinks.split(",") if s.strip()]
        try:
            top_k = int(data.get("top_k"))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise InvalidRequestError(
                f"defaults.top_k must be an integer, got {_describe(data.get('top_k'))}"
            ) from None
        if not isinstance(sinks, Sequence) or not sinks:
            raise InvalidRequestError(f"defaults.sinks must name at least one sink, got {_describe(sinks)}")
        model, version = data.get("model"), data.get("model_version")
        if not isinstance(model, str) or not isinstance(version, str):
            raise InvalidRequestError(
                f"defaults.model and defaults.model_version must be strings, got {_describe(model)}, {_describe(version)}"
            )
        return cls(sinks=tuple(str(s) for s in sinks), top_k=top_k, model=model, model_version=version)

    def request_fields(self) -> dict[str, Any]:
        return {
            "sinks": list(self.sinks),
            "top_k": self.top_k,
            "model": self.model,
            "model_version": self.model_version,
        }


@dataclass(frozen=True)
class Item:
    """One object of a batch: a valid request, or the problem that stops it (``request`` is None)."""

    index: int
    request: Request | None
    problem: str | None = None
    #: what the input said, for a record of an object that could not be parsed
    named: Mapping[str, Any] | None = None
    #: the S3 event's ``detail.object.sequencer``, when an event named this object: with the
    #: version id, it tells this upload from any other of the same key (functions/preprocess/claims.py)
    sequencer: str | None = None

    @property
    def source(self) -> SourceObject | None:
        return self.request.source if self.request is not None else None

    def named_source(self) -> dict[str, Any] | None:
        """``{bucket, key, version_id}`` as named, when they are valid names (for failure records)."""
        if self.request is not None:
            s = self.request.source
            return {
                "bucket": s.bucket,
                "key": s.key,
                "version_id": s.version_id,
                **({"sequencer": self.sequencer} if self.sequencer else {}),
            }
        named = self.named or {}
        try:
            # unchecked names on purpose: SourceObject validates them (InvalidRequestError, TypeError)
            s = SourceObject(
                bucket=named.get("bucket"),  # type: ignore[arg-type]
                key=named.get("key"),  # type: ignore[arg-type]
                version_id=_str_or_none(named.get("version_id")),
            )
        except (InvalidRequestError, TypeError):
            return None
        return {
            "bucket": s.bucket,
            "key": s.key,
            "version_id": s.version_id,
            **({"sequencer": self.sequencer} if self.sequencer else {}),
        }


@dataclass(frozen=True)
class Batch:
    items: tuple[Item, ...]
    #: how the execution started: s3-event (direct rule), queue (micro-batched), manual
    trigger: str
    #: object versions named more than once, classified once
    duplicates: int = 0

    @property
    def sinks(self) -> tuple[str, ...]:
        for item in self.items:
            if item.request is not None:
                return item.request.sinks
        return ()


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _s3_event_object(event: Mapping[str, Any]) -> dict[str, Any] | None:
    """``{bucket, key, version_id}`` of an EventBridge S3 event, or None if ``event`` is not one."""
    detail = event.get("detail")
    if not isinstance(detail, Mapping):
        return None
    bucket = (detail.get("bucket") or {}).get("name") if isinstance(detail.get("bucket"), Mapping) else None
    obj = detail.get("object") if isinstance(detail.get("object"), Mapping) else None
    if not isinstance(bucket, str) or obj is None or not isinstance(obj.get("key"), str):
        return None
    return {
        "bucket": bucket,
        "key": obj["key"],
        "version_id": obj.get("version-id"),
        "sequencer": _str_or_none(obj.get("sequencer")),
    }


def _queued_object(record: Any) -> dict[str, Any] | None:
    """The object one element of a Pipes batch names (an SQS record, a reshaped record, an S3 event)."""
    if not isinstance(record, Mapping):
        return None
    body = record.get("body")
    if isinstance(body, str):
        try:
            body = json.loads(body)
        except ValueError:
            return None
    if isinstance(body, Mapping):
        return _s3_event_object(body)
    if "bucket" in record and "key" in record:
        return {k: record.get(k) for k in OBJECT_KEYS}
    return _s3_event_object(record)


def _item(index: int, fields: Mapping[str, Any], defaults: Defaults) -> Item:
    named = {k: fields.get(k) for k in OBJECT_KEYS}
    sequencer = fields.get("sequencer")
    fields = {k: v for k, v in fields.items() if k != "sequencer"}
    try:
        merged = {
            **defaults.request_fields(),
            **{k: v for k, v in fields.items() if v is not None or k != "version_id"},
        }
        return Item(index=index, request=Request.parse(merged, defaults.sinks), named=named, sequencer=sequencer)
    except InvalidRequestError as problem:
        return Item(index=index, request=None, problem=str(problem), named=named)


def _invalid(what: str) -> InvalidInputError:
    return InvalidInputError(f"{what}. Expected {EXAMPLE_INPUTS}.")


def parse_input(raw: Any, defaults: Defaults) -> Batch:
    """The batch an execution's input names (see the module docstring); InvalidInputError if none."""
    if isinstance(raw, list):
        return _deduplicated(_queued_items(raw, defaults), "queue")
    if not isinstance(raw, Mapping):
        raise _invalid(f"the input is {_describe(raw)}")
    event_object = _s3_event_object(raw)
    if event_object is not None:
        return _deduplicated([_item(0, {**event_object, "trigger": "s3-event"}, defaults)], "s3-event")
    if "objects" in raw:
        return _deduplicated(_manual_batch_items(raw, defaults), "manual")
    if "bucket" in raw and "key" in raw:
        return _deduplicated([_item(0, {"trigger": "manual", **raw}, defaults)], "manual")
    raise _invalid("the input has no object to classify")


def _queued_items(raw: list[Any], defaults: Defaults) -> list[Item]:
    """The items of a Pipes batch: one per element, an element that names no object failing alone."""
    if not raw:
        raise _invalid("the input is an empty array")
    named = [_queued_object(record) for record in raw]
    if all(obj is None for obj in named):
        raise _invalid(f"the input is an array, but none of its {len(raw)} elements is an SQS record of an S3 event")
    return [
        _item(i, {**obj, "trigger": "s3-event"}, defaults)
        if obj is not None
        else Item(
            index=i,
            request=None,
            problem=f"element {i} of the batch is not an SQS record of an S3 event: {_describe(raw[i])}",
        )
        for i, obj in enumerate(named)
    ]


def _manual_batch_items(raw: Mapping[str, Any], defaults: Defaults) -> list[Item]:
    """The items of a manual batch ``{"objects": [...], <options>}``, a malformed object failing alone."""
    objects = raw["objects"]
    if isinstance(objects, str) or not isinstance(objects, Sequence) or not objects:
        raise _invalid(f"objects must be a non-empty array of {{bucket, key, version_id?}}, got {_describe(objects)}")
    unknown = sorted(str(k) for k in raw if k != "objects" and k not in BATCH_OPTION_KEYS)
    if unknown:
        raise _invalid(f"the batch has unknown keys {unknown}; beside objects it accepts {list(BATCH_OPTION_KEYS)}")
    options = {k: raw[k] for k in BATCH_OPTION_KEYS if k in raw}
    items = []
    for i, obj in enumerate(objects):
        if not isinstance(obj, Mapping) or set(obj) - set(OBJECT_KEYS):
            problem = f"objects[{i}] must be {{bucket, key, version_id?}}, got {_describe(obj)}"
            items.append(Item(index=i, request=None, problem=problem, named=obj if isinstance(obj, Mapping) else None))
            continue
        items.append(_item(i, {**options, **obj, "trigger": "manual"}, defaults))
    return items


def _deduplicated(items: list[Item], trigger: str) -> Batch:
    limit = max_batch_objects()
    if len(items) > limit:
        raise _invalid(
            f"the input names {len(items)} objects; one execution classifies at most {limit} (MAX_BATCH_OBJECTS)"
        )
    seen: set[tuple[str, str, str | None]] = set()
    kept: list[Item] = []
    for item in items:
        source = item.source
        if source is not None:
            identity = (source.bucket, source.key, source.version_id)
            if identity in seen:
                continue
            seen.add(identity)
        kept.append(item)
    return Batch(items=tuple(kept), trigger=trigger, duplicates=len(items) - len(kept))


def named_objects(raw: Any) -> list[dict[str, Any]]:
    """Every ``{bucket, key, version_id}`` an input names, leniently (no defaults, no validation of options).

    For tools that look at executions (``inferpipe classify``, ``cost``, ``replay``): which objects
    an execution was about, whatever its input's shape.
    """
    try:
        batch = parse_input(raw, Defaults(sinks=("s3",), top_k=1, model="any", model_version="any"))
    except InvalidInputError:
        return []
    found = []
    for item in batch.items:
        named = item.named_source()
        if named is not None:
            found.append(named)
    return found


__all__ = ["BATCH_OPTION_KEYS", "MAX_BATCH_OBJECTS", "Batch", "Defaults", "Item", "named_objects", "parse_input"]
