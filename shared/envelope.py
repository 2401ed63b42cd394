"""The error envelope's body `{error, message, statusCode, timestamp}` and a 401's challenge,
framework-free.

Shared by the HTTP layer (`shared.http.errors`) and the crons' minimal Vercel entry, which must
not import Starlette.
"""

from __future__ import annotations

from typing import Any

from shared.clock import iso_ms, utcnow

GENERIC_500 = "An unexpected error occurred"
GENERIC_503 = "Service temporarily unavailable. Please try again later."
# `WWW-Authenticate` of every 401 (RFC 9110 §15.5.2 needs a challenge; RFC 6750 §3 gives Bearer's):
# `error="invalid_token"` when the request carried a token that was refused (expired, forged,
# of a pending session or of a user Clerk deleted; a wrong cron secret), plain otherwise.
BEARER_CHALLENGE = "Bearer"
INVALID_TOKEN_CHALLENGE = 'Bearer error="invalid_token"'


def default_label(status: int) -> str:
    if status == 503:
        return "Service Unavailable"
    if status >= 500:
        return "Internal Server Error"
    if status == 405:
        return "Method Not Allowed"
    if status >= 400:
        return "Client Error"
    return "Error"


def envelope(status: int, message: str, *, label: str | None = None) -> dict[str, Any]:
    """The body; 5xx messages are replaced by the generic texts."""
    if status == 503:
        message = GENERIC_503
    elif status >= 500:
        message = GENERIC_500
    return {
        "error": label or default_label(status),
        "message": message,
        "statusCode": status,
        "timestamp": iso_ms(utcnow()),
    }
