"""Feature flags while the database does not answer: the snapshot is served at once.

The database is behind a `TcpGate`: shut, it holds every new connection unanswered (a frozen
compute, a partition) and counts it, so a test knows how many connect attempts reloading the
flags made. The flag snapshot's clock is injected: the tests move time past the snapshot's age
and the pause after a failed reload instead of waiting. `flags.flags_for` is what the routes
read; it is called directly where connect attempts are counted (a route's `api_usage` row
connects too), and through `GET /api/flags` where the answer is the point.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from shared import config, db, flags
from shared.flags import FlagCache
from tests.faults.conftest import FaultApp
from tests.support.http import Caller
from tests.support.tcp_gate import TcpGate

pytestmark = pytest.mark.faults

WAIT_S = 20.0
USER = "user_flags_gate"
CALLERS = 20
SNAPSHOT_AGE_S = 30.0  # FLAGS_CACHE_SECONDS' default


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """A fresh container snapshot (none loaded yet) on a clock the test moves."""
    fake = FakeClock()
    monkeypatch.setattr(flags, "_cache", FlagCache(clock=fake))
    return fake


@pytest.fixture
def gate(fault_app: FaultApp, monkeypatch: pytest.MonkeyPatch) -> Iterator[TcpGate]:
    """The app's database behind a gate (fault lane settings: a 1.5 s budget, so a reload
    against the shut gate fails after one connect attempt)."""
    url = urlsplit(fault_app.url)
    assert url.port is not None
    with TcpGate(url.port) as gate:
        netloc = url.netloc.rsplit(":", 1)[0] + f":{gate.port}"
        monkeypatch.setenv("DATABASE_URL", urlunsplit(url._replace(netloc=netloc)))
        config.get_settings.cache_clear()
        db.dispose_engine()
        try:
            yield gate
        finally:
            gate.open()  # a connect still held goes through, and its thread ends
            db.dispose_engine()


def set_flag(app: FaultApp, key: str, *, enabled: bool) -> None:
    """Written beside the gate, as another container would."""
    with app.admin() as admin:
        admin.execute(
            """INSERT INTO feature_flags (id, key, enabled, "rolloutPercent", "allowedUsers",
                                          "createdAt", "updatedAt")
               VALUES (gen_random_uuid()::text, %s, %s, 100, '{}', now(), now())
               ON CONFLICT (key) DO UPDATE SET enabled = excluded.enabled""",
            (key, enabled),
        )


def warm_then_shut(app: FaultApp, gate: TcpGate, clock: FakeClock) -> int:
    """A snapshot with `beta` on; then the gate shut, `beta` turned off beside it, no pooled
    connection left (a reload must connect) and the snapshot old enough to be reloaded.
    Returns the connections the gate had accepted by then."""
    set_flag(app, "beta", enabled=True)
    assert flags.flags_for(USER) == {"beta": True}
    db.close_connections()
    gate.shut()
    set_flag(app, "beta", enabled=False)
    clock.now += SNAPSHOT_AGE_S
    return gate.connections


def logged(caplog: pytest.LogCaptureFixture, name: str) -> list[dict[str, Any]]:
    found = [json.loads(r.getMessage()) for r in caplog.records if r.name == "keyflash"]
    return [event for event in found if event["event"] == name]


@pytest.mark.parametrize("fault_app", ["direct"], indirect=True)
def test_a_failed_reload_serves_the_snapshot_without_database_calls_for_a_pause(
    fault_app: FaultApp, gate: TcpGate, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="keyflash")
    before = warm_then_shut(fault_app, gate, clock)
    assert flags.flags_for(USER) == {"beta": True}  # the reload failed: the last snapshot
    assert gate.connections == before + 1
    # During the pause: the snapshot, no connect attempt, nothing more logged.
    for _ in range(5):
        assert flags.flags_for(USER) == {"beta": True}
    clock.now += flags.RELOAD_PAUSE_S - 0.1
    assert flags.flags_for(USER) == {"beta": True}
    assert gate.connections == before + 1
    [failure] = logged(caplog, "flags_reload_failed")
    assert failure["retryInS"] == flags.RELOAD_PAUSE_S
    # The pause over: one reload again (still down: the snapshot, logged once more).
    clock.now += 0.1
    assert flags.flags_for(USER) == {"beta": True}
    assert gate.connections == before + 2
    assert len(logged(caplog, "flags_reload_failed")) == 2
    # The database back: the next reload after the pause sees the change.
    gate.open()
    clock.now += flags.RELOAD_PAUSE_S
    assert flags.flags_for(USER) == {"beta": False}
    assert gate.connections == before + 3
    call = Caller("lambda_v2", fault_app.keys)
    assert call("flags", "GET", "/api/flags", user=USER).json == {"flags": {"beta": False}}


@pytest.mark.parametrize("fault_app", ["direct"], indirect=True)
def test_callers_during_a_reload_serve_the_snapshot_rather_than_wait_or_reload(
    fault_app: FaultApp, gate: TcpGate, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A budget long enough that the reload's connect stays held until the test opens the gate.
    monkeypatch.setenv("DB_RETRY_BUDGET_S", "120")
    monkeypatch.setenv("DB_CONNECT_TIMEOUT_S", "120")
    config.get_settings.cache_clear()
    db.dispose_engine()
    before = warm_then_shut(fault_app, gate, clock)
    with ThreadPoolExecutor(CALLERS) as pool:
        try:
            reloading = pool.submit(flags.flags_for, USER)
            assert gate.connect_held.wait(WAIT_S), "the reload never reached the database"
            others = [pool.submit(flags.flags_for, USER) for _ in range(CALLERS - 1)]
            _, waiting = wait(others, timeout=WAIT_S)
            assert not waiting, f"{len(waiting)} callers waited for the reload under way"
            assert [f.result() for f in others] == [{"beta": True}] * (CALLERS - 1)
            assert gate.connections == before + 1  # only the one reload
        finally:
            gate.open()
        assert reloading.result(timeout=WAIT_S) == {"beta": False}
    assert flags.flags_for(USER) == {"beta": False}
    assert gate.connections == before + 1


@pytest.mark.parametrize("fault_app", ["direct"], indirect=True)
def test_a_cold_container_answers_503_and_tries_the_database_once_per_pause(
    fault_app: FaultApp, gate: TcpGate, clock: FakeClock
) -> None:
    set_flag(fault_app, "beta", enabled=True)
    gate.shut()
    before = gate.connections
    with ThreadPoolExecutor(CALLERS) as pool:
        loading = pool.submit(flags.flags_for, USER)
        assert gate.connect_held.wait(WAIT_S), "the load never reached the database"
        others: list[Future[dict[str, bool]]] = [
            pool.submit(flags.flags_for, USER) for _ in range(CALLERS - 1)
        ]
        for future in [loading, *others]:
            with pytest.raises(db.DatabaseUnavailableError):
                future.result(timeout=WAIT_S)
    assert gate.connections == before + 1  # the waiting callers took the load's failure
    answer = Caller("lambda_v2", fault_app.keys)("flags", "GET", "/api/flags", user=USER)
    assert answer.status == 503, answer.text
    assert answer.headers["retry-after"].isdigit()
    assert gate.connections == before + 1
    gate.open()
    clock.now += flags.RELOAD_PAUSE_S
    assert flags.flags_for(USER) == {"beta": True}
