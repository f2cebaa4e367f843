"""``inferpipe logs FUNCTION``: a function's CloudWatch Logs, locally or on AWS, as Lambda wrote them.

Example::

    inferpipe logs sink --since 10m            # every line of the last 10 minutes, oldest first
    inferpipe logs preprocess --follow         # and keep printing new lines until Ctrl-C

Each line: the event's time (UTC), the execution environment (the log stream's last 8
characters) and the message. Lambda's own lines (START, END, REPORT) are there as written.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

from inferpipe.stack.resources import Resources

#: How often ``--follow`` asks for new events.
FOLLOW_INTERVAL_S = 1.0


def log_group(resources: Resources, function: str) -> str:
    """The log group of ``function``: a key of stack.json (preprocess, inference, sink) or a function name."""
    if function in resources.functions:
        return f"/aws/lambda/{resources.functions[function].name}"
    names = {spec.name for spec in resources.functions.values()}
    if function in names:
        return f"/aws/lambda/{function}"
    known = ", ".join([*resources.functions, *sorted(names)])
    raise ValueError(f"no function {function!r}: expected one of {known}")


def events(logs: Any, group: str, start_ms: int, end_ms: int | None = None) -> Iterator[dict[str, Any]]:
    """Every event of ``group`` from ``start_ms`` (and up to ``end_ms``), oldest first."""
    request: dict[str, Any] = {"logGroupName": group, "startTime": start_ms}
    if end_ms is not None:
        request["endTime"] = end_ms
    found = [event for page in logs.get_paginator("filter_log_events").paginate(**request) for event in page["events"]]
    yield from sorted(found, key=lambda event: (event["timestamp"], event.get("ingestionTime", 0)))


def format_event(event: dict[str, Any]) -> str:
    """``2026-12-02T01:37:07.331Z  9c1d2e3f  START RequestId: …`` (a traceback's \\r-joined lines on separate lines)."""
    when = datetime.fromtimestamp(event["timestamp"] / 1000, tz=UTC).isoformat(timespec="milliseconds")
    stream = str(event.get("logStreamName", ""))[-8:]
    message = str(event["message"]).rstrip("\n").replace("\r", "\n    ")
    return f"{when.replace('+00:00', 'Z')}  {stream}  {message}"


def tail(
    logs: Any,
    group: str,
    since: timedelta,
    follow: bool = False,
    out: TextIO | None = None,  # default: sys.stdout at call time (not the stream of whoever imported this first)
    sleep: Callable[[float], None] = time.sleep,
    keep_going: Callable[[], bool] = lambda: True,
) -> int:
    """Print the group's events of the last ``since``; with ``follow``, then new ones as they come.

    Returns how many events were printed. A missing group is an error naming it.
    """
    from botocore.exceptions import ClientError

    out = out if out is not None else sys.stdout
    start = int((datetime.now(UTC) - since).timestamp() * 1000)
    seen: dict[str, int] = {}  # events already printed, by id, while they can be read again
    printed = 0
    while True:
        try:
            batch = list(events(logs, group, start))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ResourceNotFoundException":
                raise ValueError(f"log group {group} does not exist (is the function deployed?)") from None
            raise
        for event in batch:
            key = str(event.get("eventId") or (event["timestamp"], event.get("logStreamName"), event["message"]))
            if key in seen:
                continue
            seen[key] = int(event["timestamp"])
            print(format_event(event), file=out, flush=True)
            printed += 1
            start = max(start, int(event["timestamp"]) - 5000)  # re-read a little: late events of other streams
        seen = {key: ts for key, ts in seen.items() if ts >= start}
        if not follow or not keep_going():
            return printed
        sleep(FOLLOW_INTERVAL_S)


__all__ = ["FOLLOW_INTERVAL_S", "events", "format_event", "log_group", "tail"]
