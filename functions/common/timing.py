"""Stage timings in milliseconds, measured and rounded the one way every function reports them
(``timings_ms``, ``ms``, ``init_ms``).

Example::

    timings: dict[str, float] = {}
    with timed(timings, "forward"):
        predictions = predict_batch(model, tensor, top_ks)
    logger.info("done", extra={"timings_ms": rounded(timings)})
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager


def since_ms(started: float) -> float:
    """Milliseconds since ``started``, a ``time.perf_counter()`` reading."""
    return (time.perf_counter() - started) * 1000.0


@contextmanager
def timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    """Add the block's duration to ``timings[stage]`` (a stage run several times adds up)."""
    started = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] = timings.get(stage, 0.0) + since_ms(started)


def rounded(timings: Mapping[str, float]) -> dict[str, float]:
    """Timings as reported: to a tenth of a millisecond."""
    return {stage: round(ms, 1) for stage, ms in timings.items()}


__all__ = ["rounded", "since_ms", "timed"]
