"""Read side of the versioned model bucket: resolve a version or alias to a manifest, fetch verified files.

Layout of the model bucket (written by ``inferpipe.models.publish``)::

    models/{name}/versions/{version}/manifest.json     written last: without it the version does not exist
    models/{name}/versions/{version}/model-symbol.json, model-0000.params, labels.txt
    models/{name}/aliases/{alias}.json                 {"version": "3f9a1c0b7d2e", "updated": "2026-…Z"}

Versions are content hashes, so a published version never changes: its manifest is checked
against its version (the hash of the files it lists) when read, then cached in process. Aliases
move, so they are read every time.

Example::

    store = ModelStore("inferpipe-models-123456789012-us-east-1")
    manifest = store.resolve("demo", "prod")          # alias -> Manifest with the exact .version
    files = store.fetch_files(manifest)               # {"symbol": b"...", "params": b"...", "labels": b"..."}
"""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from typing import Any

from botocore.exceptions import ClientError

from functions.common import aws
from functions.common.aws import is_not_found, read_object  # is_not_found: for inferpipe.models too
from functions.common.errors import InvalidRequestError, ModelIntegrityError, ModelNotFoundError
from functions.common.manifest import MANIFEST_FILE, Manifest, content_version, verify_file

ROOT = "models/"
#: Model names, versions and aliases become S3 key segments: no '/', no leading dot.
SAFE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_SAFE_FILE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_MAX_MANIFEST_BYTES = 1 << 20  # a manifest is a few KB; refuse to read a huge object as one
_MAX_ALIAS_BYTES = 64 << 10
_MANIFEST_CACHE_ENTRIES = 256
_LISTED_MAX = 20  # how many known versions/aliases an error message names


def check_name(value: Any, what: str) -> str:
    """``value`` if it is a safe model name, version or alias, else InvalidRequestError naming it."""
    if not isinstance(value, str) or not SAFE_NAME_RE.match(value):
        shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
        raise InvalidRequestError(
            f"{what} {shown} is not valid: 1-64 characters of letters, digits, '.', '_' and '-', "
            "starting with a letter or digit"
        )
    return value


def model_prefix(name: str) -> str:
    return f"{ROOT}{name}/"


def version_prefix(name: str, version: str) -> str:
    return f"{ROOT}{name}/versions/{version}/"


def manifest_key(name: str, version: str) -> str:
    return f"{version_prefix(name, version)}{MANIFEST_FILE}"


def alias_key(name: str, alias: str) -> str:
    return f"{ROOT}{name}/aliases/{alias}.json"


def _shorten(items: list[str]) -> str:
    if not items:
        return "none"
    shown = ", ".join(items[:_LISTED_MAX])
    return shown + (f" … ({len(items)} in all)" if len(items) > _LISTED_MAX else "")


class ModelStore:
    """Reads published model packages from the model bucket.

    Example::

        store = ModelStore(bucket)                    # default: the process-wide S3 client
        manifest = store.resolve("demo", "3f9a1c0b7d2e")
    """

    def __init__(self, bucket: str, s3: Any | None = None) -> None:
        self.bucket = bucket
        self._s3 = s3
        self._manifests: OrderedDict[tuple[str, str], Manifest] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def s3(self) -> Any:
        # Not pinned: the process-wide client is recreated when the endpoint changes (local stack).
        return self._s3 if self._s3 is not None else aws.client("s3")

    # ------------------------------------------------------------------ reading objects

    def _get(self, key: str, limit: int, what: str) -> bytes | None:
        """The object's bytes (at most ``limit``), None if it does not exist."""
        data = read_object(self.s3, self.bucket, key, limit)
        if data is not None and len(data) > limit:
            raise ModelIntegrityError(f"{what}: s3://{self.bucket}/{key} is larger than {limit} bytes")
        return data

    def published_manifest(self, name: str, version: str) -> Manifest | None:
        """The manifest of an exact version (cached: versions are immutable), None if unpublished."""
        with self._lock:
            cached = self._manifests.get((name, version))
            if cached is not None:
                self._manifests.move_to_end((name, version))
                return cached
        data = self._get(manifest_key(name, version), _MAX_MANIFEST_BYTES, f"model {name} version {version}")
        if data is None:
            return None
        manifest = Manifest.from_json(data)
        if manifest.name != name or manifest.version != version:
            raise ModelIntegrityError(
                f"s3://{self.bucket}/{manifest_key(name, version)} describes model {manifest.name} "
                f"version {manifest.version}, not {name} version {version}"
            )
        # A version id is the hash of its files' hashes (and inference mode): a manifest overwritten
        # with other files' hashes would serve other weights under an "immutable" version.
        expected = content_version(manifest.files, manifest.inference_mode)
        if expected != version:
            raise ModelIntegrityError(
                f"s3://{self.bucket}/{manifest_key(name, version)} lists files whose content hash is {expected}, "
                f"not its version {version}: the manifest was changed after publishing; republish the package"
            )
        with self._lock:
            self._manifests[(name, version)] = manifest
            while len(self._manifests) > _MANIFEST_CACHE_ENTRIES:
                self._manifests.popitem(last=False)
        return manifest

    def alias_target(self, name: str, alias: str) -> str | None:
        """The version an alias points at, None if there is no such alias."""
        data = self._get(alias_key(name, alias), _MAX_ALIAS_BYTES, f"model {name} alias {alias}")
        if data is None:
            return None
        try:
            version = json.loads(data)["version"]
        except (ValueError, KeyError, TypeError):
            raise ModelIntegrityError(
                f's3://{self.bucket}/{alias_key(name, alias)} is not an alias document {{"version": "…"}}'
            ) from None
        if not isinstance(version, str) or not SAFE_NAME_RE.match(version):
            raise ModelIntegrityError(f"model {name} alias {alias} points at an invalid version {version!r}")
        return version

    # ------------------------------------------------------------------ public API

    def resolve(self, name: str, version_or_alias: str) -> Manifest:
        """The manifest of ``name`` at an exact version or, failing that, at what an alias points to.

        Raises ModelNotFoundError naming the model, what was asked and what exists.

        Example::

            store.resolve("demo", "prod").version   # '3f9a1c0b7d2e'
        """
        check_name(name, "model name")
        check_name(version_or_alias, f"model {name} version or alias")
        manifest = self.published_manifest(name, version_or_alias)
        if manifest is not None:
            return manifest
        target = self.alias_target(name, version_or_alias)
        if target is not None:
            manifest = self.published_manifest(name, target)
            if manifest is None:
                raise ModelNotFoundError(
                    f"model {name} alias {version_or_alias} points at version {target}, which is not published "
                    f"(no {manifest_key(name, target)})"
                )
            return manifest
        raise ModelNotFoundError(self._not_found_message(name, version_or_alias))

    def fetch_files(self, manifest: Manifest) -> dict[str, bytes]:
        """Every package file (role -> bytes), each checked against the manifest's size and sha256.

        Example::

            files = store.fetch_files(manifest)
            len(files["params"]) == manifest.files["params"].size   # True, or ModelIntegrityError
        """
        files: dict[str, bytes] = {}
        what = f"model {manifest.name} version {manifest.version}"
        for role, entry in manifest.files.items():
            if not _SAFE_FILE_RE.match(entry.path):
                raise ModelIntegrityError(f"{what}: manifest file path {entry.path!r} is not a plain file name")
            key = version_prefix(manifest.name, manifest.version) + entry.path
            data = self._get(key, entry.size, what)  # never more than the manifest's size
            if data is None:
                raise ModelIntegrityError(
                    f"{what}: the manifest lists {role} file {entry.path}, but s3://{self.bucket}/{key} is missing"
                )
            try:
                verify_file(role, entry, data)
            except ModelIntegrityError as bad:
                raise ModelIntegrityError(f"{what}: {bad} (s3://{self.bucket}/{key}); refusing to load it") from None
            files[role] = data
        return files

    def _not_found_message(self, name: str, asked: str) -> str:
        """What was asked and, from one listing, what exists (published versions and aliases)."""
        try:
            versions, aliases = self._known(name)
        except Exception as exc:  # noqa: BLE001  (the listing is a courtesy: never hide the real answer behind it)
            if isinstance(exc, ClientError) and aws.error_code(exc) == "NoSuchBucket":
                return f"the model bucket {self.bucket} does not exist (check MODEL_BUCKET): no model {name} {asked!r}"
            return f"model {name} has no published version or alias {asked!r}"
        if not versions and not aliases:
            try:
                models = self._known_models()
            except Exception:  # noqa: BLE001  (the same courtesy listing)
                models = []
            return f"no model named {name!r} is published in {self.bucket}; published models: {_shorten(models)}"
        return (
            f"model {name} has no published version or alias {asked!r}; "
            f"aliases: {_shorten(aliases)}; versions: {_shorten(versions)}"
        )

    def _known(self, name: str) -> tuple[list[str], list[str]]:
        """(published versions, aliases) of a model, from the first 1000 keys."""
        response = self.s3.list_objects_v2(Bucket=self.bucket, Prefix=model_prefix(name), MaxKeys=1000)
        versions, aliases = [], []
        versions_part, aliases_part = f"{ROOT}{name}/versions/", f"{ROOT}{name}/aliases/"
        for item in response.get("Contents", []):
            key = item["Key"]
            if key.startswith(versions_part) and key.endswith("/" + MANIFEST_FILE):
                versions.append(key[len(versions_part) : -len(MANIFEST_FILE) - 1])
            elif key.startswith(aliases_part) and key.endswith(".json"):
                aliases.append(key[len(aliases_part) : -len(".json")])
        return sorted(versions), sorted(aliases)

    def _known_models(self) -> list[str]:
        response = self.s3.list_objects_v2(Bucket=self.bucket, Prefix=ROOT, Delimiter="/", MaxKeys=1000)
        return sorted(p["Prefix"][len(ROOT) : -1] for p in response.get("CommonPrefixes", []))


_stores_lock = threading.Lock()


def cached_store(stores: dict[str, ModelStore], bucket: str) -> ModelStore:
    """``stores[bucket]``, created on first use.

    A handler keeps ``stores`` at module level, so a warm Lambda reuses its stores (and their
    manifest caches) from one invocation to the next; clearing or replacing it is a cold start.

    Example::

        _stores: dict[str, ModelStore] = {}
        manifest = cached_store(_stores, bucket).resolve("demo", "prod")
    """
    with _stores_lock:
        store = stores.get(bucket)
        if store is None:
            store = stores[bucket] = ModelStore(bucket)
        return store


__all__ = ["ModelStore", "alias_key", "cached_store", "check_name", "is_not_found", "manifest_key", "version_prefix"]
