"""`POST /api/keywords` body (docs/original-app.md#post-apikeywords, KeywordSearchSchema) with the
original messages.

Beyond the original: a keyword loses every U+FEFF (a zero-width character that the original's
`\\s` accepts but that is invisible, so the keyword a user sees is the one without it; DataForSEO
refuses it), and a language must be one the configured provider has keyword data in
(`shared.providers.languages`), where the original sent every unmapped language as English.
Everything else the original's character rule admits (ASCII letters, digits, `-`, `_`, Unicode
spaces) is what DataForSEO accepts once spaces are collapsed to one ASCII space.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BeforeValidator, field_validator

from shared.contracts.validation import NoLoneSurrogates, bounded_text, fail
from shared.js_text import JS_WHITESPACE, js_trim
from shared.providers.languages import available
from shared.providers.registry import configured_key

LOCATION_CODES = ("US", "GB", "CA", "AU", "DE", "FR", "IN", "GL")
# The original's `^[a-zA-Z0-9\s\-_]+$` with JS's `\s` (Unicode spaces, no control characters).
KEYWORD_CHARS = re.compile(f"[a-zA-Z0-9\\-_{JS_WHITESPACE}]+")
LANGUAGE_FORMAT = re.compile(r"^[a-z]{2}(-[A-Z]{2})?$")


def checked_keyword(value: str, *, chars_message: str) -> str:
    """One keyword by the original's rules (1-100 characters, BOM stripped, `KEYWORD_CHARS`);
    the routes word the character rule differently, so each passes its own message."""
    keyword = bounded_text(
        value.replace("\ufeff", ""), minimum=1, maximum=100, empty="Keyword cannot be empty",
        too_long="Keyword too long (max 100 chars)", code="keyword",
    )  # fmt: skip
    if not KEYWORD_CHARS.fullmatch(keyword):
        raise fail("keyword_chars", chars_message)
    return keyword


def _keyword(value: str) -> str:
    return checked_keyword(
        value,
        chars_message="Keywords must contain only letters, numbers, spaces, hyphens, and "
        "underscores",
    )


def blank_to_none(value: object) -> object:
    if isinstance(value, str):
        return js_trim(value) or None
    return value


def valid_location(value: str | None) -> str | None:
    if value is not None and value not in LOCATION_CODES:
        raise fail(
            "location", "Location must be one of US, GB, CA, AU, DE, FR, IN, or GL for Global"
        )
    return value


def valid_language(value: str | None) -> str | None:
    if value is None:
        return None
    if not LANGUAGE_FORMAT.match(value):
        raise fail("language", "Language must be valid language code (e.g., en, en-US)")
    if not available(value, configured_key()):
        raise fail("language_supported", f"Language {value} is not available for keyword data")
    return value


# Optional, trimmed, `''` as absent (the original's rules; shared with related keywords).
OptionalLocation = Annotated[
    str | None, BeforeValidator(blank_to_none), AfterValidator(valid_location)
]
OptionalLanguage = Annotated[
    str | None, BeforeValidator(blank_to_none), AfterValidator(valid_language)
]


class KeywordSearch(NoLoneSurrogates):
    """Unknown keys are ignored; keywords keep their case and duplicates, as the original."""

    keywords: list[Annotated[str, AfterValidator(_keyword)]]
    matchType: Literal["phrase", "exact"]
    location: OptionalLocation = None
    language: OptionalLanguage = None

    @field_validator("keywords")
    @classmethod
    def _count(cls, value: list[str]) -> list[str]:
        if not value:
            raise fail("keywords_min", "At least one keyword is required")
        if len(value) > 200:
            raise fail("keywords_max", "Maximum 200 keywords allowed")
        return value
