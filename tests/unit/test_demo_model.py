"""The offline demo model: the synthetic shape generator and a short run of the trainer."""

from __future__ import annotations

from pathlib import Path

import mxnet as mx
import numpy as np
import pytest

from functions.common.manifest import MANIFEST_FILE, Manifest
from inferpipe.demo_model.shapes import CLASSES, render, sample_images
from inferpipe.demo_model.train import DEMO_SPEC, TrainConfig, build_demo_model, build_network, make_dataset
from inferpipe.packaging import load_package_dir


@pytest.mark.parametrize("size", [(1, 1), (7, 3), (64, 64), (320, 240), (97, 401)])
def test_every_class_renders_as_an_rgb_image_of_the_asked_size(size: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    for label in CLASSES:
        image = render(label, rng, size=size)
        assert image.mode == "RGB" and image.size == size


def test_eight_classes_and_an_unknown_one_is_refused() -> None:
    assert len(set(CLASSES)) == 8
    with pytest.raises(ValueError, match="unknown demo class 'star'"):
        render("star", np.random.default_rng(0))


def test_the_same_seed_renders_the_same_image() -> None:
    a = render("triangle", np.random.default_rng(42), size=(80, 60))
    b = render("triangle", np.random.default_rng(42), size=(80, 60))
    c = render("triangle", np.random.default_rng(43), size=(80, 60))
    assert a.tobytes() == b.tobytes() != c.tobytes()


def test_horizontal_stripes_change_down_the_image_and_vertical_stripes_across_it() -> None:
    rng = np.random.default_rng(3)
    for _ in range(5):
        horizontal = np.asarray(render("horizontal_stripes", rng, size=(128, 128)), dtype=np.float32).mean(axis=2)
        vertical = np.asarray(render("vertical_stripes", rng, size=(128, 128)), dtype=np.float32).mean(axis=2)
        # mean absolute difference between neighbouring rows vs neighbouring columns
        assert np.abs(np.diff(horizontal, axis=0)).mean() > np.abs(np.diff(horizontal, axis=1)).mean()
        assert np.abs(np.diff(vertical, axis=1)).mean() > np.abs(np.diff(vertical, axis=0)).mean()


def test_sample_images_are_named_after_their_class(tmp_path: Path) -> None:
    paths = sample_images(tmp_path, n_per_class=2, seed=1)
    assert len(paths) == 16
    assert {p.name for p in paths} >= {"circle-01.jpg", "circle-02.jpg", "checkerboard-02.jpg"}
    assert all(p.stat().st_size > 0 for p in paths)


def test_training_data_goes_through_the_serving_transform() -> None:
    config = TrainConfig(train_per_class=1)
    tensors, labels = make_dataset(1, np.random.default_rng(0), config)
    assert tensors.shape == (8, 3, DEMO_SPEC.height, DEMO_SPEC.width) and tensors.dtype == np.float32
    assert list(labels) == list(range(8))


def test_the_network_scores_every_class() -> None:
    net = build_network(len(CLASSES), prefix="t_")
    net.initialize()
    assert net(mx.nd.zeros((2, 3, 64, 64))).shape == (2, 8)


def test_a_short_training_run_exports_a_valid_package_with_its_metrics(tmp_path: Path) -> None:
    # GIVEN a training run far too short to be accurate (the real one is built once by the lead's fixture)
    config = TrainConfig(train_per_class=8, heldout_per_class=2, epochs=1, batch_size=16)
    manifest = build_demo_model(tmp_path, seed=3, config=config, min_accuracy=0.0)
    # THEN the folder is a package that validates, with its labels and training metrics recorded
    loaded, files = load_package_dir(tmp_path)
    assert loaded == Manifest.from_json((tmp_path / MANIFEST_FILE).read_text()) == manifest
    assert files["labels"].decode().splitlines() == list(CLASSES)
    assert {"top1_heldout", "train_seconds", "seed", "mode_selection", "top1_heldout_fp32"} <= set(
        manifest.metrics
    ) and manifest.metrics["seed"] == 3
    assert manifest.inference_mode == manifest.metrics["mode_selection"]["chosen"]
    assert manifest.input == DEMO_SPEC and manifest.architecture == "resnet10_v1"
