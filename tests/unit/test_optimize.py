"""Inference modes: fused and int8 packages made from an fp32 package, loaded by the inference function."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import boto3
import mxnet as mx
import numpy as np
import pytest
from moto import mock_aws

from functions.common.config import invocation_environment
from functions.common.errors import InvalidRequestError, ModelIntegrityError
from functions.common.manifest import MANIFEST_FILE, Manifest
from functions.inference import handler
from functions.inference.core import load_model, predict
from functions.inference.service import InferenceService
from inferpipe.demo_model.shapes import sample_images
from inferpipe.models import publish
from inferpipe.optimize import (
    choose_mode,
    fuse_symbol,
    fused_conv_count,
    graph_macs,
    load_images,
    optimize_package,
    quantize_block,
    quantized_nodes,
    read_package,
)
from inferpipe.packaging import export_package, load_package_dir
from tests.unit.test_inference import LABELS, SPEC, tiny_package

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """GIVEN an fp32 package, calibration images, and its fused and int8 packages."""
    root = tmp_path_factory.mktemp("modes")
    tiny_package(root / "fp32")
    calibration = root / "calibration"
    sample_images(calibration, n_per_class=2, seed=5, size=(48, 40))
    fused = optimize_package(root / "fp32", root / "fused", "fused", calibration=calibration)
    int8 = optimize_package(root / "fp32", root / "int8", "int8", calibration=calibration)
    return SimpleNamespace(
        root=root, calibration=calibration, fp32=read_package(root / "fp32")[0], fused=fused, int8=int8
    )


def test_fused_and_int8_packages_record_their_mode_fusion_and_agreement(packages: SimpleNamespace) -> None:
    for manifest, mode in ((packages.fused, "fused"), (packages.int8, "int8")):
        # THEN each is a valid package of its own mode and its own content-hash version
        loaded, _ = load_package_dir(packages.root / mode)
        assert loaded == manifest and manifest.inference_mode == mode
        assert manifest.version != packages.fp32.version and manifest.metrics["optimized_from"] == packages.fp32.version
        # AND fusion really happened, and the agreement with fp32 was measured
        assert (
            manifest.metrics["fused_nodes"]
            == fused_conv_count((packages.root / mode / "model-symbol.json").read_text())
            > 0
        )
        assert 0.0 <= manifest.metrics["agreement_top1_vs_fp32"] <= 1.0
        assert manifest.metrics["agreement_images"] == 16 and manifest.metrics["agreement_set"] == "calibration"
    assert packages.fused.metrics["agreement_top1_vs_fp32"] == 1.0  # fusion is exact up to rounding
    assert packages.int8.metrics["calibration_images"] == 16 and packages.int8.metrics["calib_mode"] == "naive"
    assert packages.fused.version != packages.int8.version
    assert fused_conv_count((packages.root / "fp32" / "model-symbol.json").read_text()) == 0


def test_fused_package_predicts_like_fp32(packages: SimpleNamespace) -> None:
    fp32 = load_model(*read_package(packages.root / "fp32"), fuse=False)
    fused = load_model(*read_package(packages.root / "fused"))
    assert fused.fused and not fp32.fused
    x = np.random.default_rng(3).normal(0, 1, (1, 3, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(fused.forward(x), fp32.forward(x), rtol=1e-3, atol=1e-4)


def test_int8_package_round_trips_through_files_in_a_fresh_process(packages: SimpleNamespace) -> None:
    # GIVEN the in-memory quantized network's output on an image (what optimize_package checked too)
    _manifest, files = read_package(packages.root / "fp32")
    calibration = load_images(packages.calibration, SPEC)
    qnet = quantize_block(
        mx.sym.load_json(files["symbol"].decode()), mx.nd.load_frombuffer(files["params"]), calibration
    )
    x = calibration[:1]
    expected = qnet(mx.nd.array(x)).asnumpy()
    # WHEN a fresh process loads the int8 package through the inference function (the quantized
    # oneDNN ops are registered by libmxnet; `import mxnet` itself imports mxnet.contrib.quantization)
    np.save(packages.root / "x.npy", x)
    script = (
        "import sys, json, numpy as np\n"
        "from functions.inference.core import load_model\n"
        "from inferpipe.optimize import read_package\n"
        f"m = load_model(*read_package({str(packages.root / 'int8')!r}))\n"
        f"out = m.forward(np.load({str(packages.root / 'x.npy')!r}))\n"
        "print(json.dumps({'out': out.tolist(), 'contrib': 'mxnet.contrib.quantization' in sys.modules, 'mode': m.manifest.inference_mode}))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], check=False, cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    answer = json.loads(proc.stdout.strip().splitlines()[-1])
    # THEN it predicts exactly what the in-memory quantized network does
    assert answer["mode"] == "int8" and answer["contrib"] is True
    np.testing.assert_allclose(np.array(answer["out"]), expected, rtol=1e-4, atol=1e-4)


def test_int8_without_calibration_and_optimizing_an_optimized_package_are_refused(
    packages: SimpleNamespace, tmp_path: Path
) -> None:
    with pytest.raises(InvalidRequestError, match="calibration"):
        optimize_package(packages.root / "fp32", tmp_path / "a", "int8")
    with pytest.raises(InvalidRequestError, match="fp32 package"):
        optimize_package(packages.root / "int8", tmp_path / "b", "fused")
    with pytest.raises(InvalidRequestError, match="not one of"):
        optimize_package(packages.root / "fp32", tmp_path / "c", "fp16")
    with pytest.raises(InvalidRequestError, match="no images"):
        optimize_package(packages.root / "fp32", tmp_path / "d", "int8", calibration=tmp_path)


def test_fusion_that_does_nothing_is_an_error(tmp_path: Path) -> None:
    # GIVEN a network without convolutions: the oneDNN pass has nothing to fuse
    net = mx.gluon.nn.HybridSequential()
    net.add(mx.gluon.nn.Flatten(), mx.gluon.nn.Dense(len(LABELS)))
    net.initialize()
    export_package(net, LABELS, SPEC, tmp_path / "dense", name="dense", architecture="mlp", source="test")
    with pytest.raises(ModelIntegrityError, match="0 _sg_mkldnn_conv"):
        optimize_package(tmp_path / "dense", tmp_path / "fused", "fused")
    # AND on a conv net, fusion needs "data" among the args it is given: we always pass it
    tiny_package(tmp_path / "conv")
    _, conv_files = read_package(tmp_path / "conv")
    fused = fuse_symbol(
        mx.sym.load_json(conv_files["symbol"].decode()), mx.nd.load_frombuffer(conv_files["params"]), (1, 3, 32, 32)
    )
    assert fused_conv_count(fused) > 0


def test_macs_are_counted_per_convolution_and_fully_connected_layer() -> None:
    # GIVEN a 3→4 channel 3×3 conv (padding 1, 8×8), a 4→6 grouped (2 groups) 1×1 conv with stride 2, then a dense 96→5
    net = mx.gluon.nn.HybridSequential()
    net.add(
        mx.gluon.nn.Conv2D(4, 3, padding=1, in_channels=3),
        mx.gluon.nn.Conv2D(6, 1, strides=2, groups=2, in_channels=4),
        mx.gluon.nn.Activation("relu"),
        mx.gluon.nn.Dense(5, in_units=96),
    )
    symbol = net(mx.sym.var("data"))
    # THEN each layer counts output elements × inputs per output, times the batch
    per_image = 4 * 8 * 8 * (3 * 3 * 3) + 6 * 4 * 4 * (4 // 2) + 5 * 96
    assert graph_macs(symbol, (1, 3, 8, 8)) == per_image
    assert graph_macs(symbol, (8, 3, 8, 8)) == 8 * per_image


def test_resnet50_v1_counts_the_usual_3_86_gmac() -> None:
    from mxnet.gluon.model_zoo.vision import get_model

    symbol = get_model("resnet50_v1", classes=1000)(mx.sym.var("data"))
    assert graph_macs(symbol, (1, 3, 224, 224)) == 3_857_973_248


def test_only_the_int8_package_runs_quantized_onednn_operators(packages: SimpleNamespace) -> None:
    symbols = {mode: (packages.root / mode / "model-symbol.json").read_text() for mode in ("fp32", "fused", "int8")}
    assert quantized_nodes(symbols["fp32"]) == [] and quantized_nodes(symbols["fused"]) == []
    # every fused convolution and the classifier run in int8
    assert len(quantized_nodes(symbols["int8"])) == fused_conv_count(symbols["int8"]) + 1


def test_the_fastest_mode_within_half_a_point_of_fp32_is_chosen() -> None:
    candidates = {
        "fp32": {"top1": 0.990, "median_ms": 3.0},
        "fused": {"top1": 0.990, "median_ms": 2.5},
        "int8": {"top1": 0.986, "median_ms": 1.0},
    }
    assert choose_mode(candidates) == "int8"
    candidates["int8"]["top1"] = 0.980  # 1 point worse: not eligible
    assert choose_mode(candidates) == "fused"
    candidates["fused"]["median_ms"] = 3.5
    assert choose_mode(candidates) == "fp32"


def test_each_mode_publishes_as_its_own_version(packages: SimpleNamespace, moto_env: None) -> None:
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="models")
        versions = {
            mode: publish(s3, "models", packages.root / mode, name="tiny") for mode in ("fp32", "fused", "int8")
        }
        assert len({m.version for m in versions.values()}) == 3
        assert {mode: m.inference_mode for mode, m in versions.items()} == {
            "fp32": "fp32",
            "fused": "fused",
            "int8": "int8",
        }
        stored = Manifest.from_json(
            s3.get_object(Bucket="models", Key=f"models/tiny/versions/{versions['int8'].version}/{MANIFEST_FILE}")[
                "Body"
            ].read()
        )
        assert stored.metrics["fused_nodes"] > 0


def test_default_model_preload_reports_the_cold_start_in_parts(
    packages: SimpleNamespace, monkeypatch: pytest.MonkeyPatch, moto_env: None
) -> None:
    monkeypatch.setattr(handler, "service", InferenceService(import_ms=handler.service.import_ms))
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="models-bucket")
        published = publish(s3, "models-bucket", packages.root / "int8", name="tiny", alias="prod")
        environment = {"MODEL_BUCKET": "models-bucket", "DEFAULT_MODEL": "tiny", "DEFAULT_MODEL_VERSION": "prod"}
        with invocation_environment({}):
            assert handler.service.preload_default_model() is None  # nothing configured: nothing preloaded
        with invocation_environment(environment):
            report = handler.service.preload_default_model()
            assert report is not None and set(report) >= {"import", "fetch", "load", "first_forward", "preloaded"}
            # import is this module's own import time: ~0 when an earlier test already imported MXNet
            assert report["import"] >= 0 and report["first_forward"] > 0
            # THEN the model is cached: the first request does not load it
            assert ("tiny", published.version) in handler.service.model_cache()
        with invocation_environment({**environment, "DEFAULT_MODEL": "missing"}):
            monkeypatch.setattr(handler, "service", InferenceService(import_ms=handler.service.import_ms))
            assert handler.service.preload_default_model() is None  # a failure is logged, never raised
    model = load_model(*read_package(packages.root / "int8"))
    assert predict(model, np.zeros((1, 3, 32, 32), np.float32), 1)[0]["label"] in LABELS
    assert set(model.load_parts_ms) == {"verify", "parse", "build", "first_forward", "gc"}
