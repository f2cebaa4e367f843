"""The pool of Lambda execution environments (:mod:`inferpipe.local.execution_environment`).

:class:`EnvironmentPool` keeps a pool per function: an idle warm environment is reused, a new one
is started while the function is below its limit, environments idle for
``local.idle_environment_seconds`` (config/stack.json) are stopped. The limit is the function's
reserved concurrency when it has one (beyond it Lambda throttles: :class:`Throttled`), otherwise
``local.max_environments`` for this machine (beyond it an invocation waits for a free environment,
since on AWS it would have got one).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from inferpipe.local.execution_environment import ExecutionEnvironment, FunctionConfig, InvocationResult
from inferpipe.local.lambda_logs import LogShipper


class Throttled(Exception):
    """The function is at its reserved concurrency: Lambda answers 429 TooManyRequestsException."""


class PoolClosed(Exception):
    """The local stack is stopping: no new invocation starts."""


@dataclass
class _FunctionPool:
    limit: int
    throttles: bool  # the limit is the function's reserved concurrency
    idle: list[ExecutionEnvironment] = field(default_factory=list)
    busy: int = 0
    running: set[ExecutionEnvironment] = field(default_factory=set)  # the environments of ``busy`` that exist yet


@dataclass(frozen=True)
class EnvironmentInfo:
    function_name: str
    log_stream: str
    pid: int
    invocations: int
    init_ms: float | None


class EnvironmentPool:
    """Every function's execution environments (see the module docstring)."""

    def __init__(
        self,
        credentials_for: Callable[[str, str], Mapping[str, str]],
        logs_client_for: Callable[[str, str], Any],
        endpoint_url: Callable[[], str],
        max_environments: Callable[[str], int],
        idle_seconds: float,
    ) -> None:
        self._credentials_for = credentials_for
        self._endpoint_url = endpoint_url
        self._max_environments = max_environments
        self._idle_seconds = idle_seconds
        self._cond = threading.Condition()
        self._pools: dict[str, _FunctionPool] = {}
        self._closed = False
        self.logs = LogShipper(logs_client_for)
        self._reaper = threading.Thread(target=self._reap, name="lambda-environment-reaper", daemon=True)
        self._reaper.start()

    def invoke(self, config: FunctionConfig, request_id: str, body: bytes) -> InvocationResult:
        """Run an invocation in a warm environment of the function, or a new one (may raise :class:`Throttled`)."""
        environment = self._acquire(config)
        with self._cond:
            self._pools[self._key(config)].running.add(environment)
        try:
            result = environment.invoke(request_id, body)
        finally:
            with self._cond:
                self._pools[self._key(config)].running.discard(environment)
            self._release(config, environment)
        return result

    def kill_running(self, function_name: str | None = None) -> int:
        """Kill the environments running an invocation right now (of one function), as a host
        failure would: SIGKILL mid-invocation, which ends the invocation ``Runtime.ExitError``."""
        with self._cond:
            victims = [
                e
                for pool in self._pools.values()
                for e in pool.running
                if function_name is None or e.config.name == function_name
            ]
        for environment in victims:
            environment.kill()
        return len(victims)

    def _key(self, config: FunctionConfig) -> str:
        return f"{config.arn}#{config.fingerprint}"

    def _acquire(self, config: FunctionConfig) -> ExecutionEnvironment:
        key = self._key(config)
        with self._cond:
            self._retire_stale(config, key)
            while True:
                if self._closed:
                    raise PoolClosed("the local stack is stopping")
                pool = self._pools.get(key)
                reserved = config.reserved_concurrency
                limit = reserved if reserved is not None else self._max_environments(config.name)
                if pool is None:
                    pool = self._pools[key] = _FunctionPool(limit, reserved is not None)
                pool.limit, pool.throttles = limit, reserved is not None
                while pool.idle:
                    environment = pool.idle.pop()  # the most recently used: the warmest
                    if not environment.dead and environment.process.poll() is None:
                        pool.busy += 1
                        return environment
                if pool.busy < pool.limit:
                    pool.busy += 1
                    break
                if pool.throttles:
                    raise Throttled(f"Rate Exceeded. {config.name} is at its reserved concurrency of {pool.limit}")
                self._cond.wait(1.0)
        try:
            credentials = self._credentials_for(config.role_arn, config.region)
            return ExecutionEnvironment(config, credentials, self._endpoint_url(), self.logs)
        except BaseException:
            with self._cond:
                pool.busy -= 1
                self._cond.notify_all()
            raise

    def _release(self, config: FunctionConfig, environment: ExecutionEnvironment) -> None:
        with self._cond:
            pool = self._pools[self._key(config)]
            pool.busy -= 1
            keep = not environment.dead and not self._closed
            if keep:
                pool.idle.append(environment)
            self._cond.notify_all()
        if not keep:
            environment.close()

    def _retire_stale(self, config: FunctionConfig, key: str) -> None:
        """A changed configuration (variables, memory, timeout, code) gets new environments, as in Lambda."""
        for other_key, pool in list(self._pools.items()):
            if other_key.split("#", 1)[0] == config.arn and other_key != key:
                stale, pool.idle = pool.idle, []
                for environment in stale:
                    threading.Thread(target=environment.close, daemon=True).start()
                if pool.busy == 0:
                    del self._pools[other_key]

    def _reap(self) -> None:
        while True:
            with self._cond:
                if self._closed:
                    return
                now = time.monotonic()
                expired = []
                for pool in self._pools.values():
                    keep = [e for e in pool.idle if now - e.last_used < self._idle_seconds and not e.dead]
                    expired += [e for e in pool.idle if e not in keep]
                    pool.idle = keep
            for environment in expired:
                environment.close()
            with self._cond:
                if not self._closed:
                    self._cond.wait(min(5.0, self._idle_seconds / 2))

    def environments(self, function_name: str | None = None) -> list[EnvironmentInfo]:
        """The warm environments waiting for an invocation (of one function)."""
        with self._cond:
            return [
                EnvironmentInfo(e.config.name, e.log_stream, e.process.pid, e.invocations, e.init_ms)
                for pool in self._pools.values()
                for e in pool.idle
                if function_name is None or e.config.name == function_name
            ]

    def stop_idle(self, function_name: str | None = None) -> int:
        """Stop idle environments (of one function, or all): the next invocations start cold."""
        with self._cond:
            stopping = []
            for pool in self._pools.values():
                keep = [e for e in pool.idle if function_name is not None and e.config.name != function_name]
                stopping += [e for e in pool.idle if e not in keep]
                pool.idle = keep
        for environment in stopping:
            environment.close()
        return len(stopping)

    def close(self, timeout: float = 30.0) -> None:
        """Stop every environment (busy ones after their invocation), then the log shipper."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        with self._cond:
            while any(pool.busy for pool in self._pools.values()) and time.monotonic() < deadline:
                self._cond.wait(0.2)
        self.stop_idle()
        self._reaper.join(6)
        self.logs.flush()
        self.logs.close()


__all__ = ["EnvironmentInfo", "EnvironmentPool", "PoolClosed", "Throttled"]
