"""Scenario 7 (placeholder while it is written)."""

from bench.harness import Bench
from bench.report import ScenarioResult


def http_scenarios(bench: Bench) -> list[ScenarioResult]:
    return []
