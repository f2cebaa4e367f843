"""The preprocess function's state across invocations (its model stores) and one invocation's work:
the event's batch parsed, and preprocessed with the deployment's settings."""

from __future__ import annotations

from typing import Any

from functions.common import config
from functions.common.aws import client
from functions.common.batch import Defaults, parse_input
from functions.common.errors import InferpipeError
from functions.common.events import PreprocessEvent
from functions.common.log import logger
from functions.common.model_store import ModelStore, cached_store
from functions.preprocess.batch import preprocess_batch
from functions.preprocess.claims import Claims


class PreprocessService:
    """One per process: a warm Lambda reuses its model stores (and their manifest caches)."""

    def __init__(self) -> None:
        self.stores: dict[str, ModelStore] = {}

    def preprocess(self, event: PreprocessEvent) -> dict[str, Any]:
        """Output ``{"batch": {bucket, key}, "sinks", "objects", "succeeded", "failed", "duplicates"}``."""
        settings = config.Settings.from_env()
        try:
            batch = parse_input(event.input, Defaults.from_dict(event.defaults))
            return preprocess_batch(
                batch,
                event.execution_id,
                s3=client("s3"),
                store=cached_store(self.stores, config.require(config.MODEL_BUCKET)),
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


__all__ = ["PreprocessService"]
