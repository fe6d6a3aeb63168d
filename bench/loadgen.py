"""A small HTTP/1.1 keep-alive load generator, run as its own process.

    python -m bench.loadgen SPEC.json

SPEC: ``{"host", "port", "connections", "seconds", "requests": [{"method", "path", "body"}]}``.
Each connection sends requests in turn (cycling through the list from its own offset), reads
each response whole (``Content-Length`` bodies) and records its latency. Prints one JSON
line: ``{"requests", "seconds", "rps", "p50_ms", "p99_ms", "errors", "non_2xx"}``.

Raw sockets on uvloop keep the client's cost per request small (well under the servers'),
but client, server and database still share the machine's cores; both apps face the same
client, so their ratio holds.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from bench.stats import percentile

__all__ = ["main", "run"]


def _encode(host: str, port: int, request: dict[str, Any]) -> bytes:
    body = request.get("body")
    payload = b"" if body is None else json.dumps(body).encode()
    head = f"{request['method']} {request['path']} HTTP/1.1\r\nHost: {host}:{port}\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
    return (head + "\r\n").encode() + payload


async def run(spec: dict[str, Any]) -> dict[str, float]:
    """Drive the server described by ``spec``; return throughput and latency."""
    host, port = spec["host"], int(spec["port"])
    requests = [_encode(host, port, r) for r in spec["requests"]]
    deadline = time.perf_counter() + float(spec["seconds"])
    latencies: list[float] = []
    counts = {"errors": 0, "non_2xx": 0}

    async def connection(k: int) -> None:
        reader, writer = await asyncio.open_connection(host, port)
        index = k * 7919
        try:
            while time.perf_counter() < deadline:
                request = requests[index % len(requests)]
                index += 1
                started = time.perf_counter()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head[9:12])
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                if length:
                    await reader.readexactly(length)
                latencies.append(time.perf_counter() - started)
                if not 200 <= status < 300:
                    counts["non_2xx"] += 1
        except (OSError, asyncio.IncompleteReadError, ValueError):
            counts["errors"] += 1
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(connection(k) for k in range(int(spec["connections"]))))
    elapsed = time.perf_counter() - started
    return {
        "requests": len(latencies),
        "seconds": elapsed,
        "rps": len(latencies) / elapsed,
        "p50_ms": percentile(latencies, 50) * 1e3,
        "p99_ms": percentile(latencies, 99) * 1e3,
        "errors": counts["errors"],
        "non_2xx": counts["non_2xx"],
    }


def main(argv: list[str]) -> int:
    """Read the spec file named on the command line and print the result as JSON."""
    spec = json.loads(Path(argv[0]).read_text())
    try:
        import uvloop

        result = uvloop.run(run(spec))
    except ImportError:
        result = asyncio.run(run(spec))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
