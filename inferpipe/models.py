"""Write side of the model bucket (tooling, not in the Lambda image): export, validate, publish, alias, list.

Example::

    manifest = export_package(net, labels, InputSpec(64, 64, 64), Path("build/m"), name="demo",
                              architecture="resnet10_v1", source="my trainer", metrics={})
    published = publish(s3, bucket, Path("build/m"), name="demo", alias="prod")
    set_alias(s3, bucket, "demo", "prod", published.version)
    list_versions(s3, bucket, "demo")   # [{"name": "demo", "version": "…", "created": "…", "size": 123, "aliases": ["prod"]}]
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mxnet as mx
from botocore.exceptions import ClientError
from mxnet import gluon

from functions.common.errors import InvalidRequestError, ModelIntegrityError, ModelNotFoundError
from functions.common.manifest import (
    INFERENCE_MODES,
    LABELS_FILE,
    MANIFEST_FILE,
    PACKAGE_FILES,
    PARAMS_FILE,
    SYMBOL_FILE,
    FileEntry,
    InputSpec,
    Manifest,
    content_version,
    parse_labels,
    sha256_bytes,
    verify_file,
)
from functions.common.model_store import (
    ROOT,
    ModelStore,
    alias_key,
    check_name,
    is_not_found,
    manifest_key,
    version_prefix,
)
from functions.inference.core import load_model

#: The preprocessing the Gluon model-zoo ImageNet networks were trained with.
IMAGENET_SPEC = InputSpec(
    height=224,
    width=224,
    resize_shorter=256,
    interpolation="bilinear",
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
)
_CONTENT_TYPES = {
    SYMBOL_FILE: "application/json",
    PARAMS_FILE: "application/octet-stream",
    LABELS_FILE: "text/plain; charset=utf-8",
}
_EXPORT_PREFIX = "model"  # HybridBlock.export(prefix) writes model-symbol.json and model-0000.params


class PretrainedWeightsUnavailableError(RuntimeError):
    """The model zoo's pretrained weights could not be downloaded (they need internet access)."""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _entry(path: str, data: bytes) -> FileEntry:
    return FileEntry(path=path, sha256=sha256_bytes(data), size=len(data))


# ---------------------------------------------------------------------------- local packages


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
        created=_now(),
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
    for role, path in (("symbol", symbol), ("params", params), ("labels", labels)):
        path = Path(path)
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
        created=_now(),
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


# ---------------------------------------------------------------------------- the model bucket


def _exists(s3: Any, bucket: str, key: str) -> bool:
    try:
        s3.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if is_not_found(exc):
            return False
        raise
    return True


@dataclass(frozen=True)
class PublishResult:
    """What ``publish_package`` did: the published manifest, whether it uploaded anything, S3 versions."""

    manifest: Manifest
    created: bool  # False: this content was already published under this name (nothing uploaded)
    manifest_key: str
    manifest_version_id: str | None  # the S3 object version of manifest.json (None: bucket not versioned)


def publish_package(
    s3: Any,
    bucket: str,
    package_dir: Path,
    *,
    name: str,
    alias: str | None = None,
    validated: tuple[Manifest, Mapping[str, bytes]] | None = None,
) -> PublishResult:
    """``publish`` that also says whether a version was created and the manifest's S3 version id.

    ``validated`` is what ``load_package_dir(package_dir)`` returned, when the caller already ran it.

    Example::

        result = publish_package(s3, bucket, Path("build/demo-model"), name="demo")
        result.manifest.version, result.created, result.manifest_version_id
    """
    check_name(name, "model name")
    if alias is not None:
        _check_alias(alias)
    manifest, files = validated if validated is not None else load_package_dir(package_dir)
    manifest = replace(manifest, name=name, version=content_version(manifest.files, manifest.inference_mode))
    key = manifest_key(name, manifest.version)
    existing = ModelStore(bucket, s3).published_manifest(name, manifest.version)
    created = existing is None
    version_id: str | None
    if existing is not None:
        manifest = existing  # already published: same content, keep its manifest as it is
        version_id = s3.head_object(Bucket=bucket, Key=key).get("VersionId")
    else:
        prefix = version_prefix(name, manifest.version)
        for role, entry in manifest.files.items():
            s3.put_object(
                Bucket=bucket,
                Key=prefix + entry.path,
                Body=files[role],
                ContentType=_CONTENT_TYPES.get(entry.path, "application/octet-stream"),
            )
        # The manifest last: until it exists, readers do not see this version at all.
        answer = s3.put_object(
            Bucket=bucket,
            Key=key,
            Body=manifest.to_json().encode("utf-8"),
            ContentType="application/json",
        )
        version_id = answer.get("VersionId")
    if alias is not None:
        set_alias(s3, bucket, name, alias, manifest.version)
    return PublishResult(manifest=manifest, created=created, manifest_key=key, manifest_version_id=version_id)


def publish(s3: Any, bucket: str, package_dir: Path, *, name: str, alias: str | None = None) -> Manifest:
    """Validate a package folder and publish it as ``name``; move ``alias`` to it when given.

    Files are uploaded first and the manifest last, so readers never see a half-published
    version. The version is the content hash: publishing the same content again uploads nothing
    and returns the same version.

    Example::

        publish(s3, "inferpipe-models-…", Path("build/demo-model"), name="demo", alias="prod").version
    """
    return publish_package(s3, bucket, package_dir, name=name, alias=alias).manifest


def _check_alias(alias: str) -> str:
    check_name(alias, "alias")
    if len(alias) == 12 and all(c in "0123456789abcdef" for c in alias):
        raise InvalidRequestError(f"alias {alias!r} looks like a version id; choose a name such as 'prod' or 'canary'")
    return alias


def set_alias(s3: Any, bucket: str, name: str, alias: str, version: str) -> None:
    """Point ``alias`` of model ``name`` at a published ``version``.

    Example::

        set_alias(s3, bucket, "demo", "prod", "3f9a1c0b7d2e")
    """
    check_name(name, "model name")
    _check_alias(alias)
    check_name(version, "version")
    if not _exists(s3, bucket, manifest_key(name, version)):
        raise ModelNotFoundError(f"model {name} has no published version {version}: alias {alias} not moved")
    body = json.dumps({"version": version, "updated": _now()}).encode("utf-8")
    s3.put_object(Bucket=bucket, Key=alias_key(name, alias), Body=body, ContentType="application/json")


def list_versions(s3: Any, bucket: str, name: str | None = None) -> list[dict[str, Any]]:
    """Published versions (those with a manifest): name, version, created (publish time), size, aliases.

    ``size`` is the bytes of the version's files, manifest included. Sorted by name, then oldest first.

    Example::

        list_versions(s3, bucket, "demo")
        # [{"name": "demo", "version": "3f9a1c0b7d2e", "created": "2026-…Z", "size": 1431655, "aliases": ["prod"]}]
    """
    prefix = ROOT if name is None else f"{ROOT}{check_name(name, 'model name')}/"
    sizes: dict[tuple[str, str], int] = {}
    published: dict[tuple[str, str], str] = {}
    alias_keys: list[tuple[str, str]] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            parts = item["Key"][len(ROOT) :].split("/")
            if len(parts) == 4 and parts[1] == "versions":
                key = (parts[0], parts[2])
                sizes[key] = sizes.get(key, 0) + int(item["Size"])
                if parts[3] == MANIFEST_FILE:
                    published[key] = (
                        item["LastModified"].astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
                    )
            elif len(parts) == 3 and parts[1] == "aliases" and parts[2].endswith(".json"):
                alias_keys.append((parts[0], parts[2][: -len(".json")]))
    aliases: dict[tuple[str, str], list[str]] = {}
    store = ModelStore(bucket, s3)
    for model, alias in alias_keys:
        try:
            target = store.alias_target(model, alias)
        except ModelIntegrityError:
            continue  # a broken alias document points nowhere
        if target is not None:
            aliases.setdefault((model, target), []).append(alias)
    rows = [
        {
            "name": model,
            "version": version,
            "created": created,
            "size": sizes[(model, version)],
            "aliases": sorted(aliases.get((model, version), [])),
        }
        for (model, version), created in published.items()
    ]
    return sorted(rows, key=lambda row: (row["name"], row["created"], row["version"]))


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
    "PublishResult",
    "export_package",
    "import_files",
    "import_model_zoo",
    "list_versions",
    "load_package_dir",
    "publish",
    "publish_package",
    "set_alias",
]
