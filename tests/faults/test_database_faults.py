"""Database faults injected into real processes while warm functions serve real traffic.

Each test runs client threads in this process (a thread stands for a warm Lambda container; they
share the module-level engine, with a connection each) calling the real `lambda_handler`s of
`functions.searches` and `functions.me` with API Gateway v2 events: writes (POST /api/searches,
each with a unique name) and reads (GET /api/searches, GET /api/me). Meanwhile the test breaks
this process's own PostgreSQL or PgBouncer (see conftest.py), and then checks every answer and
the rows in the database:

- an outage answers 503 with `Retry-After` and the error envelope, never a 500, a hang, a stack
  trace or a connection string, and each 503 is the core giving up once (one retry budget spent,
  not two);
- once the fault is gone, the same warm handlers succeed again on their own (same engine);
- a write acknowledged with 201 is stored exactly once; a write answered 503 is stored at most
  once (stored = "outcome unknown", counted); nothing is stored twice.

Synchronisation waits on observable conditions (answers recorded, pooler state, server pids),
never on sleeps. No duration is asserted (a loaded machine stretches them; speed is the
benchmarks'): how a request failed is, from the core's log. Figures for the report are printed
(`-s` shows them).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import psycopg
import pytest

from devkit._host import wait_for
from shared import db
from shared.http import usage
from tests.faults.conftest import (
    APP_PASSWORD,
    CLIENT_THREADS,
    DATABASE,
    POOLER_QUERY_WAIT_TIMEOUT_S,
    RETRY_BUDGET_S,
    FaultApp,
)
from tests.support.http import Caller

pytestmark = pytest.mark.faults

Kind = Literal["write", "list", "me"]
KINDS: tuple[Kind, ...] = ("write", "list", "me")
# Below the 50-searches cap, so a writer never sees the cap's 400.
WRITES_PER_USER = 40
# What may never appear in an answer: internals, connection strings, the password.
LEAKS = ("Traceback", "psycopg", "sqlalchemy", "postgresql://", "127.0.0.1", APP_PASSWORD)
WAIT_S = 30.0


@dataclass(frozen=True)
class Answer:
    """One request and what the handler answered (status -1: the handler raised)."""

    kind: Kind
    client: int
    status: int
    started: float
    finished: float
    body: str
    headers: dict[str, str]
    name: str | None = None  # the saved search a write asked for

    @property
    def duration(self) -> float:
        return self.finished - self.started

    def within(self, start: float, end: float) -> bool:
        """Whether the request ran entirely inside [start, end]."""
        return start <= self.started and self.finished <= end


class Traffic:
    """CLIENT_THREADS client threads calling warm handlers until stopped, every answer kept.

    Client i sends `KINDS[i % 3]` requests back to back. Writers switch to a fresh user every
    WRITES_PER_USER writes; readers keep one user each (provisioned once, like a warm container).
    """

    def __init__(self, app: FaultApp) -> None:
        self._caller = Caller("lambda_v2", app.keys)
        self._tag = secrets.token_hex(3)
        self._answers: list[Answer] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads = [
            threading.Thread(target=self._client, args=(i,), name=f"client-{i}", daemon=True)
            for i in range(CLIENT_THREADS)
        ]

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        self.stop(check=exc_type is None)  # don't hide the failure that got us here

    def stop(self, *, check: bool = True) -> None:
        """Let each client finish its request in flight; a client still inside one after
        WAIT_S is a hang."""
        self._stopping.set()
        deadline = time.monotonic() + WAIT_S
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        hung = [thread.name for thread in self._threads if thread.is_alive()]
        assert not (check and hung), f"requests still running long after the fault: {hung}"

    def answers(self, *, since: float = 0.0) -> list[Answer]:
        """Answers to requests started at or after `since`, in the order they finished."""
        with self._lock:
            found = list(self._answers)
        return [answer for answer in found if answer.started >= since]

    def every_kind_has(self, statuses: Iterable[int], *, since: float, count: int = 1) -> bool:
        """Whether each kind has `count` answers in `statuses` among requests started ≥ since."""
        wanted = set(statuses)
        tally = Counter(a.kind for a in self.answers(since=since) if a.status in wanted)
        return all(tally[kind] >= count for kind in KINDS)

    def wait_until_warm(self) -> None:
        """Every kind has succeeded a few times: handlers, engine and users are warm."""
        wait_until(lambda: self.every_kind_has({200, 201}, since=0.0, count=3), "warm traffic")

    def wait_for_recovery(self, since: float) -> None:
        """Every client succeeds again with requests started after `since`."""

        def recovered() -> bool:
            ok = {a.client for a in self.answers(since=since) if a.status in {200, 201}}
            return len(ok) == CLIENT_THREADS

        wait_until(recovered, "every client to succeed again")

    def _client(self, index: int) -> None:
        # Mangum runs each request on the thread's event loop (asyncio.get_event_loop()).
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            sequence = 0
            while not self._stopping.is_set():
                answer = self._request(index, KINDS[index % len(KINDS)], sequence)
                with self._lock:
                    self._answers.append(answer)
                sequence += 1
        finally:
            asyncio.set_event_loop(None)
            loop.close()

    def _request(self, index: int, kind: Kind, sequence: int) -> Answer:
        name = None
        started = time.monotonic()
        try:
            if kind == "write":
                name = f"{self._tag}-{index}-{sequence}"
                user = f"{self._tag}-w{index}-{sequence // WRITES_PER_USER}"
                result = self._caller(
                    "searches", "POST", "/api/searches", user=user, json_body=search_body(name)
                )
            elif kind == "list":
                result = self._caller("searches", "GET", "/api/searches", user=self._reader(index))
            else:
                result = self._caller("me", "GET", "/api/me", user=self._reader(index))
            status, headers, text = result.status, result.headers, result.text
        except Exception:  # a handler must always answer: recorded, then failed on
            status, headers, text = -1, {}, traceback.format_exc()
        return Answer(kind, index, status, started, time.monotonic(), text, headers, name)

    def _reader(self, index: int) -> str:
        return f"{self._tag}-r{index}"


def search_body(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "searchParams": {"keywords": ["espresso machine"], "location": "US", "matchType": "phrase"},
    }


def wait_until(condition: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    """Wait on a condition (polled), failing with `what` if it does not hold within `timeout`."""
    assert wait_for(condition, timeout=timeout), f"gave up after {timeout} s waiting for {what}"


# --- checks -----------------------------------------------------------------------------------


def assert_answers_are_safe(
    answers: list[Answer], allowed: dict[Kind, set[int]], caplog: pytest.LogCaptureFixture
) -> None:
    """Only the allowed statuses; every 503 is the envelope with Retry-After and the core
    giving up once for that request; no answer leaks internals."""
    unexpected = [
        (a.kind, a.status, a.body[:300]) for a in answers if a.status not in allowed[a.kind]
    ]
    assert not unexpected, f"unexpected answers: {unexpected[:5]} (of {len(unexpected)})"
    for answer in answers:
        for leak in LEAKS:
            assert leak not in answer.body, f"{answer.kind} answer leaks {leak!r}: {answer.body}"
        if answer.status == 503:
            assert_unavailable_envelope(answer)
    assert_each_503_gave_up_once(answers, caplog)


def assert_each_503_gave_up_once(answers: list[Answer], caplog: pytest.LogCaptureFixture) -> None:
    """Each request answered 503 has exactly one `db_unavailable` line (its request id): the
    core gave up once, when its retry budget ran out or the failure could not be retried, and the
    request did not go on to wait out another budget (or a pooler's wait) before answering."""
    gave_up = Counter(event.get("requestId") for event in core_events(caplog, "db_unavailable"))
    failed = [a for a in answers if a.status == 503]
    wrong = [
        (a.kind, gave_up[a.headers["x-request-id"]])
        for a in failed
        if gave_up[a.headers["x-request-id"]] != 1
    ]
    assert not wrong, f"503s without exactly one give-up (kind, give-ups): {wrong[:5]}"


def assert_unavailable_envelope(answer: Answer) -> None:
    assert answer.headers.get("retry-after", "").isdigit(), answer.headers
    body = json.loads(answer.body)
    assert set(body) == {"error", "message", "statusCode", "timestamp"}, body
    assert body["statusCode"] == 503 and body["error"] and body["message"], body


@dataclass
class WriteLedger:
    """What the database holds for the writes the clients attempted."""

    acknowledged: int  # answered 201: each stored exactly once
    refused: int  # answered 503
    outcome_unknown: int  # answered 503 but stored (once): the commit went through


def check_writes(app: FaultApp, answers: list[Answer]) -> WriteLedger:
    """Every 201 stored once, every 503 stored at most once, nothing stored twice or unasked."""
    writes = [a for a in answers if a.kind == "write" and a.name is not None]
    with app.admin() as admin:
        rows = admin.execute("SELECT name FROM saved_searches").fetchall()
    stored = Counter(str(name) for (name,) in rows)
    doubled = {name: count for name, count in stored.items() if count > 1}
    assert not doubled, f"writes applied twice: {doubled}"
    asked = {a.name for a in writes}
    assert set(stored) <= asked, f"rows nobody asked for: {set(stored) - asked}"
    acknowledged = [a.name for a in writes if a.status == 201]
    lost = [name for name in acknowledged if stored[name or ""] != 1]
    assert not lost, f"acknowledged writes missing from the database: {lost}"
    refused = [a.name for a in writes if a.status == 503]
    unknown = [name for name in refused if stored[name or ""] == 1]
    return WriteLedger(len(acknowledged), len(refused), len(unknown))


def assert_same_engine(engine: object) -> None:
    """The handlers recovered by themselves: the container's engine was never replaced."""
    assert db.get_engine() is engine


@dataclass
class Figures:
    """What one scenario did, printed for the report (`-s`)."""

    scenario: str
    lane: str
    faults: int = 0
    started: float = 0.0  # the fault's window: requests overlapping it ran "during the fault"
    ended: float = 0.0
    answers: list[Answer] = field(default_factory=list)
    ledger: WriteLedger | None = None
    retries: int = 0  # the core's db_retry events
    unavailable: Counter[str] = field(default_factory=Counter)  # db_unavailable by stage

    def collect(self, app: FaultApp, traffic: Traffic, caplog: pytest.LogCaptureFixture) -> None:
        """Take the answers, check the writes against the database, read the core's logs."""
        self.answers = traffic.answers()
        self.ledger = check_writes(app, self.answers)
        self.retries = len(core_events(caplog, "db_retry"))
        self.unavailable = Counter(e["stage"] for e in core_events(caplog, "db_unavailable"))
        self.show()

    def during(self) -> list[Answer]:
        return [a for a in self.answers if a.finished >= self.started and a.started <= self.ended]

    def show(self) -> None:
        during = self.during()
        by_kind = {
            kind: dict(sorted(Counter(a.status for a in during if a.kind == kind).items()))
            for kind in KINDS
        }
        slowest = max((a.duration for a in during), default=0.0)
        print(
            f"\n[faults] {self.scenario}[{self.lane}]: faults={self.faults} "
            f"fault_s={self.ended - self.started:.2f} requests={len(self.answers)} "
            f"during={len(during)} by_kind={by_kind} max_during_s={slowest:.2f} "
            f"(budget {RETRY_BUDGET_S} s) "
            f"retries={self.retries} unavailable_by_stage={dict(self.unavailable)} "
            f"ledger={self.ledger}"
        )


def core_events(caplog: pytest.LogCaptureFixture, name: str) -> list[dict[str, Any]]:
    """The core's JSON log events called `name` (shared.telemetry.log_event)."""
    events = [json.loads(r.getMessage()) for r in caplog.records if r.name == "keyflash"]
    return [event for event in events if event["event"] == name]


@contextmanager
def no_secrets_logged(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """The core's logs (retries, failures) during the test never show the password."""
    caplog.set_level(logging.INFO, logger="keyflash")
    yield
    assert APP_PASSWORD not in caplog.text


def terminate_app_backends(app: FaultApp, admin: psycopg.Connection[Any]) -> int:
    """pg_terminate_backend on every server process of the app's application_name; waits until
    those processes are gone (new ones the app opens meanwhile are left alone)."""
    rows = admin.execute(
        "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
        (app.application_name,),
    ).fetchall()
    pids = [pid for pid, _ in rows]
    wait_until(
        lambda: (
            admin.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", (pids,)
            ).fetchone()
            == (0,)
        ),
        "terminated backends to exit",
    )
    return len(pids)


def pooler_waiting_clients(app: FaultApp) -> int:
    """Clients PgBouncer holds without a server for our database (SHOW POOLS cl_waiting)."""
    pools = app.bouncer.admin("SHOW POOLS")
    return sum(int(pool["cl_waiting"]) for pool in pools if pool["database"] == DATABASE)


ANY_OUTCOME: dict[Kind, set[int]] = {"write": {201, 503}, "list": {200, 503}, "me": {200, 503}}
NO_FAILURE: dict[Kind, set[int]] = {"write": {201}, "list": {200}, "me": {200}}
READS_TRANSPARENT: dict[Kind, set[int]] = {"write": {201, 503}, "list": {200}, "me": {200}}


# --- 1. PostgreSQL restarts mid-traffic -------------------------------------------------------


def test_postgres_restart_mid_traffic_answers_503_then_recovers_without_double_writes(
    fault_app: FaultApp, caplog: pytest.LogCaptureFixture
) -> None:
    """The server goes down under warm traffic and comes back on the same port: during the
    outage every request fails fast with the 503 envelope; afterwards the same handlers work
    again by themselves; acknowledged writes are stored once. Pooled: PostgreSQL restarts
    behind PgBouncer, which holds each query until its query_wait_timeout."""
    postgres = fault_app.servers.postgres
    figures = Figures("postgres_restart", fault_app.lane, faults=1)
    with no_secrets_logged(caplog), Traffic(fault_app) as traffic:
        traffic.wait_until_warm()
        engine = db.get_engine()
        figures.started = time.monotonic()
        postgres.stop()
        down = time.monotonic()
        wait_until(
            lambda: traffic.every_kind_has({503}, since=down), "a 503 of each kind in the outage"
        )
        starting = time.monotonic()
        postgres.start()
        figures.ended = time.monotonic()
        traffic.wait_for_recovery(since=figures.ended)
    figures.collect(fault_app, traffic, caplog)

    assert_answers_are_safe(figures.answers, ANY_OUTCOME, caplog)
    inside = [a for a in figures.answers if a.within(down, starting)]
    assert inside and {a.status for a in inside} == {503}, "a request succeeded while down"
    assert_same_engine(engine)


# --- 2. Server connections killed -------------------------------------------------------------

KILL_ROUNDS = 5


def test_killed_server_connections_are_transparent_to_reads_and_never_double_writes(
    fault_app: FaultApp, caplog: pytest.LogCaptureFixture
) -> None:
    """pg_terminate_backend on all the app's server connections, again and again, under warm
    traffic: reads retry on a new connection and succeed; a write is committed once or answered
    503 (killed during COMMIT: outcome unknown), never applied twice. Pooled: the kills hit
    PgBouncer's server connections, and the clients see what PgBouncer forwards."""
    figures = Figures("killed_connections", fault_app.lane)
    with no_secrets_logged(caplog), fault_app.admin() as admin, Traffic(fault_app) as traffic:
        traffic.wait_until_warm()
        engine = db.get_engine()
        figures.started = time.monotonic()
        for _ in range(KILL_ROUNDS):
            mark = time.monotonic()
            # Traffic flows between kills: each kind has been served since the last one.
            wait_until(
                lambda mark=mark: traffic.every_kind_has({200, 201}, since=mark),
                "traffic between kills",
            )
            figures.faults += terminate_app_backends(fault_app, admin)
        figures.ended = time.monotonic()
        traffic.wait_for_recovery(since=figures.ended)
    figures.collect(fault_app, traffic, caplog)

    assert figures.faults >= KILL_ROUNDS, "the kills found no server connection of the app"
    assert_answers_are_safe(figures.answers, READS_TRANSPARENT, caplog)
    assert_same_engine(engine)


# --- 3. PgBouncer restarted and paused --------------------------------------------------------

BOUNCER_RESTARTS = 2


@pytest.mark.parametrize("fault_app", ["pooled"], indirect=True)
def test_pgbouncer_restart_recovers_or_fails_fast(
    fault_app: FaultApp, caplog: pytest.LogCaptureFixture
) -> None:
    """PgBouncer is stopped (SIGTERM drops every client) and started again on its port while
    functions are warm: reads reconnect within the budget or answer 503 fast; writes are stored
    once or answered 503; then the same handlers keep working."""
    figures = Figures("pgbouncer_restart", fault_app.lane, faults=BOUNCER_RESTARTS)
    with no_secrets_logged(caplog), Traffic(fault_app) as traffic:
        traffic.wait_until_warm()
        engine = db.get_engine()
        figures.started = time.monotonic()
        for _ in range(BOUNCER_RESTARTS):
            mark = time.monotonic()
            wait_until(
                lambda mark=mark: traffic.every_kind_has({200, 201}, since=mark),
                "traffic before the restart",
            )
            fault_app.bouncer.restart()
        figures.ended = time.monotonic()
        traffic.wait_for_recovery(since=figures.ended)
    figures.collect(fault_app, traffic, caplog)

    assert_answers_are_safe(figures.answers, ANY_OUTCOME, caplog)
    assert_same_engine(engine)


@pytest.mark.parametrize("fault_app", ["pooled"], indirect=True)
def test_short_pgbouncer_pause_holds_requests_and_loses_none(
    fault_app: FaultApp, caplog: pytest.LogCaptureFixture
) -> None:
    """PAUSE holds every client's next query; RESUME shortly after (well within the pooler's
    query_wait_timeout) lets them all complete: no failure, nothing lost or applied twice."""
    figures = Figures("pgbouncer_short_pause", fault_app.lane, faults=1)
    with no_secrets_logged(caplog), Traffic(fault_app) as traffic:
        traffic.wait_until_warm()
        figures.started = time.monotonic()
        fault_app.bouncer.pause(DATABASE)
        # Every client held, or half the pooler's query_wait_timeout gone (slow threads on a
        # loaded machine must not turn a short pause into the pooler's own timeout).
        release_by = figures.started + POOLER_QUERY_WAIT_TIMEOUT_S / 2
        wait_until(
            lambda: (
                pooler_waiting_clients(fault_app) >= CLIENT_THREADS
                or time.monotonic() >= release_by
            ),
            "clients held by the paused pooler",
        )
        held_clients = pooler_waiting_clients(fault_app)
        figures.ended = time.monotonic()  # nothing held can finish before the RESUME below
        fault_app.bouncer.resume(DATABASE)
        traffic.wait_for_recovery(since=figures.ended)
    figures.collect(fault_app, traffic, caplog)

    assert held_clients >= 1, "the pause held no client"
    assert_answers_are_safe(figures.answers, NO_FAILURE, caplog)
    held = [a for a in figures.answers if a.started <= figures.ended <= a.finished]
    assert len(held) >= held_clients, "every held request completed after the RESUME"


@pytest.mark.parametrize("fault_app", ["pooled"], indirect=True)
def test_pgbouncer_pause_beyond_the_budget_answers_503_then_recovers(
    fault_app: FaultApp, caplog: pytest.LogCaptureFixture
) -> None:
    """A PAUSE that outlasts the retry budget: PgBouncer drops each held client after its
    query_wait_timeout, which the app answers with the 503 envelope (not a hang, not a 500);
    after RESUME the same handlers succeed again and no write is applied twice."""
    figures = Figures("pgbouncer_long_pause", fault_app.lane, faults=1)
    with no_secrets_logged(caplog), Traffic(fault_app) as traffic:
        traffic.wait_until_warm()
        engine = db.get_engine()
        figures.started = time.monotonic()
        fault_app.bouncer.pause(DATABASE)
        paused = time.monotonic()
        wait_until(
            lambda: traffic.every_kind_has({503}, since=paused), "a 503 of each kind in the pause"
        )
        resuming = time.monotonic()
        fault_app.bouncer.resume(DATABASE)
        figures.ended = time.monotonic()
        traffic.wait_for_recovery(since=figures.ended)
    figures.collect(fault_app, traffic, caplog)

    assert_answers_are_safe(figures.answers, ANY_OUTCOME, caplog)
    inside = [a for a in figures.answers if a.within(paused, resuming)]
    assert inside and {a.status for a in inside} == {503}, "a request passed a paused pooler"
    # A failed request waits in the pooler once: it gave up once (above), and its usage row is
    # not attempted after the 503 (that second wait used to double the time to the answer).
    usage.flush()  # rows still held or in flight reach the table
    with fault_app.admin() as admin:
        row = admin.execute('SELECT count(*) FROM api_usage WHERE "statusCode" = 503').fetchone()
    assert row == (0,), f"{row} usage rows of 503 answers stored: attempted after the failure"
    assert_same_engine(engine)
