"""The Lambda Runtime API one execution environment's runtime talks to (loopback, a port of its own).

``GET /2018-06-01/runtime/invocation/next`` hands out the next event (long-polling), ``POST
…/invocation/<id>/response`` and ``…/error`` take the runtime's answer, ``POST …/init/error``
its init failure. https://docs.aws.amazon.com/lambda/latest/dg/runtimes-api.html

The environment behind it (:class:`RuntimeSide`) decides what to hand out and what an answer means;
:mod:`inferpipe.local.execution_environment` is that side.
"""

from __future__ import annotations

import sys
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from inferpipe.local.guard import refusal

RUNTIME_API = "/2018-06-01/runtime"


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class Invocation:
    """One event handed to a runtime, and what it answered."""

    request_id: str
    body: bytes
    timeout_s: float
    function_arn: str
    taken: threading.Event = field(default_factory=threading.Event)  # the runtime asked for it
    done: threading.Event = field(default_factory=threading.Event)
    started: float = 0.0  # monotonic, when the runtime took it
    started_ms: int = 0  # epoch ms, the same moment
    outcome: tuple[str, bytes] | None = None  # ("response" | "error", body)


class RuntimeSide(Protocol):
    """What the Runtime API asks of its environment."""

    def next_invocation(self) -> Invocation | None: ...  # blocks; None: the environment is stopping

    def complete(self, request_id: str, kind: str, body: bytes) -> bool: ...  # kind: "response" | "error"

    def init_failed(self, body: bytes) -> None: ...


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return  # the environment's process was stopped mid-request: expected
        super().handle_error(request, client_address)


class RuntimeApi:
    """The Lambda Runtime API one environment's runtime talks to (loopback, a port of its own)."""

    def __init__(self, environment: RuntimeSide) -> None:
        env = environment

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # the runtime's client keeps its connection open
            # TCP_NODELAY: with Nagle's algorithm the body (written after the headers) waited for
            # the runtime's delayed ACK of the headers, ~40 ms on every invocation.
            disable_nagle_algorithm = True

            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self, status: int, body: bytes = b"", headers: Mapping[str, str] | None = None) -> None:
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _refused(self) -> bool:
                why = refusal(self.headers.get)
                if why is not None:
                    self._answer(403, why.encode())
                return why is not None

            def do_GET(self) -> None:
                if self._refused():
                    return
                if self.path != f"{RUNTIME_API}/invocation/next":
                    self._answer(404)
                    return
                invocation = env.next_invocation()
                if invocation is None:  # the environment is shutting down
                    self._answer(410)
                    return
                deadline_ms = _now_ms() + int(invocation.timeout_s * 1000)
                self._answer(
                    200,
                    invocation.body,
                    {
                        "Lambda-Runtime-Aws-Request-Id": invocation.request_id,
                        "Lambda-Runtime-Deadline-Ms": str(deadline_ms),
                        "Lambda-Runtime-Invoked-Function-Arn": invocation.function_arn,
                        "Lambda-Runtime-Trace-Id": f"Root=1-{int(time.time()):08x}-{uuid.uuid4().hex[:24]};Sampled=0",
                        "Content-Type": "application/json",
                    },
                )

            def do_POST(self) -> None:
                if self._refused():
                    return
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                parts = self.path[len(RUNTIME_API) :].strip("/").split("/")
                if parts == ["init", "error"]:
                    env.init_failed(body)
                    self._answer(202, b'{"status":"OK"}')
                elif len(parts) == 3 and parts[0] == "invocation" and parts[2] in ("response", "error"):
                    accepted = env.complete(parts[1], parts[2], body)
                    self._answer(202 if accepted else 400, b'{"status":"OK"}' if accepted else b"")
                else:
                    self._answer(404)

        self.server = _QuietServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(
            target=self.server.serve_forever, name=f"runtime-api-{self.address}", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


__all__ = ["RUNTIME_API", "Invocation", "RuntimeApi", "RuntimeSide"]
