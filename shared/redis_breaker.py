"""The container's circuit breaker on Upstash calls, so requests during an outage are answered at
once instead of each waiting `REDIS_TIMEOUT_S` (docs/cache-and-rate-limits.md#when-upstash-fails).

Where one instance serves many requests at once (Vercel's Fluid compute, uvicorn with threads),
every request during an outage paid its own timeout, holding a thread. So after
`FAILURE_THRESHOLD` failed calls in a row (an exception, such as the timeout or a refused
connection, or a 5xx from the REST gateway) the breaker opens: for `PAUSE_S` every call fails at
once with `UpstashCircuitOpenError`, sent nowhere, which callers take as any failed call. Then
one trial call goes out (the others still fail at once): its failure opens the breaker again for
twice the pause (up to `MAX_PAUSE_S`, so clients told `Retry-After` back off in a long outage),
an answer closes it. Any answer resets the count, and failures of calls under way together (each
sent before the previous counted failure ended: one blip, such as a keep-alive connection reset
after a thaw) count once: opening on one failure refused a whole instance for the pause
(bf59722). While open, only the trial's failure counts: a call sent before the breaker opened
does not lengthen the pause when it fails.

Best-effort writes (`best_effort()`: the cache's, after the answer is computed) never count as a
failure: such a write is no part of the answer, and its failure must not cost the next requests
their reads and limits. While the breaker is open they fail at once too, and are never the trial.
The clock is replaceable (`clock`) so tests move time instead of sleeping.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import httpx

from shared.telemetry import log_event

FAILURE_THRESHOLD = 3  # failed calls in a row that open the breaker
PAUSE_S = 5.0  # how long it stays open before the first trial call; also Retry-After's floor
MAX_PAUSE_S = 60.0  # the longest pause, after failed trials doubled it

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
        self._generation = 0  # counted failures so far: a call sent before the last one ended
        self._until: float | None = None  # open (None: closed); no call before this but a trial
        self._pause = PAUSE_S  # the pause the breaker opened for last
        self._trial = False  # the trial call is under way

    def call(self, send: Callable[[], httpx.Response]) -> httpx.Response:
        """`send()` unless the breaker is open (`UpstashCircuitOpenError`); an exception or a
        5xx is a failure, any other answer a success."""
        counted = _counted.get()
        trial, generation = self._admit(counted)
        failed = True
        try:
            response = send()
            failed = response.status_code >= 500
            return response
        finally:
            self._record(failed, counted=counted, trial=trial, generation=generation)

    def pause_left(self) -> float | None:
        """Seconds until the trial call may go out (0 once it may) while open, else None."""
        with self._lock:
            if self._until is None:
                return None
            return max(0.0, self._until - self.clock())

    def reset(self) -> None:
        """Closed, no failure counted (a new client, SnapStart, tests)."""
        with self._lock:
            self._failures, self._until, self._pause, self._trial = 0, None, PAUSE_S, False

    def _admit(self, counted: bool) -> tuple[bool, int]:
        """Whether this call is the trial, and the failures counted before it was sent;
        `UpstashCircuitOpenError` when it may not be sent."""
        with self._lock:
            if self._until is None:
                return False, self._generation
            if counted and not self._trial and self.clock() >= self._until:
                self._trial = True
                return True, self._generation
        raise UpstashCircuitOpenError("Upstash was not called: its circuit breaker is open")

    def _record(self, failed: bool, *, counted: bool, trial: bool, generation: int) -> None:
        with self._lock:
            if trial:
                self._trial = False
            was_open = self._until is not None
            if not failed:
                self._failures, self._until, self._pause = 0, None, PAUSE_S
                if was_open:
                    self._log("CLOSED", "OPEN")
            elif trial:
                self._pause = min(2 * self._pause, MAX_PAUSE_S)
                self._until = self.clock() + self._pause
                self._log("OPEN", "OPEN")
            elif counted and not was_open and generation == self._generation:
                self._failures += 1
                self._generation += 1
                if self._failures >= FAILURE_THRESHOLD:
                    self._pause = PAUSE_S
                    self._until = self.clock() + PAUSE_S
                    self._log("OPEN", "CLOSED")

    def _log(self, state: str, previous: str) -> None:
        """The providers' breakers' event (`shared.providers.breaker`), named `Upstash`; each
        opening (again after a failed trial: `previous: OPEN`) with its pause, so a long outage
        shows it growing."""
        opened = {"pauseS": round(self._pause)} if state == "OPEN" else {}
        log_event(
            "circuit_breaker_state",
            level=logging.ERROR if state == "OPEN" else logging.INFO,
            breaker="Upstash",
            state=state,
            previous=previous,
            failures=self._failures,
            **opened,
        )
