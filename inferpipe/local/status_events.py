"""Step Functions' "Execution Status Change" events for the local stack (moto emits none).

Step Functions sends one to the account's default event bus each time a Standard workflow's
execution changes status: RUNNING (at the start, and again when it is redriven), then SUCCEEDED,
FAILED, TIMED_OUT or ABORTED; Express workflows send none
(https://docs.aws.amazon.com/step-functions/latest/dg/cw-events.html;
https://docs.aws.amazon.com/eventbridge/latest/ref/events-ref-states.html: source ``aws.states``,
detail-type ``Step Functions Execution Status Change``, delivered best effort). The detail holds
the execution's ARN, its state machine's, its name and status, ``startDate`` and ``stopDate``
(milliseconds since the epoch, ``stopDate`` null while running), ``input`` and ``output`` (JSON
text, ``output`` null unless it succeeded), ``inputDetails``/``outputDetails``, and ``error`` and
``cause`` (null unless it failed). Rules on the default bus match them as they match S3's events.

Installed by :func:`inferpipe.local.patches.install`: :func:`install` wraps moto's
``ExecutionWorker.start`` (RUNNING) and ``BaseExecutionWorkerCommunication.terminated`` (the final status).
"""

from __future__ import annotations

import copy
import datetime
import json
import logging
import threading
import uuid
from typing import Any, cast

from inferpipe.local.patches import Patches

SOURCE = "aws.states"
DETAIL_TYPE = "Step Functions Execution Status Change"

_LOG = logging.getLogger("inferpipe.local.status_events")
_lock = threading.Lock()
_patches = Patches()
#: Executions between their final status and the end of its event's sending: a client can see the
#: status before the event has reached its targets, so waiters (tests, ``flush_logs``) wait on this.
_sending = threading.Condition()
_in_flight = 0


def _millis(when: datetime.datetime | None) -> int | None:
    return None if when is None else int(when.timestamp() * 1000)


def _status(execution: Any) -> str:
    return str(getattr(execution.exec_status, "value", execution.exec_status))


def event_of(execution: Any) -> dict[str, Any]:
    """The status change event of ``execution`` as it is now."""
    status = _status(execution)
    detail = {
        "executionArn": execution.exec_arn,
        "stateMachineArn": execution.state_machine_arn,
        "name": execution.name,
        "status": status,
        "startDate": _millis(execution.start_date),
        "stopDate": None if status == "RUNNING" else _millis(execution.stop_date),
        "input": json.dumps(execution.input_data, separators=(",", ":")),
        "output": json.dumps(execution.output, separators=(",", ":")) if status == "SUCCEEDED" else None,
        "inputDetails": {"included": True},
        "outputDetails": {"included": True} if status == "SUCCEEDED" else None,
        "error": execution.error if status != "SUCCEEDED" else None,
        "cause": execution.cause if status != "SUCCEEDED" else None,
    }
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": DETAIL_TYPE,
        "source": SOURCE,
        "account": execution.account_id,
        # as moto keeps an event's time; its targets render it
        "time": datetime.datetime.now(tz=datetime.UTC).timestamp(),
        "region": execution.region_name,
        "resources": [execution.exec_arn],
        "detail": detail,
    }


def emit(execution: Any) -> None:
    """Send ``execution``'s status change to the rules of its account's default bus (never raises:
    AWS delivers these best effort, and an execution never fails for its event)."""
    if str(getattr(execution.sm_type, "value", execution.sm_type)) != "STANDARD":
        return
    try:
        from moto.core.utils import unix_time
        from moto.events.models import events_backends
        from moto.events.utils import EventMessageType

        bus = events_backends[execution.account_id][execution.region_name].event_buses.get("default")
        if bus is None:
            return
        # moto's PutEvents stamps each event with its ingestion time (targets' InputTransformer may read it).
        event = {**event_of(execution), "ingestion-time": unix_time()}
        for rule in list(bus.rules.values()):
            rule.send_to_targets(cast("EventMessageType", copy.deepcopy(event)))  # moto's TypedDict of an event
    except Exception:  # noqa: BLE001 (best effort, as in AWS)
        _LOG.exception("could not send the status change event of %s", getattr(execution, "exec_arn", "?"))


def _start(self: Any) -> None:
    from moto.stepfunctions.parser.backend.execution_worker import ExecutionWorker

    _patches.original(ExecutionWorker, "start")(self)
    execution = getattr(self._execution_communication, "execution", None)
    if execution is not None:
        emit(execution)


def _terminated(self: Any) -> None:
    from moto.stepfunctions.parser.backend.execution import BaseExecutionWorkerCommunication

    global _in_flight
    with _sending:
        _in_flight += 1
    try:
        _patches.original(BaseExecutionWorkerCommunication, "terminated")(self)
        emit(self.execution)
    finally:
        with _sending:
            _in_flight -= 1
            _sending.notify_all()


def wait_until_sent(timeout: float) -> bool:
    """Wait until every execution that has ended has sent its final status event; True if so."""
    with _sending:
        return _sending.wait_for(lambda: _in_flight == 0, timeout)


def install() -> None:
    from moto.stepfunctions.parser.backend.execution import BaseExecutionWorkerCommunication
    from moto.stepfunctions.parser.backend.execution_worker import ExecutionWorker

    with _lock:
        if not _patches.applied:
            _patches.apply(ExecutionWorker, "start", _start)
            _patches.apply(BaseExecutionWorkerCommunication, "terminated", _terminated)


def uninstall() -> None:
    with _lock:
        _patches.undo()


__all__ = ["DETAIL_TYPE", "SOURCE", "emit", "event_of", "install", "uninstall", "wait_until_sent"]
