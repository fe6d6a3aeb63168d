"""Statistics for benchmark repetitions: percentiles, summaries, ratios and targets.

Pure functions and values only (no I/O, no clock), so they can be unit tested.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = ["Summary", "Target", "paired_ratios", "percentile", "ratio"]


def percentile(values: Sequence[float], p: float) -> float:
    """Return the ``p``-th percentile (0-100) by linear interpolation between ranks.

    Returns NaN for no values. ``values`` need not be sorted.
    """
    if not 0 <= p <= 100:
        raise ValueError("percentile must be between 0 and 100")
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    fraction = rank - low
    return ordered[low] + (ordered[high] - ordered[low]) * fraction


@dataclass(frozen=True)
class Summary:
    """Median, min and max of a series of repetitions."""

    median: float
    min: float
    max: float
    n: int

    @classmethod
    def of(cls, reps: Sequence[float]) -> Summary:
        """Summarise ``reps`` (NaN everywhere when empty)."""
        if not reps:
            return cls(math.nan, math.nan, math.nan, 0)
        return cls(float(statistics.median(reps)), float(min(reps)), float(max(reps)), len(reps))


def ratio(ours: float, reference: float) -> float:
    """Return ``ours / reference`` (NaN when the reference is zero or missing)."""
    if reference == 0 or math.isnan(reference) or math.isnan(ours):
        return math.nan
    return ours / reference


def paired_ratios(ours: Sequence[float], reference: Sequence[float]) -> list[float]:
    """Return the per-repetition ratios of two interleaved series of equal length."""
    if len(ours) != len(reference):
        return []
    return [ratio(a, b) for a, b in zip(ours, reference, strict=True)]


@dataclass(frozen=True)
class Target:
    """What a result must reach: ``ours / reference <op> value``, or ``ours <op> value``.

    ``reference`` names the reference series the ratio is taken against; ``None`` makes the
    target absolute (on our median, in the scenario's unit).
    """

    op: Literal[">=", "<="]
    value: float
    reference: str | None = None

    def met(self, measured: float) -> bool | None:
        """Whether ``measured`` (a ratio, or our median when absolute) meets the target."""
        if math.isnan(measured):
            return None
        return measured >= self.value if self.op == ">=" else measured <= self.value

    def describe(self, unit: str = "") -> str:
        """Render for a table, e.g. ``>= 0.7x raw asyncpg`` or ``<= 20 ms``."""
        op = ">=" if self.op == ">=" else "<="
        if self.reference is None:
            return f"{op} {self.value:g} {unit}".rstrip()
        return f"{op} {self.value:g}x {self.reference}"
