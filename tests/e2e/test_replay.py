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


def test_replay_dry_run_lists_then_replays_once_and_reports_what_still_fails(
    stack: Any, capsys: pytest.CaptureFixture[str]
) -> None:
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
    assert (
        "redrive (same execution)" in good_line
        and "stopped at Inference (Lambda.TooManyRequestsException)" in good_line
    )
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
    started = sfn.start_execution(
        stateMachineArn=stack.state_machine_arn, name=f"w-{uuid.uuid4().hex}", input=json.dumps({"nope": 1})
    )
    wait_for_execution(stack, started["executionArn"])
    assert main(_cli(stack, "--since", "10m", "--status", "FAILED", "--dry-run")) == 0
    out = capsys.readouterr().out
    assert started["executionArn"].rsplit(":", 1)[-1] + "-r1" in out and "ended in PipelineFailed" in out
    with pytest.raises(SystemExit) as exit_info:  # a usage error, as argparse reports one
        main(_cli(stack, "--since", "banana"))
    assert exit_info.value.code == 2 and "'banana' is not a duration" in capsys.readouterr().err


def test_an_old_versions_replay_and_its_late_event_never_regress_the_keys_records(
    stack: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from functions.sink import records

    s3, sfn = stack.client("s3"), stack.client("stepfunctions")
    res = stack.resources
    bucket, output = res.buckets["input"], res.buckets["output"]
    key = f"regress/{uuid.uuid4().hex[:6]}/photo.jpg"
    # GIVEN version 1 of a key failed transiently (inference throttled beyond its retries) ...
    stack.inject_failures("inference", 5)
    v1 = s3.put_object(Bucket=bucket, Key=key, Body=image_bytes("circle", seed=41))["VersionId"]
    first = wait_for_execution(stack, executions_for_key(stack, key)[0]["executionArn"])
    assert first["status"] == "FAILED"
    # ... and version 2, uploaded after, succeeded
    v2 = s3.put_object(Bucket=bucket, Key=key, Body=image_bytes("square", seed=42))["VersionId"]
    second_arn = next(
        e["executionArn"] for e in executions_for_key(stack, key) if e["executionArn"] != first["executionArn"]
    )
    assert wait_for_execution(stack, second_arn)["status"] == "SUCCEEDED"

    def latest(prefix: str) -> dict[str, Any] | None:
        return records.read_latest(s3, output, prefix, {"bucket": bucket, "key": key})

    prediction = latest("predictions/")
    assert prediction is not None
    assert prediction["source"]["version_id"] == v2
    assert latest("failures/") is None  # v1's failure view was retired by v2's success ...
    assert s3.get_object(Bucket=output, Key=records.version_key("failures/", bucket, key, v1))  # ... its record kept

    # WHEN the operator replays failures: v1's execution is skipped, saying why
    assert main(_cli(stack, "--execution", first["executionArn"])) == 0
    out = capsys.readouterr().out
    assert f"s3://{bucket}/{key} has a newer version ({v2}) that succeeded" in out
    assert len(executions_for_key(stack, key)) == 2  # nothing started

    # WHEN someone presses Redrive on v1's execution anyway (the console, not our CLI)
    sfn.redrive_execution(executionArn=first["executionArn"])
    assert wait_for_execution(stack, first["executionArn"])["status"] == "SUCCEEDED"
    stack.flush_logs()  # its status event (SUCCEEDED) has reached the status recorder
    # THEN v1 gets its own records, and the key's latest views still describe v2
    prediction = latest("predictions/")
    assert prediction is not None
    assert prediction["source"]["version_id"] == v2
    assert latest("failures/") is None
    old = json.loads(
        s3.get_object(Bucket=output, Key=records.version_key("predictions/", bucket, key, v1))["Body"].read()
    )
    assert old["source"]["version_id"] == v1 and old["execution_id"] == first["executionArn"]
    items = stack.client("dynamodb").query(
        TableName=res.table,
        KeyConditionExpression="#o = :o",
        ExpressionAttributeNames={"#o": "object"},
        ExpressionAttributeValues={":o": {"S": f"s3://{bucket}/{key}"}},
    )["Items"]
    assert sorted((i["version"]["S"], i["status"]["S"]) for i in items) == sorted(
        [(v1, "SUCCEEDED"), (v2, "SUCCEEDED")]
    )


def test_reconcile_counts_each_sinks_records_and_fails_on_what_is_missing_duplicated_or_stale(
    stack: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from functions.sink import records

    s3 = stack.client("s3")
    res = stack.resources
    bucket, output = res.buckets["input"], res.buckets["output"]
    prefix = f"reconcile/{uuid.uuid4().hex[:6]}/"
    cli = ["reconcile", "--endpoint-url", stack.endpoint_url, "--prefix", prefix]
    # GIVEN a good image, a bad one, and a key uploaded twice (two versions), all processed
    uploads = [
        ("good.jpg", image_bytes("circle", seed=51)),
        ("bad.png", b"not an image at all"),
        ("twice.jpg", image_bytes("ring", seed=52)),
        ("twice.jpg", image_bytes("square", seed=53)),
    ]
    versions = {}
    for name, body in uploads:
        versions[name] = s3.put_object(Bucket=bucket, Key=prefix + name, Body=body)["VersionId"]
        for execution in executions_for_key(stack, prefix + name):
            wait_for_execution(stack, execution["executionArn"])
    for execution in executions_for_key(stack, prefix + "twice.jpg"):
        wait_for_execution(stack, execution["executionArn"])
    stack.flush_logs()

    # WHEN reconciled
    assert main([*cli, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    # THEN every sink holds the three good versions, the bad one failed, nothing is off
    expected = {"objects": 4, "records": 3, "missing": 0, "duplicates": 0, "stale": 0, "failed": 1}
    assert report["sinks"] == dict.fromkeys(res.defaults.sinks, expected)
    assert report["totals"]["missing"] == report["totals"]["duplicates"] == report["totals"]["stale"] == 0

    # WHEN a DynamoDB item goes missing, a ledger is copied (a record published twice) and the
    # key's latest view is put back to its older version
    ddb = stack.client("dynamodb")
    ddb.delete_item(
        TableName=res.table,
        Key={"object": {"S": f"s3://{bucket}/{prefix}good.jpg"}, "version": {"S": versions["good.jpg"]}},
    )
    found = records.find(s3, output, "predictions/", bucket, prefix + "twice.jpg", versions["twice.jpg"])
    assert found is not None and found[0] == records.latest_key(
        "predictions/", bucket, prefix + "twice.jpg"
    )  # the newest is the view
    newest = found[1]
    ledger = next(
        o["Key"]
        for o in s3.list_objects_v2(Bucket=output, Prefix="deliveries/sqs/")["Contents"]
        if newest["record_id"] in json.loads(s3.get_object(Bucket=output, Key=o["Key"])["Body"].read())["delivered"]
    )
    s3.copy_object(Bucket=output, Key="deliveries/sqs/copied.json", CopySource={"Bucket": output, "Key": ledger})
    older = s3.list_object_versions(Bucket=bucket, Prefix=prefix + "twice.jpg")["Versions"][-1]["VersionId"]
    assert older != versions["twice.jpg"]
    old_record = s3.get_object(
        Bucket=output, Key=records.version_key("predictions/", bucket, prefix + "twice.jpg", older)
    )["Body"].read()
    view = records.latest_key("predictions/", bucket, prefix + "twice.jpg")  # (the newest record kept as its entry)
    s3.copy_object(
        Bucket=output,
        Key=records.version_key("predictions/", bucket, prefix + "twice.jpg", versions["twice.jpg"]),
        CopySource={"Bucket": output, "Key": view},
    )
    s3.put_object(Bucket=output, Key=view, Body=old_record)

    # THEN reconcile says which, where, and exits 1
    assert main(cli) == 1
    text = capsys.readouterr().out
    rows = {
        line.split()[0]: line.split()[1:]
        for line in text.splitlines()
        if line.split() and line.split()[0] in (*res.defaults.sinks, "total")
    }
    assert rows["dynamodb"][:3] == ["4", "2", "1"]  # objects, records, missing
    assert rows["s3"][4] == "1"  # stale: the latest view describes the older version
    assert int(rows["sqs"][3]) >= 1  # duplicates: the copied ledger lists the newest version's record again
    assert f"duplicates: sqs s3://{bucket}/{prefix}twice.jpg?versionId={versions['twice.jpg']}" in text
    assert f"missing: dynamodb s3://{bucket}/{prefix}good.jpg?versionId={versions['good.jpg']}" in text
    assert f"stale: s3 s3://{bucket}/{prefix}twice.jpg" in text and older in text
    s3.delete_object(Bucket=output, Key="deliveries/sqs/copied.json")
