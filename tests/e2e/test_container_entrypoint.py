"""The image's entrypoint is the local stack's: ``python -m awslambdaric <CMD>``.

The local stack runs every function in execution environments started exactly as the container
starts (``inferpipe/local/execution_environment.py``: the image's ENTRYPOINT, the function's CMD, a Lambda
Runtime API). These tests tie the Dockerfile to that path and call each handler through Lambda's
``Invoke`` API, i.e. through the real entrypoint.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
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


#: Run in the image's /var/task layout: every handler module imports, with nothing of the
#: repository but what the Dockerfile copies (above all, no inferpipe package), and reads the
#: stack definition from the copied config/stack.json.
_IMPORT_IN_IMAGE_LAYOUT = """
import importlib, importlib.abc, json, sys
from pathlib import Path

class NotInTheImage(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("inferpipe", "tests", "bench", "scripts"):
            raise ImportError(f"{name} is not in the image")
        return None

sys.meta_path.insert(0, NotInTheImage())
for command in json.loads(sys.argv[1]):
    module = importlib.import_module(command.rsplit(".", 1)[0])
    assert Path(module.__file__).is_relative_to(Path.cwd()), module.__file__
from functions.common import stack
print(json.dumps({"stack_file": str(stack.PATH), "sinks": stack.SINKS}))
"""


def test_the_handlers_import_from_what_the_dockerfile_copies_and_nothing_else(tmp_path: Path) -> None:
    # GIVEN /var/task as the Dockerfile builds it: each `COPY <src> /var/task/<dst>` of the runtime stage
    task_root = tmp_path / "task"
    copies = [line.split()[1:] for line in TEXT.splitlines() if line.startswith("COPY ") and "--from" not in line]
    for *sources, target in copies:
        if not target.startswith("/var/task/"):
            continue  # the build stage's inputs
        (source,) = sources
        destination = task_root / target.removeprefix("/var/task/")
        if (REPO_ROOT / source).is_dir():
            shutil.copytree(REPO_ROOT / source, destination, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(REPO_ROOT / source, destination)
    # WHEN each function's handler module is imported there, as the image's PYTHONPATH has it
    environment = {**os.environ, "PYTHONPATH": str(task_root), "INFERENCE_PRELOAD": "0"}
    environment.pop("INFERPIPE_STACK_FILE", None)
    done = subprocess.run(
        [sys.executable, "-c", _IMPORT_IN_IMAGE_LAYOUT, json.dumps(_commands())],
        cwd=task_root,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    # THEN all three import, none reaches for inferpipe, and the sinks come from the copied stack.json
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["stack_file"] == str(task_root / "config" / "stack.json")
    assert found["sinks"] == [
        sink["name"] for sink in json.loads((REPO_ROOT / "config" / "stack.json").read_text())["sinks"]["known"]
    ]
