"""Upstash replies that arrive too slowly or in the wrong shape, through the HTTP functions.

A real HTTP server (`tests.support.upstash_proxy`) stands between the app and the Upstash
emulator and, per command, trickles the reply one byte at a time (each read is quick, so only a
bound on the whole call ends it) or swaps the reply's `result` for a value of another type (what
a REST gateway that is not Upstash, or a bug, could send). What docs/cache-and-rate-limits.md and
docs/keyword-search.md promise, and these tests hold:

- every Upstash call ends within `REDIS_TIMEOUT_S` as a whole, with the failure's documented
  meaning: the limiter fails safe (closed: 429), a cache read is a logged miss, health reports
  Redis unhealthy; so no request nears the platform's limits;
- a reply of the wrong type is a failure like any other, never a 500: a cache miss, or the
  account budget's fail-safe (closed: 503 `provider_busy`).
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import respx
from httpx import Response as HttpxResponse

from devkit.upstash_emulator import UpstashEmulator
from shared import config, providers, redis
from tests.support.http import Caller, Keys, Result
from tests.support.upstash_proxy import Result as Reply
from tests.support.upstash_proxy import Trickle, UpstashProxy

pytestmark = pytest.mark.faults

REDIS_TIMEOUT_S = 1.0
# A quarter of the timeout between bytes, so no single read comes near it; the proxy pads each
# reply to at least 55 bytes, so a trickled reply takes 14 s or more to arrive, and then it is a
# good one. The outcomes below (refused, a logged miss, unhealthy) are reached only when the call
# ended at its timeout, so they prove the bound without timing anything on a shared machine.
TRICKLE = Trickle(0.25)
DATAFORSEO_URL = re.compile(r"https://api\.dataforseo\.com/.*")


@pytest.fixture
def database_url(direct_database_url: str, clean_tables: None) -> str:
    """One database lane is enough: Redis is what misbehaves here."""
    return direct_database_url


@pytest.fixture
def proxy(upstash: UpstashEmulator) -> Iterator[UpstashProxy]:
    with UpstashProxy(upstash.url) as running:
        yield running


def configure(monkeypatch: pytest.MonkeyPatch, **env: str) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    config.get_settings.cache_clear()
    redis.reset_redis()
    providers.reset_providers()


@pytest.fixture
def warm(api_env: Keys, proxy: UpstashProxy, monkeypatch: pytest.MonkeyPatch) -> Iterator[Caller]:
    """A container whose Upstash is the proxy: rate limits on (closed), mock provider data."""
    monkeypatch.delenv("KEYWORD_API_PROVIDER", raising=False)
    configure(
        monkeypatch,
        UPSTASH_REDIS_REST_URL=proxy.url,
        REDIS_TIMEOUT_S=str(REDIS_TIMEOUT_S),
        RATE_LIMIT_ENABLED="true",
        RATE_LIMIT_FAIL_SAFE="closed",
        MOCK_PROVIDER_SEED="7",
        DATAFORSEO_REQUESTS_PER_MINUTE="0",
    )
    yield Caller("lambda_v2", api_env)
    redis.reset_redis(close=True)  # the trickling calls' connections go with the client


def user() -> str:
    return f"user_{uuid.uuid4().hex[:8]}"


def search(call: Caller, who: str) -> Result:
    words = [f"espresso machine {uuid.uuid4().hex[:8]}"]
    body = {"keywords": words, "matchType": "phrase", "location": "US"}
    return call("keywords", "POST", "/api/keywords", user=who, json_body=body)


def counted(conn: psycopg.Connection[Any], who: str) -> int:
    row = conn.execute(
        'SELECT coalesce(sum("keywordSearchesThisMonth"), 0) FROM users WHERE id = %s', (who,)
    ).fetchone()
    assert row is not None
    return int(row[0])


# --- trickled replies: each call is bounded as a whole -----------------------------------------


def test_a_trickled_rate_limit_reply_refuses_within_the_redis_timeout(
    warm: Caller, proxy: UpstashProxy, admin_conn: psycopg.Connection[Any]
) -> None:
    """Fail closed means refused when Redis is slow, not allowed after 11 s (report s46 t1, F1)."""
    proxy.faults["EVAL"] = TRICKLE
    who = user()
    refused = search(warm, who)
    assert refused.status == 429, refused.text
    assert (refused.headers["retry-after"], refused.json["error"]) == ("60", "Rate Limit Exceeded")
    assert counted(admin_conn, who) == 0


def test_a_trickled_cache_read_is_a_logged_miss_within_the_redis_timeout(
    warm: Caller, proxy: UpstashProxy, caplog: pytest.LogCaptureFixture
) -> None:
    proxy.faults["GET"] = TRICKLE
    with caplog.at_level(logging.WARNING):
        answered = search(warm, user())
    assert answered.status == 200, answered.text
    assert (answered.json["cached"], answered.json["provider"]) == (False, "Mock")
    assert any("cache_read_failed" in record.message for record in caplog.records)


def test_a_trickled_health_check_reports_redis_unhealthy_within_the_redis_timeout(
    warm: Caller, proxy: UpstashProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Health said `healthy` after an 8 s PING (report s46 t1, F1); its check is a SET now."""
    configure(monkeypatch, RATE_LIMIT_ENABLED="false")
    proxy.faults["SET"] = TRICKLE
    health = warm("health", "GET", "/api/health")
    assert health.status == 207, health.text
    assert health.json["checks"]["redis"]["healthy"] is False


@pytest.mark.parametrize("fail_safe", ["open", "closed"])
def test_every_reply_trickled_stays_inside_the_platform_limits(
    warm: Caller, proxy: UpstashProxy, monkeypatch: pytest.MonkeyPatch, fail_safe: str
) -> None:
    """Health and keyword search ran into Lambda's 10 s and 20 s limits: a bare platform 500.
    Each call ended at its timeout, as the outcome shows (a good reply would have said healthy)."""
    configure(monkeypatch, RATE_LIMIT_FAIL_SAFE=fail_safe)
    proxy.faults["*"] = TRICKLE
    health = warm("health", "GET", "/api/health")
    answered = search(warm, user())
    if fail_safe == "open":
        assert (health.status, health.json["status"]) == (207, "degraded"), health.text
        assert (answered.status, answered.json["cacheHealthy"]) == (200, False), answered.text
    else:
        assert (health.status, answered.status) == (429, 429), (health.text, answered.text)


# --- replies of the wrong type: a failure like any other, never a 500 ---------------------------


@pytest.mark.parametrize(
    ("module", "path", "body"),
    [
        ("keywords", "/api/keywords", {"keywords": ["chemex"], "matchType": "phrase",
                                       "location": "US"}),
        ("keywords_related", "/api/keywords/related", {"keyword": "espresso", "limit": 5}),
        ("content_brief", "/api/content-brief", {"keyword": "espresso machine"}),
    ],
)  # fmt: skip
def test_a_cache_read_answering_an_integer_is_a_logged_miss(
    warm: Caller,
    proxy: UpstashProxy,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    module: str,
    path: str,
    body: dict[str, Any],
) -> None:
    configure(monkeypatch, RATE_LIMIT_ENABLED="false")
    proxy.faults["GET"] = Reply(42)
    with caplog.at_level(logging.WARNING):
        answered = warm(module, "POST", path, user=user(), json_body=body)
    assert answered.status == 200, answered.text
    assert answered.json["cached"] is False
    assert any("cache_read_failed" in record.message for record in caplog.records)


def now_ms(hours: float = 0) -> int:
    return int((time.time() + hours * 3600) * 1000)


# Not a count and an end within the hour after now, as the script answers: strings (what
# "eA==", "eQ==" are, base64), booleans (JSON's true is no count), counts below one, an end
# already past or past year 9999 (a 500 OverflowError on every limited route, report s52 t4 D1).
@pytest.mark.parametrize(
    "reply",
    [
        ["eA==", "eQ=="],
        [True, "end"],
        [False, "end"],
        [-5, "end"],
        [0, "end"],
        [1, 1000],
        [1, 10**15],
        [1, "end+1h"],
    ],
)
def test_a_rate_limit_reply_that_is_no_window_fails_safe(
    warm: Caller, proxy: UpstashProxy, admin_conn: psycopg.Connection[Any], reply: list[Any]
) -> None:
    """docs/cache-and-rate-limits.md: a reply that is not a count and this window's end is a
    failure; closed refuses with Retry-After 60 (booleans and negative counts were allowed, with
    Remaining above the limit: report s52 t4 D2)."""
    ends = {"end": now_ms(0.5), "end+1h": now_ms(1.5)}
    proxy.faults["EVAL"] = Reply([ends.get(part, part) for part in reply])
    who = user()
    refused = search(warm, who)
    assert (refused.status, refused.headers.get("retry-after")) == (429, "60"), refused.text
    assert counted(admin_conn, who) == 0
    health = warm("health", "GET", "/api/health")
    assert (health.status, health.headers.get("retry-after")) == (429, "60"), health.text


# Results as Upstash sends them with `Upstash-Encoding: base64`: "eA==", "eQ==" are "x", "y".
# JSON's true is no 1: it spent the budget's request unmetered under fail-closed.
@pytest.mark.parametrize(
    "reply", [["eA==", "eQ=="], [None, None], [[1], [2]], 5, None, [True, 0], [1, False]]
)
def test_an_account_budget_reply_of_the_wrong_type_fails_safe(
    warm: Caller,
    proxy: UpstashProxy,
    monkeypatch: pytest.MonkeyPatch,
    admin_conn: psycopg.Connection[Any],
    reply: Any,
) -> None:
    """docs/keyword-search.md: Redis failing, closed answers 503 `provider_busy`; DataForSEO is
    not called and the keywords are given back."""
    configure(
        monkeypatch,
        RATE_LIMIT_ENABLED="false",
        KEYWORD_API_PROVIDER="dataforseo",
        DATAFORSEO_API_LOGIN="login",
        DATAFORSEO_API_PASSWORD="secret-password",
        DATAFORSEO_REQUESTS_PER_MINUTE="12",
    )
    proxy.faults["EVAL"] = Reply(reply)
    who = user()
    with respx.mock(assert_all_called=False) as mock:
        mock.route(host__regex=r"^(127\.0\.0\.1|localhost)$").pass_through()
        upstream = mock.post(url__regex=DATAFORSEO_URL).mock(return_value=HttpxResponse(500))
        refused = search(warm, who)
    assert refused.status == 503, refused.text
    assert (refused.json["reason"], refused.headers["retry-after"]) == ("provider_busy", "60")
    assert upstream.call_count == 0
    assert counted(admin_conn, who) == 0
