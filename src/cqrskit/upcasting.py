"""Upcasters: turn old stored shapes of an event into the shape its current class expects.

An event class declares ``schema_version`` (1 unless it says otherwise). When a class
changes shape, bump its ``schema_version`` and register an upcaster for the version it
replaces::

    @upcaster("OrderCancelled", 1)
    def _reason_became_required(data: dict[str, Any]) -> dict[str, Any]:
        return {**data, "reason": data.get("reason", "")}

Guarantees:

1. Stored events are never rewritten: upcasting happens on every read, in the mapper, so
   ``read_stream``, ``read_all`` and every projection see the current shape.
2. An event stored at version ``v`` of a class now at version ``n`` passes through the
   upcasters ``v -> v+1``, ..., ``n-1 -> n`` in order. A step with no upcaster leaves the
   payload as it is (a field added with a default needs none).
3. Only the event's payload passes through an upcaster (a JSON-compatible ``dict``); the
   envelope (id, stream, version, time, metadata) is the store's and cannot be changed.
4. One upcaster per ``(event_type, from_version)``: registering a second raises ``ValueError``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["Upcaster", "UpcasterRegistry", "register_upcaster", "upcaster", "upcasters"]

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]


class UpcasterRegistry:
    """Upcasters by ``(event_type, from_version)``."""

    def __init__(self) -> None:
        self._steps: dict[tuple[str, int], Upcaster] = {}
        self._types: dict[str, int] = {}  # event type -> lowest from_version registered

    def register(self, event_type: str, from_version: int, fn: Upcaster) -> None:
        """Register ``fn`` to turn ``event_type`` payloads of ``from_version`` into the next."""
        if from_version < 1:
            raise ValueError("schema versions start at 1")
        key = (event_type, from_version)
        if key in self._steps:
            raise ValueError(f"{event_type} v{from_version} already has an upcaster")
        self._steps[key] = fn
        self._types[event_type] = min(self._types.get(event_type, from_version), from_version)

    def unregister(self, event_type: str, from_version: int) -> None:
        """Remove an upcaster (tests)."""
        self._steps.pop((event_type, from_version), None)
        versions = [v for (t, v) in self._steps if t == event_type]
        if versions:
            self._types[event_type] = min(versions)
        else:
            self._types.pop(event_type, None)

    def applies(self, event_type: str, stored: int, current: int) -> bool:
        """Whether any upcaster lies between ``stored`` and ``current`` for ``event_type``."""
        lowest = self._types.get(event_type)
        if lowest is None or stored >= current:
            return False
        return any((event_type, v) in self._steps for v in range(stored, current))

    def upcast(
        self, event_type: str, stored: int, current: int, data: dict[str, Any]
    ) -> dict[str, Any]:
        """Run ``data`` through every upcaster from ``stored`` up to ``current``."""
        for version in range(stored, current):
            step = self._steps.get((event_type, version))
            if step is not None:
                data = step(data)
                if not isinstance(data, dict):
                    raise TypeError(f"upcaster {event_type} v{version} did not return a dict")
        return data


upcasters = UpcasterRegistry()
"""The registry the event mapper reads."""


def register_upcaster(event_type: str, from_version: int, fn: Upcaster) -> None:
    """Register ``fn`` in the default registry (see :meth:`UpcasterRegistry.register`)."""
    upcasters.register(event_type, from_version, fn)


def upcaster(event_type: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
    """Decorator form of :func:`register_upcaster`."""

    def decorate(fn: Upcaster) -> Upcaster:
        upcasters.register(event_type, from_version, fn)
        return fn

    return decorate


def __dir__() -> list[str]:
    return list(__all__)
