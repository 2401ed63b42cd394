"""The Upstash circuit breaker's clock (`shared.redis.breaker`), moved by a test instead of
waited for: after a few failed calls in a row no call is sent for a pause, which a test that
repairs Redis ends with `end_pause()`."""

from __future__ import annotations

import pytest


class BreakerClock:
    """`time.monotonic` for the container's Upstash breaker."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def end_pause(self) -> None:
        """Move to the end of the breaker's pause: the next call is its trial."""
        from shared import redis

        self.now += redis.breaker.pause_left() or 0.0


@pytest.fixture
def breaker_clock(monkeypatch: pytest.MonkeyPatch) -> BreakerClock:
    from shared import redis

    clock = BreakerClock()
    monkeypatch.setattr(redis.breaker, "clock", clock)
    return clock
