"""Logs: every line of an invocation carries that invocation's context, also when several run at once."""

from __future__ import annotations

import io
import json
import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from functions.common.log import bind, lambda_context, logger
from tests.conftest import FakeLambdaContext


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    """What the functions' logger writes, as it would reach CloudWatch."""
    buffer = io.StringIO()
    handler = logger.registered_handler
    assert isinstance(handler, logging.StreamHandler)  # Powertools' handler, typed as any logging.Handler
    previous = handler.setStream(buffer)
    try:
        yield buffer
    finally:
        handler.setStream(previous)


def _context(request_id: str) -> FakeLambdaContext:
    return FakeLambdaContext("inferpipe-sink", memory_limit_in_mb=256, aws_request_id=request_id)


def test_concurrent_invocations_each_log_their_own_request_id_and_object(log_lines: io.StringIO) -> None:
    both_bound = threading.Barrier(2)

    @lambda_context
    def handler(event: dict[str, Any], context: Any) -> str:
        bind(execution_id=event["execution"], object=event["object"])
        both_bound.wait(timeout=5)  # the other invocation has set its keys too
        logger.info("delivered")
        return context.aws_request_id

    invocations = [("req-a", "exec-a", "s3://in/a.jpg"), ("req-b", "exec-b", "s3://in/b.jpg")]
    threads = [
        threading.Thread(target=handler, args=({"execution": execution, "object": obj}, _context(request_id)))
        for request_id, execution, obj in invocations
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)

    lines = [json.loads(line) for line in log_lines.getvalue().splitlines() if '"delivered"' in line]
    seen = {(line["function_request_id"], line["execution_id"], line["object"]) for line in lines}
    assert seen == set(invocations)
    assert {line["cold_start"] for line in lines} == {True, False}  # one cold start per function
    assert all(line["function_name"] == "inferpipe-sink" and line["service"] == "inferpipe" for line in lines)


def test_an_invocation_starts_without_the_previous_ones_keys(log_lines: io.StringIO) -> None:
    @lambda_context
    def handler(event: dict[str, Any], context: Any) -> None:
        if event.get("object"):
            bind(object=event["object"])
        logger.info("step")

    handler({"object": "s3://in/first.jpg"}, _context("req-1"))
    handler({}, _context("req-2"))

    first, second = [json.loads(line) for line in log_lines.getvalue().splitlines() if '"step"' in line]
    assert first["object"] == "s3://in/first.jpg" and first["function_request_id"] == "req-1"
    assert "object" not in second and second["function_request_id"] == "req-2"
