"""The path an execution took, read from its history events: each state entered, how long it ran,
how it ended, the attempts that failed before (Retry) and the Map iteration it ran in.

Example::

    for step in steps(history(sfn, arn), "FAILED"):
        print(step.name, step.type, step.seconds, step.outcome)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from inferpipe.present import seconds_between, utc_millis

_STATE_TYPES = ("Task", "Map", "Pass", "Choice", "Fail", "Succeed", "Wait", "Parallel")
_FAILED_ATTEMPTS = ("LambdaFunctionFailed", "LambdaFunctionTimedOut", "TaskFailed", "TaskTimedOut")
#: Events a chain reaches when it left (or never entered) a Map iteration: a state outside any Map.
_OUTSIDE_ITERATIONS = (
    "MapStateStarted",
    "MapStateEntered",
    "MapStateExited",
    "MapStateSucceeded",
    "MapStateFailed",
    "MapStateAborted",
    "ExecutionStarted",
    "ExecutionRedriven",
)

Event = Mapping[str, Any]


@dataclass(frozen=True)
class Step:
    """One state entered: where, how long, and how it ended."""

    name: str
    type: str
    entered: str  # ISO 8601, UTC
    seconds: float | None  # None while it has not exited
    outcome: str  # "succeeded", "failed", "running" (or the execution stopped in it)
    iteration: int | None = None  # the Map iteration it ran in
    failed_attempts: int = 0  # attempts that failed before the last (Retry)


def steps(events: Sequence[Event], status: str) -> list[Step]:
    """The states entered, in order, each with its duration and outcome.

    An exit is paired with its entry by following ``previousEventId`` back from the exit (concurrent
    Map iterations interleave their events, and each chain is its own iteration's); failed attempts
    and the Map iteration are read on the way.
    """
    by_id = {int(e["id"]): e for e in events}
    exits = _exits(events, by_id)
    iterations = _iterations(events, by_id)
    ended = _iteration_ends(events)
    found: list[Step] = []
    for event in events:
        kind = str(event["type"])
        if not kind.endswith("StateEntered"):
            continue
        entry = int(event["id"])
        exit_event = exits.get(entry)
        if exit_event is not None:
            outcome, seconds = "succeeded", seconds_between(event["timestamp"], exit_event[0]["timestamp"])
            failed_attempts = exit_event[1]
        else:
            outcome, seconds, failed_attempts = _unfinished(entry, iterations.get(entry), ended, status), None, 0
        found.append(
            Step(
                str((event.get("stateEnteredEventDetails") or {}).get("name")),
                _state_type(kind),
                utc_millis(event["timestamp"]) or "",
                seconds,
                outcome,
                iterations.get(entry),
                failed_attempts,
            )
        )
    return found


def _previous(event: Event, by_id: Mapping[int, Event]) -> Event | None:
    return by_id.get(int(event.get("previousEventId") or 0))


def _exits(events: Sequence[Event], by_id: Mapping[int, Event]) -> dict[int, tuple[Event, int]]:
    """Entry event id -> (its exit event, the attempts that failed in between)."""
    exits: dict[int, tuple[Event, int]] = {}
    for event in events:
        if not str(event["type"]).endswith("StateExited"):
            continue
        name = (event.get("stateExitedEventDetails") or {}).get("name")
        failures, cursor = 0, _previous(event, by_id)
        while cursor is not None:
            kind = str(cursor["type"])
            if kind.endswith("StateEntered") and (cursor.get("stateEnteredEventDetails") or {}).get("name") == name:
                exits[int(cursor["id"])] = (event, failures)
                break
            if kind in _FAILED_ATTEMPTS:
                failures += 1
            cursor = _previous(cursor, by_id)
    return exits


def _unfinished(entry: int, iteration: int | None, ended: Sequence[tuple[int, int, str]], status: str) -> str:
    """The outcome of a state never exited: running, failed, or how its Map iteration ended (an
    iteration is aborted when another fails)."""
    outcome = "running" if status == "RUNNING" else "failed"
    if iteration is None:
        return outcome
    return next((how for at, index, how in ended if index == iteration and at > entry), outcome)


def _state_type(event_type: str) -> str:
    for kind in _STATE_TYPES:
        if event_type.startswith(kind):
            return kind
    return event_type.removesuffix("StateEntered")


def _iteration_ends(events: Sequence[Event]) -> list[tuple[int, int, str]]:
    """(event id, index, "failed" or "aborted") of each Map iteration that did not succeed."""
    kinds = {"MapIterationFailed": "failed", "MapIterationAborted": "aborted"}
    return [
        (
            int(e["id"]),
            int((e.get(f"{e['type'][0].lower()}{e['type'][1:]}EventDetails") or {}).get("index", -1)),
            kinds[e["type"]],
        )
        for e in events
        if e["type"] in kinds
    ]


def _iterations(events: Sequence[Event], by_id: Mapping[int, Event]) -> dict[int, int]:
    """Entry event id -> the index of the Map iteration it ran in (its chain reaches MapIterationStarted)."""
    found: dict[int, int] = {}
    for event in events:
        if not str(event["type"]).endswith("StateEntered"):
            continue
        cursor = _previous(event, by_id)
        while cursor is not None:
            kind = str(cursor["type"])
            if kind == "MapIterationStarted":
                found[int(event["id"])] = int((cursor.get("mapIterationStartedEventDetails") or {}).get("index", -1))
                break
            if kind in _OUTSIDE_ITERATIONS:
                break
            cursor = _previous(cursor, by_id)
    return found


__all__ = ["Step", "steps"]
