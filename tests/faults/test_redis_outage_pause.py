"""After an Upstash call fails, the container leaves Redis alone for a pause (report s49 t2, F1).

Each Upstash call may wait `REDIS_TIMEOUT_S` holding a thread; where one instance serves many
requests at once, a burst during an outage queued behind those waits (300 searches took up to
8 s to get their 429, and a route without Redis 6.7 s). docs/cache-and-rate-limits.md promises
that after one failed call none is sent for `PAUSE_S`: requests get the outage's documented
answer at once (closed: 429 with `Retry-After: 60`; open: allowed, the cache a miss), the
outage is logged once, and after the pause one call at a time tries Redis again.

Redis is real: the Upstash emulator process over a private redis-server, killed (the gateway in
front answers 502) or frozen (SIGSTOP: nothing answers). Between the app and the emulator a real
HTTP proxy (`tests.support.upstash_proxy`) counts the requests that reach it; the pause's clock
is moved by the test instead of waited for.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from devkit._host import wait_for
from shared import config, providers, ratelimit, redis, redis_outage
from tests.support.http import Caller, Keys, Result, logged
from tests.support.outage import OutageClock
from tests.support.processes import UpstashProcess, private_upstash
from tests.support.upstash_proxy import UpstashProxy

pytestmark = pytest.mark.faults

REDIS_TIMEOUT_S = 2.0  # a busy machine's healthy call must never end as a failure
RATE_LIMIT = 10  # RATE_LIMIT_REQUESTS_PER_HOUR's default
LATER = 5  # requests during the pause, none of which may reach Redis


@pytest.fixture
def database_url(direct_database_url: str, clean_tables: None) -> str:
    """One database lane is enough: Redis is what fails here."""
    return direct_database_url


@pytest.fixture
def upstash_process(tmp_path: Path) -> Iterator[UpstashProcess]:
    with private_upstash(tmp_path) as upstash:
        yield upstash


@pytest.fixture
def proxy(upstash_process: UpstashProcess) -> Iterator[UpstashProxy]:
    with UpstashProxy(upstash_process.url) as running:
        yield running


@pytest.fixture
def warm(
    api_env: Keys,
    upstash_process: UpstashProcess,
    proxy: UpstashProxy,
    outage_clock: OutageClock,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Caller]:
    """A warm container whose Upstash is the counting proxy: rate limits on, mock data."""
    monkeypatch.setenv("UPSTASH_REDIS_REST_URL", proxy.url)
    monkeypatch.setenv("UPSTASH_REDIS_REST_TOKEN", upstash_process.token)
    monkeypatch.setenv("REDIS_TIMEOUT_S", str(REDIS_TIMEOUT_S))
    monkeypatch.setenv("RATE_LIMIT_ENABLED", "true")
    monkeypatch.setenv("MOCK_PROVIDER_SEED", "7")
    config.get_settings.cache_clear()
    redis.reset_redis()
    providers.reset_providers()
    yield Caller("lambda_v2", api_env)
    redis.reset_redis(close=True)  # calls left waiting on a frozen emulator go with the client


def inject(upstash: UpstashProcess, fault: str) -> None:
    if fault == "down":
        upstash.kill()
    else:
        upstash.freeze()
    assert not upstash.answers()


def repair(upstash: UpstashProcess, fault: str) -> None:
    if fault == "down":
        upstash.start()
    else:
        upstash.thaw()
    assert wait_for(upstash.answers, timeout=30)


def search(call: Caller, who: str) -> Result:
    body = {"keywords": [f"espresso machine {uuid.uuid4().hex[:8]}"], "matchType": "phrase"}
    return call("keywords", "POST", "/api/keywords", user=who, json_body=body)


def assert_outage_answer(result: Result, fail_safe: str) -> None:
    """The documented answer during an outage: closed refuses, open answers from the provider."""
    if fail_safe == "closed":
        assert result.status == 429, result.text
        assert (result.json["error"], result.headers["retry-after"]) == (
            "Rate Limit Exceeded",
            "60",
        )
    else:
        assert result.status == 200, result.text
        assert (result.json["cached"], result.json["cacheHealthy"]) == (False, False)
        assert result.headers["x-ratelimit-remaining"] == str(RATE_LIMIT)


@pytest.mark.parametrize("fail_safe", ["closed", "open"])
@pytest.mark.parametrize("fault", ["down", "frozen"])
def test_after_a_failed_call_no_request_reaches_redis_until_the_pause_ends(
    warm: Caller,
    upstash_process: UpstashProcess,
    proxy: UpstashProxy,
    outage_clock: OutageClock,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    fault: str,
    fail_safe: str,
) -> None:
    monkeypatch.setenv("RATE_LIMIT_FAIL_SAFE", fail_safe)
    config.get_settings.cache_clear()
    who = f"user_{uuid.uuid4().hex[:8]}"
    assert search(warm, who).status == 200  # counted: 1 of the window
    inject(upstash_process, fault)
    sent = proxy.received

    with caplog.at_level(logging.INFO, logger="keyflash"):
        assert_outage_answer(search(warm, who), fail_safe)
        assert proxy.received == sent + 1  # the limiter's EVAL failed: nothing more was sent
        for _ in range(LATER):
            assert_outage_answer(search(warm, who), fail_safe)
        health = warm("health", "GET", "/api/health")
        assert health.status == (429 if fail_safe == "closed" else 207), health.text
        assert proxy.received == sent + 1
        assert len(logged(caplog, "redis_unavailable")) == 1
        assert len(logged(caplog, "rate_limit_unavailable")) == 1  # the failed call's only
        assert logged(caplog, "cache_read_failed") == logged(caplog, "cache_write_failed") == []

        repair(upstash_process, fault)
        outage_clock.now += redis_outage.PAUSE_S - 0.1  # repaired, but the pause is not over
        assert_outage_answer(search(warm, who), fail_safe)
        assert proxy.received == sent + 1

        outage_clock.now += 0.1  # the pause is over: Redis is tried, and answers
        again = search(warm, who)
        assert proxy.received > sent + 1
        assert again.status == 200, again.text
        assert again.json["cacheHealthy"] is True
        # Counted in Redis again (a frozen Redis may also run the EVAL it got during the outage).
        counted = {2} if fault == "down" else {2, 3}
        assert RATE_LIMIT - int(again.headers["x-ratelimit-remaining"]) in counted
        assert len(logged(caplog, "redis_available")) == 1
        assert len(logged(caplog, "redis_unavailable")) == 1


def test_after_the_pause_one_call_at_a_time_probes_a_redis_still_down(
    warm: Caller, upstash_process: UpstashProcess, proxy: UpstashProxy, outage_clock: OutageClock
) -> None:
    """Twenty checks at once after the pause: one is sent (and hangs until its timeout), the
    others fail closed at once; its failure starts another pause."""
    inject(upstash_process, "frozen")
    assert not ratelimit.check("keywords", "u:probe", RATE_LIMIT).allowed  # the first failure
    sent = proxy.received
    outage_clock.end_pause()
    start = threading.Barrier(20)
    decisions: list[ratelimit.Decision] = []

    def check() -> None:
        start.wait()
        decisions.append(ratelimit.check("keywords", "u:probe", RATE_LIMIT))

    threads = [threading.Thread(target=check) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert proxy.received == sent + 1
    assert [d.retry_after for d in decisions] == [60] * 20
    assert not ratelimit.check("keywords", "u:probe", RATE_LIMIT).allowed
    assert proxy.received == sent + 1  # the failed probe started another pause
    repair(upstash_process, "frozen")


def test_billing_routes_fail_closed_during_the_pause_whatever_the_fail_safe(
    warm: Caller,
    upstash_process: UpstashProcess,
    proxy: UpstashProxy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """billing.md: checkout and the billing portal fail closed whatever RATE_LIMIT_FAIL_SAFE
    says; skipping Redis during the pause must not turn that into `open`."""
    monkeypatch.setenv("RATE_LIMIT_FAIL_SAFE", "open")
    config.get_settings.cache_clear()
    inject(upstash_process, "down")
    assert ratelimit.check("keywords", "u:bill", RATE_LIMIT).allowed  # fails open; Redis paused
    sent = proxy.received
    refused = ratelimit.check("checkout", "u:bill", RATE_LIMIT, fail_safe="closed")
    assert (refused.allowed, refused.retry_after) == (False, 60)
    assert ratelimit.check("keywords", "u:bill", RATE_LIMIT).allowed
    assert proxy.received == sent
