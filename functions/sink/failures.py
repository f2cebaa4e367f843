"""Failure records of a batch: one per object that did not get all its deliveries (state RecordFailure).

What failed, by where the execution stopped:

* objects that failed alone (``FAILED`` in the batch document: a bad image, a missing object, an
  unknown model) get their own error;
* when a whole task failed (its retries exhausted, a timeout, an invalid input), every object not
  already failed gets that task's error; with no batch document yet, the objects are read from
  the execution's input itself;
* when a sink failed, every classified object gets the sink's error, with ``delivered_sinks`` and
  ``failed_sinks``.

Each record is written by :func:`functions.sink.failure_record.record_failure`: the object version's
record, the key's latest view unless a newer version has an outcome, and a FAILED item, never
over a SUCCEEDED one. The answer names
the error the execution ends with: the one error type all the failed objects share, or
``BatchItemsFailed`` when they differ, and a cause that counts them.

Example::

    record_batch_failures({"mode": "failure", "failure": {...}, "batch": ref, "input": ..., "defaults": {...},
                           "deliveries": [...], "execution_id": arn}, Destinations.from_env())
    # {"error": "NotAnImageError", "cause": "s3://in/a.png (12 bytes) is not a ... image", "failed": 1, ...}
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from functions.common.aws import client
from functions.common.batch import Defaults, parse_input
from functions.common.errors import InvalidInputError, InvalidRequestError, ObjectNotFoundError
from functions.common.work import CLASSIFIED_STATUS, FAILED, get_document
from functions.sink.core import Destinations
from functions.sink.failure_record import FailureRecord, build_failure, record_failure

#: ``failure.state`` of the note the state machine passes when only objects failed (no task did).
ITEMS_FAILED_STATE = "Batch"
MIXED_ERRORS = "BatchItemsFailed"
PARALLEL_WRITES = 8


def _items(event: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The batch's objects: from the newest batch document, else parsed from the execution's input."""
    if isinstance(event.get("batch"), Mapping):
        try:
            return list(get_document(client("s3"), event["batch"])["items"])
        except (ObjectNotFoundError, InvalidRequestError):
            pass  # expired or unreadable (a TransientError propagates: RecordFailure retries it)
    try:
        defaults = Defaults.from_dict(event.get("defaults"))
        batch = parse_input(event.get("input"), defaults)
    except (InvalidInputError, InvalidRequestError):
        return []
    items = []
    for item in batch.items:
        entry: dict[str, Any] = {"index": item.index, "status": "READY", "source": item.named_source()}
        if item.request is not None:
            entry["model"] = {"name": item.request.model.name, "version": item.request.model.version, "resolved": False}
        else:
            entry.update(
                status=FAILED,
                error={"type": "InvalidRequestError", "message": item.problem or "", "state": "Preprocess"},
            )
        items.append(entry)
    return items


def _context(entry: Mapping[str, Any], deliveries: list[Any]) -> dict[str, Any]:
    """What :func:`build_failure` reads for one object: its source and model, and the deliveries."""
    source = entry.get("source") or {}
    model = entry.get("model") or {}
    context: dict[str, Any] = {"deliveries": deliveries}
    if model.get("resolved", True) and model:
        context["job"] = {"source": source, "model": {"name": model.get("name"), "version": model.get("version")}}
    else:
        context["request"] = {**source, "model": model.get("name"), "model_version": model.get("version")}
    return context


@dataclass(frozen=True)
class _Note:
    """What the state machine says of the failed execution: its failure note and the FanOut's deliveries."""

    failure: Mapping[str, Any]
    execution_id: str
    deliveries: list[Mapping[str, Any]]
    keep_error_names: bool

    @classmethod
    def of(cls, event: Mapping[str, Any], keep_error_names: bool) -> _Note:
        failure = event.get("failure")
        raw_deliveries = event.get("deliveries")
        return cls(
            failure=failure if isinstance(failure, Mapping) else {},
            execution_id=str(event.get("execution_id") or ""),
            deliveries=[d for d in raw_deliveries if isinstance(d, Mapping)]
            if isinstance(raw_deliveries, list)
            else [],
            keep_error_names=keep_error_names,
        )

    @property
    def task_failed(self) -> bool:
        """A whole task failed (not only some objects)."""
        return self.failure.get("state") not in (None, ITEMS_FAILED_STATE)

    @property
    def failed_sink(self) -> Mapping[str, Any] | None:
        return next((d for d in self.deliveries if d.get("status") == FAILED), None)


def record_batch_failures(
    event: Mapping[str, Any], dest: Destinations, keep_error_names: bool = False
) -> dict[str, Any]:
    """Write the failure records of one failed execution; the error and cause it ends with.

    ``keep_error_names``: record ``States.*`` errors under their own name (the status recorder,
    whose execution has ended already) instead of as ``PipelineError`` (RecordFailure, whose answer
    a Fail state re-raises, and a Fail state may not raise a ``States.*`` name).
    """
    note = _Note.of(event, keep_error_names)
    items = _items(event)
    records = [record for entry in items if (record := _entry_record(entry, note, len(items))) is not None]
    if not items:  # an input that names no object at all
        whole = {
            "failure": {**note.failure, "input": event.get("input")},
            "context": {},
            "execution_id": note.execution_id,
        }
        records.append(build_failure(whole))
    with ThreadPoolExecutor(max_workers=PARALLEL_WRITES, thread_name_prefix="failure-records") as pool:
        written = list(pool.map(lambda record: record_failure(record, dest), records))
    error, cause = _ending(records, len(items), note.failure)
    return {
        "mode": "failure",
        "error": error,
        "cause": cause[:32000],
        "failed": len(records),
        "objects": len(items),
        "written": {
            "records": len(written),
            "s3": sum(1 for w in written if "s3" in w),
            "dynamodb": sum(1 for w in written if "dynamodb" in w),
        },
        "keys": [
            {
                "key": w.get("s3_key"),
                "version_key": w.get("s3_version_key"),
                "version_id": (record.source or {}).get("version_id"),
            }
            for record, w in zip(records, written, strict=True)
            if "s3_key" in w or "s3_version_key" in w
        ],
        "failed_state": records[0].failed_state if records else note.failure.get("state"),
    }


def _entry_error(entry: Mapping[str, Any], note: _Note) -> tuple[Any, Any, Any] | None:
    """``(state, error type, cause)`` of one object, or None when it did not fail."""
    failure, failed_sink = note.failure, note.failed_sink
    if entry.get("status") == FAILED:
        error = entry.get("error") or {}
        return error.get("state", "Preprocess"), error.get("type", "PipelineError"), error.get("message", "")
    if note.task_failed:
        return failure.get("state"), failure.get("error"), failure.get("cause", "")
    if failed_sink is not None and entry.get("status") == CLASSIFIED_STATUS:
        return "Deliver", failed_sink.get("error"), failed_sink.get("cause", "")
    if entry.get("status") != CLASSIFIED_STATUS:
        # Not classified, and nothing says why (the batch document could not be read): the note's error.
        return failure.get("state") or "Batch", failure.get("error") or "PipelineError", failure.get("cause", "")
    return None


def _entry_record(entry: Mapping[str, Any], note: _Note, objects: int) -> FailureRecord | None:
    """The failure record of one object of the batch, or None when it did not fail."""
    found = _entry_error(entry, note)
    if found is None:
        return None
    state, error_type, cause = found
    if str(error_type).startswith("States.") and not note.keep_error_names:
        error_type, cause = "PipelineError", f"{error_type}: {cause}"  # a Fail state may not end with a States.* name
    source = entry.get("source")
    record = build_failure(
        {
            "failure": {
                "state": state,
                "error": str(error_type),
                "cause": cause,
                **({"input": entry.get("input")} if source is None else {}),
            },
            "context": _context(entry, list(note.deliveries) if state == "Deliver" else []),
            "execution_id": note.execution_id,
        }
    )
    if source is None and objects > 1:
        return record.with_item(entry.get("index"))  # its own record under failures/_invalid/
    return record


def _ending(records: list[FailureRecord], objects: int, failure: Mapping[str, Any]) -> tuple[str, str]:
    """The error and cause the execution ends with: the one error all records share, else MIXED_ERRORS."""
    if not records:  # nothing failed after all (a note without failures): say so instead of crashing
        return str(failure.get("error") or "PipelineError"), str(
            failure.get("cause") or "no object of the batch failed"
        )
    if len(records) == 1 and objects <= 1:
        return records[0].error_type, records[0].error_message
    types = Counter(record.error_type for record in records)
    first = records[0]
    where = (first.source or {}).get("uri", "an input")
    cause = (
        f"{len(records)} of {objects or len(records)} objects failed: "
        + ", ".join(f"{name} x{count}" for name, count in types.most_common())
        + f"; first: {where}: {first.error_message}"
    )
    return (next(iter(types)) if len(types) == 1 else MIXED_ERRORS), cause


__all__ = ["ITEMS_FAILED_STATE", "MIXED_ERRORS", "record_batch_failures"]
