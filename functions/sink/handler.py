"""Lambda handler of the sink task: deliver one prediction record to one sink, or record a failure.

Two modes, chosen by the input:

* delivery (state ``Deliver``, one per sink in the FanOut Map): ``{"sink", "source", "prediction",
  "execution_id"}`` -> ``{"sink", "location", "record_id", "status": "DELIVERED"}``.
* failure (state ``RecordFailure``): ``{"mode": "failure", "failure": {state, error, cause},
  "context": <the execution's data>, "execution_id"}`` -> ``{"mode": "failure", "written": {...},
  "error": ..., "failed_state": ...}``. See :func:`functions.sink.core.record_failure`.
"""

from __future__ import annotations

from typing import Any

from functions.common.errors import InvalidRequestError
from functions.common.log import bind, lambda_context, logger, object_uri
from functions.sink.core import Destinations, build_failure, build_record, deliver, record_failure

DELIVERED = "DELIVERED"


@lambda_context
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Deliver a prediction to one sink, or (``mode == "failure"``) write an execution's failure record."""
    if isinstance(event, dict) and event.get("mode") == "failure":
        return _record_failure(event)
    if not isinstance(event, dict) or not isinstance(event.get("sink"), str):
        raise InvalidRequestError("sink input must be an object with a 'sink' name, or {'mode': 'failure', ...}")
    sink = event["sink"]
    source = event.get("source") or {}
    bind(
        execution_id=event.get("execution_id"),
        object=object_uri(source.get("bucket", "?"), source.get("key", "?"), source.get("version_id")),
        sink=sink,
    )
    record = build_record(source, event.get("prediction") or {}, str(event.get("execution_id", "")))
    location = deliver(sink, record, Destinations.from_env())
    logger.info("prediction delivered", extra={"location": location, "label": record["top1"]["label"]})
    return {"sink": sink, "location": location, "record_id": record["record_id"], "status": DELIVERED}


def _record_failure(event: dict[str, Any]) -> dict[str, Any]:
    record = build_failure(event)
    source = record["source"]
    bind(
        execution_id=record["execution_id"] or None,
        object=source["uri"] if source else None,
        sink="failure-record",
    )
    written = record_failure(record, Destinations.from_env())
    logger.warning(
        "execution failed; failure recorded",
        extra={"error": record["error"]["type"], "failed_state": record["failed_state"], "written": written},
    )
    return {"mode": "failure", "written": written, "error": record["error"]["type"], "failed_state": record["failed_state"]}
