"""Load: uploads in bursts with ~10% transient faults, ~5% bad inputs, ~5% overwrites and killed
execution environments; every object version reconciled (``inferpipe reconcile`` and the messages).

The 1000-upload run is ``make load`` (scripts/load.py); a 300-upload run is marked slow
(``.venv/bin/pytest -m slow tests/e2e/test_load.py``). A 60-upload run with the same mix stays in
the default run, so the load path cannot rot.
"""

from __future__ import annotations

import io
import logging
from typing import Any

import pytest


def _load(stack: Any, images: int, burst: int, seed: int) -> Any:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
    from load import run_load

    logging.getLogger("moto").setLevel(logging.CRITICAL)
    out = io.StringIO()
    report = run_load(
        stack, images=images, bad_share=0.05, fault_share=0.10, burst=burst, seed=seed, kill_every=2.0, out=out
    )
    print(out.getvalue())
    assert report.ok, report.text()
    assert report.counts["duplicates"] == 0 and report.counts["missing"] == 0
    return report


@pytest.mark.slow
def test_300_uploads_with_faults_and_bad_inputs_reconcile_exactly(stack: Any) -> None:
    report = _load(stack, images=300, burst=20, seed=7)
    assert len(report.good) + len(report.bad) == 300 and len(report.bad) == 15


def test_60_uploads_in_two_bursts_with_faults_and_bad_inputs_reconcile_exactly(stack: Any) -> None:
    report = _load(stack, images=60, burst=30, seed=11)
    assert len(report.bad) == 3 and report.faulted >= 1 and report.kills >= 1
    assert report.counts["reconcile totals"]["failed"] == 3 * 5  # the bad inputs, in each of the five sinks
