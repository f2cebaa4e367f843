"""RedriveExecution for the local stack (moto 5.2 has no such action), with AWS's documented rules.

What Step Functions documents, and what this module does the same way:

* "Restarts unsuccessful executions of Standard workflows that didn't complete successfully in the
  last 14 days. These include failed, aborted, or timed out executions. [...] it continues the failed
  execution from the unsuccessful step and uses the same input. Step Functions preserves the results
  and execution history of the successful steps, and doesn't rerun these steps [...] Redriven
  executions use the same state machine definition and execution ARN as the original execution
  attempt." (https://docs.aws.amazon.com/step-functions/latest/apireference/API_RedriveExecution.html)
  The unsuccessful step is the top-level state whose ``…StateEntered`` event has no ``…StateExited``
  (https://docs.aws.amazon.com/step-functions/latest/dg/redrive-executions.html); it runs again on
  the input it was entered with, the history grows an ``ExecutionRedriven`` event and goes on.
* ``DescribeExecution`` gains ``redriveCount`` (0 until redriven), ``redriveDate``, ``redriveStatus``
  (REDRIVABLE or NOT_REDRIVABLE) and ``redriveStatusReason``, with the reasons the API reference
  lists: "Execution is RUNNING and cannot be redriven.", "Execution is SUCCEEDED and cannot be
  redriven.", "Execution history event limit exceeded." (25,000 events, the service quota) and
  "Execution redrivable period exceeded." (14 days after it stopped).
* RedriveExecution answers ``ExecutionDoesNotExist``, or ``ExecutionNotRedrivable`` with that reason
  (the errors botocore's model declares), and ``{"redriveDate"}``. A repeated ``clientToken`` does not
  redrive twice: the answer is the first call's.

* "For redrives of Inline Map states, Step Functions reschedules and redrives only the iterations
  [...] that failed or aborted" (API_RedriveExecution): while a Map state runs, each iteration
  that succeeds keeps its output (:func:`_eval_iteration`); when the execution is redriven into
  that Map, an iteration with a kept output from an earlier attempt is not run again, it gives that
  output, and only the others get ``MapIterationStarted`` events. The kept outputs are dropped when
  their Map state completes (:func:`_eval_map`).

Not as AWS does: Parallel branches re-run whole; iterations are told apart by their Map state's
name and index, so a Map inside another Map's iterator re-runs whole too;
``$$.Execution.RedriveCount`` is not in the context object.

Reachable as ``aws stepfunctions redrive-execution --endpoint-url …`` and through boto3: it is an
action of moto's Step Functions responses, installed by :func:`install` (which
:func:`inferpipe.local.patches.install` calls).
"""

from __future__ import annotations

import copy
import datetime
import functools
import json
import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from moto.stepfunctions.parser.asl.component.program.program import Program

from inferpipe.local.patches import Patches

#: Executions that stopped longer ago than this cannot be redriven.
REDRIVABLE_PERIOD = datetime.timedelta(days=14)
#: Step Functions' quota of history events per execution: an execution at it cannot grow.
HISTORY_EVENT_LIMIT = 25_000
REDRIVABLE, NOT_REDRIVABLE = "REDRIVABLE", "NOT_REDRIVABLE"
_UNSUCCESSFUL = ("FAILED", "TIMED_OUT", "ABORTED")


@dataclass
class Redrives:
    """What Step Functions keeps about an execution's redrives."""

    count: int = 0
    date: datetime.datetime | None = None
    token: str | None = None


_lock = threading.Lock()
_redrives: dict[str, Redrives] = {}
#: Outputs of the Map iterations that succeeded: execution ARN -> (Map state, index) -> (the
#: redrive count of the attempt that ran it, its output).
_iterations: dict[str, dict[tuple[str, int], tuple[int, Any]]] = {}
_patches = Patches()


@functools.cache
def _not_redrivable_error() -> type[Exception]:
    from moto.core.exceptions import AWSError

    class ExecutionNotRedrivable(AWSError):
        TYPE = "ExecutionNotRedrivable"
        STATUS = 400

    return ExecutionNotRedrivable


def _not_redrivable(reason: str) -> Exception:
    return _not_redrivable_error()(reason)


def _status(execution: Any) -> str:
    status = execution.exec_status
    return str(getattr(status, "value", status))


def _history_length(execution: Any) -> int:
    """How many history events the execution has, without copying them (DescribeExecution asks often)."""
    env = getattr(execution.exec_worker, "env", None)
    if env is None:
        return 0
    manager = env.event_manager
    with manager._mutex:
        return len(manager._history_event_list)


def redrive_status(execution: Any, now: datetime.datetime | None = None) -> tuple[str, str | None]:
    """(REDRIVABLE or NOT_REDRIVABLE, the reason when not), as DescribeExecution reports it."""
    now = now or datetime.datetime.now(tz=datetime.UTC)
    status = _status(execution)
    if status == "RUNNING":
        return NOT_REDRIVABLE, "Execution is RUNNING and cannot be redriven."
    if status == "SUCCEEDED":
        return NOT_REDRIVABLE, "Execution is SUCCEEDED and cannot be redriven."
    if status not in _UNSUCCESSFUL:
        return NOT_REDRIVABLE, f"Execution is {status} and cannot be redriven."
    if str(getattr(execution.sm_type, "value", execution.sm_type)) != "STANDARD":
        return NOT_REDRIVABLE, "Execution of an EXPRESS state machine cannot be redriven."
    if execution.stop_date is not None and now - execution.stop_date > REDRIVABLE_PERIOD:
        return NOT_REDRIVABLE, "Execution redrivable period exceeded."
    if _history_length(execution) >= HISTORY_EVENT_LIMIT:
        return NOT_REDRIVABLE, "Execution history event limit exceeded."
    return REDRIVABLE, None


def resume_point(
    definition: Mapping[str, Any], events: Sequence[Mapping[str, Any]], execution_input: Any
) -> tuple[str, Any]:
    """The unsuccessful step and the input it was entered with: the top-level state entered last and
    never exited (states of a Map or Parallel inside it are told apart by counting their own
    entries and exits; an earlier redrive starts the count anew). The start state with the
    execution's input when no state was entered."""
    top = set(definition["States"])
    current: tuple[str, Any] | None = None
    inner: Counter[str] = Counter()
    for event in events:
        kind = str(event.get("type", ""))
        if kind == "ExecutionRedriven":  # an earlier redrive: its attempt enters the open state anew
            current, inner = None, Counter()
        elif kind.endswith("StateEntered"):
            details = event.get("stateEnteredEventDetails") or {}
            name = details.get("name")
            if current is None and name in top:
                raw = details.get("input")
                current, inner = (str(name), json.loads(raw) if isinstance(raw, str) else raw), Counter()
            elif current is not None:
                inner[str(name)] += 1
        elif kind.endswith("StateExited") and current is not None:
            name = (event.get("stateExitedEventDetails") or {}).get("name")
            if inner[str(name)] > 0:
                inner[str(name)] -= 1
            elif name == current[0]:
                current = None
    if current is None:
        return str(definition["StartAt"]), execution_input
    return current


def _worker(execution: Any, events: list[dict[str, Any]], state: str, state_input: Any, count: int) -> Any:
    """An execution worker that goes on with ``execution`` from ``state``, after its history."""
    from moto.stepfunctions.parser.api import ExecutionRedrivenEventDetails, HistoryEventType
    from moto.stepfunctions.parser.asl.component.eval_component import EvalComponent
    from moto.stepfunctions.parser.asl.eval.event.event_detail import EventDetails
    from moto.stepfunctions.parser.asl.eval.event.event_manager import EventHistoryContext
    from moto.stepfunctions.parser.backend.execution_worker import ExecutionWorker

    class RedriveWorker(ExecutionWorker):
        def _execution_logic(self) -> None:
            program = cast("Program", self._get_evaluation_entrypoint())  # what moto's parser returns
            env = self._get_evaluation_environment()
            self.env = env
            manager = env.event_manager
            with manager._mutex:
                history: list[Any] = copy.deepcopy(events)  # the saved events, as plain dicts
                manager._history_event_list.extend(history)
                manager._event_id_gen._next_id = max((int(e["id"]) for e in events), default=0) + 1
            # moto declares it Final; a redriven execution continues after the events it already has
            previous = manager._event_id_gen._next_id - 1
            env.event_history_context = EventHistoryContext(previous_event_id=previous)  # type: ignore[misc]
            manager.add_event(
                context=env.event_history_context,
                event_type=HistoryEventType.ExecutionRedriven,
                # moto's EventDetails lists every other kind of event, all required, and not this one
                event_details=cast(
                    "EventDetails",
                    {"executionRedrivenEventDetails": ExecutionRedrivenEventDetails(redriveCount=count)},
                ),
            )
            env.states.reset(input_value=state_input)
            # Program.eval, but from the unsuccessful step instead of StartAt.
            env.next_state_name = state
            thread = threading.Thread(target=EvalComponent.eval, args=(program, env), daemon=True)
            thread.start()
            thread.join(timeout=program.timeout_seconds.timeout_seconds if program.timeout_seconds else None)
            if thread.is_alive():
                env.set_timed_out()
            self._execution_communication.terminated()

    base = execution._get_start_execution_worker()
    return RedriveWorker(
        evaluation_details=base._evaluation_details,
        exec_comm=base._execution_communication,
        cloud_watch_logging_session=base._cloud_watch_logging_session,
        activity_store=base._activity_store,
    )


def _execution_arn(env: Any) -> str | None:
    try:
        return str(env.states.context_object.context_object_data["Execution"]["Id"])
    except (AttributeError, KeyError, TypeError):
        return None


def _eval_iteration(self: Any, env: Any, job: Any) -> None:
    """IterationWorker._eval_job: an iteration an earlier attempt completed gives its output again."""
    from moto.stepfunctions.parser.asl.component.state.exec.state_map.iteration.iteration_worker import IterationWorker

    arn = _execution_arn(env)
    where = (str(self._work_name), int(job.job_index))
    with _lock:
        attempt = _redrives[arn].count if arn in _redrives else 0
        kept = _iterations.get(arn or "", {}).get(where)
    if kept is not None and kept[0] < attempt:
        job.job_output = copy.deepcopy(kept[1])
        return
    _patches.original(IterationWorker, "_eval_job")(self, env, job)
    if arn is not None and not isinstance(job.job_output, Exception):
        with _lock:
            _iterations.setdefault(arn, {})[where] = (attempt, copy.deepcopy(job.job_output))


def _eval_map(self: Any, env: Any) -> None:
    """StateMap._eval_execution: once the Map completes, its iterations' kept outputs are dropped."""
    from moto.stepfunctions.parser.asl.component.state.exec.state_map.state_map import StateMap

    _patches.original(StateMap, "_eval_execution")(self, env)
    arn = _execution_arn(env)
    with _lock:
        kept = _iterations.get(arn or "")
        if kept is not None:
            for where in [w for w in kept if w[0] == self.name]:
                del kept[where]
            if not kept:
                _iterations.pop(arn or "", None)


def redrive(backend: Any, execution_arn: str, client_token: str | None = None) -> datetime.datetime:
    """Redrive one execution of ``backend`` (moto's Step Functions backend); its redriveDate."""
    execution = backend.describe_execution(execution_arn)  # ExecutionDoesNotExist, InvalidArn
    with _lock:
        record = _redrives.setdefault(execution.exec_arn, Redrives())
        if client_token is not None and client_token == record.token and record.date is not None:
            return record.date  # the same request again: redriven once
        status, reason = redrive_status(execution)
        if status != REDRIVABLE:
            raise _not_redrivable(str(reason))
        events = execution.to_history_output()["events"]
        state, state_input = resume_point(json.loads(execution.state_machine.definition), events, execution.input_data)
        record.count += 1
        record.date = datetime.datetime.now(tz=datetime.UTC)
        record.token = client_token
        worker = _worker(execution, events, state, state_input, record.count)
        from moto.stepfunctions.parser.api import ExecutionStatus

        execution.exec_worker = worker
        execution.exec_status = ExecutionStatus.RUNNING
        execution.stop_date = execution.error = execution.cause = execution.output = None
        worker.start()
        return record.date


def record_of(execution_arn: str) -> dict[str, Any] | None:
    """What is kept about an execution's redrives and its Map iterations that succeeded, as plain
    data (for the state snapshot)."""
    with _lock:
        record = _redrives.get(execution_arn)
        kept = _iterations.get(execution_arn)
        if record is None and not kept:
            return None
        return {
            "count": record.count if record else 0,
            "date": record.date if record else None,
            "token": record.token if record else None,
            "iterations": copy.deepcopy(kept or {}),
        }


def restore_record(execution_arn: str, saved: Mapping[str, Any] | None) -> None:
    """Put back what :func:`record_of` gave (a restarted stack keeps redriveCount and redriveDate)."""
    if saved:
        with _lock:
            _redrives[execution_arn] = Redrives(int(saved.get("count") or 0), saved.get("date"), saved.get("token"))
            if saved.get("iterations"):  # the Map iterations that succeeded: a redrive does not run them again
                _iterations[execution_arn] = dict(saved["iterations"])


def describe_fields(execution: Any) -> dict[str, Any]:
    """The redrive fields DescribeExecution adds for ``execution``."""
    with _lock:
        record = _redrives.get(execution.exec_arn, Redrives())
    status, reason = redrive_status(execution)
    fields: dict[str, Any] = {"redriveCount": record.count, "redriveStatus": status}
    if record.date is not None:
        fields["redriveDate"] = record.date
    if reason is not None:
        fields["redriveStatusReason"] = reason
    return fields


def _redrive_action(self: Any) -> Any:
    """StepFunctionResponse.redrive_execution: the RedriveExecution action."""
    from moto.core.responses import ActionResult

    date = redrive(self.stepfunction_backend, self._get_param("executionArn"), self._get_param("clientToken"))
    return ActionResult({"redriveDate": date})


def _describe_with_redrive(self: Any) -> Any:
    """StepFunctionResponse.describe_execution, with the redrive fields."""
    from moto.stepfunctions.responses import StepFunctionResponse

    result = _patches.original(StepFunctionResponse, "describe_execution")(self)
    execution = self.stepfunction_backend.describe_execution(self._get_param("executionArn"))
    result.result.update(describe_fields(execution))  # ActionResult keeps the response dict
    return result


def install() -> None:
    from moto.stepfunctions.parser.asl.component.state.exec.state_map.iteration.iteration_worker import IterationWorker
    from moto.stepfunctions.parser.asl.component.state.exec.state_map.state_map import StateMap
    from moto.stepfunctions.responses import StepFunctionResponse

    with _lock:
        if _patches.applied:
            return
        if "redrive_execution" in StepFunctionResponse.__dict__:
            raise RuntimeError("moto now has RedriveExecution: drop inferpipe/local/redrive.py")
        _patches.apply(StepFunctionResponse, "redrive_execution", _redrive_action)
        _patches.apply(StepFunctionResponse, "describe_execution", _describe_with_redrive)
        _patches.apply(IterationWorker, "_eval_job", _eval_iteration)
        _patches.apply(StateMap, "_eval_execution", _eval_map)


def uninstall() -> None:
    with _lock:
        _patches.undo()
        _redrives.clear()
        _iterations.clear()


__all__ = [
    "HISTORY_EVENT_LIMIT",
    "REDRIVABLE_PERIOD",
    "Redrives",
    "describe_fields",
    "install",
    "record_of",
    "redrive",
    "redrive_status",
    "restore_record",
    "resume_point",
    "uninstall",
]
