"""The inference function's state across invocations: its model cache and stores, and the record of
its cold start (import, fetch, load, first forward), reported once; plus warm-up and the preload
of the default model at init.

One :class:`InferenceService` per process (functions/inference/handler.py makes it): a warm Lambda,
and locally the whole process, reuses its models. Replacing it is a cold start.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from functions.common import config
from functions.common.aws import client
from functions.common.log import bind, logger
from functions.common.model_store import ModelStore, cached_store
from functions.common.timing import rounded, since_ms
from functions.common.work import check_ref
from functions.inference.batch import classify_batch
from functions.inference.core import LoadedModel, ModelCache, load_model


class InferenceService:
    """Models cached across invocations, and this process's cold start in parts."""

    def __init__(self, import_ms: float) -> None:
        #: milliseconds the handler module took to import (MXNet, oneDNN, boto3)
        self.import_ms = import_ms
        self._lock = threading.Lock()
        self._stores: dict[str, ModelStore] = {}
        self._cache: ModelCache | None = None
        #: the cold start of this process in parts (import, fetch, load, first_forward), reported once
        self._init: dict[str, Any] = {"import": import_ms}
        self._init_reported = False

    def model_cache(self) -> ModelCache:
        """The process-wide model cache, sized by MODEL_CACHE_MB when first used."""
        with self._lock:
            if self._cache is None:
                self._cache = ModelCache.with_budget_mb(config.Settings.from_env().model_cache_mb)
            return self._cache

    def get_model(self, name: str, version: str, timings: dict[str, float]) -> tuple[LoadedModel, bool]:
        """``(model, hit)`` for an exact version (an alias is resolved on a miss); records fetch/load times.

        A cached model needs no S3 request: versions are content hashes and never change.
        """
        timings.setdefault("fetch_model", 0.0)
        timings.setdefault("load_model", 0.0)
        cache = self.model_cache()
        cached = cache.get((name, version))
        if cached is not None:
            return cached, True
        started = time.perf_counter()
        store = cached_store(self._stores, config.require(config.MODEL_BUCKET))
        manifest = store.resolve(name, version)  # an exact version's manifest is cached by the store
        timings["fetch_model"] = since_ms(started)

        def load() -> LoadedModel:
            files = store.fetch_files(manifest)
            timings["fetch_model"] = since_ms(started)
            load_started = time.perf_counter()
            model = load_model(manifest, files)
            timings["load_model"] = since_ms(load_started)
            self._note_first_load(timings, model)
            logger.info(
                "model loaded",
                extra={
                    "model_bytes": model.size_bytes,
                    "fused": model.fused,
                    "inference_mode": manifest.inference_mode,
                    "fetch_ms": round(timings["fetch_model"], 1),
                    "load_ms": round(timings["load_model"], 1),
                    "load_parts_ms": rounded(dict(model.load_parts_ms)),
                },
            )
            return model

        return cache.get_or_load((manifest.name, manifest.version), load)

    def _note_first_load(self, timings: dict[str, float], model: LoadedModel) -> None:
        first_forward = model.load_parts_ms.get("first_forward", 0.0)
        with self._lock:
            if "load" not in self._init:  # the first model this process loads: part of its cold start
                self._init.update(
                    fetch=timings["fetch_model"],
                    load=timings["load_model"] - first_forward,
                    first_forward=first_forward,
                )

    def classify(self, ref: Any) -> dict[str, Any]:
        """:func:`~functions.inference.batch.classify_batch` with this process's models; the first
        invocation of a process also answers ``init_ms``, its cold start in parts."""
        summary = classify_batch(client("s3"), check_ref(ref), self.get_model)
        init = self.take_init_report()
        if init is not None:  # the first invocation of this process: its cold start, in parts
            summary["init_ms"] = init
        logger.info(
            "batch classified",
            extra={
                **({"init_ms": init} if init is not None else {}),
                **{k: summary[k] for k in ("objects", "succeeded", "failed")},
                "model_cache_hit": not summary["cold_start"],
                "timings_ms": summary["timings_ms"],
            },
        )
        return summary

    def warm_up(self) -> dict[str, Any]:
        """Load the deployment's default model (DEFAULT_MODEL at DEFAULT_MODEL_VERSION) into the cache."""
        started = time.perf_counter()
        name = config.require(config.DEFAULT_MODEL)
        version = config.require(config.DEFAULT_MODEL_VERSION)
        bind(model=f"{name}:{version}")
        timings: dict[str, float] = {}
        model, hit = self.get_model(name, version, timings)
        timings["total"] = since_ms(started)
        warmed = {
            "name": model.manifest.name,
            "version": model.manifest.version,
            "requested": version,
            "cold_start": not hit,
            "timings_ms": rounded(timings),
            "init_ms": self.init_timings(),
        }
        # "cold_start" in log lines is Powertools' (first invocation of this process): ours is model_cache_hit.
        logger.info(
            "warm-up done",
            extra={"model_cache_hit": hit, "timings_ms": warmed["timings_ms"], "version": model.manifest.version},
        )
        return {"warmed": warmed}

    def init_timings(self) -> dict[str, Any]:
        """This process's cold start in parts, ms: import, and (once a model is loaded) fetch, load, first_forward."""
        with self._lock:
            return {k: (round(v, 1) if isinstance(v, float) else v) for k, v in self._init.items()}

    def take_init_report(self) -> dict[str, Any] | None:
        """The cold-start split, the first time it is asked for in this process; None afterwards."""
        with self._lock:
            if self._init_reported:
                return None
            self._init_reported = True
        return self.init_timings()

    def preload_default_model(self) -> dict[str, Any] | None:
        """Load DEFAULT_MODEL at DEFAULT_MODEL_VERSION into the cache now (the Lambda init phase).

        Returns the cold-start split, or None when no default model is configured. Never raises:
        a failure is logged and the first invocation loads the model (and reports the error) itself.
        """
        name, version = config.optional(config.DEFAULT_MODEL), config.optional(config.DEFAULT_MODEL_VERSION)
        if not name or not version or not config.optional(config.MODEL_BUCKET):
            return None
        try:
            self.get_model(name, version, {})
        except Exception as exc:  # noqa: BLE001  (init must not crash the function)
            logger.warning(
                "default model preload failed; the first invocation loads it",
                extra={"error": f"{type(exc).__name__}: {exc}"},
            )
            return None
        with self._lock:
            self._init["preloaded"] = f"{name}:{version}"
        report = self.init_timings()
        logger.info("cold start: default model preloaded at init", extra={"init_ms": report})
        return report

    def preload_at_init(self) -> None:
        """In a real Lambda (AWS_LAMBDA_FUNCTION_NAME set) with DEFAULT_MODEL set, or with
        INFERENCE_PRELOAD=1, preload the default model while the handler is imported: the init phase
        (up to 10 s, with the full vCPU) pays for parameter load and oneDNN primitive creation instead
        of the first request. The local stack imports the handler lazily, without these variables in
        its process environment, and so does not preload."""
        wanted = os.environ.get("INFERENCE_PRELOAD", "")
        if wanted == "0":
            return
        if wanted == "1" or (os.environ.get("AWS_LAMBDA_FUNCTION_NAME") and os.environ.get(config.DEFAULT_MODEL)):
            self.preload_default_model()


__all__ = ["InferenceService"]
