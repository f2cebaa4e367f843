"""Optimized model packages: oneDNN-fused fp32 and calibrated INT8, made from an fp32 package.

Tooling, not in the Lambda image. The output is an ordinary package folder (same four files)
whose manifest says ``inference_mode`` ``fused`` or ``int8``; it is published as its own version
(the content hash covers the mode and the new graph). Every optimized package is checked before
it is written: the graph must hold oneDNN fused convolutions (``_sg_mkldnn_conv``: zero means the
pass silently did nothing, e.g. an unknown backend name or a missing ``data`` shape), and it is
reloaded through the serving path (``functions.inference.core.load_model``) to measure its top-1
agreement with the fp32 package, which goes into the manifest's metrics.

Example::

    manifest = optimize_package(Path("build/demo-model"), Path("build/demo-int8"), "int8",
                                calibration=Path("calib-images/"))
    manifest.metrics["agreement_top1_vs_fp32"], manifest.metrics["fused_nodes"]   # 1.0, 12
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import mxnet as mx
import numpy as np
from mxnet import gluon

from functions.common.config import ImageLimits
from functions.common.errors import InvalidRequestError, ModelIntegrityError
from functions.common.manifest import (
    INFERENCE_MODES,
    LABELS_FILE,
    MANIFEST_FILE,
    PACKAGE_FILES,
    PARAMS_FILE,
    SYMBOL_FILE,
    FileEntry,
    InputSpec,
    Manifest,
    content_version,
    sha256_bytes,
)
from functions.inference.core import FUSION_BACKEND, INPUT_NAME, LoadedModel, load_model, to_ndarray

#: The op oneDNN fusion (and INT8 quantization, which fuses first) turns conv(+bn)(+relu)(+add) into.
FUSED_CONV_OP = "_sg_mkldnn_conv"
#: Image files read from a calibration folder.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
#: Calibration batches (the quantizer binds a Module of this batch size to collect min/max).
CALIBRATION_BATCH = 8


# ---------------------------------------------------------------------------- graph helpers


def _graph_nodes(symbol: mx.sym.Symbol | str | bytes | Mapping[str, Any]) -> list[dict[str, Any]]:
    """The nodes of a graph given as a Symbol, JSON text or parsed JSON."""
    if isinstance(symbol, mx.sym.Symbol):
        graph = json.loads(symbol.tojson())
    elif isinstance(symbol, (str, bytes)):
        graph = json.loads(symbol)
    else:
        graph = symbol
    return list(graph.get("nodes", []))


def fused_conv_count(symbol: mx.sym.Symbol | str | Mapping[str, Any]) -> int:
    """How many ``_sg_mkldnn_conv`` nodes a graph (Symbol, JSON text or parsed JSON) holds."""
    return sum(1 for node in _graph_nodes(symbol) if node.get("op") == FUSED_CONV_OP)


def graph_macs(symbol: mx.sym.Symbol, input_shape: Sequence[int]) -> int:
    """Multiply-accumulates of one forward pass of an fp32 graph on a ``data`` input of ``input_shape``.

    Counts Convolution (output elements × input channels per group × kernel area) and
    FullyConnected (output elements × input features), the usual convention; pooling, BatchNorm,
    activations and additions are not counted. ResNet-50 v1 at 1×3×224×224: 3 857 973 248.
    """
    internals = symbol.get_internals()
    arg_shapes, out_shapes, _ = internals.infer_shape(**{INPUT_NAME: tuple(input_shape)})
    if arg_shapes is None:
        raise InvalidRequestError(f"cannot infer the graph's shapes for a {list(input_shape)} input")
    outputs = dict(zip(internals.list_outputs(), out_shapes, strict=True))
    arguments = dict(zip(internals.list_arguments(), arg_shapes, strict=True))
    nodes = json.loads(symbol.tojson())["nodes"]
    total = 0
    for node in nodes:
        if node["op"] not in ("Convolution", "FullyConnected"):
            continue
        weight = arguments[nodes[node["inputs"][1][0]]["name"]]  # (out, in / groups, *kernel)
        total += int(np.prod(outputs[node["name"] + "_output"])) * int(np.prod(weight[1:]))
    return total


def quantized_nodes(symbol: mx.sym.Symbol | str | Mapping[str, Any]) -> list[str]:
    """Names of the oneDNN operators a graph runs in int8 (``_sg_mkldnn_*`` with ``quantized`` true)."""
    return [
        node["name"]
        for node in _graph_nodes(symbol)
        if node.get("op", "").startswith("_sg_mkldnn")
        and str(node.get("attrs", {}).get("quantized", "")).lower() == "true"
    ]


def _split_params(params: Mapping[str, mx.nd.NDArray]) -> tuple[dict[str, mx.nd.NDArray], dict[str, mx.nd.NDArray]]:
    args = {k.split(":", 1)[1]: v for k, v in params.items() if k.startswith("arg:")}
    aux = {k.split(":", 1)[1]: v for k, v in params.items() if k.startswith("aux:")}
    return args, aux


def fuse_symbol(
    symbol: mx.sym.Symbol, params: Mapping[str, mx.nd.NDArray], input_shape: Sequence[int]
) -> mx.sym.Symbol:
    """The oneDNN-fused graph of ``symbol``; ModelIntegrityError if nothing was fused.

    ``optimize_for`` needs the backend name ``MKLDNN`` (mxnet 1.9.1 ignores ``ONEDNN``) and a
    ``data`` entry among the args (without it, shape inference fails and it returns the graph
    unfused, without an error).
    """
    args, aux = _split_params(params)
    args[INPUT_NAME] = mx.nd.zeros(tuple(input_shape), dtype=np.float32)
    fused = symbol.optimize_for(FUSION_BACKEND, args=args, aux=aux, ctx=mx.cpu())
    count = fused_conv_count(fused)
    if count == 0:
        raise ModelIntegrityError(
            f"oneDNN fusion ({FUSION_BACKEND}) left the graph unchanged: 0 {FUSED_CONV_OP} nodes "
            "(is MXNet built with MKLDNN? does the graph have convolutions?)"
        )
    return fused


def symbol_block(symbol: mx.sym.Symbol, params: Mapping[str, mx.nd.NDArray]) -> gluon.SymbolBlock:
    """A SymbolBlock of ``symbol`` (input ``data``) with ``params`` (``arg:``/``aux:`` names) loaded; not hybridized."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        block = gluon.SymbolBlock(symbol, mx.sym.var(INPUT_NAME, dtype="float32"))
    block.collect_params().load_dict(
        dict(params), ctx=mx.cpu(), ignore_extra=True, cast_dtype=True, dtype_source="saved"
    )
    return block


def quantize_block(
    symbol: mx.sym.Symbol, params: Mapping[str, mx.nd.NDArray], calibration: np.ndarray, *, calib_mode: str = "naive"
) -> gluon.SymbolBlock:
    """The INT8 network (a SymbolBlock), calibrated on ``calibration`` (N×3×H×W float32, N ≥ 1).

    Uses ``mxnet.contrib.quantization.quantize_net_v2`` (oneDNN: fuse, then quantize every
    fused conv / fc; ``quantized_dtype='auto'`` picks uint8 after ReLU, int8 elsewhere) with
    ``calib_mode='naive'`` (min/max of each layer's output over the calibration set): without
    calibration the requantization ranges are computed at run time and INT8 is no faster.
    """
    from mxnet.contrib.quantization import quantize_net_v2

    if calibration.ndim != 4 or len(calibration) == 0:
        raise InvalidRequestError("INT8 calibration needs at least one N×3×H×W image tensor")
    block = symbol_block(symbol, params)
    batch = min(CALIBRATION_BATCH, len(calibration))
    usable = len(calibration) - len(calibration) % batch  # NDArrayIter pads a last partial batch
    # to_ndarray: mx.nd.array would copy with an OpenMP team in this thread (see its docstring)
    data = mx.io.NDArrayIter(data={INPUT_NAME: to_ndarray(calibration[:usable])}, batch_size=batch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qnet = quantize_net_v2(
            block,
            quantized_dtype="auto",
            quantize_mode="full",
            calib_mode=calib_mode,
            calib_data=data,
            num_calib_examples=usable,
            ctx=mx.cpu(),
            logger=None,  # any logger makes MXNet set MXNET_QUANTIZATION_VERBOSE=1 process-wide: a C++ log line per layer
        )
    return qnet


# ---------------------------------------------------------------------------- calibration images


def image_paths(folder: Path) -> list[Path]:
    """The image files directly in ``folder``, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InvalidRequestError(f"calibration folder {folder} does not exist")
    paths = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise InvalidRequestError(f"calibration folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return paths


def load_images(folder: Path, spec: InputSpec, limit: int | None = None) -> np.ndarray:
    """Images of ``folder`` through the serving preprocess (decode + shared transform): N×3×H×W float32."""
    from functions.preprocess.core import preprocess

    paths = image_paths(folder)[:limit]
    limits = ImageLimits()
    return np.concatenate([preprocess(p.read_bytes(), limits, spec, name=str(p)) for p in paths])


# ---------------------------------------------------------------------------- packages


def read_package(package_dir: Path) -> tuple[Manifest, dict[str, bytes]]:
    """Manifest and file bytes of a package folder, checksums verified (no forward pass)."""
    from functions.common.manifest import verify_file

    package_dir = Path(package_dir)
    path = package_dir / MANIFEST_FILE
    if not path.is_file():
        raise ModelIntegrityError(f"{package_dir} has no {MANIFEST_FILE}: not a model package")
    manifest = Manifest.from_json(path.read_bytes())
    files = {}
    for role, entry in manifest.files.items():
        data = (package_dir / entry.path).read_bytes()
        verify_file(role, entry, data)
        files[role] = data
    return manifest, files


def write_package(
    out_dir: Path,
    base: Manifest,
    symbol_json: str,
    params: Mapping[str, mx.nd.NDArray],
    labels: bytes,
    mode: str,
    metrics: Mapping[str, Any],
) -> Manifest:
    """Write a package folder (files, then the manifest) for ``mode``; returns its manifest."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / SYMBOL_FILE).write_text(symbol_json, encoding="utf-8")
    mx.nd.save(str(out_dir / PARAMS_FILE), dict(params))
    (out_dir / LABELS_FILE).write_bytes(labels)
    files = {}
    for role, name in PACKAGE_FILES.items():
        data = (out_dir / name).read_bytes()
        files[role] = FileEntry(path=name, sha256=sha256_bytes(data), size=len(data))
    manifest = replace(
        base, files=files, inference_mode=mode, version=content_version(files, mode), metrics=dict(metrics)
    )
    (out_dir / MANIFEST_FILE).write_text(manifest.to_json(), encoding="utf-8")
    return manifest


def all_logits(model: LoadedModel, tensors: np.ndarray) -> np.ndarray:
    """The logits of each image, batch 1 through ``model.forward`` (the serving path): N×classes."""
    return np.concatenate([model.forward(tensors[i : i + 1]) for i in range(len(tensors))])


def centred_cosine(ours: np.ndarray, theirs: np.ndarray) -> np.ndarray:
    """Per row, the cosine of the two logit vectors after subtracting each one's mean.

    Softmax ignores a constant added to the logits, so the mean is removed first; 1.0 means the
    same probabilities up to a temperature. Rows: images.
    """
    a = ours.astype(np.float64) - ours.mean(axis=1, keepdims=True)
    b = theirs.astype(np.float64) - theirs.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.divide((a * b).sum(axis=1), norms, out=np.ones(len(a)), where=norms > 0)


def agreement(ours: np.ndarray, theirs: np.ndarray) -> dict[str, float]:
    """How closely logits ``ours`` follow ``theirs`` (N×classes each): top-1 and top-5 agreement, centred cosine."""
    top5_theirs = np.argsort(-theirs, axis=1)[:, :5]
    cosine = centred_cosine(ours, theirs)
    return {
        "agreement_top1_vs_fp32": round(float(np.mean(ours.argmax(1) == theirs.argmax(1))), 4),
        "agreement_top1_in_fp32_top5": round(
            float(np.mean([o in t for o, t in zip(ours.argmax(1), top5_theirs, strict=True)])), 4
        ),
        "centred_cosine_mean": round(float(cosine.mean()), 5),
        "centred_cosine_min": round(float(cosine.min()), 5),
    }


def optimize_package(
    source_dir: Path,
    out_dir: Path,
    mode: str,
    *,
    calibration: Path | np.ndarray | None = None,
    heldout: np.ndarray | None = None,
    heldout_labels: np.ndarray | None = None,
    max_calibration: int = 64,
) -> Manifest:
    """Write the ``mode`` version of the fp32 package ``source_dir`` into ``out_dir``; returns its manifest.

    ``fp32`` copies the package. ``fused`` writes the oneDNN-fused graph. ``int8`` needs
    ``calibration`` (a folder of images, or preprocessed tensors). The metrics record the fused
    node count and the top-1 agreement with fp32 on the held-out tensors when given (and the
    top-1 accuracy of both when ``heldout_labels`` are given), else on the calibration images.
    """
    if mode not in INFERENCE_MODES:
        raise InvalidRequestError(f"inference mode {mode!r} is not one of {INFERENCE_MODES}")
    base, files = read_package(source_dir)
    if base.inference_mode != "fp32":
        raise InvalidRequestError(f"{source_dir} is a {base.inference_mode} package; optimize an fp32 package")
    if mode == "fp32":
        if Path(out_dir).resolve() != Path(source_dir).resolve():
            shutil.copytree(source_dir, out_dir, dirs_exist_ok=True)
        return base
    started = time.perf_counter()
    symbol = mx.sym.load_json(files["symbol"].decode("utf-8"))
    params = mx.nd.load_frombuffer(files["params"])
    shape = (1, 3, base.input.height, base.input.width)

    calib: np.ndarray | None = None
    if isinstance(calibration, np.ndarray):
        calib = calibration[:max_calibration].astype(np.float32, copy=False)
    elif calibration is not None:
        calib = load_images(Path(calibration), base.input, max_calibration)

    metrics: dict[str, Any] = dict(base.metrics)
    metrics["optimized_from"] = base.version
    in_memory: gluon.SymbolBlock | None = None
    if mode == "fused":
        fused = fuse_symbol(symbol, params, shape)
        symbol_json, out_params = fused.tojson(), params
    else:
        if calib is None:
            raise InvalidRequestError(
                "int8 needs calibration images (--calibration DIR): uncalibrated INT8 is no faster than fp32"
            )
        in_memory = quantize_block(symbol, params, calib)
        in_memory.hybridize(static_alloc=True, static_shape=True)
        in_memory(mx.nd.zeros(shape))
        with tempfile.TemporaryDirectory() as tmp:
            in_memory.export(str(Path(tmp) / "model"), epoch=0)  # the format load_model reads back
            symbol_json = (Path(tmp) / SYMBOL_FILE).read_text(encoding="utf-8")
            out_params = mx.nd.load(str(Path(tmp) / PARAMS_FILE))
        metrics["calibration_images"] = len(calib)
        metrics["calib_mode"] = "naive"
    count = fused_conv_count(symbol_json)
    if count == 0:
        raise ModelIntegrityError(f"the {mode} graph has 0 {FUSED_CONV_OP} nodes: the optimization did nothing")
    metrics["fused_nodes"] = count
    metrics["optimize_seconds"] = round(time.perf_counter() - started, 2)
    manifest = write_package(out_dir, base, symbol_json, out_params, files["labels"], mode, metrics)

    # Reload through the serving path and compare with fp32 (and, for int8, the in-memory net).
    optimized = load_model(manifest, read_package(out_dir)[1])
    reference = load_model(base, files, fuse=False)
    if in_memory is not None and calib is not None:  # int8: calibrated on calib
        probe = calib[: min(4, len(calib))]
        expected = in_memory(mx.nd.array(probe)).asnumpy()
        got = np.concatenate([optimized.forward(probe[i : i + 1]) for i in range(len(probe))])
        if not np.allclose(expected, got, rtol=1e-3, atol=1e-3):
            raise ModelIntegrityError(
                f"the exported int8 package does not reproduce the in-memory quantized network "
                f"(max |diff| {float(np.abs(expected - got).max()):.4g})"
            )
    if heldout is not None and len(heldout):
        images, where = heldout, "heldout"
    elif calib is not None:
        images, where = calib, "calibration"
    else:
        images, where = np.random.default_rng(0).normal(0, 1, (16, *shape[1:])).astype(np.float32), "random"
    ours_logits, theirs_logits = all_logits(optimized, images), all_logits(reference, images)
    ours, theirs = ours_logits.argmax(1), theirs_logits.argmax(1)
    metrics.update(agreement(ours_logits, theirs_logits))
    metrics["agreement_set"] = where
    metrics["agreement_images"] = len(images)
    if heldout_labels is not None and where == "heldout":
        metrics["top1_heldout"] = round(float(np.mean(ours == heldout_labels)), 4)
        metrics["top1_heldout_fp32"] = round(float(np.mean(theirs == heldout_labels)), 4)
    return write_package(out_dir, base, symbol_json, out_params, files["labels"], mode, metrics)


def install_mode(
    dirs: Mapping[str, Path], manifests: Mapping[str, Manifest], chosen: str, decision: Mapping[str, Any], out_dir: Path
) -> Manifest:
    """Make ``out_dir`` the package of mode ``chosen`` (from ``dirs[chosen]``), ``decision`` merged into its metrics."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if Path(dirs[chosen]).resolve() != out_dir.resolve():
        (out_dir / MANIFEST_FILE).unlink(missing_ok=True)  # never an old manifest beside new files
        for name in PACKAGE_FILES.values():  # only the package's own files: --out may hold others
            shutil.copy2(Path(dirs[chosen]) / name, out_dir / name)
    manifest = replace(manifests[chosen], metrics={**manifests[chosen].metrics, **decision})
    (out_dir / MANIFEST_FILE).write_text(manifest.to_json(), encoding="utf-8")
    return manifest


def mode_selection(rule: str, chosen: str, candidates: Mapping[str, Any], heldout_images: int) -> dict[str, Any]:
    """The ``metrics.mode_selection`` record of a package: the rule, the choice, every candidate measured."""
    return {"rule": rule, "chosen": chosen, "candidates": dict(candidates), "heldout_images": int(heldout_images)}


def median_latency_ms(models: Mapping[str, LoadedModel], rounds: int = 30) -> dict[str, float]:
    """Median batch-1 forward time of each model, measured round by round (interleaved)."""
    times: dict[str, list[float]] = {name: [] for name in models}
    for model in models.values():  # warm-up
        model.forward(np.zeros(model.input_shape, np.float32))
    for _ in range(rounds):
        for name, model in models.items():
            x = np.zeros(model.input_shape, np.float32)
            t0 = time.perf_counter()
            model.forward(x)
            times[name].append((time.perf_counter() - t0) * 1000.0)
    return {name: float(np.median(values)) for name, values in times.items()}


def choose_mode(candidates: Mapping[str, Mapping[str, float]], tolerance_pp: float = 0.5) -> str:
    """The fastest mode (lowest ``median_ms``) whose ``top1`` is within ``tolerance_pp`` points of fp32's."""
    floor = candidates["fp32"]["top1"] - tolerance_pp / 100.0 - 1e-9
    eligible = [mode for mode, c in candidates.items() if c["top1"] >= floor]
    return min(eligible, key=lambda mode: candidates[mode]["median_ms"])


__all__ = [
    "FUSED_CONV_OP",
    "agreement",
    "centred_cosine",
    "choose_mode",
    "fuse_symbol",
    "fused_conv_count",
    "graph_macs",
    "install_mode",
    "load_images",
    "median_latency_ms",
    "mode_selection",
    "optimize_package",
    "quantize_block",
    "quantized_nodes",
    "symbol_block",
]
