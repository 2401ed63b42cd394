"""JSON cache-aside on Upstash Redis that never raises to callers.

Any Redis failure (down, slower than `REDIS_TIMEOUT_S`, bad data) is logged and behaves as a
miss, so the cache can only make a request faster, never fail it. An entry is served only in
the shape the route answers (`KeywordEntry`, `RelatedEntry`, `shared.brief.Brief`): the keys
are shared with the original app and anyone holding the token, so anything else under them is
a logged miss, which the route's fresh answer then overwrites. `PRIVACY_MODE=true` turns the
keyword, related-keyword and brief caches off entirely
(docs/original-app.md#caching-and-privacy-mode). There is no flush: the Redis database is
shared with users, usage and rate limits (docs/original-app.md#d13).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Sequence
from typing import Any, NotRequired, TypeVar

from pydantic import TypeAdapter, ValidationError
from typing_extensions import TypedDict  # pydantic validates entries: it needs this one on 3.11

from shared.brief import Brief
from shared.config import get_settings
from shared.contracts.saved_searches import KeywordResult
from shared.providers.base import MAX_RELATED, KeywordData, RelatedKeywordData, match_key
from shared.redis import get_redis
from shared.redis_breaker import best_effort
from shared.storable_text import first_unstorable, loads_json
from shared.telemetry import log_event

KEYWORD_TTL_SECONDS = 604_800  # 7 days, as the original (keyword data, related keywords)
BRIEF_TTL_SECONDS = 86_400  # 1 day, as the original

T = TypeVar("T")


class Metadata(TypedDict):
    cachedAt: str
    ttl: NotRequired[int]  # keyword entries only, as the original
    provider: str  # the display name that produced the rows, answered as `provider`


class KeywordEntry(TypedDict):
    """`kw:…` (docs/original-app.md#key-table): the provider's rows for the keywords."""

    data: list[KeywordData]
    metadata: Metadata


class RelatedEntry(TypedDict):
    """`related:…`: the provider's full list of ideas for one seed."""

    data: list[RelatedKeywordData]
    metadata: Metadata


BriefEntry = Brief  # `brief:…`, shared with the original app as it is
_adapters: dict[object, TypeAdapter[Any]] = {}


def _adapter(shape: type[T]) -> TypeAdapter[T]:
    """`shape`'s validator, built on the first read of its kind: not at import, which every cold
    start of a function that caches would pay."""
    adapter = _adapters.get(shape)
    if adapter is None:
        adapter = _adapters[shape] = TypeAdapter(shape)
    return adapter


def keyword_key(
    keywords: Sequence[str], location: str, language: str | None, match_type: str
) -> str:
    """The original key: `kw:{location}:{language}:{matchType}:{sha256(sorted, ",")[:16]}`."""
    joined = ",".join(sorted(keyword.strip() for keyword in keywords))
    digest = hashlib.sha256(joined.encode()).hexdigest()[:16]
    return f"kw:{location}:{language or 'en'}:{match_type}:{digest}"


def provider_keyword_key(
    keywords: Sequence[str], location: str, language: str | None, match_type: str, provider: str
) -> str:
    """The original key plus the provider, so switching provider never serves another's data."""
    return f"{keyword_key(keywords, location, language, match_type)}:{provider}"


def related_key(keyword: str, location: str, language: str | None, provider: str) -> str:
    """The original's `related:{lower-cased keyword}:{location}:{language}` plus the provider
    (docs/original-app.md#key-table, #d13)."""
    return f"related:{keyword.strip().lower()}:{location}:{language or 'en'}:{provider}"


def brief_key(keyword: str, location_code: str, language: str) -> str:
    """The original's `brief:{location code}:{language}:{sha256(trimmed, lower-cased)}`; only
    live DataForSEO briefs are cached, so no provider is needed."""
    digest = hashlib.sha256(keyword.strip().lower().encode()).hexdigest()
    return f"brief:{location_code}:{language}:{digest}"


def in_request_order(rows: list[KeywordData], keywords: Sequence[str]) -> list[KeywordData] | None:
    """Cached rows in the order this request asked for them (the key sorts keywords), or None
    when they are not exactly one row per requested keyword (duplicates included)."""
    requested = [keyword.strip() for keyword in keywords]
    if Counter(row["keyword"] for row in rows) != Counter(requested):
        return None
    by_keyword = {row["keyword"]: row for row in rows}
    return [by_keyword[keyword] for keyword in requested]


def answer_problem(entry: KeywordEntry | RelatedEntry, provider: str) -> str | None:
    """Why `entry`, typed right, is still no answer of `provider` (the display name of the one
    its key names), or None: every row must be one a saved search takes as answered
    (`KeywordResult`: no negative volume or cpc, months 1-12, difficulty and relevance 0-100),
    a `noData` row has no figures, its text is storable, and the provider is the key's."""
    if entry["metadata"]["provider"] != provider:
        return "another_provider"
    if (unstorable := first_unstorable(entry["data"])) is not None:
        return unstorable
    for row in entry["data"]:
        try:
            KeywordResult.model_validate(row)
        except ValidationError as error:
            return error.errors()[0]["type"]
        figures = (row["searchVolume"], row["cpc"], row["competition"], row["intent"])
        if row.get("noData") and figures != (None, None, None, None):
            return "no_data_with_figures"
    return None


def related_problem(entry: RelatedEntry, seed: str, provider: str) -> str | None:
    """`answer_problem`, and what no provider answers for `seed`: more than `MAX_RELATED`
    ideas, or the seed itself (any case) among them."""
    if len(entry["data"]) > MAX_RELATED:
        return "too_many_ideas"
    if any(match_key(row["keyword"]) == match_key(seed) for row in entry["data"]):
        return "seed_as_idea"
    return answer_problem(entry, provider)


def get_json(key: str, shape: type[T]) -> T | None:
    """The cached value if it has `shape` (strictly: no coercion), or None on a miss, in
    privacy mode, on any failure, or for an entry of another shape (`refuse`d)."""
    if get_settings().privacy_mode:
        return None
    client = get_redis()
    if client is None:
        return None
    try:
        raw = client.get(key)
    except Exception as error:
        log_event("cache_read_failed", level=logging.WARNING, error=type(error).__name__)
        return None
    if raw is None:
        return None
    if not isinstance(raw, str):  # a GET answers a string or null: not Upstash, or a bug
        log_event("cache_read_failed", level=logging.WARNING, error=f"{type(raw).__name__} reply")
        return None
    try:
        return _adapter(shape).validate_python(loads_json(raw), strict=True)
    except ValidationError as error:
        refuse(key, error.errors()[0]["type"])
    except (ValueError, RecursionError):  # not JSON, or nested beyond the parser
        refuse(key, "not_json")
    return None


def refuse(key: str, reason: str) -> None:
    """Log an entry the route cannot answer with, by its key's prefix and why, never its key
    (the rest holds search terms) or content."""
    kind = key.split(":", 1)[0]
    log_event("cache_entry_invalid", level=logging.WARNING, kind=kind, reason=reason)


def set_json(key: str, value: Any, *, ttl_seconds: int = KEYWORD_TTL_SECONDS) -> bool:
    """Store `value`; False (logged) when it could not be stored. Best effort: a failure never
    counts towards opening the Upstash breaker (`shared.redis_breaker`)."""
    if get_settings().privacy_mode:
        return False
    client = get_redis()
    if client is None:
        return False
    try:
        with best_effort():
            client.set(key, json.dumps(value, separators=(",", ":")), ex=ttl_seconds)
    except Exception as error:
        log_event("cache_write_failed", level=logging.WARNING, error=type(error).__name__)
        return False
    return True
