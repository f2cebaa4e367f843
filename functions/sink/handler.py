"""Lambda handler of the sink task: deliver a batch's predictions to one sink, or record its failures.

Two modes, chosen by the input:

* delivery (state ``Deliver``, one per sink in the FanOut Map): ``{"sink", "batch": {bucket, key},
  "execution_id"}`` -> ``{"sink", "status": "DELIVERED", "delivered": n, "location"}``; see
  :func:`functions.sink.batch.deliver_batch`.
* failure (state ``RecordFailure``): ``{"mode": "failure", "failure": {state, error, cause},
  "batch"?, "input", "defaults", "deliveries"?, "execution_id"}`` -> ``{"mode": "failure", "error",
  "cause", "failed", ...}``: the error and cause the execution ends with. See
  :func:`functions.sink.failures.record_batch_failures`.
* status (an EventBridge rule on Step Functions' status change events): ``{"mode": "status",
  "detail": <the event's detail>, "defaults"}`` -> the failure records of an execution that
  stopped FAILED (anywhere but in PipelineFailed), TIMED_OUT or ABORTED, or their resolution once
  a redrive SUCCEEDED. See :mod:`functions.sink.status`.
"""

from __future__ import annotations

from typing import Any

from functions.common.errors import InvalidRequestError
from functions.common.log import bind, lambda_context, logger
from functions.sink.batch import deliver_batch
from functions.sink.core import Destinations
from functions.sink.failures import record_batch_failures
from functions.sink.status import record_status


@lambda_context
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Deliver a batch to one sink, or (``mode == "failure"``) write its failure records."""
    execution_id = (
        event.get("execution_id") if isinstance(event, dict) and isinstance(event.get("execution_id"), str) else None
    )
    if isinstance(event, dict) and event.get("mode") == "failure":
        bind(execution_id=execution_id, sink="failure-record")
        answer = record_batch_failures(event, Destinations.from_env())
        answer.pop("keys", None)  # for the status recorder; kept out of the execution's state
        logger.warning(
            "execution failed; failures recorded",
            extra={k: answer[k] for k in ("error", "failed", "objects", "written", "failed_state")},
        )
        return answer
    if isinstance(event, dict) and event.get("mode") == "status":
        detail = event.get("detail") if isinstance(event.get("detail"), dict) else {}
        bind(execution_id=detail.get("executionArn"), sink="status-record")
        return record_status(event, Destinations.from_env())
    if not isinstance(event, dict) or not isinstance(event.get("sink"), str) or "batch" not in event:
        raise InvalidRequestError(
            'sink input must be {"sink": name, "batch": {"bucket", "key"}, "execution_id"}, or {"mode": "failure", ...}'
        )
    bind(execution_id=execution_id, sink=event["sink"])
    return deliver_batch(event["sink"], event["batch"], execution_id or "", Destinations.from_env())
