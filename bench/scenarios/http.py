"""Scenario 7: HTTP, uvicorn with 1 worker (uvloop + httptools), 32 keep-alive connections.

Ours: the orders service (:func:`bench.http_apps.ours`) with its projections running in the
same process; for the cached GET the same service with the Redis query cache on
(:func:`bench.http_apps.ours_cached`, ``CQRSKIT_BENCH_REDIS_URL``, default
``redis://127.0.0.1:6379/0``, under a key prefix of its own that is deleted afterwards; the
server is shared, so nothing else is touched). It replaces the uncached server on the same
database for that phase. Reference: the bare FastAPI + asyncpg app
(:func:`bench.http_apps.bare`), same uvicorn settings, same database, same request bodies.
The load comes from :mod:`bench.loadgen` in a separate process. After each of our ``POST``
runs the harness waits until our projections have caught up, so their work does not spill
into the next run.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from statistics import median
from typing import Any

from bench.harness import Bench, interleave
from bench.report import ScenarioResult, Series
from bench.stats import Target

__all__ = ["http_scenarios"]

BARE = "bare FastAPI + asyncpg"
CONNECTIONS = 32
ROOT = Path(__file__).resolve().parents[2]
PORTS = {"ours": 8791, "bare": 8792, "ours_cached": 8793}
UVICORN = ["--workers", "1", "--loop", "uvloop", "--http", "httptools", "--no-access-log",
           "--log-level", "warning"]  # fmt: skip
ADDRESS = {"street": "1 Bench Street", "city": "Testville", "postal_code": "12345", "country": "NL"}


def _call(port: int, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=data, method=method,
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, None


def _start(app: str, url: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    port = PORTS[app]
    command = [sys.executable, "-m", "uvicorn", "--factory", f"bench.http_apps:{app}",
               "--host", "127.0.0.1", "--port", str(port), *UVICORN]  # fmt: skip
    # This tree's src first: an editable install elsewhere must not serve another tree's code.
    path = os.pathsep.join([str(ROOT / "src"), str(ROOT)])
    env = {**os.environ, **(env or {}), "BENCH_DATABASE_URL": url, "PYTHONPATH": path}
    process = subprocess.Popen(command, cwd=ROOT, env=env)
    deadline = time.time() + 60
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"uvicorn ({app}) exited with {process.returncode}")
        try:
            _call(port, "GET", "/api/v1/orders/00000000-0000-0000-0000-000000000000")
            return process
        except OSError:
            time.sleep(0.2)
    _stop(process)
    raise RuntimeError(f"uvicorn ({app}) did not come up")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()


def _wait_projections(port: int, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        status, body = _call(port, "GET", "/health/projections")
        if status == 200 and all(p["lag_events"] == 0 for p in body["projections"]):
            return
        time.sleep(0.1)
    raise RuntimeError("our projections did not catch up")


def _order_bodies(customers: list[str], products: list[str], n: int) -> list[dict[str, Any]]:
    rng = random.Random(7)
    return [
        {
            "customer_id": rng.choice(customers),
            "items": [
                {"product_id": p, "quantity": 1, "unit_price": "9.99"}
                for p in rng.sample(products, 2)
            ],
            "shipping_address": ADDRESS,
        }
        for _ in range(n)
    ]


def _seed(customers: int = 20, products: int = 200, orders: int = 200) -> dict[str, Any]:
    port = PORTS["ours"]
    customer_ids = []
    for i in range(customers):
        status, body = _call(port, "POST", "/api/v1/customers",
                             {"name": f"Customer {i}", "email": f"c{i}@example.com"})  # fmt: skip
        assert status == 201, (status, body)
        customer_ids.append(body["customer_id"])
    product_ids = []
    for i in range(products):
        product = {"name": f"Product {i}", "unit_price": "9.99", "stock": 1_000_000}
        status, body = _call(port, "POST", "/api/v1/products", product)
        assert status == 201, (status, body)
        product_ids.append(body["product_id"])
    bodies = _order_bodies(customer_ids, product_ids, 2000)
    ids: dict[str, list[str]] = {"ours": [], "bare": []}
    for app in ids:
        for body in bodies[:orders]:
            status, answer = _call(PORTS[app], "POST", "/api/v1/orders", body)
            assert status == 201, (app, status, answer)
            ids[app].append(answer["order_id"])
    _wait_projections(port)
    status, _ = _call(port, "GET", f"/api/v1/orders/{ids['ours'][-1]}")
    assert status == 200, status
    return {"bodies": bodies, "ids": ids}


def _load(
    bench: Bench, app: str, requests: list[dict[str, Any]], seconds: float
) -> dict[str, float]:
    spec = {"host": "127.0.0.1", "port": PORTS[app], "connections": CONNECTIONS,
            "seconds": seconds, "requests": requests}  # fmt: skip
    bench.tmp_dir.mkdir(parents=True, exist_ok=True)
    path = bench.tmp_dir / f"loadgen-{app}.json"
    path.write_text(json.dumps(spec))
    out = subprocess.run(
        [sys.executable, "-m", "bench.loadgen", str(path)],
        cwd=ROOT, capture_output=True, text=True, check=True, timeout=seconds + 120,
    )  # fmt: skip
    result: dict[str, float] = json.loads(out.stdout)
    if result["errors"] or result["non_2xx"]:
        print(f"    {app}: {result['errors']} errors, {result['non_2xx']} non-2xx", flush=True)
    return result


def _redis_prefix() -> str:
    return f"cqrskit-bench-{os.getpid()}-{int(time.time())}"


def _redis_forget(url: str, prefix: str) -> int:
    """Delete this run's keys (``<prefix>:*``) only; the Redis server is shared."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        for offset in range(0, len(keys), 500):
            client.delete(*keys[offset : offset + 500])
        return len(keys)
    finally:
        client.close()


def _redis_version(url: str) -> str | None:
    """The Redis server's version, or ``None`` when it does not answer."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=1)
    try:
        return str(client.info("server").get("redis_version", "?"))
    except redis.RedisError:
        return None
    finally:
        client.close()


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _phase(
    bench: Bench,
    servers: dict[str, subprocess.Popen[bytes]],
    app: str,
    endpoint: str,
    rid: str,
    target: float,
    requests: list[Any],
) -> list[ScenarioResult]:
    """Warm up, then interleave ``app`` against the bare app on ``requests``."""
    method = endpoint.split()[0]
    seconds, warmup = bench.sizes.http_seconds, bench.sizes.http_warmup
    bare_requests = requests[1]

    def run(which: str) -> dict[str, float]:
        cpu = _cpu_seconds(servers[which].pid)
        result = _load(bench, which, requests[0] if which == app else bare_requests, seconds)
        # Server CPU per request (projections catching up afterwards not included).
        cpu_ms = 1000 * (_cpu_seconds(servers[which].pid) - cpu) / max(1, result["requests"])
        if which == app and method == "POST":
            _wait_projections(PORTS[app])
        return {"rps": result["rps"], "p50": result["p50_ms"], "p99": result["p99_ms"],
                "errors": result["errors"] + result["non_2xx"], "cpu_ms": cpu_ms}  # fmt: skip

    for which in (app, "bare"):
        _load(bench, which, requests[0] if which == app else bare_requests, warmup)
        if which == app and method == "POST":
            _wait_projections(PORTS[app])
    runs = interleave(bench.sizes.reps, {"ours": lambda: run(app), BARE: lambda: run("bare")})
    params = {"connections": CONNECTIONS, "seconds_per_run": seconds,
              "server": "uvicorn 1 worker, uvloop, httptools", "pool_size": 10,
              "load_generator": "bench.loadgen (Python, raw sockets, uvloop, own process)",
              "errors": {k: sum(v["errors"]) for k, v in runs.items()},
              "server_cpu_ms_per_request": {k: median(v["cpu_ms"]) for k, v in runs.items()},
              }  # fmt: skip
    print(f"    server CPU ms/request: {params['server_cpu_ms_per_request']}", flush=True)
    title = endpoint if rid != "cached GET" else f"{endpoint} with Redis cache"
    results = [
        ScenarioResult(
            id=f"7 {rid}", name=f"HTTP {title}, 32 connections, throughput",
            unit="req/s", ours=Series("ours", runs["ours"]["rps"]),
            references=[Series(BARE, runs[BARE]["rps"])],
            targets=[Target(">=", target, BARE)], params=params,
        )
    ]  # fmt: skip
    for metric in ("p50", "p99"):
        results.append(
            ScenarioResult(
                id=f"7 {rid} {metric}", name=f"HTTP {title}, latency {metric}",
                unit="ms", higher_is_better=False, ours=Series("ours", runs["ours"][metric]),
                references=[Series(BARE, runs[BARE][metric])], params=params,
            )
        )  # fmt: skip
    return results


def http_scenarios(bench: Bench) -> list[ScenarioResult]:
    """Scenario 7: POST, GET and cached GET rows (throughput, p50, p99)."""
    assert bench.postgres_url is not None
    bench.run(bench.reset_postgres())
    url = bench.postgres_url
    servers = {app: _start(app, url) for app in ("ours", "bare")}
    results: list[ScenarioResult] = []
    redis_url = os.environ.get("CQRSKIT_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
    prefix = _redis_prefix()
    try:
        seeded = _seed()
        posts = [{"method": "POST", "path": "/api/v1/orders", "body": b} for b in seeded["bodies"]]

        def gets(app: str) -> list[dict[str, Any]]:
            return [{"method": "GET", "path": f"/api/v1/orders/{i}"} for i in seeded["ids"][app]]

        results += _phase(
            bench, servers, "ours", "POST /api/v1/orders", "POST", 0.5, [posts, posts]
        )
        get = "GET /api/v1/orders/{id}"
        results += _phase(bench, servers, "ours", get, "GET", 0.8, [gets("ours"), gets("bare")])
        bench.facts["redis"] = _redis_version(redis_url)
        if bench.facts["redis"] is not None:
            # One orders service at a time on the database: the cached one replaces it.
            _stop(servers.pop("ours"))
            env = {"BENCH_REDIS_URL": redis_url, "BENCH_REDIS_PREFIX": prefix}
            servers["ours_cached"] = _start("ours_cached", url, env)
            try:
                results += _phase(
                    bench,
                    servers,
                    "ours_cached",
                    get,
                    "cached GET",
                    1.0,
                    [gets("ours"), gets("bare")],
                )
            finally:
                _stop(servers.pop("ours_cached"))
        else:
            results.append(
                ScenarioResult(
                    id="7 cached GET", name="HTTP GET /api/v1/orders/{id} with Redis cache",
                    unit="req/s", status="skipped", targets=[Target(">=", 1.0, BARE)],
                    note=f"Redis is not reachable at {redis_url}",
                )
            )  # fmt: skip
    finally:
        for process in servers.values():
            _stop(process)
        if _redis_version(redis_url) is not None:
            print(f"    removed {_redis_forget(redis_url, prefix)} Redis keys of {prefix}")
    return results
