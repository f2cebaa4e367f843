"""Failure records from Step Functions' "Execution Status Change" events (mode ``status``).

A Catch sees only the errors of its state. An execution that stops at a task (retries exhausted, a
sink that stays down: the errors the state machine leaves uncaught so that a redrive can resume
there), that hits the state machine's ``TimeoutSeconds`` (TIMED_OUT), that is stopped (ABORTED) or
that fails on the service side (``States.DataLimitExceeded``, ``States.Runtime``) never reaches
RecordFailure. Step Functions sends a status change event for each of them to the default bus
(https://docs.aws.amazon.com/step-functions/latest/dg/cw-events.html); the rule
``config/stack.json`` ``status_rule`` sends FAILED, TIMED_OUT, ABORTED and SUCCEEDED ones to the
sink function, asynchronously (EventBridge retries for 24 hours, then dead-letters).

* **FAILED in ``PipelineFailed``**: RecordFailure wrote the records; nothing to do.
* **FAILED elsewhere, TIMED_OUT, ABORTED**: the state it stopped in is read from the execution's
  history; then the records are written exactly as RecordFailure writes them
  (:func:`functions.sink.failures.record_batch_failures`), from the newest batch document of the
  execution (``classified.json``, else ``preprocessed.json``), else from its input. The names of
  the records written are kept in ``failures/_executions/<execution name>.json``.
* **SUCCEEDED** (a redrive that got through): the failure records that file names (the version's
  record and the key's latest view) are deleted where they still describe this execution and
  the version that has now succeeded; then the file.

Each step can run twice (EventBridge delivers at least once): every write is an overwrite.

Example event (the target's InputTransformer adds ``mode`` and the deployment's defaults)::

    {"mode": "status", "detail": {"executionArn": "...", "status": "TIMED_OUT", "input": "{...}", ...},
     "defaults": {"sinks": "s3,dynamodb", "top_k": "5", "model": "demo", "model_version": "prod"}}
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from functions.common import config
from functions.common.aws import client, raise_transient, read_object
from functions.common.errors import InvalidRequestError, ObjectNotFoundError
from functions.common.log import logger
from functions.common.work import CLASSIFIED, PREPROCESSED, execution_name, get_document, work_key
from functions.sink import records
from functions.sink.core import FAILURE_PREFIX, Destinations
from functions.sink.failures import record_batch_failures

#: Fail states that only RecordFailure leads to: an execution that ended there is recorded.
RECORDED_FAIL_STATES = ("PipelineFailed",)
UNSUCCESSFUL = ("FAILED", "TIMED_OUT", "ABORTED")
#: The error a record names when the event has none: a time-out, a stop without an error.
STATUS_ERRORS = {"TIMED_OUT": "States.Timeout", "ABORTED": "ExecutionAborted", "FAILED": "States.Runtime"}
STATUS_CAUSES = {
    "TIMED_OUT": "the execution ran longer than the state machine's TimeoutSeconds",
    "ABORTED": "the execution was stopped",
    "FAILED": "the execution failed",
}
#: Where the status recorder notes which records it wrote for an execution.
EXECUTIONS_FOLDER = "_executions"


@dataclass(frozen=True)
class StatusChange:
    execution_arn: str
    name: str
    status: str
    error: str | None
    cause: str | None
    input: Any


def parse(event: Mapping[str, Any]) -> StatusChange:
    detail = event.get("detail")
    if (
        not isinstance(detail, Mapping)
        or not isinstance(detail.get("executionArn"), str)
        or not isinstance(detail.get("status"), str)
    ):
        raise InvalidRequestError(
            'status input must be {"mode": "status", "detail": <a Step Functions Execution Status Change detail>}'
        )
    raw = detail.get("input")
    try:
        execution_input = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        execution_input = raw
    arn = detail["executionArn"]
    return StatusChange(
        execution_arn=arn,
        name=str(detail.get("name") or execution_name(arn)),
        status=detail["status"],
        error=detail.get("error") if isinstance(detail.get("error"), str) else None,
        cause=detail.get("cause") if isinstance(detail.get("cause"), str) else None,
        input=execution_input,
    )


def _history(execution_arn: str) -> Iterator[Mapping[str, Any]]:
    sfn = client("stepfunctions")
    token: str | None = None
    while True:
        try:
            page = sfn.get_execution_history(
                executionArn=execution_arn, maxResults=1000, **({"nextToken": token} if token else {})
            )
        except (ClientError, BotoCoreError) as exc:
            raise_transient(exc, f"GetExecutionHistory {execution_arn}")
        yield from page.get("events", [])
        token = page.get("nextToken")
        if not token:
            return


def stopped_in(events: Iterator[Mapping[str, Any]]) -> tuple[str | None, bool]:
    """(the last state the execution's latest attempt entered, whether it ended in a recorded Fail state)."""
    last: str | None = None
    recorded = False
    for event in events:
        kind = str(event.get("type", ""))
        if kind == "ExecutionRedriven":
            recorded = False
        elif kind.endswith("StateEntered"):
            last = (event.get("stateEnteredEventDetails") or {}).get("name")
            recorded = kind == "FailStateEntered" and last in RECORDED_FAIL_STATES
    return last, recorded


def _newest_document(execution_arn: str) -> dict[str, str] | None:
    """The reference of the execution's newest batch document, if one was written."""
    bucket = config.optional(config.WORK_BUCKET)
    if not bucket:
        return None
    prefix = config.Settings.from_env().work_prefix
    s3 = client("s3")
    for name in (CLASSIFIED, PREPROCESSED):
        ref = {"bucket": bucket, "key": work_key(prefix, execution_arn, name)}
        try:
            get_document(s3, ref)
        except (ObjectNotFoundError, InvalidRequestError):
            continue
        return ref
    return None


def _marker_key(name: str) -> str:
    return f"{FAILURE_PREFIX}{EXECUTIONS_FOLDER}/{name}.json"


def record_status(event: Mapping[str, Any], dest: Destinations) -> dict[str, Any]:
    change = parse(event)
    answer: dict[str, Any] = {"mode": "status", "execution_id": change.execution_arn, "status": change.status}
    if change.status == "SUCCEEDED":
        return {**answer, "resolved": _resolve(change, dest)}
    if change.status not in UNSUCCESSFUL:
        return {**answer, "recorded": 0, "note": f"nothing to record for status {change.status}"}
    state, recorded = stopped_in(_history(change.execution_arn))
    if recorded:
        return {**answer, "recorded": 0, "note": f"recorded by RecordFailure ({state})"}
    failure = {
        "state": state or "Execution",
        "error": change.error or STATUS_ERRORS[change.status],
        "cause": change.cause or STATUS_CAUSES[change.status],
    }
    outcome = record_batch_failures(
        {
            "failure": failure,
            "batch": _newest_document(change.execution_arn),
            "input": change.input,
            "defaults": event.get("defaults"),
            "execution_id": change.execution_arn,
        },
        dest,
        keep_error_names=True,
    )
    if dest.output_bucket and outcome["keys"]:
        body = {
            "execution_id": change.execution_arn,
            "status": change.status,
            "failure": failure,
            "records": outcome["keys"],
        }
        try:
            client("s3").put_object(
                Bucket=dest.output_bucket,
                Key=_marker_key(change.name),
                Body=json.dumps(body).encode("utf-8"),
                ContentType="application/json",
            )
        except (ClientError, BotoCoreError) as exc:
            raise_transient(exc, "noting the execution's failure records")
    logger.warning(
        "execution stopped unsuccessfully; failures recorded",
        extra={
            "status": change.status,
            "failed_state": failure["state"],
            "error": failure["error"],
            "failed": outcome["failed"],
        },
    )
    return {**answer, "recorded": outcome["failed"], "error": outcome["error"], "failed_state": failure["state"]}


def _resolve(change: StatusChange, dest: Destinations) -> int:
    """Delete the failure records an earlier attempt of this execution wrote; how many."""
    if not dest.output_bucket:
        return 0
    s3 = client("s3")
    data = read_object(s3, dest.output_bucket, _marker_key(change.name), 1 << 20)
    if data is None:
        return 0  # the usual case: this execution never failed
    noted = json.loads(data)
    resolved = 0
    for entry in noted.get("records", []):
        version, deleted = entry.get("version_id"), 0
        for key in (entry.get("key"), entry.get("version_key")):
            current = read_object(s3, dest.output_bucket, key, 1 << 20) if key else None
            if current is None:
                continue
            record = json.loads(current)
            # Only a record of this execution and version: a later failure of the key stays.
            if (
                record.get("execution_id") == change.execution_arn
                and (record.get("source") or {}).get("version_id") == version
            ):
                _delete(s3, dest.output_bucket, key)
                deleted += 1
        resolved += 1 if deleted else 0
    _delete(s3, dest.output_bucket, _marker_key(change.name))
    logger.info("redriven execution succeeded; its failure records resolved", extra={"resolved": resolved})
    return resolved


def _delete(s3: Any, bucket: str, key: str) -> None:
    try:
        records.delete(s3, bucket, key)  # a key already gone counts as deleted
    except (ClientError, BotoCoreError) as exc:
        raise_transient(exc, f"DeleteObject s3://{bucket}/{key}")


__all__ = ["RECORDED_FAIL_STATES", "StatusChange", "parse", "record_status", "stopped_in"]
