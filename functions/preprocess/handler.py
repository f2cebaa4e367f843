"""Lambda handler of the preprocess task: an execution's input in, the batch's tensors and document out."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from functions.common.events import PreprocessEvent
from functions.common.log import bind, lambda_context
from functions.preprocess.service import PreprocessService

#: This process's state, reused by every invocation of a warm Lambda.
service = PreprocessService()


@lambda_context
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """Input ``{"input": <the execution's input>, "defaults": {...}, "execution_id"}`` (ASL state
    Preprocess); output ``{"batch": {bucket, key}, "sinks", "objects", "succeeded", "failed", "duplicates"}``."""
    request = PreprocessEvent.parse(event)
    bind(execution_id=request.execution_id)
    return service.preprocess(request)
