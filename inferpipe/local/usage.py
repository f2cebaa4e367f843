"""What the local stack was asked to do, counted at its HTTP edge as AWS would bill it.

:class:`UsageMeter` is WSGI middleware in front of moto's server. For every request it notes the
time, the service (the request's signing name), the operation, and the billing units AWS would
count: one per request, except where a service bills by size (SNS, SQS and EventBridge count
each 64 KB chunk of payload; EventBridge each entry of a PutEvents; a DynamoDB write each KB of
the item it writes, sized by DynamoDB's rules: :func:`dynamodb_item_bytes`).
``GET /_inferpipe/usage?since=<epoch seconds>`` answers the totals since then, by
caller, service and operation, as JSON (loopback only, behind
:class:`~inferpipe.local.guard.BrowserGuard`). The caller is the IAM role whose credentials
signed the request (the functions', the state machine's), or ``client`` for anything else (a
CLI, a test, an upload). :mod:`inferpipe.cost` prices the roles' requests: the pipeline's work.

Lambda, Step Functions and CloudWatch Logs are billed from what they record (REPORT lines,
execution histories, log bytes), not from requests; their requests are counted here all the same.
"""

from __future__ import annotations

import bisect
import json
import math
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable
from typing import Any

from inferpipe.local.faults import ApiCall, identify

USAGE_PATH = "/_inferpipe/usage"
#: At most this many requests are remembered, oldest forgotten first (~25 requests an image: the
#: last ~20,000 images; ~110 bytes each, ~55 MB at most).
MAX_RECORDS = 500_000
_CHUNK = 64 * 1024
_ACCESS_KEY = re.compile(r"Credential=([^/,\s]+)/")
CLIENT = "client"


def billing_units(call: ApiCall) -> int:
    """How many units AWS bills for this request (see the module docstring)."""
    size = max(len(call.body), call.content_length)
    if call.service in ("sns", "sqs"):
        return max(1, math.ceil(size / _CHUNK))
    if call.service == "events" and call.operation == "PutEvents":
        entries = _json_body(call).get("Entries") or []
        return sum(max(1, math.ceil(len(json.dumps(entry)) / _CHUNK)) for entry in entries) or 1
    if call.service == "dynamodb" and call.operation in _DYNAMODB_WRITE_UNITS:
        return _DYNAMODB_WRITE_UNITS[call.operation](_json_body(call), size)
    return 1


def _json_body(call: ApiCall) -> dict[str, Any]:
    try:
        body = json.loads(call.body or b"{}")
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def dynamodb_item_bytes(item: Any) -> int:
    """An item's size as DynamoDB counts it for capacity: the UTF-8 bytes of each attribute's name
    plus its value's size (strings their UTF-8 bytes, numbers 1 byte per 2 significant digits + 1,
    binaries their raw bytes, null and booleans 1, lists and maps 3 + 1 per element + the elements).
    https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/CapacityUnitCalculations.html
    """
    if not isinstance(item, dict):
        return 0
    return sum(len(str(name).encode()) + _value_bytes(value) for name, value in item.items())


def _value_bytes(value: Any) -> int:
    if not isinstance(value, dict) or len(value) != 1:
        return len(json.dumps(value).encode())  # not an AttributeValue: bound it by its JSON
    kind, data = next(iter(value.items()))
    if kind == "S":
        return len(str(data).encode())
    if kind == "N":
        return _number_bytes(str(data))
    if kind == "B":
        return _raw_bytes(data)
    if kind in ("BOOL", "NULL"):
        return 1
    if kind == "SS":
        return sum(len(str(v).encode()) for v in data)
    if kind == "NS":
        return sum(_number_bytes(str(v)) for v in data)
    if kind == "BS":
        return sum(_raw_bytes(v) for v in data)
    if kind == "L":
        return 3 + sum(1 + _value_bytes(v) for v in data)
    if kind == "M":
        return 3 + sum(1 + len(str(k).encode()) + _value_bytes(v) for k, v in data.items())
    return len(json.dumps(data).encode())


def _raw_bytes(encoded: Any) -> int:
    """A binary's size: base64 on the wire, DynamoDB counts the bytes it encodes."""
    text = str(encoded)
    return len(text) * 3 // 4 - text[-2:].count("=")


def _number_bytes(text: str) -> int:
    digits = text.lstrip("+-").lower().split("e")[0].replace(".", "").strip("0")
    return (len(digits) + 1) // 2 + 1


def _write_units(item_bytes: int) -> int:
    """Write request units for an item of this size: one per 1 KB, at least one."""
    return max(1, math.ceil(item_bytes / 1024))


def _put_units(body: dict[str, Any], size: int) -> int:
    # A replaced item bills the larger of the old and the new; the edge sees only the new one.
    return _write_units(dynamodb_item_bytes(body["Item"])) if "Item" in body else _write_units(size)


def _batch_write_units(body: dict[str, Any], size: int) -> int:
    requests = [r for table in (body.get("RequestItems") or {}).values() for r in table if isinstance(r, dict)]
    if not requests:
        return _write_units(size)
    # A DeleteRequest bills the deleted item, which the edge cannot see: one unit (items of ≤ 1 KB).
    return sum(_write_units(dynamodb_item_bytes((r.get("PutRequest") or {}).get("Item"))) for r in requests)


def _transact_write_units(body: dict[str, Any], size: int) -> int:
    items = [i for i in body.get("TransactItems") or [] if isinstance(i, dict)]
    if not items:
        return 2 * _write_units(size)
    # Two units per KB of each item written; a check, update or delete, whose item the edge cannot see: two.
    return sum(2 * _write_units(dynamodb_item_bytes((i.get("Put") or {}).get("Item"))) for i in items)


#: How each DynamoDB write is billed, from its request body (and its size, when the body says nothing).
#: UpdateItem and DeleteItem bill the item as it is stored, which the edge cannot see: the request's
#: size bounds it (an update's new values plus its key; a delete's key).
_DYNAMODB_WRITE_UNITS: dict[str, Callable[[dict[str, Any], int], int]] = {
    "PutItem": _put_units,
    "UpdateItem": lambda body, size: _write_units(size),
    "DeleteItem": lambda body, size: _write_units(size),
    "BatchWriteItem": _batch_write_units,
    "TransactWriteItems": _transact_write_units,
}


class UsageMeter:
    """Counts every request of the app it wraps (:meth:`wrap`), and serves the counts at :data:`USAGE_PATH`."""

    def __init__(self, caller_of: Callable[[str], str | None] = lambda key: None) -> None:
        """``caller_of(access key id)`` names the role a key belongs to (None: not a role's)."""
        self._caller_of = caller_of
        self._callers: dict[str, str] = {}
        self._lock = threading.Lock()
        self._times: list[float] = []
        self._records: list[tuple[str, str, str, int]] = []
        #: Requests counted since the meter was made (the state snapshots watch it for changes).
        self.requests = 0

    def wrap(self, app: Callable[..., Iterable[bytes]]) -> Callable[..., Iterable[bytes]]:
        """``app`` with every request counted (a stack restarted on a new server keeps its meter)."""

        def metered(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            if environ.get("PATH_INFO") == USAGE_PATH and environ.get("REQUEST_METHOD") == "GET":
                return self._answer(environ, start_response)
            call = identify(environ)
            if call.service:
                key = _ACCESS_KEY.search(environ.get("HTTP_AUTHORIZATION", ""))
                self.record(
                    self._caller(key.group(1) if key else ""), call.service, call.operation or "?", billing_units(call)
                )
            return app(environ, start_response)

        return metered

    def _caller(self, access_key: str) -> str:
        known = self._callers.get(access_key)
        if known is None:
            known = self._callers[access_key] = (self._caller_of(access_key) if access_key else None) or CLIENT
        return known

    def record(self, caller: str, service: str, operation: str, units: int = 1) -> None:
        with self._lock:
            self.requests += 1
            self._times.append(time.time())
            self._records.append((caller, service, operation, units))
            if len(self._records) > MAX_RECORDS:
                del self._times[: MAX_RECORDS // 10]
                del self._records[: MAX_RECORDS // 10]

    def totals(self, since: float = 0.0) -> dict[str, dict[str, dict[str, dict[str, int]]]]:
        """``{caller: {service: {operation: {"requests": n, "units": u}}}}`` of the requests at or after ``since``."""
        with self._lock:
            start = bisect.bisect_left(self._times, since)
            records = self._records[start:]
        totals: dict[str, dict[str, dict[str, dict[str, int]]]] = {}
        for caller, service, operation, units in records:
            entry = (
                totals.setdefault(caller, {}).setdefault(service, {}).setdefault(operation, {"requests": 0, "units": 0})
            )
            entry["requests"] += 1
            entry["units"] += units
        return totals

    def _answer(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        query = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""))
        try:
            since = float((query.get("since") or ["0"])[0])
        except ValueError:
            body = b'{"error": "since must be a number of seconds since the epoch"}'
            start_response(
                "400 Bad Request", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
            )
            return [body]
        body = json.dumps({"since": since, "usage": self.totals(since)}).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]


__all__ = ["CLIENT", "MAX_RECORDS", "USAGE_PATH", "UsageMeter", "billing_units", "dynamodb_item_bytes"]
