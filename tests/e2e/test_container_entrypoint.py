"""The image's entrypoint is real: ``python -m awslambdaric <CMD>`` runs each handler against a
Lambda Runtime API (a small local implementation of it), as the container does in AWS."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from inferpipe.local.spec import function_environment
from inferpipe.paths import REPO_ROOT

API = "/2018-06-01/runtime"
DOCKERFILE = (REPO_ROOT / "Dockerfile").read_text()


class RuntimeApi:
    """Hands out one invocation, then records what the runtime posts back."""

    def __init__(self, event: dict[str, Any]) -> None:
        self.event = event
        self.results: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._served = threading.Event()
        self._stop = threading.Event()
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # the runtime's native client keeps its connection open

            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def do_GET(self) -> None:
                if self.path != f"{API}/invocation/next":
                    self.send_error(404)
                    return
                if api._served.is_set():
                    api._stop.wait(60)  # a real Runtime API long-polls until the next event
                    try:
                        self.send_error(503)
                    except OSError:  # the runtime was stopped while waiting
                        pass
                    return
                api._served.set()
                body = json.dumps(api.event).encode()
                self.send_response(200)
                self.send_header("Lambda-Runtime-Aws-Request-Id", "req-1")
                self.send_header("Lambda-Runtime-Deadline-Ms", "9999999999999")
                self.send_header("Lambda-Runtime-Invoked-Function-Arn", "arn:aws:lambda:us-east-1:123456789012:function:f")
                self.send_header("Lambda-Runtime-Trace-Id", "Root=1-00000000-000000000000000000000000")
                self.send_header("Content-Type", "application/json")  # the native client crashes without it
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                payload = json.loads(self.rfile.read(length) or b"null")
                kind = self.path.rsplit("/", 1)[-1]  # response | error (also init/error)
                api.results.put((kind, payload))
                self.send_response(202)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> RuntimeApi:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()


def _commands() -> list[str]:
    """The handler paths the image can be started with (stack.json's commands, one is the CMD)."""
    stack = json.loads((REPO_ROOT / "config" / "stack.json").read_text())
    return [spec["command"] for spec in stack["functions"].values()]


def _invoke(command: str, event: dict[str, Any], env: dict[str, str]) -> tuple[str, Any]:
    with RuntimeApi(event) as api:
        process = subprocess.Popen(
            [sys.executable, "-m", "awslambdaric", command],
            env={**env, "AWS_LAMBDA_RUNTIME_API": api.address, "PYTHONPATH": str(REPO_ROOT)},
            cwd=str(REPO_ROOT),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            return api.results.get(timeout=120)
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
def lambda_env(stack: Any) -> Iterator[Any]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_LAMBDA", "_HANDLER"))}
    base.update({"AWS_ENDPOINT_URL": stack.endpoint_url, "AWS_DEFAULT_REGION": stack.resources.region})
    yield lambda key: {**base, **function_environment(stack.resources, key, queue_url=stack.provisioned.queue_url)}


def test_dockerfile_starts_awslambdaric_with_a_stack_command() -> None:
    assert 'ENTRYPOINT ["/usr/local/bin/python", "-m", "awslambdaric"]' in DOCKERFILE
    cmd = json.loads(DOCKERFILE.split("\nCMD ", 1)[1].splitlines()[0])
    assert cmd[0] in _commands()


def test_inference_answers_a_warmup_ping(stack: Any, lambda_env: Any) -> None:
    kind, payload = _invoke("functions.inference.handler.lambda_handler", {"warmup": True}, lambda_env("inference"))
    assert kind == "response", payload
    assert payload["warmed"]["name"] == "demo" and payload["warmed"]["version"] == stack.demo_version


def test_sink_delivers_a_real_record(stack: Any, lambda_env: Any) -> None:
    source = {"bucket": stack.resources.buckets["input"], "key": "ric/entry point.jpg", "version_id": None}
    event = {
        "sink": "s3",
        "source": source,
        "prediction": {"model": {"name": "demo", "version": stack.demo_version}, "top_k": [{"label": "ring", "index": 4, "probability": 0.9}]},
        "execution_id": "arn:aws:states:us-east-1:123456789012:execution:inferpipe-pipeline:ric",
    }
    kind, payload = _invoke("functions.sink.handler.lambda_handler", event, lambda_env("sink"))
    assert kind == "response", payload
    assert payload["sink"] == "s3" and payload["location"].endswith("ric/entry point.jpg.json")
    body = stack.client("s3").get_object(Bucket=stack.resources.buckets["output"], Key=payload["location"].split("/", 3)[3])["Body"].read()
    assert json.loads(body)["top1"]["label"] == "ring"


def test_preprocess_reports_a_typed_error(lambda_env: Any) -> None:
    kind, payload = _invoke(
        "functions.preprocess.handler.lambda_handler",
        {"request": {"bucket": "b", "key": "k", "top_k": 0}, "available_sinks": ["s3"], "execution_id": "x"},
        lambda_env("preprocess"),
    )
    assert kind == "error"
    assert payload["errorType"] == "InvalidRequestError" and "top_k" in payload["errorMessage"]
