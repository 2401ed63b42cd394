"""A deployment configured wrongly, as deployed functions (Lambda handler, ASGI app) answer it.

The log is all an operator has: a setting that cannot be read, or a database URL the core
refuses, is logged with the message naming the variable (never its value) on the request's
`request_failed` line; the client gets the generic 500. A database that refuses the connection
(a wrong password, a database that does not exist) makes the function unavailable: 503 with
`Retry-After`.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from shared import config, db
from tests.support.http import Caller

USER = "user_misconfigured"


def configure(monkeypatch: pytest.MonkeyPatch, **env: str) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    config.get_settings.cache_clear()
    db.dispose_engine()


def failures(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    events = [json.loads(r.getMessage()) for r in caplog.records if r.name == "keyflash"]
    return [event for event in events if event["event"] == "request_failed"]


def test_a_setting_that_cannot_be_read_is_named_in_the_log_of_the_500(
    call: Caller, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    configure(monkeypatch, DB_POOL_SIZE="four-ish", BILLING_ENABLED="enabled")
    caplog.set_level(logging.INFO, logger="keyflash")
    answer = call("me", "GET", "/api/me", user=USER)
    assert answer.status == 500
    assert answer.json["message"] == "An unexpected error occurred"
    [failed] = failures(caplog)
    assert (failed["error"], failed["configuration"]) == ("ConfigurationError", True)
    assert failed["reason"] == (
        "DB_POOL_SIZE is invalid (must be a whole number); example: DB_POOL_SIZE=1; "
        "BILLING_ENABLED is invalid (must be true or false)"
    )
    assert "four-ish" not in caplog.text and "enabled;" not in answer.text


def test_a_database_url_the_core_refuses_is_named_in_the_log_of_the_500(
    call: Caller, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    configure(
        monkeypatch,
        DATABASE_URL="postgresql://alex:AbC123dEf@ep-cool-darkness-a1b2c3d4.us-east-2.aws.neon.tech"
        "/neondb?sslmode=prefer",
    )
    caplog.set_level(logging.INFO, logger="keyflash")
    answer = call("me", "GET", "/api/me", user=USER)
    assert answer.status == 500
    [failed] = failures(caplog)
    assert (failed["error"], failed["configuration"]) == ("DatabaseUrlError", True)
    assert failed["reason"].startswith("DATABASE_URL uses sslmode=prefer for the remote host")
    assert "AbC123dEf" not in caplog.text + answer.text


def test_a_database_that_does_not_exist_makes_routes_unavailable(
    call: Caller,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    direct_database_url: str,
) -> None:
    configure(monkeypatch, DATABASE_URL=direct_database_url.rsplit("/", 1)[0] + "/kf_missing")
    caplog.set_level(logging.INFO, logger="keyflash")
    answer = call("me", "GET", "/api/me", user=USER)
    assert answer.status == 503, answer.text
    assert answer.headers["retry-after"] == "60"
    assert answer.json["message"].startswith("Service temporarily unavailable")
    [failed] = failures(caplog)
    assert failed["reason"] == "database_unavailable"
