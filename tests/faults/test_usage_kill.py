"""A warm container SIGKILLed between requests loses none of its api_usage rows (issue 14).

Each request's row is sent after the response and its answer read only by the next request
(`shared.http.usage`), so the worst moment to kill a container is right after an answer: the
row has left the process, nobody has seen it stored. A child interpreter stands for the
container: it answers Lambda events read from stdin with the searches function's `lambda_handler`,
one after the other on one warm engine. The tests kill it there — also while its row is still
waiting in the server behind a table lock — and count the rows: exactly one per answer.
SIGTERM (what Lambda sends when an extension is registered) flushes and keeps the default
action. Both lanes: direct, and through PgBouncer in transaction mode.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from devkit import events
from devkit._host import wait_for
from devkit.upstash_emulator import UpstashEmulator
from tests.faults.conftest import FaultApp
from tests.support.http import app_environment, make_token
from tests.support.processes import ROOT, STARTUP_TIMEOUT_S, child_env

pytestmark = pytest.mark.faults

WAIT_S = 20.0
_CONTAINER = """
import asyncio, json, sys
from devkit import events
from functions import searches
asyncio.set_event_loop(asyncio.new_event_loop())
context = events.lambda_context("searches")
for line in sys.stdin:
    result = searches.lambda_handler(json.loads(line), context)
    print(json.dumps({"statusCode": result["statusCode"]}), flush=True)
"""


class Container:
    """The searches function in a warm child interpreter, one event per stdin line."""

    def __init__(self, env: dict[str, str], token: str) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="keyflash-container-"))
        self._out = self._dir / "stdout"
        self._err = self._dir / "stderr"
        self.headers = {"authorization": f"Bearer {token}", "user-agent": "container/1.0"}
        with self._out.open("wb") as out, self._err.open("wb") as err:
            self.popen = subprocess.Popen(
                [sys.executable, "-c", _CONTAINER],
                cwd=ROOT,
                env=env,
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=err,
            )

    def answers(self) -> list[int]:
        return [json.loads(line)["statusCode"] for line in self._out.read_text().splitlines()]

    def request(self) -> int:
        """Send GET /api/searches and wait for its answer (the platform's response)."""
        expected = len(self.answers()) + 1
        assert self.popen.stdin is not None
        event = events.http_api_v2("GET", "/api/searches", headers=self.headers)
        self.popen.stdin.write((json.dumps(event) + "\n").encode())
        self.popen.stdin.flush()
        answered = wait_for(lambda: len(self.answers()) >= expected, timeout=STARTUP_TIMEOUT_S)
        assert answered, f"no answer; the child's stderr:\n{self.stderr()}"
        return self.answers()[-1]

    def signal(self, signum: int) -> int:
        self.popen.send_signal(signum)
        return self.popen.wait(timeout=WAIT_S)

    def stderr(self) -> str:
        return self._err.read_text(errors="replace")[-3000:]

    def close(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(timeout=WAIT_S)


@pytest.fixture
def container(fault_app: FaultApp, upstash: UpstashEmulator) -> Iterator[Any]:
    started: list[Container] = []

    def start(**extra: str) -> Container:
        env = child_env(
            DATABASE_URL=fault_app.url,
            DIRECT_DATABASE_URL=fault_app.servers.direct_url,
            DB_APPLICATION_NAME=fault_app.application_name,
            DB_RETRY_BUDGET_S=1.5,
            **app_environment(fault_app.keys, upstash.url, upstash.token),
            **extra,
        )
        child = Container(env, make_token(fault_app.keys, "user_container"))
        started.append(child)
        return child

    yield start
    for child in started:
        child.close()


def usage_rows(admin: psycopg.Connection[Any]) -> int:
    row = admin.execute("SELECT count(*) FROM api_usage").fetchone()
    assert row is not None
    return int(row[0])


def usage_insert_running(admin: psycopg.Connection[Any], *, waiting: bool = False) -> bool:
    """A backend is running (or, with `waiting`, waiting on a lock in) an api_usage INSERT."""
    row = admin.execute(
        """SELECT count(*) FROM pg_stat_activity
           WHERE query LIKE 'INSERT INTO api_usage%%' AND state = 'active'
             AND (NOT %s OR wait_event_type = 'Lock')""",
        (waiting,),
    ).fetchone()
    return bool(row and row[0])


def test_a_container_killed_right_after_its_answers_loses_no_row(
    fault_app: FaultApp, container: Any
) -> None:
    child = container()
    for _ in range(3):
        assert child.request() == 200
    assert child.signal(signal.SIGKILL) == -signal.SIGKILL
    with fault_app.admin() as admin:
        assert wait_for(lambda: not usage_insert_running(admin), timeout=WAIT_S)
        assert usage_rows(admin) == 3  # the last one was never confirmed by its sender


def test_a_container_killed_while_its_row_waits_in_the_server_loses_no_row(
    fault_app: FaultApp, container: Any
) -> None:
    child = container()
    assert child.request() == 200
    with fault_app.admin() as admin, psycopg.connect(fault_app.servers.direct_url) as locker:
        locker.execute("LOCK TABLE api_usage IN ACCESS EXCLUSIVE MODE")
        assert child.request() == 200  # answered; its row is stuck behind the lock
        assert wait_for(lambda: usage_insert_running(admin, waiting=True), timeout=WAIT_S)
        assert child.signal(signal.SIGKILL) == -signal.SIGKILL
        locker.rollback()  # the server runs the dead client's INSERT to its end and commits
        assert wait_for(lambda: not usage_insert_running(admin), timeout=WAIT_S)
        assert usage_rows(admin) == 2


def lose_the_row_in_flight(fault_app: FaultApp, child: Container, *, then: int) -> int:
    """The documented loss: the database side drops the connection while the answered
    request's row is still queued in the server (behind a lock), then the container gets
    `then` (a signal) before its next request. Returns the child's exit status."""
    with fault_app.admin() as admin, psycopg.connect(fault_app.servers.direct_url) as locker:
        locker.execute("LOCK TABLE api_usage IN ACCESS EXCLUSIVE MODE")
        assert child.request() == 200
        assert wait_for(lambda: usage_insert_running(admin, waiting=True), timeout=WAIT_S)
        admin.execute(
            """SELECT pg_terminate_backend(pid) FROM pg_stat_activity
               WHERE query LIKE 'INSERT INTO api_usage%' AND wait_event_type = 'Lock'"""
        )
        assert wait_for(lambda: not usage_insert_running(admin), timeout=WAIT_S)
        child.popen.send_signal(then)
        locker.rollback()  # the flush's write of the held row must not wait behind the lock
    return child.popen.wait(timeout=WAIT_S)


def test_killed_without_notice_after_its_connection_dropped_a_queued_row_loses_that_row(
    fault_app: FaultApp, container: Any
) -> None:
    child = container()
    assert child.request() == 200
    assert lose_the_row_in_flight(fault_app, child, then=signal.SIGKILL) == -signal.SIGKILL
    with fault_app.admin() as admin:
        assert usage_rows(admin) == 1  # exactly the bound: the one row that was in flight


def test_sigterm_flushes_a_row_whose_connection_dropped_then_terminates(
    fault_app: FaultApp, container: Any
) -> None:
    child = container(AWS_LAMBDA_FUNCTION_NAME="keyflash-searches")
    assert child.request() == 200
    # SIGTERM: the flush reads the failure, logs it and writes the row again; then the default
    # action (the exit status of a process ended by SIGTERM).
    assert lose_the_row_in_flight(fault_app, child, then=signal.SIGTERM) == -signal.SIGTERM
    assert "usage_record_deferred" in child.stderr()
    assert "usage_rows_lost" not in child.stderr()
    with fault_app.admin() as admin:
        assert usage_rows(admin) == 2
