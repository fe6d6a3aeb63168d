"""RateWindow: commands per second over the last minute, on a fake clock."""

from __future__ import annotations

from cqrskit.http.metrics import RateWindow


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_rate_is_over_the_uptime_until_the_window_is_full() -> None:
    clock = Clock()
    window = RateWindow(60, clock=clock)
    assert window.per_second() == 0.0
    clock.now += 10
    for _ in range(20):
        window.mark()
    assert window.per_second() == 2.0


def test_events_older_than_the_window_no_longer_count() -> None:
    clock = Clock()
    window = RateWindow(60, clock=clock)
    for second in range(120):
        clock.now = 1000.0 + second
        window.mark()
        window.mark()
    assert window.per_second() == 2.0
    clock.now += 30
    assert window.per_second() == 1.0  # 30 of the last 60 seconds had two marks each
    clock.now += 60
    assert window.per_second() == 0.0
