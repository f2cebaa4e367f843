"""AWS failures classified by what AWS really returns: retried only when retrying can help."""

from __future__ import annotations

import botocore.session
import pytest
from botocore.exceptions import (
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
    ParamValidationError,
    ReadTimeoutError,
)
from botocore.retries.standard import ThrottledRetryableChecker, TransientRetryableChecker

from functions.common import aws
from functions.common.aws import TRANSIENT_CODES, is_transient, raise_transient
from functions.common.errors import ConfigurationError, TransientError
from inferpipe.local.faults import DEFAULT_ERRORS
from tests.conftest import FakeLambdaContext

#: The services the functions call.
SERVICES = ("s3", "sns", "sqs", "dynamodb", "events", "stepfunctions", "kms")


def _client_error(code: str, status: int) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}, "Op")


def _modelled_throttles() -> set[str]:
    """Every error code a service model of ours declares for throttling (or HTTP 429)."""
    session = botocore.session.get_session()
    found = set()
    for service in SERVICES:
        model = session.get_service_model(service)
        for name in model.shape_names:
            meta = model.shape_for(name).metadata
            if not meta.get("exception"):
                continue
            code = meta.get("error", {}).get("code", name)
            if (
                "hrottl" in code.lower()
                or "hrottl" in name.lower()
                or meta.get("error", {}).get("httpStatusCode") == 429
            ):
                found |= {code, name}
    return found


def test_every_modelled_throttle_and_every_code_botocore_retries_is_transient() -> None:
    modelled = _modelled_throttles()
    assert {"Throttled", "KMSThrottling", "KmsThrottled", "ThrottlingException", "KmsThrottlingException"} <= modelled
    assert modelled <= TRANSIENT_CODES
    assert set(ThrottledRetryableChecker._THROTTLED_ERROR_CODES) <= TRANSIENT_CODES
    assert set(TransientRetryableChecker._TRANSIENT_ERROR_CODES) <= TRANSIENT_CODES


@pytest.mark.parametrize(
    ("code", "status", "transient"),
    [
        ("Throttled", 429, True),  # SNS
        ("KMSThrottling", 400, True),  # SNS
        ("KmsThrottled", 400, True),  # SQS
        ("KMS.ThrottlingException", 400, True),  # SQS, query-compatible form
        ("SomethingNew", 429, True),  # any 429
        ("InternalError", 500, True),
        ("AccessDenied", 403, False),
        ("NotFound", 404, False),
        ("InvalidParameter", 400, False),
    ],
)
def test_client_errors(code: str, status: int, transient: bool) -> None:
    assert is_transient(_client_error(code, status)) is transient


@pytest.mark.parametrize(
    "exc",
    [
        EndpointConnectionError(endpoint_url="https://x"),
        ConnectTimeoutError(endpoint_url="https://x"),
        ReadTimeoutError(endpoint_url="https://x"),
    ],
)
def test_network_failures_are_transient(exc: Exception) -> None:
    with pytest.raises(TransientError):
        raise_transient(exc, "PutObject s3://b/k")


@pytest.mark.parametrize(
    ("exc", "name"),
    [
        (ParamValidationError(report="Invalid type for parameter Key"), "ParamValidationError"),
        (NoCredentialsError(), "NoCredentialsError"),
        (NoRegionError(), "NoRegionError"),
    ],
)
def test_sdk_refusals_are_a_named_permanent_configuration_error(exc: Exception, name: str) -> None:
    assert not is_transient(exc)
    with pytest.raises(ConfigurationError, match=f"PutObject s3://b/k: {name}"):
        raise_transient(exc, "PutObject s3://b/k")


def test_the_fault_injector_throttles_with_codes_the_services_really_send() -> None:
    modelled = _modelled_throttles() | set(ThrottledRetryableChecker._THROTTLED_ERROR_CODES)
    for service, (status, code) in DEFAULT_ERRORS.items():
        assert code in modelled, service
        assert is_transient(_client_error(code, status)), service
    assert DEFAULT_ERRORS["sns"] == (429, "Throttled")


@pytest.mark.parametrize("timeout_s", [3, 15, 30, 60, 900])
def test_sdk_timeouts_and_retries_fit_in_what_the_invocation_has_left(
    timeout_s: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    # GIVEN an invocation with its whole timeout left
    with aws.invocation_deadline(FakeLambdaContext(remaining_ms=timeout_s * 1000)):
        client = aws.client("sns")
    # THEN a call that times out on every attempt, with botocore's back-off, still ends (as a
    # retryable error) before Lambda would kill the function
    config = client.meta.config
    attempts = config.retries["total_max_attempts"]
    worst = aws.worst_case_seconds(config.connect_timeout, config.read_timeout, attempts)
    assert (
        worst <= timeout_s - aws.DEADLINE_MARGIN_S
        or (config.connect_timeout, config.read_timeout, attempts) == aws.TIMEOUT_TIERS[-1]
    )
    assert config.retries["mode"] == "standard"
    # AND the 15 s sink no longer gets the SDK defaults (5 s + 20 s, 3 attempts) that outlived it
    if timeout_s == 15:
        assert (config.connect_timeout, config.read_timeout, attempts) == (1, 3, 2)


def test_outside_an_invocation_the_patient_timeouts_apply(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    config = aws.client("s3").meta.config
    assert (config.connect_timeout, config.read_timeout, config.retries["total_max_attempts"]) == aws.TIMEOUT_TIERS[0]
