"""`make bench` on tiny settings (`python -m bench.run --quick`), so the benchmark cannot rot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quick_benchmark_prints_the_table_and_writes_results_and_chart(tmp_path: Path) -> None:
    # WHEN the benchmark runs on tiny settings (demo network, batch 1, a few rounds, no ONNX)
    out, chart = tmp_path / "results.json", tmp_path / "chart.png"
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--no-onnx", "--out", str(out), "--chart", str(chart)],
        cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "2"}, capture_output=True, text=True, timeout=120,
    )
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr[-3000:]
    # THEN it prints the table and writes the JSON with every section and the ratios
    assert "| demo_b1 (min / median ms) |" in proc.stdout and "| ratio | value | target |" in proc.stdout
    results = json.loads(out.read_text())
    assert {"latency", "peak", "cold", "preprocess", "pipeline", "ratios", "machine", "date"} <= set(results)
    variants = results["latency"]["demo_b1"]["variants"]
    assert {"imperative", "hybridized", "fused", "int8"} <= set(variants)
    assert all(v["median_ms"] > 0 for v in variants.values())
    assert {"demo.fused_vs_hybridized_b1", "demo.int8_vs_hybridized_b1", "cold.first_vs_warm", "preprocess.jpeg_quick_draft_speedup"} <= set(results["ratios"])
    cold = results["cold"]["demo_int8"]
    assert all(cold[k] > 0 for k in ("import_ms", "load_ms", "init_first_forward_ms", "first_prediction_ms", "warm_median_ms"))
    assert results["pipeline"]["burst"]["succeeded"] == results["pipeline"]["burst"]["uploads"]
    assert results["prepare"]["demo"]["int8"]["fused_nodes"] > 0
    # AND the chart when matplotlib is installed (the bench extra)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        pass
    else:
        assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert elapsed < 60, f"the quick benchmark took {elapsed:.0f} s"
