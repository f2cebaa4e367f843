"""`make bench` on tiny settings (`python -m bench.run --quick`), so the benchmark cannot rot."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quick_benchmark_prints_the_table_and_writes_results_and_chart(tmp_path: Path) -> None:
    # WHEN the benchmark runs on tiny settings (demo network, batch 1, a few rounds, no ONNX)
    out, chart = tmp_path / "results.json", tmp_path / "chart.png"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--no-onnx", "--out", str(out), "--chart", str(chart)],
        check=False,
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "2"},
        capture_output=True,
        text=True,
        timeout=300,  # a hang, not a speed limit
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # THEN it prints the table and writes the JSON with every section and the ratios
    assert "| demo_b1 (min / median ms) |" in proc.stdout and "| ratio | value | target |" in proc.stdout
    results = json.loads(out.read_text())
    assert {"latency", "peak", "cold", "preprocess", "pipeline", "ratios", "machine", "date"} <= set(results)
    latency = results["latency"]["demo_b1"]
    variants = latency["variants"]
    assert {"imperative", "hybridized", "hybridized_static", "fused", "int8"} <= set(variants)
    assert all(v["median_ms"] > 0 and v["fraction_of_peak"] > 0 for v in variants.values())
    assert latency["macs"] > 0 and latency["graph"]["int8_quantized_nodes"] > 0
    ratios = results["ratios"]
    assert {
        "demo.fused_vs_hybridized_b1",
        "demo.fused_vs_hybridized_static_b1",
        "demo.int8_vs_hybridized_b1",
        "demo.int8_fraction_of_peak_b1",
        "cold.first_vs_warm",
        "preprocess.jpeg_quick_draft_speedup",
    } <= set(ratios)
    # AND the int8 and fp32 peaks were measured in that same worker, on kernels checked to run int8
    peak = results["peak"]
    assert peak["worker"] == "demo_b1" and peak["fp32_gmacs"] > 0 and peak["int8_gmacs"] > 0
    int8_kernels = [k for k in peak["kernels"].values() if k["dtype"] == "int8"]
    assert int8_kernels and all(
        k["check"]["quantized_nodes"] and k["samples"] == variants["int8"]["rounds"] for k in int8_kernels
    )
    # AND the cold start is the median of fresh processes, each one's ratio kept
    cold = results["cold"]["demo_int8"]
    assert all(
        cold[k] > 0 for k in ("import_ms", "load_ms", "init_first_forward_ms", "first_prediction_ms", "warm_median_ms")
    )
    assert cold["processes"] == len(cold["first_vs_warm_per_process"]) >= 3
    assert ratios["cold.first_vs_warm"] == cold["first_vs_warm"] == statistics.median(cold["first_vs_warm_per_process"])
    assert results["pipeline"]["burst"]["succeeded"] == results["pipeline"]["burst"]["uploads"]
    # AND the pipeline ran with isolated Lambda environments beside the in-process mode, with Init Durations
    assert (
        results["pipeline"]["lambda_mode"] == "isolated"
        and results["pipeline_in_process"]["lambda_mode"] == "in-process"
    )
    # AND the same images went through the micro-batched trigger, its flood priced and its trickle timed
    batched = results["pipeline_batched"]
    assert batched["trigger"] == "batched" and batched["burst"]["succeeded"] == batched["burst"]["uploads"]
    assert ratios["cost.flood_usd_per_million_images"] == batched["burst_cost"]["usd_per_million_images"] > 0
    assert "pipeline.trickle_added_latency_ms" in ratios and ratios["pipeline.burst_images_per_s"] > 0
    assert results["pipeline_in_process"]["burst"]["succeeded"] == results["pipeline_in_process"]["burst"]["uploads"]
    assert all(f["init_ms"] and f["max_memory_mb"] > 0 for f in results["pipeline"]["functions"].values())
    assert ratios["pipeline.isolated_vs_in_process_per_image"] > 0
    # AND the burst is priced from its measured usage (inferpipe cost)
    burst_cost = results["pipeline"]["burst_cost"]
    assert burst_cost["images"] == results["pipeline"]["burst"]["uploads"]
    assert ratios["cost.direct_usd_per_million_images"] == burst_cost["usd_per_million_images"] > 0
    assert 0 < ratios["cost.direct_orchestration_share"] < 1
    assert results["prepare"]["demo"]["int8"]["fused_nodes"] > 0
    # AND the chart when matplotlib is installed (the bench extra)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        pass
    else:
        assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
