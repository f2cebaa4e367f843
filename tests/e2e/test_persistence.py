"""The local stack's state survives a stop and a start, and a crash (kill -9 of the daemon)."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from functions.sink import records
from inferpipe.local import daemon, persistence
from inferpipe.local.guard import TOKEN_HEADER
from inferpipe.local.stack import LocalStack
from inferpipe.models import list_versions, publish
from inferpipe.target import Target
from tests.e2e.conftest import DEMO_MODEL_DIR, executions_for_key, image_bytes, wait_for_execution


@pytest.fixture(autouse=True)
def _no_stack_in_this_process() -> None:
    """These tests start and stop stacks of their own (one per process at a time)."""
    if LocalStack.active() is not None:
        pytest.skip("another module's local stack runs in this process")


def _classify_one(target: Any, key: str, seed: int) -> tuple[str, dict[str, Any]]:
    """Upload one image; its version id and its (finished) execution."""
    version = target.client("s3").put_object(
        Bucket=target.resources.buckets["input"], Key=key, Body=image_bytes("circle", seed=seed)
    )["VersionId"]
    (execution,) = executions_for_key(target, key)
    return version, wait_for_execution(target, execution["executionArn"], timeout=90)


def test_a_stopped_stack_starts_again_with_its_models_objects_records_and_executions(tmp_path: Path) -> None:
    key = f"kept/{uuid.uuid4().hex[:6]} photo.jpg"
    first = LocalStack(default_model="demo", trigger="direct", state_dir=tmp_path).start()
    try:
        target = Target(endpoint_url=first.endpoint_url, resources=first.resources)
        published = publish(
            first.client("s3"), first.resources.buckets["models"], DEMO_MODEL_DIR, name="demo", alias="prod"
        )
        version, done = _classify_one(target, key, seed=1)
        assert done["status"] == "SUCCEEDED"
        # ... and one that stopped at FanOut: SQS refused its batch for good
        down = f"kept/{uuid.uuid4().hex[:6]} down.jpg"
        first.inject_aws_faults(
            "sqs", "SendMessageBatch", 50, match=down, status=400, code="AWS.SimpleQueueService.NonExistentQueue"
        )
        _, stopped = _classify_one(target, down, seed=4)
        first.aws_faults.clear()
        assert stopped["status"] == "FAILED" and stopped["error"] == "SinkUnavailableError"
        events_before = first.client("stepfunctions").get_execution_history(
            executionArn=done["executionArn"], maxResults=1000
        )["events"]
    finally:
        first.stop()
    assert (tmp_path / persistence.SNAPSHOT_FILE).exists()

    # WHEN a new stack starts on the same state folder
    second = LocalStack(default_model="demo", trigger="direct", state_dir=tmp_path).start()
    try:
        s3, sfn = second.client("s3"), second.client("stepfunctions")
        res = second.resources
        # THEN the model, its alias, the upload and its record are there
        versions = list_versions(s3, res.buckets["models"], "demo")
        assert [(v["version"], v["aliases"]) for v in versions] == [(published.version, ["prod"])]
        assert s3.head_object(Bucket=res.buckets["input"], Key=key, VersionId=version)["ContentLength"] > 0
        found = records.find(
            s3, res.buckets["output"], res.settings["OUTPUT_PREFIX"], res.buckets["input"], key, version
        )
        assert found is not None and found[1]["execution_id"] == done["executionArn"]
        items = second.client("dynamodb").scan(TableName=res.table)["Items"]
        assert any(item.get("execution_id", {}).get("S") == done["executionArn"] for item in items)
        # AND the execution, with its whole history
        again = sfn.describe_execution(executionArn=done["executionArn"])
        assert again["status"] == "SUCCEEDED" and json.loads(again["output"]) == json.loads(done["output"])
        events_after = sfn.get_execution_history(executionArn=done["executionArn"], maxResults=1000)["events"]
        assert [e["type"] for e in events_after] == [e["type"] for e in events_before]
        assert second.restored["executions"] >= 1
        # AND the execution that stopped can be redriven: only its failed iteration runs again
        sink_runs = len(second.invocations("sink"))
        sfn.redrive_execution(executionArn=stopped["executionArn"])
        redriven = wait_for_execution(second, stopped["executionArn"], timeout=90)
        assert redriven["status"] == "SUCCEEDED" and redriven["redriveCount"] == 1, redriven.get("cause")
        assert (
            len(second.invocations("sink")) - sink_runs <= 2
        )  # sqs's delivery (and the status recorder), not all five
        # AND the pipeline works on: a new upload is classified with the restored model
        _, more = _classify_one(
            Target(endpoint_url=second.endpoint_url, resources=res), f"kept/{uuid.uuid4().hex[:6]}.jpg", seed=2
        )
        assert more["status"] == "SUCCEEDED"
    finally:
        second.stop()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_crashed_stack_comes_back_with_its_state_and_fresh_starts_empty(tmp_path: Path) -> None:
    port = _free_port()
    started = daemon.up(port=port, state_dir=tmp_path, trigger="direct", timeout=120)
    try:
        target = Target(
            endpoint_url=started["endpoint_url"],
            resources=Target.connect(endpoint_url=started["endpoint_url"]).resources,
        )
        publish(
            target.client("s3"),
            target.resources.buckets["models"],
            DEMO_MODEL_DIR,
            name="efficientnet_lite0",
            alias="prod",
        )
        _, done = _classify_one(target, f"crash/{uuid.uuid4().hex[:6]}.jpg", seed=3)
        assert done["status"] == "SUCCEEDED"
        # ... and one still running when the stack dies: its preprocess read held for a minute
        held = f"crash/{uuid.uuid4().hex[:6]} held.jpg"
        fault = urllib.request.Request(
            started["endpoint_url"] + "/_inferpipe/faults",
            method="POST",
            headers={TOKEN_HEADER: daemon.control_token(tmp_path) or "", "Content-Type": "application/json"},
            data=json.dumps({"service": "s3", "operation": "GetObject", "match": held, "delay": 60}).encode(),
        )
        urllib.request.urlopen(fault, timeout=10).read()
        target.client("s3").put_object(
            Bucket=target.resources.buckets["input"], Key=held, Body=image_bytes("circle", seed=5)
        )
        time.sleep(persistence.INTERVAL_S + 3)  # a snapshot has been written since
        sfn = target.client("stepfunctions")
        running = [
            e
            for e in sfn.list_executions(stateMachineArn=target.state_machine_arn, statusFilter="RUNNING")["executions"]
        ]
        assert len(running) == 1
        # WHEN the stack is killed (no clean stop, no last snapshot)
        os.kill(started["pid"], signal.SIGKILL)
        deadline = time.monotonic() + 10
        while daemon.status(tmp_path)["running"] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "is gone" in daemon.status(tmp_path)["problem"]

        # THEN `up` brings it back with what it held
        back = daemon.up(port=port, state_dir=tmp_path, trigger="direct", timeout=120)
        assert sfn.describe_execution(executionArn=done["executionArn"])["status"] == "SUCCEEDED"
        # AND the execution that was running says it could not go on, and can be redriven
        interrupted = sfn.describe_execution(executionArn=running[0]["executionArn"])
        assert interrupted["status"] == "ABORTED" and interrupted["cause"] == persistence.ABORTED_CAUSE
        assert interrupted["redriveStatus"] == "REDRIVABLE"
        # (its end was announced like any other: the status recorder wrote its object's failure record)
        failure_key = records.latest_key("failures/", target.resources.buckets["input"], held)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                record = json.loads(
                    target.client("s3")
                    .get_object(Bucket=target.resources.buckets["output"], Key=failure_key)["Body"]
                    .read()
                )
                break
            except target.client("s3").exceptions.NoSuchKey:
                time.sleep(0.5)
        else:
            raise AssertionError(f"no failure record for {held}")
        assert record["execution_id"] == running[0]["executionArn"]
        sfn.redrive_execution(executionArn=running[0]["executionArn"])
        assert wait_for_execution(target, running[0]["executionArn"], timeout=90)["status"] == "SUCCEEDED"
        assert [v["name"] for v in list_versions(target.client("s3"), target.resources.buckets["models"])] == [
            "efficientnet_lite0"
        ]
        assert back["pid"] != started["pid"]
    finally:
        daemon.down(tmp_path)

    # AND `up --fresh` starts empty
    daemon.up(port=port, state_dir=tmp_path, trigger="direct", timeout=120, fresh=True)
    try:
        assert list_versions(target.client("s3"), target.resources.buckets["models"]) == []
        assert (
            target.client("stepfunctions").list_executions(stateMachineArn=target.state_machine_arn)["executions"] == []
        )
    finally:
        daemon.down(tmp_path)
