"""The cron runner and entries: lease, budget, summary, Lambda handler, Vercel app, imports.

Real Postgres in both lanes (direct and through PgBouncer in transaction mode): the lease is a
row precisely so that it works through the pooler.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import text

from devkit import events
from shared import db
from shared.cron import entry, runner
from shared.cron.runner import Job, Run, run_job
from shared.db import DatabaseUnavailableError
from shared.repositories import cron_leases
from tests.support.cron import BudgetContext, asgi_call, configure, count

ROOT = Path(__file__).resolve().parents[2]
CRON_MODULES = sorted(
    f"functions.cron.{path.stem}"
    for path in (ROOT / "functions" / "cron").glob("*.py")
    if not path.stem.startswith("_")
)
SECRET = "s3cr3t-cron-token-for-tests"


def recording_job(name: str = "test_job", batches: int = 3) -> tuple[Job, list[str]]:
    """A job doing `batches` batches, counting one row each, and recording its calls."""
    calls: list[str] = []

    def work(run: Run) -> None:
        calls.append(run.holder)
        for _ in range(batches):
            if not run.has_time():
                return
            with run.batch():
                run.processed += 1
        run.state["done"] = run.state.get("done", 0) + 1

    return Job(name, work), calls


def lease_row(admin_conn: psycopg.Connection[Any], job: str) -> tuple[Any, ...] | None:
    """(holder, live, state, lastCompletedAt). A released lease (no holder) is never live, even
    in the half millisecond its `expiresAt`, rounded to TIMESTAMP(3), may lie ahead of now()."""
    return admin_conn.execute(
        "SELECT holder, holder IS NOT NULL AND \"expiresAt\" > timezone('UTC', now()), state, "
        '"lastCompletedAt" FROM cron_leases WHERE job = %s',
        (job,),
    ).fetchone()


# --------------------------------------------------------------------------- the runner


def test_a_run_reports_its_summary_and_gives_the_lease_back(
    db_env: str, admin_conn: psycopg.Connection[Any], caplog: pytest.LogCaptureFixture
) -> None:
    job, calls = recording_job()
    with caplog.at_level(logging.INFO, logger="keyflash"):
        summary = run_job(job, context=events.lambda_context(timeout_ms=120_000))
    assert {k: summary[k] for k in ("job", "processed", "batches", "complete")} == {
        "job": "test_job",
        "processed": 3,
        "batches": 3,
        "complete": True,
    }
    assert summary["durationMs"] >= 0 and summary["longestBatchMs"] >= 0
    logged = [json.loads(r.getMessage()) for r in caplog.records if '"cron_job"' in r.getMessage()]
    assert logged and logged[-1]["processed"] == 3 and logged[-1]["job"] == "test_job"
    holder, live, state, completed_at = lease_row(admin_conn, "test_job") or ()
    assert holder is None and not live and state == {"done": 1} and completed_at is not None
    # The next run gets the state back and the lease again.
    assert run_job(job)["processed"] == 3
    assert lease_row(admin_conn, "test_job")[2] == {"done": 2}  # type: ignore[index]
    assert len(calls) == 2


def test_a_held_lease_makes_a_second_run_do_nothing(
    db_env: str, admin_conn: psycopg.Connection[Any]
) -> None:
    """Deterministic overlap: the first run waits inside its work until the second has tried."""
    job, calls = recording_job()
    inside, release = threading.Event(), threading.Event()
    results: list[dict[str, Any]] = []

    def slow(run: Run) -> None:
        inside.set()
        assert release.wait(30)
        job.work(run)

    first = threading.Thread(target=lambda: results.append(run_job(Job(job.name, slow))))
    first.start()
    try:
        assert inside.wait(30)
        second = run_job(job)
    finally:
        release.set()
        first.join(30)
    # A skip leaves no work of its own: `complete` must not read as "work left over" (the run
    # holding the lease reports the job's progress), and the documented fields are all there.
    assert second["skipped"] == runner.LEASE_HELD and second["complete"] is True
    assert set(second) == {
        "job",
        "processed",
        "batches",
        "durationMs",
        "complete",
        "longestBatchMs",
        "skipped",
    }
    assert second["processed"] == 0 and second["batches"] == 0
    assert results[0]["processed"] == 3 and results[0]["complete"] is True
    assert len(calls) == 1  # only the first run did the work


def test_an_expired_lease_is_taken_over_and_its_old_holder_is_fenced_off(
    db_env: str, admin_conn: psycopg.Connection[Any]
) -> None:
    job, _ = recording_job()
    # A run that died: its lease expired a minute ago.
    assert db.run(lambda conn: cron_leases.acquire(conn, job.name, "dead-run", ttl_seconds=60))
    admin_conn.execute(
        """UPDATE cron_leases SET "expiresAt" = "expiresAt" - interval '2 minutes' """
        "WHERE job = %s",
        (job.name,),
    )
    assert run_job(job)["processed"] == 3
    # The dead run coming back cannot overwrite the state or release someone else's lease.
    taken = db.run(lambda conn: cron_leases.acquire(conn, job.name, "new-run", ttl_seconds=60))
    assert taken is not None and taken.state == {"done": 1}
    assert not db.run(lambda conn: cron_leases.save_state(conn, job.name, "dead-run", {"x": 1}))
    assert not db.run(
        lambda conn: cron_leases.release(conn, job.name, "dead-run", state={"x": 1}, completed=True)
    )
    assert lease_row(admin_conn, job.name)[:3] == ("new-run", True, {"done": 1})  # type: ignore[index]


def test_concurrent_acquires_have_exactly_one_winner(
    db_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    configure(monkeypatch, DB_POOL_SIZE=8)
    db.dispose_engine()
    try:
        barrier = threading.Barrier(8)
        won: list[bool] = []

        def attempt(index: int) -> None:
            barrier.wait(10)
            lease = db.run(
                lambda conn: cron_leases.acquire(conn, "race", f"h{index}", ttl_seconds=60)
            )
            won.append(lease is not None)

        threads = [threading.Thread(target=attempt, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert sorted(won) == [False] * 7 + [True]
    finally:
        db.dispose_engine()


def test_a_failing_job_raises_gives_the_lease_back_and_keeps_the_old_state(
    db_env: str, admin_conn: psycopg.Connection[Any], caplog: pytest.LogCaptureFixture
) -> None:
    job, _ = recording_job()
    run_job(job)

    def broken(run: Run) -> None:
        run.state["done"] = 99
        with run.batch():
            raise ValueError("boom")

    with caplog.at_level(logging.ERROR, logger="keyflash"), pytest.raises(ValueError):
        run_job(Job(job.name, broken))
    assert any('"cron_job_failed"' in r.getMessage() for r in caplog.records)
    holder, live, state, _ = lease_row(admin_conn, job.name) or ()
    assert holder is None and not live and state == {"done": 1}
    assert run_job(job)["complete"] is True  # the lease is free again


def test_a_run_out_of_time_stops_between_batches_and_the_next_run_finishes(
    db_env: str, admin_conn: psycopg.Connection[Any]
) -> None:
    job, _ = recording_job(batches=5)
    partial = run_job(job, context=BudgetContext(checks=2))
    assert (partial["processed"], partial["complete"]) == (2, False)
    assert run_job(job)["complete"] is True


@pytest.mark.parametrize("timeout_ms", [1, 3500, 12_900])
def test_an_invocation_with_no_time_for_one_batch_starts_none(
    timeout_ms: int, db_env: str, admin_conn: psycopg.Connection[Any]
) -> None:
    """With no more than the budget's margin left (CRON_TIME_MARGIN_MS, 10 s, and the database's
    3 s) no batch could start, so not even the lease is asked for: taken with 3.5 s left, the
    job's next statement and the lease's release came past the database's give-up time, the
    release failed and the next run was skipped. The run reports that it did nothing, as one
    out of time does, rather than failing."""
    job, calls = recording_job(name=f"too_short_{timeout_ms}", batches=5)
    summary = run_job(job, context=events.lambda_context(timeout_ms=timeout_ms))
    assert (summary["processed"], summary["batches"], summary["complete"]) == (0, 0, False)
    assert calls == []  # the job never ran
    assert lease_row(admin_conn, job.name) is None


def test_the_last_batch_leaves_the_release_its_time_and_the_state_is_kept(
    db_env: str, monkeypatch: pytest.MonkeyPatch, admin_conn: psycopg.Connection[Any]
) -> None:
    """Reviewer: a batch may start with just over CRON_TIME_MARGIN_MS left and end inside the
    database's margin, where the release (and the run's state) was refused at once. A batch
    starts only with the margin and the database's left, so one no longer than the margin
    ends with time for the release."""
    configure(monkeypatch, CRON_TIME_MARGIN_MS=1000)

    def work(run: Run) -> None:
        while run.has_time():
            with run.batch():
                db.run(lambda conn: conn.session.execute(text("SELECT pg_sleep(0.3)")))
                run.processed += 1
                run.state["done"] = run.processed

    summary = run_job(Job("last_batch", work), context=events.lambda_context(timeout_ms=4500))
    assert summary["processed"] >= 1 and summary["complete"] is False
    holder, _, state, _ = lease_row(admin_conn, "last_batch") or ()
    assert holder is None and state == {"done": summary["processed"]}


def test_the_margin_and_the_default_duration_come_from_settings(
    db_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shared.config import get_settings

    configure(monkeypatch, CRON_TIME_MARGIN_MS=5000, CRON_MAX_DURATION_S=4)
    no_context = runner.Budget.for_invocation(None, get_settings())
    # A batch also leaves the database's margin (3 s) for the release after it.
    assert 3000 < no_context.remaining_ms() <= 4000 and not no_context.allows_batch()
    lambda_budget = runner.Budget.for_invocation(
        events.lambda_context(timeout_ms=8500), get_settings()
    )
    assert lambda_budget.allows_batch()
    assert not runner.Budget.for_invocation(
        events.lambda_context(timeout_ms=7999), get_settings()
    ).allows_batch()


def test_save_state_is_fenced_by_the_lease(db_env: str) -> None:
    def steal(run: Run) -> None:
        run.state["step"] = 1
        run.save_state()  # still ours: fine
        db.run(
            lambda conn: conn.session.execute(
                text("UPDATE cron_leases SET holder = 'thief' WHERE job = 'fenced'")
            )
        )
        run.state["step"] = 2
        run.save_state()

    with pytest.raises(runner.LeaseLostError):
        run_job(Job("fenced", steal))


def test_a_run_that_lost_its_lease_still_reports_and_leaves_the_new_holder_alone(
    db_env: str, admin_conn: psycopg.Connection[Any], caplog: pytest.LogCaptureFixture
) -> None:
    def overtaken(run: Run) -> None:
        with run.batch():
            run.processed = 1
        admin_conn.execute("UPDATE cron_leases SET holder = 'thief' WHERE job = 'overtaken'")

    with caplog.at_level(logging.WARNING, logger="keyflash"):
        summary = run_job(Job("overtaken", overtaken))
    assert summary["processed"] == 1 and summary["complete"] is True
    assert any('"cron_lease_lost"' in r.getMessage() for r in caplog.records)
    assert lease_row(admin_conn, "overtaken")[:2] == ("thief", True)  # type: ignore[index]


def test_a_release_that_fails_is_logged_and_the_lease_just_expires(
    db_env: str, admin_conn: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    def unavailable(*args: Any, **kwargs: Any) -> bool:
        raise DatabaseUnavailableError("database unreachable after 3 attempt(s) at connect")

    monkeypatch.setattr(cron_leases, "release", unavailable)
    job, _ = recording_job("unreleased")
    with caplog.at_level(logging.ERROR, logger="keyflash"):
        summary = run_job(job, context=events.lambda_context(timeout_ms=30_000))
    assert summary["complete"] is True
    assert any('"cron_lease_not_released"' in r.getMessage() for r in caplog.records)
    holder, live, _, _ = lease_row(admin_conn, "unreleased") or ()
    assert holder is not None and live  # held until the invocation's own time limit
    assert run_job(job)["skipped"] == runner.LEASE_HELD


# --------------------------------------------------------------------------- Lambda entry


@pytest.mark.parametrize("module", CRON_MODULES)
def test_every_cron_module_runs_from_a_schedule_event(
    module: str, db_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each Lambda handler takes a real EventBridge event and returns its summary."""
    import importlib

    from moto import mock_aws

    configure(
        monkeypatch,
        BACKUP_BUCKET="keyflash-backups-test",
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
    )
    cron = importlib.import_module(module)
    with mock_aws():
        import boto3

        boto3.client("s3").create_bucket(Bucket="keyflash-backups-test")
        summary = cron.lambda_handler(events.schedule(), events.lambda_context(timeout_ms=60_000))
    assert summary["job"] == module.rsplit(".", 1)[1]
    assert summary["complete"] is True, summary
    assert isinstance(cron.SCHEDULE, str) and len(cron.SCHEDULE.split()) == 5


def test_keyflash_cron_run_has_the_budget_and_lease_of_a_run_without_a_lambda_context(
    db_env: str, admin_conn: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`keyflash cron run JOB` is not on Lambda: its limit is CRON_MAX_DURATION_S, as documented
    for a run no Lambda context bounds, and its lease lasts that long plus a second."""
    import types

    from devkit import crons

    configure(monkeypatch, CRON_MAX_DURATION_S=600)
    seen: dict[str, float] = {}

    def work(run: Run) -> None:
        seen["remainingMs"] = run.budget.remaining_ms()
        row = admin_conn.execute(
            'SELECT extract(epoch FROM "expiresAt" - "acquiredAt") FROM cron_leases '
            "WHERE job = 'local_budget'"
        ).fetchone()
        seen["leaseS"] = float(row[0]) if row else -1.0

    module = types.ModuleType("kf_local_budget_cron")
    module.lambda_handler = entry.make_lambda_handler(Job("local_budget", work))  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "kf_local_budget_cron", module)
    job = crons.CronJob("local_budget", "kf_local_budget_cron", "/api/cron/local_budget", None, "t")
    result = crons.run_job(job)
    assert result.ok, result.error
    # ceil(what is left of 600 s) + 1, as a Lambda run's lease outlives its limit; a loaded
    # machine may take a second or more between the start and the lease
    assert seen["remainingMs"] / 1000 + 1 <= seen["leaseS"] <= 601
    assert 30_000 < seen["remainingMs"] <= 600_000


def test_event_options_come_from_manual_invokes_only() -> None:
    assert entry.event_options(events.schedule()) == {}
    assert entry.event_options({"full": True}) == {"full": True}
    assert entry.event_options(None) == {}


# --------------------------------------------------------------------------- Vercel entry


@pytest.fixture
def cron_app_env(db_env: str, monkeypatch: pytest.MonkeyPatch) -> str:
    configure(monkeypatch, CRON_SECRET=SECRET)
    return db_env


@pytest.mark.parametrize(
    ("headers", "challenge"),
    [
        pytest.param({}, "Bearer", id="no-header"),
        pytest.param(
            {"Authorization": "Bearer wrong-secret"},
            'Bearer error="invalid_token"',
            id="wrong-secret",
        ),
        pytest.param({"Authorization": SECRET}, "Bearer", id="not-bearer"),
        pytest.param(
            {"Authorization": f"Bearer {SECRET}x"}, 'Bearer error="invalid_token"', id="longer"
        ),
    ],
)
def test_the_vercel_app_refuses_without_the_cron_secret(
    cron_app_env: str,
    admin_conn: psycopg.Connection[Any],
    headers: dict[str, str],
    challenge: str,
) -> None:
    from functions.cron import expire_trials

    response = asgi_call(expire_trials.app, "GET", "/api/cron/expire_trials", headers=headers)
    assert response.status == 401
    assert response.headers["www-authenticate"] == challenge  # RFC 6750 §3
    body = response.json()
    assert set(body) == {"error", "message", "statusCode", "timestamp"}
    assert body["statusCode"] == 401 and SECRET not in response.body.decode()
    assert count(admin_conn, "SELECT count(*) FROM cron_leases") == 0  # nothing ran


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
def test_the_vercel_app_runs_the_job_with_the_cron_secret(
    cron_app_env: str, admin_conn: psycopg.Connection[Any], scheme: str
) -> None:
    """The scheme's case does not matter (RFC 9110 §11.1); the secret's does."""
    from functions.cron import rollup

    response = asgi_call(
        rollup.app,
        "GET",
        "/api/cron/rollup",
        headers={"Authorization": f"{scheme} {SECRET}", "User-Agent": "vercel-cron/1.0"},
        query="full=true",
    )
    assert response.status == 200, response.body
    assert response.headers["content-type"] == "application/json"
    summary = response.json()
    assert summary["job"] == "rollup" and summary["complete"] is True
    assert count(admin_conn, "SELECT count(*) FROM cron_leases WHERE job = 'rollup'") == 1


def test_the_vercel_app_refuses_when_no_secret_is_configured(
    db_env: str,
    monkeypatch: pytest.MonkeyPatch,
    admin_conn: psycopg.Connection[Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    from functions.cron import prune

    configure(monkeypatch, CRON_SECRET=None)
    caplog.set_level(logging.ERROR, logger="keyflash")
    response = asgi_call(prune.app, headers={"Authorization": "Bearer "})
    assert response.status == 500
    assert response.json()["message"] == "An unexpected error occurred"  # 5xx stay generic
    assert "CRON_SECRET" in caplog.text  # the fix is named in the log instead
    assert count(admin_conn, "SELECT count(*) FROM cron_leases") == 0


def test_the_vercel_app_answers_500_when_the_settings_are_broken(
    db_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from functions.cron import prune

    configure(monkeypatch, DATABASE_URL=None, CRON_SECRET=SECRET)
    response = asgi_call(prune.app, headers={"Authorization": f"Bearer {SECRET}"})
    assert response.status == 500 and "DATABASE_URL" not in response.body.decode()


@pytest.mark.parametrize(
    "fields",
    [
        [("Authorization", f"Bearer {SECRET}"), ("Authorization", "x")],
        [("Authorization", f"Bearer {SECRET}, x")],
        [("Authorization", f"Bearer {SECRET}"), ("Origin", "https://a"), ("Origin", "https://b")],
    ],
)
def test_the_vercel_app_refuses_several_authorization_or_origin_values(
    cron_app_env: str, fields: list[tuple[str, str]]
) -> None:
    """Reviewer s53r L4: the cron's entry read the first Authorization field and ran the job;
    every function answers 400 to several (`guards.OneValue`), so the cron does too."""
    from functions.cron import prune

    response = asgi_call(prune.app, headers=fields)
    assert response.status == 400
    assert response.json()["message"].startswith("Send one ")


def test_the_vercel_app_answers_only_get(cron_app_env: str) -> None:
    from functions.cron import prune

    response = asgi_call(prune.app, "POST", headers={"Authorization": f"Bearer {SECRET}"})
    assert (response.status, response.headers.get("allow")) == (405, "GET")


def test_the_vercel_app_maps_failures_to_the_envelope(cron_app_env: str) -> None:
    def unavailable(run: Run) -> None:
        raise DatabaseUnavailableError("database unreachable after 3 attempt(s) at connect")

    def broken(run: Run) -> None:
        raise RuntimeError("secret detail")

    auth = {"Authorization": f"Bearer {SECRET}"}
    down = asgi_call(entry.asgi_app(Job("down", unavailable)), headers=auth)
    assert (down.status, down.headers.get("retry-after")) == (503, "60")
    failed = asgi_call(entry.asgi_app(Job("broken", broken)), headers=auth)
    assert failed.status == 500 and "secret detail" not in failed.body.decode()


def test_the_vercel_app_handles_lifespan_and_ignores_other_scopes() -> None:
    import asyncio

    from functions.cron import prune

    sent: list[dict[str, Any]] = []
    incoming = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])

    async def receive() -> dict[str, Any]:
        return next(incoming)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(prune.app({"type": "lifespan"}, receive, send))
    asyncio.run(prune.app({"type": "websocket"}, receive, send))
    assert [m["type"] for m in sent] == [
        "lifespan.startup.complete",
        "lifespan.shutdown.complete",
    ]


# --------------------------------------------------------------------------- imports


def test_no_cron_module_imports_a_web_framework_or_deploy_only_sdks() -> None:
    """All cron modules in one fresh interpreter: no FastAPI, Starlette, Mangum (nor boto3,
    which the backup imports only when it runs, nor the Stripe SDK)."""
    probe = (
        "import importlib, json, sys\n"
        f"for name in {CRON_MODULES!r}: importlib.import_module(name)\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "DATABASE_URL": "postgresql://u:p@ep-x-pooler.neon.tech/d"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    loaded = set(json.loads(completed.stdout.strip().splitlines()[-1]))
    assert not loaded & {"fastapi", "starlette", "mangum", "boto3", "botocore", "stripe"}
    assert {"sqlalchemy", "psycopg"} <= loaded
