"""Upstash down or slow, end to end through the HTTP functions (issue 10).

Redis here is a real process: the Upstash REST emulator (over a private redis-server when one is
installed), started per test so it can fail in two real ways:

- `down`: SIGKILLed, so its port refuses connections;
- `frozen`: SIGSTOPped, so the kernel still accepts connections and nothing ever answers: a
  Redis slower than any timeout.

Requests go through the functions' Lambda handlers in this process, a warm container whose
cached Upstash client is never reset: after the fault is repaired (restart on the same port, or
SIGCONT) and the Upstash breaker's pause is over (its clock moved, not waited for), the same
client must be working again. What docs/cache-and-rate-limits.md
promises, and what these tests hold:

- the cache never fails a request: a keyword search during the outage is answered from the
  provider (`cached: false`, `cacheHealthy: false`), with the right data, counted once;
- rate limiting follows `RATE_LIMIT_FAIL_SAFE`: `open` allows, `closed` refuses with 429
  `Rate Limit Exceeded` and `Retry-After: 60`;
- every Redis call is bounded by `REDIS_TIMEOUT_S`, so no request takes longer than its Redis
  calls' timeouts plus a generous margin (a functional bound: without the timeout, a frozen
  Redis would hold the request until the function's own limit);
- health reports Redis down as `degraded` (207) when its own rate limit may fail open; with the
  default `closed`, that limit refuses first (429), as the original did
  (docs/original-app.md#get-apihealth).
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from redis import Redis as RedisServer

from devkit._host import wait_for
from shared import config, providers, redis
from tests.support.breaker_clock import BreakerClock
from tests.support.cron import count
from tests.support.http import Caller, Keys, Result
from tests.support.processes import UpstashProcess, private_upstash

pytestmark = pytest.mark.faults

REDIS_TIMEOUT_S = 0.5
MARGIN_S = 5.0  # database, JSON, a busy 2-core machine: generous on purpose
KEYWORD_REDIS_CALLS = 3  # rate limit EVAL, cache GET, cache SET
HEALTH_REDIS_CALLS = 2  # rate limit EVAL, the check's SET
RATE_LIMIT = 10  # RATE_LIMIT_REQUESTS_PER_HOUR's default
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
FAULTS = ["down", "frozen"]


def budget(redis_calls: int) -> float:
    """The longest a request may take when each of its Redis calls times out."""
    return redis_calls * REDIS_TIMEOUT_S + MARGIN_S


@pytest.fixture
def database_url(direct_database_url: str, clean_tables: None) -> str:
    """One database lane is enough: Redis is what fails here."""
    return direct_database_url


@pytest.fixture
def upstash_process(tmp_path: Path) -> Iterator[UpstashProcess]:
    """This test's own emulator process, over a private redis-server when installed (so its
    data outlives a restart, as Upstash's does)."""
    with private_upstash(tmp_path) as upstash:
        yield upstash


@pytest.fixture
def warm(
    api_env: Keys,
    upstash_process: UpstashProcess,
    breaker_clock: BreakerClock,
    monkeypatch: pytest.MonkeyPatch,
) -> Caller:
    """A warm container on that emulator: rate limits on, deterministic mock data."""
    monkeypatch.setenv("UPSTASH_REDIS_REST_URL", upstash_process.url)
    monkeypatch.setenv("UPSTASH_REDIS_REST_TOKEN", upstash_process.token)
    monkeypatch.setenv("REDIS_TIMEOUT_S", str(REDIS_TIMEOUT_S))
    monkeypatch.setenv("RATE_LIMIT_ENABLED", "true")
    monkeypatch.setenv("MOCK_PROVIDER_SEED", "7")
    config.get_settings.cache_clear()
    redis.reset_redis()
    providers.reset_providers()
    return Caller("lambda_v2", api_env)


def fail_safe(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    monkeypatch.setenv("RATE_LIMIT_FAIL_SAFE", mode)
    config.get_settings.cache_clear()  # the Upstash client itself stays cached


def inject(upstash: UpstashProcess, fault: str) -> None:
    if fault == "down":
        upstash.kill()
    else:
        upstash.freeze()
    assert not upstash.answers()


def repair(upstash: UpstashProcess, fault: str, clock: BreakerClock) -> None:
    if fault == "down":
        upstash.start()  # same port, same token: the container's settings still hold
    else:
        upstash.thaw()
    assert wait_for(upstash.answers, timeout=30)
    clock.end_pause()  # three failed calls in a row opened the Upstash breaker


def timed(request: Callable[[], Result]) -> tuple[Result, float]:
    started = time.monotonic()
    result = request()
    return result, time.monotonic() - started


def keywords() -> list[str]:
    tag = uuid.uuid4().hex[:8]
    return [f"espresso machine {tag}", f"burr grinder {tag}"]


def search(call: Caller, user: str, words: list[str]) -> Result:
    body = {"keywords": words, "matchType": "phrase", "location": "US"}
    return call("keywords", "POST", "/api/keywords", user=user, json_body=body)


def usage(conn: psycopg.Connection[Any], user: str) -> tuple[int, int, int, int]:
    """(monthly counter, history rows, of which cache hits, api_usage rows) of `user`."""
    row = conn.execute(
        """SELECT (SELECT "keywordSearchesThisMonth" FROM users WHERE id = %(u)s),
                  (SELECT count(*) FROM search_history WHERE "userId" = %(u)s),
                  (SELECT count(*) FROM search_history WHERE "userId" = %(u)s AND "cacheHit"),
                  (SELECT count(*) FROM api_usage WHERE "userId" = %(u)s)""",
        {"u": user},
    ).fetchone()
    assert row is not None
    return (row[0] or 0, row[1], row[2], row[3])


# --- the outage, fail-open and fail-closed --------------------------------------------------------


def assert_health_reports_redis_down(result: Result) -> None:
    """`degraded` (207): the redis check fails (the searches' failures opened the Upstash
    breaker, so the check's SET is not sent), the database and provider checks pass."""
    assert result.status == 207, result.text
    body = result.json
    assert body["status"] == "degraded"
    checks = body["checks"]
    assert checks["redis"] == {
        "healthy": False,
        "responseTime": 0,
        "error": "Redis ping not sent: its circuit breaker is open after failed calls",
        "details": {"configured": True, "circuitOpen": True},
    }
    assert checks["database"]["healthy"] and checks["provider"]["healthy"]


def assert_everything_works_again(call: Caller, user: str, client: Any) -> tuple[int, int]:
    """After the repair: the cache is written and read, limits are counted, health is green,
    all through the container's original Upstash client. Returns the two limits remaining."""
    words = keywords()
    miss = search(call, user, words)
    assert (miss.status, miss.json["cached"], miss.json["cacheHealthy"]) == (200, False, True)
    hit = search(call, user, words)
    assert (hit.status, hit.json["cached"]) == (200, True)
    assert hit.json["data"] == miss.json["data"]
    health = call("health", "GET", "/api/health")
    assert (health.status, health.json["checks"]["redis"]["healthy"]) == (200, True)
    assert redis.get_redis() is client  # the same warm client, never rebuilt
    first, second = (int(r.headers["x-ratelimit-remaining"]) for r in (miss, hit))
    assert RATE_LIMIT > first > second  # counted in Redis again
    return first, second


@pytest.mark.parametrize("fault", FAULTS)
def test_fail_open_outage_answers_from_the_provider_then_uses_the_cache_again(
    warm: Caller,
    upstash_process: UpstashProcess,
    admin_conn: psycopg.Connection[Any],
    breaker_clock: BreakerClock,
    monkeypatch: pytest.MonkeyPatch,
    fault: str,
) -> None:
    """RATE_LIMIT_FAIL_SAFE=open: the outage costs the cache, never the answer; health says
    `degraded` rather than failing."""
    fail_safe(monkeypatch, "open")
    user, words = f"user_{uuid.uuid4().hex[:8]}", keywords()
    first = search(warm, user, words)
    assert (first.status, first.json["cached"], first.json["cacheHealthy"]) == (200, False, True)
    assert first.headers["x-ratelimit-remaining"] == str(RATE_LIMIT - 1)
    client = redis.get_redis()

    inject(upstash_process, fault)
    durations = []
    for n in (1, 2):
        # The same keywords: cached in Redis, yet unreachable; the provider answers.
        result, took = timed(lambda: search(warm, user, words))
        durations.append(took)
        assert result.status == 200, result.text
        body = result.json
        assert (body["cached"], body["cacheHealthy"], body["provider"]) == (False, False, "Mock")
        assert body["data"] == first.json["data"]  # the seeded provider's rows, in order
        assert TIMESTAMP.match(body["timestamp"])
        # Failed open: not counted, so no count and no window end are claimed.
        assert result.headers["x-ratelimit-limit"] == str(RATE_LIMIT)
        assert "x-ratelimit-remaining" not in result.headers
        assert "x-ratelimit-reset" not in result.headers
        assert took <= budget(KEYWORD_REDIS_CALLS), f"{fault}: {took:.2f}s"
        # Counted once per request: 2 keywords, one history row, one usage row.
        assert usage(admin_conn, user) == (2 * (n + 1), n + 1, 0, n + 1)
    health, health_took = timed(lambda: warm("health", "GET", "/api/health"))
    assert_health_reports_redis_down(health)
    assert health_took <= budget(HEALTH_REDIS_CALLS), f"{fault}: {health_took:.2f}s"

    repair(upstash_process, fault, breaker_clock)
    assert_everything_works_again(warm, user, client)
    assert usage(admin_conn, user) == (10, 5, 1, 5)  # cache hits count usage too
    print(
        f"{fault}/open: keywords 200 in {[round(d, 2) for d in durations]} s, "
        f"health 207 in {health_took:.2f} s (budgets {budget(KEYWORD_REDIS_CALLS)}, "
        f"{budget(HEALTH_REDIS_CALLS)} s)"
    )


@pytest.mark.parametrize("fault", FAULTS)
def test_fail_closed_outage_refuses_with_429_within_the_timeout_then_recovers(
    warm: Caller,
    upstash_process: UpstashProcess,
    admin_conn: psycopg.Connection[Any],
    breaker_clock: BreakerClock,
    monkeypatch: pytest.MonkeyPatch,
    fault: str,
) -> None:
    """RATE_LIMIT_FAIL_SAFE=closed (the default): refused before anything is counted. Health's
    own limit refuses too (docs/original-app.md#get-apihealth: the original's contract), so it
    cannot say `degraded`."""
    fail_safe(monkeypatch, "closed")
    user, words = f"user_{uuid.uuid4().hex[:8]}", keywords()
    assert search(warm, user, words).status == 200
    client = redis.get_redis()
    inject(upstash_process, fault)

    refused, took = timed(lambda: search(warm, user, words))
    assert refused.status == 429, refused.text
    body = refused.json
    assert {k: body[k] for k in ("error", "message", "statusCode")} == {
        "error": "Rate Limit Exceeded",
        "message": f"Rate limit exceeded. Try again in 60 seconds. Limit: {RATE_LIMIT} "
        "requests/hour.",
        "statusCode": 429,
    }
    assert TIMESTAMP.match(body["timestamp"])
    assert (refused.headers["retry-after"], refused.headers["x-ratelimit-remaining"]) == ("60", "0")
    assert took <= budget(1), f"{fault}: {took:.2f}s"
    # The refused request reserved nothing and wrote no history: only its own usage row.
    assert usage(admin_conn, user) == (2, 1, 0, 2)
    assert count(admin_conn, 'SELECT count(*) FROM api_usage WHERE "statusCode" = 429') == 1
    health, health_took = timed(lambda: warm("health", "GET", "/api/health"))
    assert (health.status, health.json["error"]) == (429, "Rate Limit Exceeded")
    assert health.headers["retry-after"] == "60"
    assert health_took <= budget(1), f"{fault}: {health_took:.2f}s"

    repair(upstash_process, fault, breaker_clock)
    assert_everything_works_again(warm, user, client)
    assert usage(admin_conn, user) == (6, 3, 1, 4)
    print(f"{fault}/closed: keywords 429 in {took:.2f} s, health 429 in {health_took:.2f} s")


# --- Redis that answers and refuses every write -----------------------------------------------


@pytest.mark.parametrize("mode", ["open", "closed"])
def test_redis_refusing_writes_is_reported_as_an_outage_then_healthy_again(
    warm: Caller, upstash_process: UpstashProcess, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    """maxmemory reached under `noeviction`: Redis still answers PING and reads but refuses every
    write, so each limiter call fails (under `open` nothing is counted) and no cache entry is
    written. Health said `healthy` (report s55t2, finding 3); it is an outage for the limiter,
    reported as the docs say: `degraded` under `open`, the limiter's own 429 under `closed`."""
    if upstash_process.redis_url is None:
        pytest.skip("redis-server is not installed: the emulator's own store has no maxmemory")
    fail_safe(monkeypatch, mode)
    with RedisServer.from_url(upstash_process.redis_url) as backing:
        backing.config_set("maxmemory-policy", "noeviction")
        backing.config_set("maxmemory", 1)  # whatever Redis holds is past it
        try:
            assert backing.ping() is True
            searched = search(warm, f"user_{uuid.uuid4().hex[:8]}", keywords())
            health = warm("health", "GET", "/api/health")
        finally:
            backing.config_set("maxmemory", 0)
    if mode == "open":
        assert searched.status == 200, searched.text
        assert "x-ratelimit-remaining" not in searched.headers  # not counted: no window told
        assert (health.status, health.json["status"]) == (207, "degraded"), health.text
        assert health.json["checks"]["redis"] == {
            "healthy": False,
            "responseTime": health.json["checks"]["redis"]["responseTime"],
            "error": "Redis refuses writes - the check's write was rejected",
            "details": {"configured": True, "writable": False},
        }
        assert health.json["checks"]["database"]["healthy"] is True
    else:
        assert searched.status == 429, searched.text
        assert (health.status, health.json["error"]) == (429, "Rate Limit Exceeded"), health.text
    again = warm("health", "GET", "/api/health")
    assert (again.status, again.json["status"]) == (200, "healthy"), again.text
    assert again.json["checks"]["redis"]["details"] == {"configured": True, "responsive": True}
