"""The request's ISO location codes and the names providers take
(docs/original-app.md#cross-cutting-rules)."""

from __future__ import annotations

DEFAULT_LOCATION = "United States"

LOCATIONS: dict[str, str] = {
    "US": "United States",
    "GB": "United Kingdom",
    "CA": "Canada",
    "AU": "Australia",
    "DE": "Germany",
    "FR": "France",
    "IN": "India",
    "GL": "Worldwide",
}


def normalize_location(code: str | None) -> str:
    """The provider-facing name for an ISO code; missing or unknown → "United States"."""
    if code is None:
        return DEFAULT_LOCATION
    return LOCATIONS.get(code.strip(), DEFAULT_LOCATION)
