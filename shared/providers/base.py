"""What every keyword provider shares: the data shapes, the errors and the intent heuristic.

Shapes follow the original API's JSON (camelCase keys), because rows go to clients and into
the cache as they are. A metric the provider did not measure is null, never invented: a keyword
without data has `searchVolume`, `cpc`, `competition` and `intent` null and `noData: true`
(the original filled in 0, "low" and "informational"). A metric the endpoint never has is
omitted: DataForSEO's search-volume endpoint has no difficulty, so its rows have no `difficulty`.
"""

from __future__ import annotations

import functools
import re
import string
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, Protocol, Required

from typing_extensions import TypedDict  # pydantic validates cached rows: it needs this one on 3.11

from shared.js_text import js_length, js_trim

Competition = Literal["low", "medium", "high"]
Intent = Literal["informational", "commercial", "transactional", "navigational"]
MatchType = Literal["phrase", "exact"]

MAX_RELATED = 20  # related ideas a provider answers at most: the original kept the first 20

COMPETITIONS: tuple[Competition, ...] = ("low", "medium", "high")
INTENTS: tuple[Intent, ...] = ("informational", "commercial", "transactional", "navigational")


# What a saved search keeps of a row (docs/keyword-search.md#saved-results, the original's
# rule): its contract checks with these, and a provider answers no row beyond them, so every
# answered row can be saved as answered.
ROW_KEYWORD_MAX = 200  # JS units, after JS's trim
TREND_YEARS = range(2000, 2101)


def savable_keyword(keyword: str) -> bool:
    """Whether a saved search keeps `keyword` as a row's: 1-200 JS units once trimmed as JS
    trims."""
    return 0 < js_length(js_trim(keyword)) <= ROW_KEYWORD_MAX


class MonthlyTrend(TypedDict):
    month: int  # 1-12
    year: int
    volume: int | None  # None: the month has no figure


class KeywordData(TypedDict, total=False):
    """One keyword's metrics. `difficulty` (0-100) and `trends` (oldest first, at most 12) are
    present only when the provider has them; `noData` only when it is true."""

    keyword: Required[str]
    searchVolume: Required[int | None]
    difficulty: int
    cpc: Required[float | None]
    competition: Required[Competition | None]
    intent: Required[Intent | None]
    trends: list[MonthlyTrend]
    noData: bool


class RelatedKeywordData(KeywordData, total=False):
    relevance: Required[int]  # 0-100


@dataclass(frozen=True)
class SearchOptions:
    match_type: MatchType
    location: str  # a normalised name: "United States", "Worldwide" (see `normalize_location`)
    language: str  # e.g. "en", "en-US"
    deadline: float | None = None  # `time.monotonic()` by which the provider must have answered


class Provider(Protocol):
    """A source of keyword metrics. One instance per warm container (see `get_provider`)."""

    key: str  # "mock" | "dataforseo": part of cache keys and history rows
    name: str  # "Mock" | "DataForSEO": shown to clients and stored in cache metadata

    def keyword_data(self, keywords: list[str], options: SearchOptions) -> list[KeywordData]:
        """Metrics for each keyword, in the input's order and length (duplicates kept)."""
        ...


def match_key(keyword: str) -> str:
    """How a requested keyword meets a result: case-insensitive, whitespace collapsed."""
    return " ".join(keyword.split()).lower()


def without_data(keyword: str) -> KeywordData:
    """A keyword the provider has no figures for."""
    return {
        "keyword": keyword,
        "searchVolume": None,
        "cpc": None,
        "competition": None,
        "intent": None,
        "noData": True,
    }


def measured(
    keyword: str, search_volume: int, cpc: float | None, competition: Competition | None
) -> KeywordData:
    """A keyword the provider has a search volume for; its intent is inferred only from a
    measured cpc and competition (`infer_intent`), else null."""
    intent: Intent | None = None
    if cpc is not None and competition is not None:
        intent = infer_intent(search_volume, cpc, competition)
    return {
        "keyword": keyword,
        "searchVolume": search_volume,
        "cpc": cpc,
        "competition": competition,
        "intent": intent,
    }


def missing_configuration(provider: str, variables: list[str]) -> str | None:
    """The original's message naming what `provider` lacks (docs/original-app.md), or None when
    `variables` is empty."""
    if not variables:
        return None
    return (
        f"{provider} provider missing configuration: {', '.join(variables)}. "
        "Please set these environment variables."
    )


def scrub(text: str, secrets: Iterable[str]) -> str:
    """`text` with every form of each secret replaced by `***`: the one scrubber of upstream text
    before it is logged. A secret may come back as sent in a header or a JSON body, or encoded
    as it went in a URL or a form body, or JSON-escaped, any character as `\\uXXXX`
    (`_secret_pattern`); a credential that is derived from others (DataForSEO's Basic token)
    is one of `secrets` itself."""
    escaped = "\\u" in text  # none: a pattern without `\\uXXXX` forms, 3-8x faster
    pattern = _secrets_pattern(tuple(secret for secret in secrets if secret.strip()), escaped)
    return text if pattern is None else pattern.sub("***", text)


_UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")  # never encoded
_JSON_ESCAPES = {'"': '\\"', "\\": "\\\\", "/": "\\/", "\b": "\\b", "\f": "\\f",
                 "\n": "\\n", "\r": "\\r", "\t": "\\t"}  # fmt: skip


@functools.lru_cache(maxsize=16)
def _secrets_pattern(secrets: tuple[str, ...], escaped: bool) -> re.Pattern[str] | None:
    """One pattern for all `secrets`, the longest first (one may contain another); with the
    `\\uXXXX` forms only when the text has one (`escaped`)."""
    if not secrets:
        return None
    ordered = sorted(set(secrets), key=len, reverse=True)
    return re.compile("|".join(_secret_pattern(secret, escaped) for secret in ordered))


def _secret_pattern(secret: str, escaped: bool) -> str:
    """`secret` with each character matched as itself or, when `escaped`, as JSON's `\\uXXXX`
    (either hex case; a surrogate pair beyond U+FFFF), which JSON allows for any character,
    letters included; one that is not URL-safe also percent-encoded (its UTF-8 bytes, either
    hex case; a space also `+`) or JSON-escaped (`\\"`, `\\/`, …)."""
    parts: list[str] = []
    for char in secret:
        units = char.encode("utf-16-be").hex().upper()
        forms = [re.escape(char)]
        if escaped:
            forms.append("".join(r"\\u" + _hex(units[i : i + 4]) for i in range(0, len(units), 4)))
        if char not in _UNRESERVED:
            forms.append("".join("%" + _hex(f"{byte:02X}") for byte in char.encode()))
        if char == " ":
            forms.append(re.escape("+"))
        if char in _JSON_ESCAPES:
            forms.append(re.escape(_JSON_ESCAPES[char]))
        parts.append("(?:" + "|".join(forms) + ")")
    return "".join(parts)


def _hex(digits: str) -> str:
    """Hex `digits` matched in either case."""
    return "".join(f"[{d}{d.lower()}]" if d.isalpha() else d for d in digits)


class ProviderError(Exception):
    """The provider failed. The message is for logs only: it may quote upstream text, so it
    must never reach a client.

    `outage` says whether the failure is the provider's (an error answer, a timeout, garbage),
    which the circuit breaker counts. Subclasses that are not outages never open it.
    """

    outage = True


class ProviderConfigurationError(ProviderError):
    """The provider cannot run as configured (unknown name, missing or rejected credentials,
    no balance): an operator must act; retrying does not help and the upstream is not down."""

    outage = False


class ProviderInputError(ProviderError):
    """The upstream refused what this request sent (a field or keyword it does not accept)."""

    outage = False


class ProviderUnavailableError(ProviderError):
    """The upstream was not called, or refused for now: retry after `retry_after` s.

    Raised while the circuit breaker is open (counted already, so not again)."""

    outage = False

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ProviderRateLimitedError(ProviderUnavailableError):
    """The account's request budget is spent (ours, shared by every container) or the upstream
    answered "too many requests": capacity, not an outage."""


def infer_intent(search_volume: int, cpc: float, competition: Competition) -> Intent:
    """The original heuristic for providers that report no intent
    (docs/original-app.md#keyword-providers); first match wins. Only for measured figures: a keyword
    missing any of them has no intent (null)."""
    if cpc > 5 and competition == "high":
        return "transactional"
    if cpc > 2 and competition in ("medium", "high"):
        return "commercial"
    if cpc < 1 and competition == "low" and search_volume > 10_000:
        return "informational"
    if search_volume < 1_000:
        return "navigational"
    return "informational"
