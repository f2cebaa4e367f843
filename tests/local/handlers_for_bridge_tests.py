"""Test scaffolding for the Lambda bridge: tiny handlers that show what an invocation receives.

Not product code. The local stack tests create functions whose image command points here, to
prove that the bridge runs the configured handler with exactly its own environment, maps an
exception to the ``errorType`` Step Functions matches, and keeps module state between invocations.
"""

from __future__ import annotations

import time
from typing import Any

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
    }


def not_an_image(event: Any, context: Any) -> dict[str, Any]:
    """Fail as the preprocess function does on a file that is not an image."""
    raise NotAnImageError(f"s3://{event.get('bucket')}/{event.get('key')} is not an image")


def sleep(event: Any, context: Any) -> dict[str, Any]:
    """Outlive a short function timeout."""
    time.sleep(float(event.get("seconds", 2)))
    return {"slept": event.get("seconds", 2)}
