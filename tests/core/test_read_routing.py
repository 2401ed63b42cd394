"""Read routing without a replica: settings, tokens, the routing table, outages of a read URL.

The replica itself is exercised in tests/replica; here the read URLs are unset, malformed or
point at a port nobody listens on, and the primary is the lane's real server.
"""

from __future__ import annotations

import json
import logging
import socket
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from starlette.datastructures import MutableHeaders

from devkit._host import free_port
from devkit.postgres import with_database
from devkit.read_routing import markdown
from shared import config, db, replicas
from shared.config import ConfigurationError, get_settings
from shared.db_url import DatabaseUrlError
from shared.http import consistency
from tests.support.http import Caller, Keys

DOCS = Path(__file__).resolve().parents[2] / "docs" / "replicas.md"
SECRET = "s3cret-replica-pass"


def fallbacks(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    found = [json.loads(r.getMessage()) for r in caplog.records if r.name == "keyflash"]
    return [event for event in found if event.get("event") == "replica_fallback"]


def use(monkeypatch: pytest.MonkeyPatch, **variables: str) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    config.get_settings.cache_clear()
    db.dispose_engine()
    replicas.reset()


def one(conn: Any) -> int:
    return int(conn.session.execute(text("SELECT 1")).scalar_one())


# --- settings and tokens (no database) ---------------------------------------------------------


def test_read_urls_follow_the_database_url_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:p@localhost/db")
    monkeypatch.setenv("DATABASE_READ_URL", f"mysql://u:{SECRET}@replica/db")
    get_settings.cache_clear()
    with pytest.raises(ConfigurationError) as caught:
        get_settings()
    assert "DATABASE_READ_URL is invalid" in str(caught.value)
    assert SECRET not in str(caught.value)
    monkeypatch.setenv(
        "DATABASE_READ_URL",
        f"postgresql://u:{SECRET}@ep-x-1-pooler.eu-central-1.aws.neon.tech/db?options=-c%20a%3Db",
    )
    get_settings.cache_clear()
    with pytest.raises(DatabaseUrlError) as refused:
        url = get_settings().database_read_url or ""
        replicas.read_engine("DATABASE_READ_URL", url)
    assert "DATABASE_READ_URL points at a transaction pooler" in str(refused.value)
    assert SECRET not in str(refused.value)
    get_settings.cache_clear()


def test_max_lag_defaults_to_one_second(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:p@localhost/db")
    monkeypatch.delenv("REPLICA_MAX_LAG_MS", raising=False)
    get_settings.cache_clear()
    assert get_settings().replica_max_lag_ms == 1000
    assert get_settings().database_read_url is None
    monkeypatch.setenv("REPLICA_MAX_LAG_MS", "-1")
    get_settings.cache_clear()
    with pytest.raises(ConfigurationError, match="REPLICA_MAX_LAG_MS is invalid"):
        get_settings()
    get_settings.cache_clear()


@pytest.mark.parametrize("position", [0, 1, 0x16_B374D848, 2**64 - 1])
def test_token_is_a_pg_lsn_and_round_trips(position: int) -> None:
    token = consistency.encode(position)
    assert consistency.decode(token) == position
    assert "/" in token


@pytest.mark.parametrize("garbage", ["", "16", "G/1", "1/2/3", "123456789/1", "1/ 2", "-1/1"])
def test_a_token_that_does_not_parse_requires_the_primary(garbage: str) -> None:
    assert consistency.decode(garbage) == db.UNKNOWN_POSITION


def test_a_new_token_names_the_new_write_only() -> None:
    headers = MutableHeaders()
    state = db.Consistency(seen=db.UNKNOWN_POSITION, written=0x2_00000010)
    consistency.add_token(headers, state, secure=True)
    assert headers[consistency.HEADER] == "2/10"
    cookie = headers["set-cookie"]
    assert cookie.startswith(f"{consistency.COOKIE}=2/10;") and "HttpOnly" in cookie
    assert "Secure" in cookie
    untouched = MutableHeaders()
    consistency.add_token(untouched, db.Consistency(seen=7), secure=False)
    assert consistency.HEADER not in untouched  # nothing written: nothing handed out


# --- the routing table, from the code ----------------------------------------------------------


def test_docs_show_the_routing_table_the_code_declares() -> None:
    """docs/replicas.md's table is what `devkit.read_routing` derives from the `db.read` calls
    of each deployable function's code: regenerate it with `python -m devkit.read_routing`."""
    assert markdown() in DOCS.read_text()


def test_routing_declarations_cover_the_declared_read_paths() -> None:
    """What the code declares read-only is what the issue names: each holder exists in the
    table with the URL its declaration says (an analytics read is one of the admin figures)."""
    table = markdown()
    for holder in ("shared.flags.load_rules", "shared.exports.build"):
        assert f"`{holder}`" in table
    assert "`functions.admin_analytics.analytics` → analytics" in table
    assert "`functions.admin_metrics.metric_series` → analytics" in table


# --- unset, down and wrong read URLs, on the lane's primary ------------------------------------


@pytest.mark.usefixtures("db_env")
def test_unset_read_url_imports_nothing_more_and_reads_the_primary(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("DATABASE_READ_URL", raising=False)
    monkeypatch.delenv("ANALYTICS_DATABASE_URL", raising=False)
    use(monkeypatch)
    monkeypatch.delitem(sys.modules, "shared.replicas")
    caplog.set_level(logging.INFO, logger="keyflash")
    assert db.read(one) == 1
    assert db.read(one, analytics=True, snapshot=True) == 1
    assert "shared.replicas" not in sys.modules
    assert db.consistency.get() is None
    assert fallbacks(caplog) == []


@pytest.mark.usefixtures("db_env")
@pytest.mark.parametrize("variable", ["DATABASE_READ_URL", "ANALYTICS_DATABASE_URL"])
def test_an_unreachable_read_url_costs_a_log_line_and_no_secret(
    variable: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    use(
        monkeypatch,
        **{variable: f"postgresql://reader:{SECRET}@127.0.0.1:{free_port()}/keyflash"},
        DB_RETRY_BUDGET_S="0.3",
    )
    caplog.set_level(logging.INFO, logger="keyflash")
    analytics = variable == "ANALYTICS_DATABASE_URL"
    assert db.read(one, analytics=analytics) == 1
    assert db.read(one, analytics=analytics) == 1  # resting: no new attempt
    assert [(e["database"], e["reason"]) for e in fallbacks(caplog)] == [(variable, "down")] * 2
    assert SECRET not in caplog.text


@pytest.mark.parametrize("failure", ["unreachable", "refused"])
def test_a_failing_read_url_logs_one_warning_naming_it_and_no_error(
    failure: str,
    db_env: str,
    direct_database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A replica that cannot be reached, or refuses the login, is no outage of ours: the only
    line above INFO is the fallback's, naming the read URL and saying why (names masked); a
    `db_unavailable` at ERROR is what a primary outage logs, and pages."""
    if failure == "unreachable":
        url, why = f"postgresql://reader:{SECRET}@127.0.0.1:{free_port()}/keyflash", "refused"
    else:
        url, why = with_database(direct_database_url, "kf_no_such_replica"), 'database "…"'
    use(monkeypatch, DATABASE_READ_URL=url, DB_RETRY_BUDGET_S="0.3")
    caplog.set_level(logging.INFO, logger="keyflash")
    assert db.read(one) == 1
    loud = [json.loads(r.getMessage()) for r in caplog.records if r.levelno >= logging.WARNING]
    assert [event["event"] for event in loud] == ["replica_fallback"]
    assert (loud[0]["database"], loud[0]["reason"]) == ("DATABASE_READ_URL", "down")
    assert why in loud[0]["detail"]
    retries = [e for e in map(json.loads, caplog.messages) if e.get("event") == "db_retry"]
    assert all(event["database"] == "DATABASE_READ_URL" for event in retries)
    assert SECRET not in caplog.text
    assert "kf_no_such_replica" not in caplog.text


@pytest.mark.usefixtures("db_env")
@pytest.mark.parametrize(
    ("url", "why"),
    [
        (f"postgresql://reader:{SECRET}@10.255.255.1/keyflash?sslmode=disable", "uses sslmode"),
        (f"postgresql://reader:{SECRET}@x@127.0.0.1:5432/keyflash", "must have its user name"),
    ],
    ids=["tls-off", "raw-at-in-password"],
)
def test_a_read_url_breaking_a_url_rule_reads_from_the_primary(
    url: str, why: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """DATABASE_URL's rules (TLS off for a remote host, a raw '@' in the password) refuse a read
    URL as they refuse DATABASE_URL; a replica is an optimisation, so the primary serves instead
    of a 500."""
    use(monkeypatch, DATABASE_READ_URL=url)
    caplog.set_level(logging.INFO, logger="keyflash")
    assert db.read(one) == 1
    assert db.read(one) == 1  # resting: not parsed again
    refusals = fallbacks(caplog)
    assert [e["reason"] for e in refusals] == ["url_refused"] * 2
    assert f"DATABASE_READ_URL {why}" in refusals[0]["detail"]
    assert SECRET not in caplog.text


@pytest.mark.usefixtures("db_env")
def test_a_read_url_that_never_answers_falls_back_within_the_replica_budget(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A server that takes the socket but never the session (a standby whose paused replay
    holds a catalog lock): the connect gives up after the replica's 2 s, not after
    DB_CONNECT_TIMEOUT_S."""
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        use(monkeypatch, DATABASE_READ_URL=f"postgresql://r@127.0.0.1:{port}/k")
        caplog.set_level(logging.INFO, logger="keyflash")
        started = time.monotonic()
        assert db.read(one) == 1
        elapsed = time.monotonic() - started
    assert [e["reason"] for e in fallbacks(caplog)] == ["down"]
    assert elapsed < get_settings().db_connect_timeout_s - 2


@pytest.mark.usefixtures("db_env")
def test_writes_and_transactions_never_use_a_read_url(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    use(monkeypatch, DATABASE_READ_URL=f"postgresql://r:{SECRET}@127.0.0.1:{free_port()}/k")
    caplog.set_level(logging.INFO, logger="keyflash")
    assert db.run(one) == 1
    assert db.run(one, idempotent=True) == 1
    assert db.transaction(one) == 1
    assert fallbacks(caplog) == []  # the read URL (down) was never tried


def test_unset_read_url_hands_out_no_token(api_env: Keys, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_READ_URL", raising=False)
    use(monkeypatch)
    call = Caller("asgi", api_env)
    wrote = call("keywords", "POST", "/api/keywords", user="user_no_token",
                 json_body={"keywords": ["plain"], "matchType": "phrase"})  # fmt: skip
    assert wrote.status == 200, wrote.text
    assert consistency.HEADER.lower() not in wrote.headers
    assert consistency.COOKIE not in wrote.headers.get("set-cookie", "")
