"""Search history: one row per keyword search, listed per user and summarised for analytics."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Text, bindparam, case, exists, func, insert, or_, select, true, tuple_
from sqlalchemy.exc import IntegrityError

from shared import db_timestamps
from shared.clock import utcnow
from shared.db import Conn, HotStatement, execute_hot, violated_constraint
from shared.errors import UserNotFoundError
from shared.ids import new_cuid
from shared.models import UTCDateTime
from shared.models.api_usage import ApiUsage
from shared.models.reservations import KeywordReservation
from shared.models.search_history import SearchHistory
from shared.repositories import api_usage, organizations, reservations
from shared.repositories.pagination import Cursor, Page, page_of
from shared.repositories.rows import RowMapper, db_time, insert_when
from shared.telemetry import database_operation

_USER_FOREIGN_KEY = "search_history_userId_fkey"


# "avgVolume" and "totalVolume" are the original's Prisma `Int` (int4). A few head terms near a
# billion searches a month sum past it: the row keeps the ceiling, the response every volume.
INT4_MAX = 2**31 - 1


@dataclass(frozen=True, slots=True)
class NewSearch:
    user_id: str | None
    keywords: list[str]
    location: str
    language: str
    match_type: str
    provider: str
    cache_hit: bool
    response_time: int
    avg_volume: int = 0
    total_volume: int = 0
    user_agent: str | None = None
    ip_address: str | None = None  # already reduced (see the PII rule)
    organization_id: str | None = None  # the team the search was made for; None: personal


@dataclass(frozen=True, slots=True)
class ProviderStats:
    searches: int
    avg_response_time: float | None
    cache_hit_rate: float | None


@dataclass(frozen=True, slots=True)
class Stats:
    searches: int
    avg_response_time: float | None
    cache_hit_rate: float | None
    providers: dict[str, ProviderStats] = field(default_factory=dict)


def _values(search: NewSearch, row_id: str, now: datetime | None) -> dict[str, Any]:
    """The row's values; a team search names its organization only while it is live, checked
    under its row lock in the same statement (`organizations.live_team`): a search recorded as
    its organization is deleted is its member's own."""
    team = search.organization_id
    if team is not None:
        team = organizations.live_team(team, search.user_id).scalar_subquery()
    return {
        "id": row_id,
        "user_id": search.user_id,
        "keywords": search.keywords,
        "location": search.location,
        "language": search.language,
        "match_type": search.match_type,
        "provider": search.provider,
        "cache_hit": search.cache_hit,
        "response_time": search.response_time,
        "keyword_count": len(search.keywords),
        "avg_volume": min(search.avg_volume, INT4_MAX),
        "total_volume": min(search.total_volume, INT4_MAX),
        "searched_at": now or utcnow(),
        "user_agent": search.user_agent,
        "ip_address": search.ip_address,
        "organization_id": team,
    }


def _insert(search: NewSearch, row_id: str, now: datetime | None) -> Any:
    return insert(SearchHistory).values(**_values(search, row_id, now))


@database_operation("recordSearch")
def record(conn: Conn, search: NewSearch, *, now: datetime | None = None) -> str:
    """Insert one history row and return its id."""
    row_id = new_cuid()
    conn.session.execute(_insert(search, row_id, now))
    return row_id


@database_operation("recordSearchWithUsage")
def record_with_usage(
    conn: Conn,
    search: NewSearch,
    request: api_usage.Request,
    *,
    reservation_id: str | None = None,
    now: datetime | None = None,
) -> str | None:
    """The history row and the request's `api_usage` row in ONE statement (a data-modifying
    CTE): a keyword search's second and last round trip. It also confirms the search's quota
    reservation (deletes it), so the search is recorded exactly when its keywords stay counted.
    A user erased since the search began (the foreign key finds no row) raises
    `UserNotFoundError`; nothing is written.

    A team search's reservation may be gone while its organization is live (its member's
    erasure gave it back): then nothing is written and None returned, for the caller to count
    the keywords again (`shared.keyword_search`). Otherwise the new row's id."""
    row_id = new_cuid()
    user_id, org_id = search.user_id, search.organization_id
    team_held = False
    if reservation_id is not None and user_id is not None and org_id is not None:
        team_held = True
        kept = (
            reservations.confirm_statement(reservation_id, user_id, org_id)
            .returning(KeywordReservation.id)
            .cte("kept")
        )
        # Confirmed, or no live team to count it (deleted: the member's own search; the user
        # gone: the foreign key refuses the row).
        counted = or_(exists(select(kept.c.id)), ~exists(organizations.live_team(org_id, user_id)))
        history = (
            insert_when(SearchHistory, _values(search, row_id, now), counted)
            .returning(SearchHistory.id)
            .cte("history")
        )
        statement = (
            api_usage.insert_statement_when(request, exists(select(history.c.id)))
            .add_cte(kept, history)
            .returning(ApiUsage.id)
        )
    else:
        history = _insert(search, row_id, now).cte("history")
        statement = api_usage.insert_statement([request]).add_cte(history)
        if reservation_id is not None and user_id is not None:
            confirmed = reservations.confirm_statement(reservation_id, user_id).cte("kept")
            statement = statement.add_cte(confirmed)
    try:
        written = conn.session.execute(statement)
    except IntegrityError as error:
        if violated_constraint(error) == _USER_FOREIGN_KEY and user_id is not None:
            raise UserNotFoundError(user_id) from None
        raise
    if team_held and written.first() is None:
        return None
    return row_id


@database_operation("listSearchHistory")
def list_for_user(
    conn: Conn,
    user_id: str,
    *,
    limit: int = 20,
    cursor: Cursor | None = None,
) -> Page[SearchHistory]:
    """Newest first, keyset-paginated on (searchedAt, id), one row more than a page to know
    whether another follows.

    Read through the server function `search_history_page` (revision 0015): planning this read
    over every partition kept costs more than running it, and the server keeps the function's
    plans per server connection, whether or not the client can prepare statements.

    A cursor at a bound of Python's range (`shared.db_timestamps`) may stand for a row dated
    past it (`infinity`, year 10000, BC), and several such rows load as one time: the page
    then goes on from that row's own stored time, read by its id."""
    params: dict[str, Any] = {"user_id": user_id, "limit": limit + 1}
    statement = _PAGE
    if cursor is None:
        params.update(before_at=None, before_id=None)
    else:
        params.update(before_at=db_time(cursor[0]), before_id=cursor[1])
        if params["before_at"] in (db_timestamps.LATEST, db_timestamps.EARLIEST):
            statement = _PAGE_AFTER_ROW
    rows = execute_hot(conn, statement, params).fetchall()
    return page_of(rows, limit, _row_from, lambda row: (row.searched_at, row.id))


_COLUMNS = list(SearchHistory.__table__.columns)
_SELECT_PAGE = "SELECT " + ", ".join(f'"{column.name}"' for column in _COLUMNS)
_ORDER = ' ORDER BY "searchedAt" DESC, id DESC'
# the function returns them in that order; SQL promises an order only where it is written
_PAGE = HotStatement(
    _SELECT_PAGE
    + " FROM search_history_page(%(user_id)s, %(limit)s, %(before_at)s::timestamp,"
    + " %(before_id)s::text)"
    + _ORDER
)
_PAGE_AFTER_ROW = HotStatement(
    _SELECT_PAGE
    + """ FROM search_history_page(%(user_id)s, %(limit)s, coalesce(
            (SELECT "searchedAt" FROM search_history
              WHERE "userId" = %(user_id)s AND id = %(before_id)s::text
              ORDER BY "searchedAt" DESC LIMIT 1),
            %(before_at)s::timestamp), %(before_id)s::text)"""
    + _ORDER
)  # the cursor's row gone since (erased, pruned): its time as the cursor says
_row_from = RowMapper(SearchHistory, _COLUMNS)


@database_operation("searchHistoryStats")
def stats(
    conn: Conn,
    *,
    since: datetime,
    until: datetime | None = None,
    user_id: str | None = None,
    organization_id: str | None = None,
) -> Stats:
    """Totals and per-provider figures over [since, until) in one query (GROUPING SETS), of
    everyone's searches, one user's, or those made for one organization."""
    if user_id is not None and organization_id is not None:
        raise ValueError("stats of a user or of an organization, not both")
    statement, owner = _STATS, None
    if user_id is not None:
        statement, owner = _STATS_OF_USER, user_id
    elif organization_id is not None:
        statement, owner = _STATS_OF_ORGANIZATION, organization_id
    params = {"p_since": db_time(since), "p_until": db_time(until or utcnow()), "p_owner": owner}
    total = Stats(searches=0, avg_response_time=None, cache_hit_rate=None)
    providers: dict[str, ProviderStats] = {}
    for provider, is_total, count, avg_time, rate in execute_hot(conn, statement, params):
        figures = (count, _float(avg_time), _float(rate))
        if is_total:
            total = Stats(*figures)
        else:
            providers[provider] = ProviderStats(*figures)
    return Stats(total.searches, total.avg_response_time, total.cache_hit_rate, providers)


def _stats_statement(owner: Any = None) -> Any:
    """`stats`' query, built once per shape (binds p_since, p_until and, with an `owner` column,
    p_owner)."""
    hit_rate = func.avg(case((SearchHistory.cache_hit, 1.0), else_=0.0))
    statement = (
        select(
            SearchHistory.provider,
            func.grouping(SearchHistory.provider),
            func.count(),
            func.avg(SearchHistory.response_time),
            hit_rate,
        )
        .where(
            SearchHistory.searched_at >= bindparam("p_since", type_=UTCDateTime()),
            SearchHistory.searched_at < bindparam("p_until", type_=UTCDateTime()),
        )
        .group_by(func.grouping_sets(tuple_(), tuple_(SearchHistory.provider)))
    )
    if owner is not None:
        statement = statement.where(owner == bindparam("p_owner", type_=Text()))
    return statement


_STATS = HotStatement(_stats_statement)
_STATS_OF_USER = HotStatement(lambda: _stats_statement(SearchHistory.user_id))
_STATS_OF_ORGANIZATION = HotStatement(lambda: _stats_statement(SearchHistory.organization_id))


def _float(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class KeywordCount:
    keyword: str
    searches: int


@database_operation("searchesPerDay")
def searches_per_day(
    conn: Conn, *, since: datetime, until: datetime, organization_id: str | None = None
) -> dict[datetime, int]:
    """Searches per UTC day (keyed by the day's midnight) over [since, until), in one query;
    days without a search are absent (the caller zero-fills). With `organization_id`: only the
    searches made for that organization."""
    day = func.date_trunc("day", SearchHistory.searched_at, type_=UTCDateTime()).label("day")
    statement = _of_organization(
        select(day, func.count())
        .where(SearchHistory.searched_at >= since, SearchHistory.searched_at < until)
        .group_by(day),
        organization_id,
    )
    return {row[0]: row[1] for row in conn.session.execute(statement)}


@database_operation("topKeywords")
def top_keywords(
    conn: Conn,
    *,
    since: datetime,
    until: datetime,
    limit: int = 10,
    organization_id: str | None = None,
) -> list[KeywordCount]:
    """The most searched keywords over [since, until) in one query: each search's distinct
    keywords (`lower(btrim(keyword))` of `unnest(keywords)`, blanks dropped), so a search
    naming one twice counts once; ties in alphabetical order. With `organization_id`: only the
    searches made for that organization."""
    unnested = func.unnest(SearchHistory.keywords).table_valued("keyword").render_derived()
    named = (
        select(func.lower(func.btrim(unnested.c.keyword)).label("keyword"))
        .select_from(unnested)
        .where(func.btrim(unnested.c.keyword) != "")
        .distinct()
        .lateral("named")
    )
    searches = func.count().label("searches")
    statement = (
        select(named.c.keyword, searches)
        .select_from(SearchHistory)
        .join(named, true())
        .where(SearchHistory.searched_at >= since, SearchHistory.searched_at < until)
        .group_by(named.c.keyword)
        .order_by(searches.desc(), named.c.keyword)
        .limit(limit)
    )
    return [
        KeywordCount(row[0], row[1])
        for row in conn.session.execute(_of_organization(statement, organization_id))
    ]


def _of_organization(statement: Any, organization_id: str | None) -> Any:
    """The statement cut to one organization's searches (None: everyone's)."""
    if organization_id is None:
        return statement
    return statement.where(SearchHistory.organization_id == organization_id)
