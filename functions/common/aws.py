"""AWS clients shared by the functions, and the mapping of AWS failures onto our error taxonomy.

Clients are created once per process (a warm Lambda reuses them) and honour the standard
settings, including ``AWS_ENDPOINT_URL``, which is how the local stack points them at itself.

Inside an invocation (:func:`invocation_deadline`, entered by every handler) a client's timeouts
and retries fit the time the invocation has left: a slow AWS call fails as a retryable
``TransientError`` before Lambda kills the function for overrunning its timeout.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
import time
from collections.abc import Iterator
from typing import Any, NoReturn

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotocoreConnectionError

from functions.common.config import invocation_credentials
from functions.common.errors import ConfigurationError, TransientError

#: (connect timeout s, read timeout s, attempts), most patient first. The first is used outside
#: an invocation; inside one, the most patient whose worst case fits the time left.
TIMEOUT_TIERS: tuple[tuple[int, int, int], ...] = ((5, 20, 3), (3, 10, 3), (2, 5, 3), (1, 3, 2), (1, 2, 2), (1, 1, 1))
#: Kept back from the time left: to raise, log and answer the runtime before Lambda's deadline.
DEADLINE_MARGIN_S = 1.0
_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("inferpipe_invocation_deadline", default=None)
_clients: dict[Any, Any] = {}
_lock = threading.Lock()


def worst_case_seconds(connect: float, read: float, attempts: int) -> float:
    """The longest a call can take: every attempt times out, with botocore's standard back-off
    between attempts (random, at most 2**(n-1) s before retry n; botocore/retries/standard.py).

    >>> worst_case_seconds(1, 3, 2)
    9.0
    """
    return attempts * (connect + read) + sum(2.0**n for n in range(attempts - 1))


def timeout_tier(remaining_s: float | None) -> tuple[int, int, int]:
    """The tier for an invocation with ``remaining_s`` left (None: not in an invocation)."""
    if remaining_s is None:
        return TIMEOUT_TIERS[0]
    budget = remaining_s - DEADLINE_MARGIN_S
    for tier in TIMEOUT_TIERS:
        if worst_case_seconds(*tier) <= budget:
            return tier
    return TIMEOUT_TIERS[-1]


@contextlib.contextmanager
def invocation_deadline(context: Any) -> Iterator[None]:
    """Bound this invocation's AWS calls by ``context.get_remaining_time_in_millis()``."""
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    token = _deadline.set(time.monotonic() + remaining() / 1000.0 if callable(remaining) else None)
    try:
        yield
    finally:
        _deadline.reset(token)


def _remaining_s() -> float | None:
    deadline = _deadline.get()
    return None if deadline is None else deadline - time.monotonic()


#: Error codes that mean "try again later". The union of botocore's standard retry mode lists
#: (botocore/retries/standard.py: ThrottledRetryableChecker, TransientRetryableChecker) and the
#: throttling errors the service models of what we call declare under their own names: SNS
#: ``Throttled`` (HTTP 429) and ``KMSThrottling``, SQS ``KmsThrottled`` (``KMS.ThrottlingException``
#: in its query-compatible form), Step Functions ``KmsThrottlingException``, KMS
#: ``KMSThrottlingException``; plus 5xx codes. tests/unit/test_aws_errors.py checks the list
#: against botocore's models and lists, so a new modelled throttle cannot be missed.
TRANSIENT_CODES = frozenset(
    {
        # botocore standard retry mode: throttling
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottledException",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "TransactionInProgressException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "LimitExceededException",
        "RequestThrottled",
        "SlowDown",
        "PriorRequestNotComplete",
        "EC2ThrottledException",
        # botocore standard retry mode: transient
        "RequestTimeout",
        "RequestTimeoutException",
        # service models: throttling under the service's own name
        "Throttled",
        "KMSThrottling",
        "KmsThrottled",
        "KMS.ThrottlingException",
        "KmsThrottlingException",
        "KMSThrottlingException",
        # server side
        "ServiceUnavailable",
        "InternalError",
        "InternalFailure",
        "InternalServerError",
        "TransactionConflictException",
    }
)
#: SDK failures of the network, worth a retry: no connection, connect or read timeout, a closed
#: connection (botocore's ConnectionError and HTTPClientError families, which its own standard
#: retry mode retries). Every other BotoCoreError is raised before anything is sent.
TRANSIENT_SDK_ERRORS: tuple[type[BotoCoreError], ...] = (BotocoreConnectionError, HTTPClientError)
#: Error codes S3 answers a read of a key, a version or a bucket that does not exist with (a HEAD
#: has no body: "404"). The one list: every "is it gone?" in functions/ asks :func:`is_not_found`.
NOT_FOUND_CODES = frozenset({"NoSuchKey", "NoSuchVersion", "NoSuchBucket", "NotFound", "404"})


def client(service: str) -> Any:
    """A process-wide boto3 client for ``service`` (thread-safe to share), whose timeouts and
    retries fit the invocation's remaining time (see :func:`timeout_tier`): fetch it right before use.

    Signed with boto3's default credentials (in Lambda: the function's role), or, on the in-process
    local stack, with the credentials of the invocation in progress (one client per role and service).
    """
    credentials = invocation_credentials()
    tier = timeout_tier(_remaining_s())
    key: Any = (service, tier, credentials)
    existing = _clients.get(key)
    if existing is not None:
        return existing
    with _lock:
        if key not in _clients:
            explicit = {}
            if credentials is not None:
                access_key, secret_key, token = credentials
                explicit = {
                    "aws_access_key_id": access_key,
                    "aws_secret_access_key": secret_key,
                    "aws_session_token": token,
                }
            connect, read, attempts = tier
            config = Config(
                retries={"mode": "standard", "total_max_attempts": attempts}, connect_timeout=connect, read_timeout=read
            )
            _clients[key] = boto3.session.Session().client(service, config=config, **explicit)
        return _clients[key]


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def error_name(exc: BaseException) -> str:
    """What to call an error of an AWS call: the service's error code, else the exception's class
    (a botocore connection or read error, which carries none)."""
    return (error_code(exc) if isinstance(exc, ClientError) else "") or type(exc).__name__


def http_status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def is_not_found(exc: ClientError) -> bool:
    """True when S3 says the key, its version or its bucket does not exist."""
    return error_code(exc) in NOT_FOUND_CODES or http_status(exc) == 404


def is_transient(exc: BaseException) -> bool:
    """True for throttling (any service's code, or HTTP 429), 5xx answers, connection problems and timeouts."""
    if isinstance(exc, ClientError):
        status = http_status(exc)
        return error_code(exc) in TRANSIENT_CODES or status == 429 or status >= 500
    return isinstance(exc, TRANSIENT_SDK_ERRORS)


def raise_transient(exc: BaseException, what: str) -> NoReturn:
    """Re-raise an AWS failure as TransientError when retrying can help, as ConfigurationError
    when the SDK refused the call before sending it (ParamValidationError, NoCredentialsError,
    NoRegionError, …), and as it is otherwise."""
    if is_transient(exc):
        raise TransientError(f"{what}: {exc}") from exc
    if isinstance(exc, BotoCoreError):
        raise ConfigurationError(f"{what}: {type(exc).__name__}: {exc}") from exc
    raise exc


def read_object(s3: Any, bucket: str, key: str, limit: int) -> bytes | None:
    """GET s3://bucket/key, reading at most ``limit + 1`` bytes (so a caller can tell it is larger
    than ``limit``); None when the key or its bucket does not exist.

    Other failures raise TransientError when retrying can help, and as they are otherwise.

    Example::

        read_object(s3, "work", "tensors/5e1c….npy", 1 << 20)   # b"\\x93NUMPY…", or None if it is gone
    """
    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"]
        try:
            data: bytes = body.read(limit + 1)
        finally:
            body.close()
    except ClientError as exc:
        if is_not_found(exc):
            return None
        raise_transient(exc, f"GetObject s3://{bucket}/{key}")
    except BotoCoreError as exc:
        raise_transient(exc, f"GetObject s3://{bucket}/{key}")
    return data


def reset_clients() -> None:
    """Forget the cached clients (the local stack calls this when its endpoint changes)."""
    with _lock:
        for existing in _clients.values():
            existing.close()
        _clients.clear()
