"""An organization's pooled quota on the real database, both lanes: the reservation statement
(get-or-create, the tier's limit, the lazy monthly reset, tombstones), races over real
connections, the give-back to the organization by a release and by the reconcile cron, and the
usage view the org usage route reads."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from shared import config, db
from shared.clock import next_month_start
from shared.cron import reservations as reservations_cron
from shared.cron.runner import run_job
from shared.errors import OrganizationNotFoundError, QuotaExceededError, UserNotFoundError
from shared.models import UserTier
from shared.models.organizations import Organization
from shared.quotas import Limits, OrgLimits, OrgUsageView, org_usage_view
from shared.repositories import org_quota, organizations, reservations, users
from tests.core.test_concurrency import WORKERS, race

pytestmark = pytest.mark.usefixtures("db_env")

LIMITS = OrgLimits(free=100, pro=500, enterprise=1000)
NOW = datetime(2026, 12, 4, 13, 0, tzinfo=UTC)
ORG = "org_team1"
HOLDS = itertools.count()


@pytest.fixture
def wide_pool(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A connection per racing thread, so the races happen in Postgres."""
    monkeypatch.setenv("DB_POOL_SIZE", str(WORKERS))
    config.get_settings.cache_clear()
    db.dispose_engine()
    yield
    db.dispose_engine()


def member(user_id: str) -> None:
    db.run(lambda conn: users.get_or_create(conn, user_id, f"{user_id}@example.com"))


def hold(name: str, expires_at: datetime = NOW + timedelta(minutes=5)) -> reservations.Hold:
    return reservations.Hold(name, expires_at)


def reserve(
    count: int,
    *,
    user_id: str = "user_a",
    org_id: str = ORG,
    now: datetime = NOW,
    enforce: bool = True,
    held: reservations.Hold | None = None,
) -> org_quota.OrgUsage:
    return db.run(
        lambda conn: org_quota.reserve_keywords(
            conn, org_id, user_id, count, slug="team", limits=LIMITS, enforce=enforce, now=now,
            hold=held or hold(f"h-{next(HOLDS)}"),
        )
    )  # fmt: skip


def org_counters(admin: psycopg.Connection[Any], org_id: str = ORG) -> tuple[int, int]:
    row = admin.execute(
        'SELECT "keywordSearchesThisMonth", "keywordSearchesTotal" FROM organizations'
        " WHERE id = %s",
        (org_id,),
    ).fetchone()
    assert row is not None
    return row[0], row[1]


def user_counters(admin: psycopg.Connection[Any], user_id: str) -> tuple[int, int]:
    row = admin.execute(
        'SELECT "keywordSearchesThisMonth", "keywordSearchesTotal" FROM users WHERE id = %s',
        (user_id,),
    ).fetchone()
    assert row is not None
    return row[0], row[1]


def held_rows(admin: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return admin.execute(
        'SELECT id, "userId", "organizationId", keywords FROM keyword_reservations ORDER BY id'
    ).fetchall()


def set_org(admin: psycopg.Connection[Any], sql: str, org_id: str = ORG) -> None:
    admin.execute(f"UPDATE organizations SET {sql} WHERE id = %s", (org_id,))


# --- the reservation statement ---------------------------------------------------------------


def test_the_first_search_creates_the_org_counts_and_holds(
    admin_conn: psycopg.Connection[Any],
) -> None:
    member("user_a")
    usage = reserve(7, held=hold("h1"))
    assert usage == org_quota.OrgUsage(this_month=7, tier=UserTier.FREE)
    row = admin_conn.execute(
        'SELECT name, slug, tier::text, "monthlyResetAt" FROM organizations WHERE id = %s', (ORG,)
    ).fetchone()
    assert row == ("team", "team", "FREE", NOW.replace(tzinfo=None))
    assert org_counters(admin_conn) == (7, 7)
    assert held_rows(admin_conn) == [("h1", "user_a", ORG, 7)]
    assert user_counters(admin_conn, "user_a") == (0, 0)  # the member's own quota untouched


def test_members_share_the_pool_up_to_the_tier_limit(admin_conn: psycopg.Connection[Any]) -> None:
    member("user_a")
    member("user_b")
    assert reserve(60, user_id="user_a").this_month == 60
    assert reserve(40, user_id="user_b").this_month == 100
    with pytest.raises(QuotaExceededError) as refused:
        reserve(1, user_id="user_a")
    assert (refused.value.used, refused.value.limit, refused.value.requested) == (100, 100, 1)
    assert not refused.value.trial
    assert org_counters(admin_conn) == (100, 100)
    assert len(held_rows(admin_conn)) == 2  # none for the refused search


@pytest.mark.parametrize(("tier", "limit"), [("PRO", 500), ("ENTERPRISE", 1000)])
def test_each_tier_has_its_own_limit(
    admin_conn: psycopg.Connection[Any], tier: str, limit: int
) -> None:
    member("user_a")
    reserve(1)
    set_org(admin_conn, f"tier = '{tier}'")
    assert reserve(limit - 1).this_month == limit
    with pytest.raises(QuotaExceededError) as refused:
        reserve(1)
    assert (refused.value.used, refused.value.limit) == (limit, limit)


def test_a_first_search_beyond_the_free_limit_creates_the_org_and_counts_nothing(
    admin_conn: psycopg.Connection[Any],
) -> None:
    member("user_a")
    with pytest.raises(QuotaExceededError) as refused:
        reserve(101)
    assert (refused.value.used, refused.value.limit, refused.value.requested) == (0, 100, 101)
    assert org_counters(admin_conn) == (0, 0)
    assert held_rows(admin_conn) == []


def test_billing_off_limits_nothing_and_still_counts(admin_conn: psycopg.Connection[Any]) -> None:
    member("user_a")
    assert reserve(150, enforce=False).this_month == 150
    assert reserve(150, enforce=False).this_month == 300
    assert org_counters(admin_conn) == (300, 300)
    assert len(held_rows(admin_conn)) == 2


def test_the_monthly_counter_resets_lazily_in_a_new_utc_month(
    admin_conn: psycopg.Connection[Any],
) -> None:
    member("user_a")
    reserve(100)
    with pytest.raises(QuotaExceededError):
        reserve(1)
    january = datetime(2027, 1, 1, 0, 0, 1, tzinfo=UTC)
    assert reserve(30, now=january).this_month == 30
    row = admin_conn.execute(
        'SELECT "keywordSearchesThisMonth", "keywordSearchesTotal", "monthlyResetAt"'
        " FROM organizations WHERE id = %s",
        (ORG,),
    ).fetchone()
    assert row == (30, 130, january.replace(tzinfo=None))
    assert reserve(5, now=january + timedelta(days=3)).this_month == 35  # same month: no reset


def test_a_deleted_org_counts_nothing(admin_conn: psycopg.Connection[Any]) -> None:
    member("user_a")
    reserve(5)
    set_org(admin_conn, '"deletedAt" = now()')
    with pytest.raises(OrganizationNotFoundError):
        reserve(1)
    with pytest.raises(OrganizationNotFoundError):
        reserve(1, enforce=False)
    assert org_counters(admin_conn) == (5, 5)
    assert len(held_rows(admin_conn)) == 1


def test_a_user_without_a_row_is_told_and_nothing_is_counted(
    admin_conn: psycopg.Connection[Any],
) -> None:
    member("user_a")
    reserve(5)
    with pytest.raises(UserNotFoundError):
        reserve(3, user_id="user_never_provisioned")
    assert org_counters(admin_conn) == (5, 5)
    assert len(held_rows(admin_conn)) == 1


def test_a_mirrored_org_keeps_its_name(admin_conn: psycopg.Connection[Any]) -> None:
    db.run(lambda conn: organizations.ensure(conn, ORG, slug="acme"))
    admin_conn.execute("UPDATE organizations SET name = 'Acme Inc.' WHERE id = %s", (ORG,))
    member("user_a")
    reserve(2)
    row = admin_conn.execute("SELECT name, slug FROM organizations WHERE id = %s", (ORG,))
    assert row.fetchone() == ("Acme Inc.", "acme")


# --- races -----------------------------------------------------------------------------------


@pytest.mark.usefixtures("wide_pool")
def test_forty_racing_searches_never_pass_the_org_limit(
    admin_conn: psycopg.Connection[Any],
) -> None:
    """Forty members' searches of 7 keywords at once against 100: exactly floor(100 / 7) = 14
    are counted, each with its reservation; the rest change nothing."""
    for index in range(40):
        member(f"user_{index}")
    outcomes = race(lambda i: reserve(7, user_id=f"user_{i}", held=hold(f"race-{i:02}")), 40)
    kinds = Counter(type(o).__name__ for o in outcomes)
    assert kinds == {"OrgUsage": 14, "QuotaExceededError": 26}
    granted = sorted(o.this_month for o in outcomes if isinstance(o, org_quota.OrgUsage))
    assert granted == list(range(7, 99, 7))  # each count seen once: no lost update
    assert all(o.used + 7 > 100 for o in outcomes if isinstance(o, QuotaExceededError))
    assert org_counters(admin_conn) == (98, 98)
    assert len(held_rows(admin_conn)) == 14


@pytest.mark.usefixtures("wide_pool")
def test_the_first_searches_of_a_new_org_race_to_one_row(
    admin_conn: psycopg.Connection[Any],
) -> None:
    """Twenty members search at once in an org nobody has seen: one row, every search counted
    once (a racing insert becomes an update of the winner's row)."""
    for index in range(20):
        member(f"user_{index}")
    outcomes = race(lambda i: reserve(3, user_id=f"user_{i}", held=hold(f"new-{i:02}")), 20)
    assert not [o for o in outcomes if isinstance(o, Exception)]
    assert sorted(o.this_month for o in outcomes) == list(range(3, 61, 3))
    assert admin_conn.execute("SELECT count(*) FROM organizations").fetchone() == (1,)
    assert org_counters(admin_conn) == (60, 60)


# --- giving back -----------------------------------------------------------------------------


def test_a_release_gives_back_to_the_org_once(admin_conn: psycopg.Connection[Any]) -> None:
    member("user_a")
    reserve(10)
    reserve(6, held=hold("failed"))
    assert db.run(lambda conn: reservations.release(conn, "failed", now=NOW)) == 6
    assert db.run(lambda conn: reservations.release(conn, "failed", now=NOW)) == 0
    assert org_counters(admin_conn) == (10, 10)
    assert user_counters(admin_conn, "user_a") == (0, 0)


def test_the_cron_gives_expired_team_and_personal_reservations_back_to_their_owners(
    admin_conn: psycopg.Connection[Any],
) -> None:
    """One batch holding both kinds, of the same user: the team's keywords go back to the
    organization, the personal ones to the user; each once."""
    member("user_a")
    expired = NOW - timedelta(seconds=1)
    reserve(4, held=hold("kept-team"))
    reserve(6, held=hold("killed-team", expired))
    personal = Limits(trial=1000, pro=1000, enterprise=1000)
    db.run(
        lambda conn: users.reserve_keywords(
            conn, "user_a", "user_a@example.com", 5, limits=personal, enforce=True, now=NOW,
            hold=hold("killed-personal", expired),
        )
    )  # fmt: skip
    assert (org_counters(admin_conn), user_counters(admin_conn, "user_a")) == ((10, 10), (5, 5))

    released = db.run(lambda conn: reservations.release_expired(conn, now=NOW, limit=10))
    assert (released.reservations, released.keywords) == (2, 11)
    assert released.given_back == [("user_a", 5, NOW)]  # the legacy counters owe only these
    assert (org_counters(admin_conn), user_counters(admin_conn, "user_a")) == ((4, 4), (0, 0))
    assert [row[0] for row in held_rows(admin_conn)] == ["kept-team"]


def test_the_reconcile_job_gives_a_killed_team_search_back(
    admin_conn: psycopg.Connection[Any],
) -> None:
    member("user_a")
    reserve(8, held=hold("killed", NOW + timedelta(minutes=5)))
    run_job(reservations_cron.JOB, now=NOW + timedelta(minutes=4))  # not expired yet
    assert org_counters(admin_conn) == (8, 8)
    summary = run_job(reservations_cron.JOB, now=NOW + timedelta(minutes=6))
    assert (summary["processed"], summary["keywordsGivenBack"]) == (1, 8)
    assert org_counters(admin_conn) == (0, 0)
    run_job(reservations_cron.JOB, now=NOW + timedelta(minutes=60))  # never twice
    assert org_counters(admin_conn) == (0, 0)


def test_a_give_back_after_the_month_turned_spares_the_new_month(
    admin_conn: psycopg.Connection[Any],
) -> None:
    """A December reservation expiring after January's first search: December's total goes
    down, January's counter does not (it never counted those keywords)."""
    member("user_a")
    reserve(9, held=hold("december", NOW + timedelta(days=40)))
    january = datetime(2027, 1, 2, tzinfo=UTC)
    reserve(2, now=january)
    db.run(lambda conn: reservations.release(conn, "december", now=january))
    assert org_counters(admin_conn) == (2, 2)


@pytest.mark.usefixtures("wide_pool")
def test_racing_releases_and_crons_give_each_team_reservation_back_once(
    admin_conn: psycopg.Connection[Any],
) -> None:
    member("user_a")
    expired = NOW - timedelta(seconds=1)
    reserve(7, held=hold("kept"))  # still within its time
    held = [hold(f"team-{i:02}", expired) for i in range(20)]
    for one in held:
        reserve(3, held=one)

    def give_back(index: int) -> int:
        if index < len(held):
            return db.run(lambda conn: reservations.release(conn, held[index].id, now=NOW))
        return db.run(lambda conn: reservations.release_expired(conn, now=NOW, limit=5)).keywords

    outcomes = race(give_back, len(held) + 10)
    assert not [o for o in outcomes if isinstance(o, Exception)]
    assert sum(outcomes) == 60
    assert org_counters(admin_conn) == (7, 7)
    assert held_rows(admin_conn) == [("kept", "user_a", ORG, 7)]


# --- the usage view ----------------------------------------------------------------------------


def test_the_usage_view_applies_the_lazy_reset_and_the_tier_limit(
    admin_conn: psycopg.Connection[Any],
) -> None:
    member("user_a")
    reserve(40)
    set_org(admin_conn, "tier = 'PRO'")
    org = db.run(lambda conn: conn.session.get(Organization, ORG))
    assert org is not None
    view = org_usage_view(org, LIMITS, NOW)
    assert view == OrgUsageView(UserTier.PRO, 40, 500, next_month_start(NOW))
    assert view.remaining == 460
    later = org_usage_view(org, LIMITS, datetime(2027, 1, 1, tzinfo=UTC))
    assert (later.used, later.remaining) == (0, 500)


def test_the_limits_come_from_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = OrgLimits.from_settings(config.get_settings())
    assert defaults == OrgLimits(free=300, pro=5000, enterprise=50_000)
    monkeypatch.setenv("ORG_FREE_MONTHLY_LIMIT", "10")
    monkeypatch.setenv("ORG_PRO_MONTHLY_LIMIT", "20")
    monkeypatch.setenv("ORG_ENTERPRISE_MONTHLY_LIMIT", "30")
    config.get_settings.cache_clear()
    limits = OrgLimits.from_settings(config.get_settings())
    assert [limits.for_tier(tier) for tier in UserTier] == [10, 20, 30]
