"""`POST /api/keywords/related` and `POST /api/content-brief` bodies with the original messages
(docs/original-app.md#post-apikeywordsrelated, #post-apicontent-brief).

Beyond the original: a related-keywords language must be one the keyword data exists in (as
for the keyword search); a content brief's language must have the keyword search's format (the
original sent any 2-5 characters to DataForSEO), and a brief refuses Worldwide (`GL`): a
results page is always a country's, and the original sent a location DataForSEO does not have.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field

from shared.contracts.keywords import (
    KEYWORD_CHARS,
    LANGUAGE_FORMAT,
    LOCATION_CODES,
    OptionalLanguage,
    OptionalLocation,
    checked_keyword,
)
from shared.contracts.validation import NoLoneSurrogates, WholeNumber, fail
from shared.js_text import js_length, js_trim

_LOCATION_MESSAGE = "Location must be one of US, GB, CA, AU, DE, FR, IN, or GL for Global"


def _seed(value: str) -> str:
    return checked_keyword(
        value,
        chars_message="Keyword must contain only letters, numbers, spaces, hyphens, and "
        "underscores",
    )


def _limit(value: int | None) -> int | None:
    if value is not None and not 1 <= value <= 50:
        raise fail("limit", "Limit must be between 1 and 50")
    return value


class RelatedKeywordsRequest(NoLoneSurrogates):
    """Unknown keys are ignored; the keyword is trimmed, as the original."""

    keyword: Annotated[str, AfterValidator(_seed)]
    location: OptionalLocation = None
    language: OptionalLanguage = None
    limit: Annotated[
        Annotated[int, Field(strict=True), WholeNumber] | None, AfterValidator(_limit)
    ] = None


def _brief_keyword(value: str) -> str:
    """Not trimmed (the original's rule), but U+FEFF removed as for the keyword search, and a
    keyword of nothing but spaces is missing (the original built a brief for it)."""
    value = value.replace("\ufeff", "")
    if js_length(js_trim(value)) < 1:
        raise fail("keyword_required", "Keyword is required")
    if js_length(value) > 100:
        raise fail("keyword_too_long", "Keyword must be less than 100 characters")
    if not KEYWORD_CHARS.fullmatch(value):
        raise fail(
            "keyword_chars",
            "Keyword can only contain letters, numbers, spaces, hyphens, and underscores",
        )
    return value


def _brief_location(value: str) -> str:
    if value not in LOCATION_CODES:
        raise fail("location", _LOCATION_MESSAGE)
    if value == "GL":
        raise fail("location_country", "Content briefs need a country: GL has no results page")
    return value


def _brief_language(value: str) -> str:
    """The keyword search's format (`en`, `en-US`); the original sent any 2-5 characters."""
    if not LANGUAGE_FORMAT.match(value):
        raise fail("language", "Language must be valid language code (e.g., en, en-US)")
    return value


class ContentBriefRequest(NoLoneSurrogates):
    keyword: Annotated[str, AfterValidator(_brief_keyword)]
    location: Annotated[str, AfterValidator(_brief_location)] = "US"
    language: Annotated[str, AfterValidator(_brief_language)] = "en"
