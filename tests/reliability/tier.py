"""Test sizes by tier: ``fast`` in ``make test``, ``full`` in ``make test-faults``, ``soak``.

The tier comes from ``CQRSKIT_FAULT_TIER`` (default ``fast``). A test asks for its sizes with
``TIER.pick(fast=..., full=..., soak=...)`` so all three live side by side in the test.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal, TypeVar, cast

__all__ = ["TIER", "Tier", "TierName"]

TierName = Literal["fast", "full", "soak"]
T = TypeVar("T")


@dataclass(frozen=True)
class Tier:
    """The running tier and a picker for tier-dependent sizes."""

    name: TierName

    def pick(self, *, fast: T, full: T, soak: T | None = None) -> T:
        """Return the size for this tier (``soak`` defaults to ``full``)."""
        if self.name == "fast":
            return fast
        if self.name == "soak" and soak is not None:
            return soak
        return full


def _from_env() -> Tier:
    name = os.environ.get("CQRSKIT_FAULT_TIER", "fast")
    if name not in ("fast", "full", "soak"):
        raise ValueError(f"CQRSKIT_FAULT_TIER must be fast, full or soak, not {name!r}")
    return Tier(cast(TierName, name))


TIER = _from_env()
