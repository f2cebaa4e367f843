"""Train the offline demo model: a small ResNet-10 v1 on synthetic shapes, exported as a model package.

Images go through ``functions.preprocess.transform.to_tensor``, the serving transform, so the
network sees in training exactly what it sees in the pipeline. About a minute on 2 CPU cores.

Example::

    python -m inferpipe.demo_model.train --out build/demo-model --seed 0
    manifest = build_demo_model(Path("build/demo-model"), seed=0)   # the same, from Python
"""

from __future__ import annotations

import argparse
import io
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon
from mxnet.gluon.model_zoo.vision import BasicBlockV1, ResNetV1
from PIL import Image

from functions.common.manifest import InputSpec, Manifest
from functions.preprocess.transform import to_tensor
from inferpipe.demo_model.shapes import CLASSES, render
from inferpipe.packaging import export_package

#: The demo model's input: 64×64 crops of images resized to a 64-pixel shorter side.
DEMO_SPEC = InputSpec(
    height=64, width=64, resize_shorter=64, interpolation="bilinear", mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)
)
ARCHITECTURE = "resnet10_v1"
_HELDOUT_SEED_OFFSET = 1_000_003  # the held-out set never shares a random stream with training


@dataclass(frozen=True)
class TrainConfig:
    """Training hyper-parameters; the defaults reach ≥ 95 % held-out top-1 in about a minute."""

    train_per_class: int = 500
    heldout_per_class: int = 100
    epochs: int = 8
    batch_size: int = 64
    learning_rate: float = 0.004
    channels: tuple[int, int, int, int, int] = (16, 16, 32, 64, 128)
    min_side: int = 48  # rendered images have random sizes in [min_side, max_side] per axis
    max_side: int = 160
    jpeg_fraction: float = 0.5  # share of images JPEG-compressed, as uploads usually are


def build_network(num_classes: int, channels: Sequence[int] = TrainConfig.channels, prefix: str = "demo_") -> ResNetV1:
    """ResNet-10 v1 (one BasicBlockV1 per stage) with few channels; initialise it yourself."""
    return ResNetV1(BasicBlockV1, [1, 1, 1, 1], list(channels), classes=num_classes, thumbnail=False, prefix=prefix)


def make_dataset(per_class: int, rng: np.random.Generator, config: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """``(tensors N×3×H×W float32, labels N int)``: rendered images through the serving transform."""
    tensors = np.empty((per_class * len(CLASSES), 3, DEMO_SPEC.height, DEMO_SPEC.width), dtype=np.float32)
    labels = np.empty(per_class * len(CLASSES), dtype=np.int64)
    i = 0
    for _ in range(per_class):
        for index, label in enumerate(CLASSES):
            width, height = (int(v) for v in rng.integers(config.min_side, config.max_side + 1, size=2))
            image = render(label, rng, size=(width, height))
            if rng.random() < config.jpeg_fraction:
                buffer = io.BytesIO()
                image.save(buffer, format="JPEG", quality=int(rng.integers(60, 96)))
                image = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
            tensors[i] = to_tensor(image, DEMO_SPEC)
            labels[i] = index
            i += 1
    return tensors, labels


def evaluate(net: gluon.HybridBlock, tensors: np.ndarray, labels: np.ndarray, batch_size: int = 256) -> float:
    """Top-1 accuracy of ``net`` on a dataset."""
    correct = 0
    for start in range(0, len(labels), batch_size):
        logits = net(mx.nd.array(tensors[start : start + batch_size])).asnumpy()
        correct += int((logits.argmax(axis=1) == labels[start : start + batch_size]).sum())
    return correct / len(labels)


def train(
    seed: int = 0, config: TrainConfig = TrainConfig(), log: bool = True
) -> tuple[gluon.HybridBlock, float, float]:
    """``(network, held-out top-1, training seconds)``; deterministic given ``seed``."""
    mx.random.seed(seed)
    np.random.seed(seed)
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    x_train, y_train = make_dataset(config.train_per_class, rng, config)
    x_held, y_held = make_dataset(config.heldout_per_class, np.random.default_rng(seed + _HELDOUT_SEED_OFFSET), config)
    data_seconds = time.perf_counter() - started

    net = build_network(len(CLASSES), config.channels)
    net.initialize(mx.init.Xavier(magnitude=2.0), ctx=mx.cpu())
    net.hybridize(static_alloc=True)
    steps_per_epoch = len(y_train) // config.batch_size
    schedule = mx.lr_scheduler.CosineScheduler(
        max_update=steps_per_epoch * config.epochs, base_lr=config.learning_rate, final_lr=config.learning_rate / 50
    )
    trainer = gluon.Trainer(
        net.collect_params(), "adam", {"learning_rate": config.learning_rate, "lr_scheduler": schedule}
    )
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    for epoch in range(config.epochs):
        order = rng.permutation(len(y_train))
        total = 0.0
        for step in range(steps_per_epoch):
            batch = order[step * config.batch_size : (step + 1) * config.batch_size]
            data, label = mx.nd.array(x_train[batch]), mx.nd.array(y_train[batch])
            with autograd.record():
                loss = loss_fn(net(data), label)
            loss.backward()
            trainer.step(config.batch_size)
            total += float(loss.mean().asscalar())
        if log:
            print(
                f"epoch {epoch + 1}/{config.epochs}: loss {total / steps_per_epoch:.4f} ({time.perf_counter() - started:.0f} s)",
                file=sys.stderr,
            )
    accuracy = evaluate(net, x_held, y_held)
    seconds = time.perf_counter() - started
    if log:
        print(f"data {data_seconds:.1f} s, total {seconds:.1f} s", file=sys.stderr)
    return net, accuracy, seconds


def select_mode(fp32_dir: Path, out_dir: Path, seed: int, config: TrainConfig, tolerance_pp: float = 0.5) -> Manifest:
    """Write into ``out_dir`` the fastest inference mode whose held-out top-1 is within ``tolerance_pp``
    points of fp32's, and record the candidates and the decision in its metrics.

    int8 calibrates on its own generated images (a stream of its own, neither training nor held-out).
    """
    import tempfile

    from functions.inference.core import load_model
    from inferpipe.optimize import (
        choose_mode,
        install_mode,
        median_latency_ms,
        mode_selection,
        optimize_package,
        read_package,
    )

    calibration, _ = make_dataset(8, np.random.default_rng(seed + 2 * _HELDOUT_SEED_OFFSET), config)
    x_held, y_held = make_dataset(config.heldout_per_class, np.random.default_rng(seed + _HELDOUT_SEED_OFFSET), config)
    with tempfile.TemporaryDirectory() as tmp:
        dirs = {"fp32": Path(fp32_dir), "fused": Path(tmp) / "fused", "int8": Path(tmp) / "int8"}
        manifests = {"fp32": read_package(fp32_dir)[0]}
        for mode in ("fused", "int8"):
            manifests[mode] = optimize_package(
                fp32_dir, dirs[mode], mode, calibration=calibration, heldout=x_held, heldout_labels=y_held
            )
        # fp32 is served hybridized, as the original design ran it (no fusion at load) for the comparison
        loaded = {
            mode: load_model(m, read_package(dirs[mode])[1], **({"fuse": False} if mode == "fp32" else {}))
            for mode, m in manifests.items()
        }
        latency = median_latency_ms(loaded, rounds=50)
        fp32_top1 = manifests["fused"].metrics["top1_heldout_fp32"]
        candidates = {
            mode: {
                "top1": fp32_top1 if mode == "fp32" else manifests[mode].metrics["top1_heldout"],
                "median_ms": round(latency[mode], 3),
            }
            for mode in manifests
        }
        chosen = choose_mode(candidates, tolerance_pp)
        decision = {
            "mode_selection": mode_selection(
                f"fastest batch-1 mode with held-out top-1 within {tolerance_pp} pp of fp32",
                chosen,
                candidates,
                len(y_held),
            ),
            "top1_heldout_fp32": fp32_top1,
        }
        return install_mode(dirs, manifests, chosen, decision, Path(out_dir))


def build_demo_model(
    out_dir: Path,
    seed: int = 0,
    config: TrainConfig = TrainConfig(),
    *,
    name: str = "demo",
    min_accuracy: float = 0.95,
    optimize: bool = True,
) -> Manifest:
    """Train the demo model and export it as a package folder; prints the held-out accuracy.

    With ``optimize`` (the default), the package written is the fastest inference mode (fp32,
    fused or int8) whose held-out top-1 is within 0.5 points of fp32's; the manifest's metrics
    hold the decision (``mode_selection``).

    Example::

        manifest = build_demo_model(Path("build/demo-model"), seed=0)
        manifest.metrics["top1_heldout"], manifest.inference_mode   # e.g. 0.99, 'int8'
    """
    net, accuracy, seconds = train(seed, config)
    manifest = export_package(
        net,
        list(CLASSES),
        DEMO_SPEC,
        Path(out_dir),
        name=name,
        architecture=ARCHITECTURE,
        source=f"inferpipe demo trainer (seed {seed})",
        metrics={"top1_heldout": round(accuracy, 4), "train_seconds": round(seconds, 1), "seed": seed},
    )
    print(
        f"demo model: held-out top-1 {accuracy:.2%} on {config.heldout_per_class * len(CLASSES)} images, trained in {seconds:.0f} s; version {manifest.version}"
    )
    if accuracy < min_accuracy:
        print(f"warning: held-out top-1 {accuracy:.2%} is below {min_accuracy:.0%}", file=sys.stderr)
    if optimize:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            fp32_dir = Path(tmp) / "fp32"
            shutil.copytree(out_dir, fp32_dir)
            manifest = select_mode(fp32_dir, Path(out_dir), seed, config)
        selection = manifest.metrics["mode_selection"]
        shown = ", ".join(
            f"{m} {c['median_ms']:.2f} ms top-1 {c['top1']:.2%}" for m, c in selection["candidates"].items()
        )
        print(f"inference mode: {selection['chosen']} ({shown}); version {manifest.version}")
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m inferpipe.demo_model.train", description="Train the offline demo model package."
    )
    parser.add_argument(
        "--out", type=Path, default=Path("build/demo-model"), help="package folder to write (default build/demo-model)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = parser.parse_args(argv)
    build_demo_model(args.out, seed=args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
