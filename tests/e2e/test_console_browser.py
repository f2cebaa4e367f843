"""The console in a real browser: headless Chromium loads ``/console``, runs its script against the
stack and the rendered DOM is checked (``--dump-dom``). The POSTs its buttons make are checked at the
HTTP level in test_console.py, with the headers this browser sends.

Needs ``chromium-headless-shell`` (Debian's package of that name; ``.ci/run`` installs it).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import uuid
from typing import Any

import pytest

from tests.e2e.conftest import image_bytes, run_upload

BROWSER = shutil.which("chromium-headless-shell") or shutil.which("chromium")
pytestmark = pytest.mark.skipif(BROWSER is None, reason="no headless Chromium: apt-get install chromium-headless-shell")


def render(url: str, budget_ms: int = 8000) -> str:
    """The page's DOM after its script ran (virtual time: fetches answered, timers run)."""
    done = subprocess.run(
        [
            str(BROWSER),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--user-data-dir=/tmp/inferpipe-chromium",
            f"--virtual-time-budget={budget_ms}",
            "--dump-dom",
            url,
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_the_browser_renders_the_executions_and_a_failed_executions_graph(stack: Any) -> None:
    ok = run_upload(stack, f"browser/{uuid.uuid4().hex[:6]} ok.jpg", image_bytes("square", seed=12))
    failed = run_upload(
        stack, f"browser/{uuid.uuid4().hex[:6]} down.jpg", image_bytes("square", seed=12), sqs_down=True
    )
    assert (ok["status"], failed["status"]) == ("SUCCEEDED", "FAILED")

    # the executions list: both, each with its status, the failed one with its clean error
    listing = render(f"{stack.endpoint_url}/console#executions?key=browser/")
    for execution in (ok, failed):
        row = re.search(rf'<tr class="click" data-id="{execution["name"]}">(.*?)</tr>', listing, re.DOTALL)
        assert row is not None, f"{execution['name']} not listed"
        assert f'class="{execution["status"]}">{execution["status"]}<' in row.group(1)
    assert "SinkUnavailableError: sink 'sqs' refused the batch" in listing

    # one execution: the graph drawn from the ASL, states coloured by outcome, with their durations
    page = render(f"{stack.endpoint_url}/console#execution?id={failed['name']}")
    assert "<svg" in page and 'aria-label="state graph"' in page
    boxes = dict(re.findall(r"<title>([A-Za-z]+): ([a-z ]+)</title><rect", page))
    assert boxes["Preprocess"] == "succeeded" and boxes["Inference"] == "succeeded" and boxes["FanOut"] == "failed"
    assert boxes["PipelineFailed"] == "not run"
    assert re.search(r"<title>iteration 3: failed</title>", page)  # sqs, FanOut's fourth iteration
    assert re.search(r"Task · succeeded · \d+\.\d+ s", page)  # a duration on a box
    # the state it stopped in, with its input and the clean error; the history; Redrive enabled
    assert "stopped at FanOut &gt; Deliver" in page and "SinkUnavailableError: sink 'sqs'" in page
    assert re.search(r"event history \(\d+\)", page) and "ExecutionFailed" in page
    redrive = re.search(r'<button class="primary" id="redrive"([^>]*)>Redrive</button>', page)
    assert redrive is not None and "disabled" not in redrive.group(1)

    # the succeeded one: every state it ran is green, and Redrive is disabled
    page = render(f"{stack.endpoint_url}/console#execution?id={ok['name']}")
    boxes = dict(re.findall(r"<title>([A-Za-z]+): ([a-z ]+)</title><rect", page))
    assert {boxes[s] for s in ("Preprocess", "Inference", "FanOut", "Outcome", "Done")} == {"succeeded"}
    assert re.search(r'id="redrive"[^>]*disabled', page)


def test_the_browser_renders_models_failure_records_and_the_reconciliation(stack: Any) -> None:
    failed = run_upload(stack, f"browser/{uuid.uuid4().hex[:6]} bad.jpg", image_bytes("square", seed=12), sqs_down=True)
    models = render(f"{stack.endpoint_url}/console#models")
    assert re.search(rf"<td>demo</td><td><code>{stack.demo_version}</code></td><td>prod</td>", models)
    failures = render(f"{stack.endpoint_url}/console#failures")
    assert failed["name"] in failures and "SinkUnavailableError" in failures
    reconciliation = render(f"{stack.endpoint_url}/console#reconcile")
    assert "<th>total</th>" in reconciliation
    for sink in ("s3", "dynamodb", "sns", "sqs", "eventbridge"):
        assert f"<td>{sink}</td>" in reconciliation
    assert re.search(r"<th>total</th><th>\d+</th>", reconciliation)  # the totals row, counted
