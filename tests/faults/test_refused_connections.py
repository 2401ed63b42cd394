"""A database that refuses the connection: a wrong password, as after a Neon role's password reset.

The suite's servers trust every client, so this file makes this process's own fault server ask
one role for its password (SCRAM, as Neon does): a line for that role goes first in its
`pg_hba.conf` while the test runs. Nothing else is affected: every other role still matches the
trust lines below it.

A refusal is configuration no retry mends, yet the function cannot serve: it answers 503 with
`Retry-After` at once (no retry budget spent), and the log says what the server refused without
the role's name or the password.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy import text

from devkit._host import LOOPBACK, wait_for
from functions import health
from shared import config, db
from tests.faults.conftest import DATABASE, FaultApp
from tests.support.http import Caller

pytestmark = pytest.mark.faults

ROLE = "kf_checked_role"
PASSWORD = "right-S3cret-pw"
WRONG = "npg_WRONGwrong99"
REFUSED = 'password authentication failed for user "…"'
REFUSED_CHECK = "Database refused the connection - check DATABASE_URL (see the log)"


def _url(fault_app: FaultApp, password: str) -> str:
    port = fault_app.servers.postgres.port
    return f"postgresql://{ROLE}:{password}@{LOOPBACK}:{port}/{DATABASE}"


def _refuses(url: str) -> bool:
    try:
        psycopg.connect(url, connect_timeout=5).close()
    except psycopg.OperationalError as error:
        return "password authentication failed" in str(error)
    return False


@pytest.fixture
def checked_role(fault_app: FaultApp, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A role that must give its password, and DATABASE_URL holding a wrong one for it."""
    hba = fault_app.servers.postgres.data_dir / "pg_hba.conf"
    trusting = hba.read_text()
    with fault_app.admin() as admin:
        admin.execute(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{PASSWORD}'")
        hba.write_text(f"host all {ROLE} {LOOPBACK}/32 scram-sha-256\n{trusting}")
        admin.execute("SELECT pg_reload_conf()")
    wrong = _url(fault_app, WRONG)
    try:
        assert wait_for(lambda: _refuses(wrong), timeout=10), "the server never asked"
        monkeypatch.setenv("DATABASE_URL", wrong)
        config.get_settings.cache_clear()
        db.dispose_engine()
        health._last_database_check = None
        yield wrong
    finally:
        db.dispose_engine()
        hba.write_text(trusting)
        with fault_app.admin() as admin:
            admin.execute("SELECT pg_reload_conf()")
            admin.execute(f"DROP ROLE {ROLE}")


def _events(caplog: pytest.LogCaptureFixture, name: str) -> list[dict[str, Any]]:
    found = [json.loads(r.getMessage()) for r in caplog.records if r.name == "keyflash"]
    return [event for event in found if event["event"] == name]


@pytest.mark.parametrize("fault_app", ["direct"], indirect=True)
def test_a_wrong_password_is_unavailable_at_once_and_logged_without_names(
    fault_app: FaultApp, checked_role: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="keyflash")
    with pytest.raises(db.DatabaseUnavailableError) as caught:
        db.run(lambda conn: conn.session.execute(text("SELECT 1")), idempotent=True)
    assert caught.value.refused == REFUSED
    assert _events(caplog, "db_retry") == []
    [unavailable] = _events(caplog, "db_unavailable")
    assert (unavailable["stage"], unavailable["attempts"]) == ("connect", 1)
    assert (unavailable["retried"], unavailable["reason"]) == (False, REFUSED)
    for secret in (ROLE, WRONG):
        assert secret not in caplog.text and secret not in str(caught.value)
    # The same URL with the right password connects: the password was what was refused.
    assert not _refuses(_url(fault_app, PASSWORD))


@pytest.mark.parametrize("fault_app", ["direct"], indirect=True)
def test_routes_answer_a_wrong_password_with_503_and_health_says_refused(
    fault_app: FaultApp, checked_role: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="keyflash")
    caller = Caller("lambda_v2", fault_app.keys)
    answer = caller("me", "GET", "/api/me", user="user_refused")
    assert answer.status == 503, answer.text
    assert answer.headers["retry-after"] == "60"
    assert answer.json["message"].startswith("Service temporarily unavailable")
    report = caller("health", "GET", "/api/health")
    assert report.status == 207, report.text
    database = report.json["checks"]["database"]
    assert database["healthy"] is False
    assert database["error"] == REFUSED_CHECK
    assert _events(caplog, "db_retry") == []
    for secret in (ROLE, WRONG):
        assert secret not in caplog.text + answer.text + report.text
