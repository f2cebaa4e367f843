"""Bridge: EventBridge Pipes from an SQS queue to a Step Functions state machine, run locally.

moto stores pipes (CreatePipe, DescribePipe) but never runs them. :class:`PipeRunner` runs one
the way the service does (https://docs.aws.amazon.com/eventbridge/latest/userguide/eb-pipes-sqs.html):

* it polls the source queue with the pipe's role, and gathers a batch until ``BatchSize``
  messages are in hand or ``MaximumBatchingWindowInSeconds`` has passed since the first;
* it applies the target's ``InputTemplate`` to each message (with implicit body parsing:
  ``<$.body.x>`` reads into a JSON body) and starts one execution whose input is the JSON array
  ("the batch is converted to a JSON array", https://docs.aws.amazon.com/eventbridge/latest/userguide/pipes-targets-specifics.html),
  as ``FIRE_AND_FORGET`` (StartExecution), the only invocation type of a Standard workflow;
* only then it deletes the batch's messages. If the execution cannot start, the messages stay,
  come back after the visibility timeout and, past the queue's ``maxReceiveCount``, go to its
  dead-letter queue (SQS's redrive policy).

Each batch is one Pipes request per 64 KB of payload (what Pipes bills), noted in the usage meter.

Example::

    runner = PipeRunner(endpoint_url, region, describe_pipe_answer, credentials, meter)
    runner.start()   # ... runner.stop()
"""

from __future__ import annotations

import collections
import json
import logging
import math
import re
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import boto3
from botocore.config import Config

_LOG = logging.getLogger("inferpipe.local.pipes")
_PLACEHOLDER = re.compile(r"<(\$(?:\.[A-Za-z0-9_\-]+|\[\d+\])*)>")
_CHUNK = 64 * 1024
#: Longest single receive wait: how quickly the runner notices it should stop.
_POLL_S = 1


def _lookup(value: Any, path: str) -> Any:
    """``$.a.b-c[0]`` in ``value``; a JSON string met on the way is parsed (implicit body parsing)."""
    for part in re.findall(r"\.([A-Za-z0-9_\-]+)|\[(\d+)\]", path[1:]):
        name, index = part
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                return None
        if name:
            value = value.get(name) if isinstance(value, Mapping) else None
        else:
            value = value[int(index)] if isinstance(value, list) and int(index) < len(value) else None
        if value is None:
            return None
    return value


def render_input(template: str | None, record: Mapping[str, Any]) -> Any:
    """One message through the target's input template (unquoted ``<$.path>`` inserts JSON values)."""
    if not template:
        return dict(record)
    text = _PLACEHOLDER.sub(lambda match: json.dumps(_lookup(record, match.group(1))), template)
    return json.loads(text)


def _sqs_record(message: Mapping[str, Any], queue_arn: str, region: str) -> dict[str, Any]:
    """A received message as Pipes hands it on (the Lambda event-source shape)."""
    return {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message["Body"],
        "attributes": dict(message.get("Attributes") or {}),
        "messageAttributes": dict(message.get("MessageAttributes") or {}),
        "md5OfBody": message.get("MD5OfBody"),
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": region,
    }


@dataclass
class PipeStats:
    batches: int = 0
    messages: int = 0
    failed_starts: int = 0
    last_error: str | None = None
    #: the sizes of the last 1,000 batches (a long-running stack keeps no more)
    sizes: collections.deque[int] = field(default_factory=lambda: collections.deque(maxlen=1000))


class PipeRunner:
    """Runs one pipe (SQS source, Step Functions target) until :meth:`stop`."""

    def __init__(
        self,
        endpoint_url: str,
        region: str,
        pipe: Mapping[str, Any],
        credentials: Mapping[str, str],
        meter: Any = None,
        caller: str = "pipe",
    ) -> None:
        self.pipe = dict(pipe)
        source = pipe["SourceParameters"]["SqsQueueParameters"]
        self.batch_size = int(source.get("BatchSize") or 10)
        self.window_s = float(source.get("MaximumBatchingWindowInSeconds") or 0)
        self.queue_arn = str(pipe["Source"])
        self.target = str(pipe["Target"])
        target = pipe.get("TargetParameters") or {}
        self.template = target.get("InputTemplate")
        invocation = (target.get("StepFunctionStateMachineParameters") or {}).get("InvocationType", "FIRE_AND_FORGET")
        if invocation != "FIRE_AND_FORGET":
            raise ValueError(f"pipe {pipe['Name']}: a Standard workflow target takes FIRE_AND_FORGET, not {invocation}")
        self.region = region
        config = Config(retries={"max_attempts": 2, "mode": "standard"}, read_timeout=_POLL_S + 10)
        session = boto3.session.Session(
            region_name=region,
            aws_access_key_id=credentials["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=credentials["AWS_SECRET_ACCESS_KEY"],
            aws_session_token=credentials.get("AWS_SESSION_TOKEN"),
        )
        self._sqs = session.client("sqs", endpoint_url=endpoint_url, config=config)
        self._sfn = session.client("stepfunctions", endpoint_url=endpoint_url, config=config)
        _, _, _, _, account, name = self.queue_arn.split(":", 5)
        self.queue_url = f"{endpoint_url}/{account}/{name}"
        self._meter = meter
        self._caller = caller
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.stats = PipeStats()

    def start(self) -> PipeRunner:
        self._thread = threading.Thread(target=self._run, name=f"pipe-{self.pipe['Name']}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._sqs.close()
        self._sfn.close()

    def _receive(self, wait_s: float, count: int) -> list[dict[str, Any]]:
        answer = self._sqs.receive_message(
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=max(1, min(10, count)),
            WaitTimeSeconds=max(0, min(_POLL_S, math.ceil(wait_s))),
            AttributeNames=["All"],
            MessageAttributeNames=["All"],
        )
        return list(answer.get("Messages") or [])

    def gather(self) -> list[dict[str, Any]]:
        """One batch: the first message, then more until the batch is full or the window has passed.

        Every receive long-polls (as the service's pollers do), so a trickle costs two receives a
        batch; a wait ends as soon as a message arrives, and overshoots the window by less than 1 s.
        """
        batch: list[dict[str, Any]] = []
        first_at = 0.0
        while not self._stop.is_set():
            if not batch:
                batch = self._receive(_POLL_S, self.batch_size)
                first_at = time.monotonic()
                continue
            left = self.window_s - (time.monotonic() - first_at)
            if len(batch) >= self.batch_size or left <= 0:
                break
            batch.extend(self._receive(left, self.batch_size - len(batch)))
        return batch[: self.batch_size] if batch else []

    def deliver(self, messages: list[dict[str, Any]]) -> bool:
        """Start one execution for ``messages``; delete them only once it started."""
        records = [render_input(self.template, _sqs_record(m, self.queue_arn, self.region)) for m in messages]
        payload = json.dumps(records, ensure_ascii=False)
        if self._meter is not None:
            self._meter.record(self._caller, "pipes", "Invoke", max(1, math.ceil(len(payload.encode()) / _CHUNK)))
        try:
            self._sfn.start_execution(stateMachineArn=self.target, name=uuid.uuid4().hex, input=payload)
        except Exception as exc:  # noqa: BLE001  (left in the queue: retried after the visibility timeout, then dead-lettered)
            self.stats.failed_starts += 1
            self.stats.last_error = f"{type(exc).__name__}: {exc}"
            _LOG.error(
                "pipe %s could not start an execution for %d messages: %s", self.pipe["Name"], len(messages), exc
            )
            return False
        for start in range(0, len(messages), 10):
            chunk = messages[start : start + 10]
            self._sqs.delete_message_batch(
                QueueUrl=self.queue_url,
                Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(chunk)],
            )
        self.stats.batches += 1
        self.stats.messages += len(messages)
        self.stats.sizes.append(len(messages))
        return True

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                batch = self.gather()
                if batch:
                    self.deliver(batch)
            except Exception as exc:  # noqa: BLE001  (the stack stopping under us, a moto hiccup: keep polling)
                if self._stop.is_set():
                    return
                self.stats.last_error = f"{type(exc).__name__}: {exc}"
                _LOG.warning("pipe %s: %s", self.pipe["Name"], exc)
                time.sleep(0.5)


__all__ = ["PipeRunner", "PipeStats", "render_input"]
