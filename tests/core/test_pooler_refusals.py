"""PgBouncer's own refusals, through a real PgBouncer (the pooled lane).

PgBouncer refuses some connections in its own words, unquoted (`no such database: <name>`, a
failed client login), where PostgreSQL would quote the name. They are configuration no retry
mends, as PostgreSQL's are: one attempt, then `DatabaseUnavailableError`. And whatever a failed
connect is logged with (`db_retry`, `db_unavailable`) names no database, role or host.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from sqlalchemy import text

from devkit._host import LOOPBACK
from devkit.pgbouncer import LocalPgBouncer
from shared import config, db

pytestmark = pytest.mark.pooled

SECRET_DATABASE = "kf_nosuch_secretdb"
SECRET_ROLE = "kf_nosuch_secretrole"


class OneDatabasePgBouncer(LocalPgBouncer):
    """PgBouncer serving one named database, as a pooler configured per database does (no `*`)."""

    def __init__(self, served: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.served = served

    def _write_config(self) -> Path:
        config_file = super()._write_config()
        wildcard = f"* = host={self.upstream_host} port={self.upstream_port}"
        named = f"{self.served} = host={self.upstream_host} port={self.upstream_port}"
        config_file.write_text(config_file.read_text().replace(wildcard, named))
        return config_file


@pytest.fixture
def own_bouncer(pgbouncer: LocalPgBouncer, direct_database_url: str) -> Iterator[LocalPgBouncer]:
    """A PgBouncer of this test's own (it may be disabled) serving only the test database."""
    served = direct_database_url.rsplit("/", 1)[1]
    with (
        tempfile.TemporaryDirectory(prefix="keyflash-pgbouncer-one-") as tmp,
        OneDatabasePgBouncer(
            served,
            pgbouncer.upstream_host,
            pgbouncer.upstream_port,
            Path(tmp),
            user=pgbouncer.user,
            password=pgbouncer.password,
        ) as bouncer,
    ):
        yield bouncer


@pytest.fixture
def point_at(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Point DATABASE_URL at a URL (fresh settings and engine), and forget it afterwards."""

    def point(url: str, budget_s: str = "5") -> None:
        monkeypatch.setenv("DATABASE_URL", url)
        monkeypatch.setenv("DB_RETRY_BUDGET_S", budget_s)
        config.get_settings.cache_clear()
        db.dispose_engine()

    yield point
    db.dispose_engine()
    config.get_settings.cache_clear()


def _events(caplog: pytest.LogCaptureFixture, name: str) -> list[dict[str, Any]]:
    found = [json.loads(r.getMessage()) for r in caplog.records if r.name == "keyflash"]
    return [event for event in found if event["event"] == name]


def _select_one() -> None:
    db.run(lambda conn: conn.session.execute(text("SELECT 1")), idempotent=True)


def _assert_refused_at_once(
    caught: pytest.ExceptionInfo[db.DatabaseUnavailableError],
    caplog: pytest.LogCaptureFixture,
    reason: str,
    secret: str,
) -> None:
    assert caught.value.refused == reason
    assert _events(caplog, "db_retry") == []
    [unavailable] = _events(caplog, "db_unavailable")
    assert (unavailable["attempts"], unavailable["retried"]) == (1, False)
    assert unavailable["reason"] == reason
    assert secret not in caplog.text and secret not in str(caught.value)


def test_pgbouncers_no_such_database_is_refused_at_once_without_the_name(
    own_bouncer: LocalPgBouncer, point_at: Any, caplog: pytest.LogCaptureFixture
) -> None:
    point_at(own_bouncer.url(SECRET_DATABASE))
    caplog.set_level(logging.INFO, logger="keyflash")
    with pytest.raises(db.DatabaseUnavailableError) as caught:
        _select_one()
    _assert_refused_at_once(caught, caplog, "no such database: …", SECRET_DATABASE)


def test_pgbouncers_failed_client_login_is_refused_at_once_without_the_role(
    pgbouncer: LocalPgBouncer,
    direct_database_url: str,
    point_at: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The lane's PgBouncer trusts only the roles in its auth file: an unknown one fails login."""
    database = direct_database_url.rsplit("/", 1)[1]
    point_at(
        f"postgresql://{quote(SECRET_ROLE)}@{LOOPBACK}:{pgbouncer.port}/{database}?pgbouncer=true"
    )
    caplog.set_level(logging.INFO, logger="keyflash")
    with pytest.raises(db.DatabaseUnavailableError) as caught:
        _select_one()
    _assert_refused_at_once(caught, caplog, '"…" authentication failed', SECRET_ROLE)


def test_a_retried_connect_failure_is_logged_without_database_or_host(
    own_bouncer: LocalPgBouncer,
    direct_database_url: str,
    point_at: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A database the operator disabled in PgBouncer (maintenance) may come back: retried within
    the budget, and every line about it leaves the database's name and the host out."""
    database = direct_database_url.rsplit("/", 1)[1]
    own_bouncer.admin(f"DISABLE {database}")  # type: ignore[arg-type]
    point_at(own_bouncer.url(database), budget_s="0.5")
    caplog.set_level(logging.INFO, logger="keyflash")
    with pytest.raises(db.DatabaseUnavailableError) as caught:
        _select_one()
    retries = _events(caplog, "db_retry")
    [unavailable] = _events(caplog, "db_unavailable")
    assert retries and unavailable["retried"] is True
    assert {event["reason"] for event in [*retries, unavailable]} == {'database "…" is disabled'}
    for secret in (database, LOOPBACK):
        assert secret not in caplog.text and secret not in str(caught.value)
