"""Structured JSON logging (Powertools Logger) carrying the execution and the object.

Every function logs through :data:`logger`. :func:`bind` attaches the execution id and the
object being processed to every following line of the invocation, thread-safely, because the
local stack runs several invocations at once in one process. Never log image bytes or secrets.
"""

from __future__ import annotations

from aws_lambda_powertools import Logger

logger = Logger(service="inferpipe")

_BOUND_KEYS = ("execution_id", "object", "sink", "model")


def bind(**keys: str | None) -> None:
    """Attach keys (execution_id, object, sink, model) to this invocation's log lines."""
    logger.thread_safe_remove_keys(list(_BOUND_KEYS))
    logger.thread_safe_append_keys(**{k: v for k, v in keys.items() if v is not None})


def object_uri(bucket: str, key: str, version_id: str | None = None) -> str:
    """``s3://bucket/key`` (``?versionId=…`` when known): how logs and records name an object."""
    uri = f"s3://{bucket}/{key}"
    return f"{uri}?versionId={version_id}" if version_id else uri
