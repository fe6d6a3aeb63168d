"""Figures of the last fault run, for ``docs/reliability.md``.

Each fault test calls :func:`record` once with what it did and what it found, e.g.
``record("pg_crash", operations=1200, faults=3, acknowledged=1180, lost=0, duplicated=0)``.
Figures land in ``.reliability/<name>.json`` at the repository root (not committed);
``python -m tests.reliability.report`` prints them as a Markdown table.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from tests.reliability.tier import TIER

__all__ = ["RESULTS_DIR", "record", "table"]

RESULTS_DIR = Path(__file__).resolve().parents[2] / ".reliability"


def record(name: str, **figures: int | float | str) -> None:
    """Store this run's figures for the test called ``name`` (overwrites the last run's)."""
    RESULTS_DIR.mkdir(exist_ok=True)
    document: dict[str, int | float | str] = {
        "name": name,
        "tier": TIER.name,
        "at": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    document.update(figures)
    (RESULTS_DIR / f"{name}.json").write_text(json.dumps(document, indent=2) + "\n")


def table() -> str:
    """The recorded figures as one Markdown table row per test."""
    rows = []
    for path in sorted(RESULTS_DIR.glob("*.json")):
        document = json.loads(path.read_text())
        name, tier, at = document.pop("name"), document.pop("tier"), document.pop("at")
        figures = ", ".join(f"{key} {value}" for key, value in document.items())
        rows.append(f"| {name} | {tier} | {at} | {figures} |")
    header = "| test | tier | run at | figures |\n|---|---|---|---|"
    return "\n".join([header, *rows])


if __name__ == "__main__":
    sys.stdout.write(table() + "\n")
