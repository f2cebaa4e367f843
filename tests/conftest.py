"""Shared test set-up: dummy AWS credentials so nothing can reach a real account; a typed Lambda
context for calling handlers directly; the events under tests/events/ and the helpers that fill them in."""

from __future__ import annotations

import os

# Set before any boto3 client exists: tests only ever talk to moto.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_SESSION_TOKEN", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.pop("AWS_PROFILE", None)


import functools
import json
from pathlib import Path
from typing import Any

import pytest
from aws_lambda_powertools.utilities.typing import LambdaContext

from functions.common.manifest import Manifest

EVENTS = Path(__file__).resolve().parent / "events"


class FakeLambdaContext(LambdaContext):
    """What Lambda passes a handler, with fixed values; ``remaining_ms`` defaults to Lambda's longest
    timeout (15 min), so that AWS clients get their most patient settings, as outside an invocation."""

    def __init__(
        self,
        function_name: str = "inferpipe-test",
        memory_limit_in_mb: int = 1024,
        aws_request_id: str = "req-1",
        remaining_ms: int = 900_000,
    ) -> None:
        self._function_name = function_name
        self._function_version = "$LATEST"
        self._invoked_function_arn = f"arn:aws:lambda:us-east-1:123456789012:function:{function_name}"
        self._memory_limit_in_mb = memory_limit_in_mb
        self._aws_request_id = aws_request_id
        self._log_group_name = f"/aws/lambda/{function_name}"
        self._log_stream_name = "2026/11/29/[$LATEST]0123456789abcdef"
        self._remaining_ms = remaining_ms

    # Powertools' stub declares it a staticmethod; Lambda's context (awslambdaric) has an instance method.
    def get_remaining_time_in_millis(self) -> int:  # type: ignore[override]  # Powertools' stub is a staticmethod
        return self._remaining_ms


@functools.cache
def _event_file(name: str) -> str:
    return (EVENTS / name).read_text(encoding="utf-8")


def load_event(name: str) -> dict[str, Any]:
    """A fresh copy of ``tests/events/<name>`` (its ``_comment`` dropped): a test may change it."""
    event = json.loads(_event_file(name))
    event.pop("_comment", None)
    return event


def s3_object_created(
    key: str,
    version_id: str | None = "v1",
    bucket: str = "input-bucket",
    sequencer: str | None = "0062E99A88DC407460",
    **object_fields: Any,
) -> dict[str, Any]:
    """An S3 "Object Created" event as EventBridge delivers it (tests/events/s3_object_created.json);
    ``version_id`` or ``sequencer`` None leaves that field out, as S3 does for an unversioned bucket."""
    event = load_event("s3_object_created.json")
    event["resources"] = [f"arn:aws:s3:::{bucket}"]
    event["detail"]["bucket"]["name"] = bucket
    obj = event["detail"]["object"]
    obj.update(key=key, **object_fields)
    for field, value in (("version-id", version_id), ("sequencer", sequencer)):
        if value is None:
            del obj[field]
        else:
            obj[field] = value
    return event


def sqs_record(body: Any, number: int = 0) -> dict[str, Any]:
    """One element of the array EventBridge Pipes starts the state machine with (tests/events/sqs_record.json)."""
    record = load_event("sqs_record.json")
    record["messageId"] = record["messageId"][:-1] + str(number)
    record["body"] = body if isinstance(body, str) else json.dumps(body)
    return record


@pytest.fixture(scope="session")
def lite0_package() -> tuple[Path, Manifest]:
    """The default model's package (pretrained EfficientNet-Lite0, the mode its import chose),
    built once into build/models/efficientnet_lite0 (about 30 s) and reused while it exists,
    exactly as `make demo` builds it."""
    from inferpipe.demo import MODEL_DIR, default_model_package

    return MODEL_DIR, default_model_package(MODEL_DIR)


@pytest.fixture
def moto_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """GIVEN moto's dummy credentials and region, no endpoint override (a developer's shell may set
    one), and no AWS client left from an earlier test (functions.common.aws caches its clients)."""
    from functions.common import aws

    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setattr(aws, "_clients", {})
