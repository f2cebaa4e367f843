"""Lambda handler of the inference task: a job in, the model's top-k classes out; also answers warm-up pings."""

from __future__ import annotations

import time

_IMPORT_STARTED = time.perf_counter()

import io  # noqa: E402 - the import time of this module (MXNet above all) is measured
import os  # noqa: E402
import threading  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np

from functions.common import config
from functions.common.aws import client, read_object
from functions.common.errors import InvalidRequestError, ObjectNotFoundError, PermanentError
from functions.common.log import bind, lambda_context, logger, object_uri
from functions.common.manifest import Manifest
from functions.common.model_store import ModelStore, cached_store
from functions.common.request import TensorRef
from functions.common.work import (
    CLASSIFIED,
    CLASSIFIED_STATUS,
    FAILED,
    check_ref,
    counts,
    get_document,
    item_error,
    put_document,
)
from functions.inference.core import LoadedModel, ModelCache, load_model, predict_batch, settle_garbage

#: Milliseconds this module took to import (MXNet, oneDNN, boto3): the first part of a cold start.
IMPORT_MS = (time.perf_counter() - _IMPORT_STARTED) * 1000.0
_NPY_HEADER_SLACK = 4096  # an .npy header is at most a few hundred bytes

# Module-level state reused by every invocation of a warm Lambda (and, locally, of the process).
_lock = threading.Lock()
_stores: dict[str, ModelStore] = {}
_cache: ModelCache | None = None
#: The cold start of this process in parts (import, fetch, load, first_forward), reported once.
_init: dict[str, Any] = {"import": IMPORT_MS}
_init_reported = False


def model_cache() -> ModelCache:
    """The process-wide model cache, sized by MODEL_CACHE_MB when first used."""
    global _cache
    with _lock:
        if _cache is None:
            _cache = ModelCache.with_budget_mb(config.Settings.from_env().model_cache_mb)
        return _cache


def get_model(name: str, version: str, timings: dict[str, float]) -> tuple[LoadedModel, bool]:
    """``(model, hit)`` for an exact version (an alias is resolved on a miss); records fetch/load times.

    A cached model needs no S3 request: versions are content hashes and never change.
    """
    timings.setdefault("fetch_model", 0.0)
    timings.setdefault("load_model", 0.0)
    cache = model_cache()
    cached = cache.get((name, version))
    if cached is not None:
        return cached, True
    started = time.perf_counter()
    store = cached_store(_stores, config.require(config.MODEL_BUCKET))
    manifest = store.resolve(name, version)  # an exact version's manifest is cached by the store
    timings["fetch_model"] = (time.perf_counter() - started) * 1000.0

    def load() -> LoadedModel:
        files = store.fetch_files(manifest)
        timings["fetch_model"] = (time.perf_counter() - started) * 1000.0
        load_started = time.perf_counter()
        model = load_model(manifest, files)
        timings["load_model"] = (time.perf_counter() - load_started) * 1000.0
        first_forward = model.load_parts_ms.get("first_forward", 0.0)
        with _lock:
            if "load" not in _init:  # the first model this process loads: part of its cold start
                _init.update(
                    fetch=timings["fetch_model"],
                    load=timings["load_model"] - first_forward,
                    first_forward=first_forward,
                )
        logger.info(
            "model loaded",
            extra={
                "model_bytes": model.size_bytes,
                "fused": model.fused,
                "inference_mode": manifest.inference_mode,
                "fetch_ms": round(timings["fetch_model"], 1),
                "load_ms": round(timings["load_model"], 1),
                "load_parts_ms": _rounded(dict(model.load_parts_ms)),
            },
        )
        return model

    return cache.get_or_load((manifest.name, manifest.version), load)


def read_tensor(s3: Any, ref: TensorRef) -> np.ndarray:
    """The stored ``.npy`` tensor, checked against the shape and dtype the job announced."""
    uri = object_uri(ref.bucket, ref.key)
    expected_bytes = 4 * int(np.prod(ref.shape)) + _NPY_HEADER_SLACK
    data = read_object(s3, ref.bucket, ref.key, expected_bytes)
    if data is None:
        raise ObjectNotFoundError(f"the preprocessed tensor {uri} does not exist (expired or never stored)")
    if len(data) > expected_bytes:
        raise InvalidRequestError(f"the tensor {uri} is larger than a {list(ref.shape)} float32 array")
    try:
        tensor = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as bad:
        raise InvalidRequestError(f"the tensor {uri} is not a .npy array: {bad}") from None
    if not isinstance(tensor, np.ndarray) or tensor.shape != ref.shape or tensor.dtype != np.dtype(ref.dtype):
        raise InvalidRequestError(
            f"the tensor {uri} holds {getattr(tensor, 'dtype', '?')} {list(getattr(tensor, 'shape', ()))}, "
            f"the job says {ref.dtype} {list(ref.shape)}"
        )
    return tensor


def is_warmup(event: Any) -> bool:
    """A warm-up ping: ``{"warmup": true}`` or an EventBridge scheduled event."""
    if not isinstance(event, dict):
        return False
    if event.get("warmup") is True:
        return True
    return event.get("detail-type") == "Scheduled Event" and event.get("source") == "aws.events"


def warm_up() -> dict[str, Any]:
    """Load the deployment's default model (DEFAULT_MODEL at DEFAULT_MODEL_VERSION) into the cache."""
    started = time.perf_counter()
    name = config.require(config.DEFAULT_MODEL)
    version = config.require(config.DEFAULT_MODEL_VERSION)
    bind(model=f"{name}:{version}")
    timings: dict[str, float] = {}
    model, hit = get_model(name, version, timings)
    timings["total"] = (time.perf_counter() - started) * 1000.0
    warmed = {
        "name": model.manifest.name,
        "version": model.manifest.version,
        "requested": version,
        "cold_start": not hit,
        "timings_ms": _rounded(timings),
        "init_ms": init_timings(),
    }
    # "cold_start" in log lines is Powertools' (first invocation of this process): ours is model_cache_hit.
    logger.info(
        "warm-up done",
        extra={"model_cache_hit": hit, "timings_ms": warmed["timings_ms"], "version": model.manifest.version},
    )
    return {"warmed": warmed}


def init_timings() -> dict[str, Any]:
    """This process's cold start in parts, ms: import, and (once a model is loaded) fetch, load, first_forward."""
    with _lock:
        return {k: (round(v, 1) if isinstance(v, float) else v) for k, v in _init.items()}


def _take_init_report() -> dict[str, Any] | None:
    """The cold-start split, the first time it is asked for in this process; None afterwards."""
    global _init_reported
    with _lock:
        if _init_reported:
            return None
        _init_reported = True
    return init_timings()


def preload_default_model() -> dict[str, Any] | None:
    """Load DEFAULT_MODEL at DEFAULT_MODEL_VERSION into the cache now (the Lambda init phase).

    Returns the cold-start split, or None when no default model is configured. Never raises:
    a failure is logged and the first invocation loads the model (and reports the error) itself.
    """
    name, version = config.optional(config.DEFAULT_MODEL), config.optional(config.DEFAULT_MODEL_VERSION)
    if not name or not version or not config.optional(config.MODEL_BUCKET):
        return None
    try:
        get_model(name, version, {})
    except Exception as exc:  # noqa: BLE001 - init must not crash the function
        logger.warning(
            "default model preload failed; the first invocation loads it",
            extra={"error": f"{type(exc).__name__}: {exc}"},
        )
        return None
    with _lock:
        _init["preloaded"] = f"{name}:{version}"
    report = init_timings()
    logger.info("cold start: default model preloaded at init", extra={"init_ms": report})
    return report


def _preload_at_init() -> None:
    """In a real Lambda (AWS_LAMBDA_FUNCTION_NAME set) with DEFAULT_MODEL set, or with
    INFERENCE_PRELOAD=1, preload the default model while the module is imported: the init phase
    (up to 10 s, with the full vCPU) pays for parameter load and oneDNN primitive creation instead
    of the first request. The local stack imports this module lazily, without these variables in
    its process environment, and so does not preload."""
    wanted = os.environ.get("INFERENCE_PRELOAD", "")
    if wanted == "0":
        return
    if wanted == "1" or (os.environ.get("AWS_LAMBDA_FUNCTION_NAME") and os.environ.get(config.DEFAULT_MODEL)):
        preload_default_model()


def _rounded(timings: dict[str, float]) -> dict[str, float]:
    return {stage: round(ms, 1) for stage, ms in timings.items()}


def _describe_model(manifest: Manifest) -> dict[str, str]:
    return {
        "name": manifest.name,
        "version": manifest.version,
        "architecture": manifest.architecture,
        "inference_mode": manifest.inference_mode,
    }


def classify_batch(ref: Any, execution_id: str | None) -> dict[str, Any]:
    """Classify every READY object of the batch document at ``ref``: one forward pass per model
    (in :data:`~functions.inference.core.FORWARD_BATCHES` chunks). Writes ``classified.json``
    beside it and returns ``{"batch": {bucket, key}, "objects", "succeeded", "failed", "timings_ms"}``.

    A model that cannot be loaded fails its objects (ModelNotFoundError, ModelIntegrityError),
    not the batch; a transient failure fails the invocation, which the state machine retries.
    """
    started = time.perf_counter()
    s3 = client("s3")
    document = get_document(s3, ref)
    entries = {entry.get("index"): entry for entry in document["items"]}
    timings: dict[str, float] = {"fetch_tensor": 0.0, "forward": 0.0}
    hits: list[bool] = []
    for group in document.get("groups") or []:
        members = [entries[i] for i in group["items"]]
        try:
            model, hit = get_model(group["model"]["name"], group["model"]["version"], timings)
        except PermanentError as exc:
            for entry in members:
                entry.update(status=FAILED, error=item_error(exc, state="Inference"))
            logger.warning(
                "model failed for its objects",
                extra={"error": type(exc).__name__, "reason": str(exc), "objects": len(members)},
            )
            continue
        hits.append(hit)
        t0 = time.perf_counter()
        tensor = read_tensor(s3, TensorRef.from_dict(group["tensor"], "group.tensor"))
        timings["fetch_tensor"] += (time.perf_counter() - t0) * 1000.0
        t0 = time.perf_counter()
        predictions = predict_batch(model, tensor, [int(entry["top_k"]) for entry in members])
        timings["forward"] += (time.perf_counter() - t0) * 1000.0
        described = _describe_model(model.manifest)
        for entry, top_k in zip(members, predictions, strict=True):
            entry.update(status=CLASSIFIED_STATUS, prediction={"model": described, "top_k": top_k})
    document.pop("groups", None)  # the tensors are not needed past this step
    out = put_document(s3, ref["bucket"], ref["key"].rsplit("/", 1)[0] + "/" + CLASSIFIED, document)
    timings["total"] = (time.perf_counter() - started) * 1000.0
    summary: dict[str, Any] = {
        "batch": out,
        **counts(document["items"]),
        "timings_ms": _rounded(timings),
        "cold_start": not all(hits),
    }
    init = _take_init_report()
    if init is not None:  # the first invocation of this process: its cold start, in parts
        summary["init_ms"] = init
    logger.info(
        "batch classified",
        extra={
            **({"init_ms": init} if init is not None else {}),
            **{k: summary[k] for k in ("objects", "succeeded", "failed")},
            "model_cache_hit": all(hits),
            "timings_ms": summary["timings_ms"],
        },
    )
    return summary


@lambda_context
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Input ``{"batch": {bucket, key}, "execution_id"}`` (ASL state Inference) or a warm-up ping.

    Output: see :func:`classify_batch`; ``cold_start`` means this invocation had to load a model;
    the first invocation of a process also carries ``init_ms``: {import, fetch, load,
    first_forward (, preloaded)}, the process's cold start in parts (see :func:`preload_default_model`).
    """
    if is_warmup(event):
        bind()
        return warm_up()
    if not isinstance(event, dict) or "batch" not in event:
        raise InvalidRequestError(
            'inference input must be an object {"batch": {"bucket", "key"}, "execution_id": "..."} or {"warmup": true}'
        )
    execution_id = event.get("execution_id") if isinstance(event.get("execution_id"), str) else None
    bind(execution_id=execution_id)
    return classify_batch(check_ref(event["batch"]), execution_id)


settle_garbage()  # once per process, before any model is loaded: see its docstring
_preload_at_init()
