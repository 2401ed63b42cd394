"""A keyword search whose database connection is reset just after its reservation committed
answers the 503 envelope and gives the keywords back at once, on a new connection, rather than
leaving them charged until the reconcile_reservations cron (docs/keyword-search.md).

The database is behind a `TcpGate`; a cursor event resets every connection through it right
after the reservation's statement has been answered, so a new user's provisioning statement that
follows it in the same unit of work is sent on a dead connection: the reservation's outcome is
known to the server only. Both lanes, one pooled connection (Lambda's).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from sqlalchemy import event

from tests.faults.conftest import FaultApp
from tests.support.http import Caller
from tests.support.tcp_gate import TcpGate

pytestmark = pytest.mark.faults

USER = "user_reset_after_reservation"
KEYWORDS = {"keywords": ["espresso machine", "latte art"], "matchType": "phrase", "location": "US"}


@pytest.fixture
def gate(fault_app: FaultApp, monkeypatch: pytest.MonkeyPatch) -> Iterator[TcpGate]:
    """The app's database behind a gate, in a cold container with one pooled connection."""
    from shared import config, db

    url = urlsplit(fault_app.url)
    assert url.port is not None
    with TcpGate(url.port) as gate:
        netloc = url.netloc.rsplit(":", 1)[0] + f":{gate.port}"
        monkeypatch.setenv("DATABASE_URL", urlunsplit(url._replace(netloc=netloc)))
        monkeypatch.setenv("DB_POOL_SIZE", "1")
        config.get_settings.cache_clear()
        db.dispose_engine()
        try:
            yield gate
        finally:
            db.dispose_engine()


def reset_after_the_reservation(gate: TcpGate) -> list[str]:
    """Reset every connection through `gate` once the first statement writing a reservation has
    been answered; returns the statements that saw it happen (one, when it did)."""
    from shared import db

    reset: list[str] = []

    @event.listens_for(db.get_engine(), "after_cursor_execute")
    def _reset(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if not reset and "INSERT INTO keyword_reservations" in statement:
            reset.append(statement)
            gate.reset()

    return reset


def charged(app: FaultApp) -> tuple[Any, ...] | None:
    with app.admin() as admin:
        return admin.execute(
            'SELECT "keywordSearchesThisMonth", "keywordSearchesTotal",'
            ' (SELECT count(*) FROM keyword_reservations WHERE "userId" = users.id),'
            ' (SELECT count(*) FROM search_history WHERE "userId" = users.id)'
            " FROM users WHERE id = %s",
            (USER,),
        ).fetchone()


def test_a_reset_just_after_the_reservation_answers_503_and_gives_the_keywords_back(
    fault_app: FaultApp, gate: TcpGate
) -> None:
    call = Caller("lambda_v2", fault_app.keys)
    reset = reset_after_the_reservation(gate)
    answer = call("keywords", "POST", "/api/keywords", user=USER, json_body=KEYWORDS)
    assert len(reset) == 1, "the reservation was never written"
    assert answer.status == 503, answer.text
    assert answer.json["error"] == "Service Unavailable"
    assert answer.headers["retry-after"] == "60"
    assert charged(fault_app) == (0, 0, 0, 0)  # given back at once: no reservation left
    again = call("keywords", "POST", "/api/keywords", user=USER, json_body=KEYWORDS)
    assert again.status == 200, again.text
    assert charged(fault_app) == (2, 2, 0, 1)  # charged once, for the search answered
