"""Model packages on disk (tooling, not in the Lambda image): export a network, import files or a
model-zoo network, read and validate a package folder. Publishing one is inferpipe.models.

Example::

    manifest = export_package(net, labels, InputSpec(64, 64, 64), Path("build/m"), name="demo",
                              architecture="resnet10_v1", source="my trainer", metrics={})
    manifest, files = load_package_dir(Path("build/m"))
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import mxnet as mx
from mxnet import gluon

from functions.common.errors import ModelIntegrityError, ModelNotFoundError
from functions.common.manifest import (
    INFERENCE_MODES,
    LABELS_FILE,
    MANIFEST_FILE,
    PACKAGE_FILES,
    FileEntry,
    InputSpec,
    Manifest,
    content_version,
    parse_labels,
    sha256_bytes,
    verify_file,
)
from functions.common.model_store import check_name
from functions.inference.core import load_model
from inferpipe.present import utc_seconds

#: The preprocessing the Gluon model-zoo ImageNet networks were trained with.
IMAGENET_SPEC = InputSpec(
    height=224,
    width=224,
    resize_shorter=256,
    interpolation="bilinear",
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
)
_EXPORT_PREFIX = "model"  # HybridBlock.export(prefix) writes model-symbol.json and model-0000.params


class PretrainedWeightsUnavailableError(RuntimeError):
    """The model zoo's pretrained weights could not be downloaded (they need internet access)."""


def _entry(path: str, data: bytes) -> FileEntry:
    return FileEntry(path=path, sha256=sha256_bytes(data), size=len(data))


def export_package(
    net: gluon.HybridBlock,
    labels: Sequence[str],
    spec: InputSpec,
    out_dir: Path,
    *,
    name: str,
    architecture: str,
    source: str,
    metrics: Mapping[str, Any] | None = None,
) -> Manifest:
    """Write ``net`` as a package folder (symbol, params, labels, manifest) and return its manifest.

    The network is hybridized and run once on a blank ``1×3×H×W`` input, which fixes its graph;
    its output must have one score per label. The version is derived from the content.

    Example::

        export_package(net, ["cat", "dog"], InputSpec(32, 32, 32), Path("build/pets"), name="pets",
                       architecture="resnet10_v1", source="notebook", metrics={"top1": 0.9})
    """
    check_name(name, "model name")
    labels = [str(label) for label in labels]
    if not labels or any(not label.strip() or "\n" in label or label != label.strip() for label in labels):
        raise ModelIntegrityError("labels must be non-empty single-line strings without surrounding spaces")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    net.hybridize()
    output = net(mx.nd.zeros((1, 3, spec.height, spec.width)))
    if output.shape != (1, len(labels)):
        raise ModelIntegrityError(
            f"the network outputs shape {list(output.shape)} for a [1, 3, {spec.height}, {spec.width}] input, "
            f"but there are {len(labels)} labels"
        )
    net.export(str(out_dir / _EXPORT_PREFIX), epoch=0)
    (out_dir / LABELS_FILE).write_text("\n".join(labels) + "\n", encoding="utf-8")
    files = {role: _entry(path, (out_dir / path).read_bytes()) for role, path in PACKAGE_FILES.items()}
    manifest = Manifest(
        name=name,
        version=content_version(files, "fp32"),
        architecture=architecture,
        num_classes=len(labels),
        input=spec,
        files=files,
        created=utc_seconds(),
        source=source,
        framework_version=mx.__version__,
        inference_mode="fp32",
        metrics=dict(metrics or {}),
    )
    (out_dir / MANIFEST_FILE).write_text(manifest.to_json(), encoding="utf-8")
    return manifest


def load_package_dir(path: Path) -> tuple[Manifest, dict[str, bytes]]:
    """Read and fully validate a package folder: manifest, files, checksums, labels, a test forward pass.

    Raises ModelIntegrityError naming the missing or wrong piece.

    Example::

        manifest, files = load_package_dir(Path("build/demo-model"))
    """
    path = Path(path)
    if not path.is_dir():
        raise ModelIntegrityError(f"{path} is not a folder holding a model package")
    manifest_path = path / MANIFEST_FILE
    if not manifest_path.is_file():
        raise ModelIntegrityError(
            f"{path} has no {MANIFEST_FILE}: not a model package (see functions/common/manifest.py)"
        )
    manifest = Manifest.from_json(manifest_path.read_bytes())
    files: dict[str, bytes] = {}
    for role, entry in manifest.files.items():
        file_path = path / entry.path
        if Path(entry.path).name != entry.path or not file_path.is_file():
            raise ModelIntegrityError(f"{path}: the manifest lists {role} file {entry.path!r}, which is missing")
        data = file_path.read_bytes()
        verify_file(role, entry, data)
        files[role] = data
    labels = parse_labels(files["labels"])
    if len(labels) != manifest.num_classes:
        raise ModelIntegrityError(
            f"{path}: {LABELS_FILE} has {len(labels)} labels, manifest num_classes is {manifest.num_classes}"
        )
    load_model(manifest, files)  # runs the symbol: output size == labels, a blank input gives finite scores
    return manifest, files


def import_files(
    symbol: Path,
    params: Path,
    labels: Path,
    out_dir: Path,
    *,
    name: str,
    spec: InputSpec = IMAGENET_SPEC,
    architecture: str = "custom",
    source: str | None = None,
    inference_mode: str = "fp32",
) -> Manifest:
    """Package files a user exported (``HybridBlock.export`` or ``Module.save_checkpoint``) plus labels.

    The symbol's input must be named ``data``; the params file holds ``arg:``/``aux:`` names;
    ``labels`` has one class per line, line i naming output i. Everything is checked (the params
    cover the symbol, one output per label, a finite test forward pass on a blank input) before
    anything is written; the manifest is written last. Raises ModelIntegrityError naming the problem.

    Example::

        import_files(Path("net-symbol.json"), Path("net-0000.params"), Path("classes.txt"),
                     Path("build/net"), name="net", spec=InputSpec(224, 224, 256))
    """
    check_name(name, "model name")
    if inference_mode not in INFERENCE_MODES:
        raise ModelIntegrityError(f"inference mode {inference_mode!r} is not one of {INFERENCE_MODES}")
    data: dict[str, bytes] = {}
    for role, given in (("symbol", symbol), ("params", params), ("labels", labels)):
        path = Path(given)
        if not path.is_file():
            raise ModelIntegrityError(f"the {role} file {path} does not exist (or is not a file)")
        data[role] = path.read_bytes()
    label_list = parse_labels(data["labels"])
    data["labels"] = ("\n".join(label_list) + "\n").encode("utf-8")
    files = {role: _entry(PACKAGE_FILES[role], data[role]) for role in PACKAGE_FILES}
    manifest = Manifest(
        name=name,
        version=content_version(files, inference_mode),
        architecture=architecture,
        num_classes=len(label_list),
        input=spec,
        files=files,
        created=utc_seconds(),
        source=source or f"imported from {Path(symbol).name}, {Path(params).name}, {Path(labels).name}",
        framework_version=mx.__version__,
        inference_mode=inference_mode,
        metrics={},
    )
    load_model(manifest, data)  # raises ModelIntegrityError before anything is written
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST_FILE).unlink(missing_ok=True)  # never leave an old manifest beside new files
    for role, entry in files.items():
        (out_dir / entry.path).write_bytes(data[role])
    (out_dir / MANIFEST_FILE).write_text(manifest.to_json(), encoding="utf-8")
    return manifest


# ---------------------------------------------------------------------------- Gluon model zoo


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _download_failed(name: str, exc: BaseException) -> str:
    return (
        f"could not download the pretrained weights of {name} from the MXNet model zoo: this needs internet "
        f"access (without it, import with random weights instead): {type(exc).__name__}: {_first_line(exc)}"
    )


def import_model_zoo(
    name: str,
    pretrained: bool,
    out_dir: Path,
    *,
    labels: Sequence[str] | None = None,
    seed: int = 0,
    package_name: str | None = None,
    spec: InputSpec = IMAGENET_SPEC,
) -> Manifest:
    """Package a Gluon model-zoo ImageNet network (e.g. ``resnet50_v1``), by default with the ImageNet input spec.

    ``pretrained=True`` downloads the zoo's weights (internet access needed); ``pretrained=False``
    uses seeded random weights, which is what the benchmarks need. Labels default to
    ``class_0`` … ``class_999`` (the ImageNet class names are not bundled with MXNet).

    Example::

        import_model_zoo("resnet50_v1", pretrained=False, out_dir=Path("build/resnet50"))
    """
    from mxnet.gluon.model_zoo.vision import get_model

    labels = list(labels) if labels is not None else [f"class_{i}" for i in range(1000)]
    if pretrained:
        try:
            # The weights cache is $MXNET_HOME/models, read now (the zoo's default is fixed at import).
            net = get_model(name, pretrained=True, root=os.path.join(mx.base.data_dir(), "models"))
        except ValueError as exc:
            if "not supported" in str(exc):
                raise ModelNotFoundError(f"{name!r} is not a Gluon model-zoo network: {_first_line(exc)}") from None
            raise PretrainedWeightsUnavailableError(_download_failed(name, exc)) from exc
        except Exception as exc:  # urllib/requests/OSError: no way to reach the model zoo
            raise PretrainedWeightsUnavailableError(_download_failed(name, exc)) from exc
    else:
        mx.random.seed(seed)
        try:
            net = get_model(name, pretrained=False, classes=len(labels))
        except ValueError as exc:
            raise ModelNotFoundError(f"{name!r} is not a Gluon model-zoo network: {_first_line(exc)}") from None
        net.initialize(mx.init.Xavier(magnitude=2.0), ctx=mx.cpu())
    weights = "pretrained ImageNet weights" if pretrained else f"random weights, seed {seed}"
    return export_package(
        net,
        labels,
        spec,
        Path(out_dir),
        name=package_name or name,
        architecture=name,
        source=f"Gluon model zoo {name} ({weights})",
        metrics={},
    )


__all__ = [
    "IMAGENET_SPEC",
    "PretrainedWeightsUnavailableError",
    "export_package",
    "import_files",
    "import_model_zoo",
    "load_package_dir",
]
