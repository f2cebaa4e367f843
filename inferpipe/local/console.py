"""The local console: ``http://127.0.0.1:<port>/console``, a page the local stack serves about itself.

What the Step Functions console shows, without an AWS account: the executions (filtered by status,
searched by object key), one execution's graph drawn from its ASL with each state coloured by
outcome and its duration, its event history, the state it stopped in with that state's input and a
clean error, **Redrive** and **Restart** (what ``inferpipe replay --mode redrive|restart`` does), the
published models with their versions and aliases, the failure records, and the reconciliation.

It widens nothing: every answer comes from AWS API calls any local process can already make against
the stack (Step Functions, S3, DynamoDB; no control endpoint, no token), and the browser guard
still refuses every request from another site. The one thing it adds is that the console's own
page may POST to its own origin (``Origin`` equal to the stack's, ``Sec-Fetch-Site: same-origin``,
a JSON body, which a page of another site cannot send without a CORS preflight the stack never
answers): see :func:`inferpipe.local.guard.refusal`. The page has no external assets (offline).

Paths (JSON unless said): ``GET /console`` (the page, HTML), ``GET /console/api/executions?status=&key=``,
``GET /console/api/execution?id=NAME_OR_ARN`` (the detail of ``inferpipe executions show``, plus the
ASL and the event history), ``GET /console/api/models``, ``GET /console/api/failures``,
``GET /console/api/reconcile?since=24h``, ``POST /console/api/redrive`` and ``POST
/console/api/restart`` with ``{"id": NAME_OR_ARN}``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable, Mapping
from datetime import date, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

PREFIX = "/console"
PAGE = Path(__file__).with_name("console.html")
#: Failure records listed at most (newest keys first is not knowable from a listing: the first ones).
MAX_FAILURES = 200


def _json_default(value: Any) -> Any:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


class Console:
    """WSGI middleware: answers ``/console`` and ``/console/api/*``, everything else to ``app``.

    ``target`` is a :class:`inferpipe.target.Target` of the stack itself (made on first use: the
    stack's endpoint is known only once it serves)."""

    def __init__(self, app: Callable[..., Iterable[bytes]], target: Callable[[], Any]) -> None:
        self.app, self._make_target = app, target
        self._target: Any = None
        self._lock = threading.Lock()

    def target(self) -> Any:
        with self._lock:
            if self._target is None:
                self._target = self._make_target()
            return self._target

    def __call__(self, environ: Mapping[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = str(environ.get("PATH_INFO", ""))
        if path != PREFIX and not path.startswith(PREFIX + "/"):
            return self.app(environ, start_response)
        method = str(environ.get("REQUEST_METHOD", "GET"))
        if path in (PREFIX, PREFIX + "/"):
            return _page(method, start_response)
        query = {k: v[-1] for k, v in parse_qs(str(environ.get("QUERY_STRING", ""))).items()}
        name = path[len(PREFIX + "/api/") :] if path.startswith(PREFIX + "/api/") else ""
        handler = _GETS.get(name) if method == "GET" else _POSTS.get(name) if method == "POST" else None
        if handler is None:
            return _send(
                start_response,
                404 if name not in _GETS and name not in _POSTS else 405,
                {"error": f"no {method} {path}"},
            )
        if method == "POST":
            refused = _read_post(environ, query)
            if refused is not None:
                return _send(start_response, *refused)
        try:
            status, answer = handler(self.target(), query)
        except ValueError as bad:
            status, answer = 400, {"error": str(bad)}
        except Exception as exc:  # noqa: BLE001 (the page shows the error; the stack keeps serving)
            status, answer = 500, {"error": f"{type(exc).__name__}: {exc}"}
        return _send(start_response, status, answer)


def _page(method: str, start_response: Callable[..., Any]) -> list[bytes]:
    """The console's one page (GET only)."""
    if method != "GET":
        return _send(start_response, 405, {"error": "GET only"})
    body = PAGE.read_bytes()
    start_response(
        "200 OK",
        [
            ("Content-Type", "text/html; charset=utf-8"),
            ("Content-Length", str(len(body))),
            # the page runs its own script and talks to its own origin only
            (
                "Content-Security-Policy",
                "default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'unsafe-inline'; "
                "connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
            ),
            ("X-Frame-Options", "DENY"),
            ("Cache-Control", "no-store"),
        ],
    )
    return [body]


def _read_post(environ: Mapping[str, Any], query: dict[str, str]) -> tuple[int, dict[str, str]] | None:
    """Add a POST's JSON object to ``query``; the refusal (status, answer) when it is not one."""
    if str(environ.get("CONTENT_TYPE", "")).split(";")[0].strip() != "application/json":
        return 415, {"error": "POST a JSON body (Content-Type: application/json)"}
    length = int(environ.get("CONTENT_LENGTH") or 0)
    try:
        body = json.loads(environ["wsgi.input"].read(length) if 0 < length <= 1 << 16 else b"{}")
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return 400, {"error": 'the body must be a JSON object, e.g. {"id": NAME_OR_ARN}'}
    query.update({k: str(v) for k, v in body.items()})
    return None


def _send(start_response: Callable[..., Any], status: int, answer: Any) -> list[bytes]:
    body = json.dumps(answer, default=_json_default, ensure_ascii=False).encode("utf-8")
    reasons = {
        200: "OK",
        400: "Bad Request",
        404: "Not Found",
        405: "Method Not Allowed",
        415: "Unsupported Media Type",
    }
    start_response(
        f"{status} {reasons.get(status, 'Internal Server Error')}",
        [("Content-Type", "application/json"), ("Content-Length", str(len(body))), ("Cache-Control", "no-store")],
    )
    return [body]


# -- answers -----------------------------------------------------------------------------------


def executions_list(target: Any, query: Mapping[str, str]) -> tuple[int, Any]:
    from dataclasses import asdict

    from inferpipe.executions import list_rows
    from inferpipe.replay import ALL_STATUSES

    statuses = [s for s in (query.get("status") or "").upper().split(",") if s]
    unknown = [s for s in statuses if s not in ALL_STATUSES]
    if unknown:
        raise ValueError(f"unknown status {', '.join(unknown)}; expected some of {', '.join(ALL_STATUSES)}")
    limit = min(max(int(query.get("limit") or 100), 1), 500)
    rows = list_rows(
        target.client("stepfunctions"),
        target.state_machine_arn,
        statuses=statuses,
        key=query.get("key") or None,
        limit=limit,
    )
    return 200, {"executions": [asdict(row) for row in rows]}


def execution_detail(target: Any, query: Mapping[str, str]) -> tuple[int, Any]:
    from inferpipe.executions import recorded, show

    wanted = query.get("id") or ""
    if not wanted:
        raise ValueError("name the execution: ?id=NAME_OR_ARN")
    read = recorded(target, wanted)  # once: the detail, the graph and the history all come from it
    detail = show(target, wanted, read=read).to_dict()
    detail["definition"], detail["history"] = read.definition, read.events
    detail["redrive_status"] = read.described.get("redriveStatus")
    detail["redrive_status_reason"] = read.described.get("redriveStatusReason")
    return 200, detail


def models_list(target: Any, query: Mapping[str, str]) -> tuple[int, Any]:
    from inferpipe.models import list_versions

    return 200, {
        "bucket": target.resources.buckets["models"],
        "versions": list_versions(target.client("s3"), target.resources.buckets["models"]),
    }


def failures_list(target: Any, query: Mapping[str, str]) -> tuple[int, Any]:
    """The failure records that are a key's latest view (what an operator looks at first)."""
    from functions.sink.core import FAILURE_PREFIX
    from functions.sink.records import LONG_FOLDER, VERSIONS_FOLDER

    s3, bucket = target.client("s3"), target.resources.buckets["output"]
    found: list[dict[str, Any]] = []
    skip = tuple(f"{FAILURE_PREFIX}{folder}/" for folder in (VERSIONS_FOLDER, "_executions", LONG_FOLDER))
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=FAILURE_PREFIX):
        for item in page.get("Contents", []):
            if item["Key"].startswith(skip) or not item["Key"].endswith(".json"):
                continue
            record = json.loads(s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read())
            source = record.get("source") or {}
            found.append(
                {
                    "location": f"s3://{bucket}/{item['Key']}",
                    "object": f"s3://{source.get('bucket')}/{source.get('key')}",
                    "version_id": source.get("version_id"),
                    "error": record.get("error"),
                    "failed_state": record.get("failed_state"),
                    "execution_id": record.get("execution_id"),
                    "recorded_at": record.get("recorded_at"),
                }
            )
            if len(found) >= MAX_FAILURES:
                return 200, {"failures": found, "truncated": True}
    return 200, {"failures": found, "truncated": False}


def reconciliation(target: Any, query: Mapping[str, str]) -> tuple[int, Any]:
    from inferpipe.reconcile import reconcile_target
    from inferpipe.replay import parse_duration

    since = parse_duration(query.get("since") or "24h")
    return 200, reconcile_target(target, since).to_dict()


def _replay(mode: str) -> Callable[[Any, Mapping[str, str]], tuple[int, Any]]:
    def run(target: Any, query: Mapping[str, str]) -> tuple[int, Any]:
        import io

        from inferpipe import replay
        from inferpipe.executions import execution_arn

        wanted = str(query.get("id") or "")
        if not wanted:
            raise ValueError('name the execution: {"id": NAME_OR_ARN}')
        arn = execution_arn(target.state_machine_arn, wanted)
        out = io.StringIO()
        summary = replay.replay(
            target.client("stepfunctions"), target.state_machine_arn, executions=[arn], mode=mode, wait=False, out=out
        )
        if not summary.outcomes:
            raise ValueError(f"nothing to replay for {wanted}")
        (outcome,) = summary.outcomes
        return 200, {
            "how": outcome.how,
            "arn": outcome.arn,
            "note": outcome.note or outcome.decision.reason,
            "error": outcome.error,
            "log": out.getvalue(),
        }

    return run


_GETS: dict[str, Callable[[Any, Mapping[str, str]], tuple[int, Any]]] = {
    "executions": executions_list,
    "execution": execution_detail,
    "models": models_list,
    "failures": failures_list,
    "reconcile": reconciliation,
}
_POSTS: dict[str, Callable[[Any, Mapping[str, str]], tuple[int, Any]]] = {
    "redrive": _replay("redrive"),
    "restart": _replay("restart"),
}

__all__ = ["PREFIX", "Console"]
