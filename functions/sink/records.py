"""Where an object's prediction and failure records live, and which of two versions is newer.

Layout in the output bucket (``<prefix>`` is ``predictions/`` or ``failures/``)::

    <prefix><bucket>/<encoded key>.json                         the key's latest view: the newest version's record
    <prefix>_versions/<bucket>/<encoded key>/<version>.json     each other version's record

Every version with an outcome has exactly one record of each kind it had, in one of the two places
(:func:`find` looks in both); a record moves to its version's entry when a newer version's record
replaces it as the view.

Folders that start with ``_`` cannot be a bucket's name (bucket names start with a letter or a
digit), so they never collide with an object's records.

**Keys are encoded injectively and safely** (:func:`encode_key`, inverse :func:`decode_key`):
``%``, control characters (C0 with NUL, DEL, C1) and ``\\`` become ``%XX``; a ``/`` that would
make an empty segment (leading, trailing, doubled) becomes ``%2F``; a ``.`` or ``..`` segment
becomes ``%2E`` / ``%2E%2E``. So no record path holds a ``..``, ``.`` or empty segment (``aws s3 cp --recursive``
cannot write outside its folder, and ``a/../b`` does not land on ``b``), and two keys never share
a record. Ordinary keys (``photos/cat.jpg``) keep their name. A key too long for S3's 1,024-byte
limit once prefixed is stored by its SHA-256 under ``_long/<bucket>/``.

**Order** (:func:`compare`): S3 events carry a ``sequencer``; "the event notification with the
greater sequencer hexadecimal value is the event that occurred later" for one key, and values of
different lengths are compared after right-padding the shorter with zeros
(https://docs.aws.amazon.com/AmazonS3/latest/userguide/notification-content-structure.html).
Without two sequencers (a hand-typed input names no event), the versions' ``LastModified`` (from
the GetObject that read them) decide. Two different versions that neither tells apart are not
ordered: the view already written stays. A view that carries nothing to order it by (written
before views were ordered) counts as older. An upload to an unversioned bucket (every version
"null") has its record under ``null.<etag>``.

**Latest views** (:func:`publish`): a key's prediction view and failure view never describe a
version older than the newest version that has an outcome. A record of an older version goes to
its version's entry; a newer one replaces the view (the record it replaces is archived to its own
entry first) and retires the other kind's view of an older version the same way; a prediction
also resolves the failure record of its own version. Views are written with S3 conditional writes
(``If-None-Match: *`` first, then ``If-Match`` the ETag read:
https://docs.aws.amazon.com/AmazonS3/latest/userguide/conditional-writes.html) and the other
kind's view deleted only while unchanged (a conditional delete:
https://docs.aws.amazon.com/AmazonS3/latest/userguide/conditional-deletes.html), so two executions
racing on one key cannot both win. The first record of a key costs one PUT and one GET.

Example::

    encode_key("hostile/../photos/cat.jpg")      # 'hostile/%2E%2E/photos/cat.jpg'
    latest_key("predictions/", "in", "a/b.jpg")  # 'predictions/in/a/b.jpg.json'
    version_key("failures/", "in", "a/b.jpg", "3HL4kq")  # 'failures/_versions/in/a/b.jpg/3HL4kq.json'
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote, unquote

from botocore.exceptions import BotoCoreError, ClientError

from functions.common.aws import error_code, http_status, is_not_found, raise_transient
from functions.common.errors import TransientError
from functions.common.log import logger

VERSIONS_FOLDER = "_versions"
LONG_FOLDER = "_long"
#: What S3 calls the version of an object in a bucket that never had versioning.
NULL_VERSION = "null"
MAX_KEY_BYTES = 1024
#: A version id longer than this is named by its hash (real ones are 32 characters).
MAX_VERSION_CHARS = 128
#: Read-compare-write rounds before a key that keeps changing under us is a TransientError.
WRITE_ATTEMPTS = 5
#: What S3 answers a conditional write that lost: 412, or 409 for a concurrent conflicting one.
CONDITION_LOST = frozenset({"PreconditionFailed", "ConditionalRequestConflict"})
PREDICTION = "prediction"
FAILURE = "failure"


def _escape(ch: str) -> str:
    return "".join(f"%{b:02X}" for b in ch.encode("utf-8"))


def encode_key(key: str) -> str:
    """The object key as a safe record path: see the module docstring; ``decode_key`` inverts it."""
    out: list[str] = []
    last = len(key) - 1
    for i, ch in enumerate(key):
        if ch == "/":
            out.append("%2F" if i == 0 or i == last or key[i - 1] == "/" else "/")
        elif ch in "%\\" or ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F:  # C0, DEL and C1 control characters
            out.append(_escape(ch))
        else:
            out.append(ch)
    segments = "".join(out).split("/")
    return "/".join(s.replace(".", "%2E") if s in (".", "..") else s for s in segments)


def decode_key(path: str) -> str:
    """The object key of an encoded record path (every ``%`` in it is an escape)."""
    return unquote(path, errors="strict")


def _version_name(version_id: str | None, etag: str | None = None) -> str:
    if version_id in (None, NULL_VERSION) and etag:
        version_id = f"{NULL_VERSION}.{etag}"  # an unversioned key's every upload has its own record
    name = quote(version_id or NULL_VERSION, safe="")
    # '%h' is never quote()'s output (it escapes every '%'), so a hashed name cannot be a real one's
    return name if len(name) <= MAX_VERSION_CHARS else "%h" + hashlib.sha256(name.encode()).hexdigest()


def _object_path(prefix: str, bucket: str, key: str) -> str:
    path = f"{bucket}/{encode_key(key)}"
    longest = f"{prefix}{VERSIONS_FOLDER}/{path}/{'v' * MAX_VERSION_CHARS}.json"  # the same for every version
    if len(longest.encode("utf-8")) > MAX_KEY_BYTES:
        path = f"{LONG_FOLDER}/{bucket}/{hashlib.sha256(key.encode('utf-8')).hexdigest()}"
    return path


def latest_key(prefix: str, bucket: str, key: str) -> str:
    """``<prefix><bucket>/<encoded key>.json``: the key's latest view."""
    return f"{prefix}{_object_path(prefix, bucket, key)}.json"


def version_key(prefix: str, bucket: str, key: str, version_id: str | None, etag: str | None = None) -> str:
    """``<prefix>_versions/<bucket>/<encoded key>/<version>.json``: one object version's record
    (``null.<etag>`` for an upload to an unversioned bucket, whose versions are all "null")."""
    return f"{prefix}{VERSIONS_FOLDER}/{_object_path(prefix, bucket, key)}/{_version_name(version_id, etag)}.json"


# --------------------------------------------------------------------------- order


@dataclass(frozen=True)
class Version:
    """What tells one version of a key from another, and which is newer."""

    version_id: str | None
    sequencer: str | None = None
    last_modified: str | None = None
    etag: str | None = None

    @classmethod
    def of(cls, source: Mapping[str, Any] | None) -> Version:
        source = source or {}

        def text(name: str) -> str | None:
            value = source.get(name)
            return value if isinstance(value, str) and value else None

        return cls(text("version_id"), text("sequencer"), text("last_modified"), text("etag"))


def _when(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def compare(a: Version, b: Version) -> int | None:
    """1 when ``a`` is the newer version, -1 the older, 0 the same version, None when nothing tells."""
    versioned = a.version_id not in (None, NULL_VERSION) and b.version_id not in (None, NULL_VERSION)
    if versioned and a.version_id == b.version_id:
        return 0
    if a.sequencer and b.sequencer:
        width = max(len(a.sequencer), len(b.sequencer))
        x, y = a.sequencer.upper().ljust(width, "0"), b.sequencer.upper().ljust(width, "0")
        if x != y:
            return 1 if x > y else -1
        return 0  # the same event's upload
    if not versioned and a.etag and a.etag == b.etag and a.last_modified == b.last_modified:
        return 0  # an unversioned key's same upload
    when_a, when_b = _when(a.last_modified or ""), _when(b.last_modified or "")
    if when_a is not None and when_b is not None and when_a != when_b:
        return 1 if when_a > when_b else -1
    return None


# --------------------------------------------------------------------------- latest views


@dataclass(frozen=True)
class Outcome:
    """What :func:`publish` did: the record is the latest view (``written``, or ``unchanged`` when
    the view already held it) or its version's entry (``kept``)."""

    view: str  # "written", "unchanged" or "kept"
    latest_key: str
    version_key: str
    reason: str = ""

    @property
    def key(self) -> str:
        """Where the record is now."""
        return self.version_key if self.view == "kept" else self.latest_key


@dataclass(frozen=True)
class _Stored:
    """An object as read: its parsed record, and what it takes to write the same object elsewhere."""

    record: dict[str, Any]
    etag: str
    body: bytes
    metadata: dict[str, str]


def _body(record: Mapping[str, Any]) -> bytes:
    return json.dumps(record, ensure_ascii=False, indent=2).encode("utf-8")


def _read(s3: Any, bucket: str, key: str) -> _Stored | None:
    try:
        answer = s3.get_object(Bucket=bucket, Key=key)
        body = answer["Body"].read()
    except ClientError as exc:
        if is_not_found(exc):
            return None
        raise
    try:
        record = json.loads(body)
    except ValueError:
        record = {}
    return _Stored(
        record if isinstance(record, dict) else {},
        str(answer.get("ETag") or ""),
        body,
        dict(answer.get("Metadata") or {}),
    )


def _lost(exc: ClientError, conditional: bool) -> bool:
    """A conditional request that lost: 412, 409, or (If-Match on a key deleted meanwhile) 404 NoSuchKey."""
    return error_code(exc) in CONDITION_LOST or http_status(exc) in (409, 412) or (conditional and is_not_found(exc))


def _put(
    s3: Any, bucket: str, key: str, record: Mapping[str, Any], etag: str | None, metadata: Mapping[str, str]
) -> str | None:
    """Write ``record`` at ``key`` if it still has ``etag`` (None: if there is nothing); the new
    ETag, or None when the condition lost."""
    condition = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
    try:
        answer = s3.put_object(
            Bucket=bucket,
            Key=key,
            Body=_body(record),
            ContentType="application/json",
            Metadata=dict(metadata),
            **condition,
        )
    except ClientError as exc:
        if _lost(exc, True):
            return None
        raise
    return str(answer.get("ETag") or "")


def delete(s3: Any, bucket: str, key: str, etag: str | None = None) -> bool:
    """Delete ``key`` (only while it still has ``etag``, when given: a conditional delete,
    https://docs.aws.amazon.com/AmazonS3/latest/userguide/conditional-deletes.html); False if it changed."""
    try:
        s3.delete_object(Bucket=bucket, Key=key, **({"IfMatch": etag} if etag else {}))
    except ClientError as exc:
        if is_not_found(exc):
            return True  # gone already
        if etag and _lost(exc, True):
            return False
        raise
    return True


def _order(mine: Version, existing: Mapping[str, Any]) -> int | None:
    """:func:`compare` of a record with a view; a view that carries nothing to order it by (written
    before views were ordered, or by a run that failed before reading the object) counts as older."""
    theirs = Version.of(existing.get("source"))
    order = compare(mine, theirs)
    if order is None and not (theirs.sequencer or theirs.last_modified):
        return 1
    return order


def _archive(s3: Any, bucket: str, prefix: str, where: tuple[str, str], stored: _Stored) -> str:
    """Write a view's record, byte for byte with its metadata, to its own version's entry (one PUT:
    the bytes read, so a view that changes meanwhile cannot put another version's record there)."""
    theirs = stored.record.get("source") or {}
    key = version_key(prefix, *where, theirs.get("version_id"), theirs.get("etag"))
    s3.put_object(Bucket=bucket, Key=key, Body=stored.body, ContentType="application/json", Metadata=stored.metadata)
    return key


def _keep(s3: Any, bucket: str, outcome: Outcome, record: Mapping[str, Any], metadata: Mapping[str, str]) -> Outcome:
    """Write a record that is not (or no longer) the view to its version's entry."""
    s3.put_object(
        Bucket=bucket,
        Key=outcome.version_key,
        Body=_body(record),
        ContentType="application/json",
        Metadata=dict(metadata),
    )
    logger.info(
        "record of an older version: written to its version's entry, not the latest view",
        extra={
            "record": outcome.version_key,
            "version_id": (record.get("source") or {}).get("version_id") or NULL_VERSION,
            "reason": outcome.reason,
        },
    )
    return outcome


def _held(stored: _Stored) -> str:
    return (stored.record.get("source") or {}).get("version_id") or NULL_VERSION


def publish(
    s3: Any, bucket: str, kind: str, record: Mapping[str, Any], prefixes: Mapping[str, str], metadata: Mapping[str, str]
) -> Outcome:
    """Write ``record`` (``kind`` PREDICTION or FAILURE) as the key's latest view, or to its
    version's entry when a newer version's record is the view. S3 errors other than a lost
    condition propagate.

    The view *is* the newest version's record: a version's entry under ``_versions/`` is written
    only for a record that is not (or no longer) the view -- an older version's record, or a view
    that a newer version's record replaces (it is archived first, byte for byte). So the usual
    case, the first record of a key, costs one PUT (``If-None-Match: *``) and one GET (of the
    other kind's view, almost always absent); a prediction of a key that had a view also deletes
    its version's failure entry (resolved).

    Write first, then look at the other kind's view: two executions racing on one key each do
    the same, and S3's strong read-after-write consistency
    (https://aws.amazon.com/blogs/aws/amazon-s3-update-strong-read-after-write-consistency/) means
    at least one of them sees the other's view and settles which stays (an older version's prediction, a newer one's failure:
    the failure). Views are changed only conditionally (the ETag read)."""
    source = record["source"]
    where = (source["bucket"], source["key"])
    other = FAILURE if kind == PREDICTION else PREDICTION
    own_latest, other_latest = latest_key(prefixes[kind], *where), latest_key(prefixes[other], *where)
    history = version_key(prefixes[kind], *where, source.get("version_id"), source.get("etag"))

    def resolve() -> None:
        """A prediction: the version succeeded, so its own failure entry is resolved."""
        if kind == PREDICTION:
            delete(s3, bucket, version_key(prefixes[FAILURE], *where, source.get("version_id"), source.get("etag")))

    mine = Version.of(source)
    current: _Stored | None = None  # the view as last read; None before reading: try If-None-Match first
    for _ in range(WRITE_ATTEMPTS):
        view, written = "written", None
        if current is not None:
            order = _order(mine, current.record)
            if order is None or order < 0:
                reason = f"the latest {kind} view holds version {_held(current)}, " + (
                    "a newer one" if order else "which nothing orders against this one (kept)"
                )
                resolve()
                return _keep(s3, bucket, Outcome("kept", own_latest, history, reason), record, metadata)
            if order == 0 and kind == PREDICTION and current.record.get("record_id") == record.get("record_id"):
                view, written = "unchanged", current.etag  # a duplicate of what the view holds
            elif order > 0:
                _archive(s3, bucket, prefixes[kind], where, current)  # the older version's record stays, as its entry
        if view == "written":
            written = _put(s3, bucket, own_latest, record, current.etag if current else None, metadata)
            if written is None:  # there is a view (or it changed since it was read): read it and decide again
                current = _read(s3, bucket, own_latest)
                continue
        settled, rival_seen = _settle(s3, bucket, kind, mine, prefixes[other], where, other_latest)
        if current is not None or rival_seen:
            resolve()
        # else: the key had no view of either kind, so this version has no failure entry and there is
        # nothing to resolve (the DELETE skipped: a third of a new key's requests). An entry is only
        # written while a view of a newer version stands, and a view is only ever replaced or retired
        # by one of a version at least as new (or deleted after this record's own view is written),
        # so a key with an entry always has a view. The one window: a newer version's prediction
        # replacing this view between its PUT and the failure view's GET, after a failure of this
        # version and a newer one; the failure entry of this version then stays beside its prediction.
        if settled is None:
            return Outcome(view, own_latest, history)
        # The other kind's view describes a newer version (or one nothing orders against this one):
        # this record steps back to its version's entry.
        kept = _keep(
            s3, bucket, Outcome("kept", own_latest, history, settled), record, metadata
        )  # before the view goes
        delete(s3, bucket, own_latest, written or None)
        return kept
    raise TransientError(f"s3://{bucket}/{own_latest} changed under {WRITE_ATTEMPTS} attempts to write it")


def _settle(
    s3: Any, bucket: str, kind: str, mine: Version, prefix: str, where: tuple[str, str], other_latest: str
) -> tuple[str | None, bool]:
    """After writing a view: retire the other kind's view if it describes an older version (archived
    to its entry) or, for a prediction, this same version's failure (resolved). Returns (None when
    this record's view stays, else the reason the other view wins; whether there was one)."""
    for attempt in range(WRITE_ATTEMPTS):
        rival = _read(s3, bucket, other_latest)
        if rival is None:
            return None, attempt > 0
        order = _order(mine, rival.record)
        if order is None or order < 0:
            return (
                f"the latest {FAILURE if kind == PREDICTION else PREDICTION} view holds version {_held(rival)}, "
                + ("a newer one" if order else "which nothing orders against this one")
            ), True
        if order == 0 and kind == FAILURE:
            return None, True  # a failure of a version that also succeeded is shown beside its prediction
        if order > 0:
            _archive(s3, bucket, prefix, where, rival)
        if delete(s3, bucket, other_latest, rival.etag or None):
            return None, True
    raise TransientError(f"s3://{bucket}/{other_latest} changed under {WRITE_ATTEMPTS} attempts to settle it")


def entry_of(prefix: str, bucket: str, key: str, record: Mapping[str, Any]) -> str:
    """The version entry that ``record`` (a view of ``bucket``/``key``) stands for."""
    source = record.get("source") or {}
    return version_key(prefix, bucket, key, source.get("version_id"), source.get("etag"))


def find(
    s3: Any, bucket: str, prefix: str, source_bucket: str, key: str, version_id: str | None, etag: str | None = None
) -> tuple[str, dict[str, Any]] | None:
    """Where one object version's record under ``prefix`` is, and the record: its version's entry,
    or the key's latest view when that is the version's record; None when it has none."""
    entry = version_key(prefix, source_bucket, key, version_id, etag)
    for where in (entry, latest_key(prefix, source_bucket, key)):
        stored = _read(s3, bucket, where)
        if stored is not None and (where == entry or entry_of(prefix, source_bucket, key, stored.record) == entry):
            return where, stored.record
    return None


def read_latest(s3: Any, bucket: str, prefix: str, source: Mapping[str, Any]) -> dict[str, Any] | None:
    """The key's latest view under ``prefix`` (None when it has none); transient errors are TransientError."""
    try:
        stored = _read(s3, bucket, latest_key(prefix, source["bucket"], source["key"]))
        return None if stored is None else stored.record
    except (ClientError, BotoCoreError) as exc:
        raise_transient(exc, f"reading the latest record of s3://{source['bucket']}/{source['key']}")


__all__ = [
    "FAILURE",
    "PREDICTION",
    "Outcome",
    "Version",
    "compare",
    "decode_key",
    "delete",
    "encode_key",
    "entry_of",
    "find",
    "latest_key",
    "publish",
    "read_latest",
    "version_key",
]
