"""The JSON bodies the routes answer on success, as TypedDicts, for the OpenAPI document only.

The routes build their bodies by hand (no response validation on a hot path); these shapes say
what those builders produce, key for key: a key the builder leaves out when it has no value
(`compact`) is `NotRequired`, one it sends as `null` is `| None`. Routes name a shape with
`shared.http.openapi.body`, which imports this module only when the document is built, never on
a function's cold start (tests/structure/test_import_discipline.py).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, NotRequired

from pydantic import ConfigDict, WithJsonSchema, with_config
from typing_extensions import TypedDict  # pydantic needs this one on 3.11

from shared.brief import Brief
from shared.providers.base import KeywordData, RelatedKeywordData

Timestamp = Annotated[str, WithJsonSchema({"type": "string", "format": "date-time"})]
Day = Annotated[str, WithJsonSchema({"type": "string", "format": "date"})]
Tier = Literal["FREE", "PRO", "ENTERPRISE"]
EXACT = ConfigDict(extra="forbid")  # documents `additionalProperties: false`: no other key


@with_config(EXACT)
class Success(TypedDict):
    """A delete's answer."""

    success: Literal[True]


# Saved searches, personal and team (docs/original-app.md#saved-searches-apisearches).


@with_config(EXACT)
class SearchMetadata(TypedDict):
    createdAt: Timestamp
    updatedAt: Timestamp
    lastRunAt: NotRequired[Timestamp]
    resultCount: NotRequired[int]


@with_config(EXACT)
class StoredSearchParams(TypedDict):
    """As stored: `matchType` is `broad` on rows the original app wrote without one."""

    keywords: list[str]
    matchType: str
    location: str
    language: str


class SavedTrend(TypedDict):
    month: int
    year: int
    volume: float | None


class SavedRow(TypedDict):
    """A keyword row as saved (docs/keyword-search.md#saved-results): numbers as sent, an
    optional key left out rather than null."""

    keyword: str
    searchVolume: float | None
    cpc: float | None
    competition: Literal["low", "medium", "high"] | None
    intent: Literal["informational", "commercial", "transactional", "navigational"] | None
    difficulty: NotRequired[float]
    trends: NotRequired[list[SavedTrend]]
    noData: NotRequired[bool]
    relevance: NotRequired[int]


@with_config(EXACT)
class SavedSearch(TypedDict):
    """The whole record. `clerkUserId` is absent on a team search whose creator was erased;
    `results` holds the rows as saved (a writer other than the API, such as Prisma, may have
    stored other JSON: docs/typescript.md)."""

    id: str
    clerkUserId: NotRequired[str]
    name: str
    description: NotRequired[str]
    searchParams: StoredSearchParams
    results: NotRequired[list[SavedRow]]
    metadata: SearchMetadata


@with_config(EXACT)
class SavedSearchSummary(TypedDict):
    id: str
    name: str
    description: NotRequired[str]
    keywordCount: int
    location: str
    metadata: SearchMetadata


@with_config(EXACT)
class SavedSearchList(TypedDict):
    searches: list[SavedSearchSummary]


@with_config(EXACT)
class SavedSearchAnswer(TypedDict):
    search: SavedSearch


@with_config(EXACT)
class TeamSearch(SavedSearch):
    """The personal record plus its creator's user id (null once the creator is erased)."""

    createdBy: str | None


@with_config(EXACT)
class TeamSearchSummary(SavedSearchSummary):
    createdBy: str | None


@with_config(EXACT)
class TeamSearchList(TypedDict):
    searches: list[TeamSearchSummary]


@with_config(EXACT)
class TeamSearchAnswer(TypedDict):
    search: TeamSearch


# Keyword routes (docs/keyword-search.md, docs/related-and-briefs.md).


@with_config(EXACT)
class KeywordAnswer(TypedDict):
    """`cacheHealthy` only on a fresh answer: whether it was cached."""

    data: list[KeywordData]
    cached: bool
    cacheHealthy: NotRequired[bool]
    timestamp: Timestamp
    mockData: bool
    provider: str


@with_config(EXACT)
class RelatedAnswer(TypedDict):
    """`cacheHealthy` only on a fresh answer: whether it was cached."""

    seedKeyword: str
    relatedKeywords: list[RelatedKeywordData]
    cached: bool
    cacheHealthy: NotRequired[bool]
    timestamp: Timestamp
    provider: str


@with_config(EXACT)
class BriefAnswer(TypedDict):
    brief: Brief
    cached: bool
    timestamp: Timestamp


# The caller's account, history and flags (docs/accounts-and-privacy.md, docs/http-contract.md).


@with_config(EXACT)
class Usage(TypedDict):
    """`limit` and `remaining` only while quotas are enforced; `resetsAt` for a paid tier,
    `trialEndsAt` for the free trial."""

    thisMonth: int
    total: int
    limit: NotRequired[int]
    remaining: NotRequired[int]
    resetsAt: NotRequired[Timestamp]
    trialEndsAt: NotRequired[Timestamp]


@with_config(EXACT)
class Subscription(TypedDict):
    status: NotRequired[str]
    plan: NotRequired[str]
    endsAt: NotRequired[Timestamp]


@with_config(EXACT)
class Profile(TypedDict):
    id: str
    email: str
    tier: Tier
    trialEndsAt: NotRequired[Timestamp]
    subscription: NotRequired[Subscription]
    usage: Usage


@with_config(EXACT)
class Deleted(TypedDict):
    deleted: Literal[True]


@with_config(EXACT)
class DataExport(TypedDict):
    """`url` (and when it expires) once the export is `ready` and the bucket is configured."""

    id: str
    status: Literal["pending", "running", "ready", "failed"]
    createdAt: Timestamp
    finishedAt: NotRequired[Timestamp]
    expiresAt: NotRequired[Timestamp]
    bytes: NotRequired[int]
    gzipBytes: NotRequired[int]
    url: NotRequired[str]
    urlExpiresAt: NotRequired[Timestamp]


@with_config(EXACT)
class DataExportAnswer(TypedDict):
    export: DataExport


Row = dict[str, Any]


@with_config(EXACT)
class PersonalDataExport(TypedDict):
    """Everything stored about the caller (docs/accounts-and-privacy.md). A row is every stored
    column of its table under its database name, NULLs omitted: the export follows the schema
    (a column added is exported), so its rows are not typed here. `user` is absent once the
    account row is gone; `featureFlags` are the keys of the flags naming the caller."""

    user: NotRequired[Row]
    organizationMemberships: list[Row]
    savedSearches: list[Row]
    searchHistory: list[Row]
    apiUsage: list[Row]
    webhookEvents: list[Row]
    systemMetrics: list[Row]
    featureFlags: list[str]
    onErasure: str


@with_config(EXACT)
class HistoryItem(TypedDict):
    id: str
    keywords: list[str]
    location: str
    language: str
    matchType: str
    provider: str
    cacheHit: bool
    responseTime: int
    keywordCount: int
    avgVolume: int
    totalVolume: int
    searchedAt: Timestamp


@with_config(EXACT)
class HistoryPage(TypedDict):
    """`nextCursor` only when there is a next page."""

    history: list[HistoryItem]
    nextCursor: NotRequired[str]


@with_config(EXACT)
class ProviderFigures(TypedDict):
    """Averages in ms, hit rates as a fraction; absent when there was no search."""

    searches: int
    avgResponseTime: NotRequired[float]
    cacheHitRate: NotRequired[float]


@with_config(EXACT)
class HistoryStats(TypedDict):
    since: Timestamp
    until: Timestamp
    searches: int
    avgResponseTime: NotRequired[float]
    cacheHitRate: NotRequired[float]
    providers: dict[str, ProviderFigures]


@with_config(EXACT)
class FlagValues(TypedDict):
    flags: dict[str, bool]


@with_config(EXACT)
class Received(TypedDict):
    """A webhook delivery's acknowledgement; `duplicate` when it was applied before."""

    received: Literal[True]
    duplicate: NotRequired[Literal[True]]


# Organizations (docs/organizations.md).


@with_config(EXACT)
class Member(TypedDict):
    userId: str
    role: str
    joinedAt: Timestamp


@with_config(EXACT)
class MemberPage(TypedDict):
    members: list[Member]
    nextCursor: NotRequired[str]


@with_config(EXACT)
class TeamUsage(TypedDict):
    """`limit` and `remaining` only while quotas are enforced."""

    thisMonth: int
    total: int
    limit: NotRequired[int]
    remaining: NotRequired[int]
    resetsAt: Timestamp


@with_config(EXACT)
class TeamUsageAnswer(TypedDict):
    tier: Tier
    usage: TeamUsage


# Admin (docs/flags-and-admin.md, docs/analytics.md).

# The `from` and `to` of a window, keys a class body cannot name.
Window = TypedDict("Window", {"from": Timestamp, "to": Timestamp})


@with_config(EXACT)
class Flag(TypedDict):
    """A flag too large to answer whole leaves out `omitted`'s fields (then `allowedUsersCount`
    counts its users)."""

    id: str
    key: str
    enabled: bool
    rolloutPercent: int
    allowedUsers: NotRequired[list[str]]
    description: NotRequired[str]
    createdBy: NotRequired[str]
    createdAt: Timestamp
    updatedAt: Timestamp
    allowedUsersCount: NotRequired[int]
    omitted: NotRequired[list[Literal["allowedUsers", "description", "createdBy"]]]


@with_config(EXACT)
class FlagAnswer(TypedDict):
    flag: Flag


@with_config(EXACT)
class FlagPage(TypedDict):
    flags: list[Flag]
    nextCursor: NotRequired[str]


@with_config(EXACT)
class MetricPoint(TypedDict):
    """`avg`, `min` and `max` are over the `count` finite values: null when the bucket held only
    NaN or ±Infinity, counted in `nonFinite` (absent when 0)."""

    bucket: Timestamp
    avg: float | None
    min: float | None
    max: float | None
    count: int
    nonFinite: NotRequired[int]


@with_config(EXACT)
class MetricSeries(Window):
    metric: str
    bucket: Literal["minute", "hour", "day"]
    points: list[MetricPoint]


@with_config(EXACT)
class DaySearches(TypedDict):
    date: Day
    searches: int


@with_config(EXACT)
class WindowSearches(TypedDict):
    total: int
    perDay: list[DaySearches]
    cacheHitRate: NotRequired[float]
    providers: dict[str, ProviderFigures]


@with_config(EXACT)
class LastDay(TypedDict):
    searches: int
    avgResponseTime: NotRequired[float]


@with_config(EXACT)
class KeywordSearches(TypedDict):
    keyword: str
    searches: int


@with_config(EXACT)
class Subscriptions(TypedDict):
    totalUsers: int
    freeUsers: int
    proUsers: int
    enterpriseUsers: int
    activeSubscriptions: int


@with_config(EXACT)
class Analytics(Window):
    days: int
    organizationId: NotRequired[str]
    searches: WindowSearches
    last24h: LastDay
    topKeywords: list[KeywordSearches]
    subscriptions: Subscriptions


@with_config(EXACT)
class TierPoint(TypedDict):
    """`tier` is ANONYMOUS for searches without a user; `cacheHitRate` absent with no search."""

    bucket: Timestamp
    tier: str
    searches: int
    keywords: int
    users: int
    cacheHitRate: NotRequired[float]


@with_config(EXACT)
class KeywordPoint(TypedDict):
    bucket: Timestamp
    keyword: str
    searches: int
    users: int


@with_config(EXACT)
class ProviderPoint(TypedDict):
    bucket: Timestamp
    provider: str
    searches: int
    avgResponseTime: NotRequired[float]
    cacheHitRate: NotRequired[float]


@with_config(EXACT)
class Trends(Window):
    """The points are the metric's (TierPoint, KeywordPoint or ProviderPoint); the freshness
    keys are absent when unknown (never refreshed) or not the case (no failure since)."""

    metric: Literal["usage-by-tier", "keyword-trends", "provider-performance"]
    refreshedAt: NotRequired[Timestamp]
    ageSeconds: NotRequired[int]
    refreshFailedAt: NotRequired[Timestamp]
    points: list[TierPoint] | list[KeywordPoint] | list[ProviderPoint]


@with_config(EXACT)
class HealthCheck(TypedDict):
    """One dependency's check (docs/original-app.md#health-report). `details` differ by
    dependency and state; the database's check has `checkedAt`, and `cached` between checks."""

    healthy: bool
    responseTime: NotRequired[int]
    error: NotRequired[str]
    details: NotRequired[dict[str, Any]]
    checkedAt: NotRequired[Timestamp]
    cached: NotRequired[bool]


@with_config(EXACT)
class HealthChecks(TypedDict):
    database: HealthCheck
    redis: HealthCheck
    provider: HealthCheck


@with_config(EXACT)
class Health(TypedDict):
    """200 healthy, 207 degraded, 503 unhealthy: the same report."""

    status: Literal["healthy", "degraded", "unhealthy"]
    timestamp: Timestamp
    version: str
    environment: str
    checks: HealthChecks
    responseTime: int
