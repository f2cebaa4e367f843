"""Replay failed executions of the pipeline: ``inferpipe replay``.

Selection is pure (:func:`plan_replays`, unit-tested without AWS); :func:`run_replays` does the
Step Functions calls. Three modes:

* ``auto`` (default): redrive where a redrive can succeed, restart otherwise, and say why. An
  execution that stopped at a task (retries exhausted, a timeout, a sink that stayed down: the
  errors the state machine leaves uncaught), that timed out or was stopped is redriven, resuming
  there without re-running what succeeded. One that ended in the ``PipelineFailed`` Fail state
  failed for its input (or a bug): a redrive "continues the failed execution from the unsuccessful
  step" (https://docs.aws.amazon.com/step-functions/latest/apireference/API_RedriveExecution.html),
  which is the Fail state itself, so it would fail again at once; it is restarted. So is an
  execution Step Functions reports NOT_REDRIVABLE (older than 14 days, at its history limit).
* ``restart``: a new execution with the original input, named ``<original>-r<n>`` (the n-th
  replay; at most 80 characters, truncating the original name when needed). The sinks are
  idempotent, so a replay completes what is missing without duplicating what was delivered.
* ``redrive``: RedriveExecution wherever Step Functions allows it (standard workflows, within 14
  days, ``redriveStatus == REDRIVABLE``), even when it will fail again; when the API says an
  execution cannot be redriven (or the endpoint lacks the API), it is restarted instead and the
  summary says why. The local stack redrives as AWS does (:mod:`inferpipe.local.redrive`).

An execution is grouped with its replays by name. A group is skipped when one of its replays
succeeded (no duplicates), or one is still running; otherwise the original input is replayed once.
It is also skipped when every object its input names has a newer version that already succeeded
(:func:`superseded`, from the key's latest prediction; an S3 event's ``sequencer`` orders them):
the replay could only write that old version's own record.

Example::

    decisions = plan_replays(executions, statuses={"FAILED"}, since=now - timedelta(hours=24))
    summary = run_replays(target.client("stepfunctions"), target.state_machine_arn, decisions, mode="auto")
"""

from __future__ import annotations

import hashlib
import re
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

from botocore.exceptions import ClientError

from functions.common.work import GROUP_CHARS, split_replay_name
from functions.sink.status import RECORDED_FAIL_STATES

FAILED_STATUSES = ("FAILED", "TIMED_OUT", "ABORTED")
ALL_STATUSES = ("RUNNING", "SUCCEEDED", "FAILED", "TIMED_OUT", "ABORTED", "PENDING_REDRIVE")
MODES = ("auto", "restart", "redrive")
MAX_NAME = 80
#: Characters Step Functions refuses in an execution name (plus whitespace and control characters).
_BAD_NAME_CHARS = re.compile(r"[\s<>{}\[\]?*\"#%\\^|~`$&,;:/\x00-\x1f\x7f-\x9f]")
_DURATION = re.compile(r"([0-9]+)\s*([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


# --------------------------------------------------------------------------- pure selection


def parse_duration(text: str) -> timedelta:
    """``90s``, ``15m``, ``24h``, ``7d``, ``1w``, ``1h30m`` -> timedelta.

    >>> parse_duration("1h30m")
    datetime.timedelta(seconds=5400)
    """
    compact = text.strip().lower()
    parts = _DURATION.findall(compact)
    if not compact or not parts or _DURATION.sub("", compact).strip():
        raise ValueError(f"{text!r} is not a duration such as 30m, 24h, 7d or 1h30m")
    return timedelta(seconds=sum(int(n) * _UNITS[unit] for n, unit in parts))


def parse_statuses(text: str) -> tuple[str, ...]:
    statuses = tuple(s.strip().upper() for s in text.split(",") if s.strip())
    unknown = [s for s in statuses if s not in FAILED_STATUSES]
    if not statuses or unknown:
        raise ValueError(f"--status takes a comma-separated list of {', '.join(FAILED_STATUSES)}; got {text!r}")
    return statuses


def replay_name(original: str, n: int) -> str:
    """The name of the ``n``-th replay of ``original``: ``<original>-r<n>``, valid and <= 80 characters.

    >>> replay_name("5f0c2e", 1)
    '5f0c2e-r1'
    """
    suffix = f"-r{n}"
    stem = _BAD_NAME_CHARS.sub("_", original)[: MAX_NAME - len(suffix)]
    return stem + suffix


def _group_key(name: str) -> str:
    return split_replay_name(name)[0][:GROUP_CHARS]


@dataclass(frozen=True)
class Execution:
    """What selection needs to know about one execution."""

    arn: str
    name: str
    status: str
    start: datetime

    @classmethod
    def from_summary(cls, summary: dict[str, Any]) -> Execution:
        return cls(summary["executionArn"], summary["name"], summary["status"], summary["startDate"])


@dataclass(frozen=True)
class Decision:
    """What to do with one failed execution (or group: an original and its replays)."""

    execution: Execution  # the execution to replay (the original when it is known)
    action: str  # "replay" | "skip"
    reason: str = ""
    new_name: str | None = None  # restart: the new execution's name
    group: tuple[str, ...] = ()  # names of the executions in the group


def plan_replays(
    executions: Sequence[Execution],
    *,
    statuses: Iterable[str] = FAILED_STATUSES,
    since: datetime | None = None,
    only: Iterable[str] | None = None,
) -> list[Decision]:
    """Which executions to replay, and which to skip and why; oldest first.

    ``executions`` are all executions of the state machine that matter (at least those started
    since ``since``: the replays of a candidate are never older than it). ``only`` restricts the
    candidates to these ARNs (``--execution``), whatever their age.
    """
    wanted = set(statuses)
    only_arns = set(only) if only is not None else None
    groups: dict[str, list[Execution]] = {}
    for execution in executions:
        groups.setdefault(_group_key(execution.name), []).append(execution)
    decisions = _unknown_arns(only_arns, {e.arn for e in executions})
    seen_groups: set[str] = set()
    for execution in sorted(executions, key=lambda e: e.start):
        if not _is_candidate(execution, wanted, since, only_arns):
            continue
        key = _group_key(execution.name)
        if key in seen_groups:
            continue
        seen_groups.add(key)
        decisions.append(_decide(execution, groups.get(key, [execution]), explicit=only_arns is not None))
    return decisions


def _unknown_arns(only_arns: set[str] | None, known: set[str]) -> list[Decision]:
    """``--execution`` ARNs that are no execution of this state machine: skipped, saying so."""
    if only_arns is None:
        return []
    return [
        Decision(
            Execution(arn, arn.rsplit(":", 1)[-1], "UNKNOWN", datetime.now(UTC)),
            "skip",
            "no such execution of this state machine",
        )
        for arn in sorted(only_arns - known)
    ]


def _is_candidate(execution: Execution, wanted: set[str], since: datetime | None, only_arns: set[str] | None) -> bool:
    if only_arns is not None:
        return execution.arn in only_arns
    return execution.status in wanted and not (since is not None and _aware(execution.start) < since)


def _decide(execution: Execution, group: Sequence[Execution], *, explicit: bool) -> Decision:
    """Replay the group of ``execution`` (it, its original and their replays) once, or skip it and say why."""
    members = sorted(group, key=lambda e: (split_replay_name(e.name)[1], e.start))
    names = tuple(m.name for m in members)
    original = next((m for m in members if split_replay_name(m.name)[1] == 0), members[0])
    succeeded = [m for m in members if m.status == "SUCCEEDED"]
    running = [m for m in members if m.status in ("RUNNING", "PENDING_REDRIVE")]
    if explicit and execution.status not in FAILED_STATUSES and not succeeded and not running:
        return Decision(execution, "skip", f"status {execution.status} is not one replay handles", group=names)
    if succeeded:
        what = "succeeded" if succeeded[-1] is original else "already replayed successfully"
        return Decision(original, "skip", f"{what} ({succeeded[-1].name})", group=names)
    if running:
        return Decision(original, "skip", f"still running ({running[-1].name})", group=names)
    next_n = max(split_replay_name(m.name)[1] for m in members) + 1
    root = split_replay_name(original.name)[0]
    return Decision(original, "replay", new_name=replay_name(root, next_n), group=names)


# --------------------------------------------------------------------------- AWS side


def list_executions(sfn: Any, state_machine_arn: str, since: datetime | None) -> list[Execution]:
    """Every execution started at or after ``since`` (all when None); newest first as AWS lists them."""
    found: list[Execution] = []
    for page in sfn.get_paginator("list_executions").paginate(stateMachineArn=state_machine_arn):
        for summary in page["executions"]:
            execution = Execution.from_summary(summary)
            if since is not None and _aware(execution.start) < since:
                return found
            found.append(execution)
    return found


def _aware(when: datetime) -> datetime:
    return when if when.tzinfo else when.replace(tzinfo=UTC)


@dataclass
class Outcome:
    decision: Decision
    how: str = ""  # "restarted" | "redriven" | "would replay" | "skipped"
    arn: str | None = None  # the execution now running the replay
    note: str = ""  # e.g. why redrive fell back to restart
    plan: str = ""  # dry run: "redrive" | "restart"
    final_status: str | None = None
    error: str | None = None


@dataclass
class Summary:
    outcomes: list[Outcome] = field(default_factory=list)

    def count(self, how: str) -> int:
        return sum(1 for o in self.outcomes if o.how == how)

    @property
    def replayed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.how in ("restarted", "redriven")]

    @property
    def skipped(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.how == "skipped"]

    @property
    def still_failing(self) -> list[Outcome]:
        return [o for o in self.replayed if o.final_status in FAILED_STATUSES]

    @property
    def succeeded(self) -> list[Outcome]:
        return [o for o in self.replayed if o.final_status == "SUCCEEDED"]


def client_token(execution_arn: str, redrive_count: int) -> str:
    """Idempotency token of the next redrive of an execution: a retried request redrives once."""
    return hashlib.sha256(f"{execution_arn}#{redrive_count}".encode()).hexdigest()[:64]


def _restart(sfn: Any, state_machine_arn: str, decision: Decision, execution_input: str) -> str:
    assert decision.new_name is not None
    try:
        return str(
            sfn.start_execution(stateMachineArn=state_machine_arn, name=decision.new_name, input=execution_input)[
                "executionArn"
            ]
        )
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "ExecutionAlreadyExists":  # a concurrent replay won the name
            return f"{state_machine_arn.replace(':stateMachine:', ':execution:')}:{decision.new_name}"
        raise


def _redrive(sfn: Any, described: dict[str, Any]) -> tuple[bool, str]:
    """(redriven, why not). Never raises for "cannot be redriven": the caller restarts instead."""
    status = described.get("redriveStatus")
    if status == "NOT_REDRIVABLE":
        return False, f"not redrivable: {described.get('redriveStatusReason') or 'no reason given'}"
    arn = described["executionArn"]
    try:
        sfn.redrive_execution(executionArn=arn, clientToken=client_token(arn, int(described.get("redriveCount") or 0)))
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        if code in ("ExecutionNotRedrivable", "ValidationException") or exc.response.get("ResponseMetadata", {}).get(
            "HTTPStatusCode"
        ) in (404, 501):
            return False, f"RedriveExecution refused: {code} {error.get('Message', '')}".strip()
        raise
    except Exception as exc:  # noqa: BLE001  (an endpoint without the API, e.g. the local stack: say so, restart)
        return False, f"RedriveExecution is not available here ({type(exc).__name__}: {exc})"
    return True, ""


def _last_state(sfn: Any, execution_arn: str) -> str | None:
    """The state the execution entered last (its history read newest first, usually one page)."""
    for page in sfn.get_paginator("get_execution_history").paginate(executionArn=execution_arn, reverseOrder=True):
        for event in page.get("events", []):
            if str(event.get("type", "")).endswith("StateEntered"):
                return str((event.get("stateEnteredEventDetails") or {}).get("name"))
    return None


def redrive_can_succeed(sfn: Any, described: dict[str, Any]) -> tuple[bool, str]:
    """(whether a redrive can get the execution through, why): mode ``auto``'s choice."""
    if described.get("redriveStatus") == "NOT_REDRIVABLE":
        return False, f"not redrivable: {described.get('redriveStatusReason') or 'no reason given'}"
    state = _last_state(sfn, described["executionArn"])
    error = described.get("error") or described.get("status")
    if state in RECORDED_FAIL_STATES:
        return False, f"ended in {state} ({error}): the input is at fault, a redrive would fail again at once"
    return True, f"stopped at {state} ({error})" if state else f"stopped before any state ({error})"


def superseded(s3: Any, output_bucket: str, output_prefix: str, execution_input: str) -> str | None:
    """Why replaying this input is pointless (every object it names has a newer version that
    succeeded), or None. Objects the input names without a version (or that nothing orders
    against the latest record) are never superseded: a replay reads their current version."""
    import json

    from functions.common.batch import named_objects
    from functions.sink import records

    try:
        named = named_objects(json.loads(execution_input))
    except ValueError:
        return None
    reasons = []
    for source in named:
        if not source.get("version_id"):
            return None
        mine = records.Version(source["version_id"], source.get("sequencer"))
        latest = records.read_latest(s3, output_bucket, output_prefix, source)
        if (
            not latest
            or latest.get("status") != "SUCCEEDED"
            or records.compare(mine, records.Version.of(latest.get("source"))) != -1
        ):
            return None
        reasons.append(
            f"s3://{source['bucket']}/{source['key']} has a newer version ({latest['source'].get('version_id')}) that succeeded"
        )
    return "; ".join(reasons) if reasons else None


def run_replays(
    sfn: Any,
    state_machine_arn: str,
    decisions: Sequence[Decision],
    *,
    supersession: Callable[[str], str | None] | None = None,
    mode: str = "auto",
    dry_run: bool = False,
    wait: bool = True,
    timeout: float = 600.0,
    poll: float = 1.0,
    out: TextIO | None = None,  # default: sys.stderr at call time
) -> Summary:
    """Carry the decisions out, printing progress to ``out``; wait for the replays unless ``wait`` is False.

    ``supersession(execution input)``: why an execution is not worth replaying (:func:`superseded`), or None."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}")
    out = out if out is not None else sys.stderr
    summary = Summary()
    todo = [d for d in decisions if d.action == "replay"]
    for decision in decisions:
        if decision.action == "skip":
            summary.outcomes.append(Outcome(decision, "skipped", note=decision.reason))
    for index, decision in enumerate(todo, 1):
        described = sfn.describe_execution(executionArn=decision.execution.arn)
        stale = supersession(described.get("input") or "") if supersession is not None else None
        if stale:
            summary.outcomes.append(Outcome(decision, "skipped", note=stale))
            continue
        outcome = _replay_one(sfn, state_machine_arn, decision, described, mode=mode, dry_run=dry_run)
        summary.outcomes.append(outcome)
        if outcome.how != "would replay":
            print(
                f"[{index}/{len(todo)}] {outcome.how} {decision.execution.name} -> {(outcome.arn or '').rsplit(':', 1)[-1]}"
                + (f" ({outcome.note})" if outcome.note else ""),
                file=out,
                flush=True,
            )
    if wait and not dry_run:
        _wait(sfn, summary.replayed, timeout, poll, out)
    return summary


def _replay_one(
    sfn: Any, state_machine_arn: str, decision: Decision, described: dict[str, Any], *, mode: str, dry_run: bool
) -> Outcome:
    """Redrive or restart one execution as ``mode`` says (or, in a dry run, say which it would)."""
    if dry_run and mode != "auto":
        return Outcome(decision, "would replay", plan="redrive" if mode == "redrive" else "restart")
    outcome = Outcome(decision)
    try_redrive = mode == "redrive"
    if mode == "auto":
        try_redrive, why = redrive_can_succeed(sfn, described)
        if dry_run:
            return Outcome(decision, "would replay", note=why, plan="redrive" if try_redrive else "restart")
        outcome.note = why
    if try_redrive:
        redriven, refused = _redrive(sfn, described)
        if redriven:
            outcome.how, outcome.arn = "redriven", decision.execution.arn
        else:
            outcome.note = f"{refused}; restarted instead"
    if not outcome.how:
        outcome.arn = _restart(sfn, state_machine_arn, decision, described["input"])
        outcome.how = "restarted"
    return outcome


def _wait(sfn: Any, outcomes: list[Outcome], timeout: float, poll: float, out: TextIO) -> None:
    deadline = time.monotonic() + timeout
    pending = list(outcomes)
    last_report = -1
    # A redriven execution may still show its old status for a moment: only a started replay counts.
    while pending and time.monotonic() < deadline:
        for outcome in list(pending):
            described = sfn.describe_execution(executionArn=outcome.arn)
            if described["status"] in ("RUNNING", "PENDING_REDRIVE"):
                continue
            outcome.final_status = described["status"]
            outcome.error = described.get("error")
            pending.remove(outcome)
        done = len(outcomes) - len(pending)
        if done != last_report and outcomes:
            print(f"waiting: {done}/{len(outcomes)} replays finished", file=out, flush=True)
            last_report = done
        if pending:
            time.sleep(poll)
    for outcome in pending:
        outcome.final_status = "RUNNING"


def format_summary(summary: Summary, dry_run: bool = False) -> str:
    """The closing report: replayed, skipped and why, still failing."""
    lines: list[str] = []
    if dry_run:
        would = [o for o in summary.outcomes if o.how == "would replay"]
        lines.append(f"would replay {len(would)} execution(s):")
        lines += [
            f"  {o.decision.execution.name}  {o.decision.execution.status}  -> "
            + ("redrive (same execution)" if o.plan == "redrive" else f"restart as {o.decision.new_name}")
            + (f"  ({o.note})" if o.note else "")
            for o in would
        ]
    else:
        lines.append(
            f"replayed {len(summary.replayed)} execution(s): {len(summary.succeeded)} succeeded, "
            f"{len(summary.still_failing)} still failing, "
            f"{sum(1 for o in summary.replayed if o.final_status in (None, 'RUNNING'))} not finished"
        )
        for o in summary.replayed:
            lines.append(
                f"  {o.decision.execution.name} -> {o.arn.rsplit(':', 1)[-1] if o.arn else '-'}  {o.how}  "
                f"{o.final_status or 'started'}{'  ' + o.error if o.error else ''}{'  (' + o.note + ')' if o.note else ''}"
            )
    skipped = summary.skipped
    lines.append(f"skipped {len(skipped)}:")
    lines += [f"  {o.decision.execution.name}  {o.note}" for o in skipped]
    if not dry_run and summary.still_failing:
        lines.append("still failing:")
        lines += [f"  {o.decision.execution.name}  {o.error or o.final_status}" for o in summary.still_failing]
    return "\n".join(lines)


def replay(
    sfn: Any,
    state_machine_arn: str,
    *,
    since: timedelta | None = timedelta(hours=24),
    statuses: Sequence[str] = FAILED_STATUSES,
    executions: Sequence[str] = (),
    mode: str = "auto",
    dry_run: bool = False,
    wait: bool = True,
    timeout: float = 600.0,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
    out: TextIO | None = None,  # default: sys.stderr at call time
    supersession: Callable[[str], str | None] | None = None,
) -> Summary:
    """List, plan and run: what ``inferpipe replay`` does."""
    cutoff = now() - since if since is not None else None
    listing_since = None if executions else cutoff  # explicit ARNs may be older than --since
    listed = list_executions(sfn, state_machine_arn, listing_since)
    decisions = plan_replays(listed, statuses=statuses, since=cutoff, only=executions or None)
    return run_replays(
        sfn,
        state_machine_arn,
        decisions,
        supersession=supersession,
        mode=mode,
        dry_run=dry_run,
        wait=wait,
        timeout=timeout,
        out=out,
    )


def replay_target(target: Any, **options: Any) -> Summary:
    """``replay`` of a deployment's executions (``options`` as for ``replay``); an input whose object has a
    newer record in the output bucket is superseded, so it is not replayed."""
    s3, output = target.client("s3"), target.resources.buckets["output"]
    prefix = target.resources.settings["OUTPUT_PREFIX"]
    return replay(
        target.client("stepfunctions"),
        target.state_machine_arn,
        supersession=lambda execution_input: superseded(s3, output, prefix, execution_input),
        **options,
    )


__all__ = [
    "FAILED_STATUSES",
    "Decision",
    "Execution",
    "Outcome",
    "Summary",
    "client_token",
    "format_summary",
    "list_executions",
    "parse_duration",
    "parse_statuses",
    "plan_replays",
    "redrive_can_succeed",
    "replay",
    "replay_name",
    "replay_target",
    "run_replays",
    "split_replay_name",
    "superseded",
]
