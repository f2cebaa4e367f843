"""How the commands show things: plain aligned tables, sizes, UTC times, the classify progress line.

Plain text on purpose (no box drawing, no colour, no wrapping): the output is read by people and
by scripts alike, and a table's last column (often an error message) is never cut.

Example::

    print(table([("NAME", "SIZE", "ERROR"), ("demo", human_size(1536), "")], right={1}))
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import UTC, datetime
from typing import Any, TextIO


def table(
    rows: Sequence[Sequence[str]],
    *,
    right: Collection[int] = (),
    min_widths: Sequence[int] = (),
    pad_last: bool = False,
) -> str:
    """Rows (the header first) as columns two spaces apart, each as wide as its widest cell.

    Columns in ``right`` are right-aligned, the others left-aligned; column i is at least
    ``min_widths[i]`` wide when given. The last column is written as it is, never padded or cut (the
    useful part of an error message is often at its end), unless ``pad_last`` aligns it like the others.
    """
    count = len(rows[0])
    aligned = count if pad_last else count - 1
    floors = [*min_widths, *([0] * count)]
    widths = [max(floors[col], *(len(row[col]) for row in rows)) for col in range(aligned)]

    def line(row: Sequence[str]) -> str:
        cells = [
            cell.rjust(width) if col in right else cell.ljust(width)
            for col, (cell, width) in enumerate(zip(row, widths, strict=False))
        ]
        return "  ".join([*cells, *row[aligned:]])

    return "\n".join(line(row) for row in rows)


def human_size(size: int) -> str:
    """1536 -> '1.5 KiB'; bytes below 1 KiB as they are."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def utc_seconds(when: datetime | None = None) -> str:
    """A time (default: now) in UTC to the second, e.g. '2026-01-02T03:04:05Z'."""
    return (when or datetime.now(UTC)).astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def utc_millis(when: Any) -> str | None:
    """A time (a datetime, naive meaning UTC, or seconds since the epoch) in UTC to the millisecond."""
    if when is None:
        return None
    if isinstance(when, (int, float)):
        when = datetime.fromtimestamp(when, tz=UTC)
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return str(when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"))


def seconds_between(start: Any, end: Any) -> float | None:
    """``end - start`` in seconds, to the millisecond; None when either is unknown."""
    if start is None or end is None:
        return None
    return round((end - start).total_seconds(), 3)


class Progress:
    """One status line on a terminal's stderr, rewritten in place: files uploaded, executions
    finished, failures so far. Nothing when the stream is not a terminal (a pipe, a log) or not ``live``."""

    def __init__(self, total: int, stream: TextIO, live: bool = True) -> None:
        self.total, self.stream = total, stream
        self.live = live and bool(getattr(stream, "isatty", lambda: False)())
        self.sent = self.done = self.failed = 0

    def uploaded(self, result: Any) -> None:
        self.sent += 1
        if result.error is not None:  # never started (no such file, refused): finished, failed
            self.done, self.failed = self.done + 1, self.failed + 1
        self._show()

    def finished(self, result: Any) -> None:
        self.done += 1
        self.failed += result.status != "succeeded"
        self._show()

    def _show(self) -> None:
        if self.live:
            self.stream.write(
                f"\r{self.sent}/{self.total} uploaded · {self.done}/{self.total} finished · {self.failed} failed"
            )
            self.stream.flush()

    def close(self) -> None:
        if self.live and (self.sent or self.done):
            self.stream.write("\n")
            self.stream.flush()


__all__ = ["Progress", "human_size", "seconds_between", "table", "utc_millis", "utc_seconds"]
