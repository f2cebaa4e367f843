"""Pure core of the inference task: load a model package into MXNet, cache it, run one forward pass.

Nothing here reads the environment or talks to AWS; the handler passes the package bytes in.

Example::

    model = load_model(manifest, store.fetch_files(manifest))      # parse, load params, warm up
    predict(model, tensor, top_k=3)
    # [{"label": "circle", "index": 0, "probability": 0.97}, {"label": "ring", ...}, ...]

    cache = ModelCache(budget_bytes=1024 * 2**20)
    model, hit = cache.get_or_load(("demo", "3f9a1c0b7d2e"), lambda: load_model(manifest, files))
"""

from __future__ import annotations

import gc
import json
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import mxnet as mx
import numpy as np
from mxnet import gluon

from functions.common.errors import InvalidRequestError, ModelIntegrityError
from functions.common.log import logger
from functions.common.manifest import Manifest, parse_labels, verify_file

#: The symbol's one input, as ``HybridBlock.export`` names it.
INPUT_NAME = "data"
#: oneDNN graph fusion backend; MXNet 1.9.1 knows it by this name (not "ONEDNN").
FUSION_BACKEND = "MKLDNN"

# MXNet's Python front end is not thread-safe (Gluon cached ops with static_alloc share their
# buffers), and the local stack runs several invocations at once in one process. Every MXNet
# call goes through this lock; on a 2-core Lambda, oneDNN already uses both cores per forward.
_MXNET_LOCK = threading.RLock()


def _fusion_available() -> bool:
    try:
        return bool(mx.runtime.Features().is_enabled("MKLDNN"))
    except Exception:  # noqa: BLE001  (an MXNet build without the features API: do not fuse)
        return False


_FUSE = _fusion_available()


@dataclass(frozen=True)
class LoadedModel:
    """A model ready for batch-1 input of its manifest's size: parameters loaded, graph warmed up."""

    manifest: Manifest
    labels: tuple[str, ...]
    block: gluon.SymbolBlock = field(repr=False)
    size_bytes: int  # what the cache budget counts: the parameter file size
    fused: bool  # runs oneDNN-fused operators (fused at load, or a fused / int8 package)
    load_ms: float  # parameter load + graph build + warm-up forward
    #: load_ms in parts: verify (checksums), parse (symbol + params), build (graph, fusion),
    #: first_forward (every warm-up forward and the first predict), gc (a collection before them)
    load_parts_ms: Mapping[str, float] = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (1, 3, self.manifest.input.height, self.manifest.input.width)

    def forward(self, tensor: np.ndarray) -> np.ndarray:
        """Raw network output (logits) for a validated ``input_shape`` float32 tensor."""
        with _MXNET_LOCK:
            return self.block(to_ndarray(tensor)).asnumpy()


def to_ndarray(tensor: np.ndarray) -> mx.nd.NDArray:
    """``tensor`` as a float32 MXNet array, copied by numpy in this thread without OpenMP.

    ``mx.nd.array`` copies arrays of 200 000 elements or more (MXNET_CPU_PARALLEL_SIZE) with an
    OpenMP loop in the calling thread. That gives the process a second OpenMP team beside the
    engine's, and with more OpenMP threads than cores libgomp stops spinning between parallel
    regions: every later forward pays futex wake-ups at each of its ~100 oneDNN calls. Measured
    (ResNet-50 int8, 2 cores): one 1M-element ``mx.nd.array`` in the process made every later
    forward 20-35 % slower, for good (11.0 → 14.7 ms). A 1×3×224×224 input (150 528) is below
    the threshold, larger inputs or batches are not; ``asnumpy`` of a large output does the same.
    """
    own = np.array(tensor, dtype=np.float32, order="C", copy=True)  # ours: zero_copy makes it read-only
    return mx.nd.from_numpy(own, zero_copy=True)


def _check_graph(symbol: mx.sym.Symbol, params: Mapping[str, mx.nd.NDArray], manifest: Manifest) -> None:
    """The symbol takes ``data`` and every parameter it needs is in the params file."""
    arguments = symbol.list_arguments()
    if INPUT_NAME not in arguments:
        raise ModelIntegrityError(
            f"model {manifest.name} version {manifest.version}: the symbol has no input named {INPUT_NAME!r}"
        )
    needed = {name for name in arguments if name != INPUT_NAME} | set(symbol.list_auxiliary_states())
    stored = {key.split(":", 1)[-1] for key in params}
    missing = sorted(needed - stored)
    if missing:
        shown = ", ".join(missing[:5]) + (" …" if len(missing) > 5 else "")
        raise ModelIntegrityError(
            f"model {manifest.name} version {manifest.version}: the params file lacks {len(missing)} "
            f"parameter(s) the symbol needs: {shown}"
        )


def _build_block(symbol: mx.sym.Symbol, params: Mapping[str, mx.nd.NDArray], fuse: bool) -> gluon.SymbolBlock:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # type inference chatter about "data"
        block = gluon.SymbolBlock(symbol, mx.sym.var(INPUT_NAME, dtype="float32"))
    block.collect_params().load_dict(
        dict(params), ctx=mx.cpu(), ignore_extra=True, cast_dtype=True, dtype_source="saved"
    )
    if fuse:
        block.hybridize(backend=FUSION_BACKEND, static_alloc=True, static_shape=True)
    else:
        block.hybridize(static_alloc=True, static_shape=True)
    return block


#: Warm-up forwards at most, after the first (which builds the graph).
WARMUP_MAX_FORWARDS = 8


def _settle(block: gluon.SymbolBlock, blank: np.ndarray) -> None:
    """Run warm-up forwards (at least 3) until one is no slower than 1.3× the fastest before it.

    The first forward builds the graph; with static_alloc the next one or two still plan memory
    and create/reorder oneDNN primitives (measured: 140, 120, 6, then 0.8 ms for the int8 demo
    model). Paying for all of them here, at init, makes the first request as fast as a warm one.
    """
    fastest = float("inf")
    for i in range(WARMUP_MAX_FORWARDS):
        t0 = time.perf_counter()
        block(to_ndarray(blank)).asnumpy()  # the path LoadedModel.forward takes
        elapsed = time.perf_counter() - t0
        if i >= 2 and elapsed <= 1.3 * fastest:
            return
        fastest = min(fastest, elapsed)


def load_model(manifest: Manifest, files: Mapping[str, bytes], *, fuse: bool | None = None) -> LoadedModel:
    """Verify, parse and load a package's files, then run one warm-up forward on a blank input.

    ``files`` maps role (symbol, params, labels) to bytes, as ``ModelStore.fetch_files`` returns.
    fp32 packages are fused for oneDNN (conv+bn+relu) when MXNet has it (``fuse=None``); int8 and
    already fused packages are run as they are. Every problem raises ModelIntegrityError naming it.

    Example::

        model = load_model(manifest, {"symbol": b"{...}", "params": b"...", "labels": b"circle\\n..."})
    """
    started = time.perf_counter()
    what = f"model {manifest.name} version {manifest.version}"
    for role, entry in manifest.files.items():
        if role not in files:
            raise ModelIntegrityError(f"{what}: the {role} file {entry.path} was not provided")
        verify_file(role, entry, files[role])
    labels = tuple(parse_labels(files["labels"]))
    if len(labels) != manifest.num_classes:
        raise ModelIntegrityError(
            f"{what}: labels.txt has {len(labels)} labels, manifest num_classes is {manifest.num_classes}"
        )
    if fuse is None:
        fuse = _FUSE and manifest.inference_mode == "fp32"
    # fused and int8 packages already hold oneDNN operators (``_sg_mkldnn_conv``, quantized or
    # not): libmxnet registers them (and ``import mxnet`` imports mxnet.contrib.quantization
    # anyway), so they load like any graph and run with plain hybridize.
    verified = time.perf_counter()

    with _MXNET_LOCK:
        try:
            symbol = mx.sym.load_json(files["symbol"].decode("utf-8"))
        except (UnicodeDecodeError, mx.base.MXNetError) as bad:
            raise ModelIntegrityError(f"{what}: the symbol file is not an MXNet graph: {_first_line(bad)}") from None
        try:
            params = mx.nd.load_frombuffer(files["params"])
        except mx.base.MXNetError as bad:
            raise ModelIntegrityError(f"{what}: the params file is not MXNet parameters: {_first_line(bad)}") from None
        if not isinstance(params, dict):
            raise ModelIntegrityError(f"{what}: the params file holds an unnamed list, expected arg:/aux: names")
        _check_graph(symbol, params, manifest)
        shape = (1, 3, manifest.input.height, manifest.input.width)
        parsed = time.perf_counter()
        try:
            block = _build_block(symbol, params, fuse)
            built = time.perf_counter()
            # The collection the load has made due, paid now rather than inside a request; and
            # before the warm-up, not after: a collection is tens of ms of one busy Python thread,
            # and the engine's OpenMP threads, idle that long, fall asleep. The forward right after
            # such a pause measured 1.2-2.9× a warm one (after no pause: 0.99-1.05×), so init
            # ends with the warm-up forwards, not with a pause. Nothing of the model is frozen
            # (see settle_garbage): an evicted model must stay collectable.
            gc.collect()
            collected = time.perf_counter()
            # The warm-up forward creates the oneDNN primitives: the first request does not pay for it.
            output = block(mx.nd.zeros(shape, dtype=np.float32)).asnumpy()
            _settle(block, np.zeros(shape, dtype=np.float32))
        except mx.base.MXNetError as bad:
            raise ModelIntegrityError(
                f"{what}: a test forward pass on a {list(shape)} input failed: {_first_line(bad)}"
            ) from None
    if output.shape != (1, manifest.num_classes):
        raise ModelIntegrityError(
            f"{what}: the network outputs shape {list(output.shape)} for a {list(shape)} input, "
            f"expected [1, {manifest.num_classes}] (one score per label)"
        )
    if not np.all(np.isfinite(output)):
        raise ModelIntegrityError(f"{what}: a test forward pass on a blank input gave NaN or infinite scores")
    finished = time.perf_counter()
    parts = {
        "verify": (verified - started) * 1000.0,
        "parse": (parsed - verified) * 1000.0,
        "build": (built - parsed) * 1000.0,
        "gc": (collected - built) * 1000.0,
        "first_forward": (finished - collected) * 1000.0,
    }
    model = LoadedModel(
        manifest=manifest,
        labels=labels,
        block=block,
        size_bytes=len(files["params"]),
        fused=fuse or manifest.inference_mode in ("fused", "int8"),
        load_ms=(finished - started) * 1000.0,
        load_parts_ms=parts,
    )
    predict(model, np.zeros(shape, dtype=np.float32), 1)  # first-call costs of the numpy/softmax path
    parts["first_forward"] += (time.perf_counter() - finished) * 1000.0
    return replace(model, load_ms=(time.perf_counter() - started) * 1000.0)


def settle_garbage() -> None:
    """Collect, then exempt every object that exists now from later full collections.

    For the process's start, before any model is loaded (the inference handler calls it once, at
    import). Importing MXNet and boto3 leaves ~10⁵ container objects that no full collection has
    scanned yet, and the collector is about to run one. Measured: the next few thousand surviving
    allocations (a boto3 call, JSON, logging) set off a 50-110 ms full collection inside whatever
    request was running. ``gc.collect()`` pays it here, and ``gc.freeze()`` moves the survivors
    (modules, clients: they live as long as the process) to the permanent generation, so later
    full collections scan only what requests allocate (measured: 4 ms). A loaded model is never
    frozen: its graph is a reference cycle that only the collector frees once the cache evicts it.
    """
    gc.collect()
    gc.freeze()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def softmax(logits: np.ndarray) -> np.ndarray:
    """Numerically stable softmax of a 1-D array, in float64."""
    shifted = logits.astype(np.float64) - np.max(logits)
    exp = np.exp(shifted)
    return exp / exp.sum()


def check_tensor(model: LoadedModel, tensor: Any) -> np.ndarray:
    """``tensor`` if it is a finite float32 array of the model's input shape, else InvalidRequestError."""
    expected = model.input_shape
    what = f"model {model.manifest.name} version {model.manifest.version}"
    if not isinstance(tensor, np.ndarray):
        raise InvalidRequestError(f"the input tensor must be a numpy array, got {type(tensor).__name__}")
    if tensor.shape != expected:
        raise InvalidRequestError(f"{what} expects a tensor of shape {list(expected)}, got {list(tensor.shape)}")
    if tensor.dtype != np.float32:
        raise InvalidRequestError(f"{what} expects a float32 tensor, got {tensor.dtype}")
    if not np.all(np.isfinite(tensor)):
        raise InvalidRequestError("the input tensor holds NaN or infinite values")
    return tensor


def predict(model: LoadedModel, tensor: np.ndarray, top_k: int) -> list[dict[str, Any]]:
    """The ``top_k`` most probable classes, most probable first (softmax over the network's logits).

    Example::

        predict(model, np.zeros((1, 3, 64, 64), np.float32), top_k=2)
        # [{"label": "circle", "index": 0, "probability": 0.41}, {"label": "ring", "index": 4, ...}]
    """
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= len(model.labels):
        raise InvalidRequestError(
            f"top_k={top_k!r} must be between 1 and the {len(model.labels)} classes of model "
            f"{model.manifest.name} version {model.manifest.version}"
        )
    logits = model.forward(check_tensor(model, tensor))[0]
    probabilities = softmax(logits)
    order = np.argsort(-probabilities, kind="stable")[:top_k]
    return [{"label": model.labels[i], "index": int(i), "probability": float(probabilities[i])} for i in order]


#: Batch sizes a forward pass runs at. A batch of n objects is cut greedily into these, so each
#: process builds oneDNN primitives for three shapes only (a new shape costs a primitive build),
#: and a trickle's batch of one runs at batch 1 without padding.
FORWARD_BATCHES: tuple[int, ...] = (8, 4, 1)


def forward_chunks(n: int, sizes: tuple[int, ...] = FORWARD_BATCHES) -> list[tuple[int, int]]:
    """``[(start, size), ...]`` covering ``n`` rows with the largest sizes first.

    Example::

        forward_chunks(13)   # [(0, 8), (8, 4), (12, 1)]
    """
    chunks: list[tuple[int, int]] = []
    start = 0
    for size in sorted(sizes, reverse=True):
        while n - start >= size:
            chunks.append((start, size))
            start += size
    return chunks


def predict_batch(model: LoadedModel, tensor: np.ndarray, top_ks: list[int]) -> list[list[dict[str, Any]]]:
    """:func:`predict` for every row of an (n, 3, H, W) tensor, row ``i`` with ``top_ks[i]`` classes.

    Example::

        predict_batch(model, np.zeros((2, 3, 64, 64), np.float32), top_ks=[1, 2])
        # [[{"label": "circle", ...}], [{"label": "circle", ...}, {"label": "ring", ...}]]
    """
    if not isinstance(tensor, np.ndarray) or tensor.ndim != 4 or tensor.shape[0] != len(top_ks) or not top_ks:
        raise InvalidRequestError(
            f"expected an (n, 3, H, W) tensor with one top_k per row, got {getattr(tensor, 'shape', None)} and {len(top_ks)}"
        )
    for top_k in top_ks:
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= len(model.labels):
            raise InvalidRequestError(
                f"top_k={top_k!r} must be between 1 and the {len(model.labels)} classes of model "
                f"{model.manifest.name} version {model.manifest.version}"
            )
    one = model.input_shape[1:]
    logits = np.empty((len(top_ks), len(model.labels)), np.float32)
    for start, size in forward_chunks(len(top_ks)):
        chunk = np.ascontiguousarray(tensor[start : start + size])
        check_tensor(model, chunk[:1])  # shape, dtype of one row
        if chunk.shape[1:] != one or not np.all(np.isfinite(chunk)):
            raise InvalidRequestError(
                f"rows {start}..{start + size - 1} of the tensor are not finite {list(one)} float32 rows"
            )
        logits[start : start + size] = model.forward(chunk)
    results = []
    for row, top_k in zip(logits, top_ks, strict=True):
        probabilities = softmax(row)
        order = np.argsort(-probabilities, kind="stable")[:top_k]
        results.append(
            [{"label": model.labels[i], "index": int(i), "probability": float(probabilities[i])} for i in order]
        )
    return results


CacheKey = tuple[str, str]  # (model name, exact version)


class ModelCache:
    """Loaded models by (name, exact version), least recently used evicted past a memory budget.

    Sizes are the models' parameter bytes. The model just loaded is always kept, even when it
    alone exceeds the budget. Thread-safe: concurrent gets of one missing model load it once.

    Example::

        cache = ModelCache(budget_bytes=512 * 2**20)
        model, hit = cache.get_or_load(("demo", version), lambda: load_model(manifest, files))
    """

    def __init__(self, budget_bytes: int) -> None:
        if budget_bytes <= 0:
            raise ValueError(f"the model cache budget must be > 0 bytes, got {budget_bytes}")
        self.budget_bytes = budget_bytes
        self._models: OrderedDict[CacheKey, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[CacheKey, threading.Lock] = {}
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    @classmethod
    def with_budget_mb(cls, megabytes: int) -> ModelCache:
        return cls(megabytes * 1024 * 1024)

    def __len__(self) -> int:
        with self._lock:
            return len(self._models)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._models

    @property
    def size_bytes(self) -> int:
        with self._lock:
            return sum(model.size_bytes for model in self._models.values())

    def keys(self) -> list[CacheKey]:
        """Cached keys, least recently used first."""
        with self._lock:
            return list(self._models)

    def get(self, key: CacheKey) -> LoadedModel | None:
        """The cached model (now most recently used), or None; counts a hit or a miss."""
        with self._lock:
            model = self._models.get(key)
            if model is None:
                self.misses += 1
                return None
            self._models.move_to_end(key)
            self.hits += 1
            return model

    def get_or_load(self, key: CacheKey, load: Callable[[], LoadedModel]) -> tuple[LoadedModel, bool]:
        """``(model, hit)``: the cached model, or the one ``load()`` returns, now cached."""
        model = self.get(key)
        if model is not None:
            return model, True
        with self._lock:
            key_lock = self._loading.setdefault(key, threading.Lock())
        # One lock per key, kept for the life of the cache (a few bytes per model ever loaded):
        # dropping it while a thread waits on it would let a third thread load the model again.
        with key_lock:
            with self._lock:  # another thread may have loaded it while we waited
                model = self._models.get(key)
                if model is not None:
                    self._models.move_to_end(key)
                    return model, True
            model = load()
            self.put(key, model)
            return model, False

    def put(self, key: CacheKey, model: LoadedModel) -> list[CacheKey]:
        """Cache ``model`` as most recently used; returns the keys evicted to stay in budget."""
        evicted = []
        with self._lock:
            self._models[key] = model
            self._models.move_to_end(key)
            total = sum(m.size_bytes for m in self._models.values())
            while total > self.budget_bytes and len(self._models) > 1:
                old_key, old = self._models.popitem(last=False)
                total -= old.size_bytes
                evicted.append(old_key)
            self.evictions += len(evicted)
        for old_key in evicted:
            logger.info(
                "model evicted from cache",
                extra={"evicted": f"{old_key[0]}:{old_key[1]}", "budget_bytes": self.budget_bytes},
            )
        if model.size_bytes > self.budget_bytes:
            logger.warning(
                "model is larger than the cache budget (MODEL_CACHE_MB); kept alone",
                extra={"model_bytes": model.size_bytes, "budget_bytes": self.budget_bytes},
            )
        return evicted


def fused_node_count(model: LoadedModel) -> int:
    """How many oneDNN fused operators the loaded graph runs (0 when not fused); for benchmarks."""
    cached = getattr(model.block, "_cached_graph", ())
    if not cached:
        return 0
    graph = json.loads(cached[1].tojson())
    return sum(1 for node in graph.get("nodes", []) if node.get("op", "").startswith("_sg_mkldnn"))


__all__ = [
    "LoadedModel",
    "ModelCache",
    "check_tensor",
    "load_model",
    "predict",
    "settle_garbage",
    "softmax",
    "to_ndarray",
]
