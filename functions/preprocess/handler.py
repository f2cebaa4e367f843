"""Lambda handler of the preprocess task: an execution's input in, the batch's tensors and document out."""

from __future__ import annotations

from typing import Any

from functions.common import config
from functions.common.aws import client
from functions.common.batch import Defaults, parse_input
from functions.common.errors import InferpipeError, InvalidRequestError
from functions.common.log import bind, lambda_context, logger
from functions.common.model_store import ModelStore, cached_store
from functions.preprocess.batch import preprocess_batch
from functions.preprocess.claims import Claims

# One model store per model bucket, reused by every invocation of a warm Lambda.
_stores: dict[str, ModelStore] = {}


@lambda_context
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Input ``{"input": <the execution's input>, "defaults": {...}, "execution_id"}`` (ASL state
    Preprocess); output ``{"batch": {bucket, key}, "sinks", "objects", "succeeded", "failed", "duplicates"}``."""
    if not isinstance(event, dict) or "input" not in event:
        raise InvalidRequestError(
            'preprocess input must be an object {"input": ..., "defaults": {...}, "execution_id": "..."}'
        )
    execution_id = event.get("execution_id") if isinstance(event.get("execution_id"), str) else None
    bind(execution_id=execution_id)
    settings = config.Settings.from_env()
    try:
        batch = parse_input(event["input"], Defaults.from_dict(event.get("defaults")))
        return preprocess_batch(
            batch,
            execution_id,
            s3=client("s3"),
            store=cached_store(_stores, config.require(config.MODEL_BUCKET)),
            limits=settings.image_limits,
            work_bucket=config.require(config.WORK_BUCKET),
            work_prefix=settings.work_prefix,
            ownership=(config.optional(config.INPUT_BUCKET), config.optional(config.INPUT_KEY_PREFIX)),
            claims=Claims.from_env(client("dynamodb")),
        )
    except InferpipeError as exc:
        # The state machine records the error too; this line makes it findable in the logs.
        logger.warning("preprocess failed", extra={"error": type(exc).__name__, "reason": str(exc)})
        raise
