"""Environment variable names and the typed settings read from them.

Every variable a function reads is named here once; :class:`Settings` reads the tunable ones with
their defaults (config/stack.json ``settings``). ``config/stack.json`` lists which variables
each function receives; Terraform and the local stack both set exactly those.

A function reads its variables through :func:`environ`: ``os.environ`` in Lambda and in the local
stack's execution environments, or the mapping of the invocation in progress when the local stack
runs handlers in one process (its "in-process" mode, used by the benchmark).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from functions.common import stack

INPUT_BUCKET = "INPUT_BUCKET"
INPUT_KEY_PREFIX = "INPUT_KEY_PREFIX"
MODEL_BUCKET = "MODEL_BUCKET"
WORK_BUCKET = "WORK_BUCKET"
OUTPUT_BUCKET = "OUTPUT_BUCKET"
PREDICTIONS_TABLE = "PREDICTIONS_TABLE"
PREDICTIONS_TOPIC_ARN = "PREDICTIONS_TOPIC_ARN"
PREDICTIONS_QUEUE_URL = "PREDICTIONS_QUEUE_URL"
PREDICTIONS_EVENT_BUS = "PREDICTIONS_EVENT_BUS"
MAX_OBJECT_BYTES = "MAX_OBJECT_BYTES"
MAX_IMAGE_PIXELS = "MAX_IMAGE_PIXELS"
MODEL_CACHE_MB = "MODEL_CACHE_MB"
MAX_BATCH_OBJECTS = "MAX_BATCH_OBJECTS"
CLAIMS_TABLE = "CLAIMS_TABLE"
CLAIM_TTL_S = "CLAIM_TTL_S"
WORK_PREFIX = "WORK_PREFIX"
OUTPUT_PREFIX = "OUTPUT_PREFIX"
DEFAULT_MODEL = "DEFAULT_MODEL"
DEFAULT_MODEL_VERSION = "DEFAULT_MODEL_VERSION"

_invocation_environ: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar(
    "inferpipe_invocation_environ", default=None
)


def environ() -> Mapping[str, str]:
    """The environment of the function invocation in progress."""
    override = _invocation_environ.get()
    return os.environ if override is None else override


@contextlib.contextmanager
def invocation_environment(variables: Mapping[str, str]) -> Iterator[None]:
    """Run a block as a function whose environment is exactly ``variables`` (local stack only)."""
    token = _invocation_environ.set(dict(variables))
    try:
        yield
    finally:
        _invocation_environ.reset(token)


def invocation_credentials() -> tuple[str, str, str | None] | None:
    """The AWS credentials the local stack gave the invocation in progress, else None.

    In Lambda this is always None: clients use boto3's default chain, i.e. the execution role's
    credentials Lambda puts in ``os.environ`` (the local stack's environments do the same). Its
    in-process mode runs every function in one process, so it passes each role's credentials in
    the invocation's environment instead.
    """
    override = _invocation_environ.get()
    if override is None or not override.get("AWS_ACCESS_KEY_ID"):
        return None
    return override["AWS_ACCESS_KEY_ID"], override.get("AWS_SECRET_ACCESS_KEY", ""), override.get("AWS_SESSION_TOKEN")


def require(name: str) -> str:
    """The value of a variable the function cannot work without."""
    value = environ().get(name, "")
    if not value:
        raise RuntimeError(f"environment variable {name} is not set for this function")
    return value


def optional(name: str) -> str | None:
    """The value of a variable whose absence switches a feature off."""
    return environ().get(name) or None


def _positive_int(name: str) -> int:
    """An integer setting > 0; its config/stack.json ``settings`` value when unset."""
    raw = environ().get(name) or stack.SETTINGS[name]
    try:
        value = int(raw)
    except ValueError:
        raise RuntimeError(f"environment variable {name}={raw!r} is not an integer") from None
    if value <= 0:
        raise RuntimeError(f"environment variable {name}={raw!r} must be > 0")
    return value


#: Set by Lambda in every function's environment: its MemorySize in MB.
LAMBDA_MEMORY_SIZE = "AWS_LAMBDA_FUNCTION_MEMORY_SIZE"
#: Peak bytes per decoded pixel of the hungriest mode preprocess converts (RGBA, composited strip
#: by strip: 372 MB for 39.6 MP including the process's own ~55 MB, i.e. 8.0 B/px), rounded up.
#: tests/unit/test_preprocess_memory.py measures every mode against it.
DECODE_BYTES_PER_PIXEL = 10
#: What a preprocess environment holds before any image (runtime, Pillow, numpy, boto3: 72 MB measured), rounded up.
DECODE_BASELINE_MB = 128
#: The share of the function's memory an image may use: the rest is headroom.
DECODE_MEMORY_SHARE = 0.75


def pixels_for_memory(memory_mb: int) -> int:
    """The most pixels preprocess decodes safely in a function of ``memory_mb``.

    >>> pixels_for_memory(1024), pixels_for_memory(512)
    (67108864, 26843545)
    """
    usable_mb = memory_mb * DECODE_MEMORY_SHARE - DECODE_BASELINE_MB
    return max(0, int(usable_mb * 1024 * 1024 / DECODE_BYTES_PER_PIXEL))


@dataclass(frozen=True)
class ImageLimits:
    """Guards applied before and while decoding an image."""

    #: refuse to download more than this
    max_object_bytes: int = int(stack.SETTINGS[MAX_OBJECT_BYTES])
    #: refuse to decode more pixels than this (40 MP by default: about 7300×5500)
    max_image_pixels: int = int(stack.SETTINGS[MAX_IMAGE_PIXELS])
    #: set when the limit above is the function's memory's, not MAX_IMAGE_PIXELS
    memory_mb: int | None = None

    @property
    def pixel_limit_source(self) -> str:
        """What set ``max_image_pixels``, for error messages."""
        if self.memory_mb is not None:
            return f"the most a {self.memory_mb} MB function decodes safely"
        return "MAX_IMAGE_PIXELS"


@dataclass(frozen=True)
class Settings:
    """The tunable settings a function reads, each its config/stack.json ``settings`` value when
    its variable is unset: the one place those defaults are read."""

    max_object_bytes: int
    max_image_pixels: int
    max_batch_objects: int
    model_cache_mb: int
    work_prefix: str
    output_prefix: str
    #: the function's MemorySize (Lambda sets it; None elsewhere)
    memory_mb: int | None = None

    @classmethod
    def from_env(cls) -> Settings:
        memory = environ().get(LAMBDA_MEMORY_SIZE)
        return cls(
            max_object_bytes=_positive_int(MAX_OBJECT_BYTES),
            max_image_pixels=_positive_int(MAX_IMAGE_PIXELS),
            max_batch_objects=_positive_int(MAX_BATCH_OBJECTS),
            model_cache_mb=_positive_int(MODEL_CACHE_MB),
            work_prefix=optional(WORK_PREFIX) or stack.SETTINGS[WORK_PREFIX],
            output_prefix=optional(OUTPUT_PREFIX) or stack.SETTINGS[OUTPUT_PREFIX],
            memory_mb=int(memory) if memory and memory.isdigit() else None,
        )

    @property
    def image_limits(self) -> ImageLimits:
        """MAX_OBJECT_BYTES, and the smaller of MAX_IMAGE_PIXELS and what the function's memory allows."""
        by_memory = pixels_for_memory(self.memory_mb) if self.memory_mb is not None else None
        if by_memory is None or self.max_image_pixels <= by_memory:
            return ImageLimits(max_object_bytes=self.max_object_bytes, max_image_pixels=self.max_image_pixels)
        return ImageLimits(max_object_bytes=self.max_object_bytes, max_image_pixels=by_memory, memory_mb=self.memory_mb)


__all__ = [
    "DECODE_BYTES_PER_PIXEL",
    "ImageLimits",
    "Settings",
    "environ",
    "invocation_credentials",
    "invocation_environment",
    "optional",
    "pixels_for_memory",
    "require",
]
