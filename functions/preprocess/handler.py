"""Lambda handler of the preprocess task: a request in, a stored tensor and its job description out."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from functions.common import config
from functions.common.aws import client
from functions.common.config import ImageLimits
from functions.common.errors import InferpipeError, InvalidRequestError
from functions.common.log import bind, lambda_context, logger, object_uri
from functions.common.model_store import ModelStore, cached_store
from functions.common.request import Job, ModelRef, Request, TensorRef
from functions.preprocess.core import check_owned, decode_image, fetch_object, head_object, store_tensor
from functions.preprocess.transform import to_tensor

DEFAULT_WORK_PREFIX = "tensors/"

# One model store per model bucket, reused by every invocation of a warm Lambda.
_stores: dict[str, ModelStore] = {}


@contextlib.contextmanager
def _timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] = (time.perf_counter() - started) * 1000.0


@lambda_context
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Input ``{"request", "available_sinks", "execution_id"}`` (ASL state Preprocess); output ``Job.to_dict()``."""
    try:
        return _preprocess(event)
    except InferpipeError as exc:
        # The state machine records the error too; this line makes it findable by object in the logs.
        logger.warning("preprocess failed", extra={"error": type(exc).__name__, "reason": str(exc)})
        raise


def _preprocess(event: Any) -> dict[str, Any]:
    started = time.perf_counter()
    if not isinstance(event, dict) or not isinstance(event.get("request"), dict):
        raise InvalidRequestError("preprocess input must be an object {request: {...}, available_sinks: [...], execution_id}")
    execution_id = event.get("execution_id")
    execution_id = execution_id if isinstance(execution_id, str) else None
    bind(execution_id=execution_id)
    request = Request.parse(event["request"], event.get("available_sinks"))  # type: ignore[arg-type]
    bind(
        execution_id=execution_id,
        object=object_uri(request.source.bucket, request.source.key, request.source.version_id),
        model=f"{request.model.name}:{request.model.version}",
    )

    check_owned(request.source, config.optional(config.INPUT_BUCKET), config.optional(config.INPUT_KEY_PREFIX))
    limits = ImageLimits.from_env()
    model_bucket = config.require(config.MODEL_BUCKET)
    work_bucket = config.require(config.WORK_BUCKET)
    work_prefix = config.optional(config.WORK_PREFIX) or DEFAULT_WORK_PREFIX
    s3 = client("s3")
    timings: dict[str, float] = {}

    # HEAD first: it pins the object version and carries the uploader's per-object options.
    with _timed(timings, "locate"):
        source, metadata = head_object(s3, request.source, limits)
        request = request.with_object_options(metadata)
    with _timed(timings, "resolve_model"):
        manifest = cached_store(_stores, model_bucket).resolve(request.model.name, request.model.version)
    model = ModelRef(name=manifest.name, version=manifest.version)
    bind(
        execution_id=execution_id,
        object=object_uri(source.bucket, source.key, source.version_id),
        model=f"{model.name}:{model.version}",
    )
    if request.top_k > manifest.num_classes:
        raise InvalidRequestError(
            f"top_k={request.top_k} is more than the {manifest.num_classes} classes of model "
            f"{model.name} version {model.version}"
        )

    with _timed(timings, "fetch"):
        data = fetch_object(s3, source, limits)
    timings["fetch"] += timings.pop("locate")
    with _timed(timings, "decode"):
        image = decode_image(data, limits, target=manifest.input, name=source.uri)
    with _timed(timings, "transform"):
        tensor = to_tensor(image, manifest.input)[np.newaxis]
    with _timed(timings, "store"):
        tensor_ref = store_tensor(s3, work_bucket, work_prefix, source, model, tensor)
    timings["total"] = (time.perf_counter() - started) * 1000.0

    job = Job(
        source=source,
        model=model,
        tensor=TensorRef.from_dict(tensor_ref),
        sinks=request.sinks,
        top_k=request.top_k,
        timings_ms=timings,
    )
    logger.info(
        "image preprocessed",
        extra={
            "bytes": len(data),
            "decoded_size": list(image.size),
            "tensor": tensor_ref["key"],
            "trigger": request.trigger,
            "top_k": request.top_k,
            "timings_ms": job.to_dict()["timings_ms"],
        },
    )
    return job.to_dict()
