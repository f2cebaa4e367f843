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
FAULTS: tuple[tuple[str, str, int, dict[str, Any]], ...] = (
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
    from inferpipe.demo_model.shapes import CLASSES

    return list(CLASSES)


@dataclass
class _Load:
    """One run's stack, clients, buckets, key prefix, report so far and the S3 version of each upload."""

    stack: Any
    run: str
    report: Report
    out: Any
    versions: dict[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.bucket, self.output = self.stack.resources.buckets["input"], self.stack.resources.buckets["output"]
        self.s3, self.sfn = self.stack.client("s3"), self.stack.client("stepfunctions")

    def in_flight(self) -> int:
        listed = self.sfn.list_executions(
            stateMachineArn=self.stack.state_machine_arn, statusFilter="RUNNING", maxResults=1000
        )
        return len(listed["executions"])

    def uploaded(self, good_only: bool = False) -> set[tuple[str, str]]:
        """(key, version id) of every upload (or of the good ones)."""
        return {(u.key, self.versions[i]) for i, u in enumerate(self.report.uploads) if not good_only or u.bad is None}


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
    rng = random.Random(seed)
    try:
        labels = _labels()
    except Exception:  # noqa: BLE001 - fall back to names the demo model has
        labels = list(LABELS)
    load = _Load(stack, f"load-{int(time.time())}-{rng.randrange(10**6):06d}", Report(), out)
    load.report.uploads = _plan(rng, load.run, images, bad_share, burst, overwrite_share, labels)

    started = time.monotonic()
    stop_killing = threading.Event()
    killer_rng = random.Random(seed + 1)

    def killer() -> None:
        while kill_every and not stop_killing.wait(kill_every):
            load.report.kills += stack.kill_environments(killer_rng.choice(KILLED))

    kill_thread = threading.Thread(target=killer, name="load-killer", daemon=True)
    kill_thread.start()
    _upload_in_bursts(load, rng, fault_share=fault_share, burst=burst, settle=settle, until=started + 4 * timeout)
    executions = _wait_for_executions(load, timeout)
    stop_killing.set()
    kill_thread.join()
    _replay_failed(load, executions, timeout)
    stack.flush_logs()
    load.report.seconds = time.monotonic() - started
    _check(load, executions)
    print(load.report.text(), file=out, flush=True)
    return load.report


def _plan(
    rng: random.Random,
    run: str,
    images: int,
    bad_share: float,
    burst: int,
    overwrite_share: float,
    labels: list[str],
) -> list[Upload]:
    """The uploads, in order: good images, bad inputs and new versions of earlier keys."""
    from tests.e2e.conftest import image_bytes

    bad_kinds = {
        "empty": b"",
        "text": b"<html>this is not an image</html>",
        "truncated": image_bytes("circle", seed=99)[:900],
        "bomb": _bomb_png(),
    }
    uploads: list[Upload] = []
    bad_positions = set(rng.sample(range(images), max(1, round(images * bad_share))))
    good_keys: list[str] = []
    for i in range(images):
        if i in bad_positions:
            kind = rng.choice(sorted(bad_kinds))
            uploads.append(Upload(f"{run}/bad {i:04d} {kind}.jpg", bad_kinds[kind], bad=kind))
        elif len(good_keys) > burst and rng.random() < overwrite_share:  # a key of an earlier burst, uploaded again
            key = rng.choice(good_keys[:-burst])
            body = image_bytes(labels[(i + 3) % len(labels)], size=(160, 120), seed=10_000 + i)
            uploads.append(Upload(key, body, overwrite=True))
        else:
            label = labels[i % len(labels)]
            key = f"{run}/img {i:04d} {label} +%é.jpg"
            good_keys.append(key)
            # the key's ASCII part: it appears in every request about the object, whatever the encoding
            uploads.append(Upload(key, image_bytes(label, size=(160, 120), seed=i), fault_match=f"img {i:04d} "))
    return uploads


def _upload_in_bursts(
    load: _Load, rng: random.Random, *, fault_share: float, burst: int, settle: int, until: float
) -> None:
    """Each burst at once (some with a fault armed for them), then wait for the stack to settle."""
    uploads = load.report.uploads
    with ThreadPoolExecutor(max_workers=8) as pool:
        for start in range(0, len(uploads), burst):
            chunk = list(enumerate(uploads[start : start + burst], start))
            for _, upload in chunk:
                if upload.fault_match and rng.random() < fault_share:
                    _arm_fault(load, rng, upload.fault_match)
            answers = pool.map(
                lambda item: (item[0], load.s3.put_object(Bucket=load.bucket, Key=item[1].key, Body=item[1].body)),
                chunk,
            )
            load.versions.update({index: answer["VersionId"] for index, answer in answers})
            print(
                f"burst {start // burst + 1}: uploaded {start + len(chunk)}/{len(uploads)}", file=load.out, flush=True
            )
            while load.in_flight() > settle and time.monotonic() < until:
                time.sleep(0.5)


def _arm_fault(load: _Load, rng: random.Random, match: str) -> None:
    """A throttled Lambda invocation (one in five), else an AWS fault on this object's requests."""
    if rng.random() < 0.2:
        load.stack.inject_failures(rng.choice(["preprocess", "inference", "sink"]), 1)
        load.report.lambda_throttles += 1
    else:
        service, operation, count, extra = rng.choice(FAULTS)
        load.stack.inject_aws_faults(service, operation, count, match=match, **extra)
    load.report.faulted += 1


def _wait_for_executions(load: _Load, timeout: float) -> dict[tuple[str, str], dict[str, Any]]:
    """Wait until every uploaded version has an execution that ended (timeout counted from the last
    upload); (key, version id) -> its execution, described."""
    wanted = load.uploaded()
    deadline = time.monotonic() + timeout
    executions: dict[tuple[str, str], dict[str, Any]] = {}
    while time.monotonic() < deadline:
        if load.in_flight() == 0:
            executions = _executions_of(load, wanted)
            if set(executions) == wanted:
                break
        time.sleep(1.0)
    return executions


def _executions_of(load: _Load, wanted: set[tuple[str, str]]) -> dict[tuple[str, str], dict[str, Any]]:
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for page in load.sfn.get_paginator("list_executions").paginate(stateMachineArn=load.stack.state_machine_arn):
        for summary in page["executions"]:
            described = load.sfn.describe_execution(executionArn=summary["executionArn"])
            try:
                obj = json.loads(described["input"])["detail"]["object"]
            except (KeyError, TypeError, ValueError):
                continue
            if (obj["key"], obj.get("version-id")) in wanted:
                found[(obj["key"], obj.get("version-id"))] = described
    return found


def _replay_failed(load: _Load, executions: dict[tuple[str, str], dict[str, Any]], timeout: float) -> None:
    """What failed for another reason than its input is replayed, as an operator would."""
    from inferpipe import replay

    report, sfn = load.report, load.sfn
    named = set(BAD_ERRORS.values())
    again = [
        e["executionArn"] for e in executions.values() if e["status"] != "SUCCEEDED" and e.get("error") not in named
    ]
    report.first_failures = sorted(
        f"{e['error']}: {str(e.get('cause', ''))[:300]}" for e in executions.values() if e["executionArn"] in set(again)
    )
    if not again:
        return
    summary = replay.replay(
        sfn, load.stack.state_machine_arn, executions=again, wait=True, timeout=timeout, out=load.out
    )
    report.replayed = len(summary.replayed)
    for arn in again:  # what a replay did not mend is a problem, with its cause (the stack is gone after the run)
        described = sfn.describe_execution(executionArn=arn)
        if described["status"] != "SUCCEEDED":
            report.problems.append(
                f"{arn} still {described['status']} after its replay: {described.get('error', '')}: "
                f"{str(described.get('cause', ''))[:400]}"
            )


def _check(load: _Load, executions: dict[tuple[str, str], dict[str, Any]]) -> None:
    """Reconcile: the operator's command, then the messages themselves (which it cannot read)."""
    from inferpipe import reconcile

    report, stack = load.report, load.stack
    reconciled = reconcile.reconcile(
        load.s3,
        stack.client("dynamodb"),
        input_bucket=load.bucket,
        input_prefix=load.run + "/",
        output_bucket=load.output,
        output_prefix=stack.resources.settings["OUTPUT_PREFIX"],
        table=stack.resources.table,
        sinks=SINKS,
        since=None,
    )
    report.reconciliation = reconcile.format_report(reconciled)
    totals = reconciled.totals
    messages = _messages(load)
    good_versions = load.uploaded(good_only=True)
    message_duplicates = sum(n - 1 for counted in messages.values() for n in counted.values() if n > 1)
    message_missing = sum(1 for counted in messages.values() for v in good_versions if counted[v] == 0)
    report.counts = {
        "first executions": dict(Counter(e["status"] for e in executions.values())),
        "their errors": dict(Counter(str(e.get("error")) for e in executions.values() if e["status"] != "SUCCEEDED")),
        "versions without an execution": len(load.uploaded() - set(executions)),
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
    report.problems += _bad_input_problems(load) + _overwrite_problems(load)


def _messages(load: _Load) -> dict[str, Counter[tuple[str, str]]]:
    """How many messages each message sink got per (key, version id) of this run."""
    from tests.e2e.conftest import SinkReader

    reader = SinkReader(load.stack)
    reader._drain()
    messages: dict[str, Counter[tuple[str, str]]] = {sink: Counter() for sink in ("sns", "sqs", "eventbridge")}
    for sink, counted in messages.items():
        for record in reader.drained[sink]:
            if record["source"]["key"].startswith(load.run + "/"):
                counted[(record["source"]["key"], record["source"]["version_id"])] += 1
    return messages


def _bad_input_problems(load: _Load) -> list[str]:
    """Each bad input's failure record must name the error its kind causes."""
    from functions.sink import records
    from functions.sink.core import FAILURE_PREFIX

    problems = []
    for upload in load.report.uploads:
        if upload.bad is None:
            continue
        source = {"bucket": load.bucket, "key": upload.key}
        record = records.read_latest(load.s3, load.output, FAILURE_PREFIX, source) or {}
        if (record.get("error") or {}).get("type") != BAD_ERRORS[upload.bad]:
            problems.append(
                f"bad input {upload.key} ({upload.bad}): failure record {record.get('error')}, expected {BAD_ERRORS[upload.bad]}"
            )
    return problems


def _overwrite_problems(load: _Load) -> list[str]:
    """Each overwritten key's latest view must describe its newest version."""
    from functions.sink import records

    uploads, prefix = load.report.uploads, load.stack.resources.settings["OUTPUT_PREFIX"]
    problems = []
    for key in sorted({u.key for u in uploads if u.overwrite}):
        newest = next(load.versions[i] for i in range(len(uploads) - 1, -1, -1) if uploads[i].key == key)
        latest = records.read_latest(load.s3, load.output, prefix, {"bucket": load.bucket, "key": key}) or {}
        if (latest.get("source") or {}).get("version_id") != newest:
            problems.append(
                f"overwritten {key}: the latest view holds {(latest.get('source') or {}).get('version_id')}, not {newest}"
            )
    return problems


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
