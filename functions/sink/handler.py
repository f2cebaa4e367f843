"""Lambda handler of the sink task: deliver a batch's predictions to one sink, or record its failures.

Two modes, chosen by the input:

* delivery (state ``Deliver``, one per sink in the FanOut Map): ``{"sink", "batch": {bucket, key},
  "execution_id"}`` -> ``{"sink", "status": "DELIVERED", "delivered": n, "location"}``; see
  :func:`functions.sink.batch.deliver_batch`.
* failure (state ``RecordFailure``): ``{"mode": "failure", "failure": {state, error, cause},
  "batch"?, "input", "defaults", "deliveries"?, "execution_id"}`` -> ``{"mode": "failure", "error",
  "cause", "failed", ...}``: the error and cause the execution ends with. See
  :func:`functions.sink.failures.record_batch_failures`.
"""

from __future__ import annotations

from typing import Any

from functions.common.errors import InvalidRequestError
from functions.common.log import bind, lambda_context, logger
from functions.sink.batch import deliver_batch
from functions.sink.core import Destinations
from functions.sink.failures import record_batch_failures


@lambda_context
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Deliver a batch to one sink, or (``mode == "failure"``) write its failure records."""
    execution_id = event.get("execution_id") if isinstance(event, dict) and isinstance(event.get("execution_id"), str) else None
    if isinstance(event, dict) and event.get("mode") == "failure":
        bind(execution_id=execution_id, sink="failure-record")
        answer = record_batch_failures(event, Destinations.from_env())
        logger.warning(
            "execution failed; failures recorded",
            extra={k: answer[k] for k in ("error", "failed", "objects", "written", "failed_state")},
        )
        return answer
    if not isinstance(event, dict) or not isinstance(event.get("sink"), str) or "batch" not in event:
        raise InvalidRequestError('sink input must be {"sink": name, "batch": {"bucket", "key"}, "execution_id"}, or {"mode": "failure", ...}')
    bind(execution_id=execution_id, sink=event["sink"])
    return deliver_batch(event["sink"], event["batch"], execution_id or "", Destinations.from_env())
