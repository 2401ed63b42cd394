"""GET /api/health (docs/original-app.md#health-report plus the database check), rate limited at
60/h per client."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from devkit import platform_limits
from functions import health
from shared import config, db, providers, redis
from tests.support.http import Caller, Keys, fresh_ip

# Only a guard: how long the pool's holder keeps its connection at most.
POOL_HOLD_GUARD_S = 30.0


@pytest.fixture(autouse=True)
def fresh_health_cache() -> None:
    health._last_database_check = None


def test_everything_up_is_healthy(call: Caller) -> None:
    result = call("health", "GET", "/api/health")
    assert result.status == 200, result.text
    body = result.json
    assert body["status"] == "healthy"
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", body["timestamp"])
    assert (body["version"], body["environment"]) == ("1.0.0", "test")
    checks = body["checks"]
    assert checks["database"]["healthy"] is True and isinstance(
        checks["database"]["responseTime"], int
    )
    assert checks["redis"] == {
        "healthy": True,
        "responseTime": checks["redis"]["responseTime"],
        "details": {"configured": True, "responsive": True},
    }
    assert checks["provider"]["details"]["name"] == "Mock"
    assert result.headers["cache-control"] == "no-store, no-cache"
    assert result.headers["api-version"] == "v1"


def test_redis_is_configured_by_the_names_vercels_upstash_integration_writes(
    call: Caller, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Vercel project wired to Upstash through the marketplace has KV_REST_API_URL and
    KV_REST_API_TOKEN only; health said "Redis not configured" and the cache was off."""
    for name in ("URL", "TOKEN"):
        monkeypatch.setenv(f"KV_REST_API_{name}", os.environ[f"UPSTASH_REDIS_REST_{name}"])
        monkeypatch.delenv(f"UPSTASH_REDIS_REST_{name}")
    config.get_settings.cache_clear()
    redis.reset_redis()
    result = call("health", "GET", "/api/health")
    assert (result.status, result.json["status"]) == (200, "healthy"), result.text
    assert result.json["checks"]["redis"]["details"] == {"configured": True, "responsive": True}


def test_database_check_is_reused_within_max_age_unless_deep(call: Caller) -> None:
    first = call("health", "GET", "/api/health").json["checks"]["database"]
    second = call("health", "GET", "/api/health").json["checks"]["database"]
    assert "cached" not in first and second["cached"] is True
    assert second["checkedAt"] == first["checkedAt"]
    deep = call("health", "GET", "/api/health", query={"deep": "true"}).json["checks"]["database"]
    assert "cached" not in deep


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_one_failing_check_is_degraded_207(call: Caller, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UPSTASH_REDIS_REST_URL", f"http://127.0.0.1:{_closed_port()}")
    config.get_settings.cache_clear()
    redis.reset_redis()
    result = call("health", "GET", "/api/health")
    assert (result.status, result.json["status"]) == (207, "degraded")
    assert result.json["checks"]["redis"]["error"] == "Redis ping failed - no PONG response"


def test_the_redis_check_is_one_write_that_expires(call: Caller) -> None:
    """A write, not PING: a Redis that answers PING and refuses writes (maxmemory under
    `noeviction`) fails the limiter and the cache, so health must see it (report s55t2,
    finding 3; tests/faults/test_cache_faults.py). Its key is left to expire, never kept."""
    client = redis.get_redis()
    assert client is not None
    client.delete(redis.PROBE_KEY)
    assert call("health", "GET", "/api/health").json["checks"]["redis"]["healthy"] is True
    assert 0 < client.pttl(redis.PROBE_KEY) <= redis.PROBE_TTL_MS


def test_a_wrong_token_is_still_no_pong_not_a_refused_write(
    call: Caller, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only Redis's refusals to write say so; any other error answer is the original's no PONG."""
    monkeypatch.setenv("UPSTASH_REDIS_REST_TOKEN", "wrong-token")
    config.get_settings.cache_clear()
    redis.reset_redis()
    result = call("health", "GET", "/api/health")
    assert (result.status, result.json["status"]) == (207, "degraded"), result.text
    assert result.json["checks"]["redis"] == {
        "healthy": False,
        "responseTime": result.json["checks"]["redis"]["responseTime"],
        "error": "Redis ping failed - no PONG response",
        "details": {"configured": True},
    }


def test_privacy_mode_reports_redis_healthy_without_pinging(
    call: Caller, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PRIVACY_MODE", "true")
    monkeypatch.setenv("UPSTASH_REDIS_REST_URL", f"http://127.0.0.1:{_closed_port()}")
    config.get_settings.cache_clear()
    redis.reset_redis()
    check: dict[str, Any] = call("health", "GET", "/api/health").json["checks"]["redis"]
    assert check["healthy"] is True and check["details"]["privacyMode"] is True


def test_nothing_reachable_is_unhealthy_503(call: Caller, monkeypatch: pytest.MonkeyPatch) -> None:
    port = _closed_port()
    monkeypatch.setenv("DATABASE_URL", f"postgresql://app:pw@127.0.0.1:{port}/x")
    monkeypatch.setenv("DB_RETRY_BUDGET_S", "0.2")
    monkeypatch.setenv("UPSTASH_REDIS_REST_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("KEYWORD_API_PROVIDER", "nonsense")
    config.get_settings.cache_clear()
    db.dispose_engine()
    redis.reset_redis()
    result = call("health", "GET", "/api/health")
    assert (result.status, result.json["status"]) == (503, "unhealthy")
    assert result.json["checks"]["database"]["error"] == "Database unreachable"
    assert "pw@" not in result.text


def test_the_database_check_leaves_health_time_to_answer_on_every_platform() -> None:
    """The check's budget, plus the one connect attempt that may outlast it (psycopg's least
    timeout) and the Redis calls health makes (rate limit, ping, the provider's rejection
    mark: REDIS_TIMEOUT_S each at its default), ends a second before the platform's timeout."""
    redis_s = config.Settings.__dataclass_fields__["redis_timeout_s"].default
    worst = health.DATABASE_BUDGET_S + db.CONNECT_TIMEOUT_LEAST_S + 3 * redis_s
    for platform in ("lambda", "vercel"):
        assert worst + 1 <= platform_limits.configured_timeout_s("functions.health", platform)


def test_a_database_that_never_answers_still_gets_health_an_answer_with_default_settings(
    api_env: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host that accepts TCP and never answers (a hung compute, a firewall dropping packets
    after the handshake), with DB_CONNECT_TIMEOUT_S and DB_RETRY_BUDGET_S at their defaults:
    health answers within its Lambda timeout (serverless.yml), not the platform's 500."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)  # the kernel completes handshakes; nothing ever reads or answers
        port = silent.getsockname()[1]
        monkeypatch.setenv("DATABASE_URL", f"postgresql://app:pw@127.0.0.1:{port}/keyflash")
        for name in ("DB_CONNECT_TIMEOUT_S", "DB_RETRY_BUDGET_S"):
            monkeypatch.delenv(name, raising=False)
        config.get_settings.cache_clear()
        db.dispose_engine()
        result = Caller("lambda_v2", api_env)("health", "GET", "/api/health")
    assert result.status == 207, result.text  # not the platform's 500 after its timeout
    assert result.json["status"] == "degraded"
    assert result.json["checks"]["database"]["error"] == "Database unreachable"


def test_the_database_check_waits_for_a_pooled_connection_no_longer_than_its_budget(
    api_env: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every pooled connection checked out by other requests (a shared dev process, a Fluid
    instance with more requests in flight than DB_POOL_SIZE): the check's budget bounds its wait
    for one too, so health reports the database unhealthy rather than wait out the pool's own
    timeout (DB_RETRY_BUDGET_S, here far longer than the test waits). The holder keeps its real
    connection until the check has answered (or the test gave up on it): a check that waited for
    the pool would get the connection then, and report the database healthy."""
    monkeypatch.setenv("DB_POOL_SIZE", "1")
    monkeypatch.setenv("DB_RETRY_BUDGET_S", "120")
    config.get_settings.cache_clear()
    db.dispose_engine()
    held, answered = threading.Event(), threading.Event()

    def hold() -> None:
        with db.get_engine().connect() as connection:
            connection.exec_driver_sql("SELECT 1")
            held.set()
            answered.wait(POOL_HOLD_GUARD_S)

    holder = threading.Thread(target=hold, name="pool-holder")
    holder.start()
    try:
        assert held.wait(POOL_HOLD_GUARD_S), "the holder never got its connection"
        check = health.database_check(deep=True)
    finally:
        answered.set()
        holder.join()
    assert check["healthy"] is False, check
    assert check["error"] == db.UNREACHABLE


def test_a_database_that_refuses_the_connection_is_reported_as_refused(
    call: Caller, monkeypatch: pytest.MonkeyPatch, direct_database_url: str
) -> None:
    missing = direct_database_url.rsplit("/", 1)[0] + "/kf_missing"
    monkeypatch.setenv("DATABASE_URL", missing)
    config.get_settings.cache_clear()
    db.dispose_engine()
    result = call("health", "GET", "/api/health")
    assert (result.status, result.json["status"]) == (207, "degraded")
    assert result.json["checks"]["database"]["error"] == (
        "Database refused the connection - check DATABASE_URL (see the log)"
    )
    assert "kf_missing" not in result.text


@pytest.mark.parametrize(
    ("url", "named"),
    [
        (  # Neon's SNI workaround, through the pooler: a startup parameter PgBouncer refuses
            "postgresql://alex:AbC123dEf@ep-cool-darkness-a1b2c3d4-pooler.us-east-2.aws.neon.tech"
            "/neondb?sslmode=require&options=endpoint%3Dep-cool-darkness-a1b2c3d4",
            "options",
        ),
        (
            "postgresql://alex:AbC123dEf@ep-cool-darkness-a1b2c3d4.us-east-2.aws.neon.tech"
            "/neondb?sslmode=disable",
            "sslmode=disable",
        ),
    ],
)
def test_a_database_url_refused_by_design_is_an_unhealthy_check_and_logged(
    call: Caller,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    url: str,
    named: str,
) -> None:
    """Health stays in its contract (a failing check, not a 500), and the log says what was
    refused, never the password."""
    monkeypatch.setenv("DATABASE_URL", url)
    config.get_settings.cache_clear()
    db.dispose_engine()
    caplog.set_level(logging.INFO, logger="keyflash")
    result = call("health", "GET", "/api/health")
    assert (result.status, result.json["status"]) == (207, "degraded"), result.text
    assert result.json["checks"]["database"]["error"] == (
        "Database not properly configured - DATABASE_URL breaks a rule (see the log)"
    )
    [refused] = [
        event
        for event in (json.loads(r.getMessage()) for r in caplog.records if r.name == "keyflash")
        if event["event"] == "db_url_refused"
    ]
    assert refused["reason"].startswith("DATABASE_URL ") and named in refused["reason"]
    assert "AbC123dEf" not in caplog.text + result.text


def test_rate_limit_60_per_hour_then_429_with_headers(
    call: Caller, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RATE_LIMIT_ENABLED", "true")
    config.get_settings.cache_clear()
    monitor = fresh_ip()
    resets = set()
    for expected_remaining in (59, 58):
        ok = call("health", "GET", "/api/health", source_ip=monitor)
        assert ok.status == 200
        assert ok.headers["x-ratelimit-limit"] == "60"
        assert ok.headers["x-ratelimit-remaining"] == str(expected_remaining)
        resets.add(ok.headers["x-ratelimit-reset"])
    assert len(resets) == 1  # one window, one end
    for _ in range(58):
        call("health", "GET", "/api/health", source_ip=monitor)
    refused = call("health", "GET", "/api/health", source_ip=monitor)
    assert refused.status == 429
    assert refused.json["error"] == "Rate Limit Exceeded"
    assert refused.json["message"].startswith("Rate limit exceeded. Try again in ")
    assert int(refused.headers["retry-after"]) > 3500
    assert refused.headers["x-ratelimit-remaining"] == "0"
    another = call("health", "GET", "/api/health", source_ip=fresh_ip())
    assert another.status == 200  # another client has its own budget


# --- the provider check runs the provider's own configuration check -------------------------


def configure_provider(monkeypatch: pytest.MonkeyPatch, name: str, **env: str) -> None:
    monkeypatch.setenv("KEYWORD_API_PROVIDER", name)
    for variable in ("DATAFORSEO_API_LOGIN", "DATAFORSEO_API_PASSWORD"):
        monkeypatch.delenv(variable, raising=False)
    for variable, value in env.items():
        monkeypatch.setenv(variable, value)
    config.get_settings.cache_clear()
    providers.reset_providers()


@pytest.fixture(autouse=True)
def fresh_providers() -> Iterator[None]:
    providers.reset_providers()
    yield
    providers.reset_providers()


def test_dataforseo_without_credentials_is_unhealthy_with_the_configuration_error(
    call: Caller, monkeypatch: pytest.MonkeyPatch
) -> None:
    configure_provider(monkeypatch, "dataforseo", DATAFORSEO_API_LOGIN="login")
    result = call("health", "GET", "/api/health")
    assert (result.status, result.json["status"]) == (207, "degraded")
    assert result.json["checks"]["provider"] == {
        "healthy": False,
        "error": "Provider not properly configured - missing required environment variables",
        "details": {
            "provider": "dataforseo",
            "name": "DataForSEO",
            "configError": "DataForSEO provider missing configuration: DATAFORSEO_API_PASSWORD. "
            "Please set these environment variables.",
        },
    }


def test_an_unknown_provider_is_unhealthy_never_mock(
    call: Caller, monkeypatch: pytest.MonkeyPatch
) -> None:
    configure_provider(monkeypatch, "bing")
    provider = call("health", "GET", "/api/health").json["checks"]["provider"]
    assert provider["healthy"] is False
    assert provider["details"].get("name") is None
    assert provider["details"]["configError"] == (
        "KEYWORD_API_PROVIDER='bing' is not supported; use one of mock, dataforseo, google-ads"
    )


def test_configured_dataforseo_is_healthy_and_shows_its_breaker(
    call: Caller, monkeypatch: pytest.MonkeyPatch
) -> None:
    configure_provider(
        monkeypatch, "dataforseo", DATAFORSEO_API_LOGIN="login", DATAFORSEO_API_PASSWORD="pw"
    )
    client = redis.get_redis()
    assert client is not None
    client.delete("provider-rejected:dataforseo")  # another test's rejected account
    provider = call("health", "GET", "/api/health").json["checks"]["provider"]
    assert provider == {
        "healthy": True,
        "details": {
            "provider": "dataforseo",
            "name": "DataForSEO",
            "circuitBreaker": {"healthy": True, "state": "CLOSED", "failures": 0, "successes": 0},
        },
    }
