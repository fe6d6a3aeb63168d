"""Scenario 5 (placeholder while it is written)."""

from bench.harness import Bench
from bench.report import ScenarioResult


def projection_catch_up(bench: Bench) -> list[ScenarioResult]:
    return []
