"""Entry point: ``python -m bench --quick`` or ``python -m bench --full``.

Options: ``--only 1,3,5`` runs a subset; ``--reps N`` overrides the repetitions;
``--results DIR`` changes where the JSON goes (default ``bench/results``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from bench.harness import BENCH_DIR, FULL, QUICK, Bench
from bench.machine import machine_facts, postgres_facts, probes
from bench.report import ScenarioResult, render_markdown, write_results

__all__ = ["main"]

Scenario = Callable[[Bench], ScenarioResult | list[ScenarioResult]]


def _scenarios() -> list[tuple[str, bool, str, Scenario]]:
    from bench.scenarios import commands, http, lag, load, projection, rebuild

    # (id, needs PostgreSQL, name for skipped rows, function)
    return [
        ("1", True, "command, new stream, 1 event, PostgreSQL, sequential",
         commands.command_pg_sequential),
        ("2", True, "same, 32 concurrent, PostgreSQL", commands.command_pg_concurrent),
        ("3", False, "same on SQLite, sequential", commands.command_sqlite_sequential),
        ("4", False, "load an aggregate of 100 events", load.load_aggregate),
        ("5", False, "projection catch-up", projection.projection_catch_up),
        ("6", True, "append-to-visible lag, PostgreSQL", lag.append_to_visible_lag),
        ("7", True, "HTTP, uvicorn 1 worker, 32 connections", http.http_scenarios),
        ("8,9", True, "blue/green rebuild and catch-up memory, PostgreSQL",
         rebuild.rebuild_and_memory),
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Run the selected scenarios and write the report."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="small sizes (default)")
    mode.add_argument("--full", action="store_true", help="full sizes (under 20 minutes)")
    parser.add_argument("--only", default="", help="comma-separated scenario ids, e.g. 1,3")
    parser.add_argument("--reps", type=int, default=0, help="override repetitions")
    parser.add_argument("--results", type=Path, default=BENCH_DIR / "results")
    parser.add_argument(
        "--postgres",
        default=os.environ.get(
            "CQRSKIT_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
        help="admin URL; a scratch database cqrskit_bench_<pid> is created and dropped",
    )
    args = parser.parse_args(argv)
    sizes = FULL if args.full else QUICK
    if args.reps:
        sizes = replace(sizes, reps=args.reps, proj_reps=min(args.reps, sizes.proj_reps))
    wanted = {s.strip() for s in args.only.split(",") if s.strip()}

    bench = Bench(sizes=sizes, postgres_admin_url=args.postgres)
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    mode_name = "full" if args.full else "quick"
    print(f"cqrskit bench ({mode_name}), event loop {bench.loop_name}", flush=True)
    start_probes = probes(bench.tmp_dir)
    print(f"probes at start: {start_probes}", flush=True)
    header: dict[str, object] = {"mode": mode_name, "started_at": started}
    results: list[ScenarioResult] = []
    t0 = time.perf_counter()
    try:
        postgres = bench.postgres_available()
        if postgres:
            bench.run(bench.create_database())
            assert bench.postgres_url is not None
            header["postgres"] = bench.run(postgres_facts(bench.postgres_url))
        else:
            header["postgres"] = {"error": "PostgreSQL is not reachable"}
        for id_, needs_pg, name, scenario in _scenarios():
            if wanted and not wanted & set(id_.split(",")):
                continue
            if needs_pg and not postgres:
                results.append(ScenarioResult(id_, name, "", status="skipped",
                                              note="PostgreSQL is not reachable"))  # fmt: skip
                continue
            print(f"\n== scenario {id_}: {name}", flush=True)
            s0 = time.perf_counter()
            try:
                out = scenario(bench)
            except Exception as exc:
                traceback.print_exc()
                results.append(ScenarioResult(id_, name, "", status="failed",
                                              note=f"{type(exc).__name__}: {exc}"))  # fmt: skip
                continue
            results.extend(out if isinstance(out, list) else [out])
            print(f"   scenario {id_} took {time.perf_counter() - s0:.0f}s", flush=True)
    finally:
        end_probes = probes(bench.tmp_dir)
        bench.close()
    header.update(
        finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        duration_s=round(time.perf_counter() - t0, 1),
        event_loop=bench.loop_name,
        machine=machine_facts(),
        probes={"start": start_probes, "end": end_probes},
        extra=bench.facts,
    )
    print(f"\nprobes at end: {end_probes}")
    path = write_results(args.results, stamp, header, results)
    print("\n" + render_markdown(results) + "\n")
    print(f"wrote {path} (and latest.json); took {header['duration_s']}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
