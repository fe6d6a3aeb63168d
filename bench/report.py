"""Benchmark results: the stable JSON shape, the Markdown table, and the files they go to.

A run writes ``bench/results/<timestamp>.json`` and copies it to ``bench/results/latest.json``
(and the table to ``latest.md``). The JSON document is::

    {"format": 1, "mode": "quick" | "full", "started_at": ..., "finished_at": ...,
     "machine": {...}, "postgres": {...}, "probes": {"start": {...}, "end": {...}},
     "scenarios": [
        {"id": "1", "name": ..., "metric": "commands/s", "unit": "commands/s",
         "higher_is_better": true, "status": "measured" | "not yet built" | "skipped" | "failed",
         "note": ..., "params": {...},
         "ours": {"label", "reps", "median", "min", "max", "n"} | null,
         "references": [{"label", "reps", "median", "min", "max", "n",
                          "ratio", "paired_ratio": {"median", "min", "max", "n"}}],
         "targets": [{"reference", "op", "value", "text", "measured", "met"}],
         "met": true | false | null}
     ]}

``ratio`` is always ``ours / reference`` in the scenario's unit (higher is better for
throughput; for latencies a ratio below 1 means we are faster). ``met`` is ``null`` when the
scenario was not measured or a target could not be evaluated.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.stats import Summary, Target, paired_ratios, ratio

__all__ = [
    "FORMAT",
    "ScenarioResult",
    "Series",
    "fmt",
    "render_markdown",
    "scenario_dict",
    "write_results",
]

FORMAT = 1


@dataclass
class Series:
    """The repetitions of one contestant (ours or a reference) in one scenario."""

    label: str
    reps: list[float] = field(default_factory=list)

    @property
    def summary(self) -> Summary:
        """Median, min and max of the repetitions."""
        return Summary.of(self.reps)


@dataclass
class ScenarioResult:
    """One row of the report."""

    id: str
    name: str
    unit: str
    higher_is_better: bool = True
    ours: Series | None = None
    references: list[Series] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    status: str = "measured"
    note: str = ""
    params: dict[str, Any] = field(default_factory=dict)

    def reference(self, label: str) -> Series | None:
        """Return the reference series called ``label``."""
        return next((r for r in self.references if r.label == label), None)

    def ratio_to(self, label: str) -> float:
        """Return our median divided by the reference's median."""
        ref = self.reference(label)
        if self.ours is None or ref is None:
            return math.nan
        return ratio(self.ours.summary.median, ref.summary.median)

    def evaluate(self, target: Target) -> tuple[float, bool | None]:
        """Return the measured value a target applies to, and whether it is met."""
        if self.ours is None or self.status != "measured":
            return math.nan, None
        if target.reference is None:
            measured = self.ours.summary.median
        else:
            measured = self.ratio_to(target.reference)
        return measured, target.met(measured)

    @property
    def met(self) -> bool | None:
        """All targets met (``None`` when there are none or one cannot be evaluated)."""
        outcomes = [self.evaluate(t)[1] for t in self.targets]
        if not outcomes or any(o is None for o in outcomes):
            return None
        return all(outcomes)


def _num(value: float) -> float | None:
    return None if math.isnan(value) else value


def _summary_dict(summary: Summary) -> dict[str, Any]:
    return {
        "median": _num(summary.median),
        "min": _num(summary.min),
        "max": _num(summary.max),
        "n": summary.n,
    }


def _series_dict(series: Series) -> dict[str, Any]:
    return {"label": series.label, "reps": list(series.reps), **_summary_dict(series.summary)}


def scenario_dict(result: ScenarioResult) -> dict[str, Any]:
    """Render one scenario in the stable JSON shape (see the module docstring)."""
    references = []
    for ref in result.references:
        entry = _series_dict(ref)
        entry["ratio"] = _num(result.ratio_to(ref.label))
        paired = paired_ratios(result.ours.reps, ref.reps) if result.ours else []
        entry["paired_ratio"] = _summary_dict(Summary.of(paired))
        references.append(entry)
    targets = []
    for target in result.targets:
        measured, met = result.evaluate(target)
        targets.append(
            {
                "reference": target.reference,
                "op": target.op,
                "value": target.value,
                "text": target.describe(result.unit),
                "measured": _num(measured),
                "met": met,
            }
        )
    return {
        "id": result.id,
        "name": result.name,
        "metric": result.unit,
        "unit": result.unit,
        "higher_is_better": result.higher_is_better,
        "status": result.status,
        "note": result.note,
        "params": result.params,
        "ours": _series_dict(result.ours) if result.ours else None,
        "references": references,
        "targets": targets,
        "met": result.met,
    }


def fmt(value: float | None) -> str:
    """Format a number for the table: thousands separators, about three significant digits."""
    if value is None or math.isnan(value):
        return "n/a"
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _cell(series: Series, unit: str) -> str:
    s = series.summary
    if s.n == 0:
        return "n/a"
    spread = f" ({fmt(s.min)}-{fmt(s.max)})" if s.n > 1 else ""
    return f"{fmt(s.median)}{spread} {unit}"


def _met_text(met: bool | None) -> str:
    return {True: "yes", False: "**no**", None: "-"}[met]


def render_markdown(results: Sequence[ScenarioResult]) -> str:
    """Render the results table (one row per scenario)."""
    lines = [
        "| # | scenario | ours: median (min-max) | references: median (min-max) "
        "| ours / reference | target | met |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if r.status != "measured" or r.ours is None:
            lines.append(f"| {r.id} | {r.name} | {r.status} | | | {_targets_text(r)} | - |")
            continue
        refs = "<br>".join(f"{ref.label}: {_cell(ref, r.unit)}" for ref in r.references) or "-"
        ratios = (
            "<br>".join(f"{fmt(r.ratio_to(ref.label))}x {ref.label}" for ref in r.references) or "-"
        )
        mets = "<br>".join(_met_text(r.evaluate(t)[1]) for t in r.targets) or "-"
        lines.append(
            f"| {r.id} | {r.name} | {_cell(r.ours, r.unit)} | {refs} | {ratios} "
            f"| {_targets_text(r)} | {mets} |"
        )
    return "\n".join(lines)


def _targets_text(result: ScenarioResult) -> str:
    return "<br>".join(t.describe(result.unit) for t in result.targets) or "-"


def write_results(
    results_dir: Path,
    stamp: str,
    header: Mapping[str, Any],
    results: Sequence[ScenarioResult],
) -> Path:
    """Write ``<stamp>.json`` plus ``latest.json`` and ``latest.md``; return the JSON path."""
    results_dir.mkdir(parents=True, exist_ok=True)
    document = {
        "format": FORMAT,
        **header,
        "scenarios": [scenario_dict(r) for r in results],
    }
    path = results_dir / f"{stamp}.json"
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")
    shutil.copyfile(path, results_dir / "latest.json")
    (results_dir / "latest.md").write_text(render_markdown(results) + "\n")
    return path
