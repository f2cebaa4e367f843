"""Every actor signs as its own IAM role: the roles' credentials, and the clients signed with them.

Each Lambda invocation gets the credentials of the function's execution role (assumed through
moto's STS, cached per role like a warm Lambda's) as ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``, exactly as Lambda provides them. Lambda's
platform logs (START/END/REPORT) are written under that role too (:func:`platform_client`).

The moto gap bridged here: moto's interpreter signs a state machine's Lambda tasks with the
process's credentials; :func:`install` replaces its ``boto_client_for`` so that they are signed
with the execution role's. Clients are created once per role and reused (creating one loads
botocore's service model: tens of milliseconds of CPU under the GIL).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from typing import Any

from inferpipe.local.patches import Patches

_lock = threading.Lock()
_patches = Patches()
_role_credentials: dict[str, dict[str, str]] = {}
_clients: dict[tuple[Any, ...], Any] = {}

#: How moto's interpreter configures its task clients: no SDK retries (the ASL's Retry decides).
_TASK_CLIENT_CONFIG: dict[str, Any] = {
    "parameter_validation": False,
    "retries": {"max_attempts": 0, "total_max_attempts": 1},
    "read_timeout": 900,
    "max_pool_connections": 64,  # a burst runs hundreds of tasks at once (botocore's default: 10)
}
_PLATFORM_LOG_CLIENT_CONFIG: dict[str, Any] = {"max_pool_connections": 64}


def role_credentials(role_arn: str, region: str) -> dict[str, str]:
    """Credentials of ``role_arn`` (assumed once per role, through moto's STS), as environment variables."""
    with _lock:
        cached = _role_credentials.get(role_arn)
        if cached is None:
            from moto.sts.models import sts_backends

            account = role_arn.split(":")[4]
            assumed = sts_backends[account]["aws"].assume_role(
                region_name=region,
                role_session_name="inferpipe-local",
                role_arn=role_arn,
                policy="",
                duration=43200,
                external_id="",
            )
            cached = {
                "AWS_ACCESS_KEY_ID": assumed.access_key_id,
                "AWS_SECRET_ACCESS_KEY": assumed.secret_access_key,
                "AWS_SESSION_TOKEN": assumed.session_token,
            }
            _role_credentials[role_arn] = cached
        return dict(cached)


def role_of_access_key(access_key_id: str) -> str | None:
    """The name of the role whose assumed credentials carry ``access_key_id`` (None: not a role's)."""
    with _lock:
        for role_arn, credentials in _role_credentials.items():
            if credentials["AWS_ACCESS_KEY_ID"] == access_key_id:
                return role_arn.rsplit("/", 1)[-1]
    return None


def _stack_client(
    service: str, region: str, credentials: Mapping[str, str], config: Mapping[str, Any] | None = None
) -> Any:
    """A boto3 client at this process's moto server, signed with ``credentials`` (cached, thread-safe).

    Creating a client loads botocore's service model: tens of milliseconds of CPU under the GIL.
    Made per invocation, as the bridge once did, it dominated a burst's sink and orchestration time.
    """
    import boto3
    from botocore.config import Config
    from moto.settings import moto_server_port

    endpoint = f"http://127.0.0.1:{moto_server_port()}"
    key = (service, region, endpoint, credentials["AWS_ACCESS_KEY_ID"], json.dumps(config or {}, sort_keys=True))
    with _lock:
        existing = _clients.get(key)
        if existing is None:
            existing = _clients[key] = boto3.session.Session().client(
                service,
                region_name=region,
                endpoint_url=endpoint,
                aws_access_key_id=credentials["AWS_ACCESS_KEY_ID"],
                aws_secret_access_key=credentials["AWS_SECRET_ACCESS_KEY"],
                aws_session_token=credentials["AWS_SESSION_TOKEN"],
                config=Config(**config) if config else None,
            )
        return existing


def platform_client(service: str, region: str, role_arn: str) -> Any:
    """A client at the stack signed as ``role_arn`` (what Lambda's platform writes logs with)."""
    return _stack_client(service, region, role_credentials(role_arn, region), _PLATFORM_LOG_CLIENT_CONFIG)


def _task_client(region: str, service: str, state_credentials: Any = None) -> Any:
    """moto's ``boto_client_for`` for Step Functions tasks, signed with the execution role's credentials."""
    from moto.stepfunctions.parser.asl.component.state.exec.state_task import lambda_eval_utils

    role_arn = getattr(state_credentials, "role_arn", None)
    if not role_arn:
        moto_own = _patches.original(lambda_eval_utils, "boto_client_for")
        return moto_own(region=region, service=service, state_credentials=state_credentials)
    return _stack_client(service, region, role_credentials(role_arn, region), _TASK_CLIENT_CONFIG)


def install() -> None:
    from moto.stepfunctions.parser.asl.component.state.exec.state_task import lambda_eval_utils

    with _lock:
        if not _patches.applied:
            _patches.apply(lambda_eval_utils, "boto_client_for", _task_client)


def uninstall() -> None:
    """moto's own task clients again; close the cached clients, forget the roles' credentials."""
    with _lock:
        _patches.undo()
        for existing in _clients.values():
            existing.close()
        _clients.clear()
        _role_credentials.clear()


__all__ = ["install", "platform_client", "role_credentials", "role_of_access_key", "uninstall"]
