"""The test supervisor: seeded schedules replay, process faults do what they say, cleanup.

A ``cqrskit serve`` child (on SQLite, for speed) is SIGKILLed and comes back as a new process,
is frozen by SIGSTOP (a request gets no answer until SIGCONT), is restarted gracefully, and
is gone once the supervisor closes.
"""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import pytest

from tests.reliability.pgcluster import process_alive
from tests.reliability.supervisor import FAULT_SEED_ENV, Fault, Supervisor

pytestmark = pytest.mark.faults


def plan(supervisor: Supervisor) -> list[Fault]:
    return supervisor.plan(
        count=8, window=30.0, targets=["api", "worker"], actions=["kill", "pause"]
    )


def test_the_same_seed_plans_the_same_schedule(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(FAULT_SEED_ENV, "4242")
    with Supervisor(tmp_path) as first, Supervisor(tmp_path) as second:
        assert first.seed == second.seed == 4242
        schedule = plan(first)
        assert schedule == plan(second)
    with Supervisor(tmp_path, seed=4243) as other:
        assert plan(other) != schedule
    assert [f.at for f in schedule] == sorted(f.at for f in schedule)


async def health(url: str, timeout: float = 5.0) -> int:
    async with httpx.AsyncClient(timeout=timeout) as client:
        return (await client.get(f"{url}/health")).status_code


async def test_kill_pause_and_restart_an_api_then_close_leaves_no_process(tmp_path: Path) -> None:
    with Supervisor(tmp_path) as supervisor:
        api = supervisor.api(f"sqlite:///{tmp_path}/supervised.db")
        await supervisor.start(api)
        assert api.url is not None
        assert await health(api.url) == 200
        pids = [api.pid]

        await supervisor.run([Fault(0.0, "api", "kill", 0.0)])
        assert (api.starts, api.running) == (2, True)
        assert api.pid not in pids
        assert await health(api.url) == 200
        pids.append(api.pid)

        api.pause()
        with pytest.raises(httpx.TimeoutException):
            await health(api.url, timeout=0.5)  # frozen: accepted by the kernel, never answered
        api.resume()
        assert await health(api.url) == 200

        await supervisor.run([Fault(0.0, "api", "restart", 0.0)])
        assert api.starts == 3
        assert await health(api.url) == 200
        pids.append(api.pid)
        # uvicorn stops gracefully on SIGTERM, then re-raises it (0 or -SIGTERM).
        assert api.exits[0] == -signal.SIGKILL
        assert api.exits[1] in (0, -signal.SIGTERM)
    assert not api.running
    assert not any(process_alive(pid) for pid in pids if pid is not None)
    assert api.output().count("serving orders on") == 3
