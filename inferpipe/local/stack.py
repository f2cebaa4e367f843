"""The local stack: moto's server in this process, the bridges installed, every resource provisioned.

Example::

    with LocalStack().start() as stack:            # a free loopback port
        s3 = stack.client("s3")
        s3.put_object(Bucket=stack.resources.buckets["input"], Key="incoming/cat.jpg", Body=data)
        stack.client("stepfunctions").list_executions(stateMachineArn=stack.state_machine_arn)

While it runs, this process's environment points every AWS SDK at it (``AWS_ENDPOINT_URL``, dummy
credentials, region). Lambda functions run in execution environments of their own (worker
processes under ``python -m awslambdaric``, see :mod:`inferpipe.local.execution_environment`), which reach
the stack through the same endpoint; ``lambda_mode="in-process"`` runs them in threads of this
process instead (no memory limit, timeouts cannot kill; the benchmark uses it to show what
isolation costs). ``stop()``
restores the environment and moto's configuration and waits for every thread it started.
Only one local stack per process: moto keeps its state (and ``MOTO_PORT``) process-wide.
"""

from __future__ import annotations

import copy
import gc
import json
import logging
import os
import secrets
import socket
import threading
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any, cast

import boto3
from botocore.config import Config

from inferpipe.local import credentials, event_delivery, lambda_faults, lambda_service, patches, persistence
from inferpipe.local.console import PREFIX as CONSOLE_PREFIX
from inferpipe.local.console import Console
from inferpipe.local.faults import AwsFaultInjector, FaultMiddleware
from inferpipe.local.faults import control as fault_control
from inferpipe.local.guard import TOKEN_HEADER, BrowserGuard, ControlGuard
from inferpipe.local.persistence import Snapshotter
from inferpipe.local.pipes import PipeRunner
from inferpipe.local.provision import Provisioned, provision
from inferpipe.local.usage import UsageMeter
from inferpipe.stack.resources import DEFAULT_ACCOUNT_ID, DEFAULT_REGION, Resources, render_resources

_LOG = logging.getLogger("inferpipe.local.stack")

#: moto's configuration for the stack: run state machines, run Lambdas without Docker (our bridge).
MOTO_CONFIG = {"stepfunctions": {"execute_state_machine": True}, "lambda": {"use_docker": False}}
#: Dummy credentials: nothing started here can reach a real AWS account.
DUMMY_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing"}
_ENV_KEYS = ("MOTO_PORT", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_PROFILE", *DUMMY_CREDENTIALS)

_active_lock = threading.Lock()
_active: LocalStack | None = None


class LocalStackError(RuntimeError):
    """The local stack could not start (port taken, another stack running, provisioning failed)."""


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _post_json(url: str, body: dict[str, Any] | None = None, token: str = "") -> Any:
    data = json.dumps(body or {}).encode("utf-8")
    request = urllib.request.Request(
        url, data=data, method="POST", headers={"Content-Type": "application/json", TOKEN_HEADER: token}
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        raw = answer.read()
    return json.loads(raw) if raw else None


def _close_cached_function_clients() -> None:
    """Drop the functions' process-wide clients so they are recreated for the current endpoint."""
    import sys

    aws = sys.modules.get("functions.common.aws")
    if aws is not None:  # not imported yet: nothing cached
        aws.reset_clients()


class LocalStack:
    """inferpipe on moto, in this process. See the module docstring for an example."""

    def __init__(
        self,
        prefix: str | None = None,
        region: str = DEFAULT_REGION,
        definition: str | None = None,
        *,
        default_model: str | None = None,
        lambda_mode: str = "isolated",
        trigger: str | None = None,
        control_token: str | None = None,
        state_dir: Path | None = None,
    ) -> None:
        """``definition`` replaces the text of the state machine file (tests only); ``default_model``
        the deployment's default model, as Terraform's variable of that name does; ``lambda_mode``
        "isolated" (execution environments, the default) or "in-process"; ``trigger`` "batched"
        (S3 events buffered in SQS and drained by a pipe into batches; stack.json's default) or
        "direct" (one execution per S3 event); ``state_dir`` keeps the stack's state there across
        restarts and crashes (:mod:`inferpipe.local.persistence`; None: the state lives until stop)."""
        if lambda_mode not in lambda_service.LAMBDA_MODES:
            raise LocalStackError(
                f"unknown lambda_mode {lambda_mode!r}: expected one of {', '.join(lambda_service.LAMBDA_MODES)}"
            )
        self.lambda_mode = lambda_mode
        self._pool: Any = None
        self.resources: Resources = render_resources(prefix, DEFAULT_ACCOUNT_ID, region, default_model=default_model)
        self.trigger = trigger or self.resources.trigger_buffer.default_mode
        if self.trigger not in self.resources.trigger_buffer.modes:
            raise LocalStackError(
                f"unknown trigger {self.trigger!r}: expected one of {', '.join(self.resources.trigger_buffer.modes)}"
            )
        self.pipe: PipeRunner | None = None
        self._definition = definition
        self._server: Any = None
        self._port: int | None = None
        self._provisioned: Provisioned | None = None
        self._clients: dict[str, Any] = {}
        self._clients_lock = threading.Lock()
        self._saved_env: dict[str, str | None] = {}
        self._saved_config: Any = None
        self._threads_before: set[threading.Thread] = set()
        self._werkzeug_level: int | None = None
        #: Faults at the AWS edge (see :mod:`inferpipe.local.faults`); also :meth:`inject_aws_faults`.
        self.aws_faults = AwsFaultInjector()
        #: The secret a request to the control endpoints (/moto-api/*, /_inferpipe/*) must carry
        #: (:class:`inferpipe.local.guard.ControlGuard`); the daemon hands its own in, else a new one.
        self.control_token = control_token or secrets.token_urlsafe(32)
        #: Every request that reached moto, counted as AWS bills it (see :mod:`inferpipe.local.usage`).
        self.usage_meter = UsageMeter(caller_of=credentials.role_of_access_key)
        self.state_dir = Path(state_dir) if state_dir is not None else None
        self._snapshots: Snapshotter | None = None
        #: What the last start restored from the state folder: executions, and the snapshot's time.
        self.restored: dict[str, Any] = {}

    @classmethod
    def active(cls) -> LocalStack | None:
        """The local stack running in this process, if any (e.g. to share it between test modules)."""
        with _active_lock:
            return _active

    # -- life cycle ------------------------------------------------------------------------

    def start(self, port: int = 0) -> LocalStack:
        """Serve on 127.0.0.1:``port`` (0: a free port), configure moto, install the bridges, provision."""
        global _active
        from moto.core.config import default_user_config
        from moto.moto_server.threaded_moto_server import ThreadedMotoServer

        with _active_lock:
            if _active is not None:
                raise LocalStackError(f"a local stack already runs in this process at {_active.endpoint_url}")
            _active = self
        try:
            if port and not _port_free(port):
                raise LocalStackError(f"port {port} on 127.0.0.1 is already in use")
            self._threads_before = set(threading.enumerate())
            self._saved_config = copy.deepcopy(default_user_config)
            self._saved_env = {key: os.environ.get(key) for key in _ENV_KEYS}
            werkzeug = logging.getLogger("werkzeug")
            self._werkzeug_level = werkzeug.level
            werkzeug.setLevel(logging.WARNING)  # not one line per request
            self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
            self._server.start()
            wsgi = self._server._server  # werkzeug's server: every request goes through its .app
            faults = FaultMiddleware(self.usage_meter.wrap(wsgi.app), self.aws_faults)
            control = {"/_inferpipe/faults": lambda method, body: fault_control(self.aws_faults, method, body)}
            # the console (its page and API: AWS calls any local process can make) sits outside the token guard
            wsgi.app = BrowserGuard(Console(ControlGuard(faults, self.control_token, control), target=self._own_target))
            self._port = int(self._server.get_host_and_port()[1])
            os.environ.update(
                {
                    "MOTO_PORT": str(self._port),  # moto's state machine interpreter calls Lambda here
                    "AWS_ENDPOINT_URL": self.endpoint_url,
                    "AWS_DEFAULT_REGION": self.resources.region,
                    "AWS_REGION": self.resources.region,
                    **DUMMY_CREDENTIALS,
                }
            )
            os.environ.pop("AWS_PROFILE", None)
            _post_json(f"{self.endpoint_url}/moto-api/reset", token=self.control_token)
            _post_json(f"{self.endpoint_url}/moto-api/config", MOTO_CONFIG, token=self.control_token)
            saved = persistence.load(self.state_dir / persistence.SNAPSHOT_FILE) if self.state_dir else None
            if saved is not None:
                persistence.restore_backends(saved)  # before provisioning, which converges the rest
            patches.install()
            self._start_lambda()
            _close_cached_function_clients()
            self._provisioned = provision(self.client, self.resources, self._definition, trigger=self.trigger)
            if saved is not None:
                self.restored = {"executions": persistence.restore_executions(saved), "snapshot": saved["written"]}
                _LOG.info(
                    "restored the state of %s: %d executions, snapshot of %s",
                    self.state_dir,
                    self.restored["executions"],
                    saved["written"].isoformat(timespec="seconds"),
                )
            if self.state_dir is not None:
                self._snapshots = persistence.Snapshotter(
                    self.state_dir / persistence.SNAPSHOT_FILE, lambda: self.usage_meter.requests
                ).start()
            if self._provisioned.pipe_name:
                self._start_pipe(self._provisioned.pipe_name)
        except BaseException:
            self.stop()
            raise
        _LOG.info("local stack running at %s (console: %s)", self.endpoint_url, self.console_url)
        return self

    def _own_target(self) -> Any:
        """A Target of this stack, for the console's answers."""
        from inferpipe.target import Target

        return Target(endpoint_url=self.endpoint_url, resources=self.resources)

    @property
    def console_url(self) -> str:
        return f"{self.endpoint_url}{CONSOLE_PREFIX}"

    def stop(self, timeout: float = 30.0) -> None:
        """Stop executions and the server, undo every patch and environment change, join threads."""
        global _active
        if _active is not self:
            return
        try:
            if self.pipe is not None:
                self.pipe.stop()
                self.pipe = None
            if self._server is not None:
                self._stop_executions()
                lambda_service.wait_for_async_invocations(timeout)
                if self._snapshots is not None:
                    self._snapshots.stop()  # the last snapshot: what a clean stop leaves
                    self._snapshots = None
                if self._pool is not None:
                    self._pool.close(timeout)
                for client in self._clients.values():
                    client.close()
                self._clients.clear()
                _close_cached_function_clients()
                from moto.moto_api._internal.models import moto_api_backend

                moto_api_backend.reset()
                self._server.stop()
                server = getattr(self._server, "_server", None)  # ThreadedMotoServer.stop() leaves it bound
                if server is not None:
                    server.server_close()
        finally:
            self._server = None
            self._pool = None
            self.aws_faults.clear()
            patches.uninstall()
            self._restore_config()
            self._restore_env()
            if self._werkzeug_level is not None:
                logging.getLogger("werkzeug").setLevel(self._werkzeug_level)
                self._werkzeug_level = None
            self._provisioned = None
            self._port = None
            with _active_lock:
                _active = None
        leftover = self._join_new_threads(timeout)
        if leftover:
            _LOG.warning("threads still running after stop: %s", ", ".join(t.name for t in leftover))

    def __enter__(self) -> LocalStack:
        if self._server is None:
            self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    # -- what a caller uses ----------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._server is not None and self._provisioned is not None

    @property
    def port(self) -> int:
        if self._port is None:
            raise LocalStackError("the local stack is not running")
        return self._port

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def provisioned(self) -> Provisioned:
        if self._provisioned is None:
            raise LocalStackError("the local stack is not running")
        return self._provisioned

    @property
    def state_machine_arn(self) -> str:
        return self.provisioned.state_machine_arn

    def client(self, service: str) -> Any:
        """A boto3 client for ``service`` at this stack (cached; closed by ``stop()``)."""
        with self._clients_lock:
            if service not in self._clients:
                self._clients[service] = boto3.session.Session().client(
                    service,
                    endpoint_url=self.endpoint_url,
                    region_name=self.resources.region,
                    aws_access_key_id=DUMMY_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                    aws_secret_access_key=DUMMY_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                    aws_session_token=DUMMY_CREDENTIALS["AWS_SESSION_TOKEN"],
                    config=Config(retries={"mode": "standard", "max_attempts": 3}, read_timeout=120),
                )
            return self._clients[service]

    def inject_failures(self, function_key: str, count: int = 1, error_type: str = lambda_faults.THROTTLED) -> None:
        """The next ``count`` invocations of a function ("preprocess", "inference", "sink") fail."""
        lambda_faults.inject_failures(self.resources.functions[function_key].name, count, error_type)

    def inject_aws_faults(self, service: str, operation: str, count: int = 1, **options: Any) -> None:
        """The next ``count`` requests of an AWS API (e.g. "dynamodb", "PutItem") answer a throttle or 5xx,
        or, with ``delay``, are answered normally after that many seconds.

        ``options`` (``status``, ``code``, ``match``, ``delay``) are those of
        :meth:`inferpipe.local.faults.AwsFaultInjector.inject`: the error is sent at the HTTP edge,
        in the service's wire format.
        """
        self.aws_faults.inject(service, operation, count, **options)

    def delivery_failures(self) -> list[event_delivery.DeliveryFailure]:
        """Events the trigger rule could not turn into executions."""
        return event_delivery.delivery_failures()

    def invocations(self, function_key: str | None = None) -> list[lambda_service.InvocationRecord]:
        name = self.resources.functions[function_key].name if function_key else None
        return lambda_service.invocations(name)

    def environments(self, function_key: str | None = None) -> list[Any]:
        """The idle warm execution environments (of one function): log stream, pid, invocations, init."""
        if self._pool is None:
            return []
        name = self.resources.functions[function_key].name if function_key else None
        return list(self._pool.environments(name))

    def stop_environments(self, function_key: str | None = None) -> int:
        """Stop the idle environments (of one function): the next invocations are cold starts."""
        if self._pool is None:
            return 0
        name = self.resources.functions[function_key].name if function_key else None
        return int(self._pool.stop_idle(name))

    def kill_environments(self, function_key: str | None = None) -> int:
        """Kill the environments running an invocation now (of one function): how many. Each of
        those invocations ends ``Runtime.ExitError``, which the state machine retries."""
        if self._pool is None:
            return 0
        name = self.resources.functions[function_key].name if function_key else None
        return int(self._pool.kill_running(name))

    def flush_logs(self) -> None:
        """Return once the asynchronous invocations already due have run (EventBridge's status
        recorder after each execution) and every log line the functions wrote is in the stack's
        CloudWatch Logs."""
        lambda_service.wait_for_async_invocations()
        if self._pool is not None:
            self._pool.logs.flush()

    # -- internals -------------------------------------------------------------------------

    def _start_pipe(self, name: str) -> None:
        """Run the trigger's pipe (moto stores it, :class:`~inferpipe.local.pipes.PipeRunner` runs it)."""
        described = self.client("pipes").describe_pipe(Name=name)
        role = credentials.role_credentials(described["RoleArn"], self.resources.region)
        self.pipe = PipeRunner(
            self.endpoint_url,
            self.resources.region,
            described,
            role,
            self.usage_meter,
            caller=described["RoleArn"].rsplit("/", 1)[-1],
        ).start()

    def _start_lambda(self) -> None:
        """Run functions as configured: an execution environment pool, or in this process."""
        if self.lambda_mode == "in-process":
            lambda_service.set_lambda_mode("in-process")
            return
        from inferpipe.local.environment_pool import EnvironmentPool

        local = self.resources.local_lambda
        limits = {spec.name: local.max_environments[key] for key, spec in self.resources.functions.items()}
        default_limit = min(limits.values()) if limits else 2

        def logs_client(region: str, role_arn: str) -> Any:
            return credentials.platform_client("logs", region, role_arn)

        self._pool = EnvironmentPool(
            credentials_for=credentials.role_credentials,
            logs_client_for=logs_client,
            endpoint_url=lambda: self.endpoint_url,
            max_environments=lambda name: limits.get(name, default_limit),
            idle_seconds=local.idle_environment_seconds,
        )
        lambda_service.set_lambda_mode("isolated", self._pool)

    def _stop_executions(self) -> None:
        """Stop RUNNING executions, so their interpreter threads end before the server does."""
        sfn = self.client("stepfunctions")
        try:
            for machine in sfn.list_state_machines()["stateMachines"]:
                pages = sfn.get_paginator("list_executions").paginate(
                    stateMachineArn=machine["stateMachineArn"], statusFilter="RUNNING"
                )
                for page in pages:
                    for execution in page["executions"]:
                        sfn.stop_execution(
                            executionArn=execution["executionArn"],
                            error="LocalStackStopped",
                            cause="the local stack is stopping",
                        )
        except Exception:  # noqa: BLE001  (logged with its traceback; stopping goes on)
            _LOG.exception("could not stop the running executions")

    def _restore_config(self) -> None:
        if self._saved_config is None:
            return
        from moto.core.config import default_user_config

        config = cast(dict[str, Any], default_user_config)  # moto's TypedDict, restored as the plain dict it is
        config.clear()
        config.update(self._saved_config)
        self._saved_config = None

    def _restore_env(self) -> None:
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._saved_env = {}

    def _join_new_threads(self, timeout: float) -> list[threading.Thread]:
        """Wait for the threads started since ``start()``; the ones still alive at the deadline."""
        deadline = time.monotonic() + timeout
        while True:
            gc.collect()  # closes the sockets of clients nobody holds, ending keep-alive handlers
            alive = [
                t
                for t in threading.enumerate()
                if t not in self._threads_before and t is not threading.current_thread()
            ]
            if not alive or time.monotonic() >= deadline:
                return alive
            alive[0].join(min(0.2, max(0.0, deadline - time.monotonic())))


__all__ = ["DUMMY_CREDENTIALS", "MOTO_CONFIG", "LocalStack", "LocalStackError"]
