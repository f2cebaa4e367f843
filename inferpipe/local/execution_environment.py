"""One Lambda execution environment of the local stack: a worker process of its own.

Each environment is what Lambda runs a function in, reproduced on this machine:

* **A process of its own**, ``python -m awslambdaric <CMD>`` (the container image's entrypoint),
  started with exactly the function's configured variables plus the ones Lambda sets
  (``AWS_LAMBDA_FUNCTION_NAME``, ``AWS_LAMBDA_FUNCTION_MEMORY_SIZE``, the log group and stream,
  the execution role's credentials, ``AWS_REGION``, ``_HANDLER``, ``TZ``), the image's own ``ENV``
  and a private ``TMPDIR``. Module state (caches, clients, the loaded model) is the process's:
  no other function or environment sees it.
* **A Runtime API of its own**: :class:`~inferpipe.local.runtime_api.RuntimeApi` serves ``/2018-06-01/runtime/invocation/next``,
  ``…/response``, ``…/error`` and ``/init/error`` to that process, one invocation at a time.
  https://docs.aws.amazon.com/lambda/latest/dg/runtimes-api.html
* **Cold starts are real**: the first invocation waits for the runtime's init (importing the
  handler module) and its REPORT line carries ``Init Duration``; later ones reuse the warm process.
* **Limits as Lambda enforces them**: an invocation still running at its timeout is killed with
  its environment and answered ``Sandbox.Timedout``; an environment whose peak resident memory
  exceeds the function's ``MemorySize`` is killed and answered ``Runtime.OutOfMemory``; a runtime
  that exits mid-invocation is ``Runtime.ExitError``; a failed init is the runtime's own error
  (``Runtime.ImportModuleError``…). The next invocation gets a fresh environment. Names and
  messages: :mod:`functions.common.errors`.
* **Logs like CloudWatch**: everything the process writes to stdout/stderr, plus Lambda's
  START / END / REPORT lines, goes to log group ``/aws/lambda/<function>``, one stream per
  environment, written under the function's own role (a role that may not write loses its logs,
  as in Lambda; :mod:`inferpipe.local.lambda_logs`).


The pool that starts, reuses and stops them: :mod:`inferpipe.local.environment_pool`.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import logging
import math
import os
import queue
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import termios
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from functions.common.errors import LAMBDA_EXIT_ERROR, LAMBDA_OUT_OF_MEMORY, LAMBDA_TIMEOUT
from inferpipe.local.lambda_logs import LogShipper, report_line
from inferpipe.local.runtime_api import Invocation, RuntimeApi

_LOG = logging.getLogger("inferpipe.local.execution_environment")

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO_ROOT / "Dockerfile"
#: Lambda's limit on an on-demand function's init phase (the handler module's import).
#: https://docs.aws.amazon.com/lambda/latest/dg/lambda-runtime-environment.html
INIT_TIMEOUT_S = 10.0
#: How often a running invocation's memory, process and clock are checked. Memory is the peak
#: (VmHWM), so a spike between two checks is still seen; checking every 10 ms cost the stack's
#: process ~14% of its time under a flood (py-spy).
_WATCH_INTERVAL_S = 0.05


@dataclass(frozen=True)
class FunctionConfig:
    """What an environment is made from: a function's configuration as Lambda holds it."""

    name: str
    arn: str
    region: str
    handler: str  # the image's CMD (ImageConfig.Command[0]) or a zip function's Handler
    memory_mb: int
    timeout_s: float
    variables: Mapping[str, str]  # the function's configured environment variables
    role_arn: str
    reserved_concurrency: int | None = None

    @property
    def fingerprint(self) -> str:
        """Changes whenever a new environment is needed (code, handler, memory, timeout, variables, role)."""
        material = json.dumps(
            [self.arn, self.handler, self.memory_mb, self.timeout_s, sorted(self.variables.items()), self.role_arn]
        )
        return hashlib.sha256(material.encode()).hexdigest()[:16]

    @property
    def log_group(self) -> str:
        return f"/aws/lambda/{self.name}"


@dataclass(frozen=True)
class InvocationResult:
    """One invocation's outcome, as the caller and the REPORT line see it."""

    request_id: str
    failed: bool
    payload: bytes  # the function's response, or Lambda's error document
    error_type: str | None
    duration_ms: float
    billed_ms: int
    init_ms: float | None  # set on a cold start
    max_memory_mb: int
    environment: str  # the log stream of the environment that ran it


@functools.lru_cache(maxsize=4)
def image_environment(dockerfile: Path = DOCKERFILE) -> dict[str, str]:
    """The image's ``ENV`` values that are not paths inside the image (those are this checkout here).

    >>> "MXNET_CUDNN_AUTOTUNE_DEFAULT" in image_environment()
    True
    """
    text = dockerfile.read_text(encoding="utf-8").replace("\\\n", " ")
    values: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            for name, value in re.findall(r"(\w+)=(\S+)", line[4:]):
                values[name] = value
    return {name: value for name, value in values.items() if not value.startswith("/")}


def _error_document(error_type: str, message: str, request_id: str) -> bytes:
    return json.dumps(
        {"errorType": error_type, "errorMessage": message, "requestId": request_id, "stackTrace": []}
    ).encode()


def peak_rss_mb(pid: int) -> int:
    """The process's peak resident set (VmHWM), in MB (MiB, as Lambda counts); 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return math.ceil(int(line.split()[1]) / 1024)
    except (OSError, ValueError):
        pass
    return 0


def _now_ms() -> int:
    return int(time.time() * 1000)


class ExecutionEnvironment:
    """One warm-able environment of one function (see the module docstring)."""

    def __init__(
        self, config: FunctionConfig, credentials: Mapping[str, str], endpoint_url: str, logs: LogShipper
    ) -> None:
        self.config = config
        self.id = uuid.uuid4().hex
        self.log_stream = f"{datetime.now(UTC):%Y/%m/%d}/[$LATEST]{self.id}"
        self._logs = logs
        self._lock = threading.Lock()
        self._events: list[tuple[int, str]] = []
        self._pending: queue.Queue[Invocation | None] = queue.Queue()
        self._current: Invocation | None = None
        self._init_error: bytes | None = None
        self._initialised = threading.Event()
        self._read_lock = threading.Lock()
        self.init_ms: float | None = None
        self.invocations = 0
        self.dead = False
        self._stopped = False
        self.last_used = time.monotonic()
        self._tmp = tempfile.mkdtemp(prefix=f"lambda-{config.name}-")
        self._api = RuntimeApi(self)
        self._spawned = time.monotonic()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "awslambdaric", config.handler],
            env=self._environment(credentials, endpoint_url),
            cwd=str(REPO_ROOT),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: a kill takes everything it started
        )
        assert self.process.stdout is not None
        self._stdout_fd = self.process.stdout.fileno()
        self._reader = threading.Thread(
            target=self._read_output, name=f"lambda-out-{config.name}-{self.id[:6]}", daemon=True
        )
        self._reader.start()

    # -- the process ---------------------------------------------------------------------------

    def _environment(self, credentials: Mapping[str, str], endpoint_url: str) -> dict[str, str]:
        """What Lambda puts in a function's environment, the function's own variables on top.

        https://docs.aws.amazon.com/lambda/latest/dg/configuration-envvars.html#configuration-envvars-runtime
        """
        config = self.config
        passthrough = {name: os.environ[name] for name in ("PATH", "LANG", "LD_LIBRARY_PATH") if name in os.environ}
        return {
            **passthrough,
            **dict(image_environment()),
            "LAMBDA_TASK_ROOT": str(REPO_ROOT),
            "PYTHONPATH": str(REPO_ROOT),
            "TMPDIR": self._tmp,  # /tmp is per environment
            # no ~/.aws of this machine's user: credentials and region come from the variables, as in Lambda
            "AWS_CONFIG_FILE": os.path.join(self._tmp, "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": os.path.join(self._tmp, "no-aws-credentials"),
            "TZ": ":UTC",
            "_HANDLER": config.handler,
            "AWS_LAMBDA_RUNTIME_API": self._api.address,
            "AWS_LAMBDA_FUNCTION_NAME": config.name,
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(config.memory_mb),
            "AWS_LAMBDA_LOG_GROUP_NAME": config.log_group,
            "AWS_LAMBDA_LOG_STREAM_NAME": self.log_stream,
            "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
            "AWS_REGION": config.region,
            "AWS_DEFAULT_REGION": config.region,
            "AWS_ENDPOINT_URL": endpoint_url,  # the local stack (not in Lambda: there the SDK's default)
            **credentials,
            **config.variables,
        }

    def _read_output(self) -> None:
        """Every line the process writes becomes a log event (the runtime joins a traceback's lines with \\r).

        A chunk is read and split under ``_read_lock``, so that :meth:`_drain_output` can tell
        "nothing left in the pipe" from "read but not yet recorded".
        """
        partial = b""
        while True:
            select.select([self._stdout_fd], [], [])
            with self._read_lock:
                try:
                    chunk = os.read(self._stdout_fd, 65536)
                except OSError:
                    chunk = b""
                if not chunk:
                    break
                lines = (partial + chunk).split(b"\n")
                partial = lines.pop()
                stamp = _now_ms()
                with self._lock:
                    self._events.extend((stamp, line.decode("utf-8", "replace")) for line in lines if line.strip())
        if partial.strip():
            with self._lock:
                self._events.append((_now_ms(), partial.decode("utf-8", "replace")))

    def _drain_output(self, limit_s: float = 0.25) -> None:
        """Wait (briefly) until everything written before the runtime answered is recorded."""
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            with self._read_lock:
                try:
                    pending = int.from_bytes(fcntl.ioctl(self._stdout_fd, termios.FIONREAD, b"\0\0\0\0"), sys.byteorder)
                except OSError:
                    return
            if pending == 0:
                return
            time.sleep(0.001)

    def _log(self, message: str) -> None:
        with self._lock:
            self._events.append((_now_ms(), message))

    def _ship_logs(self) -> None:
        with self._lock:
            events, self._events = self._events, []
        self._logs.ship(self.config, self.log_stream, events)

    def peak_memory_mb(self) -> int:
        return peak_rss_mb(self.process.pid)

    def kill(self) -> None:
        """Stop the environment at once (SIGKILL to its process group), as Lambda does."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        self.dead = True
        with contextlib.suppress(ProcessLookupError, PermissionError):  # gone already
            os.killpg(self.process.pid, signal.SIGKILL)
        self._pending.put(None)
        self._finish()

    def close(self) -> None:
        """Shut an idle environment down (what Lambda does to environments it no longer needs)."""
        self.kill()

    def _finish(self) -> None:
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            _LOG.warning("environment %s of %s did not exit", self.id, self.config.name)
        self._reader.join(2)
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._api.close()
        self._ship_logs()
        shutil.rmtree(self._tmp, ignore_errors=True)

    # -- the Runtime API's side (inferpipe.local.runtime_api.RuntimeSide) -------------------------

    def next_invocation(self) -> Invocation | None:
        if not self._initialised.is_set():
            self.init_ms = (time.monotonic() - self._spawned) * 1000
            self._initialised.set()
        invocation = self._pending.get()
        if invocation is not None:
            invocation.started = time.monotonic()
            invocation.started_ms = _now_ms()
            invocation.taken.set()
        return invocation

    def complete(self, request_id: str, kind: str, body: bytes) -> bool:
        invocation = self._current
        if invocation is None or invocation.request_id != request_id or invocation.done.is_set():
            return False
        invocation.outcome = (kind, body)
        invocation.done.set()
        return True

    def init_failed(self, body: bytes) -> None:
        self._init_error = body or b"{}"
        self._initialised.set()
        invocation = self._current
        if invocation is not None:
            invocation.done.set()

    # -- the caller's side ---------------------------------------------------------------------

    def _watch(self, invocation: Invocation, queued: float) -> tuple[str, str] | None:
        """Wait for the runtime's answer, enforcing memory, the runtime's life and the timeout."""
        config, request_id = self.config, invocation.request_id
        out_of_memory = (
            LAMBDA_OUT_OF_MEMORY,
            f"RequestId: {request_id} Error: Runtime exited with error: signal: killed",
        )
        while not invocation.done.wait(_WATCH_INTERVAL_S):
            if self._init_error is not None:
                return None
            if self.peak_memory_mb() > config.memory_mb:
                return out_of_memory
            code = self.process.poll()
            if code is not None and not invocation.done.is_set():
                how = (
                    f"signal: {signal.Signals(-code).name.lower().removeprefix('sig')}"
                    if code < 0
                    else f"exit status {code}"
                )
                return (LAMBDA_EXIT_ERROR, f"RequestId: {request_id} Error: Runtime exited with error: {how}")
            # the clock runs from the hand-over to the runtime; before it, from the init's start (a
            # cold environment: Lambda's init limit, then the timeout) or from the queueing (a warm
            # runtime that has not asked for its next event yet)
            if invocation.taken.is_set():
                started = invocation.started
            elif self._initialised.is_set():
                started = queued
            else:
                started = self._spawned + INIT_TIMEOUT_S
            if time.monotonic() - started > config.timeout_s:
                return (
                    LAMBDA_TIMEOUT,
                    f"RequestId: {request_id} Error: Task timed out after {config.timeout_s:.2f} seconds",
                )
        if self.peak_memory_mb() > config.memory_mb:  # a spike between two polls: Lambda would have killed it
            return out_of_memory
        return None

    def invoke(self, request_id: str, body: bytes) -> InvocationResult:
        """Run one invocation in this environment (one at a time); the environment may die doing it."""
        config = self.config
        cold = self.invocations == 0
        self.invocations += 1
        invocation = Invocation(request_id, body, float(config.timeout_s), config.arn)
        self._current = invocation
        queued = time.monotonic()
        self._pending.put(invocation)
        error = self._watch(invocation, queued)  # (errorType, errorMessage) when Lambda ends it
        ended = time.monotonic()
        began = invocation.started if invocation.taken.is_set() else ended
        max_memory = self.peak_memory_mb()
        init_ms = self.init_ms if cold else None
        if cold and not invocation.taken.is_set():  # died in init: all of it was init
            init_ms = (ended - self._spawned) * 1000
        failed, payload, error_type = self._outcome(invocation, error)
        if error is not None or self._init_error is not None:
            if error is not None:
                max_memory = max(max_memory, self.peak_memory_mb())
                self._log_end(error, request_id, ended - began)
            self.dead = True
        else:
            self._drain_output()
        duration_ms = (ended - began) * 1000
        billed = math.ceil(duration_ms + (init_ms or 0.0))  # container images: init is billed
        result = InvocationResult(
            request_id=request_id,
            failed=failed,
            payload=payload,
            error_type=error_type,
            duration_ms=duration_ms,
            billed_ms=billed,
            init_ms=init_ms,
            max_memory_mb=max_memory,
            environment=self.log_stream,
        )
        self._log_platform_lines(invocation, result)
        self._current = None
        self.last_used = time.monotonic()
        if self.dead:
            self.kill()
        else:
            self._ship_logs()
        return result

    def _outcome(self, invocation: Invocation, error: tuple[str, str] | None) -> tuple[bool, bytes, str | None]:
        """(failed, payload, errorType): the init's failure, Lambda's own error, or what the runtime answered."""
        request_id = invocation.request_id
        if error is None and self._init_error is not None and invocation.outcome is None:
            document = json.loads(self._init_error or b"{}")
            error_type = str(document.get("errorType") or "Runtime.Unknown")
            return True, json.dumps({**document, "requestId": request_id}).encode(), error_type
        if error is not None:
            error_type, message = error
            return True, _error_document(error_type, message, request_id), error_type
        assert invocation.outcome is not None
        kind, payload = invocation.outcome
        if kind != "error":
            return False, payload, None
        try:
            return True, payload, str(json.loads(payload or b"{}").get("errorType") or "Unhandled")
        except ValueError:
            return True, payload, "Unhandled"

    def _log_end(self, error: tuple[str, str], request_id: str, seconds: float) -> None:
        """The line Lambda logs when it ends an invocation: a timeout's, or the runtime's exit."""
        if error[0] == LAMBDA_TIMEOUT:
            stamp = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
            self._log(f"{stamp} {request_id} Task timed out after {seconds:.2f} seconds")
        else:
            self._log(f"{error[1]}\r{error[0]}")

    def _log_platform_lines(self, invocation: Invocation, result: InvocationResult) -> None:
        """START first (the runtime's lines of this invocation were read after it), then END and REPORT."""
        request_id = invocation.request_id
        with self._lock:
            start_ms = invocation.started_ms or _now_ms()
            self._events.insert(0, (start_ms, f"START RequestId: {request_id} Version: $LATEST"))
            self._events.append((_now_ms(), f"END RequestId: {request_id}"))
            self._events.append((_now_ms(), report_line(result, self.config.memory_mb)))


__all__ = [
    "DOCKERFILE",
    "INIT_TIMEOUT_S",
    "ExecutionEnvironment",
    "FunctionConfig",
    "InvocationResult",
    "image_environment",
    "peak_rss_mb",
]
