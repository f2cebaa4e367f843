"""config/stack.json, read once and read-only: the rules Terraform, the local stack, the functions
and the tests share (sinks, names, settings defaults, policies).

The file ships in the container image beside ``functions/`` (Dockerfile), so this module finds it
at the same relative place in the repository and in Lambda (``/var/task/config/stack.json``).
Everything it returns is immutable: mappings are ``MappingProxyType``, lists are tuples.

Example::

    from functions.common import stack

    stack.SINKS                  # ('s3', 'dynamodb', 'sns', 'sqs', 'eventbridge')
    stack.MESSAGE_SINKS          # ('sns', 'sqs', 'eventbridge')
    stack.SETTINGS["WORK_PREFIX"]  # 'tensors/' (the default every function's Settings falls back to)
    stack.EVENT_SOURCE           # 'inferpipe' (the Source of every prediction event)
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

#: INFERPIPE_STACK_FILE points elsewhere only in tests of another definition.
PATH = Path(os.environ.get("INFERPIPE_STACK_FILE") or Path(__file__).resolve().parents[2] / "config" / "stack.json")


def freeze(value: Any) -> Any:
    """A deep, read-only copy of decoded JSON: dicts become mapping proxies, lists tuples."""
    if isinstance(value, Mapping):
        return MappingProxyType({key: freeze(item) for key, item in value.items()})
    if isinstance(value, list | tuple):
        return tuple(freeze(item) for item in value)
    return value


def load(path: Path = PATH) -> Mapping[str, Any]:
    """The whole definition, frozen (``_comment`` keys included: they are documentation)."""
    try:
        return freeze(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise RuntimeError(f"the stack definition {path} is missing (the image copies config/stack.json)") from None


STACK: Mapping[str, Any] = load()
#: Every sink the sink function can write to, in delivery order.
SINKS: tuple[str, ...] = tuple(sink["name"] for sink in STACK["sinks"]["known"])
#: Sinks that publish messages: a second publish would be a second message, so they use the ledger.
MESSAGE_SINKS: tuple[str, ...] = tuple(sink["name"] for sink in STACK["sinks"]["known"] if sink["publishes"])
#: Settings every function falls back to when its environment leaves a variable unset.
SETTINGS: Mapping[str, str] = STACK["settings"]
#: The deployment's request defaults (sinks, top_k, model, model_version).
DEFAULTS: Mapping[str, Any] = STACK["defaults"]
#: The ``Source`` and ``DetailType`` of every prediction event the eventbridge sink puts on its bus.
EVENT_SOURCE: str = STACK["prediction_events"]["source"]
EVENT_DETAIL_TYPE: str = STACK["prediction_events"]["detail_type"]
#: Output-bucket prefixes next to OUTPUT_PREFIX: failure records and the message sinks' delivery ledger.
FAILURE_PREFIX: str = STACK["output_prefixes"]["failures"]
LEDGER_PREFIX: str = STACK["output_prefixes"]["ledger"]

__all__ = [
    "DEFAULTS",
    "EVENT_DETAIL_TYPE",
    "EVENT_SOURCE",
    "FAILURE_PREFIX",
    "LEDGER_PREFIX",
    "MESSAGE_SINKS",
    "PATH",
    "SETTINGS",
    "SINKS",
    "STACK",
    "freeze",
    "load",
]
