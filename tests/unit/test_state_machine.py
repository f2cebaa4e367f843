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
    RECORDED_ERROR_NAMES,
    REDRIVABLE_ERROR_NAMES,
    RETRIED_PLATFORM_ERRORS,
    TRANSIENT_ERROR_NAMES,
)
from functions.sink.status import RECORDED_FAIL_STATES
from inferpipe.paths import REPO_ROOT, STACK_FILE
from inferpipe.stack.resources import render_asl

ASL_PATH = REPO_ROOT / "state_machine" / "pipeline.asl.json"
STACK = json.loads(STACK_FILE.read_text())
#: Which function each ARN placeholder stands for.
FUNCTION_OF_PLACEHOLDER = {
    "PreprocessFunctionArn": "preprocess",
    "InferenceFunctionArn": "inference",
    "SinkFunctionArn": "sink",
}
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
        assert {
            "Lambda.ServiceException",
            "Lambda.TooManyRequestsException",
            "Lambda.SdkClientException",
            "Lambda.AWSLambdaException",
        } <= retried
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
    # What the state machine catches: exactly the recorded errors (the input's own, a bug, an
    # out-of-memory kill), never what a redrive can get past (transient errors beyond their retries,
    # timeouts, a sink that stays down, a misconfiguration): those stop the execution at the task.
    for name, task in tasks.items():
        caught = [error for rule in task.get("Catch", []) for error in rule["ErrorEquals"]]
        if name == "RecordFailure":
            assert caught == [], "RecordFailure must stop where it failed, to be redriven"
            continue
        assert caught == list(RECORDED_ERROR_NAMES), name
        assert not set(caught) & (
            set(REDRIVABLE_ERROR_NAMES) | set(TRANSIENT_ERROR_NAMES) | set(RETRIED_PLATFORM_ERRORS)
        ), name
        assert "States.ALL" not in caught and "States.Timeout" not in caught, name
    assert set(CAUGHT_PLATFORM_ERRORS) <= set(RECORDED_ERROR_NAMES)
    assert set(RECORDED_ERROR_NAMES) | set(REDRIVABLE_ERROR_NAMES) >= set(PERMANENT_ERROR_NAMES)
    assert "FanOut" not in {n for n, s in definition["States"].items() if s.get("Catch")}, (
        "a failed iteration must stop at FanOut"
    )


def _successors(state: dict[str, Any]) -> list[str]:
    """Every state control can pass to from ``state``: Next, a Choice's branches and Default, a Catch's Next."""
    nexts = [state.get("Next"), state.get("Default")]
    nexts += [rule.get("Next") for rule in state.get("Choices", []) + state.get("Catch", [])]
    return [n for n in nexts if n]


def _reachable(states: dict[str, Any], start: str, avoiding: frozenset[str] = frozenset()) -> set[str]:
    """States reachable from ``start`` without passing through any of ``avoiding``."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        name = todo.pop()
        if name in seen or name in avoiding:
            continue
        seen.add(name)
        todo += _successors(states[name])
    return seen


#: The Choice branches that lead away from success: every object failed in Preprocess; an object
#: failed in Inference or a sink did.
FAILURE_CHOICES = {"AnyReady": "NoteAllFailed", "Outcome": "NoteObjectFailures"}
#: Choice rules ahead of those that end the execution successfully: every object was a duplicate.
EARLY_SUCCESSES = {"AnyReady": ["AllDuplicates"], "Outcome": []}


def test_every_caught_failure_is_recorded_then_ends_in_the_one_fail_state_and_recording_never_loops() -> None:
    definition = json.loads(ASL_PATH.read_text())
    states = definition["States"]
    start = definition["StartAt"]
    assert start == "Preprocess"
    # Every state is reachable, and every Next names a state that exists.
    assert _reachable(states, start) == set(states)
    # The failure paths: every Catch of every top-level state, and the Choice branches taken when objects failed.
    catches = {rule["Next"] for state in states.values() for rule in state.get("Catch", [])}
    assert catches == {"PreprocessFailed", "InferenceFailed"}
    for choice, branch in FAILURE_CHOICES.items():
        assert [rule["Next"] for rule in states[choice]["Choices"]] == EARLY_SUCCESSES[choice] + [branch], choice
        for success in EARLY_SUCCESSES[choice]:
            assert states[success]["Type"] == "Pass" and states[success].get("End") is True, success
    fails = {name for name, state in states.items() if state["Type"] == "Fail"}
    # The status recorder skips executions that ended in these: RecordFailure wrote their records.
    assert fails == set(RECORDED_FAIL_STATES) == {"PipelineFailed"}
    for failure_start in sorted(catches | set(FAILURE_CHOICES.values())):
        reachable = _reachable(states, failure_start)
        assert "RecordFailure" in reachable, failure_start
        assert "Done" not in reachable, failure_start
        ends = {name for name in reachable if states[name].get("End") or states[name]["Type"] in ("Fail", "Succeed")}
        assert ends <= fails, failure_start
        for name in reachable:
            if states[name].get("Next") == "RecordFailure":
                params = states[name]["Parameters"]
                assert {"failure", "batch", "deliveries"} <= {k.removesuffix(".$") for k in params}, name
                assert {"state", "error", "cause"} <= {k.removesuffix(".$") for k in params["failure"]}, name
    # No path from the start reaches the Fail state without passing through RecordFailure.
    assert not _reachable(states, start, avoiding=frozenset({"RecordFailure"})) & fails
    assert "Done" in _reachable(states, start, avoiding=frozenset({"RecordFailure"}))
    assert states["Done"].get("End") is True and states["Done"]["Type"] == "Pass"
    # Recording never loops: from RecordFailure only the Fail state follows.
    record = states["RecordFailure"]
    assert _reachable(states, "RecordFailure") == {"RecordFailure", "PipelineFailed"}
    assert record["Resource"] == "${SinkFunctionArn}" and record["Parameters"]["mode"] == "failure"
    assert record["Parameters"]["input.$"] == "$$.Execution.Input"
    assert record["Next"] == "PipelineFailed" and "Catch" not in record
    assert {e for rule in record["Retry"] for e in rule["ErrorEquals"]} >= set(TRANSIENT_ERROR_NAMES)
    assert record["ResultPath"] == "$.outcome"
    assert (states["PipelineFailed"]["ErrorPath"], states["PipelineFailed"]["CausePath"]) == (
        "$.outcome.error",
        "$.outcome.cause",
    )
    # A Map branch catches the recorded errors of its sink, so the other sinks still deliver.
    branch = states["FanOut"]["ItemProcessor"]["States"]
    assert branch["Deliver"]["Catch"] == [
        {"ErrorEquals": list(RECORDED_ERROR_NAMES), "ResultPath": "$.error", "Next": "SinkFailed"}
    ]
    assert branch["SinkFailed"]["Parameters"]["status"] == "FAILED" and branch["SinkFailed"].get("End") is True
    assert "States.ArrayContains($[*].status, 'FAILED')" in states["FanOut"]["ResultSelector"]["any_failed.$"]


def test_each_task_times_out_after_its_function_would() -> None:
    definition = json.loads(ASL_PATH.read_text())
    assert definition["TimeoutSeconds"] > 0
    for name, task in _tasks(definition["States"]):
        match = re.fullmatch(r"\$\{(\w+)\}", task["Resource"])
        assert match is not None, f"{name}'s Resource is no ${{placeholder}}: {task['Resource']}"
        placeholder = match.group(1)
        function = STACK["functions"][FUNCTION_OF_PLACEHOLDER[placeholder]]
        assert task["TimeoutSeconds"] > function["timeout_s"], name
