"""The local stack's state on disk: it survives ``local down``/``up`` and a crash.

What is kept, in ``<state folder>/snapshot.pickle``:
- moto's S3 (buckets, every object version: models and aliases, uploads, records), DynamoDB
  (tables and items), SQS (queues and their messages) and CloudWatch Logs (groups, streams,
  events). These are moto's own backend objects, pickled;
- every execution of every state machine: its fields and its whole event history, and the
  redrives it had.

What is not kept, because :func:`inferpipe.local.provision.provision` makes it again from the
stack's definition at every start: functions, roles, rules, topics and their subscriptions, the
state machines themselves, the pipe.

**When.** A background thread writes a snapshot every :data:`INTERVAL_S` seconds while requests
have come in since the last one, and once more when the stack stops. So a crash loses at most the
last few seconds. The write is atomic: a temporary file, then ``os.replace``.

**Executions that were running.** An execution still RUNNING when the stack stopped cannot go on:
its Lambda invocations and timers died with the process. It comes back ABORTED, with the cause
"the local stack stopped while it ran". Like any aborted execution, it can be redriven (Redrive
in the console, or ``inferpipe replay``), and its status change event goes out, so the status
recorder writes its failure records as for any other end. A real Step Functions would have
carried on; the local stack says so instead of pretending.

``inferpipe local up --fresh`` deletes the snapshot first.
"""

from __future__ import annotations

import copyreg
import logging
import os
import pickle
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from moto.stepfunctions.parser.backend.execution import Execution as ParserExecution

SNAPSHOT_FILE = "snapshot.pickle"
#: Seconds between snapshots while requests come in.
INTERVAL_S = 3.0
#: moto's backends kept whole (by the name moto.backends.get_backend takes).
SERVICES = ("s3", "dynamodb", "sqs", "logs")
FORMAT = 1
ABORTED_CAUSE = "the local stack stopped while it ran (its invocations died with it); redrive it to go on"
_LOG = logging.getLogger("inferpipe.local.persistence")


def _register_reducers() -> None:
    """moto's SQS queues hold a lock each: pickled as "a new lock" (a restored queue gets its own)."""
    copyreg.pickle(type(threading.RLock()), lambda _lock: (threading.RLock, ()))
    copyreg.pickle(type(threading.Lock()), lambda _lock: (threading.Lock, ()))


def _status(execution: Any) -> str:
    return str(getattr(execution.exec_status, "value", execution.exec_status))


def _parser_executions(machine: Any) -> list[ParserExecution]:
    """A state machine's executions: moto types them as its classic backend's, the parser backend keeps its own."""
    return cast("list[ParserExecution]", machine.executions)


def _executions() -> list[dict[str, Any]]:
    """Every execution of the parser backend, as plain data."""
    from moto.stepfunctions.parser.models import stepfunctions_parser_backends

    from inferpipe.local import redrive

    found = []
    for account, regions in stepfunctions_parser_backends.items():
        for region, backend in regions.items():
            for machine in backend.state_machines:
                for execution in _parser_executions(machine):
                    worker = execution.exec_worker
                    env = getattr(worker, "env", None)
                    events = env.event_manager.get_event_history() if env is not None else []
                    found.append(
                        {
                            "account": account,
                            "region": region,
                            "state_machine_arn": execution.state_machine.arn,
                            "name": execution.name,
                            "exec_arn": execution.exec_arn,
                            "role_arn": execution.role_arn,
                            "sm_type": execution.sm_type,
                            "start_date": execution.start_date,
                            "stop_date": execution.stop_date,
                            "input": execution.execution_input,
                            "status": _status(execution),
                            "output": execution.output,
                            "error": execution.error,
                            "cause": execution.cause,
                            "events": events,
                            "redrives": redrive.record_of(execution.exec_arn),
                        }
                    )
    return found


def snapshot(path: Path, attempts: int = 5) -> bool:
    """Write the stack's state to ``path`` (atomically); False when it kept changing under the copy."""
    from moto.backends import get_backend

    _register_reducers()
    for _ in range(attempts):
        try:
            data = pickle.dumps(
                {
                    "format": FORMAT,
                    "written": datetime.now(UTC),
                    "backends": {name: dict(get_backend(name)) for name in SERVICES},  # type: ignore[call-overload]
                    "executions": _executions(),
                },
                protocol=pickle.HIGHEST_PROTOCOL,
            )
        except RuntimeError:  # "dictionary changed size during iteration": a request landed meanwhile
            time.sleep(0.05)
            continue
        temporary = path.with_suffix(".tmp")
        temporary.write_bytes(data)
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
        return True
    _LOG.warning("state snapshot skipped: the stack kept changing during %d attempts", attempts)
    return False


def load(path: Path) -> dict[str, Any] | None:
    """The snapshot at ``path``, or None when there is none or it cannot be read (then the stack
    starts empty and says why)."""
    if not path.exists():
        return None
    try:
        state = pickle.loads(path.read_bytes())
    except Exception as exc:  # noqa: BLE001 (a torn or foreign file must not stop the stack)
        _LOG.warning("state snapshot %s unreadable (%s: %s): starting empty", path, type(exc).__name__, exc)
        return None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        _LOG.warning("state snapshot %s has another format: starting empty", path)
        return None
    return state


def restore_backends(state: dict[str, Any]) -> None:
    """Put the snapshot's S3, DynamoDB, SQS and Logs state in place (before provisioning converges the rest)."""
    from moto.backends import get_backend

    for name, accounts in state["backends"].items():
        live = get_backend(name)
        live.clear()
        live.update(accounts)
    # S3 also keeps which account owns each bucket name, beside its backends (CreateBucket checks it)
    from moto.s3.models import s3_backends

    for account, partitions in state["backends"].get("s3", {}).items():
        for partition, backend in dict(partitions).items():
            for bucket in backend.buckets:
                s3_backends.bucket_accounts[bucket] = (partition, account)


def restore_executions(state: dict[str, Any]) -> int:
    """Re-create the snapshot's executions on the provisioned state machines; how many."""
    from moto.stepfunctions.parser.api import ExecutionStatus
    from moto.stepfunctions.parser.asl.eval.event.event_manager import EventManager
    from moto.stepfunctions.parser.backend.execution import Execution
    from moto.stepfunctions.parser.models import stepfunctions_parser_backends

    from inferpipe.local import redrive, status_events

    restored = 0
    for saved in state["executions"]:
        backend = stepfunctions_parser_backends[saved["account"]][saved["region"]]
        machine = next((m for m in backend.state_machines if m.arn == saved["state_machine_arn"]), None)
        if machine is None or any(e.exec_arn == saved["exec_arn"] for e in _parser_executions(machine)):
            continue  # its state machine is gone, or it is there already
        execution = Execution(
            name=saved["name"],
            sm_type=saved["sm_type"],
            role_arn=saved["role_arn"],
            exec_arn=saved["exec_arn"],
            account_id=saved["account"],
            region_name=saved["region"],
            state_machine=machine,  # type: ignore[arg-type]  # moto's parser backend keeps its classic StateMachine
            start_date=saved["start_date"],
            cloud_watch_logging_session=None,
            activity_store={},
            input_data=saved["input"],
        )
        events = list(saved["events"])
        status, stop_date, error, cause = saved["status"], saved["stop_date"], saved["error"], saved["cause"]
        if status == "RUNNING":
            status, stop_date, error, cause = "ABORTED", datetime.now(UTC), "States.Runtime", ABORTED_CAUSE
            events.append(
                {
                    "timestamp": stop_date,
                    "type": "ExecutionAborted",
                    "id": max((int(e["id"]) for e in events), default=0) + 1,
                    "previousEventId": int(events[-1]["id"]) if events else 0,
                    "executionAbortedEventDetails": {"error": error, "cause": cause},
                }
            )
        manager = EventManager()
        manager._history_event_list.extend(events)
        manager._event_id_gen._next_id = max((int(e["id"]) for e in events), default=0) + 1
        execution.exec_worker = _Stopped(manager)  # type: ignore[assignment]  # a stand-in: the history, nothing to run
        execution.exec_status = ExecutionStatus(status)
        execution.stop_date, execution.output, execution.error, execution.cause = (
            stop_date,
            saved["output"],
            error,
            cause,
        )
        _parser_executions(machine).append(execution)
        redrive.restore_record(saved["exec_arn"], saved.get("redrives"))
        restored += 1
        if saved["status"] == "RUNNING":  # it ended now: its status change goes out, as any end does
            status_events.emit(execution)
    return restored


class _Stopped:
    """The worker of an execution that ended before the stack restarted: its history, nothing to run."""

    def __init__(self, manager: Any) -> None:
        self.env = _Env(manager)

    def stop(self, stop_date: Any, error: Any, cause: Any) -> None:  # StopExecution of an ended execution: nothing runs
        return None


class _Env:
    def __init__(self, manager: Any) -> None:
        self.event_manager = manager


class Snapshotter:
    """Writes snapshots in the background while ``changed()`` says requests came in."""

    def __init__(self, path: Path, changed: Callable[[], int], interval: float = INTERVAL_S) -> None:
        self.path, self._changed, self.interval = path, changed, interval
        self._stop = threading.Event()
        self._seen = -1
        self._thread = threading.Thread(target=self._run, name="inferpipe-snapshot", daemon=True)

    def start(self) -> Snapshotter:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.write_if_changed()

    def write_if_changed(self) -> None:
        count = self._changed()
        if count != self._seen:
            try:
                if snapshot(self.path):
                    self._seen = count
            except Exception:  # noqa: BLE001 (a failed snapshot must not stop the stack; the next one retries)
                _LOG.exception("state snapshot failed")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self._seen = -1
        self.write_if_changed()


__all__ = [
    "ABORTED_CAUSE",
    "INTERVAL_S",
    "SERVICES",
    "SNAPSHOT_FILE",
    "Snapshotter",
    "load",
    "restore_backends",
    "restore_executions",
    "snapshot",
]
