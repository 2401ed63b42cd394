"""The container's Redis outage memory (`shared.redis.outage`) on a clock the test moves: after a
failed Upstash call no call is sent for a pause, which a test ends by moving this clock rather
than by waiting."""

from __future__ import annotations

import pytest


class OutageClock:
    """`time.monotonic` for the container's Redis outage (`shared.redis.outage`), moved by the
    test instead of waited for."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def end_pause(self) -> None:
        """Move past the pause that follows a failed Upstash call."""
        from shared.redis_outage import PAUSE_S

        self.now += PAUSE_S


@pytest.fixture
def outage_clock(monkeypatch: pytest.MonkeyPatch) -> OutageClock:
    from shared import redis

    clock = OutageClock()
    monkeypatch.setattr(redis.outage, "clock", clock)
    return clock
