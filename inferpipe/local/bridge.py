"""Bridges over the gaps of moto 5.2 as the local AWS, installed by patching moto in this process.

1. **Lambda runs our code.** Without Docker, moto's Lambda returns a canned payload. The bridge
   replaces ``LambdaSimpleBackend.invoke``: the function's handler (``ImageConfig.Command[0]``
   for an image, ``Handler`` for a zip) runs in an execution environment of its own
   (:mod:`inferpipe.local.environments`: an ``awslambdaric`` worker process, timeout and memory
   enforced, logs and REPORT lines in CloudWatch Logs), or, in the "in-process" mode
   (:func:`set_lambda_mode`), in a thread of this process with the function's environment
   through :func:`functions.common.config.invocation_environment`. An exception comes back as
   real Lambda reports it: header ``x-amz-function-error: Unhandled`` and payload
   ``{"errorType", "errorMessage", "requestId", "stackTrace"}``, so the state machine's Retry and
   Catch match on ``errorType``. A function at its reserved concurrency answers HTTP 429
   ``TooManyRequestsException``, which Step Functions names ``Lambda.TooManyRequestsException``
   (moto named every HTTP error of a Lambda task ``Exception``: :func:`_lambda_task_error`).
2. **EventBridge starts state machines.** moto's ``Rule.send_to_targets`` raises
   NotImplementedError for a ``states`` target (and S3 swallows that silently). The bridge starts an
   execution for such targets (input: the event, or the target's Input/InputPath/InputTransformer)
   and hands every other target to moto's own code. A failure to start is logged, kept in
   :func:`delivery_failures` and, when the target has a dead-letter queue, sent there.

3. **Everything acts under its own IAM role.** Each invocation gets the credentials of the
   function's execution role (assumed through moto's STS, cached per role like a warm Lambda's)
   in its environment, as ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN``,
   exactly as Lambda provides them; :func:`functions.common.aws.client` signs with them. Each
   invocation's START/END/REPORT lines go to the function's log group under that role, as
   Lambda writes them. The state machine's Lambda tasks are signed with its execution role's
   credentials, and the trigger rule's target role must allow ``states:StartExecution``. moto
   only checks a request's Resource for S3 and SQS (everything else is checked against ``*``,
   which no least-privilege statement matches); the bridge names the resource of DynamoDB, SNS,
   EventBridge, Step Functions, Lambda and CloudWatch Logs requests, so that with IAM enforcement
   on (:func:`set_iam_enforcement`) every call is checked against the role's statements.

4. **Bursts don't stall.** Clients the bridge itself needs (Step Functions' Lambda tasks, platform
   logs) are created once per role and reused, the moto server's per-request listing of its
   own package directory (done under its global routing lock) is computed once, a queue's
   message counts (read on every SendMessage) read the clock once, not once per queued message,
   the JSONPath expressions EventBridge renders each event with are compiled once, not per event,
   and a state machine's definition is parsed once, not per execution (:func:`_parsed_program`).

5. **Failed executions can be redriven.** moto has no RedriveExecution: :mod:`inferpipe.local.redrive`
   adds it, with DescribeExecution's redrive fields, under AWS's documented rules.
6. **Executions announce their status.** moto sends no "Step Functions Execution Status Change"
   events: :mod:`inferpipe.local.status_events` sends them to the default bus's rules.

Also: moto delivers events through DISABLED rules; the bridge does not.

Fault injection for tests::

    bridge.inject_failures("inferpipe-inference", count=2)   # next 2 invocations fail as throttled
    # ...the execution's history then shows 2 LambdaFunctionFailed events, then success.

Every patch is undone by :func:`uninstall`. Only one local stack per process: moto's state is global.
"""

from __future__ import annotations

import collections
import copy
import functools
import importlib
import json
import logging
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

_LOG = logging.getLogger("inferpipe.local.bridge")

#: The error a throttled Lambda invocation shows in Step Functions.
THROTTLED = "Lambda.TooManyRequestsException"

_lock = threading.RLock()
_originals: dict[str, Any] = {}


# --------------------------------------------------------------------------------------------
# Lambda: run the handler (in an execution environment, or in this process)
# --------------------------------------------------------------------------------------------


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
#: :mod:`inferpipe.local.environments`) or "in-process" (threads of this process, no memory
#: limit, a timeout cannot stop the handler; the benchmark uses it to show what isolation costs).
LAMBDA_MODES = ("isolated", "in-process")
_mode: dict[str, Any] = {"mode": "isolated", "pool": None}


def set_lambda_mode(mode: str, pool: Any = None) -> None:
    """Run handlers ``mode``-wise; "isolated" needs an :class:`~inferpipe.local.environments.EnvironmentPool`."""
    if mode not in LAMBDA_MODES:
        raise ValueError(f"unknown Lambda mode {mode!r}: expected one of {', '.join(LAMBDA_MODES)}")
    if mode == "isolated" and pool is None:
        raise ValueError("the isolated Lambda mode needs an EnvironmentPool")
    with _lock:
        _mode.update(mode=mode, pool=pool)


def lambda_mode() -> str:
    return str(_mode["mode"])


@dataclass(frozen=True)
class InjectedFault:
    error_type: str
    message: str


class FaultInjector:
    """Per-function queues of failures that answer the next invocations instead of the handler.

    A fault is returned as an unhandled function error whose ``errorType`` is the error name
    (default ``Lambda.TooManyRequestsException``). Real Lambda answers a throttle with HTTP 429,
    and Step Functions names it ``Lambda.TooManyRequestsException``; moto's interpreter maps any
    HTTP error of a Task with a function ARN to the name ``Exception`` instead, so the bridge
    delivers the name the way moto does honour: as the payload's ``errorType``.
    Faults apply to synchronous invocations (what Step Functions makes), not to ``Event`` ones.
    """

    def __init__(self) -> None:
        self._queues: dict[str, collections.deque[InjectedFault]] = {}
        self._lock = threading.Lock()

    def inject(self, function: str, count: int = 1, error_type: str = THROTTLED, message: str = "Rate Exceeded.") -> None:
        """The next ``count`` invocations of ``function`` (name or ARN) fail with ``error_type``."""
        if count < 1:
            raise ValueError("count must be at least 1")
        with self._lock:
            queue = self._queues.setdefault(_function_name(function), collections.deque())
            queue.extend(InjectedFault(error_type, message) for _ in range(count))

    def take(self, function: str) -> InjectedFault | None:
        with self._lock:
            queue = self._queues.get(_function_name(function))
            return queue.popleft() if queue else None

    def pending(self, function: str) -> int:
        with self._lock:
            return len(self._queues.get(_function_name(function), ()))

    def clear(self) -> None:
        with self._lock:
            self._queues.clear()


FAULTS = FaultInjector()
_handlers: dict[str, Callable[[Any, Any], Any]] = {}
_invocations: collections.deque[InvocationRecord] = collections.deque(maxlen=1000)
_async_threads: set[threading.Thread] = set()


def inject_failures(function: str, count: int = 1, error_type: str = THROTTLED, message: str = "Rate Exceeded.") -> None:
    """Make the next ``count`` invocations of ``function`` fail before running (see :class:`FaultInjector`)."""
    FAULTS.inject(function, count, error_type, message)


def invocations(function: str | None = None) -> list[InvocationRecord]:
    """The invocations handled so far (optionally of one function), oldest first."""
    with _lock:
        records = list(_invocations)
    return [r for r in records if function is None or r.function_name == _function_name(function)]


def _function_name(name_or_arn: str) -> str:
    if ":function:" in name_or_arn:
        return name_or_arn.split(":function:", 1)[1].split(":", 1)[0]
    return name_or_arn


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


def _function_config(fn: Any) -> Any:
    from inferpipe.local.environments import FunctionConfig

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
    from inferpipe.local.environments import PoolClosed, Throttled

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
        with _lock:
            _invocations.append(
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


def _run(fn: Any, body: Any, request_id: str, fault: InjectedFault | None) -> tuple[bool, bytes]:
    """Invoke the function once: (failed, payload)."""
    if fault is None and _mode["mode"] == "isolated":
        return _run_isolated(fn, body, request_id)
    return _run_in_process(fn, body, request_id, fault)


def _run_in_process(fn: Any, body: Any, request_id: str, fault: InjectedFault | None) -> tuple[bool, bytes]:
    """Invoke the function once in this process (faults, and the "in-process" mode): (failed, payload)."""
    from functions.common.config import invocation_environment  # lazily: the functions package is the product

    started = time.monotonic()
    error_type: str | None = None
    try:
        if fault is not None:
            error_type = fault.error_type
            return True, _error_payload(fault.error_type, fault.message, request_id)
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
            log_stream_name=f"{datetime.now(timezone.utc):%Y/%m/%d}/[$LATEST]{uuid.uuid4().hex}",
            deadline=started + float(fn.timeout),
        )
        environment = dict(fn.environment_vars or {})
        environment.update(role_credentials(fn.role, fn.region))
        outcome: dict[str, Any] = {}

        def call() -> None:
            try:
                with invocation_environment(environment):
                    outcome["result"] = handler(event, context)
            except Exception as exc:  # the runtime reports any exception the handler lets escape
                outcome["error"] = exc

        # The handler runs in its own thread so the function's timeout can be enforced as Lambda
        # does (the thread cannot be killed: a timed-out handler finishes in the background).
        worker = threading.Thread(target=call, name=f"lambda-{fn.function_name}-{request_id[:8]}", daemon=True)
        worker.start()
        worker.join(float(fn.timeout))
        _write_platform_log(fn, context, environment, started)
        if worker.is_alive():
            error_type = "Sandbox.Timedout"
            message = f"{datetime.now(timezone.utc):%Y-%m-%dT%H:%M:%S.%fZ} {request_id} Task timed out after {float(fn.timeout):.2f} seconds"
            _LOG.warning("%s: %s", fn.function_name, message)
            return True, _error_payload(error_type, message, request_id)
        if "error" in outcome:
            exc = outcome["error"]
            error_type = type(exc).__name__
            _LOG.info("%s failed: %s: %s", fn.function_name, error_type, exc)
            return True, _error_payload(error_type, str(exc), request_id, exc.__traceback__)
        try:
            return False, json.dumps(outcome.get("result")).encode("utf-8")
        except (TypeError, ValueError) as exc:
            raise _RuntimeError("Runtime.MarshalError", f"Unable to marshal response: {exc}") from None
    except _RuntimeError as exc:
        error_type = exc.error_type
        _LOG.warning("%s: %s: %s", fn.function_name, exc.error_type, exc)
        return True, _error_payload(exc.error_type, str(exc), request_id)
    finally:
        with _lock:
            _invocations.append(
                InvocationRecord(fn.function_name, request_id, error_type, fault is not None, time.monotonic() - started)
            )


def _header(headers: Any, name: str) -> str | None:
    if headers is None:
        return None
    value = headers.get(name)
    if value is None and isinstance(headers, Mapping):
        value = next((v for k, v in headers.items() if str(k).lower() == name.lower()), None)
    return value


def _bridged_invoke(
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
        thread = threading.Thread(target=_run_async, args=(fn, body, request_id), name=f"lambda-event-{request_id[:8]}")
        with _lock:
            _async_threads.add(thread)
        thread.start()
        return b""
    failed, payload = _run(fn, body, request_id, FAULTS.take(fn.function_name))
    if failed:
        response_headers["x-amz-function-error"] = "Unhandled"
    response_headers["x-amz-executed-version"] = "$LATEST"
    return payload


def _run_async(fn: Any, body: Any, request_id: str) -> None:
    try:
        failed, payload = _run(fn, body, request_id, None)
        if failed:
            _LOG.warning("asynchronous invocation of %s failed: %s", fn.function_name, payload.decode("utf-8", "replace"))
    except Exception as exc:  # a throttle: Lambda would queue and retry the event; here it is reported
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


# --------------------------------------------------------------------------------------------
# IAM: the roles' credentials, and the resource of each request
# --------------------------------------------------------------------------------------------

_role_credentials: dict[str, dict[str, str]] = {}


def role_credentials(role_arn: str, region: str) -> dict[str, str]:
    """Credentials of ``role_arn`` (assumed once per role, through moto's STS), as environment variables."""
    with _lock:
        cached = _role_credentials.get(role_arn)
        if cached is None:
            from moto.sts.models import sts_backends

            account = role_arn.split(":")[4]
            assumed = sts_backends[account]["aws"].assume_role(
                region_name=region,
                role_session_name="inferpipe-local",
                role_arn=role_arn,
                policy="",
                duration=43200,
                external_id="",
            )
            cached = {
                "AWS_ACCESS_KEY_ID": assumed.access_key_id,
                "AWS_SECRET_ACCESS_KEY": assumed.secret_access_key,
                "AWS_SESSION_TOKEN": assumed.session_token,
            }
            _role_credentials[role_arn] = cached
        return dict(cached)


def role_of_access_key(access_key_id: str) -> str | None:
    """The name of the role whose assumed credentials carry ``access_key_id`` (None: not a role's)."""
    with _lock:
        for role_arn, credentials in _role_credentials.items():
            if credentials["AWS_ACCESS_KEY_ID"] == access_key_id:
                return role_arn.rsplit("/", 1)[-1]
    return None


def iam_enforced() -> bool:
    """True when moto checks every request against IAM (see :func:`set_iam_enforcement`)."""
    from moto import settings
    from moto.core.authorization import ActionAuthenticatorMixin

    return bool(ActionAuthenticatorMixin.request_count >= settings.INITIAL_NO_AUTH_ACTION_COUNT)


def set_iam_enforcement(enabled: bool) -> None:
    """Switch moto's IAM enforcement on (every request from now on) or off, process-wide.

    What ``moto.core.set_initial_no_auth_action_count(0)`` does for a decorated test, and what the
    server's ``POST /moto-api/reset-auth`` does; usable around a whole fixture. With it on, only
    IAM users' access keys and assumed roles' credentials are accepted.
    """
    from moto import settings
    from moto.core.authorization import ActionAuthenticatorMixin

    settings.INITIAL_NO_AUTH_ACTION_COUNT = 0 if enabled else float("inf")
    ActionAuthenticatorMixin.request_count = 0


def _write_platform_log(fn: Any, context: LambdaContext, environment: Mapping[str, str], started: float) -> None:
    """START/END/REPORT in the function's log group, written under its role as Lambda does (best effort)."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        import math
        import os

        from inferpipe.local.environments import InvocationResult, peak_rss_mb
        from inferpipe.local.lambda_logs import report_line

        logs = _stack_client("logs", fn.region, environment, _PLATFORM_LOG_CLIENT_CONFIG)
        request_id = context.aws_request_id
        now = int(time.time() * 1000)
        elapsed = (time.monotonic() - started) * 1000
        # in process, "the environment" is this whole process: its peak memory is shared by all
        result = InvocationResult(request_id, False, b"", None, elapsed, math.ceil(elapsed), None, peak_rss_mb(os.getpid()), "")
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


def _sfn_client_for(region: str, service: str, state_credentials: Any = None) -> Any:
    """moto's ``boto_client_for`` for Step Functions tasks, signed with the execution role's credentials."""
    role_arn = getattr(state_credentials, "role_arn", None)
    if not role_arn:
        return _originals["boto_client_for"](region=region, service=service, state_credentials=state_credentials)
    return _stack_client(service, region, role_credentials(role_arn, region), _TASK_CLIENT_CONFIG)


#: How moto's interpreter configures its task clients: no SDK retries (the ASL's Retry decides).
_TASK_CLIENT_CONFIG: dict[str, Any] = {
    "parameter_validation": False,
    "retries": {"max_attempts": 0, "total_max_attempts": 1},
    "read_timeout": 900,
    "max_pool_connections": 64,  # a burst runs hundreds of tasks at once (botocore's default: 10)
}
_PLATFORM_LOG_CLIENT_CONFIG: dict[str, Any] = {"max_pool_connections": 64}
_stack_clients: dict[tuple[Any, ...], Any] = {}


def _stack_client(service: str, region: str, credentials: Mapping[str, str], config: Mapping[str, Any] | None = None) -> Any:
    """A boto3 client at this process's moto server, signed with ``credentials`` (cached, thread-safe).

    Creating a client loads botocore's service model: tens of milliseconds of CPU under the GIL.
    Made per invocation, as the bridge once did, it dominated a burst's sink and orchestration time.
    """
    import boto3
    from botocore.config import Config
    from moto.settings import moto_server_port

    endpoint = f"http://127.0.0.1:{moto_server_port()}"
    key = (service, region, endpoint, credentials["AWS_ACCESS_KEY_ID"], json.dumps(config or {}, sort_keys=True))
    with _lock:
        existing = _stack_clients.get(key)
        if existing is None:
            existing = _stack_clients[key] = boto3.session.Session().client(
                service,
                region_name=region,
                endpoint_url=endpoint,
                aws_access_key_id=credentials["AWS_ACCESS_KEY_ID"],
                aws_secret_access_key=credentials["AWS_SECRET_ACCESS_KEY"],
                aws_session_token=credentials["AWS_SESSION_TOKEN"],
                config=Config(**config) if config else None,
            )
        return existing


def platform_client(service: str, region: str, role_arn: str) -> Any:
    """A client at the stack signed as ``role_arn`` (what Lambda's platform writes logs with)."""
    return _stack_client(service, region, role_credentials(role_arn, region), _PLATFORM_LOG_CLIENT_CONFIG)


def _arn(response: Any, service: str, resource: str) -> str:
    return f"arn:aws:{service}:{response.region}:{response.current_account}:{resource}"


def _json_param(response: Any, name: str) -> Any:
    body = response.body
    try:
        parsed = body if isinstance(body, dict) else json.loads(body or "{}")
        return parsed.get(name)
    except (TypeError, ValueError, AttributeError):
        return None


def _dynamodb_resource(self: Any) -> str:
    table = _json_param(self, "TableName")
    return _arn(self, "dynamodb", f"table/{table}") if table else "*"


def _sns_resource(self: Any) -> str:
    return str(self._get_param("TopicArn") or self._get_param("TargetArn") or "*")


def _events_resource(self: Any) -> str:
    entries = _json_param(self, "Entries")
    buses = {str(entry.get("EventBusName") or "default") for entry in entries or [] if isinstance(entry, dict)}
    if not buses and _json_param(self, "EventBusName"):
        buses = {str(_json_param(self, "EventBusName"))}
    if len(buses) != 1:
        return "*"
    bus = buses.pop()
    return bus if bus.startswith("arn:") else _arn(self, "events", f"event-bus/{bus}")


def _states_resource(self: Any) -> str:
    return str(_json_param(self, "stateMachineArn") or _json_param(self, "executionArn") or "*")


def _lambda_resource(self: Any) -> str:
    from urllib.parse import parse_qs, unquote, urlparse

    parsed = urlparse(self.uri)
    parts = unquote(parsed.path).split("/functions/", 1)
    if len(parts) != 2:
        return "*"
    name = parts[1].split("/", 1)[0]
    arn = name if name.startswith("arn:") else _arn(self, "lambda", f"function:{name}")
    qualifier = parse_qs(parsed.query).get("Qualifier")
    return f"{arn}:{qualifier[0]}" if qualifier and arn.count(":") == 6 else arn


def _logs_resource(self: Any) -> str:
    group = _json_param(self, "logGroupName")
    if not group:
        return "*"
    stream = _json_param(self, "logStreamName")
    return _arn(self, "logs", f"log-group:{group}:log-stream:{stream}" if stream else f"log-group:{group}:*")


def _response_classes() -> dict[str, Any]:
    from moto.awslambda.responses import LambdaResponse
    from moto.dynamodb.responses import DynamoHandler
    from moto.events.responses import EventsHandler
    from moto.logs.responses import LogsResponse
    from moto.sns.responses import SNSResponse
    from moto.stepfunctions.responses import StepFunctionResponse

    return {
        "dynamodb": (DynamoHandler, _dynamodb_resource),
        "sns": (SNSResponse, _sns_resource),
        "events": (EventsHandler, _events_resource),
        "states": (StepFunctionResponse, _states_resource),
        "lambda": (LambdaResponse, _lambda_resource),
        "logs": (LogsResponse, _logs_resource),
    }


#: API operations whose IAM action has another name (moto checks "<service>:<operation>"). The batch
#: APIs are authorised by their single-message action: "The permission to call SendMessageBatch is
#: sqs:SendMessage" (https://docs.aws.amazon.com/AWSSimpleQueueService/latest/SQSDeveloperGuide/sqs-api-permissions-reference.html);
#: the Service Authorization Reference lists no sns:PublishBatch, PublishBatch needs sns:Publish
#: (https://docs.aws.amazon.com/service-authorization/latest/reference/list_amazonsns.html).
IAM_ACTION_NAMES = {
    "lambda:Invoke": "lambda:InvokeFunction",
    "sns:PublishBatch": "sns:Publish",
    "sqs:SendMessageBatch": "sqs:SendMessage",
    "sqs:DeleteMessageBatch": "sqs:DeleteMessage",
}


def _iam_request_init(self: Any, *args: Any, **kwargs: Any) -> None:
    _originals["iam_request_init"](self, *args, **kwargs)
    self._action = IAM_ACTION_NAMES.get(self._action, self._action)


def _trigger_denied(target: Mapping[str, Any]) -> str | None:
    """Why the target's role may not start the execution (None when it may, or IAM is not enforced)."""
    role_arn = target.get("RoleArn")
    if not role_arn or not iam_enforced():
        return None
    from moto.iam.access_control import IAMPolicy, PermissionResult
    from moto.iam.models import iam_backends

    account = str(role_arn).split(":")[4]
    iam = iam_backends[account]["aws"]
    role_name = str(role_arn).rsplit("/", 1)[-1]
    documents = [iam.get_role_policy(role_name, name)[1] for name in iam.list_role_policies(role_name)]
    results = [IAMPolicy(document).is_action_permitted("states:StartExecution", target["Arn"]) for document in documents]
    if PermissionResult.PERMITTED in results and PermissionResult.DENIED not in results:
        return None
    return f"AccessDeniedException: {role_arn} is not authorized to perform states:StartExecution on {target['Arn']}"


# --------------------------------------------------------------------------------------------
# EventBridge -> Step Functions
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeliveryFailure:
    """An event a rule could not deliver to a state machine target."""

    rule_arn: str
    target_id: str
    target_arn: str
    event_id: str
    error: str
    dead_letter_arn: str | None
    dead_lettered: bool
    at: str


_failures: collections.deque[DeliveryFailure] = collections.deque(maxlen=1000)


def delivery_failures() -> list[DeliveryFailure]:
    """Events that did not start an execution, oldest first."""
    with _lock:
        return list(_failures)


def _is_state_machine(arn: str) -> bool:
    parts = arn.split(":", 6)
    return len(parts) == 7 and parts[2] == "states" and parts[5] == "stateMachine"


def _delivered_event(event: Mapping[str, Any]) -> dict[str, Any]:
    """The event as EventBridge delivers it: without moto's internal fields, time in ISO 8601."""
    delivered = {key: value for key, value in event.items() if key not in ("ingestion-time", "replay-name")}
    when = delivered.get("time")
    if isinstance(when, (int, float)):
        delivered["time"] = datetime.fromtimestamp(when, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    elif isinstance(when, datetime):
        delivered["time"] = when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return delivered


def _target_input(target: Mapping[str, Any], event: dict[str, Any]) -> Any:
    if "Input" in target:
        return json.loads(target["Input"])
    if "InputPath" in target:
        from jsonpath_ng.ext import parse  # a moto dependency

        matches = parse(target["InputPath"]).find(event)
        return matches[0].value if matches else None
    if "InputTransformer" in target:
        from moto.events.utils import EventTemplateParser

        transformer = target["InputTransformer"]
        return EventTemplateParser.parse(
            input_template=transformer.get("InputTemplate"),
            input_paths_map=transformer.get("InputPathsMap", {}),
            event={"ingestion-time": time.time(), **event},
        )
    return event


def _start_execution(rule: Any, target: Mapping[str, Any], event: dict[str, Any]) -> None:
    from moto.stepfunctions.responses import get_backend

    arn = target["Arn"]
    _, _, _, region, account, _ = arn.split(":", 5)
    denied = _trigger_denied(target)
    if denied:
        _record_failure(rule, target, event, denied)
        return
    try:
        execution_input = json.dumps(_target_input(target, event))
        execution = get_backend(account, region).start_execution(arn, name=uuid.uuid4().hex, execution_input=execution_input)
        _LOG.info("rule %s started %s for event %s", rule.name, execution.execution_arn, event.get("id"))
    except Exception as exc:  # AWS would retry, then dead-letter: never drop an event silently
        _record_failure(rule, target, event, f"{type(exc).__name__}: {exc}")


def _record_failure(rule: Any, target: Mapping[str, Any], event: dict[str, Any], error: str) -> None:
    dead_letter_arn = (target.get("DeadLetterConfig") or {}).get("Arn")
    dead_lettered = False
    if dead_letter_arn and dead_letter_arn.split(":")[2:3] == ["sqs"]:
        try:
            from moto.sqs.models import sqs_backends

            _, _, _, region, account, queue_name = dead_letter_arn.split(":", 5)

            def attribute(value: str) -> dict[str, str]:
                return {"DataType": "String", "StringValue": value}

            sqs_backends[account][region].send_message(
                queue_name,
                json.dumps(event),
                message_attributes={
                    "RULE_ARN": attribute(rule.arn),
                    "TARGET_ARN": attribute(target["Arn"]),
                    "ERROR_CODE": attribute("SDK_CLIENT_ERROR"),
                    "ERROR_MESSAGE": attribute(error[:1000]),
                },
            )
            dead_lettered = True
        except Exception:
            _LOG.exception("could not send the event to the dead-letter queue %s", dead_letter_arn)
    _LOG.error(
        "rule %s could not start %s for event %s: %s (dead-lettered: %s)",
        rule.name, target["Arn"], event.get("id"), error, dead_lettered,
    )
    with _lock:
        _failures.append(
            DeliveryFailure(
                rule_arn=rule.arn,
                target_id=str(target.get("Id", "")),
                target_arn=target["Arn"],
                event_id=str(event.get("id", "")),
                error=error,
                dead_letter_arn=dead_letter_arn,
                dead_lettered=dead_lettered,
                at=datetime.now(timezone.utc).isoformat(),
            )
        )


def _is_function(arn: str) -> bool:
    parts = arn.split(":")
    return len(parts) in (7, 8) and parts[2] == "lambda" and parts[5] == "function"


def _invoke_function(rule: Any, target: Mapping[str, Any], event: dict[str, Any]) -> None:
    """A Lambda target: EventBridge invokes the function asynchronously
    (https://docs.aws.amazon.com/eventbridge/latest/userguide/eb-targets.html), here through the
    bridge's own asynchronous invoke."""
    from moto.awslambda_simple.models import lambda_simple_backends

    arn = target["Arn"]
    parts = arn.split(":")
    region, account, name = parts[3], parts[4], parts[6]
    try:
        fn = lambda_simple_backends[account][region].get_function(name, parts[7] if len(parts) == 8 else None)
        body = json.dumps(_target_input(target, event)).encode("utf-8")
    except Exception as exc:
        _record_failure(rule, target, event, f"{type(exc).__name__}: {exc}")
        return
    request_id = str(uuid.uuid4())
    thread = threading.Thread(target=_run_async, args=(fn, body, request_id), name=f"lambda-event-{request_id[:8]}")
    with _lock:
        _async_threads.add(thread)
    thread.start()


#: moto gives every S3 event this ``sequencer``; S3 gives each write of a key a greater one.
_MOTO_SEQUENCER = "617f08299329d189"
_sequencer_lock = threading.Lock()
_last_sequence = [0]


def _sequenced(event: Any) -> None:
    """Give an S3 event moto built a sequencer greater than every earlier one, as S3 does per key
    ("the event notification with the greater sequencer hexadecimal value is the event that occurred
    later": https://docs.aws.amazon.com/AmazonS3/latest/userguide/notification-content-structure.html).
    In place: moto hands the same event to every rule, so all of them see one value."""
    obj = (event.get("detail") or {}).get("object") if isinstance(event, dict) and event.get("source") == "aws.s3" else None
    if not isinstance(obj, dict) or obj.get("sequencer") != _MOTO_SEQUENCER:
        return
    with _sequencer_lock:
        _last_sequence[0] = max(time.time_ns(), _last_sequence[0] + 1)
        obj["sequencer"] = f"{_last_sequence[0]:018X}"  # 18 hex digits, like S3's


def _bridged_send_to_targets(self: Any, original_event: Any, transform_input: bool = True) -> None:
    """``Rule.send_to_targets`` replaced: states and Lambda targets run here, the rest go to moto."""
    _sequenced(original_event)
    if getattr(self, "state", "ENABLED") != "ENABLED":
        return  # moto 5.2 delivers through disabled rules; AWS does not
    original = _originals["send_to_targets"]
    functions = [target for target in self.targets if _is_function(target["Arn"])]
    machines = [target for target in self.targets if _is_state_machine(target["Arn"])] + functions
    if not machines:
        return original(self, original_event, transform_input)
    if not self.event_pattern.matches_event(original_event):
        return None
    others = [target for target in self.targets if not _is_state_machine(target["Arn"]) and not _is_function(target["Arn"])]
    pending_error: BaseException | None = None
    if others:
        view = copy.copy(self)  # shallow: the shared rule's target list is never mutated
        view.targets = others
        try:
            original(view, original_event, transform_input)
        except Exception as exc:  # still start the executions, then report as moto would
            pending_error = exc
    event = _delivered_event(original_event)
    for target in machines:
        if _is_function(target["Arn"]):
            _invoke_function(self, target, event)
        else:
            _start_execution(self, target, event)
    if pending_error is not None:
        raise pending_error
    return None


# --------------------------------------------------------------------------------------------
# Step Functions: a Lambda API error is named Lambda.<code>
# --------------------------------------------------------------------------------------------


def _lambda_task_error(self: Any, env: Any, ex: Exception) -> Any:
    """``StateTaskLambda._from_error`` amended: an Invoke answered with an HTTP error (a throttle's
    429, a 5xx) is ``Lambda.<error code>``, as Step Functions names it ("Lambda errors are reported
    as Lambda.ErrorName", https://docs.aws.amazon.com/step-functions/latest/dg/bp-lambda-serviceexception.html);
    moto names every such error ``Exception``, which no Retry of ours matches."""
    from botocore.exceptions import ClientError
    from moto.stepfunctions.parser.asl.component.common.error_name.custom_error_name import CustomErrorName

    failure = _originals["lambda_from_error"](self, env, ex)
    if isinstance(ex, ClientError):
        name = f"Lambda.{ex.response.get('Error', {}).get('Code') or 'Unknown'}"
        failure.error_name = CustomErrorName(name)
        for details in (failure.event_details or {}).values():
            details["error"] = name
    return failure


# --------------------------------------------------------------------------------------------
# Step Functions: an execution started without a name gets a UUID
# --------------------------------------------------------------------------------------------


def _named_start_execution(self: Any, state_machine_arn: str, name: Any = None, *args: Any, **kwargs: Any) -> Any:
    """``StepFunctionsParserBackend.start_execution`` amended: "If you don't provide a name for the
    execution, Step Functions automatically generates a universally unique identifier (UUID) as the
    execution name" (https://docs.aws.amazon.com/step-functions/latest/apireference/API_StartExecution.html);
    moto names every such execution ``None``, so the second one collides (ExecutionAlreadyExists)."""
    return _originals["start_execution"](self, state_machine_arn, name or str(uuid.uuid4()), *args, **kwargs)


@functools.lru_cache(maxsize=32)
def _parsed_program(definition: str) -> Any:
    """The evaluation entry point of a state machine definition, parsed once per definition text.

    moto parses the ASL with antlr for every execution (``ExecutionWorker._get_evaluation_entrypoint``):
    ~0.1 s of this process's CPU per execution, the whole cost of a batch of one. The parsed
    program is a tree of declarations: every value an execution changes lives in its own
    ``Environment`` (moto already runs one program tree in many concurrent Map iterations), and the
    retry counters are kept in that environment's heap under each declaration's ``heap_key``,
    which moto draws lazily; drawn here once, so that no two threads can draw two keys for one
    declaration.
    """
    from moto.stepfunctions.parser.asl.component.eval_component import EvalComponent
    from moto.stepfunctions.parser.asl.parse.asl_parser import AmazonStateLanguageParser

    program = AmazonStateLanguageParser.parse(definition)[0]
    seen: set[int] = set()
    todo: list[Any] = [program]
    while todo:
        node = todo.pop()
        if id(node) in seen or isinstance(node, (str, bytes, int, float, bool)) or node is None:
            continue
        seen.add(id(node))
        if isinstance(node, EvalComponent):
            node.heap_key  # noqa: B018 (drawn now, once)
        if isinstance(node, dict):
            todo.extend(node.values())
        elif isinstance(node, (list, tuple, set, frozenset)):
            todo.extend(node)
        elif hasattr(node, "__dict__") and type(node).__module__.startswith("moto.stepfunctions.parser.asl.component"):
            todo.extend(vars(node).values())
    return program


def _cached_entrypoint(self: Any) -> Any:
    """``ExecutionWorker._get_evaluation_entrypoint``, from :func:`_parsed_program`."""
    return _parsed_program(self._evaluation_details.state_machine_details.definition)


# --------------------------------------------------------------------------------------------
# install / uninstall
# --------------------------------------------------------------------------------------------


def _visible(queue: Any) -> int:
    now = _now_ms()
    return sum(1 for m in queue._messages if now > m.visible_at and not now < m.delayed_until)


def _not_visible(queue: Any) -> int:
    now = _now_ms()
    return sum(1 for m in queue._messages if not now > m.visible_at)


def _delayed(queue: Any) -> int:
    now = _now_ms()
    return sum(1 for m in queue._messages if now < m.delayed_until)


def _now_ms() -> float:
    from moto.core.utils import unix_time_millis

    return float(unix_time_millis())


#: moto's Queue counts, as its ``Message.visible`` (now > visible_at) and ``delayed``
#: (now < delayed_until) define them, each with one reading of the clock.
_QUEUE_COUNTS: dict[str, Callable[[Any], int]] = {
    "approximate_number_of_messages": _visible,
    "approximate_number_of_messages_not_visible": _not_visible,
    "approximate_number_of_messages_delayed": _delayed,
}


def install() -> None:
    """Patch moto (idempotent). Fails loudly when moto's internals are not the ones this targets."""
    from moto.awslambda_simple.models import LambdaSimpleBackend
    from moto.events.models import Rule
    from moto.iam.access_control import IAMRequestBase
    from moto.stepfunctions.parser.asl.component.state.exec.state_task import lambda_eval_utils

    with _lock:
        if _originals:
            return
        for owner, name in ((LambdaSimpleBackend, "invoke"), (Rule, "send_to_targets")):
            if not callable(getattr(owner, name, None)):
                raise RuntimeError(f"moto has no {owner.__name__}.{name}: the local stack's bridge needs moto 5.2")
        _originals["invoke"] = LambdaSimpleBackend.__dict__["invoke"]
        _originals["send_to_targets"] = Rule.__dict__["send_to_targets"]
        LambdaSimpleBackend.invoke = _bridged_invoke  # type: ignore[method-assign]
        Rule.send_to_targets = _bridged_send_to_targets  # type: ignore[method-assign]
        _originals["iam_request_init"] = IAMRequestBase.__init__
        IAMRequestBase.__init__ = _iam_request_init  # type: ignore[method-assign]
        _originals["boto_client_for"] = lambda_eval_utils.boto_client_for
        lambda_eval_utils.boto_client_for = _sfn_client_for
        from moto.stepfunctions.parser.asl.component.state.exec.state_task.state_task_lambda import StateTaskLambda

        _originals["lambda_from_error"] = StateTaskLambda.__dict__["_from_error"]
        StateTaskLambda._from_error = _lambda_task_error  # type: ignore[method-assign]
        from moto.stepfunctions.parser.models import StepFunctionsParserBackend

        _originals["start_execution"] = StepFunctionsParserBackend.__dict__["start_execution"]
        StepFunctionsParserBackend.start_execution = _named_start_execution  # type: ignore[method-assign]
        for service, (cls, resolver) in _response_classes().items():
            if "_determine_resource" in cls.__dict__:
                raise RuntimeError(f"moto now resolves {service} resources itself: drop the bridge's resolver")
            cls._determine_resource = resolver
        # moto's server lists its own package directory on every request to route it, holding the
        # one lock every request needs: under a burst, hundreds of requests queued behind it.
        from moto import backends

        _originals["list_of_moto_modules"] = backends.list_of_moto_modules
        modules = tuple(backends.list_of_moto_modules())
        backends.list_of_moto_modules = lambda: modules
        # moto reads all of a queue's attributes on every SendMessage (for ContentBasedDeduplication),
        # and its three message counts read the clock once per queued message: a queue nobody drains
        # (the results queue under a flood) made every send slower than the last. Same counts, one clock.
        from moto.sqs.models import Queue

        for name, count in _QUEUE_COUNTS.items():
            _originals[f"queue.{name}"] = Queue.__dict__[name]
            setattr(Queue, name, property(count))
        # moto's EventBridge renders every event for every target through JSONPath expressions,
        # compiling each one anew, and jsonpath_ng builds a whole parser (its ply tables) per
        # compile: 37 % of this process under a flood (py-spy --gil). The expressions are immutable
        # and few (a target's InputPathsMap, or moto's default one): compile each once.
        import jsonpath_ng.ext

        _originals["jsonpath_parse"] = jsonpath_ng.ext.parse
        jsonpath_ng.ext.parse = functools.lru_cache(maxsize=1024)(jsonpath_ng.ext.parse)
        # moto parses a state machine's ASL anew for every execution: once per definition instead.
        from moto.stepfunctions.parser.backend.execution_worker import ExecutionWorker

        _originals["evaluation_entrypoint"] = ExecutionWorker.__dict__["_get_evaluation_entrypoint"]
        ExecutionWorker._get_evaluation_entrypoint = _cached_entrypoint  # type: ignore[method-assign]
        # moto has no RedriveExecution, sends no execution status change events, and neither pages
        # execution histories nor renders StartExecution's InvalidExecutionInput.
        from inferpipe.local import redrive, sfn_api, status_events

        redrive.install()
        status_events.install()
        sfn_api.install()


def uninstall() -> None:
    """Restore moto's own methods and forget faults, handlers, records (idempotent)."""
    from moto.awslambda_simple.models import LambdaSimpleBackend
    from moto.events.models import Rule

    with _lock:
        if "invoke" in _originals:
            LambdaSimpleBackend.invoke = _originals.pop("invoke")  # type: ignore[method-assign]
        if "send_to_targets" in _originals:
            Rule.send_to_targets = _originals.pop("send_to_targets")  # type: ignore[method-assign]
        if "iam_request_init" in _originals:
            from moto.iam.access_control import IAMRequestBase

            IAMRequestBase.__init__ = _originals.pop("iam_request_init")  # type: ignore[method-assign]
        if "boto_client_for" in _originals:
            from moto.stepfunctions.parser.asl.component.state.exec.state_task import lambda_eval_utils

            lambda_eval_utils.boto_client_for = _originals.pop("boto_client_for")
            for cls, _ in _response_classes().values():
                if "_determine_resource" in cls.__dict__:
                    delattr(cls, "_determine_resource")
        if "list_of_moto_modules" in _originals:
            from moto import backends

            backends.list_of_moto_modules = _originals.pop("list_of_moto_modules")
        for name in _QUEUE_COUNTS:
            if f"queue.{name}" in _originals:
                from moto.sqs.models import Queue

                setattr(Queue, name, _originals.pop(f"queue.{name}"))
        if "jsonpath_parse" in _originals:
            import jsonpath_ng.ext

            jsonpath_ng.ext.parse = _originals.pop("jsonpath_parse")
        from inferpipe.local import redrive, sfn_api, status_events

        redrive.uninstall()
        status_events.uninstall()
        sfn_api.uninstall()
        if "evaluation_entrypoint" in _originals:
            from moto.stepfunctions.parser.backend.execution_worker import ExecutionWorker

            ExecutionWorker._get_evaluation_entrypoint = _originals.pop("evaluation_entrypoint")  # type: ignore[method-assign]
            _parsed_program.cache_clear()
        if "start_execution" in _originals:
            from moto.stepfunctions.parser.models import StepFunctionsParserBackend

            StepFunctionsParserBackend.start_execution = _originals.pop("start_execution")  # type: ignore[method-assign]
        if "lambda_from_error" in _originals:
            from moto.stepfunctions.parser.asl.component.state.exec.state_task.state_task_lambda import StateTaskLambda

            StateTaskLambda._from_error = _originals.pop("lambda_from_error")  # type: ignore[method-assign]
        _mode.update(mode="isolated", pool=None)
        for existing in _stack_clients.values():
            existing.close()
        _stack_clients.clear()
        _role_credentials.clear()
        _handlers.clear()
        _invocations.clear()
        _failures.clear()
    FAULTS.clear()


def installed() -> bool:
    with _lock:
        return bool(_originals)


__all__ = [
    "FAULTS",
    "THROTTLED",
    "DeliveryFailure",
    "FaultInjector",
    "InvocationRecord",
    "LambdaContext",
    "delivery_failures",
    "inject_failures",
    "iam_enforced",
    "install",
    "installed",
    "invocations",
    "lambda_mode",
    "platform_client",
    "role_of_access_key",
    "set_lambda_mode",
    "role_credentials",
    "set_iam_enforcement",
    "uninstall",
    "wait_for_async_invocations",
]
