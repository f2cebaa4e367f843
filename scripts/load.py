"""Load and reconcile: upload a thousand object versions in bursts, with transient faults, bad
inputs, overwrites and killed execution environments, then check that every version is accounted
for exactly once.

    .venv/bin/python scripts/load.py [--images 1000] [--bad 0.05] [--faults 0.10] [--overwrites 0.05]
                                     [--kill-every 2] [--burst 20] [--seed 1]

Runs the local stack in this process (the demo model is built if missing). About 10% of the good
images get a fault on their own run: a transient one at the AWS edge (S3 GetObject, DynamoDB
PutItem, SNS PublishBatch, SQS SendMessageBatch or EventBridge PutEvents failing their first 4
requests: beyond botocore's retries, so the state machine's Retry handles them) or a throttled
Lambda invocation; about 5% of the uploads are bad inputs (empty, text, truncated JPEG,
decompression bomb); about 5% are a second version of an earlier key; every 2 s the environment
of a preprocess or inference invocation running then is killed (SIGKILL, ``Runtime.ExitError``).
Executions that still failed for another reason than their input are replayed (``inferpipe
replay``, auto mode), as an operator would.

Reconciliation: ``inferpipe reconcile`` over the run's keys must show 0 missing, 0 duplicates and 0
stale in every sink, and exactly the bad inputs as failed; the SNS, SQS and EventBridge messages
themselves (read back through the local taps) must be one per good version; every bad input's
failure record names its error; every overwritten key's latest view is its newest version.
Prints the table, the counts and the wall time; exits 1 on any mismatch.
"""

from __future__ import annotations

import argparse
import json
import random
import struct
import sys
import threading
import time
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from functions.common.stack import SINKS

#: (service, operation, requests failed, extra): transient faults beyond botocore's retries, on the
#: APIs the functions really call (the message sinks publish with the batch APIs).
FAULTS = (
    ("s3", "GetObject", 4, {}),
    ("dynamodb", "PutItem", 4, {}),
    ("sns", "PublishBatch", 4, {}),
    ("sqs", "SendMessageBatch", 4, {"status": 500, "code": "InternalError"}),
    ("events", "PutEvents", 4, {}),
)
LABELS = ("circle", "square", "triangle", "ring", "checkerboard", "stripes")
#: The error each kind of bad input must fail with.
BAD_ERRORS = {
    "empty": "NotAnImageError",
    "text": "NotAnImageError",
    "truncated": "NotAnImageError",
    "bomb": "DecompressionBombError",
}
#: Functions whose environments are killed mid-invocation (their work is idempotent; a sink killed
#: between a publish and its ledger write may publish twice, the documented at-least-once window).
KILLED = ("preprocess", "inference")


def _bomb_png() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 90_000, 90_000, 8, 2, 0, 0, 0))
        + chunk(b"IEND", b"")
    )


@dataclass(frozen=True)
class Upload:
    key: str
    body: bytes
    bad: str | None = None  # the kind of bad input, else a good image
    overwrite: bool = False  # a second version of an earlier good key
    fault_match: str | None = None


@dataclass
class Report:
    uploads: list[Upload] = field(default_factory=list)
    faulted: int = 0
    lambda_throttles: int = 0
    kills: int = 0
    replayed: int = 0
    #: Why each replayed execution failed the first time: its error and cause, as described then.
    first_failures: list[str] = field(default_factory=list)
    seconds: float = 0.0
    counts: dict[str, Any] = field(default_factory=dict)
    reconciliation: str = ""
    problems: list[str] = field(default_factory=list)

    @property
    def good(self) -> list[str]:
        return [u.key for u in self.uploads if u.bad is None and not u.overwrite]

    @property
    def bad(self) -> list[str]:
        return [u.key for u in self.uploads if u.bad is not None]

    @property
    def ok(self) -> bool:
        return not self.problems

    def text(self) -> str:
        overwrites = sum(1 for u in self.uploads if u.overwrite)
        lines = [
            f"uploaded {len(self.uploads)} object versions: {len(self.good)} good keys, {overwrites} overwrites of them, "
            f"{len(self.bad)} bad inputs; {self.faulted} runs with an injected AWS fault, {self.lambda_throttles} throttled "
            f"Lambda invocations, {self.kills} execution environments killed mid-invocation, {self.replayed} executions replayed",
            f"wall time {self.seconds:.1f} s",
        ]
        lines += [f"  {name}: {value}" for name, value in self.counts.items()]
        if self.first_failures:
            lines += ["  replayed, because they first failed with:"] + [f"    {f}" for f in self.first_failures]
        lines += ["", self.reconciliation, ""]
        lines.append("RECONCILED: every object version accounted for exactly once" if self.ok else "MISMATCH:")
        lines += [f"  {p}" for p in self.problems[:50]]
        return "\n".join(lines)


def _labels() -> list[str]:
    from inferpipe.demo_model.shapes import CLASSES  # type: ignore[attr-defined]

    return list(CLASSES)


def run_load(
    stack: Any,
    images: int = 300,
    bad_share: float = 0.05,
    fault_share: float = 0.10,
    burst: int = 30,
    seed: int = 1,
    timeout: float = 900.0,
    settle: int = 5,
    overwrite_share: float = 0.05,
    kill_every: float | None = 2.0,
    out: Any = None,
) -> Report:
    """Upload ``images`` object versions, wait, replay what failed for other reasons than its
    input, and reconcile against ``stack`` (a running :class:`inferpipe.local.stack.LocalStack`).

    Each burst of ``burst`` uploads goes out at once; the next waits until at most ``settle``
    executions are still running. Every ``kill_every`` seconds until all executions have ended, the
    environments of a preprocess or inference invocation running then are killed (SIGKILL).
    """
    out = out if out is not None else sys.stdout
    from functions.sink import records
    from functions.sink.core import FAILURE_PREFIX
    from inferpipe import reconcile, replay
    from tests.e2e.conftest import SinkReader, image_bytes

    rng = random.Random(seed)
    try:
        labels = _labels()
    except Exception:  # noqa: BLE001 - fall back to names the demo model has
        labels = list(LABELS)
    run = f"load-{int(time.time())}-{rng.randrange(10**6):06d}"
    bucket, output = stack.resources.buckets["input"], stack.resources.buckets["output"]
    s3, sfn = stack.client("s3"), stack.client("stepfunctions")
    bad_kinds = {
        "empty": b"",
        "text": b"<html>this is not an image</html>",
        "truncated": image_bytes("circle", seed=99)[:900],
        "bomb": _bomb_png(),
    }
    report = Report()
    bad_positions = set(rng.sample(range(images), max(1, round(images * bad_share))))
    good_keys: list[str] = []
    for i in range(images):
        if i in bad_positions:
            kind = rng.choice(sorted(bad_kinds))
            report.uploads.append(Upload(f"{run}/bad {i:04d} {kind}.jpg", bad_kinds[kind], bad=kind))
        elif len(good_keys) > burst and rng.random() < overwrite_share:  # a key of an earlier burst, uploaded again
            key = rng.choice(good_keys[:-burst])
            report.uploads.append(
                Upload(
                    key, image_bytes(labels[(i + 3) % len(labels)], size=(160, 120), seed=10_000 + i), overwrite=True
                )
            )
        else:
            label = labels[i % len(labels)]
            key = f"{run}/img {i:04d} {label} +%é.jpg"
            good_keys.append(key)
            # the key's ASCII part: it appears in every request about the object, whatever the encoding
            report.uploads.append(Upload(key, image_bytes(label, size=(160, 120), seed=i), fault_match=f"img {i:04d} "))

    started = time.monotonic()
    stop_killing = threading.Event()
    killer_rng = random.Random(seed + 1)

    def killer() -> None:
        while kill_every and not stop_killing.wait(kill_every):
            report.kills += stack.kill_environments(killer_rng.choice(KILLED))

    kill_thread = threading.Thread(target=killer, name="load-killer", daemon=True)
    kill_thread.start()

    def in_flight() -> int:
        return len(
            sfn.list_executions(stateMachineArn=stack.state_machine_arn, statusFilter="RUNNING", maxResults=1000)[
                "executions"
            ]
        )

    versions: dict[int, str] = {}
    with ThreadPoolExecutor(max_workers=8) as pool:
        for start in range(0, len(report.uploads), burst):
            chunk = list(enumerate(report.uploads[start : start + burst], start))
            for _, upload in chunk:
                if upload.fault_match and rng.random() < fault_share:
                    if rng.random() < 0.2:
                        stack.inject_failures(rng.choice(["preprocess", "inference", "sink"]), 1)
                        report.lambda_throttles += 1
                    else:
                        service, operation, count, extra = rng.choice(FAULTS)
                        stack.inject_aws_faults(service, operation, count, match=upload.fault_match, **extra)
                    report.faulted += 1
            answers = pool.map(
                lambda item: (item[0], s3.put_object(Bucket=bucket, Key=item[1].key, Body=item[1].body)), chunk
            )
            versions.update({index: answer["VersionId"] for index, answer in answers})
            print(
                f"burst {start // burst + 1}: uploaded {start + len(chunk)}/{len(report.uploads)}", file=out, flush=True
            )
            while in_flight() > settle and time.monotonic() - started < 4 * timeout:
                time.sleep(0.5)

    # Wait until every uploaded version has an execution that ended (timeout counted from the last upload).
    wanted = {(u.key, versions[i]) for i, u in enumerate(report.uploads)}
    deadline = time.monotonic() + timeout
    executions: dict[tuple[str, str], dict[str, Any]] = {}
    while time.monotonic() < deadline:
        if in_flight() == 0:
            executions.clear()
            for page in sfn.get_paginator("list_executions").paginate(stateMachineArn=stack.state_machine_arn):
                for summary in page["executions"]:
                    described = sfn.describe_execution(executionArn=summary["executionArn"])
                    try:
                        obj = json.loads(described["input"])["detail"]["object"]
                    except (KeyError, TypeError, ValueError):
                        continue
                    if (obj["key"], obj.get("version-id")) in wanted:
                        executions[(obj["key"], obj.get("version-id"))] = described
            if set(executions) == wanted:
                break
        time.sleep(1.0)
    stop_killing.set()
    kill_thread.join()
    statuses = Counter(e["status"] for e in executions.values())
    errors = Counter(str(e.get("error")) for e in executions.values() if e["status"] != "SUCCEEDED")

    # What failed for another reason than its input is replayed, as an operator would.
    named = set(BAD_ERRORS.values())
    again = [
        e["executionArn"] for e in executions.values() if e["status"] != "SUCCEEDED" and e.get("error") not in named
    ]
    report.first_failures = sorted(
        f"{e['error']}: {str(e.get('cause', ''))[:300]}" for e in executions.values() if e["executionArn"] in set(again)
    )
    if again:
        summary = replay.replay(sfn, stack.state_machine_arn, executions=again, wait=True, timeout=timeout, out=out)
        report.replayed = len(summary.replayed)
        for arn in again:  # what a replay did not mend is a problem, with its cause (the stack is gone after the run)
            described = sfn.describe_execution(executionArn=arn)
            if described["status"] != "SUCCEEDED":
                report.problems.append(
                    f"{arn} still {described['status']} after its replay: {described.get('error', '')}: "
                    f"{str(described.get('cause', ''))[:400]}"
                )
    stack.flush_logs()
    report.seconds = time.monotonic() - started

    # Reconcile: the operator's command, then the messages themselves (which it cannot read).
    reconciled = reconcile.reconcile(
        s3,
        stack.client("dynamodb"),
        input_bucket=bucket,
        input_prefix=run + "/",
        output_bucket=output,
        output_prefix=stack.resources.settings["OUTPUT_PREFIX"],
        table=stack.resources.table,
        sinks=SINKS,
        since=None,
    )
    report.reconciliation = reconcile.format_report(reconciled)
    totals = reconciled.totals
    reader = SinkReader(stack)
    reader._drain()
    messages: dict[str, Counter[tuple[str, str]]] = {sink: Counter() for sink in ("sns", "sqs", "eventbridge")}
    for sink, counted in messages.items():
        for record in reader.drained[sink]:
            if record["source"]["key"].startswith(run + "/"):
                counted[(record["source"]["key"], record["source"]["version_id"])] += 1
    good_versions = {(u.key, versions[i]) for i, u in enumerate(report.uploads) if u.bad is None}
    message_duplicates = sum(n - 1 for counted in messages.values() for n in counted.values() if n > 1)
    message_missing = sum(1 for counted in messages.values() for v in good_versions if counted[v] == 0)
    report.counts = {
        "first executions": dict(statuses),
        "their errors": dict(errors),
        "versions without an execution": len(wanted - set(executions)),
        "reconcile totals": totals,
        "messages (sns, sqs, eventbridge) per good version": {sink: sum(c.values()) for sink, c in messages.items()},
        "duplicates": totals["duplicates"] + message_duplicates,
        "missing": totals["missing"] + message_missing,
        "stale": totals["stale"],
    }
    for problem in ("missing", "duplicates", "stale"):
        if totals[problem]:
            report.problems.append(f"reconcile: {totals[problem]} {problem}")
    report.problems += [
        f"reconcile: {e['problem']} {e['sink']} {e['key']} {e.get('version_id', '')} {e.get('detail', '')}".rstrip()
        for e in reconciled.examples
    ]
    for sink, counted in messages.items():
        report.problems += [
            f"{n} {sink} messages for {key} {version}" for (key, version), n in counted.items() if n > 1
        ]
        report.problems += [
            f"no {sink} message for {key} {version}"
            for key, version in sorted(good_versions)
            if counted[(key, version)] == 0
        ]
    expected_failed = len(report.bad) * len(SINKS)
    if totals["failed"] != expected_failed:
        report.problems.append(
            f"reconcile: {totals['failed']} failed, expected {expected_failed} (the bad inputs, in each sink)"
        )
    for upload in report.uploads:
        if upload.bad is None:
            continue
        record = records.read_latest(s3, output, FAILURE_PREFIX, {"bucket": bucket, "key": upload.key}) or {}
        if (record.get("error") or {}).get("type") != BAD_ERRORS[upload.bad]:
            report.problems.append(
                f"bad input {upload.key} ({upload.bad}): failure record {record.get('error')}, expected {BAD_ERRORS[upload.bad]}"
            )
    for key in sorted({u.key for u in report.uploads if u.overwrite}):
        newest = next(versions[i] for i in range(len(report.uploads) - 1, -1, -1) if report.uploads[i].key == key)
        latest = (
            records.read_latest(s3, output, stack.resources.settings["OUTPUT_PREFIX"], {"bucket": bucket, "key": key})
            or {}
        )
        if (latest.get("source") or {}).get("version_id") != newest:
            report.problems.append(
                f"overwritten {key}: the latest view holds {(latest.get('source') or {}).get('version_id')}, not {newest}"
            )
    print(report.text(), file=out, flush=True)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1000, help="object versions to upload (default 1000)")
    parser.add_argument("--bad", type=float, default=0.05, help="share of bad inputs (default 0.05)")
    parser.add_argument(
        "--faults",
        type=float,
        default=0.10,
        help="share of good images with an injected transient fault (default 0.10)",
    )
    parser.add_argument("--burst", type=int, default=20, help="uploads per burst (default 20)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--overwrites",
        type=float,
        default=0.05,
        help="share of uploads that are a new version of an earlier key (default 0.05)",
    )
    parser.add_argument(
        "--kill-every",
        type=float,
        default=2.0,
        help="seconds between kills of a running environment (0: none; default 2)",
    )
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
        report = run_load(
            stack,
            images=args.images,
            bad_share=args.bad,
            fault_share=args.faults,
            burst=args.burst,
            seed=args.seed,
            overwrite_share=args.overwrites,
            kill_every=args.kill_every or None,
        )
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
