"""The ASL definition: valid for a real interpreter, fully bound, and consistent with our errors and functions."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from moto.stepfunctions.parser.asl.parse.asl_parser import AmazonStateLanguageParser

from functions.common.errors import (
    CAUGHT_PLATFORM_ERRORS,
    PERMANENT_ERROR_NAMES,
    RETRIED_PLATFORM_ERRORS,
    TRANSIENT_ERROR_NAMES,
)
from inferpipe.local.spec import render_asl
from inferpipe.paths import REPO_ROOT, STACK_FILE

ASL_PATH = REPO_ROOT / "state_machine" / "pipeline.asl.json"
STACK = json.loads(STACK_FILE.read_text())
#: Which function each ARN placeholder stands for.
FUNCTION_OF_PLACEHOLDER = {"PreprocessFunctionArn": "preprocess", "InferenceFunctionArn": "inference", "SinkFunctionArn": "sink"}
VALUES = {
    "PreprocessFunctionArn": "arn:aws:lambda:us-east-1:123456789012:function:p",
    "InferenceFunctionArn": "arn:aws:lambda:us-east-1:123456789012:function:i",
    "SinkFunctionArn": "arn:aws:lambda:us-east-1:123456789012:function:s",
    "DefaultSinks": "s3,dynamodb",
    "DefaultTopK": "5",
    "DefaultModel": "demo",
    "DefaultModelVersion": "prod",
}


def _tasks(states: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, state in states.items():
        if state["Type"] == "Task":
            yield name, state
        if state["Type"] == "Map":
            yield from _tasks(state["ItemProcessor"]["States"])


def test_every_placeholder_is_bound_and_the_interpreter_accepts_the_result() -> None:
    raw = ASL_PATH.read_text()
    placeholders = set(re.findall(r"(?<!\$)\$\{(\w+)\}", raw))
    assert placeholders == set(VALUES)
    rendered = render_asl(raw, VALUES)
    assert "${" not in rendered
    assert "$$.Execution.Id" in rendered  # context paths survive substitution
    AmazonStateLanguageParser.parse(rendered)  # raises on invalid ASL


def test_rendering_refuses_an_unbound_placeholder() -> None:
    values = dict(VALUES)
    del values["DefaultModel"]
    with pytest.raises(Exception, match="DefaultModel"):
        render_asl(ASL_PATH.read_text(), values)


def test_tasks_retry_exactly_the_transient_errors_and_catch_the_permanent_ones() -> None:
    definition = json.loads(ASL_PATH.read_text())
    tasks = dict(_tasks(definition["States"]))
    assert set(tasks) == {"Preprocess", "Inference", "Deliver", "RecordFailure"}
    for name, task in tasks.items():
        retried = {error for rule in task["Retry"] for error in rule["ErrorEquals"]}
        assert set(TRANSIENT_ERROR_NAMES) <= retried, name
        assert {"Lambda.ServiceException", "Lambda.TooManyRequestsException", "Lambda.SdkClientException", "Lambda.AWSLambdaException"} <= retried
        assert not retried & set(PERMANENT_ERROR_NAMES), f"{name} retries a permanent error"
        # A timed-out attempt may still have finished its writes; every task is idempotent, so a
        # timeout is retried (with back-off: it usually means the service is overloaded).
        assert {"States.Timeout", "Sandbox.Timedout"} <= retried, name
        # Lambda's own ends: a timeout or a crashed runtime gets a fresh environment; running out
        # of memory would again on the same input, so it is caught, never retried.
        assert set(RETRIED_PLATFORM_ERRORS) <= retried, name
        assert not retried & set(CAUGHT_PLATFORM_ERRORS), f"{name} retries an out-of-memory kill"
        for rule in task["Retry"]:
            if "TransientError" in rule["ErrorEquals"] or "States.Timeout" in rule["ErrorEquals"]:
                assert rule["BackoffRate"] > 1 and rule.get("JitterStrategy") == "FULL"
                assert rule["MaxAttempts"] >= 2, name
    for name in ("Preprocess", "Inference", "FanOut"):
        caught = {error for rule in definition["States"][name]["Catch"] for error in rule["ErrorEquals"]}
        assert set(PERMANENT_ERROR_NAMES) <= caught, name
        assert set(CAUGHT_PLATFORM_ERRORS) <= caught, name
        assert definition["States"][name]["Catch"][-1]["ErrorEquals"] == ["States.ALL"]


def _reachable(states: dict[str, Any], start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        state = states[name]
        nexts = [state.get("Next"), state.get("Default")]
        nexts += [rule.get("Next") for rule in state.get("Choices", []) + state.get("Catch", [])]
        todo += [n for n in nexts if n]
    return seen


def test_every_failure_path_records_the_failure_then_fails_and_recording_never_loops() -> None:
    definition = json.loads(ASL_PATH.read_text())
    states = definition["States"]
    # Every Catch of every top-level state, and the invalid-input branch, reaches RecordFailure.
    starts = [rule["Next"] for state in states.values() for rule in state.get("Catch", []) if state.get("Type") != "Task" or rule["Next"] != "PipelineFailed"]
    starts.append(states["DetectInput"]["Default"])
    starts.append(next(rule["Next"] for rule in states["AllDelivered"]["Choices"]))
    for start in starts:
        if start == "PipelineFailed":
            continue
        assert "RecordFailure" in _reachable(states, start), start
    # The only Fail state is reached only through RecordFailure (or its own Catch).
    fails = [name for name, state in states.items() if state["Type"] == "Fail"]
    assert fails == ["PipelineFailed"]
    record = states["RecordFailure"]
    assert record["Resource"] == "${SinkFunctionArn}" and record["Parameters"]["mode"] == "failure"
    assert record["Next"] == "PipelineFailed"
    assert record["Catch"] == [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.failure_record_error", "Next": "PipelineFailed"}]
    assert {e for rule in record["Retry"] for e in rule["ErrorEquals"]} >= set(TRANSIENT_ERROR_NAMES)
    assert states["PipelineFailed"]["ErrorPath"] == "$.failure.error"
    # Each Map branch catches its own failure, so one sink failing never stops the others.
    deliver = states["FanOut"]["ItemProcessor"]["States"]["Deliver"]
    assert deliver["Catch"][0]["ErrorEquals"] == ["States.ALL"]


def test_each_task_times_out_after_its_function_would() -> None:
    definition = json.loads(ASL_PATH.read_text())
    assert definition["TimeoutSeconds"] > 0
    for name, task in _tasks(definition["States"]):
        placeholder = re.fullmatch(r"\$\{(\w+)\}", task["Resource"]).group(1)
        function = STACK["functions"][FUNCTION_OF_PLACEHOLDER[placeholder]]
        assert task["TimeoutSeconds"] > function["timeout_s"], name
