"""Lambda runs our code: moto's ``LambdaSimpleBackend.invoke`` replaced by one that runs the handler.

Without Docker, moto's Lambda returns a canned payload. :func:`install` replaces its ``invoke``:
the function's handler (``ImageConfig.Command[0]`` for an image, ``Handler`` for a zip) runs in an
execution environment of its own (:mod:`inferpipe.local.environment_pool`: an ``awslambdaric``
worker process, timeout and memory enforced, logs and REPORT lines in CloudWatch Logs), or, in
the "in-process" mode (:func:`set_lambda_mode`), in a thread of this process with the function's
environment through :func:`functions.common.config.invocation_environment`. An exception comes
back as real Lambda reports it: header ``x-amz-function-error: Unhandled`` and payload
``{"errorType", "errorMessage", "requestId", "stackTrace"}``, so the state machine's Retry and
Catch match on ``errorType``. A function at its reserved concurrency answers HTTP 429
``TooManyRequestsException``. Injected failures (:mod:`inferpipe.local.lambda_faults`) answer
instead of the handler. Each invocation is kept in :func:`invocations`.
"""

from __future__ import annotations

import collections
import importlib
import json
import logging
import math
import os
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from inferpipe.local.credentials import platform_client, role_credentials
from inferpipe.local.lambda_faults import FAULTS, THROTTLED, InjectedFault, function_name
from inferpipe.local.patches import Patches

_LOG = logging.getLogger("inferpipe.local.lambda_service")

_lock = threading.RLock()
_patches = Patches()


@dataclass(frozen=True)
class LambdaContext:
    """The attributes of the Lambda Python runtime's context object that handlers use."""

    function_name: str
    function_version: str
    invoked_function_arn: str
    memory_limit_in_mb: int
    aws_request_id: str
    log_group_name: str
    log_stream_name: str
    deadline: float = field(repr=False)  # time.monotonic() at which the function times out
    identity: Any = None
    client_context: Any = None

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.deadline - time.monotonic()) * 1000))


@dataclass(frozen=True)
class InvocationRecord:
    """One invocation the bridge handled (newest last in :func:`invocations`)."""

    function_name: str
    request_id: str
    error_type: str | None  # None when the handler returned
    injected: bool  # True when an injected fault answered instead of the handler
    seconds: float
    init_ms: float | None = None  # isolated mode: the Init Duration of a cold start
    max_memory_mb: int | None = None  # isolated mode: the environment's peak memory
    environment: str | None = None  # isolated mode: the environment's log stream


#: How the bridge runs handlers: "isolated" (default: an execution environment per process, see
#: :mod:`inferpipe.local.environment_pool`) or "in-process" (threads of this process, no memory
#: limit, a timeout cannot stop the handler; the benchmark uses it to show what isolation costs).
LAMBDA_MODES = ("isolated", "in-process")
_mode: dict[str, Any] = {"mode": "isolated", "pool": None}
_handlers: dict[str, Callable[[Any, Any], Any]] = {}
_invocations: collections.deque[InvocationRecord] = collections.deque(maxlen=1000)
_async_threads: set[threading.Thread] = set()


def set_lambda_mode(mode: str, pool: Any = None) -> None:
    """Run handlers ``mode``-wise; "isolated" needs an :class:`~inferpipe.local.environment_pool.EnvironmentPool`."""
    if mode not in LAMBDA_MODES:
        raise ValueError(f"unknown Lambda mode {mode!r}: expected one of {', '.join(LAMBDA_MODES)}")
    if mode == "isolated" and pool is None:
        raise ValueError("the isolated Lambda mode needs an EnvironmentPool")
    with _lock:
        _mode.update(mode=mode, pool=pool)


def lambda_mode() -> str:
    return str(_mode["mode"])


def invocations(function: str | None = None) -> list[InvocationRecord]:
    """The invocations handled so far (optionally of one function), oldest first."""
    with _lock:
        records = list(_invocations)
    return [r for r in records if function is None or r.function_name == function_name(function)]


def _record(record: InvocationRecord) -> None:
    with _lock:
        _invocations.append(record)


class _RuntimeError(Exception):
    """A failure the Lambda runtime itself reports (import errors, unmarshallable results)."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type


def _handler_path(fn: Any) -> str:
    if getattr(fn, "package_type", "Zip") == "Image":
        command = list(getattr(fn.image_config, "cmd", None) or [])
        if not command:
            raise _RuntimeError("Runtime.InvalidEntrypoint", "the image function has no ImageConfig.Command")
        return str(command[0])
    if not fn.handler:
        raise _RuntimeError("Runtime.InvalidEntrypoint", "the function has no Handler")
    return str(fn.handler)


def _load_handler(path: str) -> Callable[[Any, Any], Any]:
    """Import the handler once per process (a failed import is retried next time, as Lambda does)."""
    cached = _handlers.get(path)
    if cached is not None:
        return cached
    module_name, _, attribute = path.rpartition(".")
    if not module_name:
        raise _RuntimeError("Runtime.MalformedHandlerName", f"Bad handler '{path}': not enough values to unpack")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise _RuntimeError("Runtime.ImportModuleError", f"Unable to import module '{module_name}': {exc}") from exc
    handler = getattr(module, attribute, None)
    if not callable(handler):
        raise _RuntimeError("Runtime.HandlerNotFound", f"Handler '{attribute}' missing on module '{module_name}'")
    with _lock:
        _handlers.setdefault(path, handler)
    return handler


def _error_payload(error_type: str, message: str, request_id: str, tb: Any = None) -> bytes:
    stack = traceback.format_list(traceback.extract_tb(tb)) if tb is not None else []
    return json.dumps(
        {"errorMessage": message, "errorType": error_type, "requestId": request_id, "stackTrace": stack}
    ).encode("utf-8")


# -- isolated: an execution environment -----------------------------------------------------


def _function_config(fn: Any) -> Any:
    from inferpipe.local.execution_environment import FunctionConfig

    reserved = getattr(fn, "reserved_concurrency", None)
    return FunctionConfig(
        name=fn.function_name,
        arn=fn.function_arn,
        region=fn.region,
        handler=_handler_path(fn),
        memory_mb=int(fn.memory_size),
        timeout_s=float(fn.timeout),
        variables=dict(fn.environment_vars or {}),
        role_arn=fn.role,
        reserved_concurrency=None if reserved in (None, "") else int(reserved),
    )


def _run_isolated(fn: Any, body: Any, request_id: str) -> tuple[bool, bytes]:
    from inferpipe.local.environment_pool import PoolClosed, Throttled

    started = time.monotonic()
    error_type: str | None = None
    result = None
    try:
        try:
            config = _function_config(fn)
        except _RuntimeError as exc:
            error_type = exc.error_type
            return True, _error_payload(exc.error_type, str(exc), request_id)
        raw = body if isinstance(body, bytes) else (body or "").encode("utf-8")
        try:
            result = _mode["pool"].invoke(config, request_id, raw or b"{}")
        except Throttled as exc:
            error_type = THROTTLED
            raise _throttle_error(str(exc)) from None
        except PoolClosed as exc:
            error_type = "Lambda.ServiceException"
            return True, _error_payload("ServiceException", str(exc), request_id)
        error_type = result.error_type if result.failed else None
        if result.failed:
            _LOG.info("%s failed: %s", fn.function_name, error_type)
        return result.failed, result.payload
    finally:
        _record(
            InvocationRecord(
                fn.function_name,
                request_id,
                error_type,
                False,
                time.monotonic() - started,
                init_ms=result.init_ms if result else None,
                max_memory_mb=result.max_memory_mb if result else None,
                environment=result.environment if result else None,
            )
        )


def _throttle_error(message: str) -> Exception:
    """Lambda's answer beyond a function's reserved concurrency: HTTP 429 TooManyRequestsException.

    https://docs.aws.amazon.com/lambda/latest/api/API_Invoke.html#API_Invoke_Errors
    """
    from moto.awslambda.exceptions import LambdaClientError

    class TooManyRequestsException(LambdaClientError):
        code = 429

    return TooManyRequestsException("TooManyRequestsException", message)


# -- in this process: a thread ----------------------------------------------------------------


def _run_in_process(fn: Any, body: Any, request_id: str, fault: InjectedFault | None) -> tuple[bool, bytes]:
    """Invoke the function once in this process (faults, and the "in-process" mode): (failed, payload)."""
    started = time.monotonic()
    error_type: str | None = None
    try:
        if fault is not None:
            error_type = fault.error_type
            return True, _error_payload(fault.error_type, fault.message, request_id)
        failed, payload, error_type = _call_handler(fn, body, request_id, started)
        return failed, payload
    except _RuntimeError as exc:
        error_type = exc.error_type
        _LOG.warning("%s: %s: %s", fn.function_name, exc.error_type, exc)
        return True, _error_payload(exc.error_type, str(exc), request_id)
    finally:
        _record(
            InvocationRecord(fn.function_name, request_id, error_type, fault is not None, time.monotonic() - started)
        )


def _call_handler(fn: Any, body: Any, request_id: str, started: float) -> tuple[bool, bytes, str | None]:
    """Run the handler in a thread of its own, under the function's timeout: (failed, payload, error type)."""
    from functions.common.config import invocation_environment  # lazily: the functions package is the product

    try:
        raw = body.decode("utf-8") if isinstance(body, bytes) else (body or "")
        event = json.loads(raw) if raw.strip() else {}
    except ValueError as exc:
        raise _RuntimeError("Runtime.UnmarshalError", f"Unable to unmarshal input: {exc}") from None
    handler = _load_handler(_handler_path(fn))
    context = LambdaContext(
        function_name=fn.function_name,
        function_version=str(getattr(fn, "version", "$LATEST")),
        invoked_function_arn=fn.function_arn,
        memory_limit_in_mb=int(fn.memory_size),
        aws_request_id=request_id,
        log_group_name=f"/aws/lambda/{fn.function_name}",
        log_stream_name=f"{datetime.now(UTC):%Y/%m/%d}/[$LATEST]{uuid.uuid4().hex}",
        deadline=started + float(fn.timeout),
    )
    environment = dict(fn.environment_vars or {})
    environment.update(role_credentials(fn.role, fn.region))
    outcome: dict[str, Any] = {}

    def call() -> None:
        try:
            with invocation_environment(environment):
                outcome["result"] = handler(event, context)
        except Exception as exc:  # noqa: BLE001  (the runtime reports any exception the handler lets escape)
            outcome["error"] = exc

    # The handler runs in its own thread so the function's timeout can be enforced as Lambda
    # does (the thread cannot be killed: a timed-out handler finishes in the background).
    worker = threading.Thread(target=call, name=f"lambda-{fn.function_name}-{request_id[:8]}", daemon=True)
    worker.start()
    worker.join(float(fn.timeout))
    _write_platform_log(fn, context, started)
    if worker.is_alive():
        stamp = f"{datetime.now(UTC):%Y-%m-%dT%H:%M:%S.%fZ}"
        message = f"{stamp} {request_id} Task timed out after {float(fn.timeout):.2f} seconds"
        _LOG.warning("%s: %s", fn.function_name, message)
        return True, _error_payload("Sandbox.Timedout", message, request_id), "Sandbox.Timedout"
    if "error" in outcome:
        error = outcome["error"]
        error_type = type(error).__name__
        _LOG.info("%s failed: %s: %s", fn.function_name, error_type, error)
        return True, _error_payload(error_type, str(error), request_id, error.__traceback__), error_type
    try:
        return False, json.dumps(outcome.get("result")).encode("utf-8"), None
    except (TypeError, ValueError) as exc:
        raise _RuntimeError("Runtime.MarshalError", f"Unable to marshal response: {exc}") from None


def _write_platform_log(fn: Any, context: LambdaContext, started: float) -> None:
    """START/END/REPORT in the function's log group, written under its role as Lambda does (best effort)."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        from inferpipe.local.execution_environment import InvocationResult, peak_rss_mb
        from inferpipe.local.lambda_logs import report_line

        logs = platform_client("logs", fn.region, fn.role)
        request_id = context.aws_request_id
        now = int(time.time() * 1000)
        elapsed = (time.monotonic() - started) * 1000
        # in process, "the environment" is this whole process: its peak memory is shared by all
        result = InvocationResult(
            request_id, False, b"", None, elapsed, math.ceil(elapsed), None, peak_rss_mb(os.getpid()), ""
        )
        logs.create_log_stream(logGroupName=context.log_group_name, logStreamName=context.log_stream_name)
        logs.put_log_events(
            logGroupName=context.log_group_name,
            logStreamName=context.log_stream_name,
            logEvents=[
                {"timestamp": now, "message": f"START RequestId: {request_id} Version: $LATEST"},
                {"timestamp": now, "message": f"END RequestId: {request_id}"},
                {"timestamp": now, "message": report_line(result, int(fn.memory_size))},
            ],
        )
    except (BotoCoreError, ClientError, KeyError) as exc:  # Lambda drops logs it may not write
        _LOG.debug("%s: platform log not written: %s", fn.function_name, exc)


# -- the Invoke API ---------------------------------------------------------------------------


def _run(fn: Any, body: Any, request_id: str, fault: InjectedFault | None) -> tuple[bool, bytes]:
    """Invoke the function once: (failed, payload)."""
    if fault is None and _mode["mode"] == "isolated":
        return _run_isolated(fn, body, request_id)
    return _run_in_process(fn, body, request_id, fault)


def _header(headers: Any, name: str) -> str | None:
    if headers is None:
        return None
    value = headers.get(name)
    if value is None and isinstance(headers, Mapping):
        value = next((v for k, v in headers.items() if str(k).lower() == name.lower()), None)
    return value


def _invoke(
    self: Any, function_name: str, qualifier: str | None, body: Any, headers: Any, response_headers: Any
) -> bytes:
    """``LambdaSimpleBackend.invoke`` replaced: run the handler, answer as Lambda does."""
    fn = self.get_function(function_name, qualifier)  # UnknownFunctionException (404) when missing
    invocation_type = _header(headers, "X-Amz-Invocation-Type") or "RequestResponse"
    request_id = str(uuid.uuid4())
    response_headers["x-amzn-RequestId"] = request_id
    if invocation_type == "DryRun":
        return b""
    if invocation_type == "Event":  # asynchronous: accepted now, runs in the background
        invoke_async(fn, body, request_id)
        return b""
    failed, payload = _run(fn, body, request_id, FAULTS.take(fn.function_name))
    if failed:
        response_headers["x-amz-function-error"] = "Unhandled"
    response_headers["x-amz-executed-version"] = "$LATEST"
    return payload


def invoke_async(fn: Any, body: Any, request_id: str) -> None:
    """Run an invocation of the moto function ``fn`` in the background (InvocationType=Event)."""
    thread = threading.Thread(target=_run_async, args=(fn, body, request_id), name=f"lambda-event-{request_id[:8]}")
    with _lock:
        _async_threads.add(thread)
    thread.start()


def _run_async(fn: Any, body: Any, request_id: str) -> None:
    try:
        failed, payload = _run(fn, body, request_id, None)
        if failed:
            _LOG.warning(
                "asynchronous invocation of %s failed: %s", fn.function_name, payload.decode("utf-8", "replace")
            )
    except Exception as exc:  # noqa: BLE001  (a throttle: Lambda would queue and retry the event; here it is reported)
        _LOG.warning("asynchronous invocation of %s not run: %s", fn.function_name, exc)
    finally:
        with _lock:
            _async_threads.discard(threading.current_thread())


def wait_for_async_invocations(timeout: float = 30.0) -> bool:
    """Wait for background (InvocationType=Event) invocations, including those the status change
    events of executions that just ended are about to start; True when none is left."""
    from inferpipe.local import status_events

    deadline = time.monotonic() + timeout
    if not status_events.wait_until_sent(timeout):
        return False
    while True:
        with _lock:
            threads = list(_async_threads)
        if not threads:
            return True
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if time.monotonic() >= deadline:
            with _lock:
                return not _async_threads


def install() -> None:
    """Replace ``LambdaSimpleBackend.invoke`` (idempotent; loud when moto's is not the one this targets)."""
    from moto.awslambda_simple.models import LambdaSimpleBackend

    with _lock:
        if _patches.applied:
            return
        if not callable(getattr(LambdaSimpleBackend, "invoke", None)):
            raise RuntimeError("moto has no LambdaSimpleBackend.invoke: the local stack's bridge needs moto 5.2")
        _patches.apply(LambdaSimpleBackend, "invoke", _invoke)


def uninstall() -> None:
    """moto's own invoke again; forget the mode, the loaded handlers, the records and the faults."""
    with _lock:
        _patches.undo()
        _mode.update(mode="isolated", pool=None)
        _handlers.clear()
        _invocations.clear()
    FAULTS.clear()


__all__ = [
    "LAMBDA_MODES",
    "InvocationRecord",
    "LambdaContext",
    "install",
    "invocations",
    "invoke_async",
    "lambda_mode",
    "set_lambda_mode",
    "uninstall",
    "wait_for_async_invocations",
]
