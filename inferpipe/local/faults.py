"""Fault injection at the AWS edge of the local stack: the next N matching API calls fail.

A WSGI middleware in front of moto's server answers matching requests with the error AWS itself
would send (throttling or a 5xx), in the wire format of the service's protocol, *before* moto sees
them. Every AWS SDK call of every function goes through it, so the functions' real error handling
runs: botocore's own retries first (the functions' clients: standard mode, 1 to 3 requests a
call, as many as fit in the invocation's remaining time: ``functions.common.aws.timeout_tier``),
then our mapping onto
``TransientError``, then the state machine's Retry. Nothing in ``functions/`` is patched.

Example::

    stack.inject_aws_faults("dynamodb", "PutItem", count=3)                 # ProvisionedThroughputExceeded
    stack.inject_aws_faults("s3", "GetObject", count=4, match="incoming/cat.jpg")   # 503 SlowDown
    stack.inject_aws_faults("sqs", "SendMessage", count=1, status=500, code="InternalError")
    stack.inject_aws_faults("sns", "Publish", count=1, delay=3.0)   # slow, then answered normally
    stack.aws_faults.pending()      # faults not yet used
    stack.aws_faults.fired()        # (service, operation, code) of every fault answered so far

``count`` is a number of HTTP requests, so a count below a call's attempts (3 in preprocess and
inference, 2 in the 15 s sink) is absorbed by the SDK and a larger one surfaces as an error of the call (a TransientError for a
throttle or 5xx, which the state machine retries). With ``delay`` a matching request is not failed but held for that many seconds and then served:
a slow AWS call, which is how a function overruns its timeout while its write still happens.
``match`` narrows a rule to
requests whose path (URL-decoded), query string or body contains the text: a bucket, key, table
or queue name. Operations are identified for the JSON protocols (X-Amz-Target: DynamoDB,
EventBridge, SQS, Step Functions), the query protocol (Action=: SNS, older SQS) and S3's REST
operations on objects (GetObject, HeadObject, PutObject, DeleteObject). Lambda invocations made by
the state machine are faulted with ``stack.inject_failures`` instead (moto's interpreter does not
name HTTP errors of a Lambda task the way Step Functions does).
"""

from __future__ import annotations

import io
import json
import random
import re
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

#: What each service answers by default when throttling: (HTTP status, error code), each as the
#: service's botocore model names it (SNS ``Throttled`` is modelled with HTTP 429, SQS's own
#: throttle is ``RequestThrottled``), so the classifier is tested against codes AWS really sends.
DEFAULT_ERRORS: dict[str, tuple[int, str]] = {
    "s3": (503, "SlowDown"),
    "dynamodb": (400, "ProvisionedThroughputExceededException"),
    "sns": (429, "Throttled"),
    "sqs": (400, "RequestThrottled"),
    "events": (400, "ThrottlingException"),
    "states": (400, "ThrottlingException"),
}
#: Services whose requests the local stack serves, by the signing name the middleware sees.
FAULTABLE_SERVICES = ("s3", "dynamodb", "sns", "sqs", "events", "states", "logs", "lambda", "iam", "sts", "pipes")
_SCOPE = re.compile(r"Credential=[^/]+/[^/]+/[^/]+/([^/]+)/aws4_request")
_MAX_BODY_PEEK = 1024 * 1024


#: A rule's operation that matches every operation of its service.
ANY_OPERATION = "*"


@dataclass
class FaultRule:
    service: str
    operation: str  # or ANY_OPERATION
    remaining: int | None  # None: no limit (a ``rate`` rule until cleared)
    status: int
    code: str
    match: str | None = None
    delay: float = 0.0
    rate: float | None = None  # fail this share of the matching requests (None: every one, ``remaining`` times)
    fired: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "operation": self.operation,
            "remaining": self.remaining,
            "status": self.status,
            "error": self.code,
            "match": self.match,
            "delay": self.delay,
            "rate": self.rate,
            "fired": self.fired,
        }


class AwsFaultInjector:
    """Thread-safe rules: the next ``count`` requests of (service, operation[, match]) fail."""

    def __init__(self, seed: int | None = None) -> None:
        self._rules: list[FaultRule] = []
        self._fired: list[tuple[str, str, str]] = []
        self._lock = threading.Lock()
        self._random = random.Random(seed)

    def inject(
        self,
        service: str,
        operation: str,
        count: int | None = 1,
        *,
        status: int | None = None,
        code: str | None = None,
        match: str | None = None,
        delay: float = 0.0,
        rate: float | None = None,
    ) -> FaultRule:
        """Add a rule. ``count=None`` with a ``rate``: no limit, until :meth:`clear`."""
        if count is None and rate is None:
            raise ValueError("a rule needs a count, a rate or both")
        if count is not None and count < 1:
            raise ValueError("count must be at least 1")
        if rate is not None and not 0.0 < rate <= 1.0:
            raise ValueError("rate must be more than 0 and at most 1")
        if delay < 0:
            raise ValueError("delay must not be negative")
        if status is not None and not 400 <= status <= 599:
            raise ValueError("status must be an HTTP error status, 400 to 599")
        default_status, default_code = DEFAULT_ERRORS.get(service, (503, "ServiceUnavailable"))
        rule = FaultRule(
            service,
            operation or ANY_OPERATION,
            count,
            status or default_status,
            code or default_code,
            match,
            delay,
            rate,
        )
        with self._lock:
            self._rules.append(rule)
        return rule

    def take(self, service: str, operation: str, haystack: Callable[[], str]) -> FaultRule | None:
        with self._lock:
            candidates = [
                r
                for r in self._rules
                if (r.remaining is None or r.remaining > 0)
                and r.service == service
                and r.operation in (operation, ANY_OPERATION)
            ]
            if not candidates:
                return None
            text = haystack() if any(r.match for r in candidates) else ""
            for rule in candidates:
                if rule.match is not None and rule.match not in text:
                    continue
                if rule.rate is not None and self._random.random() >= rule.rate:
                    continue
                if rule.remaining is not None:
                    rule.remaining -= 1
                rule.fired += 1
                self._fired.append((service, operation, f"delayed {rule.delay:g} s" if rule.delay else rule.code))
                return rule
        return None

    def pending(self) -> int:
        """Requests the rules will still fail (a rule without a limit counts as one)."""
        with self._lock:
            return sum(1 if r.remaining is None else r.remaining for r in self._rules)

    def rules(self) -> list[dict[str, Any]]:
        with self._lock:
            return [rule.to_dict() for rule in self._rules]

    def fired(self) -> list[tuple[str, str, str]]:
        with self._lock:
            return list(self._fired)

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()
            self._fired.clear()


@dataclass(frozen=True)
class ApiCall:
    """What an HTTP request to the stack is, as AWS would bill or fault it."""

    service: str  # the signing name: s3, dynamodb, sns, sqs, events, states, lambda, logs…
    protocol: str  # rest-xml (S3), json (X-Amz-Target), query (Action=)
    operation: str  # "" when not identified
    body: bytes  # peeked (non-S3 requests up to 1 MiB); the WSGI input is handed on unchanged
    path: str
    query: str
    content_length: int


def identify(environ: dict[str, Any]) -> ApiCall:
    """The service and operation of a request (reading, then restoring, a small non-S3 body)."""
    service = _service(environ)
    method = environ.get("REQUEST_METHOD", "GET")
    path = urllib.parse.unquote(environ.get("PATH_INFO", ""))
    query = environ.get("QUERY_STRING", "")
    target = environ.get("HTTP_X_AMZ_TARGET", "")
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = b""
    if service == "s3":
        protocol, operation = "rest-xml", _s3_operation(method, path, query)
    else:
        if 0 < length <= _MAX_BODY_PEEK:  # peek, then hand the same bytes on
            body = environ["wsgi.input"].read(length)
            environ["wsgi.input"] = io.BytesIO(body)
        if target:
            protocol, operation = "json", target.rsplit(".", 1)[-1]
        else:
            form = urllib.parse.parse_qs(body.decode("utf-8", "replace"))
            protocol, operation = "query", (form.get("Action") or [""])[0]
    return ApiCall(service, protocol, operation, body, path, query, length)


def _service(environ: dict[str, Any]) -> str:
    found = _SCOPE.search(environ.get("HTTP_AUTHORIZATION", ""))
    return found.group(1) if found else ""


def _s3_operation(method: str, path: str, query: str) -> str:
    parts = [p for p in path.split("/") if p]
    names = {q.split("=")[0] for q in query.split("&") if q}
    if (
        len(parts) == 1
        and method == "GET"
        and not names & {"versioning", "notification", "policy", "encryption", "location"}
    ):
        return "ListObjects"  # ListObjects(V2) and ListObjectVersions: priced as LIST
    if len(parts) < 2 or names & {"uploads", "uploadId", "tagging", "acl", "retention"}:
        return ""
    return {"GET": "GetObject", "HEAD": "HeadObject", "PUT": "PutObject", "DELETE": "DeleteObject"}.get(method, "")


def _error_body(service: str, protocol: str, rule: FaultRule) -> tuple[bytes, str]:
    message = f"Injected fault (inferpipe.local.faults): {rule.code}"
    request_id = str(uuid.uuid4())
    if protocol == "json":
        return json.dumps({"__type": rule.code, "message": message}).encode(), "application/x-amz-json-1.0"
    if protocol == "query":
        body = (
            f"<ErrorResponse><Error><Type>Sender</Type><Code>{rule.code}</Code><Message>{message}</Message></Error>"
            f"<RequestId>{request_id}</RequestId></ErrorResponse>"
        )
        return body.encode(), "text/xml"
    body = f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{rule.code}</Code><Message>{message}</Message><RequestId>{request_id}</RequestId></Error>"
    return body.encode(), "application/xml"


class FaultMiddleware:
    """WSGI middleware: answers requests that match an injected fault, passes the rest to ``app``."""

    def __init__(self, app: Callable[..., Iterable[bytes]], injector: AwsFaultInjector) -> None:
        self.app = app
        self.injector = injector

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if self.injector.pending():
            answered = self._maybe_fail(environ, start_response)
            if answered is not None:
                return answered
        return self.app(environ, start_response)

    def _maybe_fail(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes] | None:
        call = identify(environ)
        service, protocol, operation, body = call.service, call.protocol, call.operation, call.body
        path, query = call.path, call.query
        if not operation:
            return None

        def haystack() -> str:
            return f"{path}?{urllib.parse.unquote(query)}\n{urllib.parse.unquote_plus(body.decode('utf-8', 'replace'))}"

        rule = self.injector.take(service, operation, haystack)
        if rule is None:
            return None
        if rule.delay:
            time.sleep(rule.delay)
            return None  # then served as usual
        payload, content_type = _error_body(service, protocol, rule)
        reason = {400: "Bad Request", 500: "Internal Server Error", 503: "Service Unavailable"}.get(
            rule.status, "Error"
        )
        headers = [("Content-Type", content_type), ("Content-Length", str(len(payload)))]
        if protocol == "json" and service == "sqs":
            headers.append(("x-amzn-query-error", f"{rule.code};Sender"))
        start_response(f"{rule.status} {reason}", headers)
        return [payload]  # the server sends no body for HEAD


def control(injector: AwsFaultInjector, method: str, body: bytes) -> tuple[int, dict[str, Any]]:
    """``/_inferpipe/faults`` of a running stack (``inferpipe local fault``): GET lists the rules,
    POST adds one (``{"service", "operation"?, "error"?, "status"?, "count"?, "rate"?, "delay"?,
    "match"?}``), DELETE clears them all. (HTTP status, JSON answer)."""
    if method == "GET":
        return 200, {"rules": injector.rules(), "fired": len(injector.fired())}
    if method == "DELETE":
        cleared = len(injector.rules())
        injector.clear()
        return 200, {"cleared": cleared}
    if method != "POST":
        return 405, {"error": f"{method} is not GET, POST or DELETE"}
    try:
        spec = json.loads(body or b"{}")
        if not isinstance(spec, dict) or not isinstance(spec.get("service"), str) or not spec["service"]:
            raise ValueError(
                'a fault is {"service": "s3", "operation"?: "GetObject", "error"?, "status"?, "count"?, "rate"?, "delay"?, "match"?}'
            )
        unknown = set(spec) - {"service", "operation", "error", "status", "count", "rate", "delay", "match"}
        if unknown:
            raise ValueError(f"unknown fault field(s): {', '.join(sorted(unknown))}")
        if spec["service"] not in FAULTABLE_SERVICES:
            raise ValueError(
                f"unknown service {spec['service']!r}: one of {', '.join(FAULTABLE_SERVICES)} (AWS signing names)"
            )
        rule = injector.inject(
            spec["service"],
            spec.get("operation") or ANY_OPERATION,
            spec.get("count", 1 if spec.get("rate") is None else None),
            status=spec.get("status"),
            code=spec.get("error"),
            match=spec.get("match"),
            delay=float(spec.get("delay") or 0.0),
            rate=spec.get("rate"),
        )
    except (ValueError, TypeError) as bad:
        return 400, {"error": str(bad)}
    return 201, {"rule": rule.to_dict()}


__all__ = [
    "ANY_OPERATION",
    "DEFAULT_ERRORS",
    "ApiCall",
    "AwsFaultInjector",
    "FaultMiddleware",
    "FaultRule",
    "control",
    "identify",
]
