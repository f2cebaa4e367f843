"""``inferpipe classify`` as a user runs it: good, bad and missing files, table and JSON output."""

from __future__ import annotations

import io
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from inferpipe.cli import main
from tests.e2e.conftest import DEMO_MODEL_DIR, image_bytes


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    """GIVEN a good image whose name has spaces and non-ASCII, a fake PNG, and a path that does not exist."""
    good = tmp_path / "ma photo ñ 1.jpg"
    good.write_bytes(image_bytes("triangle", seed=21))
    fake = tmp_path / "page.png"
    fake.write_bytes(b"<html>not a picture</html>")
    return {"good": good, "fake": fake, "missing": tmp_path / "nope.jpg"}


def test_classify_json_reports_each_file_in_order(
    stack: Any, files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    paths = [str(files["good"]), str(files["fake"]), str(files["missing"])]

    # WHEN the user classifies three files with --json
    code = main(["classify", *paths, "--json", "--top-k", "3", "--endpoint-url", stack.endpoint_url])

    # THEN stdout is only a JSON array, one object per file in the given order, and the exit code is 1
    out = capsys.readouterr().out
    results = json.loads(out)
    assert code == 1
    assert [r["file"] for r in results] == paths
    good, fake, missing = results
    assert set(good) == {"file", "status", "top_k", "model_version", "execution_arn", "error"}
    assert good["status"] == "succeeded" and good["error"] is None
    assert good["top_k"][0]["label"] == "triangle" and len(good["top_k"]) == 3
    assert set(good["top_k"][0]) == {"label", "index", "probability"}
    assert good["model_version"] == stack.demo_version and good["execution_arn"].startswith("arn:aws:states:")
    assert fake["status"] == "failed" and fake["error"]["type"] == "NotAnImageError" and fake["top_k"] == []
    assert "page.png" in fake["error"]["message"]
    assert (
        missing["status"] == "failed"
        and missing["error"]["type"] == "FileNotFound"
        and missing["execution_arn"] is None
    )

    # AND the object key kept the file's name as given
    keys = [o["Key"] for o in stack.client("s3").list_objects_v2(Bucket=stack.resources.buckets["input"])["Contents"]]
    assert "incoming/ma photo ñ 1.jpg" in keys


def test_classify_table_and_exit_zero_when_all_succeed(
    stack: Any, files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["classify", str(files["good"]), "--endpoint-url", stack.endpoint_url])
    out = capsys.readouterr().out
    assert code == 0
    header, row = out.splitlines()[:2]
    assert header.split()[:3] == ["FILE", "TOP-1", "PROB"]
    assert "triangle" in row and "succeeded" in row and stack.demo_version in row


def test_unknown_model_version_fails_the_file_with_model_not_found(
    stack: Any, files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "classify",
            str(files["good"]),
            "--json",
            "--model-version",
            "no-such-alias",
            "--endpoint-url",
            stack.endpoint_url,
        ]
    )
    result = json.loads(capsys.readouterr().out)[0]
    assert code == 1
    assert result["error"]["type"] == "ModelNotFoundError" and "no-such-alias" in result["error"]["message"]


def test_classify_on_a_stack_without_the_model_publishes_its_built_package_or_says_how(
    stack: Any,
    files: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import shutil

    import inferpipe.paths

    # GIVEN a model the stack has never seen, whose package is built where `model import` writes it
    build = tmp_path / "build"
    shutil.copytree(DEMO_MODEL_DIR, build / "models" / "shapes-copy")
    monkeypatch.setattr(inferpipe.paths, "BUILD_DIR", build)
    # WHEN a file is classified with it
    code = main(
        ["classify", str(files["good"]), "--json", "--model", "shapes-copy", "--endpoint-url", stack.endpoint_url]
    )
    captured = capsys.readouterr()
    # THEN the package is published (alias prod), the user is told so on stderr, and the file succeeds with it
    (result,) = json.loads(captured.out)
    assert code == 0 and result["status"] == "succeeded", result
    assert "had no model 'shapes-copy': published" in captured.err and result["model_version"] in captured.err

    # WHEN the model is neither published nor built
    uploads_before = stack.client("s3").list_objects_v2(Bucket=stack.resources.buckets["input"]).get("KeyCount", 0)
    code = main(["classify", str(files["good"]), "--model", "never-built", "--endpoint-url", stack.endpoint_url])
    err = capsys.readouterr().err
    # THEN nothing is uploaded, and the error gives the exact command that publishes one
    assert code == 2 and "has no model 'never-built' published" in err
    assert "inferpipe model publish PACKAGE_DIR --name never-built --alias prod" in err
    assert (
        stack.client("s3").list_objects_v2(Bucket=stack.resources.buckets["input"]).get("KeyCount", 0) == uploads_before
    )


def test_when_the_stack_fails_mid_run_finished_files_keep_their_results_and_the_rest_name_the_error(
    stack: Any, tmp_path: Path
) -> None:
    from inferpipe.classify import classify_files
    from inferpipe.target import Target

    paths = []
    for n in range(3):
        path = tmp_path / f"mid-run {n}.jpg"
        path.write_bytes(image_bytes("circle", seed=30 + n))
        paths.append(path)
    target = Target.connect(endpoint_url=stack.endpoint_url)

    def stack_fails(result: Any) -> None:
        # WHEN, once the first file has finished, Step Functions stops answering (503, beyond the client's retries)
        stack.inject_aws_faults("states", "*", 10_000, status=503, code="ServiceUnavailable")

    try:
        results = classify_files(target, paths, timeout=120, on_progress=stack_fails)
    finally:
        stack.aws_faults.clear()
    # THEN every file has a row, in order: the finished one with its prediction, the others with the error
    assert [r.file for r in results] == [str(p) for p in paths]
    finished = [r for r in results if r.status == "succeeded"]
    stopped = [r for r in results if r.status != "succeeded"]
    assert len(finished) >= 1 and finished[0].top_k and finished[0].top_k[0]["label"] == "circle"
    assert stopped, "the fault came after every file had finished"
    for result in stopped:
        assert result.error is not None
        assert result.error["type"] == "ServiceUnavailable", result.error
        assert "the stack or the network failed; files already finished are reported" in result.error["message"]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_classify_shows_progress_on_a_terminal_and_nothing_extra_with_json(
    stack: Any, files: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert (
        main(
            [
                "classify",
                str(files["good"]),
                str(files["fake"]),
                str(files["missing"]),
                "--endpoint-url",
                stack.endpoint_url,
            ]
        )
        == 1
    )
    # THEN one status line, rewritten in place, ends with every file counted
    # (other writers may share stderr: take each rewrite's status line only)
    found = (
        re.match(r"\d+/3 uploaded · \d+/3 finished · \d+ failed", part) for part in terminal.getvalue().split("\r")
    )
    lines = [match.group(0) for match in found if match]
    # the missing file fails at its upload: finished (failed) at once
    assert lines[:3] == [
        "1/3 uploaded · 0/3 finished · 0 failed",
        "2/3 uploaded · 0/3 finished · 0 failed",
        "3/3 uploaded · 1/3 finished · 1 failed",
    ], lines
    assert lines[-1] == "3/3 uploaded · 3/3 finished · 2 failed", lines
    capsys.readouterr()
    # AND with --json, stderr has no progress at all
    terminal.truncate(0), terminal.seek(0)
    assert main(["classify", str(files["good"]), "--json", "--endpoint-url", stack.endpoint_url]) == 0
    assert "uploaded" not in terminal.getvalue()


def test_bad_arguments_get_a_usage_error_not_a_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["classify", "x.jpg", "--top-k", "zero"])
    assert exit_info.value.code == 2
    assert "not a whole number" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["replay", "reconcile", "logs sink", "cost", "executions list"])
def test_a_bad_since_is_a_usage_error_naming_the_accepted_form(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*command.split(), "--since", "yesterday"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --since" in err and "yesterday" in err


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_console_script_starts_the_local_stack_and_leaves_nothing_behind(
    tmp_path: Path, files: dict[str, Path], stack: Any
) -> None:
    """The real user path: separate processes, a daemon started on demand, then `local down`."""
    inferpipe = Path(sys.executable).with_name("inferpipe")
    env = {**os.environ, "INFERPIPE_STATE_DIR": str(tmp_path / "state"), "INFERPIPE_LOCAL_PORT": str(_free_port())}
    for name in ("AWS_ENDPOINT_URL", "MOTO_PORT", "INFERPIPE_ENDPOINT_URL"):
        env.pop(name, None)  # the in-process test stack must not leak into the user's shell

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(inferpipe), *args], check=False, env=env, capture_output=True, text=True, timeout=300
        )

    try:
        published = run("model", "publish", str(DEMO_MODEL_DIR), "--name", "demo", "--alias", "prod")
        assert published.returncode == 0, published.stderr
        assert "published demo version" in published.stdout
        # the daemon runs the deployment's real defaults (default model efficientnet_lite0): name the shapes model
        classified = run("classify", str(files["good"]), "--json", "--model", "demo")
        assert classified.returncode == 0, classified.stderr
        assert json.loads(classified.stdout)[0]["top_k"][0]["label"] == "triangle"
        status = run("local", "status")
        assert status.returncode == 0 and json.loads(status.stdout)["running"] is True
        # the daemon's control token is in its state folder, for its user only, and never printed
        token_file = tmp_path / "state" / "control-token"
        assert token_file.stat().st_mode & 0o077 == 0 and token_file.read_text() not in status.stdout
        added = run(
            "local",
            "fault",
            "add",
            "sqs:SendMessageBatch",
            "--error",
            "KMS.DisabledException",
            "--status",
            "400",
            "--count",
            "2",
        )
        assert added.returncode == 0 and "sqs:SendMessageBatch: KMS.DisabledException (HTTP 400)" in added.stdout, (
            added.stderr
        )
        assert "2 left, fired 0" in run("local", "fault", "list").stdout
        assert "cleared 1 fault rule(s)" in run("local", "fault", "clear").stdout
    finally:
        down = run("local", "down")
    assert down.returncode == 0
    pid_file = tmp_path / "state" / "local.json"
    assert not pid_file.exists() and not (tmp_path / "state" / "control-token").exists()
    assert run("local", "status").returncode == 3


def test_logs_prints_a_functions_lines_with_its_report_lines(
    stack: Any, files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN a file went through the pipeline
    assert main(["classify", str(files["good"]), "--json", "--endpoint-url", stack.endpoint_url]) == 0
    stack.flush_logs()
    capsys.readouterr()
    # WHEN the sink's logs of the last 10 minutes are asked for
    code = main(["logs", "sink", "--since", "10m", "--endpoint-url", stack.endpoint_url])
    captured = capsys.readouterr()
    out = captured.out.splitlines()
    # THEN they hold the handler's JSON lines and Lambda's START/END/REPORT, oldest first
    assert code == 0, captured.err
    messages = [line.split("  ", 2)[2] for line in out]
    assert any(m.startswith("START RequestId: ") for m in messages)
    reports = [m for m in messages if m.startswith("REPORT RequestId: ")]
    assert reports and all("\tBilled Duration: " in m and "\tMemory Size: 256 MB\t" in m for m in reports)
    assert any('"message":"batch delivered"' in m for m in messages)
    stamps = [line.split("  ", 1)[0] for line in out]
    assert stamps == sorted(stamps)


def test_logs_of_an_unknown_function_is_a_usage_error_naming_the_known_ones(
    stack: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["logs", "postprocess", "--endpoint-url", stack.endpoint_url])
    err = capsys.readouterr().err
    assert code == 2 and "no function 'postprocess'" in err and "sink" in err
    with pytest.raises(SystemExit) as exit_info:  # a usage error, as argparse reports one
        main(["logs", "sink", "--since", "soon", "--endpoint-url", stack.endpoint_url])
    assert exit_info.value.code == 2 and "'soon' is not a duration" in capsys.readouterr().err


def test_cost_prices_one_images_measured_work(
    stack: Any, files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    import time as _time

    from inferpipe import cost

    # GIVEN nothing else runs, and one image goes through the pipeline
    _time.sleep(1.0)
    since = _time.time()
    assert main(["classify", str(files["good"]), "--json", "--endpoint-url", stack.endpoint_url]) == 0
    stack.flush_logs()
    capsys.readouterr()
    # WHEN its work is measured and priced
    usage = cost.measure(stack, since)
    # THEN the usage is what a batch of one does: 8 invocations (preprocess, inference, five sinks,
    # and the status recorder EventBridge invokes when the execution ends), every transition of its
    # history, one S3 event, and none of the client's own requests
    assert usage.images == 1 and usage.s3_events == 1
    assert usage.lambda_requests == 8 and usage.lambda_gb_seconds > 0
    assert set(usage.lambda_gb_seconds_by_function) == {"preprocess", "inference", "sink"}  # where the compute went
    assert sum(usage.lambda_gb_seconds_by_function.values()) == pytest.approx(usage.lambda_gb_seconds)
    assert usage.transitions == 11  # Preprocess, AnyReady, Inference, FanOut, 5 x Deliver, Outcome, Done
    assert usage.units("sns") >= 1 and usage.units("sqs") >= 1 and usage.units("events", frozenset({"PutEvents"})) >= 1
    assert usage.units("s3", cost.S3_PUT_CLASS) >= 3  # the tensor, the batch documents, the S3 record, ledger entries
    # AND the command prints the same figures as JSON
    assert main(["cost", "--since", "10m", "--json", "--endpoint-url", stack.endpoint_url]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["images"] >= 1 and summary["usd_total"] > 0 and summary["usd_per_million_images"] > 0
    assert {"Step Functions", "Lambda", "S3", "DynamoDB", "SNS", "SQS", "EventBridge"} <= set(summary["by_service"])
