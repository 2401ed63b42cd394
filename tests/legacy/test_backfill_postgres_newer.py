"""The backfill never brings back an older state: a row Postgres holds newer (a later
`updatedAt`, or a mirror to Redis still owed), a search deleted with its mirror owed, or an
erased identity (docs/migration-from-redis.md, "What a re-run keeps"). Each is a counted
outcome of the report, and `repair` still deletes what an erasure owes."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from upstash_redis import Redis

from devkit.legacy import backfill, verify
from devkit.upstash_emulator import UpstashEmulator
from shared.legacy import keys
from tests.support.legacy import (
    Writer,
    scan_all,
    search_record,
    user_record,
    write_search,
    write_user,
)

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
CREATED = NOW - timedelta(days=3)


@pytest.fixture
def redis_client() -> Iterator[Redis]:
    with UpstashEmulator() as emulator:
        yield Redis(url=emulator.url, token=emulator.token)


def _sql(url: str, statement: str, *params: object) -> list[tuple[object, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(statement, params)  # type: ignore[arg-type]
        return cursor.fetchall() if cursor.description else []


def _owe(url: str, key: str, kind: str, user_id: str) -> None:
    """What a dual-mode write leaves when Redis was down: the outbox row."""
    _sql(
        url,
        'INSERT INTO legacy_repairs (key, kind, "userId", "updatedAt") VALUES (%s, %s, %s, now())',
        key,
        kind,
        user_id,
    )


def _seed(client: Redis, user_id: str, searches: int = 0) -> list[str]:
    w = Writer(client)
    write_user(w, user_record(user_id, f"{user_id}@example.com", created=CREATED))
    ids = [str(uuid.uuid4()) for _ in range(searches)]
    for search_id in ids:
        write_search(w, search_record(user_id, search_id, created=CREATED, name="old name"))
    w.set(keys.trial_usage(user_id, CREATED), "7")
    w.flush()
    return ids


def test_repair_deletes_an_owed_erasure_even_when_the_row_came_back(
    redis_client: Redis, db_env: str, direct_database_url: str, tmp_path: Path
) -> None:
    """Something recreated the row after the erasure (a sign-in, an old backfill): the owed
    deletion still happens, and the row left behind shows in verify."""
    from shared import db
    from shared.legacy import bridge
    from shared.repositories import tombstones

    _seed(redis_client, "back", searches=1)
    backfill(redis_client, report_path=tmp_path / "1.json", now=NOW)

    def erased_then_recreated(conn: db.Conn) -> None:
        tombstones.record(conn, "back")  # what every erasure keeps
        bridge.mark_erasure(conn, "back")  # the Redis deletion, owed

    db.transaction(erased_then_recreated)
    summary = bridge.repair_pending(redis_client)
    assert (summary.repaired, summary.remaining) == (1, 0)
    assert [k for k in scan_all(redis_client) if "back" in k] == []
    differences = [str(d) for d in verify(redis_client, now=NOW)]
    assert 'user:back row: redis="missing" postgres="present"' in differences
