"""AWS clients shared by the functions, and the mapping of AWS failures onto our error taxonomy.

Clients are created once per process (a warm Lambda reuses them) and honour the standard
settings, including ``AWS_ENDPOINT_URL``, which is how the local stack points them at itself.
"""

from __future__ import annotations

import threading
from typing import Any, NoReturn

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotocoreConnectionError

from functions.common.config import invocation_credentials
from functions.common.errors import ConfigurationError, TransientError

_CONFIG = Config(
    retries={"mode": "standard", "max_attempts": 3},
    connect_timeout=5,
    read_timeout=20,
)
_clients: dict[Any, Any] = {}
_lock = threading.Lock()

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
#: Error codes S3 answers a read of a key that does not exist with (a HEAD has no body: "404").
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NotFound", "404"})


def client(service: str) -> Any:
    """A process-wide boto3 client for ``service`` (thread-safe to share).

    Signed with boto3's default credentials (in Lambda: the function's role), or, on the local
    stack, with the credentials of the invocation in progress (one client per role and service).
    """
    credentials = invocation_credentials()
    key: Any = service if credentials is None else (service, credentials)
    existing = _clients.get(key)
    if existing is not None:
        return existing
    with _lock:
        if key not in _clients:
            explicit = {}
            if credentials is not None:
                access_key, secret_key, token = credentials
                explicit = {"aws_access_key_id": access_key, "aws_secret_access_key": secret_key, "aws_session_token": token}
            _clients[key] = boto3.session.Session().client(service, config=_CONFIG, **explicit)
        return _clients[key]


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def http_status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def is_not_found(exc: ClientError) -> bool:
    """True when S3 says the key does not exist (or its bucket: S3 answers NoSuchBucket with a 404)."""
    return error_code(exc) in _NOT_FOUND_CODES or http_status(exc) == 404


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
        if is_not_found(exc) or error_code(exc) == "NoSuchBucket":
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
