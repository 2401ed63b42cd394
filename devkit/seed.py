"""Demo data for a local database, written through the repositories like real traffic.

Going through `shared.repositories` (not raw SQL) means the seed obeys the same rules the
functions do: ids of the right shape, the 50-search limit, timestamps in UTC milliseconds. It
runs once: `keyflash dev` seeds a database that has no `demo` user, `keyflash db seed` says so
when there is nothing to do. Callers point `shared` at the database first (DATABASE_URL).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from shared import db
from shared.clock import utcnow
from shared.db import Conn
from shared.models import UserTier
from shared.repositories import (
    feature_flags,
    organizations,
    saved_searches,
    search_history,
    users,
)

DEMO_USER = "demo"


@dataclass(frozen=True)
class DemoUser:
    user_id: str
    email: str
    tier: UserTier
    searches: tuple[saved_searches.NewSavedSearch, ...]
    history: tuple[tuple[str, ...], ...]  # keyword lists, oldest first


def _result(keyword: str, volume: int, cpc: float, competition: str) -> dict[str, Any]:
    return {
        "keyword": keyword,
        "searchVolume": volume,
        "difficulty": 42,
        "cpc": cpc,
        "competition": competition,
        "intent": "commercial",
    }


# PRO for `demo`, so the tour's keyword searches never hit an expired trial on an old state dir.
DEMO_USERS = (
    DemoUser(
        user_id=DEMO_USER,
        email="demo@keyflash.local",
        tier=UserTier.PRO,
        searches=(
            saved_searches.NewSavedSearch(
                name="Trail running shoes",
                description="Spring campaign research",
                keywords=["trail running shoes", "waterproof trail shoes"],
                location="US",
                language="en",
                match_type="phrase",
                results=[
                    _result("trail running shoes", 49500, 1.85, "high"),
                    _result("waterproof trail shoes", 8100, 1.4, "medium"),
                ],
            ),
            saved_searches.NewSavedSearch(
                name="Home espresso",
                keywords=["espresso machine", "burr grinder", "milk frother"],
                location="GB",
                language="en",
                match_type="exact",
            ),
        ),
        history=(
            ("espresso machine", "burr grinder"),
            ("trail running shoes",),
            ("keyword research tool", "seo keywords"),
        ),
    ),
    DemoUser(
        user_id="demo_trial",
        email="trial@keyflash.local",
        tier=UserTier.FREE,
        searches=(
            saved_searches.NewSavedSearch(
                name="Indoor plants",
                keywords=["snake plant", "monstera care"],
                location="CA",
                language="en",
                match_type="phrase",
            ),
        ),
        history=(("snake plant",),),
    ),
)
DEMO_FLAG = "new-dashboard"
# A two-person team, mirrored as Clerk's organization webhooks would leave it: `demo` its admin,
# `demo_trial` a member (`keyflash clerk-org` makes more, through the webhook itself).
DEMO_ORG = ("org_demo", "KeyFlash Demo Team", "demo-team")  # id, name, slug
DEMO_MEMBERS = ((DEMO_USER, "org:admin"), ("demo_trial", "org:member"))


@dataclass(frozen=True)
class SeedSummary:
    users: int
    saved_searches: int
    history: int
    flags: int
    teams: int

    def __str__(self) -> str:
        return (
            f"{self.users} users, {self.saved_searches} saved searches, "
            f"{self.history} history rows, {self.flags} feature flag, {self.teams} team"
        )


def is_seeded() -> bool:
    """Whether the demo user exists (the seed's marker: it is written first)."""
    return db.run(lambda conn: users.get(conn, DEMO_USER), idempotent=True) is not None


def seed(*, now: datetime | None = None) -> SeedSummary | None:
    """Write the demo users, their saved searches and history, and a flag; None if seeded."""
    if is_seeded():
        return None
    now = now or utcnow()
    searches = history = 0
    for person in DEMO_USERS:
        db.run(
            partial(
                users.create, user_id=person.user_id, email=person.email, tier=person.tier, now=now
            )
        )
        for offset, search in enumerate(person.searches):
            created_at = now - timedelta(days=len(person.searches) - offset)
            db.transaction(
                partial(
                    saved_searches.create, user_id=person.user_id, search=search, now=created_at
                )
            )
            searches += 1
        for offset, keywords in enumerate(person.history):
            row = search_history.NewSearch(
                user_id=person.user_id,
                keywords=list(keywords),
                location="US",
                language="en",
                match_type="phrase",
                provider="mock",
                cache_hit=offset % 2 == 1,
                response_time=120 + 40 * offset,
                avg_volume=2400,
                total_volume=2400 * len(keywords),
                user_agent="keyflash-seed",
            )
            searched_at = now - timedelta(hours=len(person.history) - offset)
            db.run(partial(search_history.record, search=row, now=searched_at))
            history += 1
    db.run(
        lambda conn: feature_flags.upsert(
            conn,
            DEMO_FLAG,
            feature_flags.FlagValues(
                enabled=True,
                rollout_percent=50,
                allowed_users=(DEMO_USER,),
                description="Demo flag: half of the users, and always `demo`",
            ),
            created_by=DEMO_USER,
            now=now,
        )
    )
    db.transaction(partial(_demo_team, now=now))
    return SeedSummary(len(DEMO_USERS), searches, history, 1, 1)


def _demo_team(conn: Conn, *, now: datetime) -> None:
    """The demo team, through the mirror's own upserts (what the Clerk webhook applies)."""
    org_id, name, slug = DEMO_ORG
    team = organizations.MirroredOrganization(org_id, name, slug, changed_at=now)
    organizations.mirror_organization(conn, team, now=now)
    for user_id, role in DEMO_MEMBERS:
        member = organizations.MirroredMembership(
            org_id, user_id, role, (), joined_at=now, changed_at=now, deleted=False
        )
        organizations.mirror_membership(conn, member, now=now)
