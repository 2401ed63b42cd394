"""The container's circuit breaker on Upstash calls, so requests during an outage are answered at
once instead of each waiting `REDIS_TIMEOUT_S` (docs/cache-and-rate-limits.md#when-upstash-fails).

Where one instance serves many requests at once (Vercel's Fluid compute, uvicorn with threads),
every request during an outage paid its own timeout, holding a thread. So after
`FAILURE_THRESHOLD` failed calls in a row (an exception, such as the timeout or a refused
connection, or a 5xx from the REST gateway) the breaker opens: for `PAUSE_S` every call fails at
once with `UpstashCircuitOpenError`, sent nowhere, which callers take as any failed call. Then
one trial call goes out (the others still fail at once): its failure opens the breaker again, an
answer closes it. Any answer resets the count, so a blip (one timeout, a keep-alive connection
reset after a thaw) fails its own call only: opening on one failure refused a whole instance for
the pause (bf59722).

Best-effort writes (`best_effort()`: the cache's, after the answer is computed) never count as a
failure: such a write is no part of the answer, and its failure must not cost the next requests
their reads and limits. While the breaker is open they fail at once too, and are never the trial.
The clock is replaceable (`clock`) so tests move time instead of sleeping.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import httpx

from shared.telemetry import log_event

FAILURE_THRESHOLD = 3  # failed calls in a row that open the breaker
PAUSE_S = 5.0  # how long it stays open before a trial call

_counted: ContextVar[bool] = ContextVar("upstash_call_counted", default=True)


class UpstashCircuitOpenError(ConnectionError):
    """Not sent: the breaker is open (Upstash failed `FAILURE_THRESHOLD` times in a row)."""


@contextmanager
def best_effort() -> Iterator[None]:
    """Upstash calls made inside never count as failures towards opening the breaker."""
    token = _counted.set(False)
    try:
        yield
    finally:
        _counted.reset(token)


class UpstashBreaker:
    """Whether Upstash calls go out now; one per container (`shared.redis.breaker`), thread-safe."""

    def __init__(self) -> None:
        self.clock: Callable[[], float] = time.monotonic
        self._lock = threading.Lock()
        self._failures = 0  # counted failures in a row
        self._until: float | None = None  # open (None: closed); no call before this but a trial
        self._trial = False  # the trial call is under way

    def call(self, send: Callable[[], httpx.Response]) -> httpx.Response:
        """`send()` unless the breaker is open (`UpstashCircuitOpenError`); an exception or a
        5xx is a failure, any other answer a success."""
        counted = _counted.get()
        trial = self._admit(counted)
        failed = True
        try:
            response = send()
            failed = response.status_code >= 500
            return response
        finally:
            self._record(failed, counted=counted, trial=trial)

    def pause_left(self) -> int | None:
        """Whole seconds (rounded up, at least 1) until the trial call while open, else None."""
        with self._lock:
            if self._until is None:
                return None
            return max(1, math.ceil(self._until - self.clock()))

    def reset(self) -> None:
        """Closed, no failure counted (a new client, SnapStart, tests)."""
        with self._lock:
            self._failures, self._until, self._trial = 0, None, False

    def _admit(self, counted: bool) -> bool:
        """Whether this call is the trial; `UpstashCircuitOpenError` when it may not be sent."""
        with self._lock:
            if self._until is None:
                return False
            if counted and not self._trial and self.clock() >= self._until:
                self._trial = True
                return True
        raise UpstashCircuitOpenError("Upstash was not called: its circuit breaker is open")

    def _record(self, failed: bool, *, counted: bool, trial: bool) -> None:
        with self._lock:
            if trial:
                self._trial = False
            was_open = self._until is not None
            if not failed:
                self._failures, self._until = 0, None
                if was_open:
                    self._log("CLOSED", "OPEN")
                return
            if not counted:
                return
            self._failures += 1
            if trial or self._failures >= FAILURE_THRESHOLD:
                self._until = self.clock() + PAUSE_S
                if not was_open:
                    self._log("OPEN", "CLOSED")

    def _log(self, state: str, previous: str) -> None:
        """The providers' breakers' event (`shared.providers.breaker`), named `Upstash`."""
        log_event(
            "circuit_breaker_state",
            level=logging.ERROR if state == "OPEN" else logging.INFO,
            breaker="Upstash",
            state=state,
            previous=previous,
            failures=self._failures,
        )
