"""A route that needs no database answers while the database does not, without waiting for its
`api_usage` row's connection; the rows are stored, each once, when the database answers again.

The database is behind a `TcpGate`: shut, it holds every byte and every new connection
unanswered (a frozen compute, a partition), and only the test's `open()` lets a connect attempt
through. DB_CONNECT_TIMEOUT_S is far longer than the function's platform timeout, so a response
that waited for the row's connect would be the platform's refusal, never a 200: a 200 while the
gate holds the connect proves the response did not wait for it. Both lanes.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from devkit._host import wait_for
from tests.faults.conftest import FaultApp
from tests.support.http import Caller, Result
from tests.support.tcp_gate import TcpGate

pytestmark = pytest.mark.faults

WAIT_S = 20.0
USER = "user_usage_gate"
RELATED = {"keyword": "espresso", "limit": 3}


@pytest.fixture
def gate(fault_app: FaultApp, monkeypatch: pytest.MonkeyPatch) -> Iterator[TcpGate]:
    """The app's database behind a gate, in a container with one pooled connection (Lambda's)."""
    from shared import config, db

    url = urlsplit(fault_app.url)
    assert url.port is not None
    with TcpGate(url.port) as gate:
        netloc = url.netloc.rsplit(":", 1)[0] + f":{gate.port}"
        monkeypatch.setenv("DATABASE_URL", urlunsplit(url._replace(netloc=netloc)))
        monkeypatch.setenv("DB_CONNECT_TIMEOUT_S", "120")  # longer than any platform timeout
        monkeypatch.setenv("DB_POOL_SIZE", "1")
        config.get_settings.cache_clear()
        db.dispose_engine()
        try:
            yield gate
        finally:
            gate.open()  # a connect still held goes through, and its thread ends
            _settle()
            db.dispose_engine()


def _settle() -> None:
    from shared.http import usage

    usage.settle()


def related_off_main_thread(call: Caller) -> Result:
    """The call from another thread: `Caller` reads the row's answer only on the main thread,
    and that read would itself wait for the gate."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(
            call, "keywords_related", "POST", "/api/keywords/related", user=USER, json_body=RELATED
        ).result()


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
    first = call("keywords_related", "POST", "/api/keywords/related", user=USER, json_body=RELATED)
    assert first.status == 200  # its row's answer read (main thread): nothing in flight
    gate.shut()
    # Its row is sent on the pooled connection; the gate holds it, so no answer comes back.
    assert related_off_main_thread(call).status == 200
    # This checkout finds that answer missing and must replace the connection.
    third = related_off_main_thread(call)
    assert third.status == 200, third.text
    assert gate.connect_held.wait(WAIT_S), "no connect attempt for the held rows"
    assert stored_rows(fault_app) == 1  # the other two wait for the database
    gate.open()
    assert wait_for(lambda: stored_rows(fault_app) == 3, timeout=WAIT_S), stored_rows(fault_app)
    _settle()
    assert stored_rows(fault_app) == 3  # each once, though the second row was sent twice


def test_a_cold_container_answers_while_its_usage_rows_connect_is_held(
    fault_app: FaultApp, gate: TcpGate
) -> None:
    call = Caller("lambda_v2", fault_app.keys)
    gate.shut()
    answer: Any = related_off_main_thread(call)
    assert answer.status == 200, answer.text
    assert gate.connect_held.wait(WAIT_S), "no connect attempt for the held row"
    assert stored_rows(fault_app) == 0
    gate.open()
    assert wait_for(lambda: stored_rows(fault_app) == 1, timeout=WAIT_S), stored_rows(fault_app)
