"""An S3 client whose calls end by a deadline, whatever S3 does: `shared.s3.s3_client(deadline)`
imports this (and so botocore) on first use.

botocore bounds each network step (connect, each read: 60 s by default) and retries a timed-out
one, so one call to an S3 that accepts connections and never answers took three minutes
whatever the caller had left. Here:
- each call (its retries included) runs under `shared.deadline.run_within`: the caller waits no
  longer than the deadline, then gets `S3DeadlineError`;
- each step's timeout is at most the time left when the client was made, and no request (a
  retry, a transfer's next part) is sent once the deadline has passed, so an abandoned call's
  thread ends on its own at the latest one step timeout after the deadline.
`S3DeadlineError` is a `BotoCoreError`, so whatever handles S3 failing handles it too.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any

from botocore.config import Config  # type: ignore[import-untyped]
from botocore.exceptions import BotoCoreError  # type: ignore[import-untyped]

from shared.deadline import DeadlineExceededError, run_within

STEP_TIMEOUT_S = 60.0  # botocore's own connect and read timeouts
LEAST_STEP_S = 0.1  # a client made with no time left still needs a valid timeout
ATTEMPTS = 3  # botocore's standard retry mode: a try and two retries


class S3DeadlineError(BotoCoreError):  # type: ignore[misc]  # botocore is untyped
    """S3 did not answer a call by the caller's deadline (or no time was left to send it)."""

    fmt = "S3 did not answer {operation} by the deadline"


def config(deadline: float) -> Any:
    """SigV4 (see `shared.s3.s3_client`), steps no longer than the time left, standard retries."""
    step = max(min(STEP_TIMEOUT_S, deadline - time.monotonic()), LEAST_STEP_S)
    return Config(
        signature_version="s3v4",
        connect_timeout=step,
        read_timeout=step,
        retries={"mode": "standard", "total_max_attempts": ATTEMPTS},
    )


def bound(client: Any, deadline: float) -> Any:
    """`client` (made with `config(deadline)`), every call of which ends by `deadline`
    (`time.monotonic()`): paginators' pages and boto3's transfer threads call through
    `_make_api_call` too."""
    client.meta.events.register("before-send.s3", partial(_refuse_late, deadline))
    call = client._make_api_call

    def bounded(operation: str, params: dict[str, Any]) -> Any:
        try:
            return run_within(deadline, lambda _left: call(operation, params), "S3")
        except DeadlineExceededError:
            raise S3DeadlineError(operation=operation) from None

    client._make_api_call = bounded
    return client


def _refuse_late(deadline: float, event_name: str, **_: Any) -> None:
    """botocore's `before-send` hook: nothing more is sent once the deadline has passed (a
    retry of the abandoned call, the next part of a transfer)."""
    if time.monotonic() >= deadline:
        raise S3DeadlineError(operation=event_name.rpartition(".")[2])
