"""The image's entrypoint is the local stack's: ``python -m awslambdaric <CMD>``.

The local stack runs every function in execution environments started exactly as the container
starts (``inferpipe/local/execution_environment.py``: the image's ENTRYPOINT, the function's CMD, a Lambda
Runtime API). These tests tie the Dockerfile to that path and call each handler through Lambda's
``Invoke`` API, i.e. through the real entrypoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from functions.common.work import SCHEMA
from inferpipe.local.execution_environment import DOCKERFILE, image_environment
from inferpipe.paths import REPO_ROOT

TEXT = DOCKERFILE.read_text()


def _commands() -> list[str]:
    """The handler paths the image can be started with (stack.json's commands, one is the CMD)."""
    stack = json.loads((REPO_ROOT / "config" / "stack.json").read_text())
    return [spec["command"] for spec in stack["functions"].values()]


def _invoke(stack: Any, key: str, event: dict[str, Any]) -> tuple[str, Any]:
    """("response" | "error", payload) of one invocation of the function ``key``."""
    answer = stack.client("lambda").invoke(FunctionName=stack.resources.functions[key].name, Payload=json.dumps(event))
    payload = json.loads(answer["Payload"].read())
    return ("error" if answer.get("FunctionError") else "response"), payload


def test_dockerfile_starts_awslambdaric_with_a_stack_command() -> None:
    assert 'ENTRYPOINT ["/usr/local/bin/python", "-m", "awslambdaric"]' in TEXT
    cmd = json.loads(TEXT.split("\nCMD ", 1)[1].splitlines()[0])
    assert cmd[0] in _commands()
    # AND the local environments take the image's own settings (paths map to this checkout)
    assert image_environment()["MXNET_CUDNN_AUTOTUNE_DEFAULT"] == "0"


def test_inference_answers_a_warmup_ping(stack: Any) -> None:
    kind, payload = _invoke(stack, "inference", {"warmup": True})
    assert kind == "response", payload
    assert payload["warmed"]["name"] == "demo" and payload["warmed"]["version"] == stack.demo_version


def test_sink_delivers_a_real_record(stack: Any) -> None:
    source = {"bucket": stack.resources.buckets["input"], "key": "ric/entry point.jpg", "version_id": None}
    prediction = {
        "model": {"name": "demo", "version": stack.demo_version},
        "top_k": [{"label": "ring", "index": 4, "probability": 0.9}],
    }
    document = {
        "schema": SCHEMA,
        "items": [{"index": 0, "status": "CLASSIFIED", "source": source, "prediction": prediction}],
    }
    ref = {"bucket": stack.resources.buckets["work"], "key": "tensors/batches/ric/classified.json"}
    stack.client("s3").put_object(Bucket=ref["bucket"], Key=ref["key"], Body=json.dumps(document).encode())
    event = {
        "sink": "s3",
        "batch": ref,
        "execution_id": "arn:aws:states:us-east-1:123456789012:execution:inferpipe-pipeline:ric",
    }
    kind, payload = _invoke(stack, "sink", event)
    assert kind == "response", payload
    assert (
        payload["sink"] == "s3"
        and payload["delivered"] == 1
        and payload["location"].endswith("ric/entry point.jpg.json")
    )
    body = (
        stack.client("s3")
        .get_object(Bucket=stack.resources.buckets["output"], Key=payload["location"].split("/", 3)[3])["Body"]
        .read()
    )
    assert json.loads(body)["top1"]["label"] == "ring"
    # AND it ran in a process started as the container starts: the entrypoint and the function's CMD
    started = [Path(f"/proc/{e.pid}/cmdline").read_bytes().split(b"\0")[1:4] for e in stack.environments("sink")]
    assert [b"-m", b"awslambdaric", stack.resources.functions["sink"].command.encode()] in started


def test_preprocess_reports_a_typed_error(stack: Any) -> None:
    kind, payload = _invoke(
        stack,
        "preprocess",
        {
            "input": ["not", "an", "event"],
            "defaults": {"sinks": "s3", "top_k": "5", "model": "demo", "model_version": "prod"},
        },
    )
    assert kind == "error"
    assert payload["errorType"] == "InvalidInputError" and "none of its 3 elements" in payload["errorMessage"]
