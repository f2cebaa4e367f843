"""``inferpipe executions list|show``: what the pipeline did, execution by execution, locally or on AWS.

Examples::

    inferpipe executions list --status FAILED --since 1h
    inferpipe executions show 3f1c…            # a name, or the execution's ARN
    inferpipe executions show 3f1c… --json

``show`` reads the execution's history (GetExecutionHistory, every page) and tells: the objects its
input names, the path through the states with each state's duration (a Map's iterations under it,
by index), the state where it stopped with the input that state was entered with and a clean error
(its type and message; a Lambda error's stack trace stays in the function's log), the records of
its objects' versions (:func:`functions.sink.records.find`), and the log lines of its functions that
carry its ARN, with Lambda's START/END/REPORT lines of those invocations.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from functions.common.aws import error_code
from functions.common.batch import named_objects
from functions.sink import records
from functions.sink.core import FAILURE_PREFIX
from inferpipe.execution_path import Step, steps
from inferpipe.present import seconds_between, table, utc_millis
from inferpipe.replay import ALL_STATUSES

#: Longest input shown for the failed state (the JSON text; ``--json`` has it whole).
INPUT_CHARS = 2000
FUNCTIONS = ("preprocess", "inference", "sink")


def clean_error(error: str | None, cause: str | None) -> dict[str, str] | None:
    """``{"type", "message"}`` of an error and its cause: a Lambda error's JSON cause is reduced to its
    ``errorMessage`` (no stack trace, no host paths)."""
    if not error and not cause:
        return None
    message = str(cause or "")
    try:
        parsed = json.loads(message)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and ("errorMessage" in parsed or "errorType" in parsed):
        message = str(parsed.get("errorMessage") or "")
        error = error or str(parsed.get("errorType") or "")
    return {"type": str(error or "Error"), "message": message}


@dataclass
class Detail:
    """Everything ``executions show`` prints about one execution."""

    arn: str
    name: str
    status: str
    started: str
    stopped: str | None
    seconds: float | None
    redrive_count: int
    objects: list[dict[str, Any]]
    steps: list[Step]
    failed_state: str | None = None
    failed_input: Any = None
    error: dict[str, str] | None = None
    records: list[dict[str, Any]] = field(default_factory=list)
    log_lines: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def execution_arn(state_machine_arn: str, arn_or_name: str) -> str:
    """The ARN of an execution of ``state_machine_arn`` given its ARN or its name."""
    if arn_or_name.startswith("arn:"):
        return arn_or_name
    prefix = state_machine_arn.replace(":stateMachine:", ":execution:", 1)
    return f"{prefix}:{arn_or_name}"


def history(sfn: Any, arn: str) -> list[dict[str, Any]]:
    """Every event of the execution, oldest first."""
    paginator = sfn.get_paginator("get_execution_history")
    return [
        e for page in paginator.paginate(executionArn=arn, PaginationConfig={"PageSize": 1000}) for e in page["events"]
    ]


def _failure(events: Sequence[Mapping[str, Any]]) -> tuple[str | None, str | None]:
    """The error and cause the execution ended with (its last failure event)."""
    for event in reversed(events):
        for key in ("executionFailedEventDetails", "executionAbortedEventDetails", "executionTimedOutEventDetails"):
            details = event.get(key)
            if details is not None:
                return details.get("error"), details.get("cause")
    return None, None


def _records(
    s3: Any, output_bucket: str, output_prefix: str, objects: Iterable[Mapping[str, Any]], arn: str
) -> list[dict[str, Any]]:
    found = []
    for source in objects:
        for kind, prefix in ((records.PREDICTION, output_prefix), (records.FAILURE, FAILURE_PREFIX)):
            if source.get("version_id"):
                hit = records.find(s3, output_bucket, prefix, source["bucket"], source["key"], source["version_id"])
            else:  # a hand-typed input names no version: the key's latest view, when it is this execution's
                latest = records.read_latest(s3, output_bucket, prefix, source)
                hit = (records.latest_key(prefix, source["bucket"], source["key"]), latest) if latest else None
            if hit is None:
                continue
            where, record = hit
            found.append(
                {
                    "kind": kind,
                    "object": f"s3://{source['bucket']}/{source['key']}",
                    "version_id": (record.get("source") or {}).get("version_id"),
                    "location": f"s3://{output_bucket}/{where}",
                    "by_this_execution": record.get("execution_id") == arn,
                    "summary": _record_summary(kind, record),
                }
            )
    return found


def _record_summary(kind: str, record: Mapping[str, Any]) -> str:
    if kind == records.FAILURE:
        error = record.get("error") or {}
        return f"{error.get('type')}: {error.get('message')}"
    top = (record.get("top_k") or [{}])[0]
    if "label" in top:
        return f"{top['label']} {float(top.get('probability') or 0):.3f}"
    return str(record.get("status") or "")


def log_lines(
    logs: Any, groups: Mapping[str, str], arn: str, start: datetime, end: datetime | None
) -> list[dict[str, Any]]:
    """The lines of each function's log group that carry ``arn``, with Lambda's START/END/REPORT lines
    of the same invocations, oldest first."""
    from botocore.exceptions import ClientError

    from inferpipe.logs import events

    start_ms = int(start.timestamp() * 1000) - 1000
    end_ms = int((end or datetime.now(UTC)).timestamp() * 1000) + 5000
    found: list[dict[str, Any]] = []
    for function, group in groups.items():
        try:
            lines = list(events(logs, group, start_ms, end_ms))
        except ClientError as exc:
            if error_code(exc) == "ResourceNotFoundException":
                continue
            raise
        requests: set[str] = set()
        for line in lines:
            parsed = _json(line["message"])
            if parsed is not None and parsed.get("execution_id") == arn:
                requests.add(str(parsed.get("function_request_id") or ""))
        requests.discard("")
        for line in lines:
            message = str(line["message"]).rstrip("\n")
            parsed = _json(message)
            mine = parsed is not None and parsed.get("execution_id") == arn
            platform = parsed is None and any(f"RequestId: {r}" in message for r in requests)
            if mine or platform:
                found.append({"time": utc_millis(line["timestamp"] / 1000), "function": function, "message": message})
    return sorted(found, key=lambda line: str(line["time"]))


def _input(text: str | None) -> Any:
    """An execution's input, parsed (any JSON: an S3 event, a manual request, a pipe's array of SQS
    records); {} when it is not JSON."""
    try:
        return json.loads(text or "{}")
    except ValueError:
        return {}


def _json(text: str) -> dict[str, Any] | None:
    if not text.lstrip().startswith("{"):
        return None
    try:
        parsed = json.loads(text)
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


def _unsuccessful_step(
    definition: Mapping[str, Any], events: Sequence[Mapping[str, Any]], execution_input: Any
) -> tuple[str | None, Any]:
    """The top-level state the execution's last attempt stopped in (entered, never exited) and the
    input it was entered with, as RedriveExecution finds it; (None, None) when it stopped in none."""
    from inferpipe.local.redrive import resume_point

    state, state_input = resume_point(definition, events, execution_input)
    last_attempt = max((i for i, e in enumerate(events) if e["type"] == "ExecutionRedriven"), default=-1)
    entered = exited = 0
    for event in events[last_attempt + 1 :]:
        kind = str(event["type"])
        if kind.endswith("StateEntered") and (event.get("stateEnteredEventDetails") or {}).get("name") == state:
            entered += 1
        elif kind.endswith("StateExited") and (event.get("stateExitedEventDetails") or {}).get("name") == state:
            exited += 1
    return (state, state_input) if entered > exited else (None, None)


@dataclass(frozen=True)
class Recorded:
    """What Step Functions keeps of one execution: DescribeExecution, its history, its state machine's ASL."""

    described: dict[str, Any]
    events: list[dict[str, Any]]
    definition: dict[str, Any]


def recorded(target: Any, arn_or_name: str) -> Recorded:
    """Read one execution (ExecutionDoesNotExist as a ValueError naming it)."""
    from botocore.exceptions import ClientError

    sfn = target.client("stepfunctions")
    arn = execution_arn(target.state_machine_arn, arn_or_name)
    try:
        described = sfn.describe_execution(executionArn=arn)
    except ClientError as exc:
        if error_code(exc) in ("ExecutionDoesNotExist", "InvalidArn"):
            raise ValueError(f"no execution {arn_or_name!r} of {target.state_machine_arn}") from None
        raise
    machine = sfn.describe_state_machine(stateMachineArn=described["stateMachineArn"])
    return Recorded(described, history(sfn, arn), json.loads(machine["definition"]))


def show(target: Any, arn_or_name: str, with_logs: bool = True, read: Recorded | None = None) -> Detail:
    """What one execution did, from :func:`recorded` (``read``, when the caller has it already)."""
    from inferpipe.logs import log_group

    read = read or recorded(target, arn_or_name)
    described, events = read.described, read.events
    arn = described["executionArn"]
    execution_input = _input(described.get("input"))
    objects = named_objects(execution_input)
    status = described["status"]
    detail = Detail(
        arn=arn,
        name=described["name"],
        status=status,
        started=utc_millis(described["startDate"]) or "",
        stopped=utc_millis(described.get("stopDate")),
        seconds=seconds_between(described["startDate"], described.get("stopDate")),
        redrive_count=int(described.get("redriveCount") or 0),
        objects=objects,
        steps=steps(events, status),
    )
    if status != "SUCCEEDED":
        error, cause = (described.get("error"), described.get("cause")) if described.get("error") else _failure(events)
        detail.error = clean_error(error, cause)
        state, state_input = _unsuccessful_step(read.definition, events, execution_input)
        inner = [s.name for s in detail.steps if s.outcome != "succeeded" and s.name != state]
        detail.failed_state = " > ".join([state, *inner[-1:]]) if state else None
        detail.failed_input = state_input
    resources = target.resources
    detail.records = _records(
        target.client("s3"), resources.buckets["output"], resources.settings["OUTPUT_PREFIX"], objects, arn
    )
    if with_logs:
        groups = {name: log_group(resources, name) for name in FUNCTIONS if name in resources.functions}
        detail.log_lines = log_lines(
            target.client("logs"), groups, arn, described["startDate"], described.get("stopDate")
        )
    return detail


@dataclass(frozen=True)
class Row:
    """One line of ``executions list``."""

    name: str
    arn: str
    status: str
    started: str
    seconds: float | None
    objects: list[str]
    error: dict[str, str] | None


def list_rows(
    sfn: Any,
    state_machine_arn: str,
    *,
    statuses: Sequence[str] = (),
    since: datetime | None = None,
    key: str | None = None,
    limit: int = 50,
) -> list[Row]:
    """The newest ``limit`` executions (with one of ``statuses``, started since ``since``, naming an
    object whose key contains ``key``), newest first."""
    rows: list[Row] = []
    for status in statuses or (None,):
        request: dict[str, Any] = {"stateMachineArn": state_machine_arn, **({"statusFilter": status} if status else {})}
        taken = 0
        for summary in (
            s for page in sfn.get_paginator("list_executions").paginate(**request) for s in page["executions"]
        ):
            started = summary["startDate"]
            if taken >= limit or (
                since is not None and (started if started.tzinfo else started.replace(tzinfo=UTC)) < since
            ):
                break  # AWS lists newest first
            described = sfn.describe_execution(executionArn=summary["executionArn"])
            objects = [f"s3://{o['bucket']}/{o['key']}" for o in named_objects(_input(described.get("input")))]
            if key and not any(key in o.split("/", 3)[-1] for o in objects):
                continue
            failed = described["status"] not in ("SUCCEEDED", "RUNNING")
            rows.append(
                Row(
                    summary["name"],
                    summary["executionArn"],
                    described["status"],
                    utc_millis(started) or "",
                    seconds_between(started, described.get("stopDate")),
                    objects,
                    clean_error(described.get("error") or described["status"], described.get("cause"))
                    if failed
                    else None,
                )
            )
            taken += 1
    rows.sort(key=lambda r: r.started, reverse=True)
    return rows[:limit]


def parse_statuses(text: str) -> list[str]:
    """``--status``: comma-separated execution statuses in any case; none given means every status."""
    statuses = [s.strip().upper() for s in text.split(",") if s.strip()]
    unknown = [s for s in statuses if s not in ALL_STATUSES]
    if unknown:
        raise ValueError(f"--status: unknown status {', '.join(unknown)}; expected some of {', '.join(ALL_STATUSES)}")
    return statuses


def format_rows(rows: Sequence[Row]) -> str:
    if not rows:
        return "no executions match"
    lines = [("NAME", "STATUS", "STARTED", "SECONDS", "OBJECTS", "ERROR")]
    for row in rows:
        objects = (
            (row.objects[0] + (f" +{len(row.objects) - 1}" if len(row.objects) > 1 else "")) if row.objects else "-"
        )
        error = f"{row.error['type']}: {row.error['message']}" if row.error else ""
        lines.append(
            (
                row.name,
                row.status,
                row.started,
                f"{row.seconds:.2f}" if row.seconds is not None else "-",
                objects,
                error,
            )
        )
    return table(lines)


def format_detail(detail: Detail) -> str:
    lines = [
        f"execution  {detail.name}  {detail.status}",
        f"arn        {detail.arn}",
        f"started    {detail.started}"
        + (f"  stopped {detail.stopped} ({detail.seconds:.2f} s)" if detail.seconds is not None else ""),
    ]
    if detail.redrive_count:
        lines.append(f"redriven   {detail.redrive_count} time(s)")
    objects = [
        f"s3://{o['bucket']}/{o['key']}" + (f" (version {o['version_id']})" if o.get("version_id") else "")
        for o in detail.objects
    ]
    lines.append("objects    " + ("\n           ".join(objects) if objects else "(the input names none)"))
    lines.append("path")
    for step in detail.steps:
        label = f"  [{step.iteration}] {step.name}" if step.iteration is not None else step.name
        seconds = f"{step.seconds:.3f} s" if step.seconds is not None else "-"
        retried = (
            f"  ({step.failed_attempts} failed attempt{'s' if step.failed_attempts != 1 else ''} before)"
            if step.failed_attempts
            else ""
        )
        lines.append(f"  {label:<26} {step.type:<7} {seconds:>10}  {step.outcome}{retried}")
    if detail.error:
        lines.append(f"error      {detail.error['type']}: {detail.error['message']}")
    if detail.failed_state:
        lines.append(f"stopped at {detail.failed_state}")
        text = json.dumps(detail.failed_input, ensure_ascii=False)
        lines.append(
            "its input  "
            + (
                text
                if len(text) <= INPUT_CHARS
                else text[:INPUT_CHARS] + f"… ({len(text)} characters; --json has it whole)"
            )
        )
    lines.append("records" + ("" if detail.records else "    none"))
    for record in detail.records:
        mark = "" if record["by_this_execution"] else "  (another execution's)"
        lines.append(f"  {record['kind']:<10} {record['location']}  {record['summary']}{mark}")
    lines.append("logs" + ("" if detail.log_lines else "       none"))
    for line in detail.log_lines:
        lines.append(f"  {line['time']}  {line['function']:<10} {_log_text(line['message'])}")
    return "\n".join(lines)


#: Keys every function's JSON log line carries: left out of the text form (``--json`` keeps the line whole).
_COMMON_LOG_KEYS = frozenset(
    {
        "level",
        "message",
        "timestamp",
        "service",
        "location",
        "cold_start",
        "execution_id",
        "function_name",
        "function_memory_size",
        "function_arn",
        "function_request_id",
        "xray_trace_id",
    }
)


def _log_text(message: str) -> str:
    """A JSON log line as ``LEVEL message  key=value …``; Lambda's own lines as written."""
    parsed = _json(message)
    if parsed is None:
        return message.replace("\t", "  ").rstrip()
    extra = "  ".join(
        f"{k}={json.dumps(v, ensure_ascii=False) if not isinstance(v, str) else v}"
        for k, v in parsed.items()
        if k not in _COMMON_LOG_KEYS
    )
    return f"{parsed.get('level', '')} {parsed.get('message', '')}" + (f"  {extra}" if extra else "")


__all__ = [
    "Detail",
    "Recorded",
    "Row",
    "Step",
    "clean_error",
    "execution_arn",
    "format_detail",
    "format_rows",
    "history",
    "list_rows",
    "log_lines",
    "parse_statuses",
    "recorded",
    "show",
    "steps",
]
