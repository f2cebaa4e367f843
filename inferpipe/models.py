"""The model bucket's registry (tooling, not in the Lambda image): publish a package folder as a
version, point aliases at versions, list what is published. Building a package is inferpipe.packaging.

Example::

    published = publish(s3, bucket, Path("build/m"), name="demo", alias="prod")
    set_alias(s3, bucket, "demo", "prod", published.version)
    list_versions(s3, bucket, "demo")   # [{"name": "demo", "version": "…", "created": "…", "size": 123, "aliases": ["prod"]}]
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from functions.common.errors import InvalidRequestError, ModelIntegrityError, ModelNotFoundError
from functions.common.manifest import LABELS_FILE, MANIFEST_FILE, PARAMS_FILE, SYMBOL_FILE, Manifest, content_version
from functions.common.model_store import (
    ROOT,
    ModelStore,
    alias_key,
    check_name,
    is_not_found,
    manifest_key,
    version_prefix,
)
from inferpipe.packaging import load_package_dir
from inferpipe.present import human_size, table, utc_seconds

_CONTENT_TYPES = {
    SYMBOL_FILE: "application/json",
    PARAMS_FILE: "application/octet-stream",
    LABELS_FILE: "text/plain; charset=utf-8",
}


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


def publish_optimized(
    s3: Any,
    bucket: str,
    package_dir: Path,
    mode: str,
    *,
    name: str,
    alias: str | None = None,
    calibration: Path | None = None,
    heldout: Path | None = None,
    on_optimized: Callable[[Mapping[str, Any]], None] = lambda metrics: None,
) -> Manifest:
    """Publish inference ``mode`` (fused or int8) of the fp32 package ``package_dir`` as its own version.

    ``calibration`` is the folder of images int8 calibrates on; top-1 agreement with fp32 is measured
    on ``heldout`` (default: the calibration images). ``on_optimized`` gets the optimizer's metrics
    before anything is published.
    """
    from inferpipe.optimize import load_images, optimize_package, read_package

    with tempfile.TemporaryDirectory() as tmp:
        spec = read_package(package_dir)[0].input
        images = load_images(heldout, spec) if heldout else None
        out = Path(tmp) / mode
        optimized = optimize_package(package_dir, out, mode, calibration=calibration, heldout=images)
        on_optimized(optimized.metrics)
        return publish(s3, bucket, out, name=name, alias=alias)


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
    body = json.dumps({"version": version, "updated": utc_seconds()}).encode("utf-8")
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
                    published[key] = utc_seconds(item["LastModified"])
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


def format_versions(rows: Sequence[Mapping[str, Any]]) -> str:
    """``list_versions`` as a table: name, version, publish time, size, aliases."""
    lines = [("NAME", "VERSION", "PUBLISHED (UTC)", "SIZE", "ALIASES")]
    lines += [
        (r["name"], r["version"], r["created"], human_size(r["size"]), ", ".join(r["aliases"]) or "-") for r in rows
    ]
    return table(lines, right=(3,))


__all__ = [
    "PublishResult",
    "format_versions",
    "list_versions",
    "publish",
    "publish_optimized",
    "publish_package",
    "set_alias",
]
