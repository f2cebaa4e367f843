"""The preprocess task over a batch: every object located, decoded and turned into a tensor row.

An object that cannot be classified (missing, too large, not an image, a bomb, an unknown model,
an invalid name) fails alone: its entry in ``preprocessed.json`` says why, and the others go on.
A transient failure (S3 throttling or a timeout, after the SDK's own retries) fails the whole
invocation so that the state machine retries it: every write here is idempotent.

Example::

    summary = preprocess_batch(batch, execution_id, s3=client("s3"), store=store, limits=ImageLimits(),
                               work_bucket="work", work_prefix="tensors/", ownership=(None, None))
    # {"batch": {"bucket": "work", "key": "tensors/batches/<name>/preprocessed.json"},
    #  "sinks": ["s3", ...], "objects": 3, "failed": 1, "succeeded": 2}
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from botocore.exceptions import BotoCoreError, ClientError

from functions.common.aws import raise_transient
from functions.common.batch import Batch, Item
from functions.common.config import ImageLimits
from functions.common.errors import ConfigurationError, InvalidRequestError, PermanentError
from functions.common.log import logger, object_uri
from functions.common.manifest import Manifest
from functions.common.model_store import ModelStore
from functions.common.work import FAILED, PREPROCESSED, READY, SCHEMA, counts, item_error, put_document, work_key
from functions.preprocess.core import check_owned, decode_image, fetch_object, head_object
from functions.preprocess.transform import to_tensor


@dataclass
class _Group:
    """The objects of a batch that one model classifies: one tensor of shape (n, 3, H, W)."""

    manifest: Manifest
    rows: list[np.ndarray] = field(default_factory=list)
    items: list[int] = field(default_factory=list)


def _one(
    item: Item, s3: Any, resolve: Any, limits: ImageLimits, ownership: tuple[str | None, str | None]
) -> tuple[dict[str, Any], Manifest, np.ndarray]:
    """Entry of one object and its tensor row; raises a PermanentError naming what was wrong."""
    request = item.request
    assert request is not None
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    check_owned(request.source, *ownership)
    source, metadata = head_object(s3, request.source, limits)
    request = request.with_object_options(metadata)
    manifest = resolve(request.model.name, request.model.version)
    if request.top_k > manifest.num_classes:
        raise InvalidRequestError(
            f"top_k={request.top_k} is more than the {manifest.num_classes} classes of model "
            f"{manifest.name} version {manifest.version}"
        )
    data = fetch_object(s3, source, limits)
    timings["fetch"] = (time.perf_counter() - t0) * 1000.0
    t0 = time.perf_counter()
    image = decode_image(data, limits, target=manifest.input, name=source.uri)
    timings["decode"] = (time.perf_counter() - t0) * 1000.0
    t0 = time.perf_counter()
    row = to_tensor(image, manifest.input)
    timings["transform"] = (time.perf_counter() - t0) * 1000.0
    entry = {
        "index": item.index,
        "status": READY,
        "source": source.to_dict(),
        "model": {"name": manifest.name, "version": manifest.version},
        "top_k": request.top_k,
        "trigger": request.trigger,
        "bytes": len(data),
        "decoded_size": list(image.size),
        "timings_ms": {k: round(v, 1) for k, v in timings.items()},
    }
    return entry, manifest, row


def _failed_entry(item: Item, error: BaseException | str, message: str | None = None) -> dict[str, Any]:
    request = item.request
    entry: dict[str, Any] = {"index": item.index, "status": FAILED, "source": item.named_source(), "error": item_error(error, message)}
    if request is not None:
        entry["model"] = {"name": request.model.name, "version": request.model.version, "resolved": False}
        entry["top_k"] = request.top_k
        entry["trigger"] = request.trigger
    if entry["source"] is None and item.named is not None:
        entry["input"] = {k: item.named.get(k) for k in ("bucket", "key", "version_id")}
    return entry


def _store_group(s3: Any, bucket: str, key: str, group: _Group) -> dict[str, Any]:
    array = np.ascontiguousarray(np.stack(group.rows).astype(np.float32, copy=False))
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    try:
        s3.put_object(Bucket=bucket, Key=key, Body=buffer.getvalue(), ContentType="application/octet-stream",
                      Metadata={"model": group.manifest.name, "model-version": group.manifest.version})
    except (ClientError, BotoCoreError) as exc:
        raise_transient(exc, f"PutObject s3://{bucket}/{key}")
    return {"bucket": bucket, "key": key, "shape": list(array.shape), "dtype": "float32"}


def preprocess_batch(
    batch: Batch,
    execution_id: str | None,
    *,
    s3: Any,
    store: ModelStore,
    limits: ImageLimits,
    work_bucket: str,
    work_prefix: str,
    ownership: tuple[str | None, str | None] = (None, None),
) -> dict[str, Any]:
    """Preprocess every object of ``batch``; write ``preprocessed.json`` and the tensors; return the summary."""
    started = time.perf_counter()
    entries: list[dict[str, Any]] = []
    groups: dict[tuple[str, str, tuple[int, ...]], _Group] = {}
    resolved: dict[tuple[str, str], Manifest | PermanentError] = {}

    def resolve(name: str, version: str) -> Manifest:
        """Resolved once per batch (an unknown model too): every object asking for an alias gets the same version."""
        if (name, version) not in resolved:
            try:
                resolved[(name, version)] = store.resolve(name, version)
            except PermanentError as exc:
                resolved[(name, version)] = exc
        answer = resolved[(name, version)]
        if isinstance(answer, PermanentError):
            raise answer
        return answer

    for item in batch.items:
        if item.request is None:
            entries.append(_failed_entry(item, "InvalidRequestError", item.problem))
            continue
        try:
            entry, manifest, row = _one(item, s3, resolve, limits, ownership)
        except ConfigurationError:
            raise  # the deployment's fault, not this object's: the whole batch fails
        except PermanentError as exc:
            logger.warning("object failed", extra={"object": item.request.source.uri, "error": type(exc).__name__, "reason": str(exc)})
            entries.append(_failed_entry(item, exc))
            continue
        identity = (manifest.name, manifest.version, tuple(row.shape))
        if identity not in groups:
            groups[identity] = _Group(manifest)
        group = groups[identity]
        entry["tensor"] = {"group": list(groups).index(identity), "row": len(group.rows)}
        group.rows.append(row)
        group.items.append(item.index)
        entries.append(entry)
        del row
    tensors = []
    for number, group in enumerate(groups.values()):
        tensors.append({
            "model": {"name": group.manifest.name, "version": group.manifest.version},
            "tensor": _store_group(s3, work_bucket, work_key(work_prefix, execution_id, f"tensor-{number}.npy"), group),
            "items": group.items,
        })
    document = {
        "schema": SCHEMA,
        "execution_id": execution_id,
        "trigger": batch.trigger,
        "sinks": list(batch.sinks),
        "duplicates": batch.duplicates,
        "items": entries,
        "groups": tensors,
    }
    ref = put_document(s3, work_bucket, work_key(work_prefix, execution_id, PREPROCESSED), document)
    summary = {"batch": ref, "sinks": list(batch.sinks), **counts(entries)}
    logger.info(
        "batch preprocessed",
        extra={
            **{k: summary[k] for k in ("objects", "failed", "succeeded")},
            "duplicates": batch.duplicates,
            "trigger": batch.trigger,
            "first_object": next((object_uri(e["source"]["bucket"], e["source"]["key"], e["source"].get("version_id"))
                                  for e in entries if e.get("source")), None),
            "ms": round((time.perf_counter() - started) * 1000.0, 1),
        },
    )
    return summary


__all__ = ["preprocess_batch"]
