"""moto patched in this process: every bridge installed (:func:`install`) and undone (:func:`uninstall`).

Each bridge (the list: :mod:`inferpipe.local`) is a module with ``install()`` and ``uninstall()``
that keeps the attributes it replaced in a :class:`Patches`. Only one local stack per process:
moto's state is global.

Example::

    patches = Patches()
    patches.apply(StepFunctionResponse, "describe_execution", _describe_with_redrive)
    patches.original(StepFunctionResponse, "describe_execution")(self)   # moto's own
    patches.undo()   # every attribute as it was (one moto lacked is deleted again)
"""

from __future__ import annotations

import threading
from types import ModuleType
from typing import Any

_MISSING = object()


class Patches:
    """One bridge's replaced attributes (thread-safe; :meth:`undo` is idempotent)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._saved: dict[tuple[int, str], tuple[Any, str, Any]] = {}

    @property
    def applied(self) -> bool:
        with self._lock:
            return bool(self._saved)

    def apply(self, owner: Any, name: str, value: Any) -> None:
        """Set ``owner.name`` to ``value``, keeping what ``owner`` itself defined there (if anything)."""
        with self._lock:
            self._saved.setdefault((id(owner), name), (owner, name, owner.__dict__.get(name, _MISSING)))
            setattr(owner, name, value)

    def original(self, owner: Any, name: str) -> Any:
        """What ``owner.name`` was before :meth:`apply`."""
        return self._saved[(id(owner), name)][2]

    def undo(self) -> None:
        with self._lock:
            for owner, name, value in reversed(list(self._saved.values())):
                if value is _MISSING:
                    delattr(owner, name)
                else:
                    setattr(owner, name, value)
            self._saved.clear()


def bridges() -> tuple[ModuleType, ...]:
    """The bridges over moto's gaps, in the order they are installed (undone in reverse)."""
    from inferpipe.local import (
        credentials,
        event_delivery,
        iam_enforcement,
        lambda_service,
        redrive,
        sfn_api,
        speedups,
        status_events,
    )

    return (lambda_service, event_delivery, iam_enforcement, credentials, speedups, redrive, status_events, sfn_api)


def install() -> None:
    """Install every bridge (idempotent). Fails loudly when moto's internals are not the ones they target."""
    for bridge in bridges():
        bridge.install()


def uninstall() -> None:
    """Undo every bridge and forget what they kept (faults, handlers, records, credentials; idempotent)."""
    for bridge in reversed(bridges()):
        bridge.uninstall()


__all__ = ["Patches", "bridges", "install", "uninstall"]
