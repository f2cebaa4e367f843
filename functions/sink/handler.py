"""Lambda handler of the sink task: deliver one prediction record to one sink."""

from __future__ import annotations

from typing import Any

from functions.common.errors import InvalidRequestError
from functions.common.log import bind, logger, object_uri
from functions.sink.core import Destinations, build_record, deliver


@logger.inject_lambda_context(clear_state=True)
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Input ``{"sink", "source", "prediction", "execution_id"}``; output ``{"sink", "location", "record_id"}``."""
    if not isinstance(event, dict) or not isinstance(event.get("sink"), str):
        raise InvalidRequestError("sink input must be an object with a 'sink' name")
    sink = event["sink"]
    source = event.get("source") or {}
    bind(
        execution_id=event.get("execution_id"),
        object=object_uri(source.get("bucket", "?"), source.get("key", "?"), source.get("version_id")),
        sink=sink,
    )
    record = build_record(source, event.get("prediction") or {}, str(event.get("execution_id", "")))
    location = deliver(sink, record, Destinations.from_env())
    logger.info("prediction delivered", extra={"delivered_to": location, "label": record["top1"]["label"]})
    return {"sink": sink, "location": location, "record_id": record["record_id"]}
