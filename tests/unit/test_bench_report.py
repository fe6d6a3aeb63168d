"""The benchmark report's statistics and table: ratios, targets, the JSON shape (no timing)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from bench.report import ScenarioResult, Series, fmt, render_markdown, scenario_dict, write_results
from bench.stats import Summary, Target, paired_ratios, percentile, ratio


def test_percentile_interpolates_between_ranks() -> None:
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == pytest.approx(2.5)
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 99) == pytest.approx(4.96)
    assert percentile([7.0], 99) == 7.0
    assert math.isnan(percentile([], 50))


def test_percentile_rejects_out_of_range() -> None:
    with pytest.raises(ValueError, match="between 0 and 100"):
        percentile([1.0], 101)


def test_summary_gives_median_min_max() -> None:
    assert Summary.of([3.0, 1.0, 10.0]) == Summary(3.0, 1.0, 10.0, 3)
    assert Summary.of([]).n == 0


def test_ratio_is_ours_over_reference_and_nan_without_reference() -> None:
    assert ratio(700.0, 1000.0) == pytest.approx(0.7)
    assert math.isnan(ratio(1.0, 0.0))
    assert paired_ratios([1.0, 4.0], [2.0, 2.0]) == [0.5, 2.0]
    assert paired_ratios([1.0], [1.0, 2.0]) == []


def test_targets_compare_in_their_direction() -> None:
    at_least = Target(">=", 0.7, "raw")
    at_most = Target("<=", 20.0)
    assert at_least.met(0.7) is True
    assert at_least.met(0.69) is False
    assert at_most.met(25.0) is False
    assert at_most.met(math.nan) is None
    assert at_least.describe() == ">= 0.7x raw"
    assert at_most.describe("ms") == "<= 20 ms"


def _result() -> ScenarioResult:
    return ScenarioResult(
        id="1",
        name="commands",
        unit="commands/s",
        ours=Series("ours", [800.0, 900.0, 700.0]),
        references=[Series("raw", [1000.0, 1000.0, 1000.0]), Series("es", [80.0, 90.0, 70.0])],
        targets=[Target(">=", 0.7, "raw"), Target(">=", 10, "es")],
    )


def test_scenario_is_met_only_when_every_target_is() -> None:
    result = _result()
    assert result.ratio_to("raw") == pytest.approx(0.8)
    assert result.met is True
    result.targets.append(Target(">=", 0.9, "raw"))
    assert result.met is False


def test_absolute_target_applies_to_our_median() -> None:
    result = ScenarioResult("6", "lag", "ms", False, Series("ours", [5.0, 30.0, 25.0]))
    result.targets = [Target("<=", 20.0)]
    assert result.evaluate(result.targets[0]) == (25.0, False)


def test_unmeasured_scenario_has_no_verdict() -> None:
    result = ScenarioResult("8", "rebuild", "events/s", status="not yet built")
    result.targets = [Target(">=", 50_000)]
    assert result.met is None
    assert "not yet built" in render_markdown([result])


def test_json_shape_holds_ratios_and_verdicts() -> None:
    document = scenario_dict(_result())
    raw = document["references"][0]
    assert raw["ratio"] == pytest.approx(0.8)
    assert raw["paired_ratio"]["min"] == pytest.approx(0.7)
    assert document["ours"]["median"] == 800.0
    assert [t["met"] for t in document["targets"]] == [True, True]
    assert document["met"] is True


def test_markdown_row_lists_every_reference_and_ratio() -> None:
    row = render_markdown([_result()]).splitlines()[2]
    assert "800 (700-900) commands/s" in row
    assert "0.800x raw" in row
    assert "10.0x es" in row
    assert ">= 0.7x raw" in row


def test_fmt_keeps_about_three_significant_digits() -> None:
    assert fmt(12345.6) == "12,346"
    assert fmt(12.345) == "12.3"
    assert fmt(0.01234) == "0.012"
    assert fmt(None) == "n/a"


def test_write_results_writes_stamped_and_latest_files(tmp_path: Path) -> None:
    path = write_results(tmp_path, "20260101-000000", {"mode": "quick"}, [_result()])
    document = json.loads(path.read_text())
    assert document["format"] == 1
    assert document["mode"] == "quick"
    assert document["scenarios"][0]["id"] == "1"
    assert json.loads((tmp_path / "latest.json").read_text()) == document
    assert (tmp_path / "latest.md").read_text().startswith("| # |")


def test_raw_statements_write_the_raw_copies_of_the_read_model() -> None:
    from bench.orders_log import raw_sql

    for dialect in ("postgres", "sqlite"):
        statements = raw_sql(dialect)
        assert set(statements) == {"customer", "create", "add", "status"}
        for text in statements.values():
            assert "customer_orders_" not in text
            assert "raw_co_" in text


def test_raw_batches_keep_every_statement_in_dependency_order() -> None:
    from bench.orders_log import OrdersLog
    from bench.scenarios.projection import BATCH, KINDS, _batches

    log = OrdersLog()
    log.statements = [("customer", ("c",))] + [
        (kind, (i,)) for i in range(BATCH) for kind in ("create", "add", "status")
    ]
    batches = _batches(log)
    assert len(batches) == -(-len(log.statements) // BATCH)
    assert sum(len(rows) for groups in batches for rows in groups.values()) == len(log.statements)
    assert list(batches[0]) == list(KINDS)
    assert batches[0]["customer"] == [("c",)]


def test_memory_probe_reads_this_process_rss() -> None:
    from bench.memory_probe import rss_kib

    rss = rss_kib()
    assert rss["VmRSS"] > 0
    assert rss["VmHWM"] >= rss["VmRSS"]
