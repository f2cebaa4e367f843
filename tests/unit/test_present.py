"""inferpipe.present: the commands' one table printer, sizes and the TTY-only progress line."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from types import SimpleNamespace

from inferpipe.present import Progress, human_size, seconds_between, table, utc_millis, utc_seconds


def test_columns_align_and_the_last_one_is_never_padded_or_cut() -> None:
    message = "ModelNotFoundError: " + "x" * 300 + " the useful end"
    text = table([("FILE", "STATUS", "ERROR"), ("a.jpg", "failed", message), ("long name.png", "succeeded", "")])
    lines = text.split("\n")
    assert lines[0] == "FILE           STATUS     ERROR"
    assert lines[1] == "a.jpg          failed     " + message
    assert lines[2] == "long name.png  succeeded  "


def test_right_aligned_columns_minimum_widths_and_a_padded_last_column() -> None:
    text = table(
        [("sink", "objects", "missing"), ("s3", "12", "0")], right=(1, 2), min_widths=(0, 10, 10), pad_last=True
    )
    assert text.split("\n") == ["sink     objects     missing", "s3            12           0"]


def test_sizes_and_times() -> None:
    assert [human_size(n) for n in (0, 1023, 1536, 5 * 1024**3)] == ["0 B", "1023 B", "1.5 KiB", "5.0 GiB"]
    when = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    assert utc_seconds(when) == "2026-01-02T03:04:05Z"
    assert utc_millis(when) == "2026-01-02T03:04:05.678Z"
    assert utc_millis(when.replace(tzinfo=None)) == "2026-01-02T03:04:05.678Z"  # naive means UTC
    assert utc_millis(None) is None
    assert seconds_between(when, when.replace(second=7)) == 2.0
    assert seconds_between(when, None) is None


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_one_line_rewritten_on_a_terminal_and_nothing_elsewhere() -> None:
    ok = SimpleNamespace(error=None, status="succeeded")
    refused = SimpleNamespace(error={"type": "AccessDenied", "message": "no"}, status="failed")
    terminal = _Terminal()
    progress = Progress(2, terminal)
    progress.uploaded(ok)
    progress.uploaded(refused)
    progress.finished(ok)
    progress.close()
    assert terminal.getvalue().split("\r")[-1] == "2/2 uploaded · 2/2 finished · 1 failed\n"
    for stream, live in ((io.StringIO(), True), (_Terminal(), False)):  # a pipe; --json
        quiet = Progress(1, stream, live=live)
        quiet.uploaded(ok)
        quiet.finished(ok)
        quiet.close()
        assert stream.getvalue() == ""
