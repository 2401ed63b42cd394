"""Keyword data providers: Mock, DataForSEO and Google Ads behind one interface
(docs/original-app.md#keyword-providers).

    provider = get_provider()  # KEYWORD_API_PROVIDER; one instance per warm container
    rows = provider.keyword_data(["seo tools"], SearchOptions("phrase", "United States", "en"))

`rows` has the input's length and order. Failures raise `ProviderError` (whose text is for logs
only) or one of its kinds: `ProviderUnavailableError` (circuit open: answer 503 with
`retry_after`), `ProviderRateLimitedError` (the account's budget is spent or the upstream said
"too many requests": 503 with `retry_after`), `ProviderConfigurationError` and
`ProviderInputError`. Importing this package does not import httpx: the DataForSEO and
Google Ads modules load on first use.
"""

from shared.providers.base import (
    Competition,
    Intent,
    KeywordData,
    MatchType,
    MonthlyTrend,
    Provider,
    ProviderConfigurationError,
    ProviderError,
    ProviderInputError,
    ProviderRateLimitedError,
    ProviderUnavailableError,
    RelatedKeywordData,
    SearchOptions,
    infer_intent,
    without_data,
)
from shared.providers.locations import LOCATIONS, normalize_location
from shared.providers.registry import (
    breaker_stats,
    configuration_error,
    configured_key,
    get_provider,
    mock_provider,
    related_provider,
    reset_providers,
    serp_provider,
)

__all__ = [
    "LOCATIONS",
    "Competition",
    "Intent",
    "KeywordData",
    "MatchType",
    "MonthlyTrend",
    "Provider",
    "ProviderConfigurationError",
    "ProviderError",
    "ProviderInputError",
    "ProviderRateLimitedError",
    "ProviderUnavailableError",
    "RelatedKeywordData",
    "SearchOptions",
    "breaker_stats",
    "configuration_error",
    "configured_key",
    "get_provider",
    "infer_intent",
    "mock_provider",
    "normalize_location",
    "related_provider",
    "reset_providers",
    "serp_provider",
    "without_data",
]
