"""Lambda handler of the inference task: a batch document in, the model's top-k classes out; also
answers warm-up pings.

Output: see :func:`functions.inference.batch.classify_batch`; ``cold_start`` means this invocation
had to load a model; the first invocation of a process also carries ``init_ms``: {import, fetch,
load, first_forward (, preloaded)}, the process's cold start in parts
(:meth:`~functions.inference.service.InferenceService.preload_default_model`).
"""

from __future__ import annotations

import time

_IMPORT_STARTED = time.perf_counter()

# Imported after the clock started, on purpose: their import time (MXNet's above all) is the first
# part of a cold start.
from typing import Any  # noqa: E402  (timed import)

from aws_lambda_powertools.utilities.typing import LambdaContext  # noqa: E402  (timed import)

from functions.common.events import InferenceEvent  # noqa: E402  (timed import)
from functions.common.log import bind, lambda_context  # noqa: E402  (timed import)
from functions.common.timing import since_ms  # noqa: E402  (timed import)
from functions.inference.core import settle_garbage  # noqa: E402  (timed import)
from functions.inference.service import InferenceService  # noqa: E402  (timed import)

#: This process's models and cold-start record, reused by every invocation of a warm Lambda.
service = InferenceService(import_ms=since_ms(_IMPORT_STARTED))


@lambda_context
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """Input ``{"batch": {bucket, key}, "execution_id"}`` (ASL state Inference) or a warm-up ping."""
    request = InferenceEvent.parse(event)
    if request.warmup:
        bind()
        return service.warm_up()
    bind(execution_id=request.execution_id)
    return service.classify(request.batch)


settle_garbage()  # once per process, before any model is loaded: see its docstring
service.preload_at_init()
