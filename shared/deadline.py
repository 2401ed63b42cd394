"""Work that ends for its caller by a deadline, whatever the network does.

httpx's timeouts apply to each network step (connect, each read), so a body trickled byte by
byte would outlast any of them. The work runs in a daemon thread that the caller waits for until
the deadline; each step's timeout should be at most the time left, so the thread ends on its own
at the latest one step timeout later (its answer is dropped). Provider calls
(`shared.providers.deadline`) and every Upstash call (`shared.redis`) are bounded this way.
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class DeadlineExceededError(TimeoutError):
    """The work did not end by its deadline (or there was no time left to start it)."""


def run_within(deadline: float, work: Callable[[float], T], service: str) -> T:
    """`work(seconds left)`, but the caller waits no longer than `deadline` (a
    `time.monotonic()` value); `DeadlineExceededError` naming `service` when time runs out."""
    budget = deadline - time.monotonic()
    if budget <= 0:
        raise DeadlineExceededError(f"{service} was not called: no time left before the deadline")
    outcome: list[T | BaseException] = []

    def run() -> None:
        try:
            outcome.append(work(budget))
        except BaseException as error:  # handed to the caller below
            outcome.append(error)

    context = contextvars.copy_context()  # the request id of its log lines, as the caller's
    worker = threading.Thread(
        target=context.run,
        args=(run,),
        name=f"{service.lower().replace(' ', '-')}-request",
        daemon=True,
    )
    worker.start()
    worker.join(budget)
    if not outcome:
        raise DeadlineExceededError(f"{service} did not answer within the {budget:.1f} s deadline")
    result = outcome[0]
    if isinstance(result, BaseException):
        raise result
    return result
