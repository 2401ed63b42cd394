"""What every keyword provider shares: the data shapes, the errors and the intent heuristic.

Shapes follow the original API's JSON (camelCase keys), because rows go to clients and into
the cache as they are. Absent values are omitted, never null: DataForSEO's search-volume endpoint
has no difficulty, so its rows have no `difficulty` key (the original invented 50).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol, Required, TypedDict

Competition = Literal["low", "medium", "high"]
Intent = Literal["informational", "commercial", "transactional", "navigational"]
MatchType = Literal["phrase", "exact"]

COMPETITIONS: tuple[Competition, ...] = ("low", "medium", "high")
INTENTS: tuple[Intent, ...] = ("informational", "commercial", "transactional", "navigational")


class MonthlyTrend(TypedDict):
    month: int  # 1-12
    year: int
    volume: int


class KeywordData(TypedDict, total=False):
    """One keyword's metrics. `difficulty` (0-100) and `trends` (oldest first, at most 12) are
    present only when the provider has them."""

    keyword: Required[str]
    searchVolume: Required[int]
    difficulty: int
    cpc: Required[float]
    competition: Required[Competition]
    intent: Required[Intent]
    trends: list[MonthlyTrend]


class RelatedKeywordData(KeywordData, total=False):
    relevance: Required[int]  # 0-100


@dataclass(frozen=True)
class SearchOptions:
    match_type: MatchType
    location: str  # a normalised name: "United States", "Worldwide" (see `normalize_location`)
    language: str  # e.g. "en", "en-US"


class Provider(Protocol):
    """A source of keyword metrics. One instance per warm container (see `get_provider`)."""

    key: str  # "mock" | "dataforseo": part of cache keys and history rows
    name: str  # "Mock" | "DataForSEO": shown to clients and stored in cache metadata

    def keyword_data(self, keywords: list[str], options: SearchOptions) -> list[KeywordData]:
        """Metrics for each keyword, in the input's order and length (duplicates kept)."""
        ...


class ProviderError(Exception):
    """The provider failed. The message is for logs only: it may quote upstream text, so it
    must never reach a client."""


class ProviderConfigurationError(ProviderError):
    """The provider cannot run as configured (unknown name, missing credentials)."""


class ProviderUnavailableError(ProviderError):
    """The circuit breaker is open: the upstream was not called. Retry after `retry_after` s."""

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def infer_intent(search_volume: int, cpc: float, competition: Competition) -> Intent:
    """The original heuristic for providers that report no intent (spec §6); first match wins."""
    if cpc > 5 and competition == "high":
        return "transactional"
    if cpc > 2 and competition in ("medium", "high"):
        return "commercial"
    if cpc < 1 and competition == "low" and search_volume > 10_000:
        return "informational"
    if search_volume < 1_000:
        return "navigational"
    return "informational"
