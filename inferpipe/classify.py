"""Classify local files through the deployed pipeline: upload, let S3 -> EventBridge -> Step Functions
run, find each file's execution, wait for it and collect its outcome.

Nothing here calls a handler directly: the pipeline runs exactly as it would for any upload.

Example::

    results = classify_files(target, [Path("cat.jpg")], options=UploadOptions(top_k=3))
    print(results[0].status, results[0].top_k[0]["label"])
"""

from __future__ import annotations

import json
import time
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from functions.common.request import META_MODEL, META_MODEL_VERSION, META_TOP_K
from inferpipe.target import Target

UPLOAD_PREFIX = "incoming/"


@dataclass(frozen=True)
class UploadOptions:
    top_k: int | None = None
    model: str | None = None
    model_version: str | None = None

    def metadata(self) -> dict[str, str]:
        meta = {}
        if self.top_k is not None:
            meta[META_TOP_K] = str(self.top_k)
        if self.model:
            meta[META_MODEL] = self.model
        if self.model_version:
            meta[META_MODEL_VERSION] = self.model_version
        return meta


@dataclass
class FileResult:
    """The outcome for one input file, in the shape ``inferpipe classify --json`` prints."""

    file: str
    status: str = "failed"  # "succeeded" | "failed"
    top_k: list[dict[str, Any]] = field(default_factory=list)
    model_version: str | None = None
    model: str | None = None
    execution_arn: str | None = None
    error: dict[str, str] | None = None
    seconds: float | None = None
    key: str | None = None
    version_id: str | None = None
    deliveries: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "status": self.status,
            "top_k": self.top_k,
            "model_version": self.model_version,
            "execution_arn": self.execution_arn,
            "error": self.error,
        }


def key_for(path: Path) -> str:
    """The input-bucket key for a file: its name as given (spaces and non-ASCII kept, NFC form)."""
    return UPLOAD_PREFIX + unicodedata.normalize("NFC", path.name)


def _error(kind: str, message: str) -> dict[str, str]:
    return {"type": kind, "message": message}


def upload(target: Target, path: Path, options: UploadOptions, result: FileResult) -> float | None:
    """Put the file into the input bucket; returns the upload time, or None with result.error set."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        result.error = _error("FileNotFound", f"{path}: no such file")
        return None
    except IsADirectoryError:
        result.error = _error("NotAFile", f"{path}: is a directory")
        return None
    except OSError as exc:
        result.error = _error("UnreadableFile", f"{path}: {exc.strerror or exc}")
        return None
    result.key = key_for(path)
    started = time.monotonic()
    answer = target.client("s3").put_object(
        Bucket=target.resources.buckets["input"], Key=result.key, Body=data, Metadata=options.metadata()
    )
    result.version_id = answer.get("VersionId")
    return started


def _execution_input_matches(execution_input: dict[str, Any], bucket: str, key: str, version_id: str | None) -> bool:
    detail = execution_input.get("detail") or {}
    obj = detail.get("object") or {}
    if (detail.get("bucket") or {}).get("name") != bucket or obj.get("key") != key:
        return False
    return version_id is None or obj.get("version-id") == version_id


def _outcome(result: FileResult, described: dict[str, Any]) -> None:
    result.execution_arn = described["executionArn"]
    status = described["status"]
    if status == "SUCCEEDED":
        output = json.loads(described.get("output") or "{}")
        prediction = output.get("prediction") or {}
        result.status = "succeeded"
        result.top_k = list(prediction.get("top_k") or [])
        result.model = (prediction.get("model") or {}).get("name")
        result.model_version = (prediction.get("model") or {}).get("version")
        result.deliveries = list(output.get("deliveries") or [])
        result.error = None
        return
    result.status = "failed"
    error_type = described.get("error") or status
    cause = described.get("cause") or ""
    message = cause
    try:
        parsed = json.loads(cause)
        if isinstance(parsed, dict) and parsed.get("errorMessage"):
            message = str(parsed["errorMessage"])
    except ValueError:
        pass
    result.error = _error(error_type, message or f"execution ended {status}")


def classify_files(
    target: Target,
    paths: Sequence[Path],
    options: UploadOptions = UploadOptions(),
    timeout: float = 300.0,
    poll: float = 0.25,
    on_progress: Callable[[FileResult], None] | None = None,
) -> list[FileResult]:
    """Upload every file, wait for its execution, and return one result per path, in order."""
    sfn = target.client("stepfunctions")
    bucket = target.resources.buckets["input"]
    since = datetime.now(timezone.utc) - timedelta(seconds=5)
    results = [FileResult(file=str(path)) for path in paths]
    started: dict[int, float] = {}
    for index, path in enumerate(paths):
        upload_time = upload(target, path, options, results[index])
        if upload_time is not None:
            started[index] = upload_time
    pending = dict(started)
    claimed: set[str] = set()
    inputs: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        executions = _recent_executions(sfn, target.state_machine_arn, since)
        for summary in executions:
            arn = summary["executionArn"]
            if arn not in inputs:
                described = sfn.describe_execution(executionArn=arn)
                inputs[arn] = json.loads(described.get("input") or "{}")
        for index in list(pending):
            result = results[index]
            if result.execution_arn is None:
                for summary in executions:
                    arn = summary["executionArn"]
                    if arn not in claimed and _execution_input_matches(inputs[arn], bucket, result.key or "", result.version_id):
                        result.execution_arn = arn
                        claimed.add(arn)
                        break
            if result.execution_arn is None:
                continue
            described = sfn.describe_execution(executionArn=result.execution_arn)
            if described["status"] == "RUNNING":
                continue
            _outcome(result, described)
            result.seconds = round(time.monotonic() - pending.pop(index), 3)
            if on_progress:
                on_progress(result)
        if pending:
            time.sleep(poll)
    for index in pending:
        result = results[index]
        if result.execution_arn is None:
            result.error = _error(
                "NotStarted",
                f"no execution started for s3://{bucket}/{result.key} within {timeout:.0f} s "
                f"(is the EventBridge rule {target.resources.trigger_rule} enabled?)",
            )
        else:
            result.error = _error("Timeout", f"execution still running after {timeout:.0f} s: {result.execution_arn}")
    return results


def _recent_executions(sfn: Any, state_machine_arn: str, since: datetime) -> list[dict[str, Any]]:
    """Executions of the pipeline started after ``since`` (newest first, paginated)."""
    found: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {"stateMachineArn": state_machine_arn, "maxResults": 100}
    while True:
        page = sfn.list_executions(**kwargs)
        older = 0
        for summary in page["executions"]:
            start = summary["startDate"]
            if start.tzinfo is None:
                start = start.replace(tzinfo=timezone.utc)
            if start >= since:
                found.append(summary)
            else:
                older += 1
        token = page.get("nextToken")
        if not token or (page["executions"] and older == len(page["executions"])):
            return found  # pages are newest first: a page of older executions ends the search
        kwargs["nextToken"] = token
