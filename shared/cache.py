"""JSON cache-aside on Upstash Redis that never raises to callers.

Any Redis failure (down, slower than `REDIS_TIMEOUT_S`, bad data) is logged and behaves as a
miss, so the cache can only make a request faster, never fail it. `PRIVACY_MODE=true` turns the
keyword, related-keyword and brief caches off entirely
(docs/original-app.md#caching-and-privacy-mode). There is no flush: the Redis database is
shared with users, usage and rate limits (docs/original-app.md#d13).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from typing import Any

from shared.config import get_settings
from shared.redis import get_redis
from shared.telemetry import log_event

KEYWORD_TTL_SECONDS = 604_800  # 7 days, as the original (keyword data, related keywords)
BRIEF_TTL_SECONDS = 86_400  # 1 day, as the original


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


def in_request_order(items: list[dict[str, Any]], keywords: Sequence[str]) -> list[dict[str, Any]]:
    """Cached rows in the order this request asked for them (the key sorts keywords)."""
    by_keyword = {item.get("keyword"): item for item in items}
    ordered = [by_keyword[k.strip()] for k in keywords if k.strip() in by_keyword]
    return ordered if len(ordered) == len(items) else items


def get_json(key: str) -> Any | None:
    """The cached value, or None on a miss, in privacy mode, or on any failure."""
    if get_settings().privacy_mode:
        return None
    client = get_redis()
    if client is None:
        return None
    try:
        raw = client.get(key)
        return None if raw is None else json.loads(raw)
    except Exception as error:
        log_event("cache_read_failed", level=logging.WARNING, error=type(error).__name__)
        return None


def set_json(key: str, value: Any, *, ttl_seconds: int = KEYWORD_TTL_SECONDS) -> bool:
    """Store `value`; False (logged) when it could not be stored."""
    if get_settings().privacy_mode:
        return False
    client = get_redis()
    if client is None:
        return False
    try:
        client.set(key, json.dumps(value, separators=(",", ":")), ex=ttl_seconds)
    except Exception as error:
        log_event("cache_write_failed", level=logging.WARNING, error=type(error).__name__)
        return False
    return True
