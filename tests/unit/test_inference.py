"""The inference function: load a package, predict, cache models, and the Lambda handler on moto S3."""

from __future__ import annotations

import gc
import io
import json
import os
import subprocess
import sys
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import boto3
import mxnet as mx
import numpy as np
import pytest
from moto import mock_aws
from mxnet.gluon.model_zoo.vision import BasicBlockV1, ResNetV1

from functions.common import aws
from functions.common.config import invocation_environment
from functions.common.errors import InvalidRequestError, ModelIntegrityError, ObjectNotFoundError
from functions.common.manifest import InputSpec, Manifest
from functions.inference import handler
from functions.inference.core import LoadedModel, ModelCache, load_model, predict, settle_garbage, softmax
from inferpipe.models import export_package, load_package_dir, publish

ROOT = Path(__file__).resolve().parents[2]
LABELS = ["circle", "square", "triangle"]
SPEC = InputSpec(height=32, width=32, resize_shorter=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
SHAPE = (1, 3, 32, 32)
CONTEXT = SimpleNamespace(
    function_name="inference", memory_limit_in_mb=2048, aws_request_id="req-1",
    invoked_function_arn="arn:aws:lambda:us-east-1:123456789012:function:inference",
)


def tiny_package(out_dir: Path, seed: int = 0) -> Manifest:
    """A 3-class ResNet-10 v1 with 4-16 channels at 32×32: a real package that loads in milliseconds."""
    mx.random.seed(seed)
    net = ResNetV1(BasicBlockV1, [1, 1, 1, 1], [4, 4, 8, 12, 16], classes=len(LABELS), thumbnail=True, prefix="tiny_")
    net.initialize(mx.init.Xavier(magnitude=3.0))
    return export_package(net, LABELS, SPEC, out_dir, name="tiny", architecture="resnet10_v1", source="unit test", metrics={})


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny")
    tiny_package(path)
    return path


@pytest.fixture(scope="module")
def model(package: Path) -> LoadedModel:
    return load_model(*load_package_dir(package))


def tensor(seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 1, SHAPE).astype(np.float32)


def direct_probabilities(package: Path, x: np.ndarray) -> np.ndarray:
    """Reference: plain MXNet on the exported files, no cache, no fusion."""
    net = mx.gluon.SymbolBlock.imports(str(package / "model-symbol.json"), ["data"], str(package / "model-0000.params"))
    return softmax(net(mx.nd.array(x)).asnumpy()[0])


# ---------------------------------------------------------------------------- core


def test_predict_returns_the_top_k_most_probable_classes_in_order(model: LoadedModel) -> None:
    top = predict(model, tensor(), top_k=2)
    assert len(top) == 2
    assert top[0]["probability"] >= top[1]["probability"]
    assert all(isinstance(p["probability"], float) and isinstance(p["index"], int) for p in top)
    assert all(p["label"] == LABELS[p["index"]] for p in top)


def test_probabilities_over_all_classes_sum_to_one_and_match_plain_mxnet(model: LoadedModel, package: Path) -> None:
    x = tensor(seed=5)
    top = predict(model, x, top_k=len(LABELS))
    assert sum(p["probability"] for p in top) == pytest.approx(1.0, abs=1e-6)
    reference = direct_probabilities(package, x)
    assert [p["index"] for p in top] == list(np.argsort(-reference, kind="stable"))
    assert [p["probability"] for p in top] == pytest.approx(sorted(reference, reverse=True), abs=1e-5)


def test_init_settles_the_garbage_collector_and_a_dropped_model_is_still_freed(package: Path) -> None:
    # GIVEN a process in which imports left objects no full collection has scanned
    gc.unfreeze()
    for _ in range(3):
        [[i] for i in range(20_000)]  # young garbage and survivors, as imports make
    # WHEN the init settles the collector (the inference handler does it at import)
    settle_garbage()
    # THEN what exists is exempt from later full collections, which scan only what came after
    assert gc.get_freeze_count() > 10_000 and gc.get_count()[1:] == (0, 0)
    assert len(gc.get_objects()) < gc.get_freeze_count() / 10
    try:
        # AND a model loaded afterwards pays its own pending collection at load, before warm-up
        model = load_model(*load_package_dir(package))
        assert model.load_parts_ms["gc"] > 0
        # AND is never frozen: once the cache drops it, the collector frees it (graph cycles)
        block = weakref.ref(model.block)
        del model
        gc.collect()
        assert block() is None
    finally:
        gc.unfreeze()


def test_inputs_reach_mxnet_without_an_openmp_team_in_the_calling_thread() -> None:
    # GIVEN a fresh process with MXNet's engine running (OMP_NUM_THREADS=2, as on the Lambda)
    script = (
        "import os, json, numpy as np, mxnet as mx\n"
        "from functions.inference.core import to_ndarray\n"
        "threads = lambda: len(os.listdir('/proc/self/task'))\n"
        "(mx.nd.ones((4,)) * 2).asnumpy()\n"
        "x = np.random.default_rng(0).normal(0, 1, (8, 3, 224, 224)).astype(np.float32)\n"
        "before = threads(); y = to_ndarray(x); y.wait_to_read(); after_ours = threads()\n"
        "same = bool((y[0:1].asnumpy() == x[0:1]).all()); writable = bool(x.flags.writeable)\n"
        "mx.nd.array(x).wait_to_read(); after_mx = threads()\n"
        "print(json.dumps([before, after_ours, after_mx, same, writable]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "2"},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    before, after_ours, after_mx, same, writable = json.loads(proc.stdout.strip().splitlines()[-1])
    # THEN a 1.2M-element input is copied without starting an OpenMP thread (mx.nd.array starts one)
    assert after_ours == before and after_mx > after_ours
    # AND the values are the caller's, whose array stays writable (the copy is ours)
    assert same and writable


def test_a_tensor_of_the_wrong_shape_names_expected_and_got(model: LoadedModel) -> None:
    with pytest.raises(InvalidRequestError, match=r"expects a tensor of shape \[1, 3, 32, 32\], got \[1, 3, 64, 64\]"):
        predict(model, np.zeros((1, 3, 64, 64), np.float32), top_k=1)


def test_a_float64_tensor_or_too_large_top_k_is_refused(model: LoadedModel) -> None:
    with pytest.raises(InvalidRequestError, match="float32"):
        predict(model, np.zeros(SHAPE, np.float64), top_k=1)
    with pytest.raises(InvalidRequestError, match="top_k=4 must be between 1 and the 3 classes"):
        predict(model, tensor(), top_k=4)


def test_files_that_do_not_match_the_manifest_are_not_loaded(package: Path) -> None:
    manifest, files = load_package_dir(package)
    with pytest.raises(ModelIntegrityError, match="labels file"):
        load_model(manifest, {**files, "labels": b"circle\nsquare\nstar\n"})


def test_the_second_get_is_a_cache_hit(model: LoadedModel) -> None:
    cache = ModelCache(budget_bytes=10 * 2**20)
    calls = []

    def load() -> LoadedModel:
        calls.append(1)
        return model

    first, hit1 = cache.get_or_load(("tiny", "v1"), load)
    second, hit2 = cache.get_or_load(("tiny", "v1"), load)
    assert (hit1, hit2) == (False, True)
    assert first is second and len(calls) == 1


def test_least_recently_used_model_is_evicted_past_the_budget(model: LoadedModel) -> None:
    # GIVEN room for two models, holding a and b, with a used last
    cache = ModelCache(budget_bytes=2 * model.size_bytes)
    cache.get_or_load(("m", "a"), lambda: model)
    cache.get_or_load(("m", "b"), lambda: model)
    cache.get(("m", "a"))
    # WHEN a third model is loaded
    cache.get_or_load(("m", "c"), lambda: model)
    # THEN b, least recently used, is gone and the next get of b loads it again
    assert cache.keys() == [("m", "a"), ("m", "c")]
    _, hit = cache.get_or_load(("m", "b"), lambda: model)
    assert hit is False


def test_a_model_larger_than_the_budget_is_still_served(model: LoadedModel) -> None:
    cache = ModelCache(budget_bytes=1)
    cache.get_or_load(("m", "a"), lambda: model)
    served, hit = cache.get_or_load(("m", "b"), lambda: model)
    assert served is model and hit is False and cache.keys() == [("m", "b")]


def test_concurrent_gets_of_a_missing_model_load_it_once(model: LoadedModel) -> None:
    cache = ModelCache(budget_bytes=10 * 2**20)
    calls = []
    gate = threading.Barrier(4)

    def load() -> LoadedModel:
        calls.append(1)
        return model

    def get() -> None:
        gate.wait()
        cache.get_or_load(("tiny", "v1"), load)

    threads = [threading.Thread(target=get) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1


# ---------------------------------------------------------------------------- handler on moto S3


@pytest.fixture
def stack(monkeypatch: pytest.MonkeyPatch, package: Path) -> Iterator[dict[str, Any]]:
    """GIVEN a model bucket with the tiny model published as 'prod', a work bucket, a fresh process."""
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setattr(aws, "_clients", {})  # clients made inside the mock
    monkeypatch.setattr(handler, "_cache", None)  # a cold Lambda
    monkeypatch.setattr(handler, "_stores", {})
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="models-bucket")
        s3.create_bucket(Bucket="work-bucket")
        published = publish(s3, "models-bucket", package, name="tiny", alias="prod")
        environment = {
            "MODEL_BUCKET": "models-bucket", "WORK_BUCKET": "work-bucket", "MODEL_CACHE_MB": "64",
            "DEFAULT_MODEL": "tiny", "DEFAULT_MODEL_VERSION": "prod",
        }
        with invocation_environment(environment):
            yield {"s3": s3, "version": published.version}


def store_tensor(s3: Any, array: np.ndarray, key: str = "tensors/abc.npy") -> dict[str, Any]:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    s3.put_object(Bucket="work-bucket", Key=key, Body=buffer.getvalue())
    return {"bucket": "work-bucket", "key": key, "shape": list(array.shape), "dtype": "float32"}


def job_event(version: str, tensor_ref: dict[str, Any], top_k: int = 2) -> dict[str, Any]:
    return {
        "job": {
            "source": {"bucket": "in-bucket", "key": "photos/cat.jpg", "version_id": "v1", "etag": '"e"', "size": 10},
            "model": {"name": "tiny", "version": version},
            "tensor": tensor_ref,
            "sinks": ["s3"],
            "top_k": top_k,
            "timings_ms": {"total": 12.0},
        },
        "execution_id": "arn:aws:states:us-east-1:123456789012:execution:pipeline:abc",
    }


def test_handler_classifies_the_stored_tensor_and_reuses_the_model(stack: dict[str, Any], model: LoadedModel) -> None:
    # GIVEN a preprocessed tensor in the work bucket
    x = tensor(seed=9)
    event = job_event(stack["version"], store_tensor(stack["s3"], x))
    # WHEN the function is invoked twice
    first = handler.lambda_handler(event, CONTEXT)
    second = handler.lambda_handler(event, CONTEXT)
    # THEN it returns the model's exact version and the same top-k as the model itself
    assert first["model"] == {"name": "tiny", "version": stack["version"], "architecture": "resnet10_v1", "inference_mode": "fp32"}
    expected = predict(model, x, top_k=2)
    assert [p["label"] for p in first["top_k"]] == [p["label"] for p in expected]
    assert [p["probability"] for p in first["top_k"]] == pytest.approx([p["probability"] for p in expected], abs=1e-6)
    assert second["top_k"] == first["top_k"]
    # AND only the first invocation loaded the model
    assert (first["cold_start"], second["cold_start"]) == (True, False)
    assert set(first["timings_ms"]) == {"fetch_tensor", "fetch_model", "load_model", "forward", "total"}
    assert first["timings_ms"]["load_model"] > 0 and second["timings_ms"]["load_model"] == 0


def test_warm_up_ping_loads_the_default_model(stack: dict[str, Any]) -> None:
    # WHEN a warm-up ping arrives, then a scheduled EventBridge event
    warmed = handler.lambda_handler({"warmup": True}, CONTEXT)
    scheduled = handler.lambda_handler({"detail-type": "Scheduled Event", "source": "aws.events", "detail": {}}, CONTEXT)
    # THEN the default alias is resolved and loaded once; a following job finds it loaded
    assert warmed["warmed"]["name"] == "tiny" and warmed["warmed"]["version"] == stack["version"]
    assert warmed["warmed"]["cold_start"] is True and scheduled["warmed"]["cold_start"] is False
    result = handler.lambda_handler(job_event(stack["version"], store_tensor(stack["s3"], tensor())), CONTEXT)
    assert result["cold_start"] is False


def test_a_missing_tensor_is_not_found(stack: dict[str, Any]) -> None:
    ref = {"bucket": "work-bucket", "key": "tensors/gone.npy", "shape": list(SHAPE), "dtype": "float32"}
    with pytest.raises(ObjectNotFoundError, match="s3://work-bucket/tensors/gone.npy"):
        handler.lambda_handler(job_event(stack["version"], ref), CONTEXT)


def test_a_tensor_of_another_size_than_the_model_is_an_invalid_request(stack: dict[str, Any]) -> None:
    ref = store_tensor(stack["s3"], np.zeros((1, 3, 64, 64), np.float32))
    with pytest.raises(InvalidRequestError, match=r"expects a tensor of shape \[1, 3, 32, 32\], got \[1, 3, 64, 64\]"):
        handler.lambda_handler(job_event(stack["version"], ref), CONTEXT)


def test_a_tensor_that_is_not_what_the_job_says_is_an_invalid_request(stack: dict[str, Any]) -> None:
    ref = store_tensor(stack["s3"], tensor())
    ref["shape"] = [1, 3, 64, 64]
    with pytest.raises(InvalidRequestError, match=r"holds float32 \[1, 3, 32, 32\], the job says float32 \[1, 3, 64, 64\]"):
        handler.lambda_handler(job_event(stack["version"], ref), CONTEXT)
