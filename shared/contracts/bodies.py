"""The JSON bodies the routes answer on success, as TypedDicts, for the OpenAPI document only.

The routes build their bodies by hand (no response validation on a hot path); these shapes say
what those builders produce, key for key: a key the builder leaves out when it has no value
(`compact`) is `NotRequired`, one it sends as `null` is `| None`. Routes name a shape with
`shared.http.openapi.body`, which imports this module only when the document is built, never on
a function's cold start (tests/structure/test_import_discipline.py).
"""

from __future__ import annotations

from typing import Annotated, Literal, NotRequired

from pydantic import ConfigDict, WithJsonSchema, with_config
from typing_extensions import TypedDict  # pydantic needs this one on 3.11

Timestamp = Annotated[str, WithJsonSchema({"type": "string", "format": "date-time"})]
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
