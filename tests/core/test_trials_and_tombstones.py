"""Trials on the shared database and across erasure (docs/accounts-and-privacy.md), both lanes:

- a FREE user another writer created with Prisma's defaults (no `trialEndsAt`) has a trial;
- erasing an account (DELETE /api/me, Clerk's user.deleted) never grants a second trial to the
  same Clerk identity or the same email;
- a keyword search racing the erasure of its own user never answers 500 nor leaves orphans.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import respx
from httpx import Response as HttpxResponse

from shared import accounts, config, db, providers
from shared.clock import utcnow
from shared.db import Conn
from shared.errors import QuotaExceededError, TrialExpiredError
from shared.http import usage
from shared.models.users import User
from shared.quotas import Limits, usage_view
from shared.repositories import tombstones, users
from shared.repositories.reservations import Hold
from shared.repositories.rows import db_time
from tests.support.clerk_events import deliver
from tests.support.http import Caller, Keys

TRIAL_LIMIT = 6
RESERVATION = 'UPDATE users SET "keywordSearchesThisMonth"'  # the reservation's first words
FIXTURES = Path(__file__).parents[1] / "fixtures" / "dataforseo"


def configure(monkeypatch: pytest.MonkeyPatch, **env: str) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    config.get_settings.cache_clear()
    providers.reset_providers()


@pytest.fixture
def billing(monkeypatch: pytest.MonkeyPatch, api_env: Keys) -> None:
    configure(monkeypatch, BILLING_ENABLED="true", TRIAL_KEYWORD_LIMIT=str(TRIAL_LIMIT))


def search(call: Caller, who: str, count: int, **claims: Any) -> Any:
    tag = uuid.uuid4().hex[:10]  # never cached: the emulator outlives the test
    body = {"keywords": [f"kw {tag} {i}" for i in range(count)], "matchType": "exact"}
    token = call.token(who, **claims)
    return call(
        "keywords",
        "POST",
        "/api/keywords",
        json_body=body,
        headers={"authorization": f"Bearer {token}"},
    )


def with_token(call: Caller, module: str, method: str, path: str, who: str, **claims: Any) -> Any:
    token = call.token(who, **claims)
    return call(module, method, path, headers={"authorization": f"Bearer {token}"})


# --- the trial rule for rows other writers created ---------------------------------------------


def prisma_user(conn: psycopg.Connection[Any], user_id: str, created_ago: timedelta,
                started_ago: timedelta | None = None) -> None:  # fmt: skip
    """A FREE user as the original's Prisma client writes one: its defaults, no trial end."""
    conn.execute(
        'INSERT INTO users (id, email, "createdAt", "updatedAt", "trialStartedAt")'
        " VALUES (%s, %s, now() AT TIME ZONE 'UTC' - %s::interval, now(),"
        " now() AT TIME ZONE 'UTC' - %s::interval)",
        (user_id, f"{user_id}@example.com", created_ago, started_ago),
    )


def test_a_prisma_default_free_user_has_a_trial_measured_from_its_start(
    call: Caller, billing: None, admin_conn: psycopg.Connection[Any]
) -> None:
    prisma_user(admin_conn, "prisma_new", timedelta(days=2))
    prisma_user(admin_conn, "prisma_old", timedelta(days=8))
    prisma_user(admin_conn, "prisma_restarted", timedelta(days=30), started_ago=timedelta(days=1))
    for who in ("prisma_new", "prisma_restarted"):
        result = search(call, who, 2)
        assert result.status == 200, result.text
        me = with_token(call, "me", "GET", "/api/me", who).json
        created, started = admin_conn.execute(
            'SELECT "createdAt", "trialStartedAt" FROM users WHERE id = %s', (who,)
        ).fetchone() or (None, None)
        ends = (started or created) + timedelta(days=7)
        assert me["trialEndsAt"] == ends.isoformat(timespec="milliseconds") + "Z"
        assert me["usage"]["remaining"] == TRIAL_LIMIT - 2
    expired = search(call, "prisma_old", 1)
    assert (expired.status, expired.json["message"]) == (
        403,
        "Your 7-day free trial has expired. Upgrade to Pro to continue using KeyFlash.",
    )
    counts = db.run(lambda conn: users.count_expired_trials(conn, now=utcnow(), since=utcnow()))
    assert counts.total == 1  # the cron counts it too
    ended = db.run(lambda conn: users.find_expired_trials(conn))
    assert [user.id for user in ended] == ["prisma_old"]


# --- erasure never resets a trial --------------------------------------------------------------


def granted(result: Any) -> bool:
    assert result.status in (200, 403, 429), result.text
    return bool(result.status == 200)


def test_erase_and_sign_in_again_never_grants_a_second_trial(
    call: Caller, billing: None, admin_conn: psycopg.Connection[Any]
) -> None:
    """Three erase/re-provision cycles of one Clerk identity, then new identities with the
    same email (in other cases): the whole sequence gets one trial quota, never more."""
    total = 0
    for _ in range(3):
        for _ in range(4):  # more than the quota, 2 at a time
            total += 2 * granted(search(call, "user_cycle", 2, email="Cycle@Example.com"))
        erased = with_token(
            call, "me", "DELETE", "/api/me", "user_cycle", email="Cycle@Example.com"
        )
        assert erased.status == 200
        me = with_token(call, "me", "GET", "/api/me", "user_cycle", email="Cycle@Example.com")
        assert (me.json["usage"]["total"], me.json["usage"]["remaining"]) == (TRIAL_LIMIT, 0)
        with_token(call, "me", "DELETE", "/api/me", "user_cycle", email="Cycle@Example.com")
    for who, email in (("user_new_id", " cycle@example.COM"), ("user_other", "CYCLE@example.com")):
        total += 2 * granted(search(call, who, 2, email=email))  # a new Clerk user, same email
        with_token(call, "me", "DELETE", "/api/me", who, email=email)
    assert total == TRIAL_LIMIT
    # What is kept is keyed, never in the clear: no id, no email, in any column.
    kept = admin_conn.execute("SELECT * FROM account_tombstones").fetchall()
    assert kept and all(
        len(row[0]) == 64 and set(row[0]) <= set("0123456789abcdef") for row in kept
    )
    dump = json.dumps([list(map(str, row)) for row in kept]).lower()
    assert "cycle" not in dump and "user_" not in dump and "example" not in dump


def test_an_expired_trial_stays_expired_after_erasure(
    call: Caller, billing: None, admin_conn: psycopg.Connection[Any]
) -> None:
    assert search(call, "user_late", 1).status == 200
    admin_conn.execute(
        """UPDATE users SET "trialEndsAt" = now() - interval '1 day' WHERE id = 'user_late'"""
    )
    assert search(call, "user_late", 1).status == 403
    assert with_token(call, "me", "DELETE", "/api/me", "user_late").status == 200
    again = search(call, "user_late", 1)  # the first call after erasure creates the user
    assert again.status == 403, again.text


def test_erasure_by_clerk_user_deleted_keeps_the_tombstone_too(
    call: Caller, billing: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.support.clerk_events import SECRET

    configure(monkeypatch, CLERK_WEBHOOK_SECRET=SECRET)
    assert search(call, "user_clerk", TRIAL_LIMIT, email="clerk@example.com").status == 200
    result, _, _ = deliver(call, "user.deleted", {"id": "user_clerk", "deleted": True})
    assert result.status == 200, result.text
    assert db.run(lambda conn: users.get(conn, "user_clerk")) is None
    # Signing up again in Clerk (user.created, a new id, the same email) starts no new trial.
    data = {"id": "user_clerk_2", "object": "user", "primary_email_address_id": "idn_0",
            "email_addresses": [{"id": "idn_0", "email_address": "Clerk@example.com"}]}  # fmt: skip
    created, _, _ = deliver(call, "user.created", data)
    assert created.status == 200, created.text
    refused = search(call, "user_clerk_2", 1, email="Clerk@example.com")
    assert refused.status == 429, refused.text


def test_a_first_search_blocked_by_the_erasure_of_its_user_gets_no_new_trial(
    api_env: Keys, monkeypatch: pytest.MonkeyPatch, admin_conn: psycopg.Connection[Any]
) -> None:
    """The search's get-or-create-and-reserve waits on the row the erasure has locked, and
    finds it gone once the erasure commits: the tombstone written by that erasure must still
    apply (no second trial through the race, no hold)."""
    configure(
        monkeypatch, BILLING_ENABLED="true", TRIAL_KEYWORD_LIMIT=str(TRIAL_LIMIT), DB_POOL_SIZE="4"
    )
    db.dispose_engine()
    call = Caller("lambda_v2", api_env)
    assert search(call, "user_blocked", TRIAL_LIMIT - 1).status == 200  # room for one keyword
    [answered] = searches_behind_an_erasure(admin_conn, call, "user_blocked", searches=1)
    assert answered.status == 200, answered.text  # the tombstoned trial's last keyword
    assert admin_conn.execute(
        'SELECT "keywordSearchesTotal" FROM users WHERE id = %s', ("user_blocked",)
    ).fetchone() == (TRIAL_LIMIT,)
    # Its hold was confirmed by the record: nothing left for the reconciliation to give.
    assert admin_conn.execute("SELECT count(*) FROM keyword_reservations").fetchone() == (0,)


def test_searches_blocked_by_the_erasure_of_a_trial_get_only_its_room(
    api_env: Keys, monkeypatch: pytest.MonkeyPatch, admin_conn: psycopg.Connection[Any]
) -> None:
    """Two searches wait on the row the erasure has locked (one keyword of room left); once it
    commits, the new row must continue the tombstoned trial before anyone can see it or count
    against it: one search gets the room, the other is refused. A row created from values
    computed before the erasure (a fresh trial) let both through, past the quota, and
    GET /api/me showed it (s53t1 findings 1 and 3)."""
    configure(
        monkeypatch, BILLING_ENABLED="true", TRIAL_KEYWORD_LIMIT=str(TRIAL_LIMIT), DB_POOL_SIZE="4"
    )
    db.dispose_engine()
    call = Caller("lambda_v2", api_env)
    assert search(call, "user_burst", TRIAL_LIMIT - 1).status == 200  # room for one keyword
    visible: list[Any] = []  # the committed row, as another connection sees it, when settling
    settle = tombstones.settle

    def observed_settle(conn: Conn, user_id: str, email: str) -> tombstones.Settled | None:
        query = 'SELECT "keywordSearchesTotal" FROM users WHERE id = %s'
        visible.append(admin_conn.execute(query, (user_id,)).fetchone())
        return settle(conn, user_id, email)

    monkeypatch.setattr(tombstones, "settle", observed_settle)
    answers = searches_behind_an_erasure(admin_conn, call, "user_burst", searches=2)
    statuses = sorted(answer.status for answer in answers)
    assert statuses == [200, 429], [answer.text for answer in answers]
    assert all(row is None or row[0] >= TRIAL_LIMIT for row in visible), visible
    assert admin_conn.execute(
        'SELECT "keywordSearchesTotal" FROM users WHERE id = %s', ("user_burst",)
    ).fetchone() == (TRIAL_LIMIT,)
    assert admin_conn.execute("SELECT count(*) FROM keyword_reservations").fetchone() == (0,)


def test_a_refused_search_whose_user_is_erased_before_it_says_why_is_a_429(
    api_env: Keys, monkeypatch: pytest.MonkeyPatch, admin_conn: psycopg.Connection[Any]
) -> None:
    """The reservation is refused (the trial used up), then the user's erasure commits before
    the refusal reads the row to say why: the search answers 429 as the continued trial says,
    not a 500 for a user no longer found (s53t1 finding 2)."""
    configure(
        monkeypatch, BILLING_ENABLED="true", TRIAL_KEYWORD_LIMIT=str(TRIAL_LIMIT), DB_POOL_SIZE="4"
    )
    db.dispose_engine()
    call = Caller("lambda_v2", api_env)
    assert search(call, "user_refused", TRIAL_LIMIT).status == 200  # the whole trial quota
    reserve, execute_hot = set(users._RESERVE.values()), users.execute_hot
    pool = ThreadPoolExecutor(1)
    erasures: list[Any] = []

    def erase(conn: Conn) -> None:
        accounts.erase(conn, "user_refused", refuse_live_subscription=True)

    def reserve_then_erase(conn: Conn, statement: Any, params: Any) -> Any:
        result = execute_hot(conn, statement, params)
        if statement in reserve and not erasures:
            erasures.append(pool.submit(db.transaction, erase))
            erasures[0].result()  # nothing of the search holds the row: it commits
        return result

    monkeypatch.setattr(users, "execute_hot", reserve_then_erase)
    with pool:
        refused = search(call, "user_refused", 1)
        erasures[0].result()
    assert refused.status == 429, refused.text
    # The erasure took the row away before the refusal's read: the search ran its statement
    # again, creating the new account that continues the tombstoned trial, and refused on it.
    assert admin_conn.execute(
        'SELECT "keywordSearchesTotal" FROM users WHERE id = %s', ("user_refused",)
    ).fetchone() in {None, (TRIAL_LIMIT,)}


@pytest.mark.parametrize(
    ("used", "ends_in", "count", "outcome"),
    [
        (0, timedelta(days=3), 2, "counted"),  # a tombstoned trial with room for the request
        (TRIAL_LIMIT - 1, timedelta(days=3), 2, "quota"),  # room for 1 of the 2 keywords
        (0, -timedelta(hours=1), 1, "expired"),  # the tombstoned trial is over
    ],
)
def test_a_new_users_hold_is_written_only_for_what_its_first_request_counted(
    db_env: str,
    admin_conn: psycopg.Connection[Any],
    used: int,
    ends_in: timedelta,
    count: int,
    outcome: str,
) -> None:
    """The creating statement writes the user, its count and its hold at once: a new user whose
    tombstoned trial refuses the request is created with nothing counted and holds nothing."""
    now = utcnow()
    for key in tombstones.keys("user_held", "held@example.com"):
        admin_conn.execute(
            'INSERT INTO account_tombstones (key, "trialEndsAt", "keywordsUsed")'
            " VALUES (%s, %s, %s)",
            (key, db_time(now + ends_in), used),
        )
    limits = Limits(trial=TRIAL_LIMIT, pro=100, enterprise=1000)
    hold = Hold("hold-new-user", now + timedelta(minutes=5))
    errors = {"quota": QuotaExceededError, "expired": TrialExpiredError}

    def reserve(conn: Conn) -> users.Usage:
        return users.reserve_keywords(
            conn, "user_held", "held@example.com", count,
            limits=limits, enforce=True, now=now, hold=hold,
        )  # fmt: skip

    if outcome == "counted":
        usage = db.run(reserve)
        assert (usage.this_month, usage.total) == (count, count)
    else:
        with pytest.raises(errors[outcome]):
            db.run(reserve)
    held = admin_conn.execute(
        'SELECT "userId", keywords FROM keyword_reservations WHERE id = %s', (hold.id,)
    ).fetchall()
    assert held == ([("user_held", count)] if outcome == "counted" else [])
    row = admin_conn.execute(
        'SELECT "keywordSearchesThisMonth", "keywordSearchesTotal" FROM users WHERE id = %s',
        ("user_held",),
    ).fetchone()
    assert row == ((count, used + count) if outcome == "counted" else (0, used))


def test_a_first_search_losing_races_around_an_erasure_is_still_counted(
    db_env: str,
    admin_conn: psycopg.Connection[Any],
    direct_database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A first request loses the race to create its user (its INSERT does nothing), then the
    person's own erasure takes the row its next run waits on, then another first request wins
    the race to create the fresh account: each costs the reservation a run, and it still counts
    on the row that exists (s54r1: it ran out of runs and raised `UserNotFoundError`)."""
    monkeypatch.setenv("DB_POOL_SIZE", "4")
    config.get_settings.cache_clear()
    db.dispose_engine()
    reserve, execute_hot = set(users._RESERVE.values()), users.execute_hot
    runs: list[int] = []
    pool = ThreadPoolExecutor(2)
    helpers: list[Any] = []

    def first_request_racing() -> None:
        """Another first request's row, uncommitted until this run's INSERT waits on it."""
        other = psycopg.connect(direct_database_url)
        other.execute(
            'INSERT INTO users (id, email, "updatedAt", "trialEndsAt")'
            " VALUES ('user_raced', 'raced@example.com', now(), now() + interval '7 days')"
        )

        def commit_when_waited_on() -> None:
            with psycopg.connect(direct_database_url, autocommit=True) as watcher:
                waits_for_lock(watcher, RESERVATION)
            other.commit()
            other.close()

        helpers.append(pool.submit(commit_when_waited_on))

    def erasure_holding_the_row() -> None:
        erasing, release = threading.Event(), threading.Event()

        def erase_slowly(conn: Conn) -> None:
            accounts.erase(conn, "user_raced", refuse_live_subscription=True)
            erasing.set()
            assert release.wait(30)  # the row lock is held until this transaction commits

        def release_when_waited_on() -> None:
            with psycopg.connect(direct_database_url, autocommit=True) as watcher:
                waits_for_lock(watcher, RESERVATION)
            release.set()

        helpers.append(pool.submit(db.transaction, erase_slowly))
        assert erasing.wait(30)
        helpers.append(pool.submit(release_when_waited_on))

    def racing(conn: Conn, statement: Any, params: Any) -> Any:
        if statement in reserve:
            runs.append(1)
            if len(runs) in (1, 3):
                first_request_racing()
            elif len(runs) == 2:
                erasure_holding_the_row()
        return execute_hot(conn, statement, params)

    monkeypatch.setattr(users, "execute_hot", racing)
    limits = Limits(trial=TRIAL_LIMIT, pro=100, enterprise=1000)
    with pool:
        usage = db.run(
            lambda conn: users.reserve_keywords(
                conn, "user_raced", "raced@example.com", 1, limits=limits, enforce=True
            )
        )
        for helper in helpers:
            helper.result()
    assert len(runs) == 4  # lost, erased, lost, counted
    assert (usage.this_month, usage.total) == (1, 1)
    assert admin_conn.execute(
        'SELECT "keywordSearchesTotal" FROM users WHERE id = %s', ("user_raced",)
    ).fetchone() == (1,)


def searches_behind_an_erasure(
    admin_conn: psycopg.Connection[Any], call: Caller, user_id: str, *, searches: int
) -> list[Any]:
    """Erase `user_id` in a transaction that holds its row lock until `searches` one-keyword
    searches wait on it, then commit: their answers."""
    erasing, release = threading.Event(), threading.Event()

    def erase_slowly(conn: Conn) -> None:
        accounts.erase(conn, user_id, refuse_live_subscription=True)
        erasing.set()
        assert release.wait(30)  # the row lock is held until this transaction commits

    with ThreadPoolExecutor(searches + 1) as pool:
        erasure = pool.submit(db.transaction, erase_slowly)
        assert erasing.wait(30)
        waiting = [pool.submit(search, call, user_id, 1) for _ in range(searches)]
        waits_for_lock(admin_conn, RESERVATION, backends=searches)
        release.set()
        erasure.result()
        return [each.result() for each in waiting]


def waits_for_lock(conn: psycopg.Connection[Any], statement: str, backends: int = 1) -> None:
    """Return once `backends` backends running `statement` wait on a lock (observed, not timed)."""
    for _ in range(3000):
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE wait_event_type = 'Lock' AND strpos(query, %s) > 0",
            (statement,),
        ).fetchone()
        if row and row[0] >= backends:
            return
        threading.Event().wait(0.01)  # between observations of the server's lock table
    raise AssertionError(f"no backend ever waited on a lock running {statement!r}")


# --- POST /api/keywords racing DELETE /api/me --------------------------------------------------


def test_a_search_whose_user_is_erased_midway_is_answered_and_leaves_no_orphans(
    api_env: Keys, monkeypatch: pytest.MonkeyPatch, admin_conn: psycopg.Connection[Any]
) -> None:
    """The erasure commits between the reservation and the history insert (the provider call
    waits for it): the search is answered as the saved-search route answers a vanished user
    (a new account, continuing the tombstoned trial), never with a 500."""
    configure(
        monkeypatch,
        KEYWORD_API_PROVIDER="dataforseo",
        DATAFORSEO_API_LOGIN="login",
        DATAFORSEO_API_PASSWORD="pw",
        DB_POOL_SIZE="4",
    )
    db.dispose_engine()
    call = Caller("lambda_v2", api_env)
    assert with_token(call, "me", "GET", "/api/me", "user_race").status == 200
    in_provider, erased = threading.Event(), threading.Event()
    payload = (FIXTURES / "search_volume_ok.json").read_text()

    def upstream(request: Any) -> HttpxResponse:
        in_provider.set()
        assert erased.wait(30)
        return HttpxResponse(200, text=payload)

    with respx.mock(assert_all_called=False) as mock, ThreadPoolExecutor(2) as pool:
        mock.post(url__regex=r"https://api\.dataforseo\.com/.*").mock(side_effect=upstream)
        mock.route(url__startswith=os.environ["UPSTASH_REDIS_REST_URL"]).pass_through()
        searching = pool.submit(search, call, "user_race", 3)
        assert in_provider.wait(30)
        deleted = pool.submit(with_token, call, "me", "DELETE", "/api/me", "user_race").result()
        erased.set()
        answered = searching.result()
    assert deleted.status == 200
    assert answered.status == 200, answered.text
    assert admin_conn.execute(
        'SELECT "keywordSearchesTotal" FROM users WHERE id = %s', ("user_race",)
    ).fetchone() == (3,)  # the reservation went with the account into its tombstone
    orphans = admin_conn.execute(
        'SELECT count(*) FROM search_history h WHERE "userId" IS NOT NULL'
        ' AND NOT EXISTS (SELECT 1 FROM users u WHERE u.id = h."userId")'
    ).fetchone()
    assert orphans == (0,)
    history = admin_conn.execute('SELECT "userId" FROM search_history').fetchall()
    assert history == [("user_race",)]


def test_a_search_whose_user_clerk_deletes_midway_is_refused_and_leaves_nothing(
    api_env: Keys, monkeypatch: pytest.MonkeyPatch, admin_conn: psycopg.Connection[Any]
) -> None:
    """As above, but the erasure is Clerk's user.deleted: the id never comes back, so the
    search cannot provision the caller again to record itself. It answers 401 and leaves no
    row, history or usage naming the user."""
    from tests.support.clerk_events import SECRET

    configure(
        monkeypatch,
        KEYWORD_API_PROVIDER="dataforseo",
        DATAFORSEO_API_LOGIN="login",
        DATAFORSEO_API_PASSWORD="pw",
        DB_POOL_SIZE="4",
        CLERK_WEBHOOK_SECRET=SECRET,
    )
    db.dispose_engine()
    call = Caller("lambda_v2", api_env)
    assert with_token(call, "me", "GET", "/api/me", "user_race").status == 200
    in_provider, erased = threading.Event(), threading.Event()
    payload = (FIXTURES / "search_volume_ok.json").read_text()

    def upstream(request: Any) -> HttpxResponse:
        in_provider.set()
        assert erased.wait(30)
        return HttpxResponse(200, text=payload)

    with respx.mock(assert_all_called=False) as mock, ThreadPoolExecutor(2) as pool:
        mock.post(url__regex=r"https://api\.dataforseo\.com/.*").mock(side_effect=upstream)
        mock.route(url__startswith=os.environ["UPSTASH_REDIS_REST_URL"]).pass_through()
        searching = pool.submit(search, call, "user_race", 3)
        assert in_provider.wait(30)
        deleted = pool.submit(deliver, call, "user.deleted", {"id": "user_race"}).result()[0]
        erased.set()
        answered = searching.result()
    assert deleted.status == 200, deleted.text
    assert (answered.status, answered.json["message"]) == (
        401,
        "Authentication required. Please sign in to use KeyFlash.",
    )
    usage.settle()  # the usage rows sent on the threads' connections are written
    tables = ("users", "search_history", "api_usage", "keyword_reservations")
    for table in tables:
        column = "id" if table == "users" else '"userId"'
        found = admin_conn.execute(f"SELECT count(*) FROM {table} WHERE {column} = 'user_race'")
        assert found.fetchone() == (0,), table


def test_searches_racing_erasures_never_answer_500(
    api_env: Keys, monkeypatch: pytest.MonkeyPatch, admin_conn: psycopg.Connection[Any]
) -> None:
    """Free-running: each round, 6 searches and an erasure of the same user start together on
    their own connections. Whatever interleaving the server picks, nothing answers 500 and no
    history row points at a missing user."""
    configure(monkeypatch, DB_POOL_SIZE="8", MOCK_PROVIDER_SEED="3")
    db.dispose_engine()
    call = Caller("lambda_v2", api_env)
    statuses: list[int] = []
    for round_ in range(5):
        who = f"user_storm_{round_}"
        assert with_token(call, "me", "GET", "/api/me", who).status == 200
        start = threading.Barrier(7)

        def one(index: int, who: str = who, start: threading.Barrier = start) -> int:
            start.wait()
            if index == 0:
                return int(with_token(call, "me", "DELETE", "/api/me", who).status)
            return int(search(call, who, 2).status)

        with ThreadPoolExecutor(7) as pool:
            statuses += list(pool.map(one, range(7)))
    assert set(statuses) == {200}, statuses
    orphans = admin_conn.execute(
        'SELECT count(*) FROM search_history h WHERE "userId" IS NOT NULL'
        ' AND NOT EXISTS (SELECT 1 FROM users u WHERE u.id = h."userId")'
    ).fetchone()
    assert orphans == (0,)


@pytest.mark.parametrize("tier", ["FREE", "PRO", "ENTERPRISE"])
@pytest.mark.parametrize("trial_ends_in", [timedelta(seconds=-1), timedelta(0), timedelta(days=1)])
@pytest.mark.parametrize("stale", [False, True])
@pytest.mark.parametrize("used_to_limit", [-2, -1, 0])
def test_the_python_usage_view_agrees_with_the_statements_quota_rule(
    db_env: str,
    admin_conn: psycopg.Connection[Any],
    tier: str,
    trial_ends_in: timedelta,
    stale: bool,
    used_to_limit: int,
) -> None:
    """Reviewer s53r L1: a refusal is taken for "erased since the snapshot" whenever the Python
    view says the request fits (`reserve_keywords`), so the two rules must agree: here on the
    real statement, at the trial's end and the limits' edges, in a stale month or not."""
    now = utcnow()
    limits = Limits(trial=TRIAL_LIMIT, pro=100, enterprise=1000)
    count = 2
    limit = {"FREE": limits.trial, "PRO": limits.pro, "ENTERPRISE": limits.enterprise}[tier]
    used = limit + used_to_limit
    db.run(lambda conn: users.create(conn, "user_q", "q@example.com"))
    admin_conn.execute(
        """UPDATE users SET tier = %s, "trialEndsAt" = %s, "keywordSearchesTotal" = %s,
               "keywordSearchesThisMonth" = %s, "monthlyResetAt" = %s WHERE id = 'user_q'""",
        (tier, db_time(now + trial_ends_in), used, used,
         db_time(now - timedelta(days=40) if stale else now)),
    )  # fmt: skip
    view = db.run(lambda conn: usage_view(conn.session.get_one(User, "user_q"), limits, now))
    fits = not view.trial_expired and view.used + count <= view.limit

    def reserve(conn: Conn) -> users.Usage:
        return users.reserve_keywords(
            conn, "user_q", "q@example.com", count, limits=limits, enforce=True, now=now
        )

    if fits:
        db.run(reserve)
    else:
        with pytest.raises((QuotaExceededError, TrialExpiredError)):
            db.run(reserve)
