"""The stack the CLI talks to: the local stack (started when needed), an explicit endpoint, or AWS.

Example::

    target = Target.connect()                       # the local stack, started if not running
    target.client("s3").list_objects_v2(Bucket=target.resources.buckets["output"])
    target = Target.connect(aws=True)               # the deployment `terraform output -json inferpipe` describes
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from inferpipe.stack.resources import DEFAULT_ACCOUNT_ID, DEFAULT_REGION, Resources, render_resources

_CLIENT_CONFIG = Config(retries={"mode": "standard", "max_attempts": 5}, connect_timeout=5, read_timeout=60)
#: The local stack accepts any credentials; these keep a user's real ones out of its requests.
_LOCAL_CREDENTIALS = {"aws_access_key_id": "local", "aws_secret_access_key": "local"}
#: Where ``terraform output`` is run when no output file is given.
TERRAFORM_DIR = Path(__file__).resolve().parent.parent / "terraform"
#: ``INFERPIPE_TARGET=aws`` makes ``--aws`` the default.
TARGET_ENV = "INFERPIPE_TARGET"


class TargetError(RuntimeError):
    """The deployment to use could not be described (no terraform output, a malformed one)."""


def read_terraform_output(path: Path | None = None, terraform_dir: Path = TERRAFORM_DIR) -> dict[str, Any]:
    """The ``inferpipe`` output of a deployment: from ``path`` (``terraform output -json inferpipe`` or
    the whole ``terraform output -json``, saved) or by running ``terraform output`` in ``terraform_dir``."""
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise TargetError(f"cannot read the terraform output file {path}: {exc.strerror}") from None
    else:
        terraform = shutil.which("terraform")
        if terraform is None:
            raise TargetError(
                "terraform is not installed: run `terraform output -json inferpipe > stack.json` where it is, "
                "then pass --terraform-output stack.json"
            )
        answer = subprocess.run(
            [terraform, f"-chdir={terraform_dir}", "output", "-json", "inferpipe"],
            capture_output=True,
            text=True,
            check=False,
        )
        if answer.returncode != 0:
            raise TargetError(f"`terraform output -json inferpipe` failed in {terraform_dir}: {answer.stderr.strip()}")
        text = answer.stdout
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise TargetError(f"the terraform output is not JSON: {exc}") from None
    return parse_terraform_output(raw)


def parse_terraform_output(raw: Any) -> dict[str, Any]:
    """The ``inferpipe`` object, whether given bare, as ``{"inferpipe": {"value": ...}}`` or ``{"value": ...}``."""
    if isinstance(raw, Mapping) and "inferpipe" in raw:
        raw = raw["inferpipe"]
    if isinstance(raw, Mapping) and "value" in raw and "sensitive" in raw:
        raw = raw["value"]
    if not isinstance(raw, Mapping):
        raise TargetError("the terraform output has no 'inferpipe' object")
    missing = [
        key
        for key in ("prefix", "account_id", "region", "buckets", "state_machine_arn", "functions")
        if not raw.get(key)
    ]
    if missing:
        raise TargetError(f"the terraform output's 'inferpipe' object lacks {', '.join(missing)}")
    return dict(raw)


def resources_from_output(output: Mapping[str, Any]) -> Resources:
    """The deployment's resources: the stack definition rendered for its prefix/account/region, with
    every name the output states taken from the output (it wins where a variable renamed something)."""
    resources = render_resources(str(output["prefix"]), str(output["account_id"]), str(output["region"]))
    buckets = {**resources.buckets, **{k: v for k, v in dict(output["buckets"]).items() if v}}
    functions = {
        key: dataclasses.replace(spec, name=str(output["functions"].get(key) or spec.name))
        for key, spec in resources.functions.items()
    }
    changes: dict[str, Any] = {"buckets": buckets, "functions": functions}
    state_machine = str(output["state_machine_arn"]).rsplit(":", 1)[-1]
    changes["state_machine"] = state_machine
    if output.get("table"):
        changes["table"] = str(output["table"])
    if output.get("claims_table"):
        changes["claims"] = dataclasses.replace(resources.claims, table=str(output["claims_table"]))
    if output.get("topic_arn"):
        changes["topic"] = str(output["topic_arn"]).rsplit(":", 1)[-1]
    if output.get("queue_url"):
        changes["queue"] = str(output["queue_url"]).rstrip("/").rsplit("/", 1)[-1]
    if output.get("event_bus"):
        changes["event_bus"] = str(output["event_bus"])
    if output.get("trigger_rule"):
        changes["trigger_rule"] = str(output["trigger_rule"])
    if output.get("sinks") or output.get("defaults"):
        defaults = dict(output.get("defaults") or {})
        changes["defaults"] = dataclasses.replace(
            resources.defaults,
            sinks=tuple(output.get("sinks") or resources.defaults.sinks),
            top_k=int(defaults.get("top_k") or resources.defaults.top_k),
            model=str(defaults.get("model") or resources.defaults.model),
            model_version=str(defaults.get("model_version") or resources.defaults.model_version),
        )
    return dataclasses.replace(resources, **changes)


@dataclass
class Target:
    """Resource names plus clients bound to one endpoint."""

    endpoint_url: str | None  # None: AWS itself, with boto3's default credentials and region
    resources: Resources
    _clients: dict[str, Any] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def state_machine_arn(self) -> str:
        return self.resources.state_machine_arn

    def client(self, service: str) -> Any:
        with self._lock:
            if service not in self._clients and self.endpoint_url is None:
                self._clients[service] = boto3.session.Session().client(
                    service, region_name=self.resources.region, config=_CLIENT_CONFIG
                )
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
        aws: bool | None = None,
        terraform_output: Path | None = None,
    ) -> Target:
        """AWS when ``aws`` (default: env ``INFERPIPE_TARGET=aws``), described by ``terraform_output`` or
        by ``terraform output`` in terraform/; else ``endpoint_url`` when given; else the local stack,
        starting it when needed."""
        if aws is None:
            aws = os.environ.get(TARGET_ENV, "").strip().lower() == "aws" or terraform_output is not None
        if aws:
            return cls(endpoint_url=None, resources=resources_from_output(read_terraform_output(terraform_output)))
        if endpoint_url is None:
            from inferpipe.local import daemon

            if not daemon.status(state_dir)["running"] and not quiet:
                print("starting the local stack (inferpipe local up)…", file=sys.stderr)
            endpoint_url = daemon.ensure_running(state_dir=state_dir, port=port)
        return cls(
            endpoint_url=endpoint_url, resources=render_resources(account_id=DEFAULT_ACCOUNT_ID, region=DEFAULT_REGION)
        )
