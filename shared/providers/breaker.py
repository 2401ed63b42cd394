"""A circuit breaker per provider instance, so a failing upstream is not hammered
(docs/original-app.md#circuit-breaker).

The original's thresholds: 5 failures within a sliding 60 s window open the circuit for 60 s;
while OPEN, calls fail at once with `ProviderUnavailableError` (the upstream is not called);
the first call after that goes through as HALF_OPEN, and 2 successes in HALF_OPEN close it.

Fixes over the original (docs/original-app.md#d2):
- the breaker lives as long as its provider, which `get_provider()` keeps for the container's
  lifetime, so failures accumulate across invocations (the original built one per request);
- a failure in HALF_OPEN re-opens the circuit at once. The original's documentation promised
  this, but its code needed 5 failures in the window again. One failed probe is evidence enough
  that the upstream has not recovered, and letting traffic through until 5 more fail would
  spend exactly the calls the breaker exists to save.

Only outages count (fix over issue 23): an exception whose `outage` attribute is false (the
request's own input refused, rate limits, rejected credentials: see `shared.providers.base`)
is neither a failure nor a success, so no user's input and no burst of traffic can open the
circuit for everyone.

A success while CLOSED does not clear the failure list (fix over the original, whose success
reset the count, so an upstream failing every other call never opened it): "5 failures within
60 s" means 5 outages in any 60 s, successes in between or not. HALF_OPEN lets every call
through (a Lambda container serves one request at a time, so that is one probe per container).

The clock is injectable (`now`, wall-clock seconds) so tests move time instead of sleeping.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from enum import StrEnum
from typing import Any, TypeVar

from shared.providers.base import ProviderUnavailableError
from shared.telemetry import log_event

T = TypeVar("T")

FAILURE_THRESHOLD = 5
FAILURE_WINDOW_S = 60.0
RESET_TIMEOUT_S = 60.0
SUCCESS_THRESHOLD = 2


class State(StrEnum):
    CLOSED = "CLOSED"
    OPEN = "OPEN"
    HALF_OPEN = "HALF_OPEN"


class CircuitBreaker:
    """Wraps calls to one upstream; thread-safe (a local server may run requests in threads)."""

    def __init__(
        self,
        name: str,
        *,
        failure_threshold: int = FAILURE_THRESHOLD,
        failure_window_s: float = FAILURE_WINDOW_S,
        reset_timeout_s: float = RESET_TIMEOUT_S,
        success_threshold: int = SUCCESS_THRESHOLD,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.failure_threshold = failure_threshold
        self.failure_window_s = failure_window_s
        self.reset_timeout_s = reset_timeout_s
        self.success_threshold = success_threshold
        self._now = now
        self._lock = threading.Lock()
        self._state = State.CLOSED
        self._failures: deque[float] = deque()  # timestamps inside the window
        self._successes = 0  # successes since entering HALF_OPEN
        self._next_attempt: float | None = None  # while OPEN: when a call may go through

    @property
    def state(self) -> State:
        return self._state

    @property
    def is_healthy(self) -> bool:
        return self._state is not State.OPEN

    def call(self, operation: Callable[[], T]) -> T:
        """Run `operation` unless the circuit is open; an exception it raises is a failure
        unless its `outage` attribute is false."""
        self._admit()
        try:
            result = operation()
        except Exception as error:
            if getattr(error, "outage", True):
                self.record_failure()
            raise
        self.record_success()
        return result

    def _admit(self) -> None:
        with self._lock:
            if self._state is not State.OPEN:
                return
            now = self._now()
            next_attempt = self._next_attempt if self._next_attempt is not None else now
            if now < next_attempt:
                retry_after = max(1, math.ceil(next_attempt - now))
                raise ProviderUnavailableError(
                    f"{self.name} circuit breaker is OPEN; next attempt in {retry_after} s",
                    retry_after=retry_after,
                )
            self._transition(State.HALF_OPEN)
            self._successes = 0

    def record_success(self) -> None:
        with self._lock:
            if self._state is State.HALF_OPEN:
                self._successes += 1
                if self._successes >= self.success_threshold:
                    self._transition(State.CLOSED)
                    self._failures.clear()
                    self._successes = 0
                    self._next_attempt = None
            # CLOSED: the failures stay in their window (a success in between does not clear them)

    def record_failure(self) -> None:
        with self._lock:
            now = self._now()
            self._failures.append(now)
            self._prune(now)
            if self._state is State.HALF_OPEN or (
                self._state is State.CLOSED and len(self._failures) >= self.failure_threshold
            ):
                self._open(now)

    def reset(self) -> None:
        """Force CLOSED and forget every failure (operators, tests)."""
        with self._lock:
            self._state = State.CLOSED
            self._failures.clear()
            self._successes = 0
            self._next_attempt = None

    def stats(self) -> dict[str, Any]:
        """`{state, failures, successes, nextAttemptTime?}` for the health check; the time is
        epoch milliseconds, present while OPEN."""
        with self._lock:
            self._prune(self._now())
            stats: dict[str, Any] = {
                "state": self._state.value,
                "failures": len(self._failures),
                "successes": self._successes,
            }
            if self._state is State.OPEN and self._next_attempt is not None:
                stats["nextAttemptTime"] = round(self._next_attempt * 1000)
            return stats

    def _prune(self, now: float) -> None:
        while self._failures and now - self._failures[0] >= self.failure_window_s:
            self._failures.popleft()

    def _open(self, now: float) -> None:
        self._next_attempt = now + self.reset_timeout_s
        self._successes = 0
        self._transition(State.OPEN)

    def _transition(self, state: State) -> None:
        previous, self._state = self._state, state
        level = {State.OPEN: logging.ERROR, State.HALF_OPEN: logging.WARNING}.get(
            state, logging.INFO
        )
        log_event(
            "circuit_breaker_state",
            level=level,
            breaker=self.name,
            state=state.value,
            previous=previous.value,
            failures=len(self._failures),
        )
