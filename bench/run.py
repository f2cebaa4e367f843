"""``make bench``: inference, preprocessing, cold start and pipeline figures for issue 6.

One subprocess per (model, batch size), OMP_NUM_THREADS=2 pinned, variants interleaved round by
round so every ratio is measured side by side; the baseline ``hybridized`` is the original
design's plain ``hybridize()``. Each latency worker also times fp32 and int8 GEMM kernels through
oneDNN, one sample per round, and takes their best rate as this host's measured peak for the
fraction-of-peak figures. Cold starts: several fresh processes, their median ratio. Prints a
table, writes ``bench/results.json`` and a PNG chart.

    python -m bench.run              # the full run (several minutes)
    python -m bench.run --quick      # tiny settings: the smoke test in `make test`
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "bench"
#: Packages and test files the workers make (the quick run keeps its own, so both can coexist).
CACHE_DIR = Path(os.environ.get("INFERPIPE_BENCH_CACHE", ROOT / "build" / "bench"))
THREADS = "2"
#: Concurrent writers in a flood (the burst of the pipeline benchmark), in a process of their own.
#: A flood is uploads arriving faster than the pipe's 1 s window can hold (> 100 a second): 8
#: writers put 60-75 a second on this emulator, so the window closed batches of 60-100; 16 put
#: ~120 a second.
UPLOADERS = 16
#: At most this many unmeasured floods before the measured one (see worker_pipeline).
WARM_FLOODS = 3
#: ResNet-50 v1 multiply-accumulates per 224×224 image, GMAC (conv + fc; the figures use the count
#: ``inferpipe.optimize.graph_macs`` makes from each graph, this is only a sanity check of it).
RESNET50_GMAC = 3.858
VARIANTS = ("imperative", "hybridized", "hybridized_static", "fused", "fused_pad", "int8", "onnxruntime")
#: The pretrained EfficientNet-Lite0 (real ImageNet weights, the deployment's default model).
LITE0 = "lite0"
#: Fresh processes per cold-start measurement (its ratio is their median).
COLD_PROCESSES = 5
COLD_PROCESSES_QUICK = 3


# ============================================================================ workers (subprocesses)


def _emit(result: Any) -> None:
    print("BENCH-RESULT " + json.dumps(result), flush=True)


def _quiet_mxnet() -> None:
    import logging
    import warnings

    warnings.simplefilter("ignore")
    logging.getLogger().setLevel(logging.ERROR)


def _demo_net(seed: int = 0) -> Any:
    import mxnet as mx

    from inferpipe.demo_model.shapes import CLASSES
    from inferpipe.demo_model.train import build_network

    mx.random.seed(seed)
    net = build_network(len(CLASSES))
    net.initialize(mx.init.Xavier(magnitude=2.0))
    return net


def _zoo_net(name: str, seed: int = 0) -> Any:
    import mxnet as mx
    from mxnet.gluon.model_zoo.vision import get_model

    mx.random.seed(seed)
    net = get_model(name, pretrained=False, classes=1000)
    net.initialize(mx.init.Xavier(magnitude=2.0))
    return net


def _lite0_net(same: str = "flip") -> Any:
    """The pretrained EfficientNet-Lite0 as a Gluon block (not hybridized)."""
    from inferpipe.pretrained.efficientnet_lite import efficientnet_lite0, load_state_dict, weights_path
    from inferpipe.pretrained.legacy_pth import read_state_dict

    net = efficientnet_lite0(same)
    load_state_dict(net, read_state_dict(weights_path()))
    return net


def _imperative_net(model: str) -> Any:
    if model == "demo":
        return _demo_net()
    return _lite0_net() if model == LITE0 else _zoo_net(model)


def _calibration(spec: Any, n: int, seed: int = 7) -> Any:
    """Calibration tensors: demo shape images at photo-like sizes through the serving transform."""
    import numpy as np

    from functions.preprocess.transform import to_tensor
    from inferpipe.demo_model.shapes import CLASSES, render

    rng = np.random.default_rng(seed)
    return np.stack([to_tensor(render(CLASSES[i % len(CLASSES)], rng, size=(320, 240)), spec) for i in range(n)])


def worker_prepare(model: str, calib: int, batches: tuple[int, ...] = (1, 8)) -> dict[str, Any]:
    """fp32, fused and int8 packages of ``model`` under build/bench/<model>/, and its ONNX files."""
    out = _prepare_packages(model, calib)
    if _have_onnx():
        for batch in batches:
            export_onnx(model, batch)
    return out


def _prepare_packages(model: str, calib: int) -> dict[str, Any]:
    """fp32, fused and int8 packages of ``model`` (random weights; Lite0 pretrained) under build/bench/<model>/."""
    _quiet_mxnet()
    from inferpipe.demo_model.shapes import CLASSES
    from inferpipe.demo_model.train import ARCHITECTURE, DEMO_SPEC
    from inferpipe.optimize import optimize_package
    from inferpipe.packaging import IMAGENET_SPEC, export_package

    base = CACHE_DIR / model
    done = base / "prepared.json"
    if done.exists() and all((base / mode / "manifest.json").exists() for mode in ("fp32", "fused", "int8")):
        return json.loads(done.read_text())  # packages are deterministic (seeded): reuse them
    if model == LITE0:
        out = _prepare_lite0(base)
        done.write_text(json.dumps(out))
        return out
    if model == "demo":
        net, spec, labels, arch = _demo_net(), DEMO_SPEC, list(CLASSES), ARCHITECTURE
    else:
        net, spec, labels, arch = _zoo_net(model), IMAGENET_SPEC, [f"class_{i}" for i in range(1000)], model
    export_package(
        net,
        labels,
        spec,
        base / "fp32",
        name=model.replace("_", "-"),
        architecture=arch,
        source="bench (random weights, seed 0)",
    )
    calibration = _calibration(spec, calib)
    out = {}
    for mode in ("fused", "int8"):
        manifest = optimize_package(base / "fp32", base / mode, mode, calibration=calibration)
        out[mode] = {
            k: manifest.metrics[k]
            for k in ("fused_nodes", "agreement_top1_vs_fp32", "agreement_images", "optimize_seconds")
        }
    done.write_text(json.dumps(out))
    return out


def _prepare_lite0(base: Path) -> dict[str, Any]:
    """Lite0's packages as ``model import efficientnet_lite0 --pretrained`` builds them, plus the
    explicit-pad form of the graph (fp32_pad, fused_pad) that shows what the SAME-padding rewrite saves.

    int8 calibrates on the calibration photos and is checked on the held-out ones (inferpipe.pretrained).
    """
    from inferpipe.optimize import optimize_package
    from inferpipe.pretrained import calibration_tensors, export_fp32, heldout_tensors

    fp32 = export_fp32("efficientnet_lite0", base / "fp32")
    export_fp32("efficientnet_lite0", base / "fp32_pad", same="pad")
    heldout = heldout_tensors(fp32.input)
    calibration = calibration_tensors(fp32.input)
    out = {}
    for mode, source, target in (
        ("fused", "fp32", "fused"),
        ("int8", "fp32", "int8"),
        ("fused", "fp32_pad", "fused_pad"),
    ):
        manifest = optimize_package(
            base / source,
            base / target,
            mode,
            calibration=calibration if mode == "int8" else None,
            heldout=heldout,
            max_calibration=len(calibration),
        )
        keys = (
            "fused_nodes",
            "agreement_top1_vs_fp32",
            "agreement_top1_in_fp32_top5",
            "centred_cosine_mean",
            "centred_cosine_min",
            "agreement_images",
            "optimize_seconds",
        )
        out[target] = {k: manifest.metrics[k] for k in keys}
    out["size_bytes"] = {m: sum(f.stat().st_size for f in (base / m).iterdir()) for m in ("fp32", "fused", "int8")}
    return out


#: Whether ONNX Runtime's threads may spin between runs (its default). It runs in a process of its
#: own, so spinning takes a core from nothing else (side by side with MXNet it took one from the
#: next variant: the next kernel measured 65 instead of 102 GMAC/s).
ORT_SPINNING = os.environ.get("INFERPIPE_BENCH_ORT_SPINNING", "1") == "1"


def export_onnx(model: str, batch: int) -> Path:
    """The fp32 package of ``model`` as ONNX for ``batch`` (mx.onnx.export_model), initializers removed from the inputs.

    Done in the prepare worker, never in a latency worker: the exporter copies weights with
    ``mx.nd.array``, which starts a second OpenMP team in the process, and every later MXNet
    forward of that process ran slower (measured on Lite0: int8 6.8 instead of 3.5 ms, fused
    12.7 instead of 7.7 ms).
    """
    import mxnet as mx
    import numpy as np
    import onnx

    from functions.common.manifest import Manifest

    # Lite0: the explicit-pad graph, the one ONNX Runtime runs fastest (it folds Pad into Conv;
    # measured 5.9 ms against 6.7 ms for the sliced graph): the control gets its best case.
    pkg = CACHE_DIR / model / ("fp32_pad" if model == LITE0 else "fp32")
    manifest = Manifest.from_json((pkg / "manifest.json").read_text())
    path = CACHE_DIR / model / f"model-b{batch}.onnx"
    if not path.exists():
        shape = (batch, 3, manifest.input.height, manifest.input.width)
        mx.onnx.export_model(
            str(pkg / "model-symbol.json"), str(pkg / "model-0000.params"), [shape], [np.float32], str(path)
        )
        graph_model = onnx.load(str(path))
        initializers = {init.name for init in graph_model.graph.initializer}
        keep = [i for i in graph_model.graph.input if i.name not in initializers]
        del graph_model.graph.input[:]
        graph_model.graph.input.extend(keep)  # lets ORT fold BatchNorm into the convolutions
        # MXNet's exporter writes ops with its newest translations (opset 13) but stamps the
        # installed onnx's newest opset (22 for onnx 1.17), which ORT 1.20 refuses: restamp it.
        for opset in graph_model.opset_import:
            if opset.domain in ("", "ai.onnx"):
                opset.version = 13
        onnx.save(graph_model, str(path))
    return path


def _ort_session(model: str, batch: int) -> Any:
    """ONNX Runtime fp32 on the same weights, from the file ``export_onnx`` wrote in the prepare worker."""
    import onnxruntime as ort

    path = CACHE_DIR / model / f"model-b{batch}.onnx"
    if not path.exists():
        raise FileNotFoundError(f"{path}: not exported by the prepare worker (is onnx installed?)")
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(THREADS)
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if ORT_SPINNING else "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


#: GEMM-shaped kernels timed inside every latency worker, one sample each per round between the
#: variants, to measure this host's fp32 and int8 peak through oneDNN (the best rate any of them
#: reaches): ``(kind, dims, depth)``, a chain of ``depth`` layers with ReLU, so that, as inside
#: ResNet, the layers hand each other blocked (and for int8, uint8) tensors and the fp32 ↔ int8
#: conversions at the ends are a small part of the time (a single layer measured 10-25 % lower
#: for int8). ``conv``: convolutions (batch, channels, height, width, kernel size), channels in =
#: out, "same" padding; a k×k convolution is a GEMM with k²·channels terms per output (implicit
#: im2col), the kind ResNet runs. ``fc``: FullyConnected (rows, features), a (rows×f)·(f×f) GEMM.
#: int8 goes through quantize_net_v2 (naive calibration) exactly as the int8 packages do.
#: Measured here (AMD EPYC, 2 threads), best GMAC/s fp32 / int8: 1×1 convs 107 / 370-390,
#: 3×3 convs 111-118 / 380-448, FullyConnected 80-85 / 380. With 1×1 kernels only, ResNet-50 int8
#: at batch 8 ran at 1.09 "of peak": the peak must include 3×3 convolutions.
PEAK_KERNELS: tuple[tuple[str, tuple[int, ...], int], ...] = (
    ("conv", (1, 1024, 28, 28, 1), 4),
    ("conv", (2, 512, 14, 14, 3), 4),
    ("conv", (1, 512, 28, 28, 3), 2),
    ("fc", (512, 2048), 2),
)
PEAK_KERNELS_QUICK: tuple[tuple[str, tuple[int, ...], int], ...] = (
    ("conv", (1, 256, 14, 14, 1), 2),
    ("conv", (1, 128, 14, 14, 3), 2),
    ("fc", (128, 512), 2),
)
#: Largest max |int8 − fp32| / max |fp32| a peak kernel may show (measured 0.01-0.03): more means broken.
PEAK_INT8_MAX_REL_DIFF = 0.1


def _thread_count() -> int:
    """Threads of this process (MXNet engine + OpenMP teams + ONNX Runtime pool), for the record."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return 0


def _kernel_label(kind: str, dims: Any, depth: int) -> str:
    """``conv3x3 2×512ch×14x14 ×4`` (batch × channels × map, layers) or ``fc 512×2048 ×2`` (rows × features)."""
    if kind == "conv":
        batch, channels, height, width, size = dims
        return f"conv{size}x{size} {batch}×{channels}ch×{height}x{width} ×{depth}"
    return f"{kind} {'×'.join(map(str, dims))} ×{depth}"


def _peak_kernels(specs: tuple[tuple[str, tuple[int, ...], int], ...]) -> list[dict[str, Any]]:
    """fp32 and int8 versions of each GEMM kernel: ``{name, dtype, kind, dims, depth, macs, run, check}``.

    fp32: the exported graph, hybridized with the oneDNN backend and static memory, as the serving
    path loads fused packages. int8: ``inferpipe.optimize.quantize_block`` (the int8 packages'
    path). Each int8 kernel is checked to run quantized oneDNN operators (one per layer) and to
    differ from fp32 by quantization noise only (0 < max |int8 − fp32| ≤ PEAK_INT8_MAX_REL_DIFF
    of max |fp32|); a kernel that silently ran fp32 would make the "int8 peak" an fp32 figure.
    """
    import mxnet as mx
    import numpy as np
    from mxnet import gluon

    from functions.inference.core import FUSION_BACKEND, to_ndarray
    from inferpipe.optimize import quantize_block, quantized_nodes, symbol_block

    kernels = []
    for kind, dims, depth in specs:
        mx.random.seed(0)
        net = gluon.nn.HybridSequential()
        if kind == "fc":
            rows, features = dims
            for _ in range(depth):
                net.add(gluon.nn.Dense(features, in_units=features, use_bias=False, activation="relu"))
            shape, macs = (rows, features, 1, 1), depth * rows * features * features  # the first layer flattens
        elif kind == "conv":
            batch, channels, height, width, size = dims
            for _ in range(depth):
                net.add(
                    gluon.nn.Conv2D(
                        channels, size, padding=size // 2, in_channels=channels, use_bias=False, activation="relu"
                    )
                )
            shape, macs = (
                (batch, channels, height, width),
                depth * batch * channels * channels * height * width * size * size,
            )
        else:
            raise ValueError(f"unknown peak kernel kind {kind!r}")
        net.initialize(mx.init.Xavier(magnitude=2.0))
        net.hybridize()
        rng = np.random.default_rng(0)
        x_np = rng.uniform(0, 1, shape).astype(np.float32)  # non-negative, as after a ReLU: uint8 × int8
        x = to_ndarray(x_np)  # never mx.nd.array / a large asnumpy here: see to_ndarray
        net(x).wait_to_read()
        with tempfile.TemporaryDirectory() as tmp:
            net.export(str(Path(tmp) / "kernel"), epoch=0)
            symbol = mx.sym.load(str(Path(tmp) / "kernel-symbol.json"))
            params = mx.nd.load(str(Path(tmp) / "kernel-0000.params"))
        fp32 = symbol_block(symbol, params)
        fp32.hybridize(backend=FUSION_BACKEND, static_alloc=True, static_shape=True)
        int8 = quantize_block(symbol, params, rng.uniform(0, 1, (8, *shape[1:])).astype(np.float32))
        int8.hybridize(static_alloc=True, static_shape=True)
        reference, got = fp32(x), int8(x)
        quantized = quantized_nodes(int8._cached_graph[1])
        error = float((mx.nd.abs(got - reference).max() / mx.nd.maximum(mx.nd.abs(reference).max(), 1e-12)).asscalar())
        name = _kernel_label(kind, dims, depth)
        common = {"kind": kind, "dims": list(dims), "depth": depth, "macs": macs}
        kernels.append(
            {
                **common,
                "name": f"fp32 {name}",
                "dtype": "fp32",
                "run": lambda b=fp32, x=x: b(x).wait_to_read(),
                "check": {"oneDNN backend": FUSION_BACKEND},
            }
        )
        if len(quantized) != depth or not 0.0 < error <= PEAK_INT8_MAX_REL_DIFF:
            # Not an int8 peak (another CPU or MXNet build may not quantize it): left out, said so.
            print(
                f"warning: the int8 {name} peak kernel does not run int8 (quantized oneDNN nodes {quantized}, "
                f"max |int8 - fp32| / max |fp32| = {error:.3g}); left out of the int8 peak",
                file=sys.stderr,
            )
            continue
        kernels.append(
            {
                **common,
                "name": f"int8 {name}",
                "dtype": "int8",
                "run": lambda b=int8, x=x: b(x).wait_to_read(),
                "check": {"quantized_nodes": quantized, "max_rel_diff_vs_fp32": round(error, 5)},
            }
        )
    if not any(k["dtype"] == "int8" for k in kernels):
        raise RuntimeError("no int8 peak kernel runs int8 on this host: the int8 fraction of peak cannot be measured")
    return kernels


def _summarize_peak(kernels: list[dict[str, Any]], times: dict[str, list[float]]) -> dict[str, Any]:
    """Per kernel min / median ms and GMAC/s; per dtype the best (the peak) and which kernel gave it."""
    table = {}
    for k in kernels:
        t = times[k["name"]]
        table[k["name"]] = {
            "dtype": k["dtype"],
            "kind": k["kind"],
            "dims": k["dims"],
            "depth": k["depth"],
            "macs": k["macs"],
            "check": k["check"],
            "min_ms": min(t),
            "median_ms": statistics.median(t),
            "samples": len(t),
            "best_gmacs": k["macs"] / min(t) / 1e6,
            "median_gmacs": k["macs"] / statistics.median(t) / 1e6,
        }
    out: dict[str, Any] = {"kernels": table}
    for dtype in ("fp32", "int8"):
        best = max((v for v in table.values() if v["dtype"] == dtype), key=lambda v: v["best_gmacs"])
        out[f"{dtype}_gmacs"] = best["best_gmacs"]
        out[f"{dtype}_gmacs_median"] = max(v["median_gmacs"] for v in table.values() if v["dtype"] == dtype)
        out[f"{dtype}_kernel"] = _kernel_label(best["kind"], best["dims"], best["depth"])
    out["int8_over_fp32"] = out["int8_gmacs"] / out["fp32_gmacs"]
    return out


#: Which peak each variant is held against (ONNX Runtime runs fp32 on its own MLAS kernels).
VARIANT_DTYPE = {
    "imperative": "fp32",
    "hybridized": "fp32",
    "hybridized_static": "fp32",
    "fused": "fp32",
    "fused_pad": "fp32",
    "int8": "int8",
    "onnxruntime": "fp32",
}


#: Forwards of each variant back to back within a round (then the next variant). A variant's
#: first forward after another ran pays for its OpenMP threads waking up and its weights coming
#: back into cache: on ResNet-50 (40-400 ms forwards, 100 MB of weights that never stay cached)
#: that is noise, on a 4-8 ms network it is most of the time (Lite0 int8 measured 7.9 ms
#: interleaved one by one, 4.0 ms back to back). A burst of 5 measures what a busy function sees;
#: every forward is a sample, so the median is a warm one and the first ones still count.
BURST = {"lite0": 5, "demo": 5}


def worker_latency(model: str, batch: int, rounds: int, quick: bool = False) -> dict[str, Any]:
    """min / median forward ms of every variant at ``batch``, and this host's GEMM peak, interleaved round by round.

    Variants: ``imperative`` (the Gluon network, not hybridized); ``hybridized``, the baseline of
    the original design: a SymbolBlock of the fp32 package with a plain ``hybridize()``;
    ``hybridized_static``: the same graph with ``static_alloc=True, static_shape=True``, unfused;
    ``fused``: the oneDNN-fused package as the inference function runs it; ``int8``: the
    calibrated int8 package, likewise. ONNX Runtime (the same fp32 weights) runs in a process of
    its own right after (``worker_onnxruntime``): sharing this one, it ran 1.4× slower than alone.
    Every round times each variant once, then each peak kernel (fp32 and int8) once, so drift of
    this shared machine hits all of them alike.

    The speed ratios use the medians: what a typical request sees, and steady under the odd
    interrupted sample, whereas the min of 40 samples is the single luckiest one. Fraction of
    peak divides best by best (a variant's min ms against the kernel's best rate): both say
    what the code can do on this CPU; the JSON also has it median against median.
    """
    _quiet_mxnet()
    import mxnet as mx
    import numpy as np

    from functions.inference.core import load_model, to_ndarray
    from inferpipe.optimize import fused_conv_count, graph_macs, quantized_nodes, read_package, symbol_block

    base = CACHE_DIR / model
    manifest, files = read_package(base / "fp32")
    shape = (batch, 3, manifest.input.height, manifest.input.width)
    symbol = mx.sym.load_json(files["symbol"].decode("utf-8"))
    macs = graph_macs(symbol, shape)
    x_np = np.random.default_rng(0).normal(0, 1, shape).astype(np.float32)
    # Not mx.nd.array: at batch 8 (1.2M elements) it copies with an OpenMP team in this thread,
    # after which every forward of the process runs 20-35 % slower (to_ndarray's docstring).
    x = to_ndarray(x_np)
    imperative = _imperative_net(model)
    baseline = symbol_block(symbol, mx.nd.load_frombuffer(files["params"]))
    baseline.hybridize()  # the original design: nothing else
    loaded = {"fp32": load_model(manifest, files, fuse=False)}  # static_alloc + static_shape, unfused
    modes = ("fused", "int8", "fused_pad") if (base / "fused_pad").exists() else ("fused", "int8")
    loaded.update({mode: load_model(*read_package(base / mode), fuse=False) for mode in modes})
    runs: dict[str, Any] = {
        "imperative": lambda: imperative(x).wait_to_read(),
        "hybridized": lambda: baseline(x).wait_to_read(),
        "hybridized_static": lambda: loaded["fp32"].block(x).wait_to_read(),
        "fused": lambda: loaded["fused"].block(x).wait_to_read(),
        "int8": lambda: loaded["int8"].block(x).wait_to_read(),
    }
    if "fused_pad" in loaded:  # Lite0 with explicit F.pad before each stride-2 conv (the naive port)
        runs["fused_pad"] = lambda: loaded["fused_pad"].block(x).wait_to_read()
    errors: dict[str, str] = {}
    kernels = _peak_kernels(PEAK_KERNELS_QUICK if quick else PEAK_KERNELS)
    every = {**runs, **{k["name"]: k["run"] for k in kernels}}
    times: dict[str, list[float]] = {k: [] for k in every}
    for _ in range(3):  # warm-up (primitive creation for this batch size)
        for run in every.values():
            run()
    threads_before = _thread_count()
    burst = BURST.get(model, 1)
    for _ in range(rounds):
        for name, run in every.items():
            for _ in range(burst if name in runs else 1):
                t0 = time.perf_counter()
                run()
                times[name].append((time.perf_counter() - t0) * 1000.0)
    peak = _summarize_peak(kernels, times)
    variants = {}
    for name in runs:
        t = times[name]
        dtype = VARIANT_DTYPE[name]
        best, median = macs / min(t) / 1e6, macs / statistics.median(t) / 1e6  # GMAC/s (t in ms)
        variants[name] = {
            "min_ms": min(t),
            "median_ms": statistics.median(t),
            "rounds": len(t) // burst,
            "samples": len(t),
            "gmacs_best": best,
            "gmacs_median": median,
            "peak_dtype": dtype,
            "fraction_of_peak": best / peak[f"{dtype}_gmacs"],
            "fraction_of_peak_median": median / peak[f"{dtype}_gmacs_median"],
        }
    # Side by side: each round's ratio to the baseline, then their median (a cross-check of the
    # ratio of medians that ignores drift between rounds).
    paired = {
        name: statistics.median(h / v for h, v in zip(times["hybridized"], times[name], strict=True))
        for name in runs
        if name != "hybridized"
    }
    symbols = {mode: (base / mode / "model-symbol.json").read_text() for mode in modes}
    return {
        "batch": batch,
        "input_shape": list(shape),
        "macs": macs,
        "gmac_per_forward": macs / 1e9,
        "variants": variants,
        "peak": peak,
        "burst": burst,
        "paired_speedup_vs_hybridized": paired,
        "process_threads": {"before_timing": threads_before, "after_timing": _thread_count()},
        "graph": {
            "fused_conv_nodes": {mode: fused_conv_count(text) for mode, text in symbols.items()},
            "int8_quantized_nodes": len(quantized_nodes(symbols["int8"])),
            # what oneDNN fused and what runs outside it (pads, slices, pooling) in each graph
            "op_counts": {mode: _op_counts(text) for mode, text in symbols.items()},
        },
        "errors": errors,
    }


def worker_onnxruntime(model: str, batch: int, rounds: int) -> dict[str, Any]:
    """ONNX Runtime fp32 on the model's weights, alone in this process (no MXNet imported): min / median ms.

    Same rounds and burst as the MXNet latency worker. Its own process because side by side in
    the MXNet worker it lost: Lite0 8.2 ms there against 5.9 ms alone (the two runtimes' thread
    pools waking and sleeping in each other's way); the control gets its best case.
    """
    import numpy as np

    session = _ort_session(model, batch)
    shape = [batch if isinstance(d, str) else d for d in session.get_inputs()[0].shape]
    feed = {session.get_inputs()[0].name: np.random.default_rng(0).normal(0, 1, shape).astype(np.float32)}
    for _ in range(3):
        session.run(None, feed)
    times = []
    for _ in range(rounds * BURST.get(model, 1)):
        t0 = time.perf_counter()
        session.run(None, feed)
        times.append((time.perf_counter() - t0) * 1000.0)
    return {
        "min_ms": min(times),
        "median_ms": statistics.median(times),
        "samples": len(times),
        "process": "own (no MXNet)",
    }


def _merge_onnxruntime(latency: dict[str, Any], ort_result: dict[str, Any]) -> None:
    """Add the ONNX Runtime figures to a latency worker's variants, against that worker's fp32 peak."""
    peak = latency["peak"]
    best, median = latency["macs"] / ort_result["min_ms"] / 1e6, latency["macs"] / ort_result["median_ms"] / 1e6
    latency["variants"]["onnxruntime"] = {
        **ort_result,
        "rounds": ort_result["samples"] // latency["burst"],
        "gmacs_best": best,
        "gmacs_median": median,
        "peak_dtype": "fp32",
        "fraction_of_peak": best / peak["fp32_gmacs"],
        "fraction_of_peak_median": median / peak["fp32_gmacs_median"],
    }


def _op_counts(symbol_json: str) -> dict[str, int]:
    """How many nodes of each operator a graph has (parameters and inputs left out)."""
    from collections import Counter

    return dict(Counter(node["op"] for node in json.loads(symbol_json)["nodes"] if node["op"] != "null"))


def worker_cold(model: str, mode: str) -> dict[str, Any]:
    """A fresh process: import / fetch / load / first prediction / warm predictions, ms.

    ``load_model`` is the init (what the Lambda runs when it preloads its default model): parse,
    build, warm-up forwards through the predict path, and the garbage collector settled. Then
    ``predict()`` on a new input, timed: the first one, and 30 more (their median is "warm").
    Each call also records its CPU time ÷ wall time (2 threads busy ≈ 2; far less means this
    process was waiting for a core another process had: the machine is shared) and the load
    average, to tell a slow first call caused by this code from one caused by a neighbour.
    """
    t0 = time.perf_counter()
    from functions.inference import handler  # imports MXNet, as the Lambda init does

    t_import = (time.perf_counter() - t0) * 1000.0
    import numpy as np

    from functions.inference.core import load_model, predict
    from inferpipe.optimize import read_package

    pkg = CACHE_DIR / model / mode if model != "demo-trained" else ROOT / "build" / "demo-model"
    t0 = time.perf_counter()
    manifest, files = read_package(pkg)  # locally "fetch" is a disk read; on Lambda an S3 GET
    t_fetch = (time.perf_counter() - t0) * 1000.0
    loaded = load_model(manifest, files)
    x = np.random.default_rng(1).normal(0, 1, (1, 3, manifest.input.height, manifest.input.width)).astype(np.float32)
    load_before = os.getloadavg()[0]

    def timed() -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        predict(loaded, x, 1)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        return wall * 1000.0, cpu / wall

    first, first_cpu = timed()
    warm_calls = [timed() for _ in range(30)]
    warm = [w for w, _ in warm_calls]
    parts = dict(loaded.load_parts_ms)
    ordered = sorted(warm)
    return {
        "model": model,
        "mode": manifest.inference_mode,
        "module_import_ms": handler.service.import_ms,
        "import_ms": t_import,
        "fetch_ms": t_fetch,
        "load_ms": loaded.load_ms - parts["first_forward"],
        "init_first_forward_ms": parts["first_forward"],
        "init_gc_ms": parts.get("gc", 0.0),
        "first_prediction_ms": first,
        "warm_median_ms": statistics.median(warm),
        "second_prediction_ms": warm[0],
        "warm_p90_ms": ordered[int(0.9 * (len(ordered) - 1))],
        "warm_max_ms": ordered[-1],
        "first_cpu_per_wall": first_cpu,
        "warm_cpu_per_wall_median": statistics.median(c for _, c in warm_calls),
        "loadavg_1min": [load_before, os.getloadavg()[0]],
    }


def _test_images(quick: bool) -> dict[str, bytes]:
    import io

    import numpy as np

    from inferpipe.demo_model.shapes import render

    rng = np.random.default_rng(3)
    out: dict[str, bytes] = {}

    def encode(image: Any, **kw: Any) -> bytes:
        buf = io.BytesIO()
        image.save(buf, **kw)
        return buf.getvalue()

    small = render("circle", rng, size=(640, 480))
    out["jpeg_640x480"] = encode(small, format="JPEG", quality=90)
    big_size = (1000, 750) if quick else (4000, 3000)
    big = render("ring", rng, size=big_size)
    tag = "jpeg12mp" if not quick else "jpeg_quick"
    out[f"{tag}_baseline"] = encode(big, format="JPEG", quality=90)
    out[f"{tag}_progressive"] = encode(big, format="JPEG", quality=90, progressive=True)
    out["png_large"] = encode(big.resize((big_size[0] // 2, big_size[1] // 2)), format="PNG", compress_level=1)
    return out


def worker_preprocess(rounds: int, quick: bool) -> dict[str, Any]:
    """Decode + transform to the ResNet input: full decode vs the serving path (JPEG draft)."""
    import io

    from PIL import Image

    from functions.common.config import ImageLimits
    from functions.preprocess.core import preprocess, to_rgb
    from functions.preprocess.transform import to_tensor
    from inferpipe.packaging import IMAGENET_SPEC

    spec, limits = IMAGENET_SPEC, ImageLimits()

    def full(data: bytes) -> Any:
        image = Image.open(io.BytesIO(data))
        image.load()
        return to_tensor(to_rgb(image), spec)

    def draft(data: bytes) -> Any:
        return preprocess(data, limits, spec)

    results = {}
    for name, data in _test_images(quick).items():
        a, b = full(data), draft(data)[0]
        times: dict[str, list[float]] = {"full": [], "draft": []}
        for _ in range(rounds):
            for label, fn in (("full", full), ("draft", draft)):
                t0 = time.perf_counter()
                fn(data)
                times[label].append((time.perf_counter() - t0) * 1000.0)
        with Image.open(io.BytesIO(data)) as probe:
            size = probe.size
        results[name] = {
            "size": list(size),
            "bytes": len(data),
            "full_ms": statistics.median(times["full"]),
            "draft_ms": statistics.median(times["draft"]),
            "max_abs_diff_vs_full": float(abs(a - b).max()),
        }
    return results


def worker_pipeline(
    images: int, burst: int, quick: bool, model: str = "demo", lambda_mode: str = "isolated", trigger: str = "direct"
) -> dict[str, Any]:
    """Per-image time through the local stack (a trickle: one upload at a time, each waited for)
    and the throughput and cost of a burst of uploads (a flood).

    ``trigger``: "direct" (one execution per upload) or "batched" (the buffer queue and pipe:
    batches of one at a trickle, full batches in a flood).

    ``lambda_mode``: "isolated" (the default stack: an execution environment per worker process)
    or "in-process" (handlers in threads of the stack's process, as before issue 11). Isolated
    runs also report each function's Init Duration and where an invocation's time goes.

    ``demo``: the int8 shapes model on 640×480 shape images; ``lite0``: the deployment default,
    the pretrained EfficientNet-Lite0 in the mode its import chose, on real photos (the held-out
    photos and augmented views, JPEG at their own sizes, 300-640 px).
    """
    _quiet_mxnet()
    from inferpipe.local.stack import LocalStack
    from inferpipe.models import publish

    model_dir, model_name, jpeg = _pipeline_model(model, quick)
    with LocalStack(default_model=model_name, lambda_mode=lambda_mode, trigger=trigger) as stack:
        published = publish(
            stack.client("s3"), stack.resources.buckets["models"], model_dir, name=model_name, alias="prod"
        )
        bench = _PipelineBench(stack)
        per_image = [bench.trickle_one(jpeg(i)) for i in range(images + 1)]  # the first is the cold one, apart
        warm_records = bench.new_records()
        burst_figures, t0 = bench.flood_phase([jpeg(i) for i in range(burst)], quick)
        lambda_figures = bench.lambda_figures(warm_records)
        burst_cost = None
        if lambda_mode == "isolated":  # the burst (a flood) at list prices, from its measured usage
            from inferpipe import cost

            stack.flush_logs()
            burst_cost = cost.price(cost.measure(stack, t0)).to_json()
    warm = per_image[1:]
    keys = (
        "upload_to_start_ms",
        "upload_to_result_ms",
        "execution_ms",
        "preprocess_ms",
        "inference_ms",
        "sinks_state_ms",
        "orchestration_ms",
    )
    return {
        "model": {
            "name": model_name,
            "dir": str(model_dir.relative_to(ROOT)),
            "version": published.version,
            "inference_mode": published.inference_mode,
        },
        "first": per_image[0],
        "median": {k: statistics.median(r[k] for r in warm) for k in keys},
        "images": len(warm),
        "burst": burst_figures,
        "lambda_mode": lambda_mode,
        "trigger": trigger,
        "functions": lambda_figures,
        "burst_cost": burst_cost,
    }


def _pipeline_model(model: str, quick: bool) -> tuple[Path, str, Any]:
    """The package ``worker_pipeline`` publishes, its name, and the JPEG body of upload i."""
    import io

    import numpy as np

    from functions.common.manifest import MANIFEST_FILE

    if model == LITE0:
        from inferpipe.demo import MODEL_NAME, default_model_package
        from inferpipe.pretrained.photos import augmented, demo_photos

        model_dir, model_name = ROOT / "build" / "models" / MODEL_NAME, MODEL_NAME
        default_model_package(model_dir)
        views = [image for _, image in augmented(demo_photos(), 30, seed=77)]

        def image_for(i: int) -> Any:
            return views[i % len(views)]
    else:
        from inferpipe.demo_model.shapes import CLASSES, render

        model_dir, model_name = ROOT / "build" / "demo-model", "demo"
        if quick or not (model_dir / MANIFEST_FILE).exists():
            model_dir = CACHE_DIR / "demo" / "int8"
        rng = np.random.default_rng(11)

        def image_for(i: int) -> Any:
            return render(CLASSES[i % len(CLASSES)], rng, size=(640, 480))

    def jpeg(i: int) -> bytes:
        buf = io.BytesIO()
        image_for(i).save(buf, format="JPEG", quality=90)
        return buf.getvalue()

    return model_dir, model_name, jpeg


class _PipelineBench:
    """``worker_pipeline``'s measurements on one running local stack: a trickle, then a flood."""

    def __init__(self, stack: Any) -> None:
        self.stack = stack
        self.s3, self.sfn = stack.client("s3"), stack.client("stepfunctions")
        self.bucket = stack.resources.buckets["input"]
        self.objects_of: dict[str, int] = {}
        # Every invocation record, by request id: the bridge keeps only its last 1,000, fewer than
        # a direct-trigger run makes, so each phase takes what is new since the one before.
        self.seen: dict[str, Any] = {}
        self.trickled = 0

    def executions(self) -> dict[str, dict[str, Any]]:
        from functions.common.batch import named_objects

        found = {}
        for page in self.sfn.get_paginator("list_executions").paginate(stateMachineArn=self.stack.state_machine_arn):
            for e in page["executions"]:
                found[e["executionArn"]] = e
                if e["executionArn"] not in self.objects_of:
                    described = self.sfn.describe_execution(executionArn=e["executionArn"])
                    self.objects_of[e["executionArn"]] = len(named_objects(json.loads(described["input"])))
        return found

    def wait(self, count: int, before: set[str], timeout: float = 300.0) -> list[dict[str, Any]]:
        """The new executions, once they hold ``count`` objects and have all ended."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            new = [e for arn, e in self.executions().items() if arn not in before]
            if sum(self.objects_of[e["executionArn"]] for e in new) >= count and all(
                e["status"] != "RUNNING" for e in new
            ):
                return new
            time.sleep(0.5)  # the times come from the executions' own dates; polling faster only loads the emulator
        raise TimeoutError(f"{count} objects not finished after {timeout} s")

    def new_records(self) -> list[Any]:
        fresh = [r for r in self.stack.invocations() if r.request_id not in self.seen]
        self.seen.update((r.request_id, r) for r in fresh)
        return fresh

    def trickle_one(self, body: bytes) -> dict[str, Any]:
        """Upload one image, wait for its execution; where its time went."""
        import uuid

        if self.trickled == 1:  # after the cold one: the warm invocations are counted from here
            self.new_records()
        self.trickled += 1
        before = set(self.executions())
        t_upload = time.time()
        self.s3.put_object(Bucket=self.bucket, Key=f"bench/{uuid.uuid4().hex}.jpg", Body=body)
        (summary,) = self.wait(1, before)
        described = self.sfn.describe_execution(executionArn=summary["executionArn"])
        events = self.sfn.get_execution_history(executionArn=summary["executionArn"], maxResults=1000)["events"]
        spans, inference = _state_spans(events)
        start, stop = described["startDate"].timestamp(), described["stopDate"].timestamp()
        row = {
            "upload_to_start_ms": (start - t_upload) * 1000.0,
            "upload_to_result_ms": (stop - t_upload) * 1000.0,
            "execution_ms": (stop - start) * 1000.0,
            "preprocess_ms": spans.get("Preprocess", 0.0),
            "inference_ms": spans.get("Inference", 0.0),
            "sinks_state_ms": spans.get("FanOut", 0.0),
            "inference_parts_ms": inference.get("timings_ms", {}),
            "objects": json.loads(described["output"])["objects"],
        }
        row["orchestration_ms"] = (
            row["execution_ms"] - row["preprocess_ms"] - row["inference_ms"] - row["sinks_state_ms"]
        )
        return row

    def flood(self, prefix: str, bodies: list[bytes]) -> float:
        _run_uploaders(self.stack.endpoint_url, self.stack.resources.region, self.bucket, prefix, bodies)
        return time.time()

    def flood_phase(self, bodies: list[bytes], quick: bool) -> tuple[dict[str, Any], float]:
        """The measured flood's figures, and when it started.

        A flood: many writers at once (UPLOADERS threads, bodies encoded beforehand), as fast as the
        emulator accepts them. Unmeasured floods of the same size first start the execution
        environments a flood keeps busy, until one flood starts none (at most WARM_FLOODS): their
        cold starts, billed since 2025-08, are a one-off of a sustained flood, not a cost per image,
        and the measured flood runs on them warm. One half-size flood was not enough: two full
        batches at once then met one inference environment, and the second one's 11 s cold start
        was billed to the measured flood ($1.25 per million of its $16.10).
        """
        burst = len(bodies)
        warm_floods = 0
        while not quick and warm_floods < WARM_FLOODS:
            warm_floods += 1
            before = set(self.executions())
            self.flood(f"warm{warm_floods}", bodies)
            self.wait(burst, before, timeout=600.0)
            if not any(r.init_ms is not None for r in self.new_records()):
                break
        before = set(self.executions())
        t0 = time.time()
        upload_seconds = self.flood("burst", bodies) - t0
        done = self.wait(burst, before, timeout=600.0)
        last = max(self.sfn.describe_execution(executionArn=e["executionArn"])["stopDate"].timestamp() for e in done)
        figures = {
            "uploads": burst,
            "succeeded": sum(self.objects_of[e["executionArn"]] for e in done if e["status"] == "SUCCEEDED"),
            "seconds": last - t0,
            "images_per_second": burst / (last - t0),
            "executions": len(done),
            "batch_sizes": sorted((self.objects_of[e["executionArn"]] for e in done), reverse=True),
            "unsuccessful": dict(self._unsuccessful(done).most_common(5)),
            "uploaders": UPLOADERS,
            "uploads_per_second": burst / upload_seconds,
            "warm_floods": warm_floods,
            "cold_starts": sum(1 for r in self.new_records() if r.init_ms is not None),
        }
        return figures, t0

    def _unsuccessful(self, done: list[dict[str, Any]]) -> Counter[str]:
        """Why the executions that did not succeed did not: status, error and the start of the cause, counted."""
        unsuccessful: Counter[str] = Counter()
        for e in done:
            if e["status"] != "SUCCEEDED":
                described = self.sfn.describe_execution(executionArn=e["executionArn"])
                unsuccessful[
                    f"{e['status']} {described.get('error', '')}: {str(described.get('cause', ''))[:160]}"
                ] += 1
        return unsuccessful

    def lambda_figures(self, warm_records: list[Any]) -> dict[str, dict[str, Any]]:
        """Per function: the warm invocations' median, every Init Duration seen, the peak memory."""
        records = list(self.seen.values())
        names = {spec.name: key for key, spec in self.stack.resources.functions.items()}
        return {
            key: {
                # the bridge's whole call: the Runtime API hand-over, the handler, the REPORT
                "invocation_ms_median": statistics.median(
                    r.seconds * 1000 for r in warm_records if names.get(r.function_name) == key
                ),
                "init_ms": sorted(
                    round(r.init_ms, 1) for r in records if names.get(r.function_name) == key and r.init_ms is not None
                ),
                "max_memory_mb": max(
                    (r.max_memory_mb or 0 for r in records if names.get(r.function_name) == key), default=0
                ),
            }
            for key in self.stack.resources.functions
        }


def _state_spans(events: list[dict[str, Any]]) -> tuple[dict[str, float], dict[str, Any]]:
    """Milliseconds from each state's entry to its exit, and the Inference state's ``inference`` output."""
    spans: dict[str, float] = {}
    entered: dict[str, Any] = {}
    inference: dict[str, Any] = {}
    for e in events:
        if e["type"] == "TaskStateExited" and e["stateExitedEventDetails"]["name"] == "Inference":
            inference = json.loads(e["stateExitedEventDetails"]["output"])["inference"]
        if e["type"].endswith("StateEntered"):
            entered[e["stateEnteredEventDetails"]["name"]] = e["timestamp"]
        elif e["type"].endswith("StateExited"):
            name = e["stateExitedEventDetails"]["name"]
            if name in entered:
                spans[name] = (e["timestamp"] - entered[name]).total_seconds() * 1000.0
    return spans, inference


def _upload_all(endpoint_url: str, region: str, bucket: str, prefix: str, bodies: list[bytes]) -> None:
    """Upload ``bodies`` as ``prefix/NNNN.jpg`` from UPLOADERS threads (run in a process of its own)."""
    import boto3
    from botocore.config import Config

    from inferpipe.local.stack import DUMMY_CREDENTIALS

    s3 = boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=region,
        config=Config(max_pool_connections=UPLOADERS),
        aws_access_key_id=DUMMY_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=DUMMY_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        aws_session_token=DUMMY_CREDENTIALS["AWS_SESSION_TOKEN"],
    )
    with ThreadPoolExecutor(UPLOADERS) as uploaders:
        list(
            uploaders.map(
                lambda i: s3.put_object(Bucket=bucket, Key=f"{prefix}/{i:04d}.jpg", Body=bodies[i]), range(len(bodies))
            )
        )


def _run_uploaders(endpoint_url: str, region: str, bucket: str, prefix: str, bodies: list[bytes]) -> None:
    """The writers of a flood are other machines: their client work must not share the stack's process."""
    import multiprocessing

    process = multiprocessing.get_context("spawn").Process(
        target=_upload_all, args=(endpoint_url, region, bucket, prefix, bodies)
    )
    process.start()
    process.join()
    if process.exitcode != 0:
        raise RuntimeError(f"the flood's uploader process exited with {process.exitcode}")


# ============================================================================ parent


def _run_worker(args: list[str], timeout: float = 900.0) -> Any:
    started = time.monotonic()
    try:
        return _run_worker_once(args, timeout)
    finally:
        print(f"  {' '.join(args)}: {time.monotonic() - started:.1f} s", file=sys.stderr)


def _run_worker_once(args: list[str], timeout: float) -> Any:
    env = dict(
        os.environ,
        OMP_NUM_THREADS=THREADS,
        MKL_NUM_THREADS=THREADS,
        OPENBLAS_NUM_THREADS=THREADS,
        PYTHONPATH=str(ROOT),
        MXNET_SUBGRAPH_VERBOSE="0",
    )
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run", "--worker", *args],
        check=False,  # no BENCH-RESULT line is the failure, reported below with the exit status and stderr
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    for line in proc.stdout.splitlines():
        if line.startswith("BENCH-RESULT "):
            return json.loads(line[len("BENCH-RESULT ") :])
    raise RuntimeError(f"bench worker {args} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _have_onnx() -> bool:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def _peak_summary(latency: dict[str, Any], main: str) -> dict[str, Any]:
    """The peak the headline ratios use (``main``'s worker) and every worker's, with the derived cross-check."""
    chosen = latency[main]["peak"]
    per_worker = {
        key: {k: value["peak"][k] for k in ("fp32_gmacs", "int8_gmacs", "fp32_kernel", "int8_kernel", "int8_over_fp32")}
        for key, value in latency.items()
    }
    return {
        "worker": main,
        "source": f"measured in the {main} latency worker, one sample of each kernel per round between the variants",
        "fp32_gmacs": chosen["fp32_gmacs"],
        "fp32_kernel": chosen["fp32_kernel"],
        "int8_gmacs": chosen["int8_gmacs"],
        "int8_kernel": chosen["int8_kernel"],
        "int8_over_fp32": chosen["int8_over_fp32"],
        "kernels": chosen["kernels"],
        "per_worker": per_worker,
        "int8_gmacs_derived_cross_check": 4 * chosen["fp32_gmacs"],
        "int8_derivation": (
            "cross-check only: 4 × the measured fp32 peak, since AVX-512 VNNI vpdpbusd does 64 uint8×int8 MACs "
            "per 512-bit instruction against 16 fp32 FMAs"
        ),
    }


def _cold_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Fresh-process cold starts: the median process's parts, every process's ratio, and their median."""
    ratios = [c["first_prediction_ms"] / c["warm_median_ms"] for c in runs]
    ordered = sorted(range(len(runs)), key=lambda i: ratios[i])
    middle = runs[ordered[len(runs) // 2]]
    return {
        **middle,
        "processes": len(runs),
        "first_vs_warm": statistics.median(ratios),
        "first_vs_warm_per_process": ratios,
        "per_process": [
            {
                k: c[k]
                for k in (
                    "first_prediction_ms",
                    "second_prediction_ms",
                    "warm_median_ms",
                    "warm_max_ms",
                    "first_cpu_per_wall",
                    "warm_cpu_per_wall_median",
                    "init_first_forward_ms",
                    "init_gc_ms",
                    "loadavg_1min",
                )
            }
            for c in runs
        ],
        "shown": "parts of the process with the median first_vs_warm; first_vs_warm is the median over all processes",
    }


def _sanity(results: dict[str, Any]) -> list[str]:
    """Figures that cannot be right (a fraction of peak above 1 means the peak is too low)."""
    warnings = []
    for key, value in results["latency"].items():
        for name, v in value["variants"].items():
            if v["fraction_of_peak"] > 1.0:
                warnings.append(
                    f"{key} {name}: {v['fraction_of_peak']:.2f} of the {v['peak_dtype']} peak (> 1: the measured peak is too low)"
                )
        if key.startswith("resnet50_v1") and abs(value["gmac_per_forward"] / value["batch"] - RESNET50_GMAC) > 0.01:
            warnings.append(
                f"{key}: {value['gmac_per_forward'] / value['batch']:.3f} GMAC per image counted, expected {RESNET50_GMAC}"
            )
        if value["peak"]["int8_over_fp32"] < 1.5:
            warnings.append(f"{key}: int8 peak only {value['peak']['int8_over_fp32']:.2f}× the fp32 peak (no VNNI?)")
    return warnings


#: What each headline figure should reach (results.json "targets").
BENCH_TARGETS = {
    "resnet50.int8_vs_hybridized_b1": ">= 4",
    "resnet50.int8_fraction_of_peak_b1": ">= 0.70",
    "resnet50.fused_vs_hybridized_b1": ">= 1.2",
    "preprocess.jpeg12mp_draft_speedup": ">= 3",
    "cold.first_vs_warm": "<= 1.5",
    "pipeline.isolated_vs_in_process_per_image": "<= 1.5",
    "lite0.best_vs_onnxruntime_b1": ">= 1.0",
    "lite0.int8_top1_agreement": ">= 0.95 (if int8 is the default)",
    "cost.flood_usd_per_million_images": "<= 15",
    "cost.flood_orchestration_share": "<= 0.25",
    "pipeline.trickle_added_latency_ms": "<= 1500",
    "pipeline.burst_images_per_s": ">= 31 (10 x 3.1)",
    "resnet50.int8_b8_vs_b1_per_image": "<= 0.8",
}
#: How the figures were measured (results.json "notes").
BENCH_NOTES = {
    "ratios": "median forward ms of the slower variant / the faster one, same process, variants interleaved round "
    "by round; latency.<model>_b<n>.paired_speedup_vs_hybridized has the median of per-round ratios",
    "fraction_of_peak": "a variant's GMAC/s at its min ms (MACs from the fp32 graph: conv + fully connected) / the "
    "best GMAC/s of the same dtype's GEMM kernels timed in the same worker process, interleaved; "
    "fp32 variants (ONNX Runtime included) against the fp32 peak, int8 against the int8 peak",
    "cold.first_vs_warm": "per fresh process: first predict() after load_model (init done) / median of the next 30 "
    "warm predict() calls, same input path; the ratio is the median over the processes "
    "(cold.<model>_<mode>.first_vs_warm_per_process has each one): a single first call per "
    "process is at the mercy of one preemption on this shared 2-core VM",
    "setup": "inputs reach MXNet through functions.inference.core.to_ndarray (mx.nd.array of >= 200k elements would "
    "start an OpenMP team in the main thread and slow every later forward 20-35 %); ONNX Runtime's threads "
    "do not spin between runs (they took a core from the next variant); process_threads is recorded per worker",
}


def run(quick: bool, out: Path, chart: Path, onnx: bool) -> dict[str, Any]:
    if quick:
        os.environ["INFERPIPE_BENCH_CACHE"] = str(ROOT / "build" / "bench-quick")
    models = ["demo"] if quick else ["resnet50_v1", LITE0, "demo"]
    batches = [1] if quick else [1, 8]
    rounds = 5 if quick else 40
    onnx = onnx and _have_onnx()
    results: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpu": _cpu_name(),
            "cores": os.cpu_count(),
            "omp_num_threads": int(THREADS),
            "python": platform.python_version(),
            "loadavg_1min_start": os.getloadavg()[0],
        },
        "quick": quick,
        "prepare": {},
        "latency": {},
        "cold": {},
        "ratios": {},
    }
    _measure_inference(results, models, batches, rounds, onnx=onnx, quick=quick)
    results["peak"] = _peak_summary(results["latency"], f"{models[0]}_b1")
    _measure_cold(results, quick)
    print("preprocess…", file=sys.stderr)
    results["preprocess"] = _run_worker(["preprocess", str(3 if quick else 15), "1" if quick else "0"])
    _measure_pipelines(results, quick)
    _inference_ratios(results, models, batches, quick)
    _pipeline_ratios(results["ratios"], results)
    _sagemaker_comparison(results)
    results["warnings"] = _sanity(results)
    results["targets"] = dict(BENCH_TARGETS)
    results["notes"] = dict(BENCH_NOTES)
    results["machine"]["loadavg_1min_end"] = os.getloadavg()[0]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    _chart(results, chart)
    print(table(results))
    return results


def _measure_inference(
    results: dict[str, Any], models: list[str], batches: list[int], rounds: int, *, onnx: bool, quick: bool
) -> None:
    """The packages of each model, then each model's forward latency by batch size (ONNX Runtime beside)."""
    for model in models:
        print(f"preparing {model} packages…", file=sys.stderr)
        results["prepare"][model] = _run_worker(["prepare", model, str(8 if quick else 32)])
    for model in models:
        for batch in batches:
            print(f"latency {model} batch {batch}…", file=sys.stderr)
            latency = results["latency"][f"{model}_b{batch}"] = _run_worker(
                ["latency", model, str(batch), str(rounds), "1" if quick else "0"]
            )
            if onnx:
                try:
                    _merge_onnxruntime(latency, _run_worker(["onnxruntime", model, str(batch), str(rounds)]))
                except (RuntimeError, subprocess.TimeoutExpired) as exc:  # the control is optional
                    latency["errors"]["onnxruntime"] = str(exc)[-300:]


def _measure_cold(results: dict[str, Any], quick: bool) -> None:
    """Cold starts: the first prediction of fresh processes against their warm ones."""
    cold_targets = (
        [("demo", "int8")]
        if quick
        else [("resnet50_v1", "int8"), ("resnet50_v1", "fp32"), (LITE0, "int8"), (LITE0, "fused"), ("demo", "int8")]
    )
    repeats = COLD_PROCESSES_QUICK if quick else COLD_PROCESSES
    for model, mode in cold_targets:
        print(f"cold start {model} {mode}…", file=sys.stderr)
        results["cold"][f"{model}_{mode}"] = _cold_summary([_run_worker(["cold", model, mode]) for _ in range(repeats)])


def _measure_pipelines(results: dict[str, Any], quick: bool) -> None:
    """The local stack end to end: per-image times and a flood, by Lambda mode and trigger."""
    for key, mode, trigger in (
        ("pipeline", "isolated", "direct"),
        ("pipeline_batched", "isolated", "batched"),
        ("pipeline_in_process", "in-process", "direct"),
    ):
        print(f"local pipeline, {mode} Lambda, {trigger} trigger…", file=sys.stderr)
        uploads = str(3 if quick else (300 if trigger == "batched" else 100))
        try:
            results[key] = _run_worker(
                ["pipeline", str(1 if quick else 20), uploads, "1" if quick else "0", "demo", mode, trigger],
                timeout=1800,
            )
        except (RuntimeError, subprocess.TimeoutExpired) as exc:  # the inference figures above stand on their own
            results[key] = {"error": str(exc)[-1500:]}
    if not quick:
        print("local pipeline, real model…", file=sys.stderr)
        try:
            results["pipeline_lite0"] = _run_worker(
                ["pipeline", "20", "300", "0", LITE0, "isolated", "batched"], timeout=1800
            )
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            results["pipeline_lite0"] = {"error": str(exc)[-1500:]}


def _inference_ratios(results: dict[str, Any], models: list[str], batches: list[int], quick: bool) -> None:
    """Ratios of the inference variants, preprocessing and cold starts (each > 1 means faster,
    except cold.first_vs_warm: lower is better)."""
    r = results["ratios"]
    main_model = models[0]
    prefix = "resnet50" if main_model == "resnet50_v1" else main_model
    for batch in batches:
        v = results["latency"][f"{main_model}_b{batch}"]["variants"]
        for fast, slow in (
            ("fused", "hybridized"),
            ("fused", "hybridized_static"),
            ("int8", "hybridized"),
            ("int8", "hybridized_static"),
            ("int8", "fused"),
            ("int8", "onnxruntime"),
        ):
            if fast in v and slow in v and (batch == 1 or slow == "hybridized"):
                r[f"{prefix}.{fast}_vs_{slow}_b{batch}"] = v[slow]["median_ms"] / v[fast]["median_ms"]
        for variant in ("hybridized", "hybridized_static", "fused", "int8", "onnxruntime"):
            if variant in v and (batch == 1 or variant == "int8"):
                r[f"{prefix}.{variant}_fraction_of_peak_b{batch}"] = v[variant]["fraction_of_peak"]
    if LITE0 in models:
        _lite0_ratios(results, batches)
    pre = results["preprocess"]
    big = "jpeg12mp" if not quick else "jpeg_quick"
    r[f"preprocess.{big}_draft_speedup"] = pre[f"{big}_baseline"]["full_ms"] / pre[f"{big}_baseline"]["draft_ms"]
    r[f"preprocess.{big}_progressive_draft_speedup"] = (
        pre[f"{big}_progressive"]["full_ms"] / pre[f"{big}_progressive"]["draft_ms"]
    )
    cold_key = next(iter(results["cold"]))  # resnet50_v1_int8 (demo_int8 in the quick run)
    r["cold.first_vs_warm"] = results["cold"][cold_key]["first_vs_warm"]
    if not quick and "resnet50_v1_b8" in results["latency"]:
        v1, v8 = results["latency"]["resnet50_v1_b1"]["variants"], results["latency"]["resnet50_v1_b8"]["variants"]
        if "int8" in v1 and "int8" in v8:
            r["resnet50.int8_b8_vs_b1_per_image"] = (v8["int8"]["median_ms"] / 8) / v1["int8"]["median_ms"]


def _pipeline_ratios(r: dict[str, Any], results: dict[str, Any]) -> None:
    """Ratios of the pipeline runs: isolated against in-process, direct against batched, and their cost."""
    isolated, in_process = results.get("pipeline", {}), results.get("pipeline_in_process", {})
    if "median" in isolated and "median" in in_process:  # same model, same images, one run
        r["pipeline.isolated_vs_in_process_per_image"] = (
            isolated["median"]["execution_ms"] / in_process["median"]["execution_ms"]
        )
        r["pipeline.in_process_vs_isolated_burst"] = (
            in_process["burst"]["images_per_second"] / isolated["burst"]["images_per_second"]
        )
    if (isolated.get("burst_cost") or {}).get("usd_per_million_images"):  # the direct trigger, one image an execution
        r["cost.direct_usd_per_million_images"] = isolated["burst_cost"]["usd_per_million_images"]
        r["cost.direct_orchestration_share"] = isolated["burst_cost"]["orchestration_share"]
    batched = results.get("pipeline_batched", {})
    if (batched.get("burst_cost") or {}).get("usd_per_million_images"):  # the micro-batched trigger under a flood
        r["cost.flood_usd_per_million_images"] = batched["burst_cost"]["usd_per_million_images"]
        r["cost.flood_orchestration_share"] = batched["burst_cost"]["orchestration_share"]
        r["cost.direct_vs_flood"] = (
            r.get("cost.direct_usd_per_million_images", 0.0) / r["cost.flood_usd_per_million_images"]
        )
    if "median" in batched and "median" in isolated:  # a trickle: batches of one, each waited for the window
        r["pipeline.trickle_added_latency_ms"] = (
            batched["median"]["upload_to_result_ms"] - isolated["median"]["upload_to_result_ms"]
        )
        r["pipeline.burst_images_per_s"] = batched["burst"]["images_per_second"]
        r["pipeline.batched_vs_direct_burst"] = (
            batched["burst"]["images_per_second"] / isolated["burst"]["images_per_second"]
        )


def _sagemaker_comparison(results: dict[str, Any]) -> None:
    """The flood's cost beside SageMaker Asynchronous Inference doing the same forward passes on one
    busy ml.m5.xlarge, sized from the Lite0 int8 batch-8 time measured in this run (per image)."""
    from inferpipe import cost

    r = results["ratios"]
    lite = results["latency"].get(f"{LITE0}_b8", {}).get("variants", {})
    if "int8" not in lite or "cost.flood_usd_per_million_images" not in r:
        return
    estimate = cost.sagemaker_async(lite["int8"]["median_ms"] / 8)
    results["sagemaker_async"] = estimate
    r["cost.sagemaker_async_usd_per_million_images"] = estimate["usd_per_million_images"]
    r["cost.flood_vs_sagemaker_async"] = r["cost.flood_usd_per_million_images"] / estimate["usd_per_million_images"]


def reprice(path: Path) -> dict[str, Any]:
    """Recompute the derived cost comparison of a finished run's results (``--reprice FILE``)."""
    results = json.loads(path.read_text())
    _sagemaker_comparison(results)
    path.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    return results


def _lite0_ratios(results: dict[str, Any], batches: list[int]) -> None:
    """The Lite0 ratios: modes vs the hybridized baseline, the best MXNet mode vs ONNX Runtime, int8 agreement."""
    from inferpipe.pretrained import MIN_AGREEMENT

    r = results["ratios"]
    prepared = results["prepare"][LITE0]
    for batch in batches:
        v = results["latency"][f"{LITE0}_b{batch}"]["variants"]
        for fast, slow in (
            ("fused", "hybridized"),
            ("int8", "hybridized"),
            ("int8", "fused"),
            ("fused", "fused_pad"),
            ("fused", "onnxruntime"),
            ("int8", "onnxruntime"),
        ):
            if fast in v and slow in v:
                r[f"lite0.{fast}_vs_{slow}_b{batch}"] = v[slow]["median_ms"] / v[fast]["median_ms"]
        # best MXNet mode among those the import would serve (int8 only if its agreement holds)
        servable = ["fused"] + (["int8"] if prepared["int8"]["agreement_top1_vs_fp32"] >= MIN_AGREEMENT else [])
        best = min(servable, key=lambda m: v[m]["median_ms"])
        if "onnxruntime" in v:
            r[f"lite0.best_vs_onnxruntime_b{batch}"] = v["onnxruntime"]["median_ms"] / v[best]["median_ms"]
        results.setdefault("lite0_best_mode", {})[f"b{batch}"] = best
        for variant in ("hybridized", "fused", "int8", "onnxruntime"):
            if variant in v and batch == 1:
                r[f"lite0.{variant}_fraction_of_peak_b1"] = v[variant]["fraction_of_peak"]
    r["lite0.int8_top1_agreement"] = prepared["int8"]["agreement_top1_vs_fp32"]
    r["lite0.int8_centred_cosine"] = prepared["int8"]["centred_cosine_mean"]
    if f"{LITE0}_int8" in results["cold"]:
        r["lite0.cold_first_vs_warm_int8"] = results["cold"][f"{LITE0}_int8"]["first_vs_warm"]


def table(results: dict[str, Any]) -> str:
    lines = [
        f"inferpipe bench, {results['date']}, {results['machine']['cpu']}, {results['machine']['cores']} cores, OMP_NUM_THREADS={results['machine']['omp_num_threads']}",
        "",
    ]
    lines.append("| model, batch | " + " | ".join(VARIANTS) + " |")
    lines.append("|---|" + "---|" * len(VARIANTS))
    for key, value in results["latency"].items():
        cells = []
        for variant in VARIANTS:
            v = value["variants"].get(variant)
            cells.append(f"{v['min_ms']:.2f} / {v['median_ms']:.2f}" if v else "n/a")
        lines.append(f"| {key} (min / median ms) | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| fraction of peak (best GMAC/s ÷ same-dtype peak) | GMAC/forward | "
        + " | ".join(VARIANTS)
        + " | peak fp32 / int8 GMAC/s |",
        "|---|---|" + "---|" * len(VARIANTS) + "---|",
    ]
    for key, value in results["latency"].items():
        cells = [
            f"{value['variants'][v]['fraction_of_peak']:.2f}" if v in value["variants"] else "n/a" for v in VARIANTS
        ]
        lines.append(
            f"| {key} | {value['gmac_per_forward']:.3f} | "
            + " | ".join(cells)
            + f" | {value['peak']['fp32_gmacs']:.0f} / {value['peak']['int8_gmacs']:.0f} |"
        )
    peak = results["peak"]
    lines += [
        "",
        f"peak (oneDNN GEMM kernels timed inside each latency worker, interleaved with the variants; headline from "
        f"{peak['worker']}): fp32 {peak['fp32_gmacs']:.0f} GMAC/s ({peak['fp32_kernel']}), "
        f"int8 {peak['int8_gmacs']:.0f} GMAC/s ({peak['int8_kernel']}), int8/fp32 {peak['int8_over_fp32']:.2f} "
        f"(derived 4 × fp32 would be {peak['int8_gmacs_derived_cross_check']:.0f})",
        "",
    ]
    lines.append(
        "| cold start (ms), median process | import | fetch | load | init first forward | first prediction | warm | first ÷ warm, each process → median |"
    )
    lines.append("|---|---|---|---|---|---|---|---|")
    for key, c in results["cold"].items():
        each = ", ".join(f"{x:.2f}" for x in c["first_vs_warm_per_process"])
        lines.append(
            f"| {key} | {c['import_ms']:.0f} | {c['fetch_ms']:.1f} | {c['load_ms']:.1f} | {c['init_first_forward_ms']:.1f} | "
            f"{c['first_prediction_ms']:.2f} | {c['warm_median_ms']:.2f} | {each} → {c['first_vs_warm']:.2f} |"
        )
    lines += ["", "| preprocess to 224×224 (ms) | size | full decode | serving path (draft) |", "|---|---|---|---|"]
    for key, p in results["preprocess"].items():
        lines.append(f"| {key} | {p['size'][0]}×{p['size'][1]} | {p['full_ms']:.1f} | {p['draft_ms']:.1f} |")
    for key in ("pipeline", "pipeline_batched", "pipeline_in_process", "pipeline_lite0"):
        pipe = results.get(key)
        if pipe is None:
            continue
        if "error" in pipe:
            lines += ["", f"local {key}: FAILED: " + pipe["error"].strip().splitlines()[-1][:300], ""]
        else:
            lines += _pipeline_lines(pipe)
    if LITE0 in results["prepare"]:
        p = results["prepare"][LITE0]
        lines.append(
            f"lite0 vs fp32 on {p['int8']['agreement_images']} held-out photo views: "
            + ", ".join(
                f"{m} top-1 agreement {p[m]['agreement_top1_vs_fp32']:.3f}, centred cosine {p[m]['centred_cosine_mean']:.4f} (min {p[m]['centred_cosine_min']:.4f})"
                for m in ("fused", "int8")
            )
            + "; package MB "
            + ", ".join(f"{m} {b / 1e6:.1f}" for m, b in p["size_bytes"].items())
        )
        ops = results["latency"][f"{LITE0}_b1"]["graph"]["op_counts"]
        lines += [
            "lite0 graph ops: "
            + "; ".join(f"{m}: " + ", ".join(f"{op} {n}" for op, n in sorted(c.items())) for m, c in ops.items()),
            "",
        ]
    lines += ["| ratio | value | target |", "|---|---|---|"]
    for key, value in sorted(results["ratios"].items()):
        lines.append(f"| {key} | {value:.2f} | {results['targets'].get(key, '')} |")
    for warning in results.get("warnings", []):
        lines.append(f"WARNING: {warning}")
    return "\n".join(lines)


def _pipeline_lines(pipe: dict[str, Any]) -> list[str]:
    m, burst = pipe["median"], pipe["burst"]
    mode = pipe.get("lambda_mode", "in-process")
    lines = [
        "",
        f"local pipeline, {mode} Lambda, {pipe.get('trigger', 'direct')} trigger ({pipe['model']['inference_mode']} "
        f"{pipe['model'].get('name', 'demo')} model, median of {pipe['images']} images, ms): "
        f"upload→start {m['upload_to_start_ms']:.0f}, execution {m['execution_ms']:.0f} = preprocess {m['preprocess_ms']:.1f} + inference {m['inference_ms']:.1f} "
        f"+ sinks {m['sinks_state_ms']:.0f} + orchestration {m['orchestration_ms']:.0f}; upload→result {m['upload_to_result_ms']:.0f}",
        f"burst: {burst['uploads']} uploads in {burst['seconds']:.1f} s = {burst['images_per_second']:.1f} images/s "
        f"({burst['succeeded']} succeeded, {burst.get('executions', '?')} executions)",
    ]
    lines += [f"  not succeeded ({count}): {why}" for why, count in (burst.get("unsuccessful") or {}).items()]
    if pipe.get("burst_cost"):
        c = pipe["burst_cost"]
        lines.append(
            f"the burst at us-east-1 list prices (inferpipe cost): ${c['usd_per_million_images']:,.2f} per million images, "
            f"Step Functions {c['orchestration_share']:.0%}; "
            + ", ".join(
                f"{k} ${v * 1e6 / c['images']:,.2f}" for k, v in sorted(c["by_service"].items(), key=lambda kv: -kv[1])
            )
            + " per million"
        )
    if mode == "isolated":
        lines.append(
            "functions (median invocation ms; Init Duration ms of each cold start; peak MB): "
            + "; ".join(
                f"{key} {f['invocation_ms_median']:.0f}, init {', '.join(f'{x:.0f}' for x in f['init_ms']) or '-'}, {f['max_memory_mb']} MB"
                for key, f in pipe["functions"].items()
            )
        )
    lines.append("")
    return lines


def _chart(results: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install '.[bench]'): no chart", file=sys.stderr)
        return
    keys = list(results["latency"])
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.8), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        variants = [v for v in VARIANTS if v in results["latency"][key]["variants"]]
        values = [results["latency"][key]["variants"][v]["median_ms"] for v in variants]
        bars = ax.bar(
            variants, values, color=["#999", "#4477aa", "#88aadd", "#66ccee", "#228833", "#ccbb44"][: len(variants)]
        )
        ax.bar_label(bars, fmt="%.1f", fontsize=8)
        ax.set_title(key.replace("_b", ", batch "), fontsize=10)
        ax.set_ylabel("median forward ms")
        ax.tick_params(axis="x", rotation=35, labelsize=8)
    fig.suptitle(
        f"inferpipe forward latency, {results['date'][:10]}, {results['machine']['cpu']}, {THREADS} threads", fontsize=9
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--worker"]:
        kind, rest = argv[1], argv[2:]
        if kind == "prepare":
            _emit(worker_prepare(rest[0], int(rest[1])))
        elif kind == "latency":
            _emit(worker_latency(rest[0], int(rest[1]), int(rest[2]), rest[3] == "1"))
        elif kind == "onnxruntime":
            _emit(worker_onnxruntime(rest[0], int(rest[1]), int(rest[2])))
        elif kind == "cold":
            _emit(worker_cold(rest[0], rest[1]))
        elif kind == "preprocess":
            _emit(worker_preprocess(int(rest[0]), rest[1] == "1"))
        elif kind == "pipeline":
            _emit(
                worker_pipeline(
                    int(rest[0]),
                    int(rest[1]),
                    rest[2] == "1",
                    rest[3] if len(rest) > 3 else "demo",
                    rest[4] if len(rest) > 4 else "isolated",
                    rest[5] if len(rest) > 5 else "direct",
                )
            )
        return 0
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="tiny settings (demo model only, few rounds): the smoke test"
    )
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results.json")
    parser.add_argument("--chart", type=Path, default=BENCH_DIR / "chart.png")
    parser.add_argument("--no-onnx", action="store_true", help="skip the ONNX Runtime control")
    parser.add_argument(
        "--reprice",
        type=Path,
        default=None,
        metavar="FILE",
        help="only recompute the SageMaker comparison of a finished run's results file",
    )
    args = parser.parse_args(argv)
    if args.reprice is not None:
        ratios = reprice(args.reprice)["ratios"]
        print(json.dumps({k: v for k, v in ratios.items() if k.startswith("cost.")}, indent=2))
        return 0
    run(args.quick, args.out, args.chart, onnx=not args.no_onnx)
    return 0


if __name__ == "__main__":
    sys.exit(main())
