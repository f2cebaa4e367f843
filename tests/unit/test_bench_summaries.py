"""The benchmark's bookkeeping: cold-start medians over processes, the peak it reports, figures that cannot be right."""

from __future__ import annotations

from typing import Any

from bench.run import RESNET50_GMAC, _cold_summary, _peak_summary, _sanity


def cold_run(first: float, warm: float) -> dict[str, Any]:
    return {
        "first_prediction_ms": first,
        "second_prediction_ms": warm,
        "warm_median_ms": warm,
        "warm_max_ms": 2 * warm,
        "first_cpu_per_wall": 1.9,
        "warm_cpu_per_wall_median": 1.9,
        "init_first_forward_ms": 300.0,
        "init_gc_ms": 50.0,
        "loadavg_1min": [0.5, 0.6],
        "load_ms": 150.0,
        "import_ms": 900.0,
    }


def test_the_cold_ratio_is_the_median_over_fresh_processes_and_each_is_kept() -> None:
    # GIVEN three processes whose first prediction was 1.0×, 5.5× and 1.2× their warm median
    runs = [cold_run(10.0, 10.0), cold_run(55.0, 10.0), cold_run(14.4, 12.0)]
    summary = _cold_summary(runs)
    # THEN the ratio is their median, not one process's luck, and the parts shown are that process's
    assert summary["first_vs_warm"] == 1.2
    assert summary["first_vs_warm_per_process"] == [1.0, 5.5, 1.2] and summary["processes"] == 3
    assert summary["first_prediction_ms"] == 14.4 and len(summary["per_process"]) == 3


def latency(fraction: float, int8_over_fp32: float = 4.0, gmac: float = RESNET50_GMAC) -> dict[str, Any]:
    peak = {
        "fp32_gmacs": 100.0,
        "int8_gmacs": 100.0 * int8_over_fp32,
        "fp32_kernel": "fc 1x1x1",
        "int8_kernel": "conv3x3 1×8ch×8x8 ×2",
        "int8_over_fp32": int8_over_fp32,
        "kernels": {},
    }
    return {
        "batch": 1,
        "gmac_per_forward": gmac,
        "peak": peak,
        "variants": {
            "int8": {"fraction_of_peak": fraction, "peak_dtype": "int8"},
            "fused": {"fraction_of_peak": 0.8, "peak_dtype": "fp32"},
        },
    }


def test_a_fraction_of_peak_above_one_is_flagged_as_a_wrong_peak() -> None:
    assert _sanity({"latency": {"resnet50_v1_b1": latency(0.9)}}) == []
    (warning,) = _sanity({"latency": {"resnet50_v1_b1": latency(1.07)}})
    assert "int8" in warning and "1.07" in warning and "peak is too low" in warning


def test_an_int8_peak_no_faster_than_fp32_or_a_miscounted_resnet_is_flagged() -> None:
    warnings = _sanity({"latency": {"resnet50_v1_b1": latency(0.9, int8_over_fp32=1.1, gmac=4.1)}})
    assert len(warnings) == 2 and any("no VNNI" in w for w in warnings) and any("GMAC per image" in w for w in warnings)


def test_the_headline_peak_is_the_main_workers_and_the_derived_figure_is_only_a_cross_check() -> None:
    summary = _peak_summary(
        {"resnet50_v1_b1": latency(0.9), "demo_b1": latency(0.5, int8_over_fp32=3.0)}, "resnet50_v1_b1"
    )
    assert summary["worker"] == "resnet50_v1_b1" and summary["int8_gmacs"] == 400.0 and summary["fp32_gmacs"] == 100.0
    assert summary["per_worker"]["demo_b1"]["int8_gmacs"] == 300.0
    assert summary["int8_gmacs_derived_cross_check"] == 400.0 and "cross-check" in summary["int8_derivation"]
