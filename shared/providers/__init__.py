"""Keyword data providers: Mock and DataForSEO behind one interface (spec §6).

    provider = get_provider()  # KEYWORD_API_PROVIDER; one instance per warm container
    rows = provider.keyword_data(["seo tools"], SearchOptions("phrase", "United States", "en"))

`rows` has the input's length and order. Failures raise `ProviderError` (whose text is for logs
only), `ProviderUnavailableError` (circuit open: answer 503 with `retry_after`) or
`ProviderConfigurationError`. Importing this package does not import httpx: DataForSEO's module
loads on first use.
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
    ProviderUnavailableError,
    RelatedKeywordData,
    SearchOptions,
    infer_intent,
)
from shared.providers.locations import LOCATIONS, normalize_location
from shared.providers.registry import (
    breaker_stats,
    configuration_error,
    get_provider,
    mock_provider,
    reset_providers,
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
    "ProviderUnavailableError",
    "RelatedKeywordData",
    "SearchOptions",
    "breaker_stats",
    "configuration_error",
    "get_provider",
    "infer_intent",
    "mock_provider",
    "normalize_location",
    "reset_providers",
]
