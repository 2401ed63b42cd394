"""The container's circuit breaker on Upstash calls (`shared.redis_breaker`).

Each Upstash call may wait `REDIS_TIMEOUT_S` holding a thread; where one instance serves many
requests at once (Vercel's Fluid compute, uvicorn with threads), a burst during an outage queued
behind those waits. A first fix paused every call after ONE failure, so a single blip refused a
whole instance for 5 s with `Retry-After: 60` (backed out, bf59722). What
docs/cache-and-rate-limits.md promises now, and these tests hold:

- fewer than `FAILURE_THRESHOLD` failures in a row, then a success: nothing more is refused;
- `FAILURE_THRESHOLD` failed calls in a row open the breaker: calls fail at once, sent nowhere,
  with the failure's usual meaning, and the limiter's refusal says `Retry-After` = the pause left;
- after the pause one trial call reaches Redis and decides (the others still fail at once); each
  failed trial doubles the pause, up to `MAX_PAUSE_S`; `Retry-After` is never below `PAUSE_S`;
- failures of calls under way together count once; a call sent before the breaker opened does
  not lengthen the pause when it fails;
- failed cache writes never count towards opening it.

Redis is real: the Upstash emulator process, killed (the gateway in front answers 502) or frozen
(SIGSTOP: nothing answers, so each call ends at its timeout). Between the app and the emulator a
real HTTP proxy (`tests.support.upstash_proxy`) counts the requests that reach it: the network
attempts. The breaker's clock is moved by the test instead of waited for.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from devkit._host import wait_for
from shared import cache, config, providers, ratelimit, redis
from shared.redis_breaker import FAILURE_THRESHOLD, MAX_PAUSE_S, PAUSE_S
from tests.support.breaker_clock import BreakerClock
from tests.support.http import Caller, Keys, logged
from tests.support.processes import UpstashProcess, private_upstash
from tests.support.upstash_proxy import UpstashProxy

pytestmark = pytest.mark.faults

REDIS_TIMEOUT_S = 1.0
LIMIT = 10
BURST = 20


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
def clock(breaker_clock: BreakerClock) -> BreakerClock:
    return breaker_clock


@pytest.fixture
def warm(
    api_env: Keys,
    upstash_process: UpstashProcess,
    proxy: UpstashProxy,
    clock: BreakerClock,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Caller]:
    """A warm container whose Upstash is the counting proxy: rate limits on, failing closed."""
    monkeypatch.setenv("UPSTASH_REDIS_REST_URL", proxy.url)
    monkeypatch.setenv("UPSTASH_REDIS_REST_TOKEN", upstash_process.token)
    monkeypatch.setenv("REDIS_TIMEOUT_S", str(REDIS_TIMEOUT_S))
    monkeypatch.setenv("RATE_LIMIT_ENABLED", "true")
    monkeypatch.setenv("RATE_LIMIT_FAIL_SAFE", "closed")
    config.get_settings.cache_clear()
    redis.reset_redis()
    providers.reset_providers()
    yield Caller("lambda_v2", api_env)
    redis.reset_redis(close=True)  # calls left waiting on a frozen emulator go with the client


def check() -> ratelimit.Decision:
    """One limiter check, for a fresh identity (so no window ever fills)."""
    return ratelimit.check("keywords", f"u:{uuid.uuid4().hex}", LIMIT)


def sent_by(proxy: UpstashProxy, work: Callable[[], object]) -> int:
    """How many requests reached Upstash while `work()` ran."""
    before = proxy.received
    work()
    return proxy.received - before


def fail(upstash: UpstashProcess, fault: str) -> None:
    if fault == "down":
        upstash.kill()
    else:
        upstash.freeze()


def repair(upstash: UpstashProcess, fault: str) -> None:
    if fault == "down":
        upstash.start()  # same port, same token
    else:
        upstash.thaw()
    assert wait_for(upstash.answers, timeout=30)


def checked(proxy: UpstashProxy) -> tuple[int, ratelimit.Decision]:
    """One check: how many requests it sent, and its decision."""
    before = proxy.received
    decision = check()
    return proxy.received - before, decision


def refused_by_the_outage(decision: ratelimit.Decision, retry_after: int) -> None:
    assert (decision.allowed, decision.retry_after) == (False, retry_after)


def open_breaker(proxy: UpstashProxy) -> None:
    """`FAILURE_THRESHOLD` failed checks, each sent: the last opens the breaker."""
    for attempt in range(1, FAILURE_THRESHOLD + 1):
        sent, decision = checked(proxy)
        assert sent == 1
        refused_by_the_outage(decision, 60 if attempt < FAILURE_THRESHOLD else int(PAUSE_S))


@pytest.mark.parametrize("fault", ["down", "frozen"])
def test_fewer_failures_than_the_threshold_then_a_success_refuse_nothing_more(
    warm: Caller, upstash_process: UpstashProcess, proxy: UpstashProxy, fault: str
) -> None:
    """A blip (a timeout, a reset connection) is that call's failure only; twice over shows a
    success starts the count again."""
    for _ in range(2):
        fail(upstash_process, fault)
        for _ in range(FAILURE_THRESHOLD - 1):
            sent, decision = checked(proxy)
            assert sent == 1
            refused_by_the_outage(decision, 60)
        repair(upstash_process, fault)
        for _ in range(5):
            sent, decision = checked(proxy)
            assert (sent, decision.allowed) == (1, True)
    health = warm("health", "GET", "/api/health")  # its limit and its check's SET both reach Redis
    assert health.json["checks"]["redis"]["healthy"] is True, health.text


def test_threshold_failures_open_it_then_calls_fail_at_once_with_the_pause_left(
    warm: Caller,
    upstash_process: UpstashProcess,
    proxy: UpstashProxy,
    clock: BreakerClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    upstash_process.kill()
    with caplog.at_level(logging.INFO, logger="keyflash"):
        open_breaker(proxy)
        before = proxy.received
        refused_by_the_outage(check(), int(PAUSE_S))
        clock.now += PAUSE_S / 2
        refused_by_the_outage(check(), int(PAUSE_S))  # never below the first pause
        assert cache.get_json("kw:any", cache.KeywordEntry) is None  # a read: a miss
        health = warm("health", "GET", "/api/health")
        assert proxy.received == before  # none of it was sent
    assert health.status == 429, health.text
    assert health.headers["retry-after"] == str(int(PAUSE_S))
    states = [line["state"] for line in logged(caplog, "circuit_breaker_state")]
    assert states == ["OPEN"]
    failures = logged(caplog, "rate_limit_unavailable")
    assert [line["error"] for line in failures][-1] == "UpstashCircuitOpenError"


def test_after_the_pause_one_trial_call_reaches_redis_and_decides(
    warm: Caller, upstash_process: UpstashProcess, proxy: UpstashProxy, clock: BreakerClock
) -> None:
    upstash_process.kill()
    open_breaker(proxy)
    clock.now += PAUSE_S - 1
    assert sent_by(proxy, check) == 0  # the pause is not over
    clock.now += 1
    sent, decision = checked(proxy)
    assert sent == 1  # the trial: still down
    refused_by_the_outage(decision, int(2 * PAUSE_S))  # it opened the breaker again, longer
    assert sent_by(proxy, check) == 0

    repair(upstash_process, "down")
    clock.now += 2 * PAUSE_S
    sent, decision = checked(proxy)
    assert (sent, decision.allowed) == (1, True)  # the trial: Redis answers
    assert sent_by(proxy, lambda: [check() for _ in range(5)]) == 5  # closed again

    upstash_process.kill()  # a new outage is counted from zero
    open_breaker(proxy)


def test_failed_cache_writes_never_open_it(
    warm: Caller, upstash_process: UpstashProcess, proxy: UpstashProxy
) -> None:
    upstash_process.kill()
    for _ in range(FAILURE_THRESHOLD - 1):
        assert sent_by(proxy, check) == 1
    writes: list[bool] = []
    for _ in range(2 * FAILURE_THRESHOLD):
        assert sent_by(proxy, lambda: writes.append(cache.set_json("kw:any", {"a": 1}))) == 1
    assert writes == [False] * 2 * FAILURE_THRESHOLD
    assert sent_by(proxy, check) == 1  # still closed: this read is the threshold's failure
    assert sent_by(proxy, lambda: writes.append(cache.set_json("kw:any", {"a": 1}))) == 0
    assert writes[-1] is False  # open: a write fails at once too, as a failed write


def test_a_burst_on_a_frozen_redis_sends_one_trial_call(
    warm: Caller, upstash_process: UpstashProcess, proxy: UpstashProxy, clock: BreakerClock
) -> None:
    """Twenty checks at once after the pause, Redis not answering: one is sent (and waits for
    its timeout), the others are refused at once; the failed trial opens the breaker again."""
    upstash_process.freeze()
    open_breaker(proxy)
    clock.now += PAUSE_S
    start = threading.Barrier(BURST)
    decisions: list[ratelimit.Decision] = []

    def one() -> None:
        start.wait()
        decisions.append(check())

    def burst() -> None:
        threads = [threading.Thread(target=one) for _ in range(BURST)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    assert sent_by(proxy, burst) == 1
    assert len(decisions) == BURST
    assert not any(decision.allowed for decision in decisions)
    # While the trial is out the pause left is 0, so the floor; after it failed, a doubled pause.
    assert {decision.retry_after for decision in decisions} <= {int(PAUSE_S), int(2 * PAUSE_S)}
    assert sent_by(proxy, check) == 0


def test_each_failed_trial_doubles_the_pause_up_to_a_cap(
    warm: Caller,
    upstash_process: UpstashProcess,
    proxy: UpstashProxy,
    clock: BreakerClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A long outage: clients honouring `Retry-After` back off too, instead of every 5 s. Each
    opening is logged with its pause, so an operator sees it grow (the reopenings after a failed
    trial were not logged: report s52 t4 D3)."""
    caplog.set_level(logging.INFO, logger="keyflash")
    upstash_process.kill()
    open_breaker(proxy)
    pauses = []
    for _ in range(5):
        clock.end_pause()
        sent, decision = checked(proxy)
        assert (sent, decision.allowed) == (1, False)  # the trial, failed
        pauses.append(decision.retry_after)
    assert pauses == [10, 20, 40, int(MAX_PAUSE_S), int(MAX_PAUSE_S)]
    clock.now += MAX_PAUSE_S - 1
    assert sent_by(proxy, check) == 0
    refused_by_the_outage(check(), int(PAUSE_S))  # 1 s left: the floor

    repair(upstash_process, "down")
    clock.end_pause()
    assert checked(proxy)[1].allowed  # the trial closes it
    upstash_process.kill()
    open_breaker(proxy)  # a new outage starts from the first pause
    states = [
        (line["state"], line["previous"], line.get("pauseS"))
        for line in logged(caplog, "circuit_breaker_state")
    ]
    reopened = [("OPEN", "OPEN", pause) for pause in (10, 20, 40, 60, 60)]
    closed = ("CLOSED", "OPEN", None)
    assert states == [("OPEN", "CLOSED", 5), *reopened, closed, ("OPEN", "CLOSED", 5)]


def test_a_call_sent_before_it_opened_does_not_lengthen_the_pause(
    warm: Caller, upstash_process: UpstashProcess, proxy: UpstashProxy, clock: BreakerClock
) -> None:
    """A call under way while others open the breaker fails later: the pause stays as it was."""
    upstash_process.kill()

    def slow_call() -> httpx.Response:
        open_breaker(proxy)  # meanwhile, three other calls fail
        clock.now += PAUSE_S - 1
        return httpx.post(proxy.url, json=["PING"], headers={"Authorization": "Bearer x"})

    assert redis.breaker.call(slow_call).status_code >= 500
    clock.now += 1
    assert sent_by(proxy, check) == 1  # the pause ended when it would have: the trial


def test_failures_of_calls_under_way_together_count_once(
    warm: Caller, upstash_process: UpstashProcess, proxy: UpstashProxy
) -> None:
    """Three checks on a frozen Redis at once all time out together: one blip, not an outage."""
    upstash_process.freeze()
    start = threading.Barrier(FAILURE_THRESHOLD)
    decisions: list[ratelimit.Decision] = []

    def one() -> None:
        start.wait()
        decisions.append(check())

    threads = [threading.Thread(target=one) for _ in range(FAILURE_THRESHOLD)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [decision.allowed for decision in decisions] == [False] * FAILURE_THRESHOLD
    repair(upstash_process, "frozen")
    sent, decision = checked(proxy)
    assert (sent, decision.allowed) == (1, True)  # still closed


def test_health_says_the_breaker_is_open_instead_of_pinging(
    warm: Caller,
    upstash_process: UpstashProcess,
    proxy: UpstashProxy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    upstash_process.kill()
    open_breaker(proxy)
    monkeypatch.setenv("RATE_LIMIT_FAIL_SAFE", "open")  # so health answers rather than 429
    config.get_settings.cache_clear()
    before = proxy.received
    health = warm("health", "GET", "/api/health")
    assert proxy.received == before
    assert health.json["checks"]["redis"] == {
        "healthy": False,
        "responseTime": 0,
        "error": "Redis ping not sent: its circuit breaker is open after failed calls",
        "details": {"configured": True, "circuitOpen": True},
    }, health.text
