"""Injected Lambda failures: the next invocations of a function answer an error instead of running.

Example::

    inject_failures("inferpipe-inference", count=2)   # next 2 invocations fail as throttled
    # ...the execution's history then shows 2 LambdaFunctionFailed events, then success.

(Faults of the AWS APIs the functions call are :mod:`inferpipe.local.faults`.)
"""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass

#: The error a throttled Lambda invocation shows in Step Functions.
THROTTLED = "Lambda.TooManyRequestsException"


def function_name(name_or_arn: str) -> str:
    """The function's name, from its name or its (qualified) ARN."""
    if ":function:" in name_or_arn:
        return name_or_arn.split(":function:", 1)[1].split(":", 1)[0]
    return name_or_arn


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

    def inject(
        self, function: str, count: int = 1, error_type: str = THROTTLED, message: str = "Rate Exceeded."
    ) -> None:
        """The next ``count`` invocations of ``function`` (name or ARN) fail with ``error_type``."""
        if count < 1:
            raise ValueError("count must be at least 1")
        with self._lock:
            queue = self._queues.setdefault(function_name(function), collections.deque())
            queue.extend(InjectedFault(error_type, message) for _ in range(count))

    def take(self, function: str) -> InjectedFault | None:
        with self._lock:
            queue = self._queues.get(function_name(function))
            return queue.popleft() if queue else None

    def pending(self, function: str) -> int:
        with self._lock:
            return len(self._queues.get(function_name(function), ()))

    def clear(self) -> None:
        with self._lock:
            self._queues.clear()


FAULTS = FaultInjector()


def inject_failures(
    function: str, count: int = 1, error_type: str = THROTTLED, message: str = "Rate Exceeded."
) -> None:
    """Make the next ``count`` invocations of ``function`` fail before running (see :class:`FaultInjector`)."""
    FAULTS.inject(function, count, error_type, message)


__all__ = ["FAULTS", "THROTTLED", "FaultInjector", "InjectedFault", "function_name", "inject_failures"]
