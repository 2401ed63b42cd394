"""Google Ads API keyword metrics over REST (docs/original-app.md#google-ads-provider;
docs/keyword-search.md#google-ads): no Google SDK, which would cost the cold start more than
everything else the function imports.

Two calls, both with httpx on the container's one client (`dataforseo.http_client`):

1. `POST GOOGLE_ADS_TOKEN_URL` (OAuth refresh-token grant, 10 s): an access token, kept by the
   provider (so per warm container) until 60 s before its `expires_in`.
2. `POST {GOOGLE_ADS_API_BASE_URL}/v26/customers/{id}:generateKeywordHistoricalMetrics`
   (KeywordPlanIdeaService) with the bearer token, `developer-token` and `login-customer-id`.
   The original ran a GAQL `searchStream`; GAQL reads an account's own resources and has no
   figures for arbitrary keywords, so that call could not return search volumes.

Limits as the original: each request carries at most 200 keywords whose comma-joined text is at
most 8,000 characters; a longer list goes in several requests. Keywords are sent once each,
spaces collapsed, and matched back case-insensitively by the result's `text` or one of its
`closeVariants` (Google merges close variants into one result). Keywords Google would refuse
(the same rule as DataForSEO's: `dataforseo.sendable`) get no data instead of failing the rest.

Failures go through the provider's circuit breaker, classified as DataForSEO's are: 401/403
(and a refused refresh token) are configuration (remembered for /api/health), 429 or
`RESOURCE_EXHAUSTED` is rate limiting (`Retry-After` honoured, else 60 s), other 4xx refuse the
request's input, and 5xx, timeouts and garbage are outages, a 200 not in Google's shape too
(`check_answer`: a missing figure is no data, a wrong type is not). Google's quota errors name their
wait (`retryDelay`), which becomes the answer's `Retry-After`. The token and the call together
end by the request's deadline (`shared.providers.deadline`), as DataForSEO's call does. Secrets
never reach a log line.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, NoReturn

import httpx

from shared.config import Settings
from shared.providers import account
from shared.providers.base import (
    KeywordData,
    ProviderConfigurationError,
    ProviderError,
    ProviderInputError,
    ProviderRateLimitedError,
    SearchOptions,
    match_key,
    measured,
    missing_configuration,
    scrub,
    without_data,
)
from shared.providers.breaker import CircuitBreaker
from shared.providers.dataforseo import (
    competition_level,
    distinct_sendable,
    http_client,
    location_code,
    snippet,
)
from shared.providers.deadline import call_within, logged_request
from shared.providers.languages import GOOGLE_ADS_API_LANGUAGE_IDS
from shared.storable_text import loads_json

API_VERSION = "v26"  # the newest version Google serves; each lives about a year
BASE_URL = "https://googleads.googleapis.com"
TOKEN_URL = "https://oauth2.googleapis.com/token"
TOKEN_TIMEOUT_S = 10.0
TIMEOUT_S = 30.0  # without a deadline (direct use); requests get theirs from SearchOptions
TOKEN_MARGIN_S = 60.0  # refresh this long before the token expires
MAX_KNOWN_TOKENS = 8  # the newest issued tokens `_scrub` knows (each lives up to an hour)
MAX_KEYWORDS = 200
MAX_JOINED_CHARS = 8_000
RATE_LIMITED_RETRY_S = 60
_INT64 = re.compile(r"-?[0-9]{1,19}")  # int64's decimal form; longer is no int64 (or a DoS)
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
# A wait past a day is no answer a client can use (a far HTTP-date, a broken header).
MAX_RETRY_AFTER_S = 86_400
# A protobuf Duration: int64 seconds, nanoseconds; longer digit runs are no Duration.
_RETRY_DELAY = re.compile(r'"retryDelay"\s*:\s*"(\d{1,19})(?:\.(\d{1,9}))?s"')


def batches(keywords: list[str]) -> list[list[str]]:
    """`keywords` in order, split so each batch has at most 200 whose comma-joined text is at
    most 8,000 characters (a keyword is at most 80, so every one fits)."""
    result: list[list[str]] = []
    current: list[str] = []
    length = 0
    for keyword in keywords:
        added = len(keyword) + (1 if current else 0)
        if current and (len(current) == MAX_KEYWORDS or length + added > MAX_JOINED_CHARS):
            result.append(current)
            current, length, added = [], 0, len(keyword)
        current.append(keyword)
        length += added
    if current:
        result.append(current)
    return result


def retry_after(response: httpx.Response, *, now: datetime | None = None) -> int:
    """Seconds to wait: the `Retry-After` header (seconds or an HTTP-date), else the quota
    error's `retryDelay` ("27s", "2.500s"), else 60. Rounded up, at least 1: rounded down, a
    client that obeys it retries before Google's wait is over. At most a day."""
    for found in (
        _header_seconds(response.headers.get("Retry-After"), now or datetime.now(UTC)),
        _delay_seconds(response.text),
    ):
        if found is not None and found > 0:
            return min(found, MAX_RETRY_AFTER_S)
    return RATE_LIMITED_RETRY_S


def _header_seconds(value: str | None, now: datetime) -> int | None:
    """`Retry-After` per RFC 9110 §10.2.3: delay-seconds, or an HTTP-date (IMF-fixdate, or the
    obsolete RFC 850 and asctime forms, all GMT) as the seconds from `now`, at least 1."""
    if value is None:
        return None
    seconds = _int(value)
    if seconds is not None:
        return max(1, seconds) if seconds >= 0 else None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # asctime carries no zone; HTTP-dates are GMT
        when = when.replace(tzinfo=UTC)
    return max(1, math.ceil((when - now).total_seconds()))


def _delay_seconds(text: str) -> int | None:
    """The quota error's `retryDelay` (a protobuf Duration, "2.500s") rounded up, at least 1."""
    match = _RETRY_DELAY.search(text)
    if match is None:
        return None
    whole, fraction = int(match.group(1)), match.group(2) or ""
    return max(1, whole + (1 if fraction.strip("0") else 0))


def _int(value: Any) -> int | None:
    """An int64 from Google's JSON (sent as a decimal string) or a plain number, else None.
    Only ASCII digits: `str.isdigit` accepts "²", which `int` then refuses."""
    if isinstance(value, bool):
        return None
    number: int | None = None
    if isinstance(value, int):
        number = value
    elif isinstance(value, float) and math.isfinite(value):
        number = int(value)
    elif isinstance(value, str) and _INT64.fullmatch(value.strip()):
        number = int(value.strip())
    return number if number is not None and _INT64_MIN <= number <= _INT64_MAX else None


def to_keyword_data(keyword: str, metrics: Any) -> KeywordData:
    """One result's `keywordMetrics` in our shape. Without `avgMonthlySearches` the keyword has
    no data; cpc is the mean of the top-of-page bids present (micros → dollars); difficulty is
    `competitionIndex` when Google sent one; no trends (as the original)."""
    if not isinstance(metrics, Mapping):
        return without_data(keyword)
    volume = _int(metrics.get("avgMonthlySearches"))
    if volume is None:
        return without_data(keyword)
    bids = [
        bid
        for bid in (
            _int(metrics.get("lowTopOfPageBidMicros")),
            _int(metrics.get("highTopOfPageBidMicros")),
        )
        if bid is not None
    ]
    cpc = sum(bids) / len(bids) / 1_000_000 if bids else None
    index = _int(metrics.get("competitionIndex"))
    competition = competition_level(
        {"competition": metrics.get("competition"), "competition_index": index}
    )
    row = measured(keyword, volume, cpc, competition)
    if index is not None:
        row["difficulty"] = min(100, max(0, index))
    return row


_INT64_METRICS = (
    "avgMonthlySearches",
    "competitionIndex",
    "lowTopOfPageBidMicros",
    "highTopOfPageBidMicros",
)


# No keyword is searched a negative number of times nor bid a negative price: such a figure is
# broken, and read as 0 it would be a measurement nobody made.
_NON_NEGATIVE_METRICS = ("avgMonthlySearches", "lowTopOfPageBidMicros", "highTopOfPageBidMicros")


def check_answer(body: Mapping[str, Any]) -> None:
    """Raise unless a 200's body has Google's documented shape for what we read: `results`
    absent, null or an array of objects, each with a string `text`, `closeVariants` an array of
    strings, `keywordMetrics` an object whose int64 fields are integers (Google sends decimal
    strings), the volume and bids not negative, and whose `competition` is a string. Google
    omits what it has no figure for, and that stays no data; anything else is a broken answer,
    an outage: read as "no data" it would be answered, charged and cached for days."""
    results = body.get("results")
    if results is None:
        return
    if not isinstance(results, list):
        _broken(f"results is {type(results).__name__}")
    for result in results:
        if not isinstance(result, Mapping):
            _broken(f"a result is {type(result).__name__}")
        if not isinstance(result.get("text", ""), str):
            _broken("a result's text is not a string")
        variants = result.get("closeVariants")
        if variants is not None and not (
            isinstance(variants, list) and all(isinstance(name, str) for name in variants)
        ):
            _broken("a result's closeVariants is not an array of strings")
        metrics = result.get("keywordMetrics")
        if metrics is None:
            continue
        if not isinstance(metrics, Mapping):
            _broken(f"keywordMetrics is {type(metrics).__name__}")
        for field in _INT64_METRICS:
            if metrics.get(field) is not None and _int(metrics[field]) is None:
                _broken(f"keywordMetrics.{field} is not an int64")
        for field in _NON_NEGATIVE_METRICS:
            if (number := _int(metrics.get(field))) is not None and number < 0:
                _broken(f"keywordMetrics.{field} is negative")
        if not isinstance(metrics.get("competition", ""), str | None):
            _broken("keywordMetrics.competition is not a string")


def _broken(what: str) -> NoReturn:
    raise ProviderError(f"Google Ads API answer is not in Google's shape: {what}")


def _index_results(body: Mapping[str, Any]) -> dict[str, Any]:
    """`keywordMetrics` by `match_key` of each result's text and close variants."""
    indexed: dict[str, Any] = {}
    results = body.get("results")
    for result in results if isinstance(results, list) else []:
        if not isinstance(result, Mapping):
            continue
        variants = result.get("closeVariants")
        names = [result.get("text"), *(variants if isinstance(variants, list) else [])]
        for name in names:
            if isinstance(name, str) and name.strip():
                indexed.setdefault(match_key(name), result.get("keywordMetrics"))
    return indexed


class GoogleAdsProvider:
    key = "google-ads"
    name = "Google Ads"

    def __init__(
        self,
        *,
        client_id: str | None,
        client_secret: str | None,
        developer_token: str | None,
        refresh_token: str | None,
        customer_id: str | None,
        login_customer_id: str | None = None,
        base_url: str = BASE_URL,
        token_url: str = TOKEN_URL,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self._client_id = (client_id or "").strip()
        self._client_secret = (client_secret or "").strip()
        self._developer_token = (developer_token or "").strip()
        self._refresh_token = (refresh_token or "").strip()
        self._customer_id = (customer_id or "").replace("-", "").strip()
        self._login_customer_id = (login_customer_id or "").replace("-", "").strip()
        self.base_url = base_url.rstrip("/")
        self.token_url = token_url
        self.breaker = breaker or CircuitBreaker(self.name)
        self._token: str | None = None
        self._token_until = 0.0  # time.monotonic()
        # Every access token issued and not yet expired (→ its time.monotonic() expiry), the
        # cached one and any a 401 dropped or a refresh replaced: Google's text may quote one
        # after we stop using it, and it may still be valid, so `_scrub` keeps knowing it.
        self._issued_tokens: dict[str, float] = {}
        self._token_lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> GoogleAdsProvider:
        return cls(
            client_id=settings.google_ads_client_id,
            client_secret=settings.google_ads_client_secret,
            developer_token=settings.google_ads_developer_token,
            refresh_token=settings.google_ads_refresh_token,
            customer_id=settings.google_ads_customer_id,
            login_customer_id=settings.google_ads_login_customer_id,
            base_url=settings.google_ads_api_base_url,
            token_url=settings.google_ads_token_url,
        )

    def configuration_error(self) -> str | None:
        """What is missing (naming the variables), or Google's recent rejection; else None."""
        return self._missing_credentials() or account.rejection(self.key)

    def _missing_credentials(self) -> str | None:
        missing = [
            variable
            for variable, value in (
                ("GOOGLE_ADS_CLIENT_ID", self._client_id),
                ("GOOGLE_ADS_CLIENT_SECRET", self._client_secret),
                ("GOOGLE_ADS_DEVELOPER_TOKEN", self._developer_token),
                ("GOOGLE_ADS_REFRESH_TOKEN", self._refresh_token),
                ("GOOGLE_ADS_CUSTOMER_ID", self._customer_id),
            )
            if not value
        ]
        if self._customer_id and not self._customer_id.isdigit():
            missing.append("GOOGLE_ADS_CUSTOMER_ID (10 digits)")
        if self._login_customer_id and not self._login_customer_id.isdigit():
            missing.append("GOOGLE_ADS_LOGIN_CUSTOMER_ID (10 digits)")
        return missing_configuration(self.name, missing)

    def keyword_data(self, keywords: list[str], options: SearchOptions) -> list[KeywordData]:
        missing = self._missing_credentials()
        if missing:
            raise ProviderConfigurationError(missing)
        language = GOOGLE_ADS_API_LANGUAGE_IDS.get(options.language or "en")
        if language is None:
            raise ProviderInputError(f"Google Ads has no language for {options.language!r}")
        requested = [keyword.strip() for keyword in keywords]
        body: dict[str, Any] = {
            "language": f"languageConstants/{language}",
            "geoTargetConstants": [],
            "keywordPlanNetwork": "GOOGLE_SEARCH",
        }
        code = location_code(options.location)
        if code is not None:  # Worldwide: an empty list targets every location
            body["geoTargetConstants"] = [f"geoTargetConstants/{code}"]
        indexed: dict[str, Any] = {}
        for batch in batches(distinct_sendable(requested)):
            indexed.update(self._request({**body, "keywords": batch}, options, len(batch)))
        return [
            to_keyword_data(keyword, indexed[match_key(keyword)])
            if match_key(keyword) in indexed
            else without_data(keyword)
            for keyword in requested
        ]

    # --- HTTP ------------------------------------------------------------------------------

    def _request(self, body: dict[str, Any], options: SearchOptions, count: int) -> dict[str, Any]:
        """One batch through the breaker, logged; its metrics by `match_key`."""
        path = f"/{API_VERSION}/customers/{self._customer_id}:generateKeywordHistoricalMetrics"
        answer = logged_request(
            provider=self.key,
            service="Google Ads",
            endpoint=path,
            keywords=count,
            deadline=options.deadline,
            call=lambda: self.breaker.call(lambda: self._post_within(path, body, options.deadline)),
            scrub=self._scrub,
        )
        return _index_results(answer)

    def _post_within(
        self, path: str, body: dict[str, Any], deadline: float | None
    ) -> dict[str, Any]:
        """`_post`, but the caller waits no longer than `deadline` (`shared.providers.deadline`):
        the token and the API call together."""
        if deadline is None:
            return self._post(path, body, None)
        return call_within(deadline, lambda budget: self._post(path, body, budget), self.name)

    def _post(self, path: str, body: dict[str, Any], budget_s: float | None) -> dict[str, Any]:
        """The token (cached or new), then the API call; no network step waits longer than
        `budget_s`."""
        token = self._access_token(budget_s)
        headers = {
            "Authorization": f"Bearer {token}",
            "developer-token": self._developer_token,
            "login-customer-id": self._login_customer_id or self._customer_id,
        }
        response = self._send(
            "POST", self.base_url + path, TIMEOUT_S, budget_s, json=body, headers=headers
        )
        if response.status_code == 401:
            with self._token_lock:  # a revoked token: the next call asks for a new one
                self._token = None
        answer = self._checked(response, "Google Ads API")
        check_answer(answer)
        return answer

    def _access_token(self, budget_s: float | None) -> str:
        """The cached access token, or a new one from the refresh-token grant."""
        with self._token_lock:
            if self._token is not None and time.monotonic() < self._token_until:
                return self._token
        response = self._send(
            "POST",
            self.token_url,
            TOKEN_TIMEOUT_S,
            budget_s,
            data={
                "grant_type": "refresh_token",
                "client_id": self._client_id,
                "client_secret": self._client_secret,
                "refresh_token": self._refresh_token,
            },
        )
        if response.status_code in (400, 401):  # invalid_grant, invalid_client
            check = (
                "check GOOGLE_ADS_CLIENT_ID, GOOGLE_ADS_CLIENT_SECRET and GOOGLE_ADS_REFRESH_TOKEN"
            )
            account.reject(
                self.key,
                f"Google OAuth refused the refresh token (HTTP {response.status_code}: "
                f"{snippet(response.text, self._scrub)}): {check}",
                shown=f"Google OAuth refused the refresh token (HTTP {response.status_code}): "
                f"{check} (Google's message is in the logs)",
            )
        answer = self._checked(response, "Google OAuth")
        token, expires_in = answer.get("access_token"), _int(answer.get("expires_in"))
        if not isinstance(token, str) or not token or expires_in is None:
            raise ProviderError("Google OAuth answered without access_token/expires_in")
        now = time.monotonic()
        with self._token_lock:
            self._token = token
            self._token_until = now + max(0.0, expires_in - TOKEN_MARGIN_S)
            issued = {t: until for t, until in self._issued_tokens.items() if until > now}
            issued[token] = now + max(0, expires_in)
            self._issued_tokens = dict(list(issued.items())[-MAX_KNOWN_TOKENS:])
        return token

    def _send(
        self, method: str, url: str, limit_s: float, budget_s: float | None, **kwargs: Any
    ) -> httpx.Response:
        """One request whose every network step waits at most `limit_s` and `budget_s`."""
        timeout_s = limit_s if budget_s is None else min(limit_s, budget_s)
        try:
            return http_client().request(method, url, timeout=timeout_s, **kwargs)
        except httpx.TimeoutException as error:
            raise ProviderError(
                f"Google request timed out after {timeout_s:.1f} s ({type(error).__name__})"
            ) from None
        except httpx.HTTPError as error:
            raise ProviderError(f"Google request failed ({type(error).__name__})") from None

    def _checked(self, response: httpx.Response, service: str) -> dict[str, Any]:
        """The JSON object of a successful answer, else the error of its kind."""
        status = response.status_code
        detail = f"{service} answered {status}: {snippet(response.text, self._scrub)}"
        if status in (401, 403):
            check = (
                "(check GOOGLE_ADS_DEVELOPER_TOKEN, GOOGLE_ADS_CUSTOMER_ID, "
                "GOOGLE_ADS_LOGIN_CUSTOMER_ID and the refresh token's access)"
            )
            account.reject(
                self.key,
                f"{detail} {check}",
                shown=f"{service} answered {status} {check}; Google's message is in the logs",
            )
        if status == 429 or (not response.is_success and "RESOURCE_EXHAUSTED" in response.text):
            raise ProviderRateLimitedError(detail, retry_after=retry_after(response))
        if 400 <= status < 500:
            raise ProviderInputError(detail)
        if not response.is_success:
            raise ProviderError(detail)
        try:
            answer = loads_json(response.content)
        except ValueError:
            raise ProviderError(f"{service} returned a non-JSON body: {detail}") from None
        if not isinstance(answer, dict):
            raise ProviderError(f"{service} returned JSON that is not an object")
        return answer

    def _scrub(self, text: str) -> str:
        """Upstream text goes to logs: make sure it cannot carry our secrets in any form."""
        with self._token_lock:
            tokens = (self._token, *self._issued_tokens)
        secrets = (*tokens, self._refresh_token, self._client_secret, self._developer_token)
        return scrub(text, (secret for secret in secrets if secret))
