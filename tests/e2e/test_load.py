"""Load: 300 uploads in bursts with ~10% transient faults and ~5% bad inputs; every object reconciled.

Marked slow (several minutes on two cores): ``.venv/bin/pytest -m slow tests/e2e/test_load.py`` or
``make load`` (scripts/load.py, the same run as a script).
"""

from __future__ import annotations

import io
import logging
from typing import Any

import pytest


@pytest.mark.slow
def test_300_uploads_with_faults_and_bad_inputs_reconcile_exactly(stack: Any) -> None:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
    from load import run_load  # type: ignore[import-not-found]

    logging.getLogger("moto").setLevel(logging.CRITICAL)
    out = io.StringIO()
    report = run_load(stack, images=300, bad_share=0.05, fault_share=0.10, burst=20, seed=7, out=out)
    print(out.getvalue())
    assert report.ok, report.text()
    assert len(report.good) + len(report.bad) == 300 and len(report.bad) == 15
    assert report.counts["duplicates"] == 0 and report.counts["missing"] == 0
