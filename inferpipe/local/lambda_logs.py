"""Lambda's logs, locally: the REPORT line, and a shipper writing environments' lines to CloudWatch Logs.

https://docs.aws.amazon.com/lambda/latest/dg/python-logging.html (START / END / REPORT lines)
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from functions.common.errors import LAMBDA_EXIT_ERROR, LAMBDA_OUT_OF_MEMORY, LAMBDA_TIMEOUT

if TYPE_CHECKING:
    from inferpipe.local.execution_environment import FunctionConfig, InvocationResult

_LOG = logging.getLogger("inferpipe.local.lambda_logs")


def report_line(result: InvocationResult, memory_mb: int) -> str:
    """Lambda's REPORT line: tab-separated fields, ``Init Duration`` after a cold start, a trailing tab.

    >>> from inferpipe.local.execution_environment import InvocationResult
    >>> r = InvocationResult("r-1", False, b"", None, 12.3, 13, 250.0, 80, "s")
    >>> report_line(r, 256).split("\\t")[1:6]
    ['Duration: 12.30 ms', 'Billed Duration: 13 ms', 'Memory Size: 256 MB', 'Max Memory Used: 80 MB', 'Init Duration: 250.00 ms']
    """
    fields = [
        f"REPORT RequestId: {result.request_id}",
        f"Duration: {result.duration_ms:.2f} ms",
        f"Billed Duration: {result.billed_ms} ms",
        f"Memory Size: {memory_mb} MB",
        f"Max Memory Used: {result.max_memory_mb} MB",
    ]
    if result.init_ms is not None:
        fields.append(f"Init Duration: {result.init_ms:.2f} ms")
    if result.error_type == LAMBDA_TIMEOUT:
        fields.append("Status: timeout")
    elif result.error_type in (LAMBDA_OUT_OF_MEMORY, LAMBDA_EXIT_ERROR):
        fields += ["Status: error", f"Error Type: {result.error_type}"]
    return "\t".join(fields) + "\t"


class LogShipper:
    """Writes environments' log events to CloudWatch Logs from one background thread, in order.

    ``client_for(region, role_arn)`` returns a Logs client signed as that role.
    """

    def __init__(self, client_for: Callable[[str, str], Any]) -> None:
        self._client_for = client_for
        self._queue: queue.Queue[tuple[FunctionConfig, str, list[tuple[int, str]]] | None] = queue.Queue()
        self._streams: set[tuple[str, str]] = set()
        self._thread = threading.Thread(target=self._run, name="lambda-log-shipper", daemon=True)
        self._thread.start()

    def ship(self, config: FunctionConfig, stream: str, events: list[tuple[int, str]]) -> None:
        if events:
            self._queue.put((config, stream, events))

    def flush(self) -> None:
        """Return once every event shipped so far is in CloudWatch Logs (or was refused)."""
        self._queue.join()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(10)

    @staticmethod
    def _create_stream(logs: Any, group: str, stream: str) -> None:
        """The environment's stream; the group too when it is missing, as Lambda tries (the role may refuse)."""
        from botocore.exceptions import ClientError

        def code(exc: ClientError) -> str:
            return str(exc.response.get("Error", {}).get("Code", ""))

        try:
            logs.create_log_stream(logGroupName=group, logStreamName=stream)
        except ClientError as exc:
            if code(exc) == "ResourceAlreadyExistsException":
                return
            if code(exc) != "ResourceNotFoundException":
                raise
            try:
                logs.create_log_group(logGroupName=group)
            except ClientError as again:
                if code(again) != "ResourceAlreadyExistsException":
                    raise
            logs.create_log_stream(logGroupName=group, logStreamName=stream)

    def _run(self) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                config, stream, events = item
                try:
                    logs = self._client_for(config.region, config.role_arn)
                    if (config.log_group, stream) not in self._streams:
                        self._create_stream(logs, config.log_group, stream)
                        self._streams.add((config.log_group, stream))
                    ordered = sorted(events, key=lambda event: event[0])
                    for start in range(0, len(ordered), 5000):  # PutLogEvents: at most 10,000 events
                        logs.put_log_events(
                            logGroupName=config.log_group,
                            logStreamName=stream,
                            logEvents=[
                                {"timestamp": ts, "message": message} for ts, message in ordered[start : start + 5000]
                            ],
                        )
                except (BotoCoreError, ClientError, KeyError) as exc:  # Lambda drops logs its role may not write
                    _LOG.debug("%s: %d log events not written: %s", config.name, len(events), exc)
            finally:
                self._queue.task_done()


__all__ = ["LogShipper", "report_line"]
