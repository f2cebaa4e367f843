"""Bursts don't stall: moto's hot paths under a flood of requests, made to do their work once.

* moto's server lists its own package directory on every request to route it, holding the one
  lock every request needs: the listing is computed once.
* moto reads all of a queue's attributes on every SendMessage (for ContentBasedDeduplication),
  and its three message counts read the clock once per queued message: a queue nobody drains
  (the results queue under a flood) made every send slower than the last. Same counts, one clock.
* moto's EventBridge renders every event for every target through JSONPath expressions, compiling
  each one anew (jsonpath_ng builds a whole parser per compile: 37 % of this process under a
  flood, py-spy --gil): each expression is compiled once.
* moto parses a state machine's ASL anew for every execution: once per definition here
  (:func:`_parsed_program`).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any

from inferpipe.local.patches import Patches

_lock = threading.Lock()
_patches = Patches()


def _now_ms() -> float:
    from moto.core.utils import unix_time_millis

    return float(unix_time_millis())


def _visible(queue: Any) -> int:
    now = _now_ms()
    return sum(1 for m in queue._messages if now > m.visible_at and not now < m.delayed_until)


def _not_visible(queue: Any) -> int:
    now = _now_ms()
    return sum(1 for m in queue._messages if not now > m.visible_at)


def _delayed(queue: Any) -> int:
    now = _now_ms()
    return sum(1 for m in queue._messages if now < m.delayed_until)


#: moto's Queue counts, as its ``Message.visible`` (now > visible_at) and ``delayed``
#: (now < delayed_until) define them, each with one reading of the clock.
_QUEUE_COUNTS: dict[str, Callable[[Any], int]] = {
    "approximate_number_of_messages": _visible,
    "approximate_number_of_messages_not_visible": _not_visible,
    "approximate_number_of_messages_delayed": _delayed,
}


@functools.lru_cache(maxsize=32)
def _parsed_program(definition: str) -> Any:
    """The evaluation entry point of a state machine definition, parsed once per definition text.

    moto parses the ASL with antlr for every execution (``ExecutionWorker._get_evaluation_entrypoint``):
    ~0.1 s of this process's CPU per execution, the whole cost of a batch of one. The parsed
    program is a tree of declarations: every value an execution changes lives in its own
    ``Environment`` (moto already runs one program tree in many concurrent Map iterations), and the
    retry counters are kept in that environment's heap under each declaration's ``heap_key``,
    which moto draws lazily; drawn here once, so that no two threads can draw two keys for one
    declaration.
    """
    from moto.stepfunctions.parser.asl.component.eval_component import EvalComponent
    from moto.stepfunctions.parser.asl.parse.asl_parser import AmazonStateLanguageParser

    program = AmazonStateLanguageParser.parse(definition)[0]
    seen: set[int] = set()
    todo: list[Any] = [program]
    while todo:
        node = todo.pop()
        if id(node) in seen or isinstance(node, (str, bytes, int, float, bool)) or node is None:
            continue
        seen.add(id(node))
        if isinstance(node, EvalComponent):
            node.heap_key  # noqa: B018 (drawn now, once)
        if isinstance(node, dict):
            todo.extend(node.values())
        elif isinstance(node, (list, tuple, set, frozenset)):
            todo.extend(node)
        elif hasattr(node, "__dict__") and type(node).__module__.startswith("moto.stepfunctions.parser.asl.component"):
            todo.extend(vars(node).values())
    return program


def _cached_entrypoint(self: Any) -> Any:
    """``ExecutionWorker._get_evaluation_entrypoint``, from :func:`_parsed_program`."""
    return _parsed_program(self._evaluation_details.state_machine_details.definition)


def install() -> None:
    import jsonpath_ng.ext
    from moto import backends
    from moto.sqs.models import Queue
    from moto.stepfunctions.parser.backend.execution_worker import ExecutionWorker

    with _lock:
        if _patches.applied:
            return
        modules = tuple(backends.list_of_moto_modules())
        _patches.apply(backends, "list_of_moto_modules", lambda: modules)
        for name, count in _QUEUE_COUNTS.items():
            _patches.apply(Queue, name, property(count))
        _patches.apply(jsonpath_ng.ext, "parse", functools.lru_cache(maxsize=1024)(jsonpath_ng.ext.parse))
        _patches.apply(ExecutionWorker, "_get_evaluation_entrypoint", _cached_entrypoint)


def uninstall() -> None:
    with _lock:
        _patches.undo()
        _parsed_program.cache_clear()


__all__ = ["install", "uninstall"]
