"""The primary stops answering under a warm pooled connection (SIGSTOP on every process of this
process's own fault server: the kernel still accepts and acknowledges, nothing replies), as a hung
Neon compute or a black-holed network looks to an open connection.

`DB_STATEMENT_TIMEOUT_MS` is the server's own and cannot fire on a server that does not run, and
TCP keepalives see nothing amiss: only the client can bound the wait. The functions are called
as deployed (`Caller`: the function's timeout from serverless.yml, the platform's bare answer past
it), with the deployed statement timeout. Both lanes: direct, and PostgreSQL frozen behind a
PgBouncer that still answers.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psycopg
import pytest
import respx
from sqlalchemy import text

from devkit import events, platform_limits
from shared import config, db, providers
from shared.clock import utcnow
from shared.cron.runner import Job, Run, run_job
from shared.repositories import search_history, users
from tests.faults.conftest import FaultApp
from tests.support.http import Caller, Result

pytestmark = pytest.mark.faults

T = TypeVar("T")

ORIGIN = "https://app.keyflash.test"
USER = "user_frozen_primary"
# How long a call may hang before the test fails instead of hanging with it: a guard, not a
# claim (the bound under test is the statement timeout plus a grace of 2 s).
HANG_GUARD_S = 30.0
SEARCH_VOLUME_OK = Path(__file__).parents[1] / "fixtures" / "dataforseo" / "search_volume_ok.json"


def core_events(caplog: pytest.LogCaptureFixture, name: str) -> list[dict[str, Any]]:
    found = [json.loads(r.getMessage()) for r in caplog.records if r.name == "keyflash"]
    return [event for event in found if event["event"] == name]


def pooled_connection() -> psycopg.Connection[Any]:
    """The primary's connection the next request checks out (the pool is last in, first out)."""
    with db.get_engine().connect() as connection:
        driver: psycopg.Connection[Any] = connection.connection.dbapi_connection  # type: ignore[assignment]
    return driver


def outcome(work: Callable[[], T]) -> T | BaseException:
    """What `work()` returned or raised; one still waiting after HANG_GUARD_S fails the test."""
    found: list[T | BaseException] = []

    def run() -> None:
        try:
            found.append(work())
        except BaseException as error:  # handed to the test
            found.append(error)

    worker = threading.Thread(target=contextvars.copy_context().run, args=(run,), daemon=True)
    worker.start()
    worker.join(HANG_GUARD_S)
    assert found, f"still waiting for the frozen server after {HANG_GUARD_S} s"
    return found[0]


def list_searches(call: Caller) -> Result:
    return call("searches", "GET", "/api/searches", user=USER, headers={"origin": ORIGIN})


@pytest.fixture
def call(
    fault_app: FaultApp, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> Caller:
    """The functions on this lane, answering ORIGIN's CORS, with the deployed statement timeout."""
    monkeypatch.setenv("ALLOWED_ORIGINS", ORIGIN)
    monkeypatch.delenv("DB_STATEMENT_TIMEOUT_MS", raising=False)
    config.get_settings.cache_clear()
    caplog.set_level(logging.INFO, logger="keyflash")
    return Caller("lambda_v2", fault_app.keys)


@pytest.mark.parametrize(
    "idle_check_s", [pytest.param("30", id="in_use"), pytest.param("0", id="pinged")]
)
def test_a_frozen_primary_answers_503_inside_the_function_timeout_then_recovers(
    idle_check_s: str,
    call: Caller,
    fault_app: FaultApp,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The warm connection's statement (`in_use`), or its idle ping on checkout (`pinged`), gets
    no answer: the request answers the 503 envelope with Retry-After and CORS, not the platform's
    bare timeout answer; that connection is closed, never pooled again, and once the server
    answers again the next request succeeds on a new one."""
    monkeypatch.setenv("DB_IDLE_CHECK_S", idle_check_s)
    config.get_settings.cache_clear()
    assert list_searches(call).status == 200  # warm: the user, the engine, one connection
    opened = pooled_connection()
    with fault_app.servers.postgres.frozen():
        started = time.monotonic()
        # On a thread of its own, as a traffic thread: the caller's settling of `api_usage`
        # answers (the test's main thread only) is no part of the request.
        frozen = outcome(lambda: list_searches(call))
        took = time.monotonic() - started
    assert isinstance(frozen, Result), frozen
    print(
        f"\n[faults] frozen_primary[{fault_app.lane}-{idle_check_s}]: "
        f"{frozen.status} in {took:.2f} s"
    )
    assert frozen.status == 503, (frozen.status, frozen.text)
    assert set(frozen.json) == {"error", "message", "statusCode", "timestamp"}, frozen.json
    assert frozen.json["statusCode"] == 503
    assert frozen.headers["retry-after"].isdigit()
    assert frozen.headers["access-control-allow-origin"] == ORIGIN
    assert opened.closed
    assert [event["stage"] for event in core_events(caplog, "db_unavailable")] in (
        ["work"],
        ["connect"],  # pinged: the replacement's connect failed (direct), or it was given up
    )
    if idle_check_s == "0":
        assert core_events(caplog, "db_idle_connection_replaced")  # replaced, as before (c)
    assert list_searches(call).status == 200


def test_a_write_whose_answer_never_came_is_not_retried(
    call: Caller,
    fault_app: FaultApp,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A write that is not idempotent, sent to a server that then never answers: given up after
    the statement timeout plus the grace, its outcome is unknown (the server may still run it
    when it resumes), so it is `DatabaseUnavailableError` (the 503) after one attempt, never
    sent again."""
    monkeypatch.setenv("DB_STATEMENT_TIMEOUT_MS", "500")
    config.get_settings.cache_clear()
    db.dispose_engine()
    db.run(lambda conn: users.get_or_create(conn, USER, f"{USER}@example.com"))
    search = search_history.NewSearch(USER, ["frozen"], "US", "en", "phrase", "mock", False, 1)
    write = partial(search_history.record, search=search, now=utcnow())
    with fault_app.servers.postgres.frozen():
        raised = outcome(lambda: db.run(write))
    assert isinstance(raised, db.DatabaseUnavailableError), raised
    assert raised.outcome_unknown
    assert core_events(caplog, "db_retry") == []
    [unavailable] = core_events(caplog, "db_unavailable")
    assert (unavailable["stage"], unavailable["attempts"], unavailable["retried"]) == (
        "work",
        1,
        False,
    )


def test_health_on_a_frozen_primary_answers_within_its_own_budget(
    call: Caller, fault_app: FaultApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reviewer C: health's check on a warm connection waited the statement timeout plus the
    grace (17 s), past health's own function timeout (10 s), so a monitor got the platform's
    bare answer. Its statement is bounded by the check's budget: the database check fails, and
    health answers its own report."""
    monkeypatch.setenv("HEALTH_DB_MAX_AGE_S", "0")  # every check asks the database
    config.get_settings.cache_clear()
    assert call("health", "GET", "/api/health").status == 200  # warm: one pooled connection
    opened = pooled_connection()
    with fault_app.servers.postgres.frozen():
        frozen = outcome(lambda: call("health", "GET", "/api/health"))
    assert isinstance(frozen, Result), frozen
    assert frozen.status == 207, (frozen.status, frozen.text)  # Redis and the provider pass
    assert frozen.json["checks"]["database"]["healthy"] is False, frozen.json
    assert opened.closed


def test_a_search_whose_provider_ran_long_then_met_a_frozen_primary_answers_503_in_time(
    call: Caller, fault_app: FaultApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The provider answers just before its deadline, and the primary freezes meanwhile: the
    search's record statement may wait only what is left of the invocation (Lambda's context),
    not its own 17 s, so the request answers the 503 envelope with Retry-After and CORS, not
    the platform's bare 500 after the function's timeout (shortened here to 11 s)."""
    for name, value in {
        "KEYFLASH_TIMEOUT_S": "11",
        "KEYWORD_API_PROVIDER": "dataforseo",
        "DATAFORSEO_API_LOGIN": "login",
        "DATAFORSEO_API_PASSWORD": "secret-password",
        "DATAFORSEO_REQUESTS_PER_MINUTE": "0",
    }.items():
        monkeypatch.setenv(name, value)
    config.get_settings.cache_clear()
    providers.reset_providers()
    assert list_searches(call).status == 200  # warm: the user, the engine, one connection
    answer = json.loads(SEARCH_VOLUME_OK.read_text())

    with ExitStack() as frozen, respx.mock(assert_all_called=False) as upstream:

        def slow_provider(request: httpx.Request) -> httpx.Response:
            frozen.enter_context(fault_app.servers.postgres.frozen())
            time.sleep(4.0)  # the provider's own slowness: most of its 5 s deadline (11 - 3 - 3)
            return httpx.Response(200, json=answer)

        upstream.route(host__regex=r"^(127\.0\.0\.1|localhost)$").pass_through()
        upstream.post(url__regex=re.compile(r"https://api\.dataforseo\.com/.*")).mock(
            side_effect=slow_provider
        )
        tag = uuid.uuid4().hex[:10]
        body = {"keywords": [f"frozen {tag}"], "matchType": "phrase", "location": "US"}
        searched = outcome(
            lambda: call(
                "keywords",
                "POST",
                "/api/keywords",
                user=USER,
                json_body=body,
                headers={"origin": ORIGIN},
            )
        )
    assert isinstance(searched, Result), searched
    assert searched.status == 503, (searched.status, searched.text)
    assert set(searched.json) == {"error", "message", "statusCode", "timestamp"}, searched.json
    assert searched.headers["retry-after"].isdigit()
    assert searched.headers["access-control-allow-origin"] == ORIGIN


def test_a_cron_batch_started_inside_its_margin_ends_before_its_timeout_on_a_frozen_primary(
    fault_app: FaultApp, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A batch starts while more than CRON_TIME_MARGIN_MS (10 s) is left, and its statement
    gets no answer: it gives up before the invocation ends (its round trips wait no longer than
    the run's own time limit less the margin, not the statement timeout plus the grace, 17 s),
    so the run fails as the job's error, which the platform records, rather than being killed
    by the platform's timeout mid-way."""
    monkeypatch.delenv("DB_STATEMENT_TIMEOUT_MS", raising=False)
    monkeypatch.delenv("CRON_TIME_MARGIN_MS", raising=False)
    config.get_settings.cache_clear()
    caplog.set_level(logging.INFO, logger="keyflash")
    timeout_s = 14.0  # more than the margin and the database's (3 s): one batch may start

    with ExitStack() as frozen:

        def work(run: Run) -> None:
            while run.has_time():
                with run.batch():
                    frozen.enter_context(fault_app.servers.postgres.frozen())
                    db.run(lambda conn: conn.session.execute(text("SELECT 1")), idempotent=True)

        job = Job("frozen_primary_probe", work)
        context = events.lambda_context("frozen_primary_probe", int(timeout_s * 1000))
        ran = outcome(
            lambda: platform_limits.call_within(timeout_s, lambda: run_job(job, context=context))
        )
    assert isinstance(ran, db.DatabaseUnavailableError), ran  # not platform_limits.Overrun
