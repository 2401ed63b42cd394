"""Which provider serves a request, one instance per warm container
(docs/original-app.md#keyword-providers, #d2).

The original built a new provider, and with it a new circuit breaker, on every request, so the
breaker never saw more than one failure. Here each provider is built once per container and
kept at module level (never in a FastAPI lifespan, which Mangum runs per invocation), so its
breaker counts failures across invocations (and Google Ads' access token is reused). The
DataForSEO and Google Ads modules, and httpx with them, are imported only when configured.

An unknown provider is a configuration error everywhere, never a silent fallback to Mock: the
original fell back outside production, so a misconfigured deployment served invented data.
"""

from __future__ import annotations

import sys
import threading
from typing import TYPE_CHECKING, Any

from shared.config import get_settings
from shared.providers.base import Provider, ProviderConfigurationError, ProviderError
from shared.providers.mock import MockProvider

if TYPE_CHECKING:
    from shared.providers.dataforseo import DataForSEOProvider
    from shared.providers.google_ads import GoogleAdsProvider

SUPPORTED = ("mock", "dataforseo", "google-ads")
DATAFORSEO_MODULE = "shared.providers.dataforseo"

_lock = threading.Lock()
_mock: MockProvider | None = None
_dataforseo: DataForSEOProvider | None = None
_related: DataForSEOProvider | None = None
_serp: DataForSEOProvider | None = None
_google_ads: GoogleAdsProvider | None = None


def configured_key() -> str:
    """KEYWORD_API_PROVIDER, trimmed and lower-cased; empty means mock."""
    return get_settings().keyword_api_provider.strip().lower() or "mock"


def get_provider() -> Provider:
    """The configured provider (KEYWORD_API_PROVIDER, default mock), cached for the container.

    Any other name raises `ProviderConfigurationError`, in every environment. Missing
    DataForSEO or Google Ads credentials surface from `keyword_data` as
    `ProviderConfigurationError` (and from `configuration_error()` for health), not from here.
    """
    key = configured_key()
    if key == "dataforseo":
        return _dataforseo_provider()
    if key == "google-ads":
        return _google_ads_provider()
    if key != "mock":
        raise ProviderConfigurationError(
            f"KEYWORD_API_PROVIDER={key!r} is not supported; use one of {', '.join(SUPPORTED)}"
        )
    return mock_provider()


def mock_provider() -> Provider:
    """Always Mock (trial users), with MOCK_PROVIDER_SEED and MOCK_PROVIDER_DELAY_MS."""
    global _mock
    if _mock is None:
        with _lock:
            if _mock is None:
                settings = get_settings()
                _mock = MockProvider(
                    seed=settings.mock_provider_seed, delay_ms=settings.mock_provider_delay_ms
                )
    return _mock


def _dataforseo_provider() -> DataForSEOProvider:
    global _dataforseo
    if _dataforseo is None:
        with _lock:
            if _dataforseo is None:
                from shared.providers.dataforseo import DataForSEOProvider

                _dataforseo = DataForSEOProvider.from_settings(get_settings())
    return _dataforseo


def _google_ads_provider() -> GoogleAdsProvider:
    global _google_ads
    if _google_ads is None:
        with _lock:
            if _google_ads is None:
                from shared.providers.google_ads import GoogleAdsProvider

                _google_ads = GoogleAdsProvider.from_settings(get_settings())
    return _google_ads


def related_provider() -> Provider:
    """The configured provider for related keywords. DataForSEO gets an instance with a circuit
    breaker of its own: deployed, the related-keywords function is its own container and so
    has its own breaker; in one process (`keyflash dev`, the tests) this keeps the keyword
    search's failures from opening its circuit, and its failures the search's. Other providers
    are shared (Mock has no breaker; Google Ads has no related keywords)."""
    global _related
    if configured_key() != "dataforseo":
        return get_provider()
    if _related is None:
        with _lock:
            if _related is None:
                from shared.providers.breaker import CircuitBreaker
                from shared.providers.dataforseo import DataForSEOProvider

                _related = DataForSEOProvider.from_settings(
                    get_settings(), breaker=CircuitBreaker("DataForSEO related keywords")
                )
    return _related


def serp_provider() -> DataForSEOProvider:
    """DataForSEO for results pages (content briefs), with its own circuit breaker: the SERP
    API is another service than Google Ads data, so one's outage must not open the other's
    circuit. Not metered by DATAFORSEO_REQUESTS_PER_MINUTE (the Google Ads limit)."""
    global _serp
    if _serp is None:
        with _lock:
            if _serp is None:
                from shared.providers.breaker import CircuitBreaker
                from shared.providers.dataforseo import DataForSEOProvider

                settings = get_settings()
                _serp = DataForSEOProvider(
                    settings.dataforseo_api_login,
                    settings.dataforseo_api_password,
                    base_url=settings.dataforseo_api_base_url,
                    breaker=CircuitBreaker("DataForSEO SERP"),
                )
    return _serp


def configuration_error() -> str | None:
    """Why the configured provider cannot serve requests (for the health check), or None."""
    try:
        provider = get_provider()
    except ProviderError as error:
        return str(error)
    check = getattr(provider, "configuration_error", None)
    return check() if callable(check) else None


def breaker_stats() -> dict[str, Any] | None:
    """The configured provider's circuit breaker stats, or None (Mock has no breaker)."""
    try:
        provider = get_provider()
    except ProviderError:
        return None
    breaker = getattr(provider, "breaker", None)
    return None if breaker is None else dict(breaker.stats())


def reset_providers() -> None:
    """Forget the cached providers, their breakers and the HTTP client (tests)."""
    global _mock, _dataforseo, _related, _serp, _google_ads
    with _lock:
        _mock = None
        _dataforseo = None
        _related = None
        _serp = None
        _google_ads = None
    module = sys.modules.get(DATAFORSEO_MODULE)
    if module is not None:
        module.close_client()
