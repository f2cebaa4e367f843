"""The batch document: per-object state of one execution, kept in the work bucket, passed by reference.

The state machine carries only a reference ``{"bucket", "key"}`` and counts, so its payload stays
a few hundred bytes whatever the batch size (Step Functions' limit is 256 KiB). Each task reads the
document its predecessor wrote and writes its own next to it, under
``<WORK_PREFIX>batches/<execution name>/``:

* ``preprocessed.json`` (preprocess): every object with ``status`` READY or FAILED, its located
  version, the resolved model, ``top_k``, and which tensor row holds it; the tensors beside it,
  one ``.npy`` of shape (n, 3, H, W) per model;
* ``classified.json`` (inference): the same objects, READY ones now CLASSIFIED with a
  ``prediction`` or FAILED.

Both are rewritten identically by a retry or a redrive of the same execution. The work bucket's
lifecycle rule expires them with the tensors.

Example::

    ref = put_document(s3, "work", work_key("tensors/", execution_id, PREPROCESSED), document)
    document = get_document(s3, ref)
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from functions.common.aws import raise_transient, read_object
from functions.common.errors import InvalidRequestError, ObjectNotFoundError

SCHEMA = "inferpipe.batch/1"
PREPROCESSED = "preprocessed.json"
CLASSIFIED = "classified.json"
#: item statuses
READY = "READY"
CLASSIFIED_STATUS = "CLASSIFIED"
FAILED = "FAILED"
MAX_DOCUMENT_BYTES = 64 * 2**20


def execution_name(execution_id: str | None) -> str:
    """The execution's name (the last part of its ARN); a fresh id when run outside Step Functions."""
    if isinstance(execution_id, str) and execution_id:
        return execution_id.rsplit(":", 1)[-1]
    return f"direct-{uuid.uuid4().hex}"


#: ``inferpipe replay`` names the n-th replay of execution ``<name>`` ``<name>-r<n>``
#: (inferpipe/replay.py replay_name, truncating ``<name>`` to fit Step Functions' 80 characters).
_REPLAY_SUFFIX = re.compile(r"^(?P<stem>.+)-r(?P<n>[0-9]{1,6})$")
#: An execution and its replays are one group: names compared on this many characters of the
#: stem, so that truncated replay names still group.
GROUP_CHARS = 70


def split_replay_name(name: str) -> tuple[str, int]:
    """``(root name, n)``: ``("abc", 2)`` for ``abc-r2``; ``(name, 0)`` for an original."""
    found = _REPLAY_SUFFIX.match(name)
    return (found.group("stem"), int(found.group("n"))) if found else (name, 0)


def execution_group(execution_id: str) -> str:
    """What an execution shares with its replays and redrives: its state machine and root name.

    A redrive keeps the execution's ARN; a replay is a new execution named after the original.

    >>> execution_group("arn:aws:states:eu-west-1:123456789012:execution:inferpipe-pipeline:5f0c2e-r2")
    'arn:aws:states:eu-west-1:123456789012:execution:inferpipe-pipeline:5f0c2e'
    """
    machine, _, name = execution_id.rpartition(":")
    stem = split_replay_name(name)[0][:GROUP_CHARS]
    return f"{machine}:{stem}" if machine else stem


def work_key(prefix: str, execution_id: str | None, name: str) -> str:
    return f"{prefix}batches/{execution_name(execution_id)}/{name}"


def put_document(s3: Any, bucket: str, key: str, document: Mapping[str, Any]) -> dict[str, str]:
    from botocore.exceptions import BotoCoreError, ClientError

    body = json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    try:
        s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json")
    except (ClientError, BotoCoreError) as exc:
        raise_transient(exc, f"PutObject s3://{bucket}/{key}")
    return {"bucket": bucket, "key": key}


def check_ref(ref: Any, where: str = "batch") -> dict[str, str]:
    if not isinstance(ref, Mapping) or not isinstance(ref.get("bucket"), str) or not isinstance(ref.get("key"), str):
        raise InvalidRequestError(f"{where} must be a reference {{bucket, key}} to a batch document, got {ref!r:.100}")
    return {"bucket": ref["bucket"], "key": ref["key"]}


def get_document(s3: Any, ref: Any, where: str = "batch") -> dict[str, Any]:
    """The batch document at ``ref``; ObjectNotFoundError if it is gone (expired, or never written)."""
    ref = check_ref(ref, where)
    data = read_object(s3, ref["bucket"], ref["key"], MAX_DOCUMENT_BYTES)
    if data is None:
        raise ObjectNotFoundError(
            f"the batch document s3://{ref['bucket']}/{ref['key']} does not exist (expired or never written)"
        )
    try:
        document = json.loads(data)
    except ValueError as bad:
        raise InvalidRequestError(f"s3://{ref['bucket']}/{ref['key']} is not a batch document: {bad}") from None
    if (
        not isinstance(document, dict)
        or document.get("schema") != SCHEMA
        or not isinstance(document.get("items"), list)
    ):
        raise InvalidRequestError(f"s3://{ref['bucket']}/{ref['key']} is not a {SCHEMA} document")
    return document


def counts(items: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    failed = sum(1 for item in items if item.get("status") == FAILED)
    return {"objects": len(items), "failed": failed, "succeeded": len(items) - failed}


def item_error(error: BaseException | str, message: str | None = None, state: str = "Preprocess") -> dict[str, str]:
    """How an item's failure is written in the batch document."""
    if isinstance(error, BaseException):
        return {"type": type(error).__name__, "message": str(error), "state": state}
    return {"type": error, "message": message or "", "state": state}


__all__ = [
    "CLASSIFIED",
    "CLASSIFIED_STATUS",
    "FAILED",
    "GROUP_CHARS",
    "PREPROCESSED",
    "READY",
    "SCHEMA",
    "check_ref",
    "counts",
    "execution_group",
    "execution_name",
    "get_document",
    "item_error",
    "put_document",
    "split_replay_name",
    "work_key",
]
