"""The model package format: what ``manifest.json`` says and how it is checked.

A model package is a folder (locally) or an S3 prefix (in the model bucket) holding::

    manifest.json        this file's JSON form, written last when publishing
    model-symbol.json    the MXNet symbol (network graph); its input is named "data"
    model-0000.params    the MXNet parameters (arg:/aux: prefixed, as HybridBlock.export writes)
    labels.txt           one class label per line, line i is output index i

Example ``manifest.json``::

    {
      "format_version": 1,
      "name": "demo", "version": "3f9a1c0b7d2e",
      "framework": "mxnet", "framework_version": "1.9.1",
      "architecture": "resnet10_v1", "inference_mode": "fp32",
      "num_classes": 8,
      "input": {"height": 64, "width": 64, "resize_shorter": 64, "interpolation": "bilinear",
                "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
      "files": {"symbol": {"path": "model-symbol.json", "sha256": "…", "size": 12345}, …},
      "created": "2026-11-29T04:00:00Z", "source": "inferpipe demo trainer (seed 0)",
      "metrics": {"top1_heldout": 0.99}
    }

Preprocessing contract: decode to RGB, resize so the shorter side is ``resize_shorter`` pixels
(``interpolation``), centre-crop ``height`` × ``width``, scale to [0, 1], subtract ``mean`` and
divide by ``std`` per channel, lay out as ``N×3×H×W`` float32.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from functions.common.errors import ModelIntegrityError

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
SYMBOL_FILE = "model-symbol.json"
PARAMS_FILE = "model-0000.params"
LABELS_FILE = "labels.txt"
#: role -> file name of every file a package holds besides the manifest.
PACKAGE_FILES: dict[str, str] = {"symbol": SYMBOL_FILE, "params": PARAMS_FILE, "labels": LABELS_FILE}
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos")
INFERENCE_MODES = ("fp32", "fused", "int8")


@dataclass(frozen=True)
class InputSpec:
    """How an image becomes the network's input tensor."""

    height: int
    width: int
    resize_shorter: int
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def __post_init__(self) -> None:
        if min(self.height, self.width) <= 0:
            raise ModelIntegrityError(f"manifest input size {self.height}x{self.width} must be positive")
        if self.resize_shorter < min(self.height, self.width):
            raise ModelIntegrityError(
                f"manifest input.resize_shorter={self.resize_shorter} is smaller than the crop "
                f"{self.height}x{self.width}"
            )
        if self.interpolation not in INTERPOLATIONS:
            raise ModelIntegrityError(
                f"manifest input.interpolation={self.interpolation!r} is not one of {INTERPOLATIONS}"
            )
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ModelIntegrityError("manifest input.mean and input.std need 3 values, std > 0")


@dataclass(frozen=True)
class FileEntry:
    """One file of the package, as published."""

    path: str
    sha256: str
    size: int


@dataclass(frozen=True)
class Manifest:
    """Everything needed to load, verify and feed a model package."""

    name: str
    version: str
    architecture: str
    num_classes: int
    input: InputSpec
    files: Mapping[str, FileEntry]
    created: str
    source: str
    framework: str = "mxnet"
    framework_version: str = "1.9.1"
    inference_mode: str = "fp32"
    format_version: int = FORMAT_VERSION
    metrics: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["input"]["mean"] = list(self.input.mean)
        data["input"]["std"] = list(self.input.std)
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def with_version(self, version: str) -> Manifest:
        return replace(self, version=version)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Manifest:
        """Parse and check a manifest; every problem names the field at fault."""
        try:
            if data.get("format_version") != FORMAT_VERSION:
                raise ModelIntegrityError(
                    f"manifest format_version={data.get('format_version')!r}, expected {FORMAT_VERSION}"
                )
            raw_input = data["input"]
            spec = InputSpec(
                height=int(raw_input["height"]),
                width=int(raw_input["width"]),
                resize_shorter=int(raw_input["resize_shorter"]),
                interpolation=str(raw_input.get("interpolation", "bilinear")),
                mean=tuple(float(v) for v in raw_input["mean"]),  # type: ignore[arg-type]
                std=tuple(float(v) for v in raw_input["std"]),  # type: ignore[arg-type]
            )
            files = {}
            for role in PACKAGE_FILES:
                entry = data["files"][role]
                files[role] = FileEntry(path=str(entry["path"]), sha256=str(entry["sha256"]), size=int(entry["size"]))
            manifest = cls(
                name=str(data["name"]),
                version=str(data.get("version", "")),
                architecture=str(data["architecture"]),
                num_classes=int(data["num_classes"]),
                input=spec,
                files=files,
                created=str(data["created"]),
                source=str(data.get("source", "")),
                framework=str(data.get("framework", "mxnet")),
                framework_version=str(data.get("framework_version", "")),
                inference_mode=str(data.get("inference_mode", "fp32")),
                format_version=FORMAT_VERSION,
                metrics=dict(data.get("metrics", {})),
            )
        except KeyError as missing:
            raise ModelIntegrityError(f"manifest is missing field {missing}") from None
        except (TypeError, ValueError) as bad:
            raise ModelIntegrityError(f"manifest has a malformed field: {bad}") from None
        if manifest.framework != "mxnet":
            raise ModelIntegrityError(f"manifest framework={manifest.framework!r}, only 'mxnet' is served")
        if manifest.inference_mode not in INFERENCE_MODES:
            raise ModelIntegrityError(
                f"manifest inference_mode={manifest.inference_mode!r} is not one of {INFERENCE_MODES}"
            )
        if manifest.num_classes <= 0:
            raise ModelIntegrityError("manifest num_classes must be > 0")
        return manifest

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        try:
            data = json.loads(text)
        except ValueError as bad:
            raise ModelIntegrityError(f"manifest.json is not valid JSON: {bad}") from None
        if not isinstance(data, dict):
            raise ModelIntegrityError("manifest.json must hold a JSON object")
        return cls.from_dict(data)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_file(role: str, entry: FileEntry, data: bytes) -> None:
    """Raise ModelIntegrityError unless ``data`` is exactly the file the manifest describes."""
    if len(data) != entry.size:
        raise ModelIntegrityError(f"{role} file {entry.path}: {len(data)} bytes, manifest says {entry.size}")
    actual = sha256_bytes(data)
    if actual != entry.sha256:
        raise ModelIntegrityError(
            f"{role} file {entry.path}: sha256 {actual[:12]}…, manifest says {entry.sha256[:12]}…"
        )


def content_version(files: Mapping[str, FileEntry], inference_mode: str) -> str:
    """The version id of a package: derived from its content, so publishing twice is a no-op."""
    digest = hashlib.sha256(inference_mode.encode())
    for role in sorted(files):
        digest.update(f"{role}:{files[role].sha256}\n".encode())
    return digest.hexdigest()[:12]


def parse_labels(data: bytes) -> list[str]:
    """Labels from ``labels.txt``: one per line, no blank lines."""
    try:
        lines = data.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise ModelIntegrityError("labels.txt is not UTF-8 text") from None
    labels = [line.strip() for line in lines]
    if not labels or any(not label for label in labels):
        raise ModelIntegrityError("labels.txt must hold one non-empty label per line")
    return labels
