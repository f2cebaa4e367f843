"""The local console (``/console``): its page and API as a browser on the same machine uses them,
and what it refuses to pages of other sites."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
import uuid
from typing import Any

from tests.e2e.conftest import image_bytes, run_upload, wait_for_execution


def _request(
    stack: Any, path: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    request = urllib.request.Request(
        stack.endpoint_url + path, data=data, method="POST" if data is not None else "GET", headers=headers or {}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as refused:
        return refused.code, dict(refused.headers), refused.read()


def _same_origin(stack: Any) -> dict[str, str]:
    """What a browser sends with the console page's own fetch(…, {method: "POST"})."""
    return {"Origin": stack.endpoint_url, "Sec-Fetch-Site": "same-origin", "Content-Type": "application/json"}


def test_the_console_page_is_self_contained_and_locked_to_its_origin(stack: Any) -> None:
    status, headers, body = _request(stack, "/console", headers={"Sec-Fetch-Site": "none"})  # typed in the address bar
    page = body.decode()
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "connect-src 'self'" in headers["Content-Security-Policy"] and headers["X-Frame-Options"] == "DENY"
    # no external assets: it works offline
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page) and "@import" not in page
    assert "/console/api/" in page and "Redrive" in page and "Restart" in page


def test_a_failed_execution_is_listed_shown_with_its_graph_data_and_redriven_from_the_console(stack: Any) -> None:
    key = f"console/{uuid.uuid4().hex[:8]}.jpg"
    # GIVEN an execution stopped at FanOut: SQS refused its batch for good
    failed = run_upload(stack, key, image_bytes("triangle", seed=8), sqs_down=True)
    assert failed["status"] == "FAILED"

    # WHEN the console lists failed executions, searching by the object's key
    status, _, body = _request(stack, f"/console/api/executions?status=FAILED&key={key.split('/')[1]}")
    (row,) = json.loads(body)["executions"]
    assert status == 200 and row["arn"] == failed["executionArn"] and row["error"]["type"] == "SinkUnavailableError"

    # AND opens it: the ASL to draw, the steps to colour, the history, where it stopped
    status, _, body = _request(stack, f"/console/api/execution?id={failed['name']}")
    detail = json.loads(body)
    assert status == 200 and detail["definition"]["StartAt"] == "Preprocess"
    assert {s["name"]: s["outcome"] for s in detail["steps"] if s["iteration"] is None}["FanOut"] == "failed"
    kinds = [e["type"] for e in detail["history"]]
    assert kinds[0] == "ExecutionStarted" and "ExecutionFailed" in kinds
    assert detail["failed_state"] == "FanOut > Deliver" and detail["redrive_status"] == "REDRIVABLE"

    # AND its failure record is among the console's failure records
    status, _, body = _request(stack, "/console/api/failures")
    assert any(f["execution_id"] == failed["executionArn"] for f in json.loads(body)["failures"])

    # WHEN the Redrive button is pressed (the page's same-origin POST)
    status, _, body = _request(stack, "/console/api/redrive", {"id": failed["executionArn"]}, _same_origin(stack))
    answer = json.loads(body)
    # THEN the same execution is redriven, and succeeds
    assert status == 200 and answer["how"] == "redriven" and answer["arn"] == failed["executionArn"], answer
    done = wait_for_execution(stack, failed["executionArn"], timeout=90)
    assert done["status"] == "SUCCEEDED" and done["redriveCount"] == 1

    # AND Restart starts a new execution with the same input, named as `inferpipe replay` names it
    status, _, body = _request(stack, "/console/api/restart", {"id": failed["name"]}, _same_origin(stack))
    answer = json.loads(body)
    assert status == 200 and answer["how"] == "skipped" and "succeeded" in answer["note"], (
        answer
    )  # it succeeded: nothing to replay


def test_models_and_reconciliation_are_served(stack: Any) -> None:
    status, _, body = _request(stack, "/console/api/models")
    versions = json.loads(body)["versions"]
    assert status == 200 and any(v["name"] == "demo" and "prod" in v["aliases"] for v in versions)
    status, _, body = _request(stack, "/console/api/reconcile?since=1h")
    report = json.loads(body)
    assert status == 200 and set(report["sinks"]) == {"s3", "dynamodb", "sns", "sqs", "eventbridge"}


def test_pages_of_other_sites_cannot_use_the_console_or_borrow_its_exception(stack: Any) -> None:
    body = {"id": "anything"}
    # another site's page: refused by the guard whatever it claims
    for headers in (
        {"Origin": "https://pages.example", "Sec-Fetch-Site": "cross-site", "Content-Type": "application/json"},
        {"Origin": "https://pages.example", "Sec-Fetch-Site": "same-origin", "Content-Type": "application/json"},
        {"Origin": stack.endpoint_url, "Sec-Fetch-Site": "cross-site", "Content-Type": "application/json"},
        {"Sec-Fetch-Site": "same-site", "Content-Type": "application/json"},
    ):
        status, _, answer = _request(stack, "/console/api/redrive", body, headers)
        assert status == 403 and b"refused" in answer, (headers, answer)
    # a body that is not a JSON object is refused, naming what is expected
    status, _, answer = _request(stack, "/console/api/redrive", b"[1, 2]", _same_origin(stack))
    assert status == 400 and b"JSON object" in answer
    # a form post (no preflight) is not JSON: refused before anything runs
    status, _, _ = _request(
        stack, "/console/api/redrive", b"id=x", {**_same_origin(stack), "Content-Type": "text/plain"}
    )
    assert status == 415
    # the same-origin exception is the console's only: the AWS endpoints still refuse any Origin
    status, _, _ = _request(
        stack, "/", b"Action=ListQueues", {**_same_origin(stack), "Content-Type": "application/x-www-form-urlencoded"}
    )
    assert status == 403
    # and the control endpoints still need the token
    status, _, _ = _request(stack, "/_inferpipe/faults")
    assert status == 403
