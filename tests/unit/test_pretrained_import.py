"""``model import efficientnet_lite0 --pretrained``: the package, its optimized modes and their checks."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from functions.common.config import ImageLimits
from functions.common.manifest import Manifest
from functions.inference.core import load_model, predict
from functions.preprocess.core import preprocess
from inferpipe.optimize import agreement, centred_cosine
from inferpipe.packaging import load_package_dir
from inferpipe.pretrained import MIN_AGREEMENT
from inferpipe.pretrained.photos import CALIBRATION_PHOTOS, DEMO_PHOTOS, demo_photos


def test_the_default_package_is_the_fastest_mode_that_agrees_with_fp32(lite0_package: tuple[Path, Manifest]) -> None:
    # GIVEN the package `make demo` builds
    folder, manifest = lite0_package
    selection = manifest.metrics["mode_selection"]
    candidates = selection["candidates"]
    # THEN every mode was built and measured, and the one written is the fastest that agrees
    assert set(candidates) == {"fp32", "fused", "int8"}
    eligible = [m for m, c in candidates.items() if c["agreement_top1_vs_fp32"] >= MIN_AGREEMENT]
    assert selection["chosen"] == manifest.inference_mode == min(eligible, key=lambda m: candidates[m]["median_ms"])
    assert selection["heldout_images"] == 64
    # AND the manifest records what it was checked on, with the real preprocessing and labels
    assert manifest.architecture == "efficientnet_lite0" and manifest.num_classes == 1000
    assert manifest.input.mean == pytest.approx((127 / 255,) * 3) and manifest.input.std == pytest.approx(
        (128 / 255,) * 3
    )
    assert manifest.metrics["tensors_mapped"] == 247 and manifest.metrics["parameters"] == 4_694_024
    if manifest.inference_mode != "fp32":
        assert manifest.metrics["agreement_set"] == "heldout" and manifest.metrics["fused_nodes"] == 49
        assert manifest.metrics["centred_cosine_mean"] > 0.98
    load_package_dir(folder)  # checksums, labels, a forward pass: publishable as it is


def test_the_served_package_classifies_each_demo_photo_as_an_accepted_label(
    lite0_package: tuple[Path, Manifest],
) -> None:
    folder, manifest = lite0_package
    _, files = load_package_dir(folder)
    model = load_model(manifest, files)
    for name, photo in demo_photos().items():
        buffer = io.BytesIO()
        photo.image.save(buffer, format="JPEG", quality=92)  # as a user would upload it
        tensor = preprocess(buffer.getvalue(), ImageLimits(), manifest.input, name=f"{name}.jpg")
        top5 = predict(model, tensor, 5)
        assert top5[0]["label"] in photo.expected, (name, top5)


def test_calibration_and_heldout_photos_never_overlap() -> None:
    assert not set(DEMO_PHOTOS) & set(CALIBRATION_PHOTOS)


def test_agreement_and_centred_cosine_measure_what_they_say() -> None:
    rng = np.random.default_rng(0)
    reference = rng.normal(0, 1, (4, 10))
    shifted = reference + 5.0  # softmax does not see a constant: cosine 1
    assert centred_cosine(shifted, reference) == pytest.approx(np.ones(4))
    flipped = reference.copy()
    flipped[0] = -flipped[0]  # one image's logits reversed: its top-1 changes, cosine -1
    result = agreement(flipped, reference)
    assert result["agreement_top1_vs_fp32"] == 0.75
    assert result["centred_cosine_min"] == pytest.approx(-1.0)


def test_an_unknown_network_or_a_missing_pretrained_flag_is_a_clear_cli_error(capsys: Any) -> None:
    from inferpipe.cli import main

    assert main(["model", "import", "efficientnet_lite0"]) == 2
    assert "packaged with its ImageNet weights only: add --pretrained" in capsys.readouterr().err
