"""Keep web pages out of the local stack's loopback endpoints.

The local stack (moto's server, each environment's Runtime API) listens on 127.0.0.1 and, like
AWS's own local tools, checks no signature unless IAM enforcement is on. A page open in a
browser on the same machine could still reach it: a "simple" cross-site POST needs no CORS
preflight, and SQS/SNS take form-encoded bodies; a DNS-rebinding page could even read answers.
AWS SDKs and the CLI never send ``Origin`` or ``Sec-Fetch-*`` headers and always name the
loopback host, browsers always do one or the other, so a request is refused when it carries
``Origin``, comes from another site (``Sec-Fetch-Site``), or names a host that is not loopback.
https://developer.mozilla.org/en-US/docs/Web/HTTP/Headers/Sec-Fetch-Site
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from inferpipe.local.usage import USAGE_PATH

_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")


#: The stack's own page (inferpipe/local/console.py): the one place a browser's request may carry an
#: Origin, when it is the stack's own origin and the browser says it is same-origin.
CONSOLE_PREFIX = "/console"


def refusal(header: Callable[[str], str | None], path: str = "") -> str | None:
    """Why a request must be refused (None when it may pass); ``header(name)`` reads one header.

    The console's page (``/console``) may call its own API (``/console/api/*``) from the stack's
    origin: a browser sends ``Origin`` on such a POST, so for those paths an ``Origin`` equal to
    ``http://<Host>`` with ``Sec-Fetch-Site: same-origin`` passes. Any other origin, and any origin
    on every other path, is refused as before."""
    host = (header("Host") or "").lower()
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    if host and not (name in _LOOPBACK_HOSTS or name.endswith(".localhost")):
        return f"host {host!r} is not a loopback name"
    origin = header("Origin")
    console = path == CONSOLE_PREFIX or path.startswith(CONSOLE_PREFIX + "/")
    if origin is not None and not (
        console and host and origin.lower() == f"http://{host}" and header("Sec-Fetch-Site") == "same-origin"
    ):
        return "requests from web pages (an Origin header) are refused"
    if (header("Sec-Fetch-Site") or "none") not in ("none", "same-origin"):
        return "cross-site browser requests are refused"
    return None


class BrowserGuard:
    """WSGI middleware: 403 for what :func:`refusal` refuses, everything else to ``app``."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app

    def __call__(self, environ: Mapping[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        def header(name: str) -> str | None:
            value = environ.get("HTTP_" + name.upper().replace("-", "_"))
            return None if value is None else str(value)

        why = refusal(header, str(environ.get("PATH_INFO", "")))
        if why is None:
            return self.app(environ, start_response)
        body = f"inferpipe local stack: {why}\n".encode()
        start_response("403 Forbidden", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]


#: Paths that control the stack rather than emulate AWS: moto's own (``/moto-api/reset`` wipes
#: every resource) and the local stack's (``/_inferpipe/faults``). They need the stack's token.
CONTROL_PREFIXES = ("/moto-api", "/_inferpipe/")
#: ... but for these, read-only and harmless: the request counts ``inferpipe cost`` prices.
OPEN_PATHS = (USAGE_PATH,)
TOKEN_HEADER = "X-Inferpipe-Token"


class ControlGuard:
    """WSGI middleware: a control path answers only a request carrying the stack's token (a
    per-stack secret in its state folder, readable by its user alone); ``handlers`` answer the
    local stack's own control paths, moto's pass on to ``app``."""

    def __init__(
        self,
        app: Callable[..., Iterable[bytes]],
        token: str,
        handlers: Mapping[str, Callable[[str, bytes], tuple[int, Any]]],
    ) -> None:
        self.app, self.token, self.handlers = app, token, dict(handlers)

    def __call__(self, environ: Mapping[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = str(environ.get("PATH_INFO", ""))
        if not path.startswith(CONTROL_PREFIXES) or (
            path in OPEN_PATHS and environ.get("REQUEST_METHOD", "GET") == "GET"
        ):
            return self.app(environ, start_response)
        given = str(environ.get("HTTP_" + TOKEN_HEADER.upper().replace("-", "_"), ""))
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            return _answer(
                start_response,
                403,
                {
                    "error": f"the local stack's control endpoints need its token ({TOKEN_HEADER}); "
                    "`inferpipe local` commands send it"
                },
            )
        handler = self.handlers.get(path)
        if handler is None:
            return self.app(environ, start_response)
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if 0 < length <= 1 << 20 else b""
        status, answer = handler(str(environ.get("REQUEST_METHOD", "GET")), body)
        return _answer(start_response, status, answer)


def _answer(start_response: Callable[..., Any], status: int, answer: Any) -> list[bytes]:
    body = (json.dumps(answer) + "\n").encode()
    reason = {200: "OK", 201: "Created", 400: "Bad Request", 403: "Forbidden", 405: "Method Not Allowed"}.get(
        status, "Error"
    )
    start_response(f"{status} {reason}", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


__all__ = ["CONTROL_PREFIXES", "TOKEN_HEADER", "BrowserGuard", "ControlGuard", "refusal"]
