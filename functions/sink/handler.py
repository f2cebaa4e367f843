"""Lambda handler of the sink task: deliver a batch's predictions to one sink, record an execution's
failures, or record what an execution status change says (the three modes: :mod:`functions.common.events`).

Outputs: delivery ``{"sink", "status": "DELIVERED", "delivered": n, "location"}``; failure
``{"mode": "failure", "error", "cause", "failed", ...}``, the error and cause the execution ends
with; status: the failure records of an execution that stopped FAILED (anywhere but in
PipelineFailed), TIMED_OUT or ABORTED, or their resolution once a redrive SUCCEEDED.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from functions.common.events import DeliveryEvent, FailureEvent, parse_sink_event
from functions.common.log import bind, lambda_context, logger
from functions.sink.batch import deliver_batch
from functions.sink.core import Destinations
from functions.sink.failures import record_batch_failures
from functions.sink.status import record_status


@lambda_context
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """Deliver a batch to one sink, or (``mode`` failure, status) write failure records."""
    request = parse_sink_event(event)
    if isinstance(request, DeliveryEvent):
        bind(execution_id=request.execution_id, sink=request.sink)
        return deliver_batch(request.sink, request.batch, request.execution_id or "", Destinations.from_env())
    if isinstance(request, FailureEvent):
        bind(execution_id=request.execution_id, sink="failure-record")
        answer = record_batch_failures(request.event, Destinations.from_env())
        answer.pop("keys", None)  # for the status recorder; kept out of the execution's state
        logger.warning(
            "execution failed; failures recorded",
            extra={k: answer[k] for k in ("error", "failed", "objects", "written", "failed_state")},
        )
        return answer
    bind(execution_id=request.execution_arn, sink="status-record")
    return record_status(request.event, Destinations.from_env())
