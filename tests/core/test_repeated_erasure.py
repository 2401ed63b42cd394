"""Erasing one identity twice (docs/accounts-and-privacy.md, "A second erasure of the same
identity only makes its tombstone stricter"), both lanes:

- a second erasure that finds no row (the first deleted it: a double click, DELETE /api/me
  and then Clerk's user.deleted) keeps what the first recorded from the real row; only an id
  never created here gets the Clerk rule (its trial over);
- the second erasure waiting on the first one's row lock, in either order of the two paths.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any

import psycopg
import pytest

from shared import accounts, db
from shared.db import Conn
from shared.repositories import tombstones, users
from tests.core.test_trials_and_tombstones import configure, search, waits_for_lock, with_token
from tests.support.http import Caller, Keys

ERASURE_PATHS = {"api": True, "clerk": False}  # refuse_live_subscription: DELETE /api/me only


def trial_ends(admin_conn: psycopg.Connection[Any], who: str) -> datetime:
    row = admin_conn.execute('SELECT "trialEndsAt" FROM users WHERE id = %s', (who,)).fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


def kept(admin_conn: psycopg.Connection[Any], who: str, email: str) -> set[tuple[Any, ...]]:
    """The tombstones of the identity: (trialEndsAt, keywordsUsed) per key."""
    rows = admin_conn.execute(
        'SELECT key, "trialEndsAt", "keywordsUsed" FROM account_tombstones WHERE key = ANY(%s)',
        (tombstones.keys(who, email),),
    ).fetchall()
    return {tuple(row) for row in rows}


def signed_up(admin_conn: psycopg.Connection[Any], who: str, used: int) -> datetime:
    email = f"{who}@example.com"
    db.run(lambda conn: users.get_or_create(conn, who, email))
    admin_conn.execute(
        'UPDATE users SET "keywordSearchesTotal" = %s, "keywordSearchesThisMonth" = %s'
        " WHERE id = %s",
        (used, used, who),
    )
    return trial_ends(admin_conn, who)


def erase(who: str, path: str) -> Any:
    return db.transaction(
        lambda conn: accounts.erase(conn, who, refuse_live_subscription=ERASURE_PATHS[path])
    )


@pytest.mark.parametrize("second", ["api", "clerk"])
def test_a_second_erasure_after_the_first_keeps_the_trial(
    db_env: str, admin_conn: psycopg.Connection[Any], second: str
) -> None:
    """DELETE /api/me, then (no sign-in between) a second erasure of the id, which finds no
    row: the tombstones stay as the first erasure wrote them from the real row."""
    ends = signed_up(admin_conn, "user_twice", used=50)
    assert erase("user_twice", "api").user_deleted
    first = kept(admin_conn, "user_twice", "user_twice@example.com")
    assert {(row[1], row[2]) for row in first} == {(ends, 50)}
    assert not erase("user_twice", second).user_deleted
    assert kept(admin_conn, "user_twice", "user_twice@example.com") == first
    db.run(lambda conn: users.get_or_create(conn, "user_twice", "user_twice@example.com"))
    assert trial_ends(admin_conn, "user_twice") == ends  # the rest of the same trial


def test_an_erasure_of_an_id_never_created_here_ends_its_trial(
    db_env: str, admin_conn: psycopg.Connection[Any]
) -> None:
    """Clerk's user.deleted before any creation: the id's tombstone alone, its trial over."""
    assert not erase("user_never", "clerk").user_deleted
    [(_, ends, used)] = kept(admin_conn, "user_never", "user_never@example.com")
    assert used == 0
    assert ends <= datetime.now() + timedelta(seconds=5)  # naive UTC in the database


@pytest.mark.parametrize(("first", "second"), [("api", "clerk"), ("clerk", "api"), ("api", "api")])
def test_a_second_erasure_waiting_on_the_first_keeps_the_trial(
    db_env: str,
    monkeypatch: pytest.MonkeyPatch,
    admin_conn: psycopg.Connection[Any],
    first: str,
    second: str,
) -> None:
    """A double click: the second erasure waits on the row the first one holds, then finds no
    row. Real connections; the first holds its transaction open until the second waits."""
    configure(monkeypatch, DB_POOL_SIZE="4")
    db.dispose_engine()
    ends = signed_up(admin_conn, "user_double", used=7)
    erasing, release = threading.Event(), threading.Event()

    def hold_open(conn: Conn) -> Any:
        erasure = accounts.erase(conn, "user_double", refuse_live_subscription=ERASURE_PATHS[first])
        erasing.set()
        assert release.wait(30)  # the row lock is held until this transaction commits
        return erasure

    with ThreadPoolExecutor(2) as pool:
        holding = pool.submit(db.transaction, hold_open)
        assert erasing.wait(30)
        waiting = pool.submit(erase, "user_double", second)
        waits_for_lock(admin_conn, "FOR UPDATE")
        release.set()
        assert holding.result().user_deleted
        assert not waiting.result().user_deleted
    assert {
        (row[1], row[2]) for row in kept(admin_conn, "user_double", "user_double@example.com")
    } == {(ends, 7)}
    db.run(lambda conn: users.get_or_create(conn, "user_double", "user_double@example.com"))
    assert trial_ends(admin_conn, "user_double") == ends


# --- erasures racing the same user's other requests --------------------------------------------


def test_erasures_racing_the_users_requests_never_answer_500(
    api_env: Keys, monkeypatch: pytest.MonkeyPatch, admin_conn: psycopg.Connection[Any]
) -> None:
    """Free-running, bounded: each round, two erasures, two keyword searches and two saved-search
    creates of one user start together (a barrier) on their own connections. The searches and
    creates provision the user again as they need; whatever the interleaving, nothing answers
    500 (no `UserNotFoundError`, no deadlock: the autouse fixture fails a test that met one)."""
    configure(monkeypatch, DB_POOL_SIZE="8", MOCK_PROVIDER_SEED="3")
    db.dispose_engine()
    call = Caller("lambda_v2", api_env)
    saved = {
        "name": "s",
        "searchParams": {"keywords": ["a"], "matchType": "phrase", "location": "US"},
    }
    answers: list[tuple[str, int, str]] = []
    for round_ in range(8):
        who = f"user_mixed_{round_}"
        assert with_token(call, "me", "GET", "/api/me", who).status == 200
        start = threading.Barrier(6)

        def one(
            index: int, who: str = who, start: threading.Barrier = start
        ) -> tuple[str, int, str]:
            token = call.token(who)
            headers = {"authorization": f"Bearer {token}"}
            start.wait()
            if index < 2:
                result = call("me", "DELETE", "/api/me", headers=headers)
                return ("DELETE", int(result.status), result.text)
            if index < 4:
                result = search(call, who, 2)
                return ("keywords", int(result.status), result.text)
            result = call("searches", "POST", "/api/searches", json_body=saved, headers=headers)
            return ("searches", int(result.status), result.text)

        with ThreadPoolExecutor(6) as pool:
            answers += list(pool.map(one, range(6)))
    failed = [answer for answer in answers if answer[1] not in (200, 201)]
    assert not failed, failed


def waiting(admin_conn: psycopg.Connection[Any], count: int) -> None:
    """Return once `count` backends wait on a lock (observed, not timed)."""
    for _ in range(3000):
        row = admin_conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
        ).fetchone()
        if row and row[0] >= count:
            return
        threading.Event().wait(0.01)  # between observations of the server's lock table
    raise AssertionError(f"never saw {count} backends waiting on a lock")


def test_an_erasure_finding_no_row_and_one_of_a_row_created_since_never_deadlock(
    db_env: str,
    monkeypatch: pytest.MonkeyPatch,
    direct_database_url: str,
    admin_conn: psycopg.Connection[Any],
) -> None:
    """A repeated erasure (the id is tombstoned, no row) runs while the person signs in again
    and erases that new account too. The first found no row to lock; if it locked the new row
    at its end (after the tombstone and the rows it changes), it took the locks in the opposite
    order to the second erasure, which locks the row first: a deadlock (the autouse fixture
    fails the test on one). Real connections: the new row is inserted uncommitted, and a flag
    naming the user, locked by another connection, holds both erasures midway."""
    configure(monkeypatch, DB_POOL_SIZE="4")
    db.dispose_engine()
    ends = signed_up(admin_conn, "user_again", used=5)
    assert erase("user_again", "api").user_deleted
    admin_conn.execute(
        """INSERT INTO feature_flags (id, key, enabled, "allowedUsers", "updatedAt")
           VALUES ('f1', 'f1', true, ARRAY['user_again'], now())"""
    )
    with (
        psycopg.connect(direct_database_url) as blocker,
        psycopg.connect(direct_database_url) as sign_in,
        ThreadPoolExecutor(2) as pool,
    ):
        blocker.execute("SELECT 1 FROM feature_flags WHERE id = 'f1' FOR UPDATE")
        sign_in.execute(
            """INSERT INTO users (id, email, "createdAt", "updatedAt", "trialEndsAt",
                   "keywordSearchesTotal", "keywordSearchesThisMonth")
               VALUES ('user_again', 'user_again@example.com', now(), now(), %s, 9, 4)""",
            (ends,),
        )
        repeated = pool.submit(erase, "user_again", "clerk")  # sees no row: not committed yet
        waiting(admin_conn, 1)  # on the flag
        sign_in.commit()
        of_the_new_row = pool.submit(erase, "user_again", "api")
        waiting(admin_conn, 2)
        blocker.commit()
        assert not repeated.result().user_deleted
        assert of_the_new_row.result().user_deleted
    assert admin_conn.execute("SELECT count(*) FROM users").fetchone() == (0,)
    assert {
        (row[1], row[2]) for row in kept(admin_conn, "user_again", "user_again@example.com")
    } == {(ends, 9)}
