"""A deployment configured wrongly, as deployed functions (Lambda handler, ASGI app) answer it.

A database that refuses the connection (a wrong password, a database that does not exist)
makes the function unavailable: 503 with `Retry-After`.
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
