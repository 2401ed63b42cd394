"""Helpers for the cron tests: settings, scripted time budgets, overlapping runs, ASGI calls,
table snapshots."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest

from shared.cron.runner import Job, Run, run_job

CHECK_OK_MS = 60_000


def configure(monkeypatch: pytest.MonkeyPatch, **env: str | int | None) -> None:
    """Set (or with None, unset) environment variables and drop the cached settings."""
    from shared.config import get_settings

    for name, value in env.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, str(value))
    get_settings.cache_clear()


class BudgetContext:
    """A Lambda context whose time runs out after `checks` budget checks.

    The runner reads the remaining time once to size the lease, then once per `has_time()`:
    with `checks=2`, two batches (or checks) pass and the third finds no time left. A script,
    not a clock, so the tests never depend on how fast the machine is.
    """

    def __init__(self, checks: int, first_ms: int = CHECK_OK_MS) -> None:
        self.checks = checks
        self.first_ms = first_ms  # the invocation's end: the lease's TTL, the run's deadline
        self.calls = 0

    def get_remaining_time_in_millis(self) -> int:
        self.calls += 1
        if self.calls == 1:
            return self.first_ms
        return CHECK_OK_MS if self.calls - 1 <= self.checks else 0


@dataclass
class AsgiResponse:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def json(self) -> Any:
        import json

        return json.loads(self.body)


def asgi_call(
    app: Callable[..., Any],
    method: str = "GET",
    path: str = "/",
    *,
    headers: dict[str, str] | list[tuple[str, str]] | None = None,
    query: str = "",
) -> AsgiResponse:
    """Call a raw ASGI app once, as Vercel's runtime would, and collect the response. A list
    of `headers` may repeat a name (several fields)."""
    fields = list(headers.items()) if isinstance(headers, dict) else headers or []
    response = AsgiResponse()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "headers": [(k.lower().encode(), v.encode()) for k, v in fields],
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            response.status = message["status"]
            response.headers = {k.decode(): v.decode() for k, v in message["headers"]}
        elif message["type"] == "http.response.body":
            response.body += message.get("body", b"")

    asyncio.run(app(scope, receive, send))
    return response


def rows(conn: psycopg.Connection[Any], table: str, order: str = "id") -> list[tuple[Any, ...]]:
    """Every row of `table` in a stable order (for "nothing changed" comparisons)."""
    return conn.execute(f'SELECT * FROM "{table}" ORDER BY {order}').fetchall()


def count(conn: psycopg.Connection[Any], sql: str, *params: Any) -> int:
    row = conn.execute(sql, params or None).fetchone()
    assert row is not None
    return int(row[0])


def overlapping_runs(job: Job, **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """(first, second): the second run starts while the first is inside its work."""
    inside, release = threading.Event(), threading.Event()
    results: list[dict[str, Any]] = []

    def held(run: Run) -> None:
        inside.set()
        assert release.wait(30)
        job.work(run)

    thread = threading.Thread(target=lambda: results.append(run_job(Job(job.name, held), **kwargs)))
    thread.start()
    try:
        assert inside.wait(30)
        second = run_job(job, **kwargs)
    finally:
        release.set()
        thread.join(60)
    return results[0], second
