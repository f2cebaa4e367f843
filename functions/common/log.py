"""Structured JSON logging (Powertools Logger) carrying the execution and the object.

Every function logs through :data:`logger`. :func:`bind` attaches the execution id and the
object being processed to every following line of the invocation, thread-safely, because the
local stack runs several invocations at once in one process. Never log image bytes or secrets.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any, TypeVar

from aws_lambda_powertools import Logger

from functions.common.aws import invocation_deadline
from functions.common.errors import InferpipeError, PipelineError

logger = Logger(service="inferpipe")

_BOUND_KEYS = ("execution_id", "object", "sink", "model")
_Handler = TypeVar("_Handler", bound=Callable[..., Any])


def lambda_context(handler: _Handler) -> _Handler:
    """Put the invocation's Lambda context on every log line of ``handler``, per invocation.

    What Powertools' ``inject_lambda_context(clear_state=True)`` adds (cold_start, function_name,
    function_memory_size, function_arn, function_request_id), kept with the thread-safe keys: the
    local stack runs concurrent invocations in one process, where the decorator's shared keys gave
    every line the request id of whichever invocation started last. One Lambda process serves one
    invocation at a time, so there the two behave the same. ``cold_start`` is per handler module,
    i.e. per function, as in Lambda. It also bounds the invocation's AWS calls by its remaining
    time (:func:`functions.common.aws.invocation_deadline`).
    """
    state = {"cold": True}

    @functools.wraps(handler)
    def wrapper(event: Any, context: Any) -> Any:
        cold, state["cold"] = state["cold"], False
        logger.thread_safe_clear_keys()
        logger.thread_safe_append_keys(
            cold_start=cold,
            function_name=getattr(context, "function_name", None),
            function_memory_size=getattr(context, "memory_limit_in_mb", None),
            function_arn=getattr(context, "invoked_function_arn", None),
            function_request_id=getattr(context, "aws_request_id", None),
        )
        try:
            with invocation_deadline(context):
                return handler(event, context)
        except InferpipeError as exc:
            raise _reported(exc) from None
        except Exception as exc:
            # A bug of ours (a KeyError, a TypeError): the stack trace goes to the log only, and
            # the state machine sees PipelineError, which it records as a permanent failure.
            logger.exception("unexpected error", extra={"error_type": type(exc).__name__})
            raise _reported(PipelineError(f"{type(exc).__name__}: {exc}"[:2000])) from None
        finally:
            logger.thread_safe_clear_keys()

    return wrapper  # type: ignore[return-value]


def _reported(exc: InferpipeError) -> Exception:
    """``exc`` as the Lambda runtime should report it: its type and message, no stack trace.

    Lambda's error payload, which Step Functions makes the execution's ``Cause``, carries the
    stack trace of whatever the handler raised: file paths and code lines in front of a user. An
    error of ours is a decision, not a crash, so under the runtime interface client (Lambda sets
    ``AWS_LAMBDA_RUNTIME_API``) it is raised as awslambdaric's ``FaultException``, which the client
    reports with the same ``errorType`` and ``errorMessage`` (what Retry and Catch match) and an
    empty ``stackTrace``. Called directly (tests, tools), the error is raised as it is.
    """
    if not os.environ.get("AWS_LAMBDA_RUNTIME_API"):
        return exc
    try:
        from awslambdaric.lambda_runtime_exception import FaultException
    except ImportError:
        return exc
    # the stack trace stays in the function's log (X-Ray sees the client's fault label for these)
    logger.warning("invocation failed", exc_info=exc, extra={"error_type": type(exc).__name__})
    return FaultException(type(exc).__name__, str(exc))


def bind(**keys: str | None) -> None:
    """Attach keys (execution_id, object, sink, model) to this invocation's log lines."""
    logger.thread_safe_remove_keys(list(_BOUND_KEYS))
    logger.thread_safe_append_keys(**{k: v for k, v in keys.items() if v is not None})


def object_uri(bucket: str, key: str, version_id: str | None = None) -> str:
    """``s3://bucket/key`` (``?versionId=…`` when known): how logs and records name an object."""
    uri = f"s3://{bucket}/{key}"
    return f"{uri}?versionId={version_id}" if version_id else uri
