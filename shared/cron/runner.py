"""Running one cron job: lease, time budget, batches, resume state and the JSON summary.

A job is a function of a `Run`. It works in batches (`with run.batch(): …`), asks
`run.has_time()` before each one, and keeps whatever it needs to resume in `run.state`. The
runner takes the job's lease first (a run that finds it held does nothing and says so), gives
it back afterwards with the state, and logs and returns the summary.

The budget is the platform's: Lambda's `context.get_remaining_time_in_millis()`, else
`CRON_MAX_DURATION_S` from the start of the run (Vercel, the CLI). A batch starts only while
more than `CRON_TIME_MARGIN_MS` and the database's margin (`db.INVOCATION_MARGIN_S`) are left,
so a batch no longer than CRON_TIME_MARGIN_MS leaves the lease's release its time; whatever the
margin, the run's database round trips give up before its limit (`db.within_invocation`), so a
batch on a database that stopped answering fails the run rather than outliving it. A run with
no time for one batch (the margin or less left) does nothing, not even the lease, and reports
it. The
lease lasts until the invocation's own limit: a run killed mid-way blocks the next one no longer.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from shared import db
from shared.clock import utcnow
from shared.config import Settings, get_settings
from shared.repositories import cron_leases
from shared.telemetry import log_event

LEASE_HELD = "lease held by another run"


class InvocationContext(Protocol):
    """What the runner reads from a Lambda context object."""

    def get_remaining_time_in_millis(self) -> int: ...


class LeaseLostError(RuntimeError):
    """The run's lease expired and another run took it; this run must stop writing."""


class Budget:
    """Time left in this invocation, as the platform counts it, minus a safety margin."""

    def __init__(self, remaining_ms: Callable[[], float], margin_ms: float) -> None:
        self._remaining_ms = remaining_ms
        self.margin_ms = margin_ms

    @classmethod
    def for_invocation(cls, context: object | None, settings: Settings) -> Budget:
        """Lambda's remaining time when the context has it, else CRON_MAX_DURATION_S from now.
        The margin is CRON_TIME_MARGIN_MS plus the database's (`db.INVOCATION_MARGIN_S`): a
        batch no longer than CRON_TIME_MARGIN_MS ends before the run's database gives up, so
        the release after it (with the run's state) still runs."""
        margin_ms = settings.cron_time_margin_ms + db.INVOCATION_MARGIN_S * 1000
        remaining = getattr(context, "get_remaining_time_in_millis", None)
        if callable(remaining):
            return cls(lambda: float(remaining()), margin_ms)
        deadline = time.monotonic() + settings.cron_max_duration_s
        return cls(lambda: max(0.0, (deadline - time.monotonic()) * 1000), margin_ms)

    def remaining_ms(self) -> float:
        return self._remaining_ms()

    def allows_batch(self) -> bool:
        return self._remaining_ms() > self.margin_ms


@dataclass
class Run:
    """One run of a job: what the job reads (settings, time, options, state) and reports."""

    job: str
    holder: str
    settings: Settings
    budget: Budget
    now: datetime  # the run's reference time: jobs compare against it, never a fresh clock
    options: Mapping[str, Any]
    state: dict[str, Any]
    # When (`time.monotonic()`) a call to another service (S3) must have ended: the run's
    # database give-up time less PROVIDER_DEADLINE_MARGIN_S, so the run still records what the
    # call did (a failed attempt) and gives the lease back. Later than a batch's start may be:
    # a batch stopped for time still cleans up after itself (a partial backup's deletes).
    deadline: float
    last_completed_at: datetime | None = None
    processed: int = 0
    batches: int = 0
    longest_batch_ms: float = 0.0
    complete: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def has_time(self, *, calls_out: bool = False) -> bool:
        """Whether another batch may start; once it may not, the run is marked incomplete.
        `calls_out`: the batch calls S3, whose calls end by `deadline`, so it may not start past
        that either (a PROVIDER_DEADLINE_MARGIN_S larger than CRON_TIME_MARGIN_MS puts it
        first): each call could only fail, and an export would spend an attempt for nothing."""
        if self.budget.allows_batch() and not (calls_out and time.monotonic() >= self.deadline):
            return True
        self.complete = False
        return False

    def time_left_ms(self) -> float:
        """What one more batch may use, the time left less the margin, read once: a batch that
        bounds itself (a statement timeout) takes this instead of `has_time()`. At or below
        zero no batch may start, and the run is marked incomplete."""
        left = self.budget.remaining_ms() - self.budget.margin_ms
        if left <= 0:
            self.complete = False
        return left

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Count and time one batch (the summary reports the longest)."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.batches += 1
            self.longest_batch_ms = max(
                self.longest_batch_ms, (time.perf_counter() - started) * 1000
            )

    def flag(self, name: str) -> bool:
        """A boolean option from the invocation (`{"full": true}` or `?full=true`)."""
        value = self.options.get(name)
        return value is True or str(value).strip().lower() in {"1", "true", "yes"}

    def save_state(self) -> None:
        """Persist `state` now (for progress that must survive a crash); fenced by the lease."""
        saved = db.run(lambda conn: cron_leases.save_state(conn, self.job, self.holder, self.state))
        if not saved:
            raise LeaseLostError(f"cron job {self.job} lost its lease")

    def summary(self, started: float) -> dict[str, Any]:
        return {
            "job": self.job,
            "processed": self.processed,
            "batches": self.batches,
            "durationMs": round((time.perf_counter() - started) * 1000, 1),
            "complete": self.complete,
            "longestBatchMs": round(self.longest_batch_ms, 1),
            **self.extra,
        }


@dataclass(frozen=True)
class Job:
    """A named unit of scheduled work; `work` does the batches (see `Run`)."""

    name: str
    work: Callable[[Run], None]


def run_job(
    job: Job,
    *,
    context: object | None = None,
    options: Mapping[str, Any] | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Run `job` once under its lease and return the summary (also logged as `cron_job`).

    A run that finds the lease held does nothing and returns `{…, "processed": 0, "complete":
    true, "skipped": "lease held by another run"}`: like every skip, it leaves no work of its own
    (the run holding the lease reports the job's progress), so `complete` never reads as work
    left over. Exceptions propagate after the lease is given back (without saving state),
    so the platform records a failed invocation and the next run starts from the last state.
    """
    started = time.perf_counter()
    settings = get_settings()
    budget = Budget.for_invocation(context, settings)
    holder = uuid.uuid4().hex
    remaining_s = budget.remaining_ms() / 1000
    end = time.monotonic() + remaining_s
    deadline = db.invocation_give_up_time(end) - settings.provider_deadline_margin_s
    # The lease outlives this invocation's hard limit by a second at most.
    ttl = math.ceil(remaining_s) + 1
    if remaining_s * 1000 <= budget.margin_ms:
        # No time for one batch: the run does nothing, not even the lease, and says so, as one
        # out of time does. A lease taken then could not be given back: the job's first
        # statement and the release would come past the database's give-up time.
        run = Run(job.name, holder, settings, budget, now or utcnow(), options or {}, {}, deadline)
        run.complete = False
        summary = run.summary(started)
        log_event("cron_job", level=logging.WARNING, **summary)
        return summary
    # Its database work ends before this invocation does, whatever batch is under way.
    with db.within_invocation(end):
        lease = _acquire(job.name, holder, ttl)
        if lease is None:
            run = Run(
                job.name, holder, settings, budget, now or utcnow(), options or {}, {}, deadline
            )
            run.extra["skipped"] = LEASE_HELD
            summary = run.summary(started)
            log_event("cron_job", **summary)
            return summary

        run = Run(
            job=job.name,
            holder=holder,
            settings=settings,
            budget=budget,
            now=now or utcnow(),
            options=options or {},
            state=dict(lease.state),
            deadline=deadline,
            last_completed_at=lease.last_completed_at,
        )
        try:
            job.work(run)
        except BaseException as error:
            _release(run, state=None, completed=False)
            log_event(
                "cron_job_failed",
                level=logging.ERROR,
                job=job.name,
                error=type(error).__name__,
                processed=run.processed,
                batches=run.batches,
                durationMs=round((time.perf_counter() - started) * 1000, 1),
            )
            raise
        _release(run, state=run.state, completed=run.complete)
        summary = run.summary(started)
        log_event("cron_job", level=logging.INFO if run.complete else logging.WARNING, **summary)
        return summary


def _acquire(job: str, holder: str, ttl: int) -> cron_leases.Lease | None:
    """Take the job's lease (None: another run holds it). When the acquire's answer is lost, the
    server may have given this run the lease: it is given back before the error propagates (a
    release by `holder`'s token changes nothing if the lease was never taken), or every run
    would be skipped until it expired."""
    try:
        return db.run(lambda conn: cron_leases.acquire(conn, job, holder, ttl_seconds=ttl))
    except db.DatabaseUnavailableError as error:
        if error.outcome_unknown:
            _give_back(job, holder, state=None, completed=False)
        raise


def _release(run: Run, *, state: dict[str, Any] | None, completed: bool) -> None:
    """Give the lease back with the run's outcome; logs when it was no longer the run's."""
    if _give_back(run.job, run.holder, state=state, completed=completed) is False:
        log_event("cron_lease_lost", level=logging.WARNING, job=run.job)


def _give_back(
    job: str, holder: str, *, state: dict[str, Any] | None, completed: bool
) -> bool | None:
    """Release the lease `holder` holds: whether it held it, or None when the release failed
    (logged; it only delays the next run until the lease expires)."""
    try:
        return db.run(
            lambda conn: cron_leases.release(conn, job, holder, state=state, completed=completed)
        )
    except Exception as error:
        log_event(
            "cron_lease_not_released", level=logging.ERROR, job=job, error=type(error).__name__
        )
        return None
