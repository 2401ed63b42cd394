"""A container's memory of an Upstash outage, so that requests during one are answered at once.

Each Upstash call may wait `REDIS_TIMEOUT_S` and holds a thread meanwhile. Where one instance
serves many requests at once (Vercel's Fluid compute, `keyflash dev`), a burst during an outage
queued behind those waits, routes that never use Redis included. So once a call fails (no answer
in time, refused, a 5xx), no call is sent for `PAUSE_S`: each fails at once with
`RedisPausedError`, which callers take as any Redis failure (docs/cache-and-rate-limits.md). Then
one call at a time is sent as a probe (the others still fail at once): an answer ends the
outage, a failure starts another pause. The outage is logged when it starts and when it ends,
never per call (as `shared.jwks` remembers a failed read).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import httpx

from shared.telemetry import log_event

PAUSE_S = 5.0  # no call is sent for this long after a failed one


class RedisPausedError(ConnectionError):
    """Not sent: an Upstash call failed less than `PAUSE_S` ago, or another call is probing."""


class Outage:
    """Whether Upstash calls go out now; one per container (`shared.redis.outage`)."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._since: float | None = None  # when the outage began; None: no outage known
        self._until = 0.0  # during an outage, no call is sent before this
        self._probing = False  # a probe is under way

    def call(self, send: Callable[[], httpx.Response]) -> httpx.Response:
        """`send()`, unless an outage keeps it from being sent (`RedisPausedError`); its
        outcome (an exception or a 5xx is a failure) starts or ends the outage."""
        probe = self._admit()
        try:
            response = send()
        except BaseException as error:  # any: a probe must always end
            self._record(type(error).__name__, probe=probe)
            raise
        failed = response.status_code >= 500
        self._record(f"HTTP {response.status_code}" if failed else None, probe=probe)
        return response

    def forget(self) -> None:
        """No outage known (a new client, tests)."""
        with self._lock:
            self._since, self._until, self._probing = None, 0.0, False

    def _admit(self) -> bool:
        """Whether this call is the outage's probe; `RedisPausedError` when it may not be sent."""
        with self._lock:
            if self._since is None:
                return False
            if self._probing or self.clock() < self._until:
                raise RedisPausedError("Upstash was not called: it failed moments ago")
            self._probing = True
            return True

    def _record(self, failure: str | None, *, probe: bool) -> None:
        """Note a call's outcome (`failure` None: Redis answered); log an outage's start and end."""
        with self._lock:
            now, since = self.clock(), self._since
            if probe:
                self._probing = False
            if failure is None:
                self._since = None
            else:
                self._since, self._until = since if since is not None else now, now + PAUSE_S
        if failure is not None and since is None:
            log_event("redis_unavailable", level=logging.WARNING, failure=failure, pauseS=PAUSE_S)
        elif failure is None and since is not None:
            log_event("redis_available", outageS=round(now - since, 1))
