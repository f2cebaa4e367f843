"""Load and reconcile: upload hundreds of images in bursts, with transient faults and bad inputs, then
check that every object is accounted for exactly once.

    .venv/bin/python scripts/load.py [--images 300] [--bad 0.05] [--faults 0.10] [--burst 20] [--seed 1]

Runs the local stack in this process (the demo model is built if missing). About 10% of the good
images get a transient fault at the AWS edge on their own run (S3 GetObject, DynamoDB PutItem,
SNS Publish, SQS SendMessage or EventBridge PutEvents failing their first 4 requests: beyond
botocore's retries, so the state machine's Retry handles them) or a throttled Lambda invocation;
about 5% of the uploads are bad inputs (empty, text, truncated JPEG, decompression bomb).

Reconciliation: succeeded records == good images in every sink (S3, DynamoDB, SNS, SQS,
EventBridge), failure records == bad images (failures/ objects and FAILED items), zero
duplicates, zero missing. Prints the counts and the wall time; exits 1 on any mismatch.
"""

from __future__ import annotations

import argparse
import json
import random
import struct
import sys
import time
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SINKS = ("s3", "dynamodb", "sns", "sqs", "eventbridge")
FAULTS = (
    ("s3", "GetObject", 4, {}),
    ("dynamodb", "PutItem", 4, {}),
    ("sns", "Publish", 4, {}),
    ("sqs", "SendMessage", 4, {"status": 500, "code": "InternalError"}),
    ("events", "PutEvents", 4, {}),
)
LABELS = ("circle", "square", "triangle", "ring", "checkerboard", "stripes")


def _bomb_png() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 90_000, 90_000, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")


@dataclass
class Report:
    good: list[str] = field(default_factory=list)
    bad: list[str] = field(default_factory=list)
    faulted: int = 0
    lambda_throttles: int = 0
    seconds: float = 0.0
    counts: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def text(self) -> str:
        lines = [
            f"uploaded {len(self.good) + len(self.bad)} objects: {len(self.good)} good, {len(self.bad)} bad; "
            f"{self.faulted} runs with an injected AWS fault, {self.lambda_throttles} throttled Lambda invocations",
            f"wall time {self.seconds:.1f} s",
        ]
        lines += [f"  {name}: {value}" for name, value in self.counts.items()]
        lines.append("RECONCILED: every object accounted for exactly once" if self.ok else "MISMATCH:")
        lines += [f"  {p}" for p in self.problems[:50]]
        return "\n".join(lines)


def _labels() -> list[str]:
    from inferpipe.demo_model.shapes import CLASSES  # type: ignore[attr-defined]

    return list(CLASSES)


def run_load(stack: Any, images: int = 300, bad_share: float = 0.05, fault_share: float = 0.10, burst: int = 30,
             seed: int = 1, timeout: float = 900.0, settle: int = 5, out: Any = sys.stdout) -> Report:
    """Upload, wait, reconcile against ``stack`` (a running :class:`inferpipe.local.stack.LocalStack`).

    Each burst of ``burst`` uploads goes out at once; the next waits until at most ``settle``
    executions are still running (the local stack runs every Lambda in this process).
    """
    from tests.e2e.conftest import SinkReader, image_bytes

    rng = random.Random(seed)
    try:
        labels = _labels()
    except Exception:  # noqa: BLE001 - fall back to names the demo model has
        labels = list(LABELS)
    run = f"load-{int(time.time())}-{rng.randrange(10**6):06d}"
    bucket = stack.resources.buckets["input"]
    s3, sfn = stack.client("s3"), stack.client("stepfunctions")
    bad_kinds = {
        "empty": b"",
        "text": b"<html>this is not an image</html>",
        "truncated": image_bytes("circle", seed=99)[:900],
        "bomb": _bomb_png(),
    }
    plan: list[tuple[str, bytes, bool]] = []
    n_bad = max(1, round(images * bad_share))
    bad_positions = set(rng.sample(range(images), n_bad))
    report = Report()
    for i in range(images):
        if i in bad_positions:
            kind = rng.choice(sorted(bad_kinds))
            key = f"{run}/bad {i:04d} {kind}.jpg"
            plan.append((key, bad_kinds[kind], False))
            report.bad.append(key)
        else:
            label = labels[i % len(labels)]
            key = f"{run}/img {i:04d} {label} +%é.jpg"
            plan.append((key, image_bytes(label, size=(160, 120), seed=i), True))
            report.good.append(key)

    started = time.monotonic()

    def in_flight() -> int:
        return len(sfn.list_executions(stateMachineArn=stack.state_machine_arn, statusFilter="RUNNING", maxResults=1000)["executions"])

    with ThreadPoolExecutor(max_workers=8) as pool:
        for start in range(0, len(plan), burst):
            chunk = plan[start : start + burst]
            for key, _, good in chunk:
                if good and rng.random() < fault_share:
                    if rng.random() < 0.2:
                        stack.inject_failures(rng.choice(["preprocess", "inference", "sink"]), 1)
                        report.lambda_throttles += 1
                    else:
                        service, operation, count, extra = rng.choice(FAULTS)
                        stack.inject_aws_faults(service, operation, count, match=key.split("/", 1)[1], **extra)
                    report.faulted += 1
            list(pool.map(lambda item: s3.put_object(Bucket=bucket, Key=item[0], Body=item[1]), chunk))
            print(f"burst {start // burst + 1}: uploaded {start + len(chunk)}/{len(plan)}", file=out, flush=True)
            while in_flight() > settle and time.monotonic() - started < 4 * timeout:
                time.sleep(0.5)

    # Wait until every upload has a finished execution (timeout counted from the last upload).
    keys = {key for key, _, _ in plan}
    deadline = time.monotonic() + timeout
    errors: Counter[str] = Counter()
    finished: dict[str, list[str]] = {}
    while time.monotonic() < deadline:
        finished.clear()
        running = 0
        for page in sfn.get_paginator("list_executions").paginate(stateMachineArn=stack.state_machine_arn):
            for summary in page["executions"]:
                if summary["status"] == "RUNNING":
                    running += 1
        if running == 0:
            for page in sfn.get_paginator("list_executions").paginate(stateMachineArn=stack.state_machine_arn):
                for summary in page["executions"]:
                    described = sfn.describe_execution(executionArn=summary["executionArn"])
                    try:
                        key = json.loads(described["input"])["detail"]["object"]["key"]
                    except (KeyError, TypeError, ValueError):
                        continue
                    if key in keys:
                        finished.setdefault(key, []).append(summary["status"])
                        if summary["status"] != "SUCCEEDED":
                            error = str(described.get("error"))
                            if error == "PipelineError":  # the cause starts with the original exception type
                                error += f" ({str(described.get('cause', '')).split(':', 1)[0]})"
                            errors[error] += 1
            if set(finished) == keys:
                break
        time.sleep(1.0)
    report.seconds = time.monotonic() - started

    # Reconcile.
    reader = SinkReader(stack)
    good, bad = set(report.good), set(report.bad)
    per_sink: dict[str, Counter[str]] = {sink: Counter() for sink in SINKS}
    reader._drain()
    for sink in ("sns", "sqs", "eventbridge"):
        for record in reader.drained[sink]:
            if record["source"]["key"].startswith(run + "/"):
                per_sink[sink][record["source"]["key"]] += 1
    from functions.sink import records

    output = stack.resources.buckets["output"]
    failures: Counter[str] = Counter()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=output, Prefix=f"predictions/{bucket}/{run}/"):
        for obj in page.get("Contents", []):
            per_sink["s3"][records.decode_key(obj["Key"][len(f"predictions/{bucket}/") : -len(".json")])] += 1
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=output, Prefix=f"failures/{bucket}/{run}/"):
        for obj in page.get("Contents", []):
            failures[records.decode_key(obj["Key"][len(f"failures/{bucket}/") : -len(".json")])] += 1
    failed_items: Counter[str] = Counter()
    ddb = stack.client("dynamodb")
    for page in ddb.get_paginator("scan").paginate(TableName=stack.resources.table):
        for item in page["Items"]:
            obj = item["object"]["S"]
            prefix = f"s3://{bucket}/{run}/"
            if obj.startswith(prefix):
                key = obj[len(f"s3://{bucket}/"):]
                (per_sink["dynamodb"] if item["status"]["S"] == "SUCCEEDED" else failed_items)[key] += 1

    statuses = Counter(status for runs in finished.values() for status in runs)
    report.counts = {
        "executions": dict(statuses),
        "execution errors": dict(errors),
        "objects without a finished execution": len(keys - set(finished)),
        **{f"{sink} records (good: {len(good)})": sum(per_sink[sink].values()) for sink in SINKS},
        f"failure records in failures/ (bad: {len(bad)})": sum(failures.values()),
        f"FAILED items in the table (bad: {len(bad)})": sum(failed_items.values()),
        "duplicates": sum(max(0, n - 1) for c in (*per_sink.values(), failures, failed_items) for n in c.values()),
        "missing": sum(1 for sink in SINKS for key in good if per_sink[sink][key] == 0)
        + sum(1 for key in bad if failures[key] == 0 or failed_items[key] == 0),
    }
    for sink in SINKS:
        for key in sorted(good - set(per_sink[sink])):
            report.problems.append(f"missing {sink} record for {key} (executions: {finished.get(key)})")
        for key, n in per_sink[sink].items():
            if n > 1:
                report.problems.append(f"{n} {sink} records for {key}")
            if key in bad:
                report.problems.append(f"{sink} holds a prediction for bad input {key}")
    for key in sorted(bad):
        if failures[key] != 1 or failed_items[key] != 1:
            report.problems.append(f"bad input {key}: {failures[key]} failure objects, {failed_items[key]} FAILED items")
    for key in sorted(good):
        if failures[key] or failed_items[key]:
            report.problems.append(f"good image {key} has a failure record")
    for key in sorted(keys - set(finished)):
        report.problems.append(f"no finished execution for {key}")
    print(report.text(), file=out, flush=True)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--bad", type=float, default=0.05, help="share of bad inputs (default 0.05)")
    parser.add_argument("--faults", type=float, default=0.10, help="share of good images with an injected transient fault (default 0.10)")
    parser.add_argument("--burst", type=int, default=20, help="uploads per burst (default 20)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)

    from functions.common.manifest import MANIFEST_FILE
    from inferpipe.local.stack import LocalStack
    from inferpipe.models import publish
    from tests.e2e.conftest import DEMO_MODEL_DIR

    if not (DEMO_MODEL_DIR / MANIFEST_FILE).exists():
        from inferpipe.demo_model.train import build_demo_model

        build_demo_model(DEMO_MODEL_DIR, seed=0)
    import logging

    logging.disable(logging.WARNING)  # the functions' JSON logs would drown the report
    logging.getLogger("moto").setLevel(logging.CRITICAL)  # moto logs every failed execution at ERROR
    # The tiny shapes model, as the deployment default: its synthetic images and known labels are
    # what the reconciliation checks (the e2e tests do the same; see tests/e2e/conftest.py). The
    # direct trigger: the reconciliation reads one execution per upload, its input the S3 event
    # (tests/e2e/test_batching.py checks the batched trigger's deliveries object by object).
    with LocalStack(default_model="demo", trigger="direct").start() as stack:
        publish(stack.client("s3"), stack.resources.buckets["models"], DEMO_MODEL_DIR, name="demo", alias="prod")
        report = run_load(stack, images=args.images, bad_share=args.bad, fault_share=args.faults, burst=args.burst, seed=args.seed)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
