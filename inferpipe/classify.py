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
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from functions.common.aws import error_name, is_not_found
from functions.common.batch import named_objects
from functions.common.request import META_MODEL, META_MODEL_VERSION, META_TOP_K
from functions.common.work import CLASSIFIED, CLASSIFIED_STATUS, PREPROCESSED, work_key
from inferpipe.present import table
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


def _names(execution_input: Any, bucket: str, key: str, version_id: str | None) -> bool:
    """Whether an execution's input (any shape: an S3 event, a queued batch, a manual batch) names the object."""
    return any(
        obj["bucket"] == bucket
        and obj["key"] == key
        and (version_id is None or obj.get("version_id") in (None, version_id))
        for obj in named_objects(execution_input)
    )


def execution_results(target: Target, execution_arn: str) -> list[dict[str, Any]]:
    """The per-object entries of an execution's batch document (classified, else preprocessed); [] if none."""
    s3 = target.client("s3")
    bucket = target.resources.buckets["work"]
    prefix = target.resources.settings["WORK_PREFIX"]
    for name in (CLASSIFIED, PREPROCESSED):
        try:
            body = s3.get_object(Bucket=bucket, Key=work_key(prefix, execution_arn, name))["Body"].read()
        except ClientError as exc:
            if is_not_found(exc):
                continue
            raise
        return list(json.loads(body).get("items") or [])
    return []


def failed_delivery(target: Target, execution_arn: str) -> dict[str, str] | None:
    """The first sink that failed in an execution, as ``{"type", "message"}``; ``{}`` when its
    RecordFailure ran and every sink delivered (other objects failed); None when it has no
    RecordFailure (it stopped at a task: a sink that stayed down, a time-out, a stop).

    Read from the execution's history: the input of its RecordFailure task holds the deliveries.
    """
    sfn = target.client("stepfunctions")
    for page in sfn.get_paginator("get_execution_history").paginate(executionArn=execution_arn, reverseOrder=True):
        for event in page["events"]:
            if event["type"] != "LambdaFunctionScheduled":
                continue
            try:
                scheduled = json.loads(event["lambdaFunctionScheduledEventDetails"].get("input") or "{}")
            except ValueError:
                continue
            if not isinstance(scheduled, dict) or scheduled.get("mode") != "failure":
                continue
            for delivery in scheduled.get("deliveries") or []:
                if isinstance(delivery, dict) and delivery.get("status") == "FAILED":
                    return {
                        "type": str(delivery.get("error")),
                        "message": _cause_message(str(delivery.get("cause") or "")),
                    }
            return {}
    return None


def _entry_for(entries: list[dict[str, Any]], result: FileResult) -> dict[str, Any] | None:
    for entry in entries:
        source = entry.get("source") or {}
        if source.get("key") == result.key and (
            result.version_id is None or source.get("version_id") in (None, result.version_id)
        ):
            return entry
    return None


def _cause_message(cause: str) -> str:
    try:
        parsed = json.loads(cause)
    except ValueError:
        return cause
    if isinstance(parsed, dict) and parsed.get("errorMessage"):
        return str(parsed["errorMessage"])
    return cause


def object_error(
    entry: dict[str, Any] | None,
    execution_succeeded: bool,
    sink_failure: Callable[[], dict[str, str] | None],
    execution_error: dict[str, str],
) -> dict[str, str] | None:
    """Why one object of an execution did not get all its deliveries (None: it did), as ``{type, message}``.

    A batch's execution fails when any of its objects does, so a classified object failed only if
    the execution did not succeed for another reason than other objects: a sink failed for the
    batch (``sink_failure()``, asked only then: what RecordFailure noted), or, when nothing was
    noted, the execution itself stopped after classifying (at Deliver, a sink that stayed down; a
    time-out; a stop): its error. An object the batch document marks FAILED has its own error; an
    object with no entry (the batch never got a document) has the execution's. ``inferpipe
    classify`` and ``inferpipe backfill`` both decide by this.
    """
    if entry is not None and entry.get("status") == CLASSIFIED_STATUS:
        if execution_succeeded:
            return None
        noted = sink_failure()
        if noted is None:  # no RecordFailure: the execution stopped after classifying, at Deliver or later
            return execution_error
        return noted or None  # {}: RecordFailure ran for other objects, every sink delivered this one
    if entry is not None and entry.get("error"):
        return _error(
            str(entry["error"].get("type") or execution_error["type"]), str(entry["error"].get("message") or "")
        )
    return execution_error


def _outcome(
    result: FileResult,
    described: dict[str, Any],
    entries: list[dict[str, Any]],
    failure_of: Callable[[str], dict[str, str] | None],
) -> None:
    """This file's outcome: its entry in the batch document, else the execution's error."""
    arn = result.execution_arn = described["executionArn"]
    status = described["status"]
    entry = _entry_for(entries, result)
    execution_error = _error(
        described.get("error") or status, _cause_message(described.get("cause") or "") or f"execution ended {status}"
    )
    result.error = object_error(entry, status == "SUCCEEDED", lambda: failure_of(arn), execution_error)
    result.status = "failed" if result.error else "succeeded"
    if entry is not None and entry.get("status") == CLASSIFIED_STATUS:
        prediction = entry.get("prediction") or {}
        result.top_k = list(prediction.get("top_k") or [])
        result.model = (prediction.get("model") or {}).get("name")
        result.model_version = (prediction.get("model") or {}).get("version")
    if status == "SUCCEEDED":
        result.deliveries = list(json.loads(described.get("output") or "{}").get("deliveries") or [])


class NoModelError(RuntimeError):
    """The stack has no version of the model an upload would use, and none could be published."""


def _fix_command(name: str) -> str:
    if name == "efficientnet_lite0":
        return "inferpipe model import efficientnet_lite0 --pretrained --publish --alias prod   (or: make demo)"
    if name == "demo":
        return "inferpipe model build-demo --out build/demo-model && inferpipe model publish build/demo-model --name demo --alias prod"
    return f"inferpipe model publish PACKAGE_DIR --name {name} --alias prod"


def deployed_default_model(target: Target) -> str:
    """The model an upload without options uses: the state machine's own ``defaults.model`` (what
    its executions pass to Preprocess), which a deployment or a local stack may have set otherwise
    than config/stack.json."""
    try:
        definition = json.loads(
            target.client("stepfunctions").describe_state_machine(stateMachineArn=target.state_machine_arn)[
                "definition"
            ]
        )
        return str(definition["States"]["Preprocess"]["Parameters"]["defaults"]["model"])
    except (ClientError, KeyError, TypeError, ValueError):
        return str(target.resources.settings["DEFAULT_MODEL"])


def ensure_model(target: Target, options: UploadOptions, say: Callable[[str], None] = lambda line: None) -> str | None:
    """Make sure the model the uploads will use has a published version.

    A new local stack starts empty (its first start, or ``inferpipe local up --fresh``): when the
    model has no version at all and its package is built in ``build/models/<name>/`` (``make demo``
    and ``model import`` write it there; ``build/demo-model`` for the shapes model), it is published
    with alias ``prod``, and ``say`` tells which. On AWS nothing is published: a missing model is a
    :class:`NoModelError` with the command that publishes one, as it is locally when no package is
    built. Returns the version published, or None when the model already had one.
    """
    from functions.common.manifest import MANIFEST_FILE
    from inferpipe import models
    from inferpipe.paths import BUILD_DIR

    name = options.model or deployed_default_model(target)
    bucket = target.resources.buckets["models"]
    s3 = target.client("s3")
    if models.list_versions(s3, bucket, name):
        return None
    where = "the local stack" if target.endpoint_url else f"the model bucket {bucket}"
    built = [
        d
        for d in (BUILD_DIR / "models" / name, *([BUILD_DIR / "demo-model"] if name == "demo" else []))
        if (d / MANIFEST_FILE).exists()
    ]
    if not target.endpoint_url or not built or (options.model_version not in (None, "prod")):
        why = " (a new local stack starts empty)" if target.endpoint_url else ""
        raise NoModelError(
            f"{where} has no model {name!r} published{why}; publish one with:\n"
            f"  {_fix_command(name)}" + ("" if target.endpoint_url else "   (with --aws)")
        )
    published = models.publish(s3, bucket, built[0], name=name, alias="prod")
    say(f"{where} had no model {name!r}: published {built[0]} as version {published.version}, alias prod")
    return str(published.version)


def classify_files(
    target: Target,
    paths: Sequence[Path],
    options: UploadOptions = UploadOptions(),
    timeout: float = 300.0,
    poll: float = 0.25,
    on_progress: Callable[[FileResult], None] | None = None,
    on_upload: Callable[[FileResult], None] | None = None,
) -> list[FileResult]:
    """Upload every file, wait for its execution, and return one result per path, in order.

    ``on_upload`` is called after each file's upload (or failure to), ``on_progress`` when a file's
    execution has finished. When the stack or the network fails mid-run (an AWS error or no answer
    after the client's retries), the files already finished keep their results and every other one
    gets that error: nothing already known is lost.
    """
    sfn = target.client("stepfunctions")
    since = datetime.now(UTC) - timedelta(seconds=5)
    results = [FileResult(file=str(path)) for path in paths]
    pending = _upload_all(target, paths, options, results, on_upload)
    waiter = _Waiter(target, sfn, results, since, on_progress)
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        try:
            waiter.poll(pending)
        except (BotoCoreError, ClientError) as exc:
            broken = _stopped(exc, "waiting for the executions")
            for index in pending:
                results[index].status, results[index].error = "failed", dict(broken)
            return results
        if pending:
            time.sleep(poll)
    for index in pending:
        results[index].error = _unfinished(target, results[index], timeout)
    return results


def _upload_all(
    target: Target,
    paths: Sequence[Path],
    options: UploadOptions,
    results: list[FileResult],
    on_upload: Callable[[FileResult], None] | None,
) -> dict[int, float]:
    """Upload each file; index -> upload time of those uploaded. After the stack or the network
    failed, the files not yet uploaded get that error instead."""
    started: dict[int, float] = {}
    broken: dict[str, str] | None = None  # the error that stopped the run, for every file not finished
    for index, path in enumerate(paths):
        if broken is None:
            try:
                upload_time = upload(target, path, options, results[index])
            except ClientError as exc:  # this file refused (e.g. AccessDenied): the others may still go
                results[index].error = _error(error_name(exc), str(exc))
                upload_time = None
            except BotoCoreError as exc:  # no answer: the stack or the network is down
                broken = _stopped(exc, "uploading")
                upload_time = None
            if upload_time is not None:
                started[index] = upload_time
        if broken is not None and results[index].error is None:
            results[index].error = dict(broken)
        if on_upload:
            on_upload(results[index])
    return started


class _Waiter:
    """Finds each uploaded file's execution and collects its outcome once it has finished."""

    def __init__(
        self,
        target: Target,
        sfn: Any,
        results: list[FileResult],
        since: datetime,
        on_progress: Callable[[FileResult], None] | None,
    ) -> None:
        self.target, self.sfn, self.results, self.since, self.on_progress = target, sfn, results, since, on_progress
        self.bucket = target.resources.buckets["input"]
        self.claimed: set[tuple[str, str, str | None]] = set()
        self.inputs: dict[str, Any] = {}
        self.entries: dict[str, list[dict[str, Any]]] = {}
        self.failures: dict[str, dict[str, str] | None] = {}

    def failure_of(self, execution_arn: str) -> dict[str, str] | None:
        """The sink that failed in this execution, if one did (then the file counts as failed)."""
        if execution_arn not in self.failures:
            self.failures[execution_arn] = failed_delivery(self.target, execution_arn)
        return self.failures[execution_arn]

    def poll(self, pending: dict[int, float]) -> None:
        """One look at the recent executions; the files whose execution finished leave ``pending``."""
        executions = _recent_executions(self.sfn, self.target.state_machine_arn, self.since)
        for summary in executions:
            arn = summary["executionArn"]
            if arn not in self.inputs:
                described = self.sfn.describe_execution(executionArn=arn)
                self.inputs[arn] = json.loads(described.get("input") or "{}")
        for index in list(pending):
            result = self.results[index]
            if result.execution_arn is None:
                self._claim(result, executions)
            if result.execution_arn is None:
                continue
            described = self.sfn.describe_execution(executionArn=result.execution_arn)
            if described["status"] == "RUNNING":
                continue
            if result.execution_arn not in self.entries:
                self.entries[result.execution_arn] = execution_results(self.target, result.execution_arn)
            _outcome(result, described, self.entries[result.execution_arn], self.failure_of)
            result.seconds = round(time.monotonic() - pending.pop(index), 3)
            if self.on_progress:
                self.on_progress(result)

    def _claim(self, result: FileResult, executions: Sequence[dict[str, Any]]) -> None:
        """The first execution not yet claimed that names the file's object version becomes its own."""
        for summary in reversed(executions):  # oldest first: a re-uploaded key finds its later execution next
            arn = summary["executionArn"]
            claim = (arn, result.key or "", result.version_id)
            if claim not in self.claimed and _names(self.inputs[arn], self.bucket, result.key or "", result.version_id):
                result.execution_arn = arn
                self.claimed.add(claim)
                return


def _unfinished(target: Target, result: FileResult, timeout: float) -> dict[str, str]:
    """The error of a file whose execution did not start, or did not finish, within ``timeout``."""
    if result.execution_arn is None:
        return _error(
            "NotStarted",
            f"no execution started for s3://{target.resources.buckets['input']}/{result.key} within {timeout:.0f} s "
            f"(is the EventBridge rule {target.resources.trigger_rule} enabled?)",
        )
    return _error("Timeout", f"execution still running after {timeout:.0f} s: {result.execution_arn}")


def format_results(results: Sequence[FileResult]) -> str:
    """A plain table: file, top-1 label, probability, model version, seconds, status, error."""
    rows = [("FILE", "TOP-1", "PROB", "MODEL VERSION", "SECONDS", "STATUS", "ERROR")]
    for result in results:
        top1 = result.top_k[0] if result.top_k else None
        error = f"{result.error['type']}: {result.error['message']}" if result.error else ""
        rows.append(
            (
                result.file,
                top1["label"] if top1 else "-",
                f"{top1['probability']:.3f}" if top1 else "-",
                result.model_version or "-",
                f"{result.seconds:.2f}" if result.seconds is not None else "-",
                result.status,
                error,  # the last column, never cut: the useful part of a message is often at its end
            )
        )
    return table(rows)


def _stopped(exc: BaseException, doing: str) -> dict[str, str]:
    """The error of every file not finished when the stack or the network failed."""
    return _error(
        error_name(exc), f"{exc} (while {doing}: the stack or the network failed; files already finished are reported)"
    )


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
                start = start.replace(tzinfo=UTC)
            if start >= since:
                found.append(summary)
            else:
                older += 1
        token = page.get("nextToken")
        if not token or (page["executions"] and older == len(page["executions"])):
            return found  # pages are newest first: a page of older executions ends the search
        kwargs["nextToken"] = token
