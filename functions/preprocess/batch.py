"""The preprocess task over a batch: every object located, decoded and turned into a tensor row.

Up to :data:`PARALLEL_FETCHES` objects are read at once (one GetObject each), decoded in batch order.
An object that cannot be classified (missing, too large, not an image, a bomb, an unknown model,
an invalid name) fails alone: its entry in ``preprocessed.json`` says why, and the others go on.
A transient failure (S3 throttling or a timeout, after the SDK's own retries) fails the whole
invocation so that the state machine retries it: every write here is idempotent.

Example::

    summary = preprocess_batch(batch, execution_id, s3=client("s3"), store=store, limits=ImageLimits(),
                               work_bucket="work", work_prefix="tensors/", ownership=(None, None))
    # {"batch": {"bucket": "work", "key": "tensors/batches/<name>/preprocessed.json"},
    #  "sinks": ["s3", ...], "objects": 3, "failed": 1, "succeeded": 2, "duplicates": 0}
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from functions.common.batch import Batch, Item
from functions.common.config import ImageLimits
from functions.common.errors import ConfigurationError, InvalidRequestError, PermanentError
from functions.common.log import logger, object_uri
from functions.common.manifest import Manifest
from functions.common.model_store import ModelStore
from functions.common.request import ModelRef, SourceObject
from functions.common.timing import rounded, since_ms, timed
from functions.common.work import FAILED, PREPROCESSED, READY, SCHEMA, counts, item_error, put_document, work_key
from functions.preprocess.claims import Claims, log_duplicates
from functions.preprocess.core import Fetched, check_owned, decode_image, fetch_object, put_npy
from functions.preprocess.transform import to_tensor

#: GETs in flight while earlier objects decode: S3 answers each in tens of milliseconds, and a
#: batch of 100 read one after another would spend most of its time waiting.
PARALLEL_FETCHES = 8
#: Most bytes of fetched objects waiting to be decoded (an object larger than this is read alone):
#: small beside the memory the decoder is allowed (see ``functions.common.config.pixels_for_memory``).
FETCH_BUFFER_BYTES = 32 * 1024 * 1024


@dataclass
class _Group:
    """The objects of a batch that one model classifies: one tensor of shape (n, 3, H, W)."""

    manifest: Manifest
    rows: list[np.ndarray] = field(default_factory=list)
    items: list[int] = field(default_factory=list)


class _Cancelled(Exception):
    """The batch stopped (a transient or configuration error): fetches still waiting give up."""


class _ByteBudget:
    """At most ``limit`` bytes of fetched, not yet decoded objects held at once.

    Reservations are granted in batch order: the object the decoder waits for always reserved
    before any later one, so a later object can never hold the budget it needs (an object larger
    than the whole budget waits until nothing else is held, then is read alone).
    """

    def __init__(self, limit: int) -> None:
        self._limit, self._used, self._next = limit, 0, 0
        self._held: dict[int, int] = {}
        self._closed = False
        self._cond = threading.Condition()

    def reserve(self, index: int, size: int) -> None:
        size = min(size, self._limit)
        with self._cond:
            self._cond.wait_for(
                lambda: self._closed or (self._next == index and (self._used == 0 or self._used + size <= self._limit))
            )
            if self._closed:
                raise _Cancelled()
            self._used += size
            self._held[index] = size
            self._next += 1
            self._cond.notify_all()

    def done(self, index: int) -> None:
        """Object ``index`` is decoded (or failed): its bytes are free, its turn is passed."""
        with self._cond:
            if index not in self._held:  # failed before reserving: pass its turn on once it comes
                self._cond.wait_for(lambda: self._closed or self._next >= index)
                self._next = max(self._next, index + 1)
            self._used -= self._held.pop(index, 0)
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


def _fetch(
    item: Item, s3: Any, limits: ImageLimits, ownership: tuple[str | None, str | None], budget: _ByteBudget, turn: int
) -> tuple[Fetched, float]:
    """One object's bytes (run in the fetch pool); raises a PermanentError naming what was wrong."""
    request = item.request
    assert request is not None
    started = time.perf_counter()
    try:
        check_owned(request.source, *ownership)
        fetched = fetch_object(s3, request.source, limits, reserve=lambda size: budget.reserve(turn, size))
    except BaseException:
        budget.done(turn)  # its bytes were never held; its turn passes on
        raise
    return fetched, since_ms(started)


def _one(
    item: Item, fetched: Fetched, fetch_ms: float, resolve: Any, limits: ImageLimits
) -> tuple[dict[str, Any], Manifest, np.ndarray]:
    """Entry of one fetched object and its tensor row; raises a PermanentError naming what was wrong."""
    request = item.request
    assert request is not None
    timings: dict[str, float] = {"fetch": fetch_ms}
    source = replace(fetched.source, sequencer=item.sequencer)
    request = request.with_object_options(fetched.metadata)
    manifest = resolve(request.model.name, request.model.version)
    if request.top_k > manifest.num_classes:
        raise InvalidRequestError(
            f"top_k={request.top_k} is more than the {manifest.num_classes} classes of model "
            f"{manifest.name} version {manifest.version}"
        )
    with timed(timings, "decode"):
        image = decode_image(fetched.data, limits, target=manifest.input, name=source.uri)
    with timed(timings, "transform"):
        row = to_tensor(image, manifest.input)
    entry = {
        "index": item.index,
        "status": READY,
        "source": source.to_dict(),
        "model": {"name": manifest.name, "version": manifest.version},
        "top_k": request.top_k,
        "trigger": request.trigger,
        "bytes": len(fetched.data),
        "decoded_size": list(image.size),
        "timings_ms": rounded(timings),
    }
    return entry, manifest, row


def _fetched_in_order(
    items: list[Item], s3: Any, limits: ImageLimits, ownership: tuple[str | None, str | None]
) -> Iterator[tuple[Item, Callable[[], tuple[Fetched, float]]]]:
    """Each object with its fetch result (a callable: it returns or raises what the fetch did), in
    batch order, with up to :data:`PARALLEL_FETCHES` GETs in flight and at most
    :data:`FETCH_BUFFER_BYTES` of fetched bytes waiting; an object's bytes count until the
    consumer asks for the next one."""
    budget = _ByteBudget(FETCH_BUFFER_BYTES)
    pool = ThreadPoolExecutor(PARALLEL_FETCHES, thread_name_prefix="fetch")
    window: collections.deque[tuple[Item, Future[tuple[Fetched, float]], int]] = collections.deque()
    pending = iter(enumerate(items))

    def submit() -> None:
        following = next(pending, None)
        if following is not None:
            turn, item = following
            window.append((item, pool.submit(_fetch, item, s3, limits, ownership, budget, turn), turn))

    try:
        for _ in range(PARALLEL_FETCHES):
            submit()
        while window:
            item, future, turn = window.popleft()
            submit()
            yield item, future.result
            budget.done(turn)
    finally:
        budget.close()
        pool.shutdown(wait=True, cancel_futures=True)


def _failed_entry(
    item: Item, error: BaseException | str, message: str | None = None, located: SourceObject | None = None
) -> dict[str, Any]:
    """A FAILED entry; ``located``: the object as its GET read it, when the GET succeeded (its
    version, ETag and LastModified tell its failure record's order)."""
    request = item.request
    source = located.to_dict() if located is not None else item.named_source()
    entry: dict[str, Any] = {
        "index": item.index,
        "status": FAILED,
        "source": source,
        "error": item_error(error, message),
    }
    if request is not None:
        entry["model"] = {"name": request.model.name, "version": request.model.version, "resolved": False}
        entry["top_k"] = request.top_k
        entry["trigger"] = request.trigger
    if entry["source"] is None and item.named is not None:
        entry["input"] = {k: item.named.get(k) for k in ("bucket", "key", "version_id")}
    return entry


def _store_group(s3: Any, bucket: str, key: str, group: _Group) -> dict[str, Any]:
    array = np.stack(group.rows).astype(np.float32, copy=False)
    put_npy(s3, bucket, key, array, ModelRef(group.manifest.name, group.manifest.version))
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
    claims: Claims | None = None,
) -> dict[str, Any]:
    """Preprocess every object of ``batch``; write ``preprocessed.json`` and the tensors; return the summary.

    With ``claims``, an object version an S3 event names is first claimed for this execution; one
    another execution claimed is left out (``claimed_elsewhere`` in the document, counted in
    ``duplicates``): see :mod:`functions.preprocess.claims`.
    """
    started = time.perf_counter()
    owners = claims.claim_all(batch.items, execution_id) if claims is not None and execution_id else {}
    log_duplicates(batch.items, owners)
    entries = [_failed_entry(item, "InvalidRequestError", item.problem) for item in batch.items if item.request is None]
    wanted = [item for item in batch.items if item.request is not None and item.index not in owners]
    groups: dict[tuple[str, str, tuple[int, ...]], _Group] = {}
    entries.extend(_preprocessed(wanted, s3, limits, ownership, _Resolver(store), groups))
    entries.sort(key=lambda entry: entry["index"])
    tensors = [
        {
            "model": {"name": group.manifest.name, "version": group.manifest.version},
            "tensor": _store_group(s3, work_bucket, work_key(work_prefix, execution_id, f"tensor-{number}.npy"), group),
            "items": group.items,
        }
        for number, group in enumerate(groups.values())
    ]
    document = {
        "schema": SCHEMA,
        "execution_id": execution_id,
        "trigger": batch.trigger,
        "sinks": list(batch.sinks),
        "duplicates": batch.duplicates + len(owners),
        "claimed_elsewhere": [
            {"index": item.index, "source": item.named_source(), "owner": owners[item.index]}
            for item in batch.items
            if item.index in owners
        ],
        "items": entries,
        "groups": tensors,
    }
    ref = put_document(s3, work_bucket, work_key(work_prefix, execution_id, PREPROCESSED), document)
    summary = {"batch": ref, "sinks": list(batch.sinks), **counts(entries), "duplicates": document["duplicates"]}
    logger.info(
        "batch preprocessed",
        extra={
            **{k: summary[k] for k in ("objects", "failed", "succeeded", "duplicates")},
            "trigger": batch.trigger,
            "first_object": _first_object(entries),
            "ms": round(since_ms(started), 1),
        },
    )
    return summary


class _Resolver:
    """Models resolved once per batch (an unknown model too): every object asking for an alias gets the same version."""

    def __init__(self, store: ModelStore) -> None:
        self._store = store
        self._resolved: dict[tuple[str, str], Manifest | PermanentError] = {}

    def __call__(self, name: str, version: str) -> Manifest:
        if (name, version) not in self._resolved:
            try:
                self._resolved[(name, version)] = self._store.resolve(name, version)
            except PermanentError as exc:
                self._resolved[(name, version)] = exc
        answer = self._resolved[(name, version)]
        if isinstance(answer, PermanentError):
            raise answer
        return answer


def _preprocessed(
    wanted: list[Item],
    s3: Any,
    limits: ImageLimits,
    ownership: tuple[str | None, str | None],
    resolve: _Resolver,
    groups: dict[tuple[str, str, tuple[int, ...]], _Group],
) -> Iterator[dict[str, Any]]:
    """The entry of each wanted object, READY (its row added to its model's group) or FAILED."""
    for item, fetched in _fetched_in_order(wanted, s3, limits, ownership):
        assert item.request is not None
        located: SourceObject | None = None
        try:
            got = fetched()
            located = replace(got[0].source, sequencer=item.sequencer)
            entry, manifest, row = _one(item, *got, resolve, limits)
        except ConfigurationError:
            raise  # the deployment's fault, not this object's: the whole batch fails
        except PermanentError as exc:
            logger.warning(
                "object failed",
                extra={"object": item.request.source.uri, "error": type(exc).__name__, "reason": str(exc)},
            )
            yield _failed_entry(item, exc, located=located)
            continue
        identity = (manifest.name, manifest.version, tuple(row.shape))
        group = groups.setdefault(identity, _Group(manifest))
        entry["tensor"] = {"group": list(groups).index(identity), "row": len(group.rows)}
        group.rows.append(row)
        group.items.append(item.index)
        del row
        yield entry


def _first_object(entries: list[dict[str, Any]]) -> str | None:
    """The first object of the batch that names one, for the log line."""
    for e in entries:
        if e.get("source"):
            return object_uri(e["source"]["bucket"], e["source"]["key"], e["source"].get("version_id"))
    return None


__all__ = ["preprocess_batch"]
