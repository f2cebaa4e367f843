"""Typed, validated models of what flows between the states: the request and the preprocessed job.

``Request`` is the state machine's merged request (state ``MergeRequest``: the deployment
defaults overlaid with the S3 event or the manual input). ``Job`` is what the preprocess task
returns; the inference and sink tasks read exactly its keys (``$.job`` in the ASL).

Example::

    request = Request.parse(event["request"], available_sinks=event["available_sinks"])
    job = Job(source=request.source, model=ModelRef("demo", "3f9a1c0b7d2e"), tensor=tensor,
              sinks=request.sinks, top_k=request.top_k, timings_ms={"total": 41.0})
    assert Job.from_dict(job.to_dict()) == job
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from functions.common.errors import InvalidRequestError

#: Every key the merged request may hold; a manual request may use exactly these.
REQUEST_KEYS: tuple[str, ...] = ("bucket", "key", "version_id", "sinks", "top_k", "model", "model_version", "trigger")
#: Keys without which there is no request (the deployment defaults supply the last four).
REQUIRED_KEYS: tuple[str, ...] = ("bucket", "key", "sinks", "top_k", "model", "model_version")
#: How an execution started: set by the state machine (``s3-event``) or defaulted (``manual``).
TRIGGERS: tuple[str, ...] = ("s3-event", "manual")

#: User metadata (``x-amz-meta-…``) an uploader may set to choose options for that object's
#: S3-triggered run; ``inferpipe classify`` sets them. Manual requests ignore them.
META_TOP_K = "inferpipe-top-k"
META_MODEL = "inferpipe-model"
META_MODEL_VERSION = "inferpipe-model-version"

MAX_KEY_BYTES = 1024  # S3's limit on an object key, in UTF-8 bytes
MAX_TOP_K = 100  # a sanity bound; inference also checks against the model's num_classes
MAX_VERSION_ID_CHARS = 1024  # S3 version ids are ~32 chars; anything huge is not one
TENSOR_DTYPE = "float32"

# General-purpose bucket names: 3-63 of [a-z0-9.-], starting and ending with a letter or digit.
# Reserved suffixes (-s3alias, --ol-s3, ...) are accepted on purpose: access point aliases are
# valid wherever a bucket name is, for reading.
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
# Model names and versions (or aliases) become S3 key segments: no '/', no leading dot.
_SAFE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_SINK_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")


def _describe(value: Any) -> str:
    """A short, safe rendering of a bad value for an error message."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_bucket(value: Any, field_name: str = "bucket") -> str:
    """``value`` if it is a valid S3 bucket name, else InvalidRequestError naming the rule broken."""
    if not isinstance(value, str) or not value:
        raise InvalidRequestError(f"{field_name} must be a non-empty string, got {_describe(value)}")
    if not _BUCKET_RE.match(value):
        raise InvalidRequestError(
            f"{field_name}={_describe(value)} is not a valid S3 bucket name: 3-63 characters of "
            "lowercase letters, digits, '.' and '-', starting and ending with a letter or digit"
        )
    if ".." in value:
        raise InvalidRequestError(f"{field_name}={value!r} is not a valid S3 bucket name: it has two adjacent periods")
    try:
        ipaddress.IPv4Address(value)
    except ValueError:
        return value
    raise InvalidRequestError(f"{field_name}={value!r} is not a valid S3 bucket name: it is formatted as an IP address")


def check_key(value: Any, field_name: str = "key") -> str:
    """``value`` verbatim if it is a usable S3 object key (1..1024 UTF-8 bytes)."""
    if not isinstance(value, str) or not value:
        raise InvalidRequestError(f"{field_name} must be a non-empty string, got {_describe(value)}")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidRequestError(f"{field_name}={_describe(value)} is not valid Unicode (lone surrogate)") from None
    if size > MAX_KEY_BYTES:
        raise InvalidRequestError(f"{field_name} is {size} UTF-8 bytes long; S3 keys are at most {MAX_KEY_BYTES}")
    return value


def _check_optional_str(value: Any, field_name: str, max_chars: int = MAX_VERSION_ID_CHARS) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > max_chars:
        raise InvalidRequestError(
            f"{field_name} must be omitted, null or a non-empty string of at most {max_chars} characters, "
            f"got {_describe(value)}"
        )
    return value


def _check_optional_size(value: Any, field_name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidRequestError(f"{field_name} must be null or an integer >= 0, got {_describe(value)}")
    return value


def _check_safe_name(value: Any, field_name: str) -> str:
    if not isinstance(value, str) or not _SAFE_NAME_RE.match(value):
        raise InvalidRequestError(
            f"{field_name}={_describe(value)} is not a valid name: 1-64 characters of letters, digits, "
            "'.', '_' and '-', starting with a letter or digit"
        )
    return value


def _check_int(value: Any, field_name: str, low: int, high: int | None = None) -> int:
    # bool is an int in Python but never a count in JSON.
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequestError(f"{field_name} must be an integer, got {_describe(value)}")
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise InvalidRequestError(f"{field_name}={value} must be {bound}")
    return value


def _check_mapping(value: Any, field_name: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise InvalidRequestError(f"{field_name} must be a JSON object, got {_describe(value)}")
    return value


def _require(data: Mapping[str, Any], keys: Sequence[str], where: str) -> None:
    missing = [k for k in keys if k not in data]
    if missing:
        raise InvalidRequestError(f"{where} is missing {', '.join(missing)} (required: {', '.join(keys)})")


@dataclass(frozen=True)
class SourceObject:
    """The S3 object to classify; ``version_id``, ``etag`` and ``size`` are filled once it is located."""

    bucket: str
    key: str
    version_id: str | None = None
    etag: str | None = None
    size: int | None = None
    #: when the version was written (GetObject's LastModified, ISO 8601) and the S3 event's
    #: ``sequencer``: what tells which of two versions of a key is newer (functions/sink/records.py)
    last_modified: str | None = None
    sequencer: str | None = None

    def __post_init__(self) -> None:
        check_bucket(self.bucket, "source.bucket")
        check_key(self.key, "source.key")
        _check_optional_str(self.version_id, "source.version_id")
        _check_optional_str(self.etag, "source.etag")
        _check_optional_size(self.size, "source.size")
        _check_optional_str(self.last_modified, "source.last_modified")
        _check_optional_str(self.sequencer, "source.sequencer")

    @property
    def uri(self) -> str:
        """``s3://bucket/key`` (with ``?versionId=`` when known), for messages and logs."""
        uri = f"s3://{self.bucket}/{self.key}"
        return f"{uri}?versionId={self.version_id}" if self.version_id else uri

    def located(
        self, version_id: str | None, etag: str | None, size: int | None, last_modified: str | None = None
    ) -> SourceObject:
        """This object pinned to what S3 reported (the version actually read, its ETag, size and LastModified)."""
        return replace(
            self, version_id=version_id or self.version_id, etag=etag, size=size, last_modified=last_modified
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "bucket": self.bucket,
            "key": self.key,
            "version_id": self.version_id,
            "etag": self.etag,
            "size": self.size,
            "last_modified": self.last_modified,
            "sequencer": self.sequencer,
        }

    @classmethod
    def from_dict(cls, data: Any, where: str = "source") -> SourceObject:
        data = _check_mapping(data, where)
        _require(data, ("bucket", "key"), where)
        return cls(
            bucket=check_bucket(data["bucket"], f"{where}.bucket"),
            key=check_key(data["key"], f"{where}.key"),
            version_id=_check_optional_str(data.get("version_id"), f"{where}.version_id"),
            etag=_check_optional_str(data.get("etag"), f"{where}.etag"),
            size=_check_optional_size(data.get("size"), f"{where}.size"),
            last_modified=_check_optional_str(data.get("last_modified"), f"{where}.last_modified"),
            sequencer=_check_optional_str(data.get("sequencer"), f"{where}.sequencer"),
        )


@dataclass(frozen=True)
class ModelRef:
    """A model by name and version; in a Request the version may still be an alias such as ``prod``."""

    name: str
    version: str

    def __post_init__(self) -> None:
        _check_safe_name(self.name, "model")
        _check_safe_name(self.version, "model_version")

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "version": self.version}

    @classmethod
    def from_dict(cls, data: Any, where: str = "model") -> ModelRef:
        data = _check_mapping(data, where)
        _require(data, ("name", "version"), where)
        return cls(
            name=_check_safe_name(data["name"], f"{where}.name"),
            version=_check_safe_name(data["version"], f"{where}.version"),
        )


def _check_sinks(value: Any, available: Sequence[str], field_name: str = "sinks") -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Sequence) or not value:
        raise InvalidRequestError(
            f"{field_name} must be a non-empty list of sink names from {list(available)}, got {_describe(value)}"
        )
    seen: list[str] = []
    for name in value:
        if not isinstance(name, str):
            raise InvalidRequestError(
                f"{field_name} holds {_describe(name)}, expected sink names from {list(available)}"
            )
        if name in seen:
            raise InvalidRequestError(f"{field_name} lists {name!r} twice")
        if name not in available:
            raise InvalidRequestError(f"unknown sink {_describe(name)}: available sinks are {list(available)}")
        seen.append(name)
    return tuple(seen)


@dataclass(frozen=True)
class Request:
    """What one execution must do: which object, which model, how many classes, which sinks."""

    source: SourceObject
    model: ModelRef  # as requested: the version may be an alias, resolved by the model store
    sinks: tuple[str, ...]
    top_k: int
    trigger: str = "manual"

    @classmethod
    def parse(cls, data: Mapping[str, Any], available_sinks: Sequence[str]) -> Request:
        """Validate the merged request; all problems are reported at once in one InvalidRequestError.

        Example::

            Request.parse({"bucket": "in-bucket", "key": "a b+c%.jpg", "sinks": ["s3"], "top_k": 3,
                           "model": "demo", "model_version": "prod"}, available_sinks=["s3", "sqs"])
        """
        if not isinstance(data, Mapping):
            raise InvalidRequestError(f"the request must be a JSON object, got {_describe(data)}")
        available = _check_available(available_sinks)  # a deployment fault, not the caller's
        problems: list[str] = []

        def check(validate: Any, *args: Any) -> Any:
            try:
                return validate(*args)
            except InvalidRequestError as problem:
                problems.append(str(problem))
                return None

        unknown = sorted(str(k) for k in data if k not in REQUEST_KEYS)
        if unknown:
            problems.append(f"the request has unknown keys {unknown}; accepted keys are {list(REQUEST_KEYS)}")
        check(_require, data, REQUIRED_KEYS, "the request")
        present = {k: data[k] for k in REQUEST_KEYS if k in data}
        bucket = check(check_bucket, present["bucket"]) if "bucket" in present else None
        key = check(check_key, present["key"]) if "key" in present else None
        version_id = check(_check_optional_str, present.get("version_id"), "version_id")
        name = check(_check_safe_name, present["model"], "model") if "model" in present else None
        version = (
            check(_check_safe_name, present["model_version"], "model_version") if "model_version" in present else None
        )
        sinks = check(_check_sinks, present["sinks"], available) if "sinks" in present else None
        top_k = check(_check_int, present["top_k"], "top_k", 1, MAX_TOP_K) if "top_k" in present else None
        trigger = present.get("trigger", "manual")
        if trigger not in TRIGGERS:
            problems.append(f"trigger={_describe(trigger)} must be one of {list(TRIGGERS)}")
        if problems:
            raise InvalidRequestError("; ".join(problems))
        # every check passed, and _require saw every required key: none of these is None
        assert bucket is not None and key is not None and name is not None and version is not None
        assert sinks is not None and top_k is not None
        return cls(
            source=SourceObject(bucket=bucket, key=key, version_id=version_id),
            model=ModelRef(name=name, version=version),
            sinks=sinks,
            top_k=top_k,
            trigger=str(trigger),
        )

    def with_object_options(self, metadata: Mapping[str, str]) -> Request:
        """For an S3-triggered run, the request with the uploader's per-object options applied.

        The options are the object's user metadata ``inferpipe-top-k``, ``inferpipe-model`` and
        ``inferpipe-model-version`` (S3 returns the names lower-cased). A manual request already
        says what it wants and is returned unchanged.

        Example::

            request.with_object_options({"inferpipe-top-k": "3"}).top_k   # 3
        """
        if self.trigger != "s3-event":
            return self
        options = {str(k).lower(): str(v).strip() for k, v in metadata.items()}
        problems: list[str] = []
        top_k = self.top_k
        if META_TOP_K in options:
            raw = options[META_TOP_K]
            if re.fullmatch(r"[0-9]{1,4}", raw) and 1 <= int(raw) <= MAX_TOP_K:
                top_k = int(raw)
            else:
                problems.append(
                    f"object metadata {META_TOP_K}={_describe(raw)} must be an integer between 1 and {MAX_TOP_K}"
                )

        def name_option(meta: str, current: str) -> str:
            if meta not in options:
                return current
            try:
                return _check_safe_name(options[meta], f"object metadata {meta}")
            except InvalidRequestError as problem:
                problems.append(str(problem))
                return current

        model = ModelRef(
            name=name_option(META_MODEL, self.model.name), version=name_option(META_MODEL_VERSION, self.model.version)
        )
        if problems:
            raise InvalidRequestError("; ".join(problems))
        return replace(self, top_k=top_k, model=model)


def _check_available(available_sinks: Any) -> tuple[str, ...]:
    if isinstance(available_sinks, str) or not isinstance(available_sinks, Sequence):
        raise InvalidRequestError(f"available_sinks must be a list of sink names, got {_describe(available_sinks)}")
    for name in available_sinks:
        if not isinstance(name, str) or not _SINK_RE.match(name):
            raise InvalidRequestError(f"available_sinks holds an invalid sink name {_describe(name)}")
    return tuple(available_sinks)


@dataclass(frozen=True)
class TensorRef:
    """Where a preprocessed ``n×3×H×W`` float32 tensor was stored (an ``.npy`` object, n >= 1)."""

    bucket: str
    key: str
    shape: tuple[int, int, int, int]
    dtype: str = TENSOR_DTYPE

    def __post_init__(self) -> None:
        check_bucket(self.bucket, "tensor.bucket")
        check_key(self.key, "tensor.key")
        shape = self.shape
        if (
            not isinstance(shape, tuple)
            or len(shape) != 4
            or any(isinstance(d, bool) or not isinstance(d, int) or d <= 0 for d in shape)
            or shape[1] != 3
        ):
            raise InvalidRequestError(f"tensor.shape={_describe(shape)} must be [n, 3, H, W] with n, H, W > 0")
        if self.dtype != TENSOR_DTYPE:
            raise InvalidRequestError(f"tensor.dtype={_describe(self.dtype)} must be {TENSOR_DTYPE!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"bucket": self.bucket, "key": self.key, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_dict(cls, data: Any, where: str = "tensor") -> TensorRef:
        data = _check_mapping(data, where)
        _require(data, ("bucket", "key", "shape", "dtype"), where)
        shape = data["shape"]
        if isinstance(shape, str) or not isinstance(shape, Sequence):
            raise InvalidRequestError(f"{where}.shape={_describe(shape)} must be [1, 3, H, W]")
        return cls(bucket=data["bucket"], key=data["key"], shape=tuple(shape), dtype=data["dtype"])


@dataclass(frozen=True)
class Job:
    """The preprocess task's output (``$.job``): the located source, the resolved model, the tensor."""

    source: SourceObject
    model: ModelRef  # resolved: an exact version, never an alias
    tensor: TensorRef
    sinks: tuple[str, ...]
    top_k: int
    timings_ms: Mapping[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source.to_dict(),
            "model": self.model.to_dict(),
            "tensor": self.tensor.to_dict(),
            "sinks": list(self.sinks),
            "top_k": self.top_k,
            "timings_ms": {k: round(float(v), 1) for k, v in self.timings_ms.items()},
        }

    @classmethod
    def from_dict(cls, data: Any) -> Job:
        """Parse ``$.job``; unknown keys are ignored, missing or malformed ones raise InvalidRequestError."""
        data = _check_mapping(data, "job")
        _require(data, ("source", "model", "tensor", "sinks", "top_k"), "job")
        sinks = data["sinks"]
        if (
            isinstance(sinks, str)
            or not isinstance(sinks, Sequence)
            or not sinks
            or not all(isinstance(s, str) for s in sinks)
        ):
            raise InvalidRequestError(f"job.sinks={_describe(sinks)} must be a non-empty list of sink names")
        timings = _check_mapping(data.get("timings_ms", {}), "job.timings_ms")
        if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in timings.values()):
            raise InvalidRequestError("job.timings_ms must map stage names to numbers")
        return cls(
            source=SourceObject.from_dict(data["source"], "job.source"),
            model=ModelRef.from_dict(data["model"], "job.model"),
            tensor=TensorRef.from_dict(data["tensor"], "job.tensor"),
            sinks=tuple(sinks),
            top_k=_check_int(data["top_k"], "job.top_k", 1, MAX_TOP_K),
            timings_ms={str(k): float(v) for k, v in timings.items()},
        )


__all__ = [
    "MAX_KEY_BYTES",
    "MAX_TOP_K",
    "META_MODEL",
    "META_MODEL_VERSION",
    "META_TOP_K",
    "REQUEST_KEYS",
    "Job",
    "ModelRef",
    "Request",
    "SourceObject",
    "TensorRef",
    "check_bucket",
    "check_key",
]
