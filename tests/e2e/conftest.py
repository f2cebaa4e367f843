"""End-to-end fixtures: the demo model and the local stack, running in this process.

The stack is the same one ``inferpipe local up`` serves: moto's S3, EventBridge, Step Functions
(executing state_machine/pipeline.asl.json), DynamoDB, SNS, SQS, with our handlers run in
execution environments of their own (awslambdaric worker processes), as in Lambda.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from functions.common.batch import named_objects
from functions.common.manifest import MANIFEST_FILE, Manifest
from functions.sink.core import output_key
from inferpipe.classify import execution_results
from inferpipe.paths import BUILD_DIR

DEMO_MODEL_DIR = BUILD_DIR / "demo-model"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test under tests/e2e is marked ``e2e`` (``pytest -m 'not e2e'`` runs the fast rest)."""
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def demo_model() -> Manifest:
    """The offline demo model package, built once (about a minute) and reused while it exists."""
    manifest_path = DEMO_MODEL_DIR / MANIFEST_FILE
    if not manifest_path.exists():
        from inferpipe.demo_model.train import build_demo_model

        build_demo_model(DEMO_MODEL_DIR, seed=0)
    return Manifest.from_json(manifest_path.read_text())


@pytest.fixture(scope="module")
def stack(demo_model: Manifest, request: pytest.FixtureRequest) -> Iterator[Any]:
    """GIVEN the local stack is up and the demo model is published with alias 'prod'.

    A module's ``TRIGGER`` chooses how uploads start executions: most modules test the pipeline
    with the direct trigger (one execution per upload, its input the S3 event itself);
    test_batching.py uses "batched", a deployment's default.
    """
    from inferpipe.local.stack import LocalStack
    from inferpipe.models import publish

    # Module scope: moto's state is process-wide, and a unit test's mock_aws() would wipe a stack
    # left running across modules. The deployment default is the real ImageNet model; these tests
    # exercise the pipeline with the tiny shapes model instead (known labels, synthetic images),
    # set as the default as Terraform's default_model variable would. tests/e2e/test_real_model.py
    # runs the stack with its real defaults.
    # Any: the tests read an attribute this fixture adds (demo_version)
    local: Any = LocalStack(default_model="demo", trigger=getattr(request.module, "TRIGGER", "direct"))
    local.start()
    try:
        published = publish(
            local.client("s3"), local.resources.buckets["models"], DEMO_MODEL_DIR, name="demo", alias="prod"
        )
        local.demo_version = published.version
        yield local
    finally:
        local.stop()


def wait_for_execution(stack: Any, execution_arn: str, timeout: float = 120.0) -> dict[str, Any]:
    sfn = stack.client("stepfunctions")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        described = sfn.describe_execution(executionArn=execution_arn)
        if described["status"] != "RUNNING":
            return described
        time.sleep(0.2)
    raise TimeoutError(f"{execution_arn} still running after {timeout} s")


def run_upload(stack: Any, key: str, data: bytes, sqs_down: bool = False) -> dict[str, Any]:
    """Upload ``data`` as ``key`` and return its finished execution, once the status recorder and the
    functions' log lines have caught up. With ``sqs_down``, SQS refuses that batch for good (a
    deleted queue), so the execution stops at FanOut."""
    from inferpipe.local import lambda_service

    if sqs_down:
        stack.inject_aws_faults(
            "sqs", "SendMessageBatch", 50, match=key, status=400, code="AWS.SimpleQueueService.NonExistentQueue"
        )
    try:
        stack.client("s3").put_object(Bucket=stack.resources.buckets["input"], Key=key, Body=data)
        (execution,) = executions_for_key(stack, key)
        final = wait_for_execution(stack, execution["executionArn"], timeout=90)
    finally:
        stack.aws_faults.clear()
    assert lambda_service.wait_for_async_invocations(timeout=30)
    stack.flush_logs()
    return final


def executions_for_key(stack: Any, key: str, timeout: float = 30.0) -> list[dict[str, Any]]:
    """The executions whose input is the S3 event for ``key`` (waits for at least one)."""
    sfn = stack.client("stepfunctions")
    deadline = time.monotonic() + timeout
    while True:
        found = []
        for summary in sfn.list_executions(stateMachineArn=stack.state_machine_arn, maxResults=1000)["executions"]:
            described = sfn.describe_execution(executionArn=summary["executionArn"])
            parsed = json.loads(described["input"])  # any JSON: invalid inputs are executions too
            if any(obj["key"] == key for obj in named_objects(parsed)):
                found.append(described)
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def batch_entry(stack: Any, execution_arn: str, key: str) -> dict[str, Any]:
    """The object's entry in its execution's batch document (status, source, prediction or error)."""
    entries = [e for e in execution_results(stack, execution_arn) if (e.get("source") or {}).get("key") == key]
    assert len(entries) == 1, f"{execution_arn} has {len(entries)} entries for {key}"
    return entries[0]


def history(stack: Any, execution_arn: str) -> list[dict[str, Any]]:
    return stack.client("stepfunctions").get_execution_history(executionArn=execution_arn, maxResults=1000)["events"]


def image_bytes(label: str, size: tuple[int, int] = (320, 240), fmt: str = "JPEG", seed: int = 7) -> bytes:
    """A demo-class image as the user would upload it."""
    import io

    import numpy as np

    from inferpipe.demo_model.shapes import render

    image = render(label, np.random.default_rng(seed), size=size)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, quality=92)
    return buffer.getvalue()


def direct_top1(package_dir: Path, data: bytes) -> str:
    """Reference prediction: MXNet forward on the exported symbol + params, outside the pipeline."""
    import io

    import mxnet as mx
    from PIL import Image

    from functions.preprocess.transform import to_tensor

    manifest = Manifest.from_json((package_dir / MANIFEST_FILE).read_text())
    net = mx.gluon.SymbolBlock.imports(
        str(package_dir / manifest.files["symbol"].path), ["data"], str(package_dir / manifest.files["params"].path)
    )
    tensor = to_tensor(Image.open(io.BytesIO(data)).convert("RGB"), manifest.input)[None]
    logits = net(mx.nd.array(tensor)).asnumpy()[0]
    labels = (package_dir / manifest.files["labels"].path).read_text().splitlines()
    return labels[int(logits.argmax())]


class SinkReader:
    """Reads back what each sink holds for one source object.

    Queues are drained into memory (messages are deleted once read), so records are counted
    across every test that ran before, exactly once each.
    """

    def __init__(self, stack: Any) -> None:
        self.stack = stack
        prefix = stack.resources.prefix
        sqs = stack.client("sqs")
        self.queues = {
            "sqs": sqs.get_queue_url(QueueName=stack.resources.queue)["QueueUrl"],
            "sns": sqs.get_queue_url(QueueName=f"{prefix}-local-sns-tap")["QueueUrl"],
            "eventbridge": sqs.get_queue_url(QueueName=f"{prefix}-local-events-tap")["QueueUrl"],
        }
        self.drained: dict[str, list[dict[str, Any]]] = {name: [] for name in self.queues}

    def _drain(self) -> None:
        sqs = self.stack.client("sqs")
        for name, url in self.queues.items():
            while True:
                batch = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
                if not batch:
                    break
                for message in batch:
                    body = json.loads(message["Body"])
                    self.drained[name].append(body["detail"] if name == "eventbridge" else body)
                    sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])

    def records(self, bucket: str, key: str) -> dict[str, list[dict[str, Any]]]:
        """sink name -> the records it holds for s3://bucket/key."""
        self._drain()
        found: dict[str, list[dict[str, Any]]] = {
            name: [r for r in records if r["source"]["bucket"] == bucket and r["source"]["key"] == key]
            for name, records in self.drained.items()
        }
        res = self.stack.resources
        s3 = self.stack.client("s3")
        try:
            body = s3.get_object(
                Bucket=res.buckets["output"],
                Key=output_key(res.settings["OUTPUT_PREFIX"], {"bucket": bucket, "key": key}),
            )["Body"].read()
            found["s3"] = [json.loads(body)]
        except s3.exceptions.NoSuchKey:
            found["s3"] = []
        items = self.stack.client("dynamodb").query(
            TableName=res.table,
            KeyConditionExpression="#o = :o",
            ExpressionAttributeNames={"#o": "object"},
            ExpressionAttributeValues={":o": {"S": f"s3://{bucket}/{key}"}},
        )["Items"]
        found["dynamodb"] = [
            item for item in items if item.get("status", {}).get("S") == "SUCCEEDED"
        ]  # predictions, not failure records
        return found


@pytest.fixture(scope="module")
def sinks(stack: Any) -> SinkReader:
    return SinkReader(stack)
