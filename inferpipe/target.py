"""The stack the CLI talks to: the local stack (started when needed) or an explicit endpoint.

Example::

    target = Target.connect()                       # the local stack, started if not running
    target.client("s3").list_objects_v2(Bucket=target.resources.buckets["output"])
"""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from inferpipe.local.spec import DEFAULT_ACCOUNT_ID, DEFAULT_REGION, Resources, render_resources

_CLIENT_CONFIG = Config(retries={"mode": "standard", "max_attempts": 5}, connect_timeout=5, read_timeout=60)
#: The local stack accepts any credentials; these keep a user's real ones out of its requests.
_LOCAL_CREDENTIALS = {"aws_access_key_id": "local", "aws_secret_access_key": "local"}


@dataclass
class Target:
    """Resource names plus clients bound to one endpoint."""

    endpoint_url: str
    resources: Resources
    _clients: dict[str, Any] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def state_machine_arn(self) -> str:
        return self.resources.state_machine_arn

    def client(self, service: str) -> Any:
        with self._lock:
            if service not in self._clients:
                self._clients[service] = boto3.session.Session().client(
                    service,
                    endpoint_url=self.endpoint_url,
                    region_name=self.resources.region,
                    config=_CLIENT_CONFIG,
                    **_LOCAL_CREDENTIALS,
                )
            return self._clients[service]

    @classmethod
    def connect(
        cls,
        endpoint_url: str | None = None,
        port: int | None = None,
        state_dir: Path | None = None,
        quiet: bool = False,
    ) -> Target:
        """Use ``endpoint_url`` when given; otherwise the local stack, starting it when needed."""
        if endpoint_url is None:
            from inferpipe.local import daemon

            if not daemon.status(state_dir)["running"] and not quiet:
                print("starting the local stack (inferpipe local up)…", file=sys.stderr)
            endpoint_url = daemon.ensure_running(state_dir=state_dir, port=port)
        return cls(endpoint_url=endpoint_url, resources=render_resources(account_id=DEFAULT_ACCOUNT_ID, region=DEFAULT_REGION))
