"""The inference function: load a package, predict, cache models, and the Lambda handler on moto S3."""

from __future__ import annotations

import gc
import io
import json
import os
import re
import subprocess
import sys
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import mxnet as mx
import numpy as np
import pytest
from moto import mock_aws
from mxnet.gluon.model_zoo.vision import BasicBlockV1, ResNetV1

from functions.common.config import invocation_environment
from functions.common.errors import InvalidRequestError, ModelIntegrityError, ObjectNotFoundError
from functions.common.manifest import InputSpec, Manifest
from functions.common.work import SCHEMA
from functions.inference import handler
from functions.inference.core import (
    FORWARD_BATCHES,
    LoadedModel,
    ModelCache,
    forward_chunks,
    load_model,
    predict,
    predict_batch,
    settle_garbage,
    softmax,
)
from functions.inference.service import InferenceService
from inferpipe.models import publish
from inferpipe.packaging import export_package, load_package_dir
from tests.conftest import FakeLambdaContext

ROOT = Path(__file__).resolve().parents[2]
LABELS = ["circle", "square", "triangle"]
SPEC = InputSpec(height=32, width=32, resize_shorter=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
SHAPE = (1, 3, 32, 32)
CONTEXT = FakeLambdaContext("inference", memory_limit_in_mb=2048)


def tiny_package(out_dir: Path, seed: int = 0) -> Manifest:
    """A 3-class ResNet-10 v1 with 4-16 channels at 32×32: a real package that loads in milliseconds."""
    mx.random.seed(seed)
    net = ResNetV1(BasicBlockV1, [1, 1, 1, 1], [4, 4, 8, 12, 16], classes=len(LABELS), thumbnail=True, prefix="tiny_")
    net.initialize(mx.init.Xavier(magnitude=3.0))
    return export_package(
        net, LABELS, SPEC, out_dir, name="tiny", architecture="resnet10_v1", source="unit test", metrics={}
    )


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
    proc = subprocess.run(
        [sys.executable, "-c", script],
        check=False,
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "2"},
        capture_output=True,
        text=True,
        timeout=120,
    )
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


# ---------------------------------------------------------------------------- batches


def test_forward_passes_run_at_the_three_batch_sizes_largest_first() -> None:
    assert FORWARD_BATCHES == (8, 4, 1)
    assert forward_chunks(13) == [(0, 8), (8, 4), (12, 1)]
    assert forward_chunks(1) == [(0, 1)] and forward_chunks(8) == [(0, 8)] and forward_chunks(0) == []
    assert forward_chunks(7) == [(0, 4), (4, 1), (5, 1), (6, 1)]
    for n in range(1, 101):
        chunks = forward_chunks(n)
        # every row exactly once, in order, only at the three sizes
        assert [start for start, _ in chunks] == [sum(size for _, size in chunks[:i]) for i in range(len(chunks))]
        assert sum(size for _, size in chunks) == n and {size for _, size in chunks} <= set(FORWARD_BATCHES)


def test_predict_batch_equals_predict_row_by_row(model: LoadedModel) -> None:
    # GIVEN 13 different inputs (forward passes of 8, 4 and 1) and a top_k for each
    rows = np.random.default_rng(3).normal(0, 1, (13, 3, 32, 32)).astype(np.float32)
    top_ks = [1 + i % 3 for i in range(13)]
    # WHEN classified as one batch
    batched = predict_batch(model, rows, top_ks)
    # THEN each row gets what a batch of one gets: the same classes in the same order, the same probabilities
    assert len(batched) == 13
    for i, (row, top_k) in enumerate(zip(rows, top_ks, strict=True)):
        alone = predict(model, row[np.newaxis], top_k=top_k)
        assert [p["index"] for p in batched[i]] == [p["index"] for p in alone], i
        assert [p["label"] for p in batched[i]] == [p["label"] for p in alone], i
        assert [p["probability"] for p in batched[i]] == pytest.approx([p["probability"] for p in alone], abs=1e-5), i


def test_predict_batch_refuses_a_mismatched_batch(model: LoadedModel) -> None:
    rows = np.zeros((2, 3, 32, 32), np.float32)
    with pytest.raises(InvalidRequestError, match="one top_k per row"):
        predict_batch(model, rows, [1])
    with pytest.raises(InvalidRequestError, match="top_k=4 must be between 1 and the 3 classes"):
        predict_batch(model, rows, [1, 4])
    with pytest.raises(InvalidRequestError, match=r"expects a tensor of shape \[1, 3, 32, 32\], got \[1, 3, 64, 64\]"):
        predict_batch(model, np.zeros((2, 3, 64, 64), np.float32), [1, 1])
    bad = np.zeros((4, 3, 32, 32), np.float32)
    bad[2, 0, 0, 0] = np.nan  # inside a forward pass of 4, not its first row
    with pytest.raises(InvalidRequestError, match=r"rows 0..3 of the tensor are not finite"):
        predict_batch(model, bad, [1, 1, 1, 1])


# ---------------------------------------------------------------------------- handler on moto S3


EXECUTION = "arn:aws:states:us-east-1:123456789012:execution:pipeline:abc"


@pytest.fixture
def stack(
    monkeypatch: pytest.MonkeyPatch, moto_env: None, package: Path, other_package: Path
) -> Iterator[dict[str, Any]]:
    """GIVEN a model bucket with the tiny model published as 'prod' (and a second one, 'other'),
    a work bucket, a fresh process."""
    monkeypatch.setattr(handler, "service", InferenceService(import_ms=handler.service.import_ms))  # a cold Lambda
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="models-bucket")
        s3.create_bucket(Bucket="work-bucket")
        published = publish(s3, "models-bucket", package, name="tiny", alias="prod")
        other = publish(s3, "models-bucket", other_package, name="other", alias="prod")
        environment = {
            "MODEL_BUCKET": "models-bucket",
            "WORK_BUCKET": "work-bucket",
            "MODEL_CACHE_MB": "64",
            "DEFAULT_MODEL": "tiny",
            "DEFAULT_MODEL_VERSION": "prod",
        }
        with invocation_environment(environment):
            yield {"s3": s3, "version": published.version, "other": other.version}


@pytest.fixture(scope="module")
def other_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another tiny model: same classes, other weights."""
    path = tmp_path_factory.mktemp("other")
    tiny_package(path, seed=7)
    return path


def store_tensor(s3: Any, array: np.ndarray, key: str = "tensors/abc.npy") -> dict[str, Any]:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    s3.put_object(Bucket="work-bucket", Key=key, Body=buffer.getvalue())
    return {"bucket": "work-bucket", "key": key, "shape": list(array.shape), "dtype": "float32"}


def ready(index: int, key: str, model: tuple[str, str], top_k: int = 2, row: int = 0, group: int = 0) -> dict[str, Any]:
    """An entry of preprocessed.json: a located object, ready to classify."""
    return {
        "index": index,
        "status": "READY",
        "source": {"bucket": "in-bucket", "key": key, "version_id": "v1", "etag": "e", "size": 10},
        "model": {"name": model[0], "version": model[1]},
        "top_k": top_k,
        "trigger": "s3-event",
        "tensor": {"group": group, "row": row},
    }


def put_batch(s3: Any, items: list[dict[str, Any]], groups: list[dict[str, Any]], name: str = "abc") -> dict[str, str]:
    """GIVEN the batch document preprocess wrote (``tensors/batches/<execution>/preprocessed.json``)."""
    document = {
        "schema": SCHEMA,
        "execution_id": EXECUTION,
        "trigger": "queue",
        "sinks": ["s3"],
        "duplicates": 0,
        "items": items,
        "groups": groups,
    }
    key = f"tensors/batches/{name}/preprocessed.json"
    s3.put_object(Bucket="work-bucket", Key=key, Body=json.dumps(document).encode())
    return {"bucket": "work-bucket", "key": key}


def group(model: tuple[str, str], tensor_ref: dict[str, Any], items: list[int]) -> dict[str, Any]:
    return {"model": {"name": model[0], "version": model[1]}, "tensor": tensor_ref, "items": items}


def one_object_batch(
    s3: Any, version: str, x: np.ndarray, top_k: int = 2, name: str = "abc", model: str = "tiny"
) -> dict[str, str]:
    """A batch of one object whose (1, 3, 32, 32) tensor is ``x``."""
    ref = store_tensor(s3, x, key=f"tensors/batches/{name}/tensor-0.npy")
    return put_batch(
        s3, [ready(0, "photos/cat.jpg", (model, version), top_k)], [group((model, version), ref, [0])], name=name
    )


def classify(ref: dict[str, str], execution: str = EXECUTION) -> dict[str, Any]:
    return handler.lambda_handler({"batch": ref, "execution_id": execution}, CONTEXT)


def classified(s3: Any, summary: dict[str, Any]) -> dict[str, Any]:
    """The classified.json the summary points to."""
    ref = summary["batch"]
    return json.loads(s3.get_object(Bucket=ref["bucket"], Key=ref["key"])["Body"].read())


def test_handler_classifies_the_stored_tensor_and_reuses_the_model(stack: dict[str, Any], model: LoadedModel) -> None:
    # GIVEN a preprocessed batch of one in the work bucket
    x = tensor(seed=9)
    ref = one_object_batch(stack["s3"], stack["version"], x)
    # WHEN the function is invoked twice
    first = classify(ref)
    second = classify(ref)
    # THEN it writes classified.json beside the batch document and says so, with the counts
    assert first["batch"] == {"bucket": "work-bucket", "key": "tensors/batches/abc/classified.json"}
    assert (first["objects"], first["succeeded"], first["failed"]) == (1, 1, 0)
    (entry,) = classified(stack["s3"], first)["items"]
    assert entry["status"] == "CLASSIFIED" and entry["source"]["key"] == "photos/cat.jpg"
    # AND the prediction names the model's exact version and holds the same top-k as the model itself
    prediction = entry["prediction"]
    assert prediction["model"] == {
        "name": "tiny",
        "version": stack["version"],
        "architecture": "resnet10_v1",
        "inference_mode": "fp32",
    }
    expected = predict(model, x, top_k=2)
    assert [p["label"] for p in prediction["top_k"]] == [p["label"] for p in expected]
    assert [p["probability"] for p in prediction["top_k"]] == pytest.approx(
        [p["probability"] for p in expected], abs=1e-6
    )
    assert classified(stack["s3"], second)["items"][0]["prediction"] == prediction
    # AND only the first invocation loaded the model
    assert (first["cold_start"], second["cold_start"]) == (True, False)
    assert set(first["timings_ms"]) == {"fetch_tensor", "fetch_model", "load_model", "forward", "total"}
    assert first["timings_ms"]["load_model"] > 0 and second["timings_ms"]["load_model"] == 0
    # AND the tensors' groups are not carried on
    assert "groups" not in classified(stack["s3"], first)


def test_warm_up_ping_loads_the_default_model(stack: dict[str, Any]) -> None:
    # WHEN a warm-up ping arrives, then a scheduled EventBridge event
    warmed = handler.lambda_handler({"warmup": True}, CONTEXT)
    scheduled = handler.lambda_handler(
        {"detail-type": "Scheduled Event", "source": "aws.events", "detail": {}}, CONTEXT
    )
    # THEN the default alias is resolved and loaded once; a following batch finds it loaded
    assert warmed["warmed"]["name"] == "tiny" and warmed["warmed"]["version"] == stack["version"]
    assert warmed["warmed"]["cold_start"] is True and scheduled["warmed"]["cold_start"] is False
    result = classify(one_object_batch(stack["s3"], stack["version"], tensor()))
    assert result["cold_start"] is False


def test_a_missing_tensor_is_not_found(stack: dict[str, Any]) -> None:
    gone = {"bucket": "work-bucket", "key": "tensors/gone.npy", "shape": list(SHAPE), "dtype": "float32"}
    model = ("tiny", stack["version"])
    ref = put_batch(stack["s3"], [ready(0, "photos/cat.jpg", model)], [group(model, gone, [0])])
    with pytest.raises(ObjectNotFoundError, match=re.escape("s3://work-bucket/tensors/gone.npy")):
        classify(ref)


def job_like_event(version: str) -> dict[str, Any]:
    """The input of the per-object pipeline: no longer understood."""
    return {
        "job": {
            "source": {"bucket": "in-bucket", "key": "photos/cat.jpg"},
            "model": {"name": "tiny", "version": version},
        },
        "execution_id": EXECUTION,
    }


def test_a_missing_batch_document_is_not_found(stack: dict[str, Any]) -> None:
    with pytest.raises(
        ObjectNotFoundError, match=r"s3://work-bucket/tensors/batches/gone/preprocessed.json does not exist"
    ):
        classify({"bucket": "work-bucket", "key": "tensors/batches/gone/preprocessed.json"})
    with pytest.raises(InvalidRequestError, match="inference input must be an object"):
        handler.lambda_handler(job_like_event(stack["version"]), CONTEXT)


def test_a_tensor_of_another_size_than_the_model_is_an_invalid_request(stack: dict[str, Any]) -> None:
    model = ("tiny", stack["version"])
    tensor_ref = store_tensor(stack["s3"], np.zeros((1, 3, 64, 64), np.float32))
    ref = put_batch(stack["s3"], [ready(0, "photos/cat.jpg", model)], [group(model, tensor_ref, [0])])
    with pytest.raises(InvalidRequestError, match=r"expects a tensor of shape \[1, 3, 32, 32\], got \[1, 3, 64, 64\]"):
        classify(ref)


def test_a_tensor_that_is_not_what_the_job_says_is_an_invalid_request(stack: dict[str, Any]) -> None:
    model = ("tiny", stack["version"])
    tensor_ref = store_tensor(stack["s3"], tensor())
    tensor_ref["shape"] = [1, 3, 64, 64]
    ref = put_batch(stack["s3"], [ready(0, "photos/cat.jpg", model)], [group(model, tensor_ref, [0])])
    with pytest.raises(
        InvalidRequestError, match=r"holds float32 \[1, 3, 32, 32\], the job says float32 \[1, 3, 64, 64\]"
    ):
        classify(ref)


def test_a_two_model_batch_classifies_each_object_as_a_batch_of_one_would(stack: dict[str, Any]) -> None:
    s3 = stack["s3"]
    tiny, other = ("tiny", stack["version"]), ("other", stack["other"])
    # GIVEN a batch of five: three for the tiny model, one for the other, one that failed in preprocess
    rows = {i: tensor(seed=20 + i) for i in range(4)}
    tiny_ref = store_tensor(s3, np.concatenate([rows[0], rows[2], rows[3]]), "tensors/batches/abc/tensor-0.npy")
    other_ref = store_tensor(s3, rows[1], "tensors/batches/abc/tensor-1.npy")
    items = [
        ready(0, "a.jpg", tiny, top_k=1, row=0),
        ready(1, "b.jpg", other, top_k=3, row=0, group=1),
        ready(2, "c.jpg", tiny, top_k=2, row=1),
        ready(3, "d.jpg", tiny, top_k=3, row=2),
        {
            "index": 4,
            "status": "FAILED",
            "source": {"bucket": "in-bucket", "key": "e.jpg", "version_id": "v1"},
            "error": {"type": "NotAnImageError", "message": "not an image", "state": "Preprocess"},
        },
    ]
    ref = put_batch(s3, items, [group(tiny, tiny_ref, [0, 2, 3]), group(other, other_ref, [1])])

    # WHEN the batch is classified
    summary = classify(ref)

    # THEN every ready object is classified by the model it asked for, the failed one stays failed
    assert (summary["objects"], summary["succeeded"], summary["failed"]) == (5, 4, 1)
    entries = classified(s3, summary)["items"]
    assert [e["status"] for e in entries] == ["CLASSIFIED"] * 4 + ["FAILED"]
    assert entries[4]["error"] == {"type": "NotAnImageError", "message": "not an image", "state": "Preprocess"}
    assert [e["prediction"]["model"]["name"] for e in entries[:4]] == ["tiny", "other", "tiny", "tiny"]
    assert [len(e["prediction"]["top_k"]) for e in entries[:4]] == [1, 3, 2, 3]
    # AND each top-1 is what a batch of that object alone gets
    for i in range(4):
        name, version = items[i]["model"]["name"], items[i]["model"]["version"]
        alone = classify(one_object_batch(s3, version, rows[i], top_k=1, name=f"alone-{i}", model=name))
        (only,) = classified(s3, alone)["items"]
        top1, alone_top1 = entries[i]["prediction"]["top_k"][0], only["prediction"]["top_k"][0]
        assert only["prediction"]["model"]["name"] == name
        assert (top1["label"], top1["index"]) == (alone_top1["label"], alone_top1["index"]), i
        assert top1["probability"] == pytest.approx(alone_top1["probability"], abs=1e-5), i
    # AND the two models really disagree somewhere (the comparison above could tell them apart)
    probabilities = {
        name: classified(s3, classify(one_object_batch(s3, version, rows[1], top_k=3, name=f"cmp-{name}", model=name)))[
            "items"
        ][0]["prediction"]["top_k"]
        for name, version in (tiny, other)
    }
    assert probabilities["tiny"] != probabilities["other"]


def test_a_one_model_batch_of_thirteen_matches_batches_of_one(stack: dict[str, Any], model: LoadedModel) -> None:
    s3 = stack["s3"]
    tiny = ("tiny", stack["version"])
    rows = np.random.default_rng(11).normal(0, 1, (13, 3, 32, 32)).astype(np.float32)
    tensor_ref = store_tensor(s3, rows, "tensors/batches/abc/tensor-0.npy")
    ref = put_batch(
        s3, [ready(i, f"{i}.jpg", tiny, top_k=2, row=i) for i in range(13)], [group(tiny, tensor_ref, list(range(13)))]
    )
    summary = classify(ref)
    assert (summary["objects"], summary["succeeded"], summary["failed"]) == (13, 13, 0)
    for i, entry in enumerate(classified(s3, summary)["items"]):
        alone = predict(model, rows[i : i + 1], top_k=2)
        assert entry["source"]["key"] == f"{i}.jpg"
        assert [p["label"] for p in entry["prediction"]["top_k"]] == [p["label"] for p in alone], i
        assert [p["probability"] for p in entry["prediction"]["top_k"]] == pytest.approx(
            [p["probability"] for p in alone], abs=1e-5
        ), i


def test_a_model_that_cannot_be_loaded_fails_only_its_objects(stack: dict[str, Any]) -> None:
    s3 = stack["s3"]
    tiny, gone = ("tiny", stack["version"]), ("tiny", "000000000000")
    # GIVEN a batch with one object for a published version and two for a version that no longer exists
    ok_ref = store_tensor(s3, tensor(1), "tensors/batches/abc/tensor-0.npy")
    gone_ref = store_tensor(s3, np.concatenate([tensor(2), tensor(3)]), "tensors/batches/abc/tensor-1.npy")
    items = [ready(0, "a.jpg", tiny), ready(1, "b.jpg", gone, group=1), ready(2, "c.jpg", gone, row=1, group=1)]
    ref = put_batch(s3, items, [group(tiny, ok_ref, [0]), group(gone, gone_ref, [1, 2])])
    # WHEN classified
    summary = classify(ref)
    # THEN the published model's object is classified, the other two fail with ModelNotFoundError in Inference
    assert (summary["objects"], summary["succeeded"], summary["failed"]) == (3, 1, 2)
    entries = classified(s3, summary)["items"]
    assert entries[0]["status"] == "CLASSIFIED"
    for entry in entries[1:]:
        assert entry["status"] == "FAILED" and "prediction" not in entry
        assert entry["error"]["type"] == "ModelNotFoundError" and entry["error"]["state"] == "Inference"
        assert "000000000000" in entry["error"]["message"]
