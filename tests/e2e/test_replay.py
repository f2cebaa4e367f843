"""``inferpipe replay`` against the local stack: dry run, restart, skip what already succeeded, report what still fails."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from inferpipe.cli import main
from tests.e2e.conftest import executions_for_key, image_bytes, wait_for_execution


def _cli(stack: Any, *args: str) -> list[str]:
    return ["replay", "--endpoint-url", stack.endpoint_url, *args]


def test_replay_dry_run_lists_then_replays_once_and_reports_what_still_fails(stack: Any, capsys: pytest.CaptureFixture[str]) -> None:
    s3 = stack.client("s3")
    bucket = stack.resources.buckets["input"]
    # GIVEN one execution that failed transiently (inference throttled beyond its retries) and one
    # that fails for good (not an image)
    good_key = f"replay/{uuid.uuid4().hex[:6]} good.jpg"
    bad_key = f"replay/{uuid.uuid4().hex[:6]} bad.jpg"
    stack.inject_failures("inference", 5)  # 1 attempt + 4 retries: all throttled
    s3.put_object(Bucket=bucket, Key=good_key, Body=image_bytes("circle", seed=30))
    good = wait_for_execution(stack, executions_for_key(stack, good_key)[0]["executionArn"])
    s3.put_object(Bucket=bucket, Key=bad_key, Body=b"GIF89a but not really")
    bad = wait_for_execution(stack, executions_for_key(stack, bad_key)[0]["executionArn"])
    assert good["status"] == "FAILED" and good["error"] == "Lambda.TooManyRequestsException"
    assert bad["status"] == "FAILED" and bad["error"] == "NotAnImageError"
    arns = [good["executionArn"], bad["executionArn"]]
    ids = [arg for arn in arns for arg in ("--execution", arn)]

    # WHEN an operator asks what would be replayed
    assert main(_cli(stack, "--dry-run", *ids)) == 0
    dry = capsys.readouterr().out
    # THEN the plan says which is redriven (it stopped at Inference, out of retries) and which is
    # restarted (it ended in PipelineFailed: the file is at fault), and why; nothing was started
    assert "would replay 2 execution(s)" in dry
    good_line = next(line for line in dry.splitlines() if good["name"] in line)
    bad_line = next(line for line in dry.splitlines() if bad["name"] in line)
    assert "redrive (same execution)" in good_line and "stopped at Inference (Lambda.TooManyRequestsException)" in good_line
    assert f"restart as {bad['name']}-r1" in bad_line and "ended in PipelineFailed" in bad_line
    assert len(executions_for_key(stack, good_key)) == 1

    # WHEN they are replayed
    code = main(_cli(stack, *ids))
    captured = capsys.readouterr()
    # THEN the transient one is redriven (same ARN) and succeeds; the bad one, restarted, still fails
    assert f"redriven {good['name']} -> {good['name']}" in captured.err
    assert f"restarted {bad['name']} -> {bad['name']}-r1" in captured.err
    assert "replayed 2 execution(s): 1 succeeded, 1 still failing" in captured.out
    assert "still failing:" in captured.out and "NotAnImageError" in captured.out
    assert code == 1
    described = stack.client("stepfunctions").describe_execution(executionArn=good["executionArn"])
    assert described["status"] == "SUCCEEDED" and described["redriveCount"] == 1
    assert len(executions_for_key(stack, good_key)) == 1  # no new execution for it

    # WHEN replayed again
    main(_cli(stack, "--dry-run", *ids))
    again = capsys.readouterr().out
    # THEN the one that succeeded is skipped; the one still failing would be restarted as -r2
    assert "succeeded" in again and f"{bad['name']}-r2" in again

    # AND --mode restart still restarts whatever the cause
    assert main(_cli(stack, "--mode", "restart", "--dry-run", "--execution", bad["executionArn"])) == 0
    assert f"restart as {bad['name']}-r2" in capsys.readouterr().out


def test_replay_by_time_window_only_considers_recent_failures(stack: Any, capsys: pytest.CaptureFixture[str]) -> None:
    sfn = stack.client("stepfunctions")
    started = sfn.start_execution(stateMachineArn=stack.state_machine_arn, name=f"w-{uuid.uuid4().hex}", input=json.dumps({"nope": 1}))
    wait_for_execution(stack, started["executionArn"])
    assert main(_cli(stack, "--since", "10m", "--status", "FAILED", "--dry-run")) == 0
    out = capsys.readouterr().out
    assert started["executionArn"].rsplit(":", 1)[-1] + "-r1" in out and "ended in PipelineFailed" in out
    assert main(_cli(stack, "--since", "banana")) == 2
