"""The client side of ``inferpipe local fault``: add, list or clear the fault rules of a running local
stack through its ``/_inferpipe/faults`` (loopback only, with the stack's control token).

Example::

    endpoint = local_endpoint(None, STATE_DIR)        # the stack `inferpipe local up` started
    rule = send(endpoint, "add", rule_spec("s3:GetObject", count=3), token=control_token(STATE_DIR))["rule"]
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

_METHODS = {"add": "POST", "list": "GET", "clear": "DELETE"}
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


class FaultControlError(RuntimeError):
    """No local stack to ask, not a local one, no token, or the stack refused or did not answer."""


def local_endpoint(endpoint_url: str | None, state_dir: Path) -> str:
    """``endpoint_url``, else the running stack's; it must be on loopback (faults are injected nowhere else)."""
    from inferpipe.local import daemon

    endpoint = endpoint_url
    if not endpoint:
        status = daemon.status(state_dir=state_dir)
        endpoint = status.get("endpoint_url") if status.get("running") else None
        if not endpoint:
            raise FaultControlError("no local stack is running (start one with `inferpipe local up`)")
    host = (urllib.parse.urlsplit(endpoint).hostname or "").lower()
    if host not in _LOOPBACK:
        raise FaultControlError(f"{endpoint} is not a local stack: faults are injected on loopback only")
    return endpoint


def token_for(endpoint: str, state_dir: Path) -> str:
    """The control token of the stack ``inferpipe local up`` started from ``state_dir`` (or INFERPIPE_LOCAL_TOKEN)."""
    from inferpipe.local import daemon

    token = daemon.control_token(state_dir)
    if not token:
        raise FaultControlError(
            f"no control token for {endpoint}: it is in the state folder of the `inferpipe local up` "
            f"that started the stack ({state_dir}), or in INFERPIPE_LOCAL_TOKEN"
        )
    return token


def rule_spec(
    target: str,
    *,
    error: str | None = None,
    status: int | None = None,
    count: int | None = None,
    rate: float | None = None,
    delay: float = 0.0,
    match: str | None = None,
) -> dict[str, Any]:
    """The body of ``add`` for ``SERVICE[:OPERATION]``: one matching request fails unless ``count`` or ``rate`` says otherwise."""
    service, _, operation = target.partition(":")
    spec = {
        "service": service,
        "operation": operation or None,
        "error": error,
        "status": status,
        "count": 1 if count is None and rate is None else count,
        "rate": rate,
        "delay": delay,
        "match": match,
    }
    return {k: v for k, v in spec.items() if v is not None}


def send(endpoint: str, action: str, spec: dict[str, Any] | None, *, token: str) -> dict[str, Any]:
    """``action`` (add, list or clear) at the stack's ``/_inferpipe/faults``; its JSON answer."""
    from inferpipe.local.guard import TOKEN_HEADER

    request = urllib.request.Request(
        f"{endpoint.rstrip('/')}/_inferpipe/faults",
        data=None if spec is None else json.dumps(spec).encode(),
        method=_METHODS[action],
        headers={TOKEN_HEADER: token, "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            result: dict[str, Any] = json.loads(answer.read())
    except urllib.error.HTTPError as refused:
        raise FaultControlError(
            f"the local stack at {endpoint} refused: HTTP {refused.code}: {_refusal(refused)}"
        ) from None
    except urllib.error.URLError as unreachable:
        raise FaultControlError(f"no local stack answers at {endpoint}: {unreachable.reason}") from None
    return result


def _refusal(refused: urllib.error.HTTPError) -> str:
    """The stack's own reason (its JSON ``error``, else the body's text), else HTTP's."""
    raw = refused.read()
    try:
        return str(json.loads(raw or b"{}").get("error") or refused.reason)
    except ValueError:
        return raw.decode("utf-8", "replace").strip() or str(refused.reason)


def describe(rule: dict[str, Any]) -> str:
    """A rule as one line: what it matches, what it answers, how often, what is left, how often it fired."""
    what = f"held {rule['delay']:g} s" if rule["delay"] else f"{rule['error']} (HTTP {rule['status']})"
    how = f"{rule['rate']:.0%} of requests" if rule["rate"] is not None else "every request"
    left = "until cleared" if rule["remaining"] is None else f"{rule['remaining']} left"
    where = f" matching {rule['match']!r}" if rule["match"] else ""
    return f"{rule['service']}:{rule['operation']}{where}: {what}, {how}, {left}, fired {rule['fired']}"


__all__ = ["FaultControlError", "describe", "local_endpoint", "rule_spec", "send", "token_for"]
