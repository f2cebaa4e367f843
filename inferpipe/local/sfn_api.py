"""Step Functions details moto 5.2 gets wrong, done as AWS documents them.

* **GetExecutionHistory** pages and orders (botocore's model of the operation): ``maxResults`` is
  "the maximum number of results that are returned per call [...] The default is 100 and the
  maximum allowed page size is 1000. A value of 0 uses the default"; ``reverseOrder`` "lists events
  in descending order of their timeStamp"; ``nextToken`` is returned while there are more events,
  and a token that is not one of ours is ``InvalidToken`` (HTTP 400)
  (https://docs.aws.amazon.com/step-functions/latest/apireference/API_GetExecutionHistory.html).
  moto returns every event, oldest first, whatever is asked: ``aws stepfunctions
  get-execution-history --reverse-order`` showed the start, not the failure.
* **StartExecution** with an input that is not JSON answers ``InvalidExecutionInput`` ("The provided
  JSON input data is not valid", HTTP 400,
  https://docs.aws.amazon.com/step-functions/latest/apireference/API_StartExecution.html); moto
  raises it as an exception its server cannot render, so the client saw an empty error code.
* **StartExecution without a name** gets a UUID ("If you don't provide a name for the execution,
  Step Functions automatically generates a universally unique identifier (UUID) as the execution
  name", same page); moto names every such execution ``None``, so the second one collides
  (ExecutionAlreadyExists).
* **A Lambda task's HTTP error** (a throttle's 429, a 5xx) is ``Lambda.<error code>`` ("Lambda
  errors are reported as Lambda.ErrorName",
  https://docs.aws.amazon.com/step-functions/latest/dg/bp-lambda-serviceexception.html); moto
  names every such error ``Exception``, which no Retry of ours matches.

Installed by :func:`install`, undone by :func:`uninstall`.
"""

from __future__ import annotations

import base64
import functools
import json
import threading
import uuid
from typing import Any

from inferpipe.local.patches import Patches

DEFAULT_PAGE = 100
MAX_PAGE = 1000

_lock = threading.Lock()
_patches = Patches()


@functools.cache
def _errors() -> dict[str, type[Exception]]:
    from moto.core.exceptions import AWSError

    class InvalidToken(AWSError):
        TYPE = "InvalidToken"
        STATUS = 400

    class InvalidExecutionInput(AWSError):
        TYPE = "InvalidExecutionInput"
        STATUS = 400

    class ValidationException(AWSError):
        TYPE = "ValidationException"
        STATUS = 400

    return {
        "InvalidToken": InvalidToken,
        "InvalidExecutionInput": InvalidExecutionInput,
        "ValidationException": ValidationException,
    }


def _token(execution_arn: str, reverse: bool, offset: int) -> str:
    return base64.urlsafe_b64encode(json.dumps([execution_arn, reverse, offset]).encode()).decode()


def _offset(token: str, execution_arn: str, reverse: bool) -> int:
    """Where the page ``token`` starts; InvalidToken for a token of another call (or none of ours)."""
    try:
        arn, was_reverse, offset = json.loads(base64.urlsafe_b64decode(token.encode()))
    except (ValueError, TypeError):
        raise _errors()["InvalidToken"](f"Invalid Token: '{token}'") from None
    if arn != execution_arn or bool(was_reverse) != reverse or not isinstance(offset, int) or offset < 0:
        raise _errors()["InvalidToken"](
            f"Invalid Token: '{token}' (it belongs to another executionArn or reverseOrder: keep the other arguments unchanged)"
        )
    return offset


def page(
    events: list[dict[str, Any]], execution_arn: str, max_results: int | None, reverse: bool, next_token: str | None
) -> dict[str, Any]:
    """One GetExecutionHistory answer over ``events`` (oldest first): its events and, while more
    remain, its ``nextToken``."""
    size = max_results or DEFAULT_PAGE
    if not 0 < size <= MAX_PAGE:
        raise _errors()["ValidationException"](
            f"1 validation error detected: Value '{max_results}' at 'maxResults' "
            f"failed to satisfy constraint: Member must have value between 0 and {MAX_PAGE}"
        )
    ordered = list(reversed(events)) if reverse else events
    start = _offset(next_token, execution_arn, reverse) if next_token else 0
    answer: dict[str, Any] = {"events": ordered[start : start + size]}
    if start + size < len(ordered):
        answer["nextToken"] = _token(execution_arn, reverse, start + size)
    return answer


def _history(self: Any) -> Any:
    """StepFunctionResponse.get_execution_history, paged and ordered as AWS does."""
    from moto.core.responses import ActionResult
    from moto.stepfunctions.responses import StepFunctionResponse

    arn = self._get_param("executionArn")
    result = _patches.original(StepFunctionResponse, "get_execution_history")(self)  # ExecutionDoesNotExist, InvalidArn
    events = list(result.result.get("events") or [])
    return ActionResult(
        page(
            events,
            arn,
            self._get_int_param("maxResults"),
            bool(self._get_bool_param("reverseOrder")),
            self._get_param("nextToken"),
        )
    )


def _start(self: Any) -> Any:
    """StepFunctionResponse.start_execution, with AWS's error for an input that is not JSON."""
    from moto.stepfunctions.responses import StepFunctionResponse

    raw = self._get_param("input")
    if raw is not None:
        try:
            json.loads(raw)
        except ValueError as exc:
            raise _errors()["InvalidExecutionInput"](
                f"Invalid State Machine Execution Input: the input is not JSON ({exc})"
            ) from None
    return _patches.original(StepFunctionResponse, "start_execution")(self)


def _named_start_execution(self: Any, state_machine_arn: str, name: Any = None, *args: Any, **kwargs: Any) -> Any:
    """``StepFunctionsParserBackend.start_execution``, naming an unnamed execution with a UUID."""
    from moto.stepfunctions.parser.models import StepFunctionsParserBackend

    moto_own = _patches.original(StepFunctionsParserBackend, "start_execution")
    return moto_own(self, state_machine_arn, name or str(uuid.uuid4()), *args, **kwargs)


def _lambda_task_error(self: Any, env: Any, ex: Exception) -> Any:
    """``StateTaskLambda._from_error``, naming an Invoke answered with an HTTP error ``Lambda.<error code>``."""
    from botocore.exceptions import ClientError
    from moto.stepfunctions.parser.asl.component.common.error_name.custom_error_name import CustomErrorName
    from moto.stepfunctions.parser.asl.component.state.exec.state_task.state_task_lambda import StateTaskLambda

    failure = _patches.original(StateTaskLambda, "_from_error")(self, env, ex)
    if isinstance(ex, ClientError):
        name = f"Lambda.{ex.response.get('Error', {}).get('Code') or 'Unknown'}"
        failure.error_name = CustomErrorName(name)
        for details in (failure.event_details or {}).values():
            details["error"] = name
    return failure


def install() -> None:
    from moto.stepfunctions.parser.asl.component.state.exec.state_task.state_task_lambda import StateTaskLambda
    from moto.stepfunctions.parser.models import StepFunctionsParserBackend
    from moto.stepfunctions.responses import StepFunctionResponse

    with _lock:
        if _patches.applied:
            return
        _patches.apply(StepFunctionResponse, "get_execution_history", _history)
        _patches.apply(StepFunctionResponse, "start_execution", _start)
        _patches.apply(StepFunctionsParserBackend, "start_execution", _named_start_execution)
        _patches.apply(StateTaskLambda, "_from_error", _lambda_task_error)


def uninstall() -> None:
    with _lock:
        _patches.undo()


__all__ = ["DEFAULT_PAGE", "MAX_PAGE", "install", "page", "uninstall"]
