"""DataForSEO's Google Ads search volume (`keywords_data/google_ads/search_volume/live`,
docs/original-app.md#dataforseo-provider), its keyword ideas for related keywords
(`…/keywords_for_keywords/live`) and Google's results pages for content briefs
(`serp/google/organic/live/advanced`, #serp-and-content-brief; docs/related-and-briefs.md).
Every call goes through `_request`: the deadline, the breaker, the account's budget, the log.

Imported only when DataForSEO is the configured provider, so the Mock path never loads httpx.
One `httpx.Client` per container is reused by every invocation; the credentials go as HTTP Basic
auth on each request and never into logs or error messages. docs/keyword-search.md describes
what the provider does in each case; in short:

- Worldwide omits `location_code` (DataForSEO documents no code for it, and answers a worldwide
  request with `location_code: null`); the seven countries send their codes.
- The language is the listed code the request names (`shared.providers.languages`); the request
  contract refuses the others with a 400, so none is silently sent as `en`.
- Before each request one unit of the account's budget is spent (`shared.providers.account`,
  DATAFORSEO_REQUESTS_PER_MINUTE, shared by every container); a spent budget, an upstream
  "too many requests" (HTTP 429, status 40202) and the account's duplicate-task limit (40205)
  raise `ProviderRateLimitedError`.
- The call has a total deadline (`SearchOptions.deadline`, `shared.providers.deadline`): it runs
  in a worker thread that the caller waits for until then, because httpx's timeouts apply to
  each network step (connect, each read), so a trickled body would outlast any of them.
- 401/402 and DataForSEO's 40100/40200/40203 are the account's configuration
  (`ProviderConfigurationError`, remembered for /api/health); 405xx refuse the request's own
  fields (`ProviderInputError`); a task answered 40102 ("No Search Results.") found nothing for
  the user's keyword and reads as an empty result. None counts toward the circuit breaker;
  every other error answer, a timeout, a non-JSON body (parsed strictly: `NaN`, `Infinity`
  or `1e400` is none), an envelope without status 20000 or a
  successful task whose `result` is not in the documented shape (`_check_result`) does.
- Missing data stays missing: a keyword absent from the results, or returned without a
  volume, gets nulls and `noData: true`; an absent cpc or competition is null; a month without
  volume is null; the competition level falls back to the index in Google's bands (LOW 0-33,
  MEDIUM 34-66, HIGH 67-100); a negative volume or cpc is a broken answer (`_check_result`).
  The original filled in 0, "low" and "informational".

Other choices: keywords are sent once each (DataForSEO lower-cases them, and results are matched
case-insensitively with whitespace collapsed); keywords it would refuse (beyond 80 characters or
10 words, or holding a symbol it rejects or a character outside the Basic Multilingual Plane) are
not sent, so one cannot fail the whole task, and get no data. `matchType` is not sent: this
endpoint has none (it stays part of the cache key). `date_from`/`date_to` are left out (the
endpoint's default period). No difficulty is invented: a real
`keyword_properties.keyword_difficulty` is kept, 0 included.
"""

from __future__ import annotations

import base64
import math
import re
import threading
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from shared.config import Settings
from shared.providers import account
from shared.providers.base import (
    MAX_RELATED,
    TREND_YEARS,
    Competition,
    KeywordData,
    MonthlyTrend,
    ProviderConfigurationError,
    ProviderError,
    ProviderInputError,
    ProviderRateLimitedError,
    RelatedKeywordData,
    SearchOptions,
    match_key,
    measured,
    missing_configuration,
    savable_keyword,
    scrub,
    without_data,
)
from shared.providers.breaker import CircuitBreaker
from shared.providers.deadline import call_within, logged_request
from shared.providers.languages import provider_language
from shared.providers.locations import DEFAULT_LOCATION, LOCATIONS
from shared.storable_text import loads_json, storable

BASE_URL = "https://api.dataforseo.com"
PATH = "/v3/keywords_data/google_ads/search_volume/live"
API_URL = BASE_URL + PATH
RELATED_PATH = "/v3/keywords_data/google_ads/keywords_for_keywords/live"
RELATED_API_URL = BASE_URL + RELATED_PATH
SERP_PATH = "/v3/serp/google/organic/live/advanced"
SERP_API_URL = BASE_URL + SERP_PATH
SERP_DEPTH = 10
TIMEOUT_S = 30.0  # without a deadline (direct use); requests get theirs from SearchOptions
OK = 20000
MAX_KEYWORD_CHARS = 80
MAX_KEYWORD_WORDS = 10
MAX_KEYWORDS_PER_TASK = 1000
SNIPPET_CHARS = 300
RATE_LIMITED_RETRY_S = 60  # "too many requests" names no time; the limit is per minute
DUPLICATE_TASK_RETRY_S = 3600  # the account's duplicate-task limit counts per hour

# Symbols DataForSEO refuses in a keyword, and every character beyond U+FFFF (4 bytes in UTF-8).
_REFUSED = re.compile("[,!@%^()={};~`<>?\\|\u2015\U00010000-\U0010ffff]")
# DataForSEO's status codes that are not the provider's failure (docs/keyword-search.md, "The
# circuit breaker counts only the provider's failures"; the list: DataForSEO's appendix/errors).
CONFIGURATION_CODES = frozenset({40100, 40200, 40203})  # unauthorised, payment, cost limit
# "Too many requests", and the duplicate-task limit of the account's own settings: the seconds
# until a retry can pass.
RATE_LIMIT_CODES = {40202: RATE_LIMITED_RETRY_S, 40205: DUPLICATE_TASK_RETRY_S}
# "No Search Results.": processed, and the request's own keyword matched nothing.
NO_RESULTS_CODES = frozenset({40102})

LOCATION_CODES: dict[str, int] = {
    "United States": 2840,
    "United Kingdom": 2826,
    "Canada": 2124,
    "Australia": 2036,
    "Germany": 2276,
    "France": 2250,
    "India": 2356,
}
WORLDWIDE = "Worldwide"

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


def location_code(location: str) -> int | None:
    """DataForSEO's code for a normalised name (an ISO code is accepted too), None for
    Worldwide (the location is omitted); anything else is the US."""
    name = location if location in LOCATION_CODES or location == WORLDWIDE else None
    name = name or LOCATIONS.get(location, DEFAULT_LOCATION)
    return None if name == WORLDWIDE else LOCATION_CODES.get(name, LOCATION_CODES[DEFAULT_LOCATION])


def language_code(language: str | None) -> str:
    """The listed code for a request's language (the contract refused unlisted ones)."""
    code = provider_language(language or "en")
    if code is None:
        raise ProviderInputError(f"DataForSEO lists no language for {language!r}")
    return code


def sendable(keyword: str) -> bool:
    """Whether DataForSEO accepts the keyword (one it refuses fails the whole task)."""
    words = keyword.split()
    return (
        0 < len(words) <= MAX_KEYWORD_WORDS
        and len(" ".join(words)) <= MAX_KEYWORD_CHARS
        and not _REFUSED.search(keyword)
        and "\ufeff" not in keyword
    )


def snippet(text: str, scrub: Callable[[str], str]) -> str:
    """Upstream text for a log line: `scrub`bed of our secrets (before anything else changes
    it), whitespace collapsed, cut to SNIPPET_CHARS."""
    text = " ".join(scrub(text).split())
    return text[:SNIPPET_CHARS] + "…" if len(text) > SNIPPET_CHARS else text


def distinct_sendable(keywords: list[str]) -> list[str]:
    """The `sendable` keywords, each once by `match_key` (the first, its whitespace collapsed),
    in order: what a request sends."""
    unique: dict[str, str] = {}
    for keyword in keywords:
        if sendable(keyword):
            unique.setdefault(match_key(keyword), " ".join(keyword.split()))
    return list(unique.values())


class DataForSEOProvider:
    key = "dataforseo"
    name = "DataForSEO"

    def __init__(
        self,
        login: str | None,
        password: str | None,
        *,
        requests_per_minute: int = 0,
        base_url: str = BASE_URL,
        breaker: CircuitBreaker | None = None,
        client: httpx.Client | None = None,
    ) -> None:
        self._login = login or ""
        self._password = password or ""
        self._secrets = [self._login, self._password]
        if self._login and self._password:  # the Basic token is the credentials too
            token = base64.b64encode(f"{self._login}:{self._password}".encode()).decode()
            self._secrets += [token, token.rstrip("=")]  # padded as sent, or not
        self.base_url = base_url.rstrip("/")
        self.requests_per_minute = requests_per_minute
        self.breaker = breaker or CircuitBreaker(self.name)
        self._client = client

    @classmethod
    def from_settings(
        cls, settings: Settings, *, breaker: CircuitBreaker | None = None
    ) -> DataForSEOProvider:
        return cls(
            settings.dataforseo_api_login,
            settings.dataforseo_api_password,
            requests_per_minute=settings.dataforseo_requests_per_minute,
            base_url=settings.dataforseo_api_base_url,
            breaker=breaker,
        )

    def configuration_error(self) -> str | None:
        """What is missing (naming the variables), or the account's rejection that some
        container saw recently; None when the provider can run."""
        return self._missing_credentials() or account.rejection(self.key)

    def _missing_credentials(self) -> str | None:
        missing = [
            variable
            for variable, value in (
                ("DATAFORSEO_API_LOGIN", self._login),
                ("DATAFORSEO_API_PASSWORD", self._password),
            )
            if not value.strip()
        ]
        return missing_configuration(self.name, missing)

    def keyword_data(self, keywords: list[str], options: SearchOptions) -> list[KeywordData]:
        missing = self._missing_credentials()
        if missing:
            raise ProviderConfigurationError(missing)
        requested = [keyword.strip() for keyword in keywords]
        to_send = distinct_sendable(requested)
        if len(to_send) > MAX_KEYWORDS_PER_TASK:
            raise ProviderInputError(f"DataForSEO accepts at most {MAX_KEYWORDS_PER_TASK} keywords")
        if not to_send:
            return [without_data(keyword) for keyword in requested]
        task: dict[str, Any] = {
            "keywords": to_send,
            "language_code": language_code(options.language),
            "search_partners": False,
        }
        skipped = len({match_key(k) for k in requested if not sendable(k)})
        envelope = self._request(PATH, task, options, keywords=len(to_send), skipped=skipped)
        results = _index_results(envelope["tasks"][0].get("result"))
        rows: list[KeywordData] = []
        for keyword in requested:
            item = results.get(match_key(keyword))
            rows.append(without_data(keyword) if item is None else to_keyword_data(keyword, item))
        return rows

    def related_keywords(self, keyword: str, options: SearchOptions) -> list[RelatedKeywordData]:
        """Keyword ideas for one seed (`keywords_for_keywords`, sorted by relevance), the seed
        itself left out, the first 20; relevance is 100 - 3·(the idea's position among all
        results, skipped ones included), as the original. Ideas keep their own missing data.
        An idea is made storable and whitespace-collapsed, and one a saved search would refuse
        (`savable_keyword`: blank, or beyond 200 JS units) is dropped, so every row saves as
        answered; one `match_key` is one row, the first (the most relevant), as results are
        matched."""
        missing = self._missing_credentials()
        if missing:
            raise ProviderConfigurationError(missing)
        seed = " ".join(keyword.split())
        if not sendable(seed):
            return []
        task: dict[str, Any] = {
            "keywords": [seed],
            "language_code": language_code(options.language),
            "include_seed_keyword": False,
            "sort_by": "relevance",
        }
        envelope = self._request(RELATED_PATH, task, options, keywords=1, skipped=0)
        results = envelope["tasks"][0].get("result")
        related: list[RelatedKeywordData] = []
        seen = {match_key(seed)}
        for index, item in enumerate(results if isinstance(results, list) else []):
            found = _result_keyword(item) if isinstance(item, Mapping) else None
            idea = " ".join(storable(found).split()) if found else ""
            if not savable_keyword(idea) or match_key(idea) in seen:
                continue
            seen.add(match_key(idea))
            row: RelatedKeywordData = {
                **to_keyword_data(idea, item),
                "relevance": max(0, 100 - 3 * index),
            }
            related.append(row)
            if len(related) == MAX_RELATED:
                break
        return related

    def organic_serp(self, keyword: str, options: SearchOptions) -> Any:
        """Google's first results page for `keyword` (`serp/google/organic/live/advanced`,
        depth 10): the task's first result, for `shared.brief.parse_serp`. The language is
        sent as given (DataForSEO refuses one it does not list: an input error, 502)."""
        missing = self._missing_credentials()
        if missing:
            raise ProviderConfigurationError(missing)
        task: dict[str, Any] = {
            "keyword": " ".join(keyword.split()),
            "language_code": options.language,
            "depth": SERP_DEPTH,
            "calculate_rectangles": False,
        }
        envelope = self._request(SERP_PATH, task, options, keywords=1, skipped=0)
        return _first(envelope["tasks"][0].get("result"))

    def _request(
        self,
        path: str,
        task: dict[str, Any],
        options: SearchOptions,
        *,
        keywords: int,
        skipped: int,
    ) -> dict[str, Any]:
        """One task to `path` through the breaker and the account's budget, logged (upstream
        text scrubbed of the credentials); the envelope whose first task succeeded."""
        code = location_code(options.location)
        if code is not None:
            task["location_code"] = code
        return logged_request(
            provider=self.key,
            service="DataForSEO",
            endpoint=path,
            keywords=keywords,
            deadline=options.deadline,
            call=lambda: self.breaker.call(
                lambda: self._spend_and_post(path, [task], options.deadline)
            ),
            scrub=self._scrub,
            outcome=lambda envelope: {
                "skipped": skipped,
                "cost": envelope.get("cost"),
                "taskStatus": envelope["tasks"][0].get("status_code"),
            },
        )

    def _spend_and_post(
        self, path: str, body: list[dict[str, Any]], deadline: float | None
    ) -> dict[str, Any]:
        """Inside the breaker, so an open circuit spends none of the account's budget."""
        account.spend(self.key, self.requests_per_minute)
        return self._post_within(self.base_url + path, body, deadline)

    def _post_within(
        self, url: str, body: list[dict[str, Any]], deadline: float | None
    ) -> dict[str, Any]:
        """`_post`, but the caller waits no longer than `deadline` (`shared.providers.deadline`)."""
        if deadline is None:
            return self._post(url, body, TIMEOUT_S)
        return call_within(deadline, lambda budget: self._post(url, body, budget), "DataForSEO")

    def _post(self, url: str, body: list[dict[str, Any]], timeout_s: float) -> dict[str, Any]:
        """One request; returns an envelope whose first task succeeded, else raises."""
        client = self._client or http_client()
        try:
            response = client.post(
                url, json=body, auth=(self._login, self._password), timeout=timeout_s
            )
        except httpx.TimeoutException as error:
            raise ProviderError(
                f"DataForSEO request timed out after {timeout_s:.1f} s ({type(error).__name__})"
            ) from None
        except httpx.HTTPError as error:
            raise ProviderError(f"DataForSEO request failed ({type(error).__name__})") from None
        if response.status_code in (401, 402):
            rejected = (
                f"DataForSEO rejected the account (HTTP {response.status_code}): check "
                "DATAFORSEO_API_LOGIN/DATAFORSEO_API_PASSWORD and the account's balance"
            )
            account.reject(self.key, rejected, shown=rejected)
        if response.status_code == 429:
            raise ProviderRateLimitedError(
                "DataForSEO answered 429 Too Many Requests", retry_after=RATE_LIMITED_RETRY_S
            )
        if not response.is_success:
            raise ProviderError(
                f"DataForSEO API request failed ({response.status_code}): "
                f"{snippet(response.text, self._scrub)}"
            )
        try:
            envelope = loads_json(response.content)
        except ValueError:
            raise ProviderError(
                f"DataForSEO returned a non-JSON body: {snippet(response.text, self._scrub)}"
            ) from None
        if not isinstance(envelope, dict):
            raise ProviderError("DataForSEO returned JSON that is not an object")
        self._check_status(envelope, "API")
        tasks = envelope.get("tasks")
        if not isinstance(tasks, list) or not tasks or not isinstance(tasks[0], dict):
            raise ProviderError("DataForSEO response has no task")
        self._check_status(tasks[0], "task")
        if tasks[0].get("status_code") == OK:
            _check_result(tasks[0].get("result"))
        return envelope

    def _check_status(self, part: Mapping[str, Any], level: str) -> None:
        """Raise for a `status_code` other than 20000, classified by who must act. A task that
        found nothing (40102) is an answer: its result is empty, as for a rare keyword."""
        code = part.get("status_code")
        if code == OK or (level == "task" and code in NO_RESULTS_CODES):
            return
        message = snippet(str(part.get("status_message")), self._scrub)
        detail = f"DataForSEO {level} error ({code}): {message}"
        if code in CONFIGURATION_CODES:
            account.reject(
                self.key,
                detail,
                shown=f"DataForSEO rejected the account ({level} status {code}): check "
                "DATAFORSEO_API_LOGIN/DATAFORSEO_API_PASSWORD, the balance and the cost limit "
                "(DataForSEO's message is in the logs)",
            )
        if code in RATE_LIMIT_CODES:
            raise ProviderRateLimitedError(detail, retry_after=RATE_LIMIT_CODES[code])
        if isinstance(code, int) and 40500 <= code < 40600:
            raise ProviderInputError(detail)
        raise ProviderError(detail)

    def _scrub(self, text: str) -> str:
        """Upstream text goes to logs: make sure it cannot carry our credentials in any form."""
        return scrub(text, self._secrets)


def _check_result(result: Any) -> None:
    """Raise unless a successful task's `result` has DataForSEO's documented shape, as its own
    client reads it: null (nothing to return) or an array of objects (a null element is
    skipped), and a result's `items` (a results page's) the same. Anything else is a broken
    answer, an outage: read as "no data" it would be answered, charged and cached for days."""
    if not _objects_or_null(result):
        raise ProviderError(
            f"DataForSEO task result is not an array of objects ({type(result).__name__})"
        )
    if not all(_objects_or_null(item.get("items")) for item in result or () if item is not None):
        raise ProviderError("DataForSEO task result has items that are not an array of objects")
    if any(_negative_figure(item) for item in result or () if item is not None):
        raise ProviderError("DataForSEO task result has a negative volume or cpc")


def _negative_figure(item: Mapping[str, Any]) -> bool:
    """Whether a volume (a month's too) or cpc that `to_keyword_data` reads is a negative
    number: no keyword is searched a negative number of times, so the answer is broken, and
    read as 0 it would be a measurement nobody made."""
    months = [
        month
        for path in MONTHLY_PATHS
        if isinstance(monthly := _get(item, *path), list)
        for month in monthly
    ]
    figures = [
        *(_get(item, *path) for path in (*VOLUME_PATHS, *CPC_PATHS)),
        *(_get(month, "search_volume") for month in months),
    ]
    return any((number := _number(figure)) is not None and number < 0 for figure in figures)


def _objects_or_null(value: Any) -> bool:
    return value is None or (
        isinstance(value, list) and all(item is None or isinstance(item, dict) for item in value)
    )


# --- response mapping -----------------------------------------------------------------------


def _get(item: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(item, Mapping):
            return None
        item = item.get(key)
    return item


def _number(value: Any) -> int | float | None:
    """A JSON number as sent: an integer stays an integer, exact at any size (a float would
    round one past 2^53, as Google Ads' int64 strings are not); not a boolean or NaN/Infinity."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value if isinstance(value, int) or math.isfinite(value) else None


def _first_number(*values: Any) -> int | float | None:
    for value in values:
        number = _number(value)
        if number is not None:
            return number
    return None


VOLUME_PATHS = (
    ("search_volume",),
    ("search_volume_info", "search_volume"),
    ("keyword_info", "search_volume"),
)
CPC_PATHS = (("cpc",), ("search_volume_info", "cpc"), ("keyword_info", "cpc"))
MONTHLY_PATHS = (("monthly_searches",), ("keyword_info", "monthly_searches"))
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


def competition_level(item: Mapping[str, Any]) -> Competition | None:
    """The level string when there is one, else the 0-100 index in Google's bands
    (LOW 0-33, MEDIUM 34-66, HIGH 67-100), else None."""
    for value in (
        item.get("competition"),
        _get(item, "search_volume_info", "competition_level"),
        _get(item, "keyword_info", "competition_level"),
    ):
        level = _LEVELS.get(value.strip().upper()) if isinstance(value, str) else None
        if level is not None:
            return level
    index = _first_number(
        item.get("competition_index"), _get(item, "search_volume_info", "competition")
    )
    if index is None:
        return None
    if index < 34:
        return "low"
    if index < 67:
        return "medium"
    return "high"


def trends(item: Mapping[str, Any]) -> list[MonthlyTrend]:
    """Monthly volumes, oldest first, the last 12 (DataForSEO sends newest first); a month
    without a figure has volume None; one outside a saved search's years (`TREND_YEARS`) is
    left out, as one without a month."""
    monthly = next(
        (found for path in MONTHLY_PATHS if isinstance(found := _get(item, *path), list)), None
    )
    points: list[MonthlyTrend] = []
    for entry in monthly if isinstance(monthly, list) else []:
        month, year = _number(_get(entry, "month")), _number(_get(entry, "year"))
        if month is None or year is None or not 1 <= month <= 12 or int(year) not in TREND_YEARS:
            continue
        volume = _number(_get(entry, "search_volume"))
        points.append(
            {
                "month": int(month),
                "year": int(year),
                "volume": None if volume is None else int(volume),
            }
        )
    points.sort(key=lambda point: (point["year"], point["month"]))
    return points[-12:]


def to_keyword_data(keyword: str, item: Mapping[str, Any]) -> KeywordData:
    """One result item in our shape; `keyword` echoes the request, not DataForSEO's lower case.
    Without a search volume the keyword has no data, whatever else the item carries. The
    nested `keyword_info` of DataForSEO Labs' items is read too, its average volume before the
    original's fallback, the newest month's."""
    volume = _first_number(
        *(_get(item, *path) for path in VOLUME_PATHS),
        _get(_first(_get(item, "keyword_info", "monthly_searches")), "search_volume"),
    )
    if volume is None:
        return without_data(keyword)
    cpc = _first_number(*(_get(item, *path) for path in CPC_PATHS))
    row = measured(keyword, int(volume), cpc, competition_level(item))
    difficulty = _number(_get(item, "keyword_properties", "keyword_difficulty"))
    if difficulty is not None:
        row["difficulty"] = min(100, max(0, round(difficulty)))
    points = trends(item)
    if points:
        row["trends"] = points
    return row


def _first(value: Any) -> Any:
    return value[0] if isinstance(value, list) and value else None
