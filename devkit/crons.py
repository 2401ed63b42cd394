"""Scheduled jobs locally: `functions/cron/<job>.py`, run on vercel.json's schedules.

Production fires a cron two ways: EventBridge calls the Lambda `lambda_handler(event, context)`
with a schedule event, Vercel GETs the job's small app. Locally we do what Lambda does (a real
EventBridge event, in-process; no Lambda context, so `CRON_MAX_DURATION_S` bounds the run), on
the schedule vercel.json's `crons` declares for the job's path (5-field cron, UTC; the module's
own `SCHEDULE` is the fallback). Runs missed while the stack was down are not caught up, as on
both platforms. A job still running when its next time comes is skipped, with a log line, rather
than run twice at once.
"""

from __future__ import annotations

import importlib
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

from devkit import events
from devkit.console import CliError
from devkit.layout import CRON_DIR, CRON_PACKAGE, FUNCTIONS_PACKAGE, VERCEL_JSON, cron_modules

logger = logging.getLogger("keyflash.cron")

_MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
_WEEKDAYS = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")
_FIELDS: tuple[tuple[str, int, int, dict[str, int]], ...] = (  # name, low, high, names
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day of month", 1, 31, {}),
    ("month", 1, 12, {name: number for number, name in enumerate(_MONTHS, start=1)}),
    ("day of week", 0, 7, {name: number for number, name in enumerate(_WEEKDAYS)}),
)


class CronSyntaxError(ValueError):
    """A schedule that is not a valid 5-field cron expression; the message says which field."""


@dataclass(frozen=True)
class Schedule:
    """A parsed 5-field cron expression, evaluated in UTC (Vercel's and EventBridge's zone)."""

    expression: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday (7 is folded into 0)
    days_restricted: bool
    weekdays_restricted: bool

    @classmethod
    def parse(cls, expression: str) -> Schedule:
        parts = expression.split()
        if len(parts) != 5:
            raise CronSyntaxError(
                f"{expression!r} has {len(parts)} fields; a cron schedule has 5: "
                "minute hour day-of-month month day-of-week (e.g. '0 3 * * *')"
            )
        sets = [_parse_field(part, *spec) for part, spec in zip(parts, _FIELDS, strict=True)]
        weekdays = frozenset(0 if day == 7 else day for day in sets[4])
        return cls(
            expression=expression,
            minutes=sets[0],
            hours=sets[1],
            days=sets[2],
            months=sets[3],
            weekdays=weekdays,
            days_restricted=parts[2] != "*",
            weekdays_restricted=parts[4] != "*",
        )

    def _day_matches(self, moment: datetime) -> bool:
        in_days = moment.day in self.days
        in_weekdays = (moment.isoweekday() % 7) in self.weekdays
        if self.days_restricted and self.weekdays_restricted:
            return in_days or in_weekdays  # cron's rule: either restriction may match
        return in_days and in_weekdays

    def next_after(self, moment: datetime) -> datetime:
        """The first matching minute strictly after `moment` (aware, UTC)."""
        candidate = moment.astimezone(UTC).replace(second=0, microsecond=0) + timedelta(minutes=1)
        limit = candidate + timedelta(days=366 * 5)  # e.g. 29 Feb on a Monday is that rare
        while candidate < limit:
            if candidate.month not in self.months:
                year, month = divmod(candidate.month, 12)  # first day of the next month
                candidate = candidate.replace(year=candidate.year + year, month=month + 1, day=1)
                candidate = candidate.replace(hour=0, minute=0)
                continue
            if not self._day_matches(candidate):
                candidate = (candidate + timedelta(days=1)).replace(hour=0, minute=0)
                continue
            if candidate.hour not in self.hours:
                candidate = (candidate + timedelta(hours=1)).replace(minute=0)
                continue
            if candidate.minute not in self.minutes:
                candidate += timedelta(minutes=1)
                continue
            return candidate
        raise CronSyntaxError(f"{self.expression!r} never fires")


def _parse_field(
    text: str, name: str, low: int, high: int, names: dict[str, int]
) -> frozenset[int]:
    values: set[int] = set()

    def number(token: str) -> int:
        token = token.upper()
        if token in names:
            return names[token]
        if not token.isdigit():
            raise CronSyntaxError(f"{name}: {token!r} is not a number")
        value = int(token)
        if not low <= value <= high:
            raise CronSyntaxError(f"{name}: {value} is outside {low}-{high}")
        return value

    for item in text.split(","):
        base, _, step_text = item.partition("/")
        step = 1
        if step_text:
            if not step_text.isdigit() or int(step_text) == 0:
                raise CronSyntaxError(f"{name}: step {step_text!r} must be a positive number")
            step = int(step_text)
        if base == "*":
            start, end = low, high
        elif "-" in base:
            first, _, last = base.partition("-")
            start, end = number(first), number(last)
            if start > end:
                raise CronSyntaxError(f"{name}: range {base!r} runs backwards")
        else:
            start = number(base)
            end = high if step_text else start
        values.update(range(start, end + 1, step))
    return frozenset(values)


@dataclass(frozen=True)
class CronJob:
    name: str  # the module name in functions/cron/
    module: str  # functions.cron.<name>
    path: str  # the path Vercel GETs (CRON_PATH, default /api/cron/<name>)
    schedule: Schedule | None
    source: str  # where the schedule came from: "vercel.json", "SCHEDULE", or why it is missing

    def load(self) -> ModuleType:
        return importlib.import_module(self.module)


def vercel_schedules(path: Path = VERCEL_JSON) -> dict[str, str]:
    """vercel.json's `crons`: path → schedule."""
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except ValueError as error:
        raise CliError(f"{path.name} is not valid JSON: {error}") from None
    return {
        str(entry["path"]): str(entry["schedule"])
        for entry in config.get("crons", [])
        if isinstance(entry, dict) and "path" in entry and "schedule" in entry
    }


def discover_jobs(directory: Path = CRON_DIR, vercel_json: Path = VERCEL_JSON) -> list[CronJob]:
    """Every `functions/cron/<job>.py`, imported to read `CRON_PATH`/`SCHEDULE`."""
    declared = vercel_schedules(vercel_json)
    jobs = []
    for name in cron_modules(directory):
        dotted = f"{FUNCTIONS_PACKAGE}.{CRON_PACKAGE}.{name}"
        module = importlib.import_module(dotted)
        path = str(getattr(module, "CRON_PATH", f"/api/{CRON_PACKAGE}/{name}"))
        expression, source = declared.get(path), "vercel.json"
        if expression is None and isinstance(getattr(module, "SCHEDULE", None), str):
            expression, source = module.SCHEDULE, f"SCHEDULE (no vercel.json cron for {path})"
        schedule = None
        if expression is None:
            source = f"none: no vercel.json cron for {path} and no SCHEDULE"
        else:
            try:
                schedule = Schedule.parse(expression)
            except CronSyntaxError as error:
                source = f"invalid in {source.split(' ')[0]}: {error}"
        jobs.append(CronJob(name, dotted, path, schedule, source))
    return jobs


def find_job(name: str, jobs: Sequence[CronJob]) -> CronJob:
    """The job called `name` (also accepted: `cron.<name>`, `cron/<name>`, its module)."""
    wanted = name.removeprefix(f"{FUNCTIONS_PACKAGE}.").replace("/", ".").removesuffix(".py")
    wanted = wanted.removeprefix(f"{CRON_PACKAGE}.")
    for job in jobs:
        if job.name == wanted:
            return job
    if not jobs:
        raise CliError(f"no cron jobs: {CRON_DIR} does not exist or is empty", code=2)
    names = ", ".join(job.name for job in jobs)
    raise CliError(f"no cron job {name!r} (jobs: {names})", code=2)


@dataclass(frozen=True)
class RunResult:
    job: str
    ok: bool
    duration_ms: float
    result: Any = None
    error: str | None = None

    def summary(self, limit: int = 200) -> str:
        if not self.ok:
            return f"cron {self.job}: FAILED in {self.duration_ms:.0f} ms: {self.error}"
        shown = json.dumps(self.result, default=str)
        if len(shown) > limit:
            shown = shown[: limit - 1] + "…"
        return f"cron {self.job}: ok in {self.duration_ms:.0f} ms -> {shown}"


def run_job(job: CronJob) -> RunResult:
    """Call the job's Lambda handler with an EventBridge schedule event, in-process.

    No Lambda context: nothing local imposes Lambda's limit, so the run's budget (and its
    lease) is `CRON_MAX_DURATION_S`, the documented limit where no Lambda context says.
    """
    started = time.perf_counter()
    try:
        module = job.load()
        handler: Callable[[dict[str, Any], Any], Any] = module.lambda_handler
        result = handler(events.schedule(rule=f"keyflash-{job.name}"), None)
    except Exception as error:
        elapsed = (time.perf_counter() - started) * 1000
        logger.debug("cron %s failed", job.name, exc_info=True)
        return RunResult(job.name, False, elapsed, error=f"{type(error).__name__}: {error}")
    return RunResult(job.name, True, (time.perf_counter() - started) * 1000, result=result)


class Scheduler:
    """Fires each scheduled job at its next minute, on worker threads, until `stop()`."""

    def __init__(
        self,
        jobs: Sequence[CronJob],
        *,
        report: Callable[[str], None],
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.jobs = [job for job in jobs if job.schedule is not None]
        self._report = report
        self._clock = clock
        self._stop = threading.Event()
        self._running: dict[str, threading.Thread] = {}
        self._due: dict[str, datetime] = {}
        self._thread = threading.Thread(target=self._loop, name="keyflash-cron", daemon=True)

    def next_runs(self) -> dict[str, datetime]:
        now = self._clock()
        return {job.name: job.schedule.next_after(now) for job in self.jobs if job.schedule}

    def start(self) -> None:
        """Schedule each job's next run from now, then fire them on a background thread."""
        if self.jobs:
            self._due = self.next_runs()
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop scheduling and wait (up to `timeout`) for runs in progress to finish."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        deadline = time.monotonic() + timeout
        for thread in list(self._running.values()):
            thread.join(max(0.0, deadline - time.monotonic()))

    def _loop(self) -> None:
        due = self._due
        while not self._stop.is_set():
            now = self._clock()
            for job in self.jobs:
                if due[job.name] <= now:
                    self._fire(job)
                    assert job.schedule is not None
                    due[job.name] = job.schedule.next_after(now)
            wait = (min(due.values()) - self._clock()).total_seconds()
            # At most a second: a laptop waking from sleep (or a test's clock) moves time on
            # without waking us.
            self._stop.wait(min(1.0, max(0.05, wait)))

    def _fire(self, job: CronJob) -> None:
        running = self._running.get(job.name)
        if running is not None and running.is_alive():
            self._report(f"cron {job.name}: skipped, the previous run is still going")
            return

        def work() -> None:
            self._report(run_job(job).summary())

        thread = threading.Thread(target=work, name=f"cron-{job.name}", daemon=True)
        self._running[job.name] = thread
        thread.start()
