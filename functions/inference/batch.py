"""The inference task over a batch document: every READY object classified, one forward pass per
model (in :data:`~functions.inference.core.FORWARD_BATCHES` chunks), ``classified.json`` written
beside the document.

A model that cannot be loaded fails its objects (ModelNotFoundError, ModelIntegrityError), not
the batch; a transient failure fails the invocation, which the state machine retries.

Example::

    summary = classify_batch(client("s3"), {"bucket": "work", "key": ".../preprocessed.json"}, service.get_model)
    # {"batch": {"bucket": "work", "key": ".../classified.json"}, "objects": 3, "failed": 0, "succeeded": 3,
    #  "timings_ms": {"fetch_model": 0.0, "load_model": 0.0, "fetch_tensor": 4.1, "forward": 38.0, "total": 45.2},
    #  "cold_start": False}
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from functions.common.aws import read_object
from functions.common.errors import InvalidRequestError, ObjectNotFoundError, PermanentError
from functions.common.log import logger, object_uri
from functions.common.manifest import Manifest
from functions.common.request import TensorRef
from functions.common.timing import rounded, since_ms, timed
from functions.common.work import CLASSIFIED, CLASSIFIED_STATUS, FAILED, counts, get_document, item_error, put_document
from functions.inference.core import LoadedModel, predict_batch

#: ``(model, cache hit)`` of a model by name and exact version or alias; records fetch/load times.
GetModel = Callable[[str, str, dict[str, float]], tuple[LoadedModel, bool]]

_NPY_HEADER_SLACK = 4096  # an .npy header is at most a few hundred bytes


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


def describe_model(manifest: Manifest) -> dict[str, str]:
    """The model as a prediction names it."""
    return {
        "name": manifest.name,
        "version": manifest.version,
        "architecture": manifest.architecture,
        "inference_mode": manifest.inference_mode,
    }


def classify_batch(s3: Any, ref: dict[str, str], get_model: GetModel) -> dict[str, Any]:
    """Classify every READY object of the batch document at ``ref``; write ``classified.json`` beside
    it; ``{"batch": {bucket, key}, "objects", "succeeded", "failed", "timings_ms", "cold_start"}``,
    ``cold_start`` meaning a model had to be loaded."""
    started = time.perf_counter()
    document = get_document(s3, ref)
    entries = {entry.get("index"): entry for entry in document["items"]}
    timings: dict[str, float] = {"fetch_tensor": 0.0, "forward": 0.0}
    hits: list[bool] = []
    for group in document.get("groups") or []:
        members = [entries[i] for i in group["items"]]
        try:
            model, hit = get_model(group["model"]["name"], group["model"]["version"], timings)
        except PermanentError as exc:
            _fail(members, exc)
            continue
        hits.append(hit)
        with timed(timings, "fetch_tensor"):
            tensor = read_tensor(s3, TensorRef.from_dict(group["tensor"], "group.tensor"))
        with timed(timings, "forward"):
            predictions = predict_batch(model, tensor, [int(entry["top_k"]) for entry in members])
        described = describe_model(model.manifest)
        for entry, top_k in zip(members, predictions, strict=True):
            entry.update(status=CLASSIFIED_STATUS, prediction={"model": described, "top_k": top_k})
    document.pop("groups", None)  # the tensors are not needed past this step
    out = put_document(s3, ref["bucket"], ref["key"].rsplit("/", 1)[0] + "/" + CLASSIFIED, document)
    timings["total"] = since_ms(started)
    return {"batch": out, **counts(document["items"]), "timings_ms": rounded(timings), "cold_start": not all(hits)}


def _fail(members: list[dict[str, Any]], exc: PermanentError) -> None:
    """The objects of a model that could not be loaded: FAILED, with its error."""
    for entry in members:
        entry.update(status=FAILED, error=item_error(exc, state="Inference"))
    logger.warning(
        "model failed for its objects",
        extra={"error": type(exc).__name__, "reason": str(exc), "objects": len(members)},
    )


__all__ = ["GetModel", "classify_batch", "describe_model", "read_tensor"]
