"""Batches on the local stack: the micro-batched trigger under a burst, a manual batch with a bad
object, a backfill of a prefix, classify's rows whatever the batching, and what it all costs."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

from functions.sink.core import failure_key
from inferpipe.backfill import backfill
from inferpipe.cli import main
from inferpipe.target import Target
from tests.e2e.conftest import DEMO_MODEL_DIR, batch_entry, direct_top1, image_bytes, wait_for_execution

TRIGGER = "batched"  # the stack fixture of this module runs the deployment's default trigger
ALL_SINKS = ("s3", "dynamodb", "sns", "sqs", "eventbridge")
LABELS = ("circle", "square", "triangle", "ring", "checkerboard")


def _failure_record(stack: Any, key: str) -> dict[str, Any] | None:
    s3 = stack.client("s3")
    try:
        body = s3.get_object(
            Bucket=stack.resources.buckets["output"],
            Key=failure_key({"bucket": stack.resources.buckets["input"], "key": key}, ""),
        )["Body"]
    except s3.exceptions.NoSuchKey:
        return None
    return dict(json.loads(body.read()))


def _finished_executions(stack: Any, keys: set[str], timeout: float = 180.0) -> list[dict[str, Any]]:
    """The executions that name any of ``keys``, once every key has one and all have ended."""
    from functions.common.batch import named_objects

    sfn = stack.client("stepfunctions")
    deadline = time.monotonic() + timeout
    while True:
        found, covered = [], set()
        for page in sfn.get_paginator("list_executions").paginate(stateMachineArn=stack.state_machine_arn):
            for summary in page["executions"]:
                described = sfn.describe_execution(executionArn=summary["executionArn"])
                named = {obj["key"] for obj in named_objects(json.loads(described["input"]))} & keys
                if named:
                    found.append(described)
                    covered |= named
        if covered == keys and all(e["status"] != "RUNNING" for e in found):
            return found
        assert time.monotonic() < deadline, f"{len(keys - covered)} of {len(keys)} uploads have no finished execution"
        time.sleep(0.5)


def test_a_burst_becomes_a_few_batches_and_every_object_is_delivered_once(stack: Any, sinks: Any) -> None:
    # GIVEN 40 uploads in a burst, two of them not images
    run = uuid.uuid4().hex[:6]
    s3 = stack.client("s3")
    bucket = stack.resources.buckets["input"]
    good = [f"burst-{run}/{i:02d}.jpg" for i in range(38)]
    bad = [f"burst-{run}/bad-{i}.jpg" for i in range(2)]
    for i, key in enumerate(good):
        s3.put_object(Bucket=bucket, Key=key, Body=image_bytes(LABELS[i % len(LABELS)], seed=i))
    for key in bad:
        s3.put_object(Bucket=bucket, Key=key, Body=b"<html>not an image</html>")

    # WHEN the pipe drains the buffer queue
    executions = _finished_executions(stack, set(good) | set(bad))

    # THEN far fewer executions than uploads ran, each holding a batch, and none named an object twice
    assert len(executions) <= 8, f"{len(executions)} executions for 40 uploads"
    assert max(len(json.loads(e["input"])) for e in executions) >= 10
    # AND every good object is classified and delivered to every sink exactly once
    for key in good:
        records = sinks.records(bucket, key)
        for sink in ALL_SINKS:
            assert len(records[sink]) == 1, f"{sink} holds {len(records[sink])} records for {key}"
        assert _failure_record(stack, key) is None
    # AND each bad object failed alone, with its failure record naming it
    for key in bad:
        record = _failure_record(stack, key)
        assert record is not None and record["error"]["type"] == "NotAnImageError" and key in record["error"]["message"]
        assert not any(sinks.records(bucket, key)[sink] for sink in ALL_SINKS)
    failed = [e for e in executions if e["status"] == "FAILED"]
    assert failed and all(e["error"] == "NotAnImageError" for e in failed)
    assert all("objects failed" in e["cause"] for e in failed if len(json.loads(e["input"])) > 1)


def test_an_upload_the_buffer_delivers_twice_is_published_once(stack: Any, sinks: Any) -> None:
    # GIVEN an upload the micro-batched trigger classified
    run = uuid.uuid4().hex[:6]
    s3, sqs = stack.client("s3"), stack.client("sqs")
    bucket = stack.resources.buckets["input"]
    key = f"twice-{run}/a.jpg"
    s3.put_object(Bucket=bucket, Key=key, Body=image_bytes("square", seed=3))
    (first,) = _finished_executions(stack, {key})
    assert first["status"] == "SUCCEEDED", first.get("cause")

    # WHEN the buffer queue hands the same S3 event to the pipe again (an SQS redelivery), in a
    # batch with a new upload's
    (element,) = json.loads(first["input"])
    buffer = sqs.get_queue_url(QueueName=stack.resources.trigger_buffer.queue)["QueueUrl"]
    sqs.send_message(
        QueueUrl=buffer, MessageBody=json.dumps({"source": "aws.s3", "detail-type": "Object Created", **element})
    )
    fresh = f"twice-{run}/b.jpg"
    s3.put_object(Bucket=bucket, Key=fresh, Body=image_bytes("circle", seed=4))
    later = [e for e in _finished_executions(stack, {key, fresh}) if e["executionArn"] != first["executionArn"]]

    # THEN the new upload is classified, and the old one is skipped as a duplicate wherever it landed
    outputs = [json.loads(e["output"]) for e in later if e["status"] == "SUCCEEDED"]
    assert len(outputs) == len(later), [e.get("cause") for e in later]
    assert sum(o["duplicates"] for o in outputs) == 1 and sum(o["succeeded"] for o in outputs) == 1
    # AND every sink holds exactly one record of each, the old one's from the first execution
    for name in (key, fresh):
        records = sinks.records(bucket, name)
        for sink in ALL_SINKS:
            assert len(records[sink]) == 1, f"{sink} holds {len(records[sink])} records for {name}"
    assert sinks.records(bucket, key)["sqs"][0]["execution_id"] == first["executionArn"]


def test_a_manual_batch_with_a_bad_object_delivers_the_others(stack: Any, sinks: Any) -> None:
    # GIVEN three objects already in the bucket, one of them missing by the time it runs
    bucket = stack.resources.buckets["input"]
    run = uuid.uuid4().hex[:6]
    keys = [f"manual-{run}/a.png", f"manual-{run}/b.png"]
    for i, key in enumerate(keys):
        stack.client("s3").put_object(Bucket=bucket, Key=key, Body=image_bytes("square", fmt="PNG", seed=30 + i))
    _finished_executions(stack, set(keys))  # their own upload executions
    objects = [{"bucket": bucket, "key": key} for key in keys] + [
        {"bucket": bucket, "key": f"manual-{run}/missing.png"}
    ]

    # WHEN an operator starts one execution for the three, with options
    started = stack.client("stepfunctions").start_execution(
        stateMachineArn=stack.state_machine_arn,
        input=json.dumps({"objects": objects, "top_k": 2, "sinks": ["s3", "dynamodb"]}),
    )
    final = wait_for_execution(stack, started["executionArn"])

    # THEN it fails naming the missing object only, and the two others are classified with top-2
    assert (final["status"], final["error"]) == ("FAILED", "ObjectNotFoundError")
    assert "1 of 3 objects failed" in final["cause"] and "missing.png" in final["cause"]
    for key in keys:
        entry = batch_entry(stack, final["executionArn"], key)
        assert entry["status"] == "CLASSIFIED" and len(entry["prediction"]["top_k"]) == 2
        assert entry["prediction"]["top_k"][0]["label"] == direct_top1(
            DEMO_MODEL_DIR, image_bytes("square", fmt="PNG", seed=30 + keys.index(key))
        )
    failure = _failure_record(stack, f"manual-{run}/missing.png")
    assert failure is not None
    assert failure["error"]["type"] == "ObjectNotFoundError"
    # AND only one tensor per model was written for the batch, and the state never carried predictions
    history = stack.client("stepfunctions").get_execution_history(executionArn=final["executionArn"], maxResults=1000)[
        "events"
    ]
    largest = max(len(json.dumps(e, default=str)) for e in history)
    assert largest < 8000, f"a history event of {largest} bytes: the state should carry references only"


def test_classify_prints_one_row_per_file_in_order_under_batching(stack: Any, tmp_path: Path, capsys: Any) -> None:
    # GIVEN six files, one of them not an image
    paths, expected = [], []
    for i, label in enumerate(("circle", "ring", "square", "triangle", "checkerboard")):
        path = tmp_path / f"{i} {label}.jpg"
        path.write_bytes(image_bytes(label, seed=40 + i))
        paths.append(path)
        expected.append(direct_top1(DEMO_MODEL_DIR, path.read_bytes()))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"GIF89a... not really")
    paths.insert(2, broken)

    # WHEN they are classified through the batched trigger
    code = main(["classify", *map(str, paths), "--json", "--endpoint-url", stack.endpoint_url])
    rows = json.loads(capsys.readouterr().out)

    # THEN one row per file, in the order given; the broken one failed alone
    assert code != 0
    assert [row["file"] for row in rows] == [str(p) for p in paths]
    assert [row["status"] for row in rows] == [
        "succeeded",
        "succeeded",
        "failed",
        "succeeded",
        "succeeded",
        "succeeded",
    ]
    assert rows[2]["error"]["type"] == "NotAnImageError"
    assert [row["top_k"][0]["label"] for row in rows if row["status"] == "succeeded"] == expected
    # AND `inferpipe executions show` of a batch names every object of it (the input is the pipe's array of SQS records)
    from inferpipe.executions import list_rows, show

    target = Target(endpoint_url=stack.endpoint_url, resources=stack.resources)
    arn = rows[0]["execution_arn"]
    shown = show(target, arn, with_logs=False)
    batch_keys = {o["key"] for o in shown.objects}
    assert "incoming/0 circle.jpg" in batch_keys and len(batch_keys) == sum(
        1 for row in rows if row["execution_arn"] == arn
    )
    (listed,) = [
        r for r in list_rows(target.client("stepfunctions"), target.state_machine_arn, limit=200) if r.arn == arn
    ]
    assert len(listed.objects) == len(batch_keys)


def test_backfill_classifies_a_prefix_of_existing_objects(stack: Any, sinks: Any, capsys: Any) -> None:
    # GIVEN 205 objects already under a prefix, 3 of them not images, uploaded while the trigger was off
    events = stack.client("events")
    bucket = stack.resources.buckets["input"]
    prefix = f"archive-{uuid.uuid4().hex[:6]}/"
    events.disable_rule(Name=stack.resources.trigger_rule)
    try:
        s3 = stack.client("s3")
        for i in range(202):
            s3.put_object(
                Bucket=bucket,
                Key=f"{prefix}{i:03d}.jpg",
                Body=image_bytes(LABELS[i % len(LABELS)], size=(96, 80), seed=i),
            )
        for i in range(3):
            s3.put_object(Bucket=bucket, Key=f"{prefix}broken-{i}.jpg", Body=b"\xff\xd8 truncated")
    finally:
        events.enable_rule(Name=stack.resources.trigger_rule)

    # WHEN a dry run, then the backfill, run over the prefix in batches of 50
    target = Target(endpoint_url=stack.endpoint_url, resources=stack.resources)
    dry = backfill(target, f"s3://{bucket}/{prefix}", batch_size=50, dry_run=True)
    assert (dry.objects, dry.batches, dry.executions) == (205, 5, 0)
    code = main(
        ["backfill", f"s3://{bucket}/{prefix}", "--batch-size", "50", "--json", "--endpoint-url", stack.endpoint_url]
    )
    summary = json.loads(capsys.readouterr().out)

    # THEN every object was classified once; the three bad ones failed, by type; exit status 1
    assert code == 1
    assert (summary["objects"], summary["succeeded"], summary["failed"], summary["executions"]) == (205, 202, 3, 5)
    assert summary["errors"] == {"NotAnImageError": 3} and summary["seconds"] > 0
    for i in (0, 101, 201):
        records = sinks.records(bucket, f"{prefix}{i:03d}.jpg")
        assert all(len(records[sink]) == 1 for sink in ALL_SINKS), records
    failure = _failure_record(stack, f"{prefix}broken-1.jpg")
    assert failure is not None
    assert failure["error"]["type"] == "NotAnImageError"
    # AND the Distributed Map's results are in the output bucket, as the ResultWriter writes them
    manifest = (
        stack.client("s3").get_object(Bucket=summary["results"]["Bucket"], Key=summary["results"]["Key"])["Body"].read()
    )
    assert json.loads(manifest)["ResultFiles"]["SUCCEEDED"][0]["Size"] == 5


def test_a_backfill_whose_stack_fails_mid_run_reports_the_finished_batches_and_names_the_error(stack: Any) -> None:
    s3, events = stack.client("s3"), stack.client("events")
    bucket, prefix = stack.resources.buckets["input"], f"backfill-down-{uuid.uuid4().hex[:6]}/"
    events.disable_rule(Name=stack.resources.trigger_rule)  # objects already there: no trigger
    try:
        for i in range(6):
            s3.put_object(
                Bucket=bucket,
                Key=f"{prefix}{i}.jpg",
                Body=image_bytes(LABELS[i % len(LABELS)], size=(96, 80), seed=70 + i),
            )
    finally:
        events.enable_rule(Name=stack.resources.trigger_rule)
    target = Target(endpoint_url=stack.endpoint_url, resources=stack.resources)
    for i in range(1, 6):  # every batch but the first is still reading its object when the first finishes
        stack.inject_aws_faults("s3", "GetObject", 1, match=f"{prefix}{i}.jpg", delay=8.0)

    def stack_fails(line: str) -> None:
        # WHEN, once a batch has finished, Step Functions stops answering (beyond the client's retries)
        stack.inject_aws_faults("states", "DescribeExecution", 10_000, status=503, code="ServiceUnavailable")

    try:
        summary = backfill(target, f"s3://{bucket}/{prefix}", batch_size=1, on_progress=stack_fails)
    finally:
        stack.aws_faults.clear()
    # THEN the summary has every object: the finished batches' as they ended, the others with the error
    assert (summary.objects, summary.batches, summary.succeeded) == (6, 6, 1), summary.to_json()
    assert summary.errors == {"ServiceUnavailable": 5} and summary.status == "FAILED", summary.to_json()


def test_bad_backfill_arguments_are_refused_clearly(stack: Any, capsys: Any) -> None:
    assert main(["backfill", "photos/", "--endpoint-url", stack.endpoint_url]) == 2
    assert "not an S3 URI" in capsys.readouterr().err
    assert (
        main(
            [
                "backfill",
                f"s3://{stack.resources.buckets['input']}/x/",
                "--batch-size",
                "101",
                "--endpoint-url",
                stack.endpoint_url,
            ]
        )
        == 2
    )
    assert "between 1 and 100" in capsys.readouterr().err


def test_the_cost_of_batches_counts_images_not_executions(stack: Any, tmp_path: Path, capsys: Any) -> None:
    # GIVEN ten uploads in a burst through the batched trigger
    keys = set()
    for i in range(10):
        key = f"cost-{uuid.uuid4().hex[:6]}/{i}.jpg"
        stack.client("s3").put_object(
            Bucket=stack.resources.buckets["input"], Key=key, Body=image_bytes("ring", seed=60 + i)
        )
        keys.add(key)
    executions = _finished_executions(stack, keys)
    stack.flush_logs()
    # WHEN the work is priced
    assert main(["cost", "--since", "1m", "--json", "--endpoint-url", stack.endpoint_url]) == 0
    summary = json.loads(capsys.readouterr().out)
    # THEN images are the objects, fewer executions ran them, and the pipe's and buffer's work is billed
    assert summary["images"] >= 10 and summary["executions"] < summary["images"]
    assert {"EventBridge Pipes", "SQS", "Step Functions"} <= set(summary["by_service"])
    assert len(executions) < 10
