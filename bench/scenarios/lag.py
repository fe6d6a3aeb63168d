"""Scenario 6 (placeholder while it is written)."""

from bench.harness import Bench
from bench.report import ScenarioResult


def append_to_visible_lag(bench: Bench) -> list[ScenarioResult]:
    return []
