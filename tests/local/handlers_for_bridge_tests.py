"""Test scaffolding for the Lambda bridge: tiny handlers that show what an invocation receives.

Not product code. The local stack tests create functions whose image command points here, to
prove that the bridge runs the configured handler in an environment of its own with exactly its
variables, maps an exception to the ``errorType`` Step Functions matches, keeps module state per
environment between invocations, and enforces the function's timeout and memory.
"""

from __future__ import annotations

import os
import time
from typing import Any

from botocore.exceptions import ClientError

from functions.common.aws import client
from functions.common.config import environ
from functions.common.errors import NotAnImageError

#: Module-level state: survives between invocations of a warm "container".
CALLS: list[str] = []


def report(event: Any, context: Any) -> dict[str, Any]:
    """Echo the event with the environment and context this invocation ran with."""
    CALLS.append(context.aws_request_id)
    return {
        "event": event,
        "environment": dict(environ()),
        "function_name": context.function_name,
        "invoked_function_arn": context.invoked_function_arn,
        "memory_limit_in_mb": context.memory_limit_in_mb,
        "remaining_ms": context.get_remaining_time_in_millis(),
        "warm_calls": len(CALLS),
        "pid": os.getpid(),
    }


def not_an_image(event: Any, context: Any) -> dict[str, Any]:
    """Fail as the preprocess function does on a file that is not an image."""
    raise NotAnImageError(f"s3://{event.get('bucket')}/{event.get('key')} is not an image")


def sleep(event: Any, context: Any) -> dict[str, Any]:
    """Outlive a short function timeout."""
    time.sleep(float(event.get("seconds", 2)))
    return {"slept": event.get("seconds", 2)}


def sleep_once_then_write(event: Any, context: Any) -> dict[str, Any]:
    """First attempt (no marker yet): leave the marker, overrun the timeout, then write ``late/``.
    Later attempts find the marker and answer at once."""
    s3, bucket, key = client("s3"), event["bucket"], event["key"]
    try:
        s3.head_object(Bucket=bucket, Key=f"marker/{key}")
    except ClientError:
        s3.put_object(Bucket=bucket, Key=f"marker/{key}", Body=str(os.getpid()).encode())
        time.sleep(float(event.get("seconds", 3)))
        s3.put_object(Bucket=bucket, Key=f"late/{key}", Body=b"written after the timeout")
        return {"attempt": "first", "pid": os.getpid()}
    return {"attempt": "retry", "pid": os.getpid()}


def allocate(event: Any, context: Any) -> dict[str, Any]:
    """Hold ``mb`` MB of touched memory for a moment."""
    held = b"x" * (int(event["mb"]) << 20)
    time.sleep(0.2)
    return {"held_mb": len(held) >> 20, "pid": os.getpid()}
