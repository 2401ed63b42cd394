"""A route that needs no database answers while the database does not, without waiting out its
`api_usage` row's connect or idle ping; the rows are held and stored, each once, by the next
request once the database answers again.

The database is behind a `TcpGate`: shut, it holds every byte and every new connection
unanswered (a frozen compute, a partition); only the test's `open()` lets anything through. So
a 200 received while the gate is shut, with the row's connect held at the gate, is a response
that did not wait for the database: ordering, not timing. DB_CONNECT_TIMEOUT_S is far longer
than any test waits, and a ping on a shut gate never ends: a response that waited would not
come back at all (the call fails after `WAIT_S`). Both lanes, one pooled connection (Lambda's).
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.faults.conftest import FaultApp
from tests.support.http import Caller, Result
from tests.support.tcp_gate import TcpGate

pytestmark = pytest.mark.faults

WAIT_S = 30.0  # only a guard against a response that waits for the gate forever
USER = "user_usage_gate"
RELATED = {"keyword": "espresso", "limit": 3}


def _use_gate(app: FaultApp, gate: TcpGate, monkeypatch: pytest.MonkeyPatch, **env: str) -> None:
    from shared import config, db

    url = urlsplit(app.url)
    netloc = url.netloc.rsplit(":", 1)[0] + f":{gate.port}"
    monkeypatch.setenv("DATABASE_URL", urlunsplit(url._replace(netloc=netloc)))
    monkeypatch.setenv("DB_CONNECT_TIMEOUT_S", "120")  # longer than any test waits
    monkeypatch.setenv("DB_POOL_SIZE", "1")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    config.get_settings.cache_clear()
    db.dispose_engine()  # a cold container


@pytest.fixture
def gate(fault_app: FaultApp, monkeypatch: pytest.MonkeyPatch) -> Iterator[TcpGate]:
    """The app's database behind an open gate, in a cold container."""
    from shared import db

    port = urlsplit(fault_app.url).port
    assert port is not None
    with TcpGate(port) as gate:
        _use_gate(fault_app, gate, monkeypatch)
        try:
            yield gate
        finally:
            gate.open()  # a call still waiting (the defect) then ends
            db.dispose_engine()


def related(call: Caller) -> Result:
    return call("keywords_related", "POST", "/api/keywords/related", user=USER, json_body=RELATED)


def related_while_shut(call: Caller) -> Result:
    """The call from another thread (`Caller` reads the row's answer only on the main thread,
    and that read would wait for the gate), given up on after `WAIT_S`."""
    pool = ThreadPoolExecutor(1)
    try:
        return pool.submit(related, call).result(timeout=WAIT_S)
    finally:
        pool.shutdown(wait=False)  # a call still waiting ends when the fixture opens the gate


def stored_rows(app: FaultApp) -> int:
    with app.admin() as admin:
        row = admin.execute(
            """SELECT count(*) FROM api_usage
               WHERE "userId" = %s AND endpoint = '/api/keywords/related'""",
            (USER,),
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_a_warm_container_answers_while_its_usage_rows_reconnect_is_held(
    fault_app: FaultApp, gate: TcpGate
) -> None:
    call = Caller("lambda_v2", fault_app.keys)
    assert related(call).status == 200  # its row's answer read (main thread): nothing in flight
    gate.shut()
    # Its row is sent on the pooled connection; the gate holds it, so no answer comes back.
    assert related_while_shut(call).status == 200
    # This checkout finds that answer missing, discards the connection and must connect.
    third = related_while_shut(call)
    assert third.status == 200, third.text
    assert gate.connect_held.is_set(), "the row's connect never reached the database"
    assert stored_rows(fault_app) == 1  # the other two are held
    gate.open()
    assert related(call).status == 200  # the next request sends the held rows with its own
    assert stored_rows(fault_app) == 4  # each once, though the second row was sent twice


def test_a_cold_container_answers_while_its_usage_rows_connect_is_held(
    fault_app: FaultApp, gate: TcpGate
) -> None:
    call = Caller("lambda_v2", fault_app.keys)
    gate.shut()
    answer = related_while_shut(call)
    assert answer.status == 200, answer.text
    assert gate.connect_held.is_set(), "the row's connect never reached the database"
    assert stored_rows(fault_app) == 0
    gate.open()
    assert related(call).status == 200
    assert stored_rows(fault_app) == 2


def test_an_idle_connection_answers_while_its_usage_rows_ping_is_held(
    fault_app: FaultApp, gate: TcpGate, monkeypatch: pytest.MonkeyPatch
) -> None:
    _use_gate(fault_app, gate, monkeypatch, DB_IDLE_CHECK_S="0")  # every checkout pings
    call = Caller("lambda_v2", fault_app.keys)
    assert related(call).status == 200
    assert stored_rows(fault_app) == 1
    gate.shut()
    answer = related_while_shut(call)  # its checkout pings the idle connection: held
    assert answer.status == 200, answer.text
    assert gate.connect_held.is_set(), "the dead connection was never replaced"
    assert stored_rows(fault_app) == 1
    gate.open()
    assert related(call).status == 200
    assert stored_rows(fault_app) == 3
