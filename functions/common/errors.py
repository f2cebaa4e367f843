"""The error taxonomy shared by every function.

A Lambda that raises reports the exception's class name as ``errorType``; the state machine's
Retry and Catch blocks match on those names. So the class names below are part of the contract
with ``state_machine/pipeline.asl.json``:

* ``TransientError`` (and only it) is retried with back-off: throttling, timeouts, 5xx answers.
* A ``PermanentError`` is never retried: retrying cannot help. What happens next depends on whether
  a redrive could help (``redrivable``):

  - the input's own errors (a bad image, a missing object, an unknown model or sink, and
    ``PipelineError``, a bug of ours) are caught, recorded, and end the execution in the named
    ``Fail`` state ``PipelineFailed``: redriving would fail the same way;
  - errors an operator fixes outside the execution (a sink's resource refusing, a corrupt model
    package, a misconfigured function) are *not* caught, like transient errors that exhausted their
    retries and timeouts: the execution stops at the step that failed, so that a redrive
    (RedriveExecution, the console's Redrive button) resumes there once it is fixed. Their failure
    records come from the execution's status-change event (functions/sink/status.py).
"""

from __future__ import annotations

from typing import ClassVar


class InferpipeError(Exception):
    """Base class of all errors the pipeline raises on purpose."""


class TransientError(InferpipeError):
    """Worth retrying: an AWS service throttled, timed out or answered 5xx."""


class PermanentError(InferpipeError):
    """Retrying cannot help: the input, the object or the model is wrong."""

    #: True when a redrive can succeed once an operator fixes something outside the execution.
    redrivable: ClassVar[bool] = False


class InvalidInputError(PermanentError):
    """The execution's input names no object at all (not an S3 event, not a request, not a batch)."""


class InvalidRequestError(PermanentError):
    """The execution input is not a request the pipeline understands."""


class ObjectNotFoundError(PermanentError):
    """The source object (or the requested version of it) does not exist."""


class ObjectTooLargeError(PermanentError):
    """The source object is larger than the configured MAX_OBJECT_BYTES."""


class NotAnImageError(PermanentError):
    """The source object is empty, truncated, or not in an image format Pillow decodes."""


class DecompressionBombError(PermanentError):
    """The image claims more pixels than the configured MAX_IMAGE_PIXELS."""


class ModelNotFoundError(PermanentError):
    """No published model package matches the requested name and version or alias."""


class ModelIntegrityError(PermanentError):
    """A model package's files do not match the sizes and checksums of its manifest."""

    redrivable = True


class SinkNotConfiguredError(PermanentError):
    """A sink was requested that this deployment does not have."""


class SinkUnavailableError(PermanentError):
    """A sink's resource refused the record for good (missing queue or table, access denied, disabled key).

    Retrying cannot help until an operator fixes the sink; the other sinks still deliver, the
    execution fails with a failure record naming the sink, and ``inferpipe replay`` completes it.
    """

    redrivable = True


class ConfigurationError(PermanentError):
    """The function is misconfigured: the SDK refused a call before sending it (invalid parameters,
    no credentials, no region). Retrying cannot help until the deployment is fixed."""

    redrivable = True


class PipelineError(PermanentError):
    """An unexpected error in the pipeline's own code (a bug): the handler reports it under this
    name, with the original type and message, and logs its stack trace (functions/common/log.py)."""


#: The names the state machine retries. Kept here so a test can compare them with the ASL.
TRANSIENT_ERROR_NAMES: tuple[str, ...] = (TransientError.__name__,)

#: Every permanent error's name: never retried.
PERMANENT_ERROR_NAMES: tuple[str, ...] = tuple(cls.__name__ for cls in PermanentError.__subclasses__())
#: Permanent errors a redrive can get past once an operator fixed their cause: not caught.
REDRIVABLE_ERROR_NAMES: tuple[str, ...] = tuple(
    cls.__name__ for cls in PermanentError.__subclasses__() if cls.redrivable
)

# Errors the Lambda service itself reports when it ends an invocation; the state machine matches
# these names too. What Lambda answers the caller (Step Functions included) with:
#
# * ``Sandbox.Timedout``: the invocation overran the function's timeout; the environment is
#   stopped and the next invocation gets a fresh one. Message ``RequestId: <id> Error: Task timed
#   out after <timeout>.00 seconds``. https://docs.aws.amazon.com/lambda/latest/dg/troubleshooting-invocation.html#troubleshooting-timeouts
# * ``Runtime.OutOfMemory``: the environment used more memory than the function's MemorySize and
#   was killed (message ``RequestId: <id> Error: Runtime exited with error: signal: killed``).
# * ``Runtime.ExitError``: the runtime process exited during the invocation for another reason.
#   https://repost.aws/knowledge-center/lambda-runtime-error
#
# Step Functions names unhandled function errors it cannot attribute ``Lambda.Unknown`` ("these
# include out-of-memory errors and function timeouts"):
# https://docs.aws.amazon.com/step-functions/latest/dg/bp-lambda-serviceexception.html
LAMBDA_TIMEOUT = "Sandbox.Timedout"
LAMBDA_OUT_OF_MEMORY = "Runtime.OutOfMemory"
LAMBDA_EXIT_ERROR = "Runtime.ExitError"

#: Platform errors worth one more attempt in a fresh environment: a timeout (the service called
#: may be slow for a moment; every task is idempotent) or a crashed runtime.
RETRIED_PLATFORM_ERRORS: tuple[str, ...] = (LAMBDA_TIMEOUT, LAMBDA_EXIT_ERROR)
#: Platform errors retrying cannot help: the same input needs the same memory again. Caught, so
#: the failure record names the memory limit instead of three paid runs ending as an unknown error.
CAUGHT_PLATFORM_ERRORS: tuple[str, ...] = (LAMBDA_OUT_OF_MEMORY,)

#: What the state machine catches and records, ending in its named Fail state: the permanent errors
#: a redrive cannot get past, and the platform errors retrying cannot help.
RECORDED_ERROR_NAMES: tuple[str, ...] = (
    tuple(name for name in PERMANENT_ERROR_NAMES if name not in REDRIVABLE_ERROR_NAMES) + CAUGHT_PLATFORM_ERRORS
)
