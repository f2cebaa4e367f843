"""EventBridge rules deliver to state machines and Lambda functions, as EventBridge does.

The moto gap bridged here: moto's ``Rule.send_to_targets`` raises NotImplementedError for a
``states`` target (and S3 swallows that silently). :func:`install` replaces it: a state machine
target starts an execution (input: the event, or the target's Input/InputPath/InputTransformer),
a Lambda target is invoked asynchronously (:func:`inferpipe.local.lambda_service.invoke_async`),
and every other target goes to moto's own code. A failure to start is logged, kept in
:func:`delivery_failures` and, when the target has a dead-letter queue, sent there.

Also: moto delivers events through DISABLED rules (this does not), and gives every S3 event the
same ``sequencer`` (here each one gets a greater one, as S3 does).
"""

from __future__ import annotations

import collections
import copy
import json
import logging
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from inferpipe.local import lambda_service
from inferpipe.local.iam_enforcement import trigger_denied
from inferpipe.local.patches import Patches

_LOG = logging.getLogger("inferpipe.local.event_delivery")

_lock = threading.Lock()
_patches = Patches()


@dataclass(frozen=True)
class DeliveryFailure:
    """An event a rule could not deliver to a state machine target."""

    rule_arn: str
    target_id: str
    target_arn: str
    event_id: str
    error: str
    dead_letter_arn: str | None
    dead_lettered: bool
    at: str


_failures: collections.deque[DeliveryFailure] = collections.deque(maxlen=1000)


def delivery_failures() -> list[DeliveryFailure]:
    """Events that did not start an execution, oldest first."""
    with _lock:
        return list(_failures)


def _is_state_machine(arn: str) -> bool:
    parts = arn.split(":", 6)
    return len(parts) == 7 and parts[2] == "states" and parts[5] == "stateMachine"


def _is_function(arn: str) -> bool:
    parts = arn.split(":")
    return len(parts) in (7, 8) and parts[2] == "lambda" and parts[5] == "function"


def _delivered_event(event: Mapping[str, Any]) -> dict[str, Any]:
    """The event as EventBridge delivers it: without moto's internal fields, time in ISO 8601."""
    delivered = {key: value for key, value in event.items() if key not in ("ingestion-time", "replay-name")}
    when = delivered.get("time")
    if isinstance(when, (int, float)):
        delivered["time"] = datetime.fromtimestamp(when, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    elif isinstance(when, datetime):
        delivered["time"] = when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return delivered


def _target_input(target: Mapping[str, Any], event: dict[str, Any]) -> Any:
    if "Input" in target:
        return json.loads(target["Input"])
    if "InputPath" in target:
        from jsonpath_ng.ext import parse  # a moto dependency

        matches = parse(target["InputPath"]).find(event)
        return matches[0].value if matches else None
    if "InputTransformer" in target:
        from moto.events.utils import EventMessageType, EventTemplateParser

        transformer = target["InputTransformer"]
        return EventTemplateParser.parse(
            input_template=transformer.get("InputTemplate"),
            input_paths_map=transformer.get("InputPathsMap", {}),
            # moto types the event as its TypedDict; ours is the delivered (plain) event
            event=cast(EventMessageType, {"ingestion-time": time.time(), **event}),
        )
    return event


def _start_execution(rule: Any, target: Mapping[str, Any], event: dict[str, Any]) -> None:
    from moto.stepfunctions.responses import get_backend

    arn = target["Arn"]
    _, _, _, region, account, _ = arn.split(":", 5)
    denied = trigger_denied(target)
    if denied:
        _record_failure(rule, target, event, denied)
        return
    try:
        execution_input = json.dumps(_target_input(target, event))
        execution = get_backend(account, region).start_execution(
            arn, name=uuid.uuid4().hex, execution_input=execution_input
        )
        _LOG.info("rule %s started %s for event %s", rule.name, execution.execution_arn, event.get("id"))
    except Exception as exc:  # noqa: BLE001  (AWS would retry, then dead-letter: never drop an event silently)
        _record_failure(rule, target, event, f"{type(exc).__name__}: {exc}")


def _dead_letter(rule: Any, target: Mapping[str, Any], event: dict[str, Any], error: str, arn: str) -> bool:
    """Send the event to the target's SQS dead-letter queue with EventBridge's attributes: sent?"""
    try:
        from moto.sqs.models import sqs_backends

        _, _, _, region, account, queue_name = arn.split(":", 5)

        def attribute(value: str) -> dict[str, str]:
            return {"DataType": "String", "StringValue": value}

        sqs_backends[account][region].send_message(
            queue_name,
            json.dumps(event),
            message_attributes={
                "RULE_ARN": attribute(rule.arn),
                "TARGET_ARN": attribute(target["Arn"]),
                "ERROR_CODE": attribute("SDK_CLIENT_ERROR"),
                "ERROR_MESSAGE": attribute(error[:1000]),
            },
        )
        return True
    except Exception:  # noqa: BLE001  (a missing or broken queue: logged with the failure, never raised)
        _LOG.exception("could not send the event to the dead-letter queue %s", arn)
        return False


def _record_failure(rule: Any, target: Mapping[str, Any], event: dict[str, Any], error: str) -> None:
    dead_letter_arn = (target.get("DeadLetterConfig") or {}).get("Arn")
    dead_lettered = False
    if dead_letter_arn and dead_letter_arn.split(":")[2:3] == ["sqs"]:
        dead_lettered = _dead_letter(rule, target, event, error, dead_letter_arn)
    _LOG.error(
        "rule %s could not start %s for event %s: %s (dead-lettered: %s)",
        rule.name,
        target["Arn"],
        event.get("id"),
        error,
        dead_lettered,
    )
    with _lock:
        _failures.append(
            DeliveryFailure(
                rule_arn=rule.arn,
                target_id=str(target.get("Id", "")),
                target_arn=target["Arn"],
                event_id=str(event.get("id", "")),
                error=error,
                dead_letter_arn=dead_letter_arn,
                dead_lettered=dead_lettered,
                at=datetime.now(UTC).isoformat(),
            )
        )


def _invoke_function(rule: Any, target: Mapping[str, Any], event: dict[str, Any]) -> None:
    """A Lambda target: EventBridge invokes the function asynchronously
    (https://docs.aws.amazon.com/eventbridge/latest/userguide/eb-targets.html), here through the
    bridge's own asynchronous invoke."""
    from moto.awslambda_simple.models import lambda_simple_backends

    arn = target["Arn"]
    parts = arn.split(":")
    region, account, name = parts[3], parts[4], parts[6]
    try:
        fn = lambda_simple_backends[account][region].get_function(name, parts[7] if len(parts) == 8 else None)
        body = json.dumps(_target_input(target, event)).encode("utf-8")
    except Exception as exc:  # noqa: BLE001  (recorded and dead-lettered like a failed execution start)
        _record_failure(rule, target, event, f"{type(exc).__name__}: {exc}")
        return
    lambda_service.invoke_async(fn, body, str(uuid.uuid4()))


#: moto gives every S3 event this ``sequencer``; S3 gives each write of a key a greater one.
_MOTO_SEQUENCER = "617f08299329d189"
_sequencer_lock = threading.Lock()
_last_sequence = [0]


def _sequenced(event: Any) -> None:
    """Give an S3 event moto built a sequencer greater than every earlier one, as S3 does per key
    ("the event notification with the greater sequencer hexadecimal value is the event that occurred
    later": https://docs.aws.amazon.com/AmazonS3/latest/userguide/notification-content-structure.html).
    In place: moto hands the same event to every rule, so all of them see one value."""
    is_s3 = isinstance(event, dict) and event.get("source") == "aws.s3"
    obj = (event.get("detail") or {}).get("object") if is_s3 else None
    if not isinstance(obj, dict) or obj.get("sequencer") != _MOTO_SEQUENCER:
        return
    with _sequencer_lock:
        _last_sequence[0] = max(time.time_ns(), _last_sequence[0] + 1)
        obj["sequencer"] = f"{_last_sequence[0]:018X}"  # 18 hex digits, like S3's


def _send_to_targets(self: Any, original_event: Any, transform_input: bool = True) -> None:
    """``Rule.send_to_targets`` replaced: states and Lambda targets run here, the rest go to moto."""
    from moto.events.models import Rule

    _sequenced(original_event)
    if getattr(self, "state", "ENABLED") != "ENABLED":
        return  # moto 5.2 delivers through disabled rules; AWS does not
    original = _patches.original(Rule, "send_to_targets")
    functions = [target for target in self.targets if _is_function(target["Arn"])]
    ours = [target for target in self.targets if _is_state_machine(target["Arn"])] + functions
    if not ours:
        return original(self, original_event, transform_input)
    if not self.event_pattern.matches_event(original_event):
        return None
    others = [
        target for target in self.targets if not _is_state_machine(target["Arn"]) and not _is_function(target["Arn"])
    ]
    pending_error: BaseException | None = None
    if others:
        view = copy.copy(self)  # shallow: the shared rule's target list is never mutated
        view.targets = others
        try:
            original(view, original_event, transform_input)
        except Exception as exc:  # noqa: BLE001  (still start the executions, then report as moto would)
            pending_error = exc
    event = _delivered_event(original_event)
    for target in ours:
        if _is_function(target["Arn"]):
            _invoke_function(self, target, event)
        else:
            _start_execution(self, target, event)
    if pending_error is not None:
        raise pending_error
    return None


def install() -> None:
    """Replace ``Rule.send_to_targets`` (idempotent; loud when moto's is not the one this targets)."""
    from moto.events.models import Rule

    with _lock:
        if _patches.applied:
            return
        if not callable(getattr(Rule, "send_to_targets", None)):
            raise RuntimeError("moto has no Rule.send_to_targets: the local stack's bridge needs moto 5.2")
        _patches.apply(Rule, "send_to_targets", _send_to_targets)


def uninstall() -> None:
    """moto's own delivery again; forget the delivery failures."""
    with _lock:
        _patches.undo()
        _failures.clear()


__all__ = ["DeliveryFailure", "delivery_failures", "install", "uninstall"]
