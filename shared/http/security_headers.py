"""The headers every answer carries (docs/http-contract.md), apart from the app so the Lambda
adapter's own refusal (`shared.http.lambda_events`) carries them without importing it."""

from __future__ import annotations

from shared.config import ConfigurationError, get_settings

# The original's, on every answer (vercel.json repeats them, the local gateway's 404 too). Its
# CSP was a page's; a JSON answer loads nothing and is framed by no one.
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "strict-origin-when-cross-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), interest-cohort=()",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "X-XSS-Protection": "1; mode=block",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
}
HSTS = "max-age=31536000; includeSubDomains; preload"
API_VERSION = "v1"


def production() -> bool:
    """For HSTS; a broken configuration is reported by the request itself (500), not here."""
    try:
        return get_settings().is_production
    except ConfigurationError:
        return False


def every_answer(request_id: str, *, production: bool) -> dict[str, str]:
    """The headers every answer carries, whoever makes it (`shared.http.app.RequestContext`,
    the Lambda adapter's refusal of an event that is not HTTP): one list, so none is forgotten."""
    headers = {"API-Version": API_VERSION, "X-Request-ID": request_id, **SECURITY_HEADERS}
    if production:
        headers["Strict-Transport-Security"] = HSTS
    return headers
