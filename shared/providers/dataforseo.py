"""DataForSEO's Google Ads search volume (`keywords_data/google_ads/search_volume/live`, §6.2).

Imported only when DataForSEO is the configured provider, so the Mock path never loads httpx.
One `httpx.Client` per container (30 s timeout, spec §6.6) is reused by every invocation; the
credentials go as HTTP Basic auth on each request and never into logs or error messages.

Fixes over the original (spec §10.14):
- Worldwide is sent as location_code 0 (the original's `|| 2840` turned it into the US);
- `competition_index` is read on its real 0-100 scale (<33 low, <67 medium, else high) when
  there is no level string (the original compared it with 0.33/0.67);
- no invented difficulty: this endpoint has none, so rows carry no `difficulty` key (a real
  `keyword_properties.keyword_difficulty` is kept, 0 included; the original's `|| 50` hid 0);
- a task-level error (`tasks[0].status_code != 20000`) is a `ProviderError`, like HTTP errors,
  timeouts, non-JSON bodies and an envelope whose `status_code` is not 20000 (a missing code
  included); the original returned every keyword with default values instead.

Other choices: keywords are sent once each (DataForSEO lower-cases them, and results are matched
case-insensitively with whitespace collapsed), and keywords beyond the endpoint's limits (80
characters, 10 words) are not sent, so one cannot fail the whole task: like keywords the
endpoint has no data for, they get the defaults. `matchType` is not sent: this endpoint has no
match type (it stays part of the cache key). Language: the primary subtag when DataForSEO
supports it (en, es, fr, de, pt, it; "pt-BR" → "pt"), else "en". `date_from`/`date_to` are left
out rather than sent as null (the same meaning: the endpoint's default period).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Mapping
from typing import Any

import httpx

from shared.config import Settings
from shared.providers.base import (
    Competition,
    KeywordData,
    MonthlyTrend,
    ProviderConfigurationError,
    ProviderError,
    SearchOptions,
    infer_intent,
)
from shared.providers.breaker import CircuitBreaker
from shared.providers.locations import DEFAULT_LOCATION, LOCATIONS
from shared.telemetry import log_event

API_URL = "https://api.dataforseo.com/v3/keywords_data/google_ads/search_volume/live"
TIMEOUT_S = 30.0
OK = 20000
MAX_KEYWORD_CHARS = 80
MAX_KEYWORD_WORDS = 10
MAX_KEYWORDS_PER_TASK = 1000
SNIPPET_CHARS = 300

LOCATION_CODES: dict[str, int] = {
    "United States": 2840,
    "United Kingdom": 2826,
    "Canada": 2124,
    "Australia": 2036,
    "Germany": 2276,
    "France": 2250,
    "India": 2356,
    "Worldwide": 0,
}
LANGUAGES = frozenset({"en", "es", "fr", "de", "pt", "it"})

_client: httpx.Client | None = None
_client_lock = threading.Lock()


def http_client() -> httpx.Client:
    """The container's client, built on first use."""
    global _client
    if _client is None:
        with _client_lock:
            if _client is None:
                _client = httpx.Client(
                    timeout=httpx.Timeout(TIMEOUT_S),
                    headers={"User-Agent": "keyflash-functions"},
                )
    return _client


def close_client() -> None:
    """Close and forget the container's client (tests, `reset_providers`)."""
    global _client
    with _client_lock:
        if _client is not None:
            _client.close()
        _client = None


def location_code(location: str) -> int:
    """DataForSEO's code for a normalised name (an ISO code is accepted too); else the US."""
    code = LOCATION_CODES.get(location)
    if code is None:
        code = LOCATION_CODES.get(LOCATIONS.get(location, DEFAULT_LOCATION), 2840)
    return code


def language_code(language: str | None) -> str:
    primary = (language or "").split("-", 1)[0].strip().lower()
    return primary if primary in LANGUAGES else "en"


def match_key(keyword: str) -> str:
    """How a requested keyword meets a result: case-insensitive, whitespace collapsed."""
    return " ".join(keyword.split()).lower()


def sendable(keyword: str) -> bool:
    words = keyword.split()
    return 0 < len(words) <= MAX_KEYWORD_WORDS and len(" ".join(words)) <= MAX_KEYWORD_CHARS


def default_row(keyword: str) -> KeywordData:
    """A keyword the endpoint returned nothing for (the original's defaults, minus difficulty)."""
    return {
        "keyword": keyword,
        "searchVolume": 0,
        "cpc": 0.0,
        "competition": "low",
        "intent": "informational",
    }


class DataForSEOProvider:
    key = "dataforseo"
    name = "DataForSEO"

    def __init__(
        self,
        login: str | None,
        password: str | None,
        *,
        breaker: CircuitBreaker | None = None,
        client: httpx.Client | None = None,
    ) -> None:
        self._login = login or ""
        self._password = password or ""
        self.breaker = breaker or CircuitBreaker(self.name)
        self._client = client

    @classmethod
    def from_settings(cls, settings: Settings) -> DataForSEOProvider:
        return cls(settings.dataforseo_api_login, settings.dataforseo_api_password)

    def configuration_error(self) -> str | None:
        """What is missing, naming the variables; None when the provider can run."""
        missing = [
            variable
            for variable, value in (
                ("DATAFORSEO_API_LOGIN", self._login),
                ("DATAFORSEO_API_PASSWORD", self._password),
            )
            if not value.strip()
        ]
        if not missing:
            return None
        return (
            f"DataForSEO provider missing configuration: {', '.join(missing)}. "
            "Please set these environment variables."
        )

    def keyword_data(self, keywords: list[str], options: SearchOptions) -> list[KeywordData]:
        problem = self.configuration_error()
        if problem:
            raise ProviderConfigurationError(problem)
        requested = [keyword.strip() for keyword in keywords]
        unique: dict[str, str] = {}
        for keyword in requested:
            if sendable(keyword):
                unique.setdefault(match_key(keyword), " ".join(keyword.split()))
        to_send = list(unique.values())
        if len(to_send) > MAX_KEYWORDS_PER_TASK:
            raise ProviderError(f"DataForSEO accepts at most {MAX_KEYWORDS_PER_TASK} keywords")
        if not to_send:
            return [default_row(keyword) for keyword in requested]
        task: dict[str, Any] = {
            "keywords": to_send,
            "location_code": location_code(options.location),
            "language_code": language_code(options.language),
            "search_partners": False,
        }
        started = time.perf_counter()
        try:
            envelope = self.breaker.call(lambda: self._post([task]))
        except ProviderError as error:
            log_event(
                "provider_request",
                level=logging.WARNING,
                provider=self.key,
                success=False,
                error=type(error).__name__,
                detail=self._scrub(str(error)),
                keywords=len(to_send),
                durationMs=round((time.perf_counter() - started) * 1000),
            )
            raise
        log_event(
            "provider_request",
            provider=self.key,
            success=True,
            keywords=len(to_send),
            skipped=len({match_key(k) for k in requested if not sendable(k)}),
            cost=envelope.get("cost"),
            durationMs=round((time.perf_counter() - started) * 1000),
        )
        results = _index_results(envelope["tasks"][0].get("result"))
        rows: list[KeywordData] = []
        for keyword in requested:
            item = results.get(match_key(keyword))
            rows.append(default_row(keyword) if item is None else to_keyword_data(keyword, item))
        return rows

    def _post(self, body: list[dict[str, Any]]) -> dict[str, Any]:
        """One request; returns an envelope whose first task succeeded, else raises."""
        client = self._client or http_client()
        try:
            response = client.post(API_URL, json=body, auth=(self._login, self._password))
        except httpx.TimeoutException as error:
            raise ProviderError(
                f"DataForSEO request timed out after {TIMEOUT_S:g} s ({type(error).__name__})"
            ) from None
        except httpx.HTTPError as error:
            raise ProviderError(f"DataForSEO request failed ({type(error).__name__})") from None
        if not response.is_success:
            raise ProviderError(
                f"DataForSEO API request failed ({response.status_code}): "
                f"{self._snippet(response.text)}"
            )
        try:
            envelope = response.json()
        except ValueError:
            raise ProviderError(
                f"DataForSEO returned a non-JSON body: {self._snippet(response.text)}"
            ) from None
        if not isinstance(envelope, dict):
            raise ProviderError("DataForSEO returned JSON that is not an object")
        if envelope.get("status_code") != OK:
            raise ProviderError(
                f"DataForSEO API error ({envelope.get('status_code')}): "
                f"{self._snippet(str(envelope.get('status_message')))}"
            )
        tasks = envelope.get("tasks")
        if not isinstance(tasks, list) or not tasks or not isinstance(tasks[0], dict):
            raise ProviderError("DataForSEO response has no task")
        task = tasks[0]
        if task.get("status_code") != OK:
            raise ProviderError(
                f"DataForSEO task error ({task.get('status_code')}): "
                f"{self._snippet(str(task.get('status_message')))}"
            )
        return envelope

    def _snippet(self, text: str) -> str:
        text = self._scrub(" ".join(text.split()))
        return text[:SNIPPET_CHARS] + "…" if len(text) > SNIPPET_CHARS else text

    def _scrub(self, text: str) -> str:
        """Upstream text goes to logs: make sure it cannot carry our credentials."""
        for secret in (self._password, self._login):
            if secret:
                text = text.replace(secret, "***")
        return text


# --- response mapping -----------------------------------------------------------------------


def _get(item: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(item, Mapping):
            return None
        item = item.get(key)
    return item


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _first_number(*values: Any) -> float | None:
    for value in values:
        number = _number(value)
        if number is not None:
            return number
    return None


KEYWORD_PATHS = (
    ("keyword",),
    ("keyword_info", "keyword"),
    ("keyword_properties", "keyword"),
    ("search_volume_info", "keyword"),
)


def _result_keyword(item: Mapping[str, Any]) -> str | None:
    for path in KEYWORD_PATHS:
        value = _get(item, *path)
        if isinstance(value, str) and value.strip():
            return value
    return None


def _index_results(results: Any) -> dict[str, Mapping[str, Any]]:
    """Result items by `match_key` of their keyword (the first item wins)."""
    indexed: dict[str, Mapping[str, Any]] = {}
    for item in results if isinstance(results, list) else []:
        if isinstance(item, Mapping) and (keyword := _result_keyword(item)):
            indexed.setdefault(match_key(keyword), item)
    return indexed


_LEVELS: dict[str, Competition] = {"LOW": "low", "MEDIUM": "medium", "HIGH": "high"}


def competition_level(item: Mapping[str, Any]) -> Competition:
    """The level string when there is one, else the 0-100 index, else medium."""
    for value in (item.get("competition"), _get(item, "search_volume_info", "competition_level")):
        level = _LEVELS.get(value.strip().upper()) if isinstance(value, str) else None
        if level is not None:
            return level
    index = _first_number(
        item.get("competition_index"), _get(item, "search_volume_info", "competition")
    )
    if index is None:
        return "medium"
    if index < 33:
        return "low"
    if index < 67:
        return "medium"
    return "high"


def trends(item: Mapping[str, Any]) -> list[MonthlyTrend]:
    """Monthly volumes, oldest first, the last 12 (DataForSEO sends newest first)."""
    monthly = item.get("monthly_searches")
    if not isinstance(monthly, list):
        monthly = _get(item, "keyword_info", "monthly_searches")
    points: list[MonthlyTrend] = []
    for entry in monthly if isinstance(monthly, list) else []:
        month, year = _number(_get(entry, "month")), _number(_get(entry, "year"))
        if month is None or year is None or not 1 <= month <= 12:
            continue
        volume = _number(_get(entry, "search_volume")) or 0.0
        points.append({"month": int(month), "year": int(year), "volume": max(0, int(volume))})
    points.sort(key=lambda point: (point["year"], point["month"]))
    return points[-12:]


def to_keyword_data(keyword: str, item: Mapping[str, Any]) -> KeywordData:
    """One result item in our shape; `keyword` echoes the request, not DataForSEO's lower case."""
    volume = _first_number(
        item.get("search_volume"),
        _get(item, "search_volume_info", "search_volume"),
        _get(_first(_get(item, "keyword_info", "monthly_searches")), "search_volume"),
    )
    search_volume = max(0, int(volume or 0))
    cpc = max(0.0, _first_number(item.get("cpc"), _get(item, "search_volume_info", "cpc")) or 0.0)
    competition = competition_level(item)
    row: KeywordData = {
        "keyword": keyword,
        "searchVolume": search_volume,
        "cpc": cpc,
        "competition": competition,
        "intent": infer_intent(search_volume, cpc, competition),
    }
    difficulty = _number(_get(item, "keyword_properties", "keyword_difficulty"))
    if difficulty is not None:
        row["difficulty"] = min(100, max(0, round(difficulty)))
    points = trends(item)
    if points:
        row["trends"] = points
    return row


def _first(value: Any) -> Any:
    return value[0] if isinstance(value, list) and value else None
