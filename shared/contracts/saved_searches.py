"""`/api/searches` contract (docs/original-app.md#saved-searches-apisearches): bodies, id rule, and
the record's JSON shape.

Fix (docs/original-app.md#d9): saved results are not re-validated on read, so a stored record can
never turn into a 503 on GET. The write rules are the original's, except that `results` takes the
rows the keyword routes answer (docs/keyword-search.md#missing-data-stays-missing): a metric the
provider did not measure is null, `difficulty` may be absent, `noData` and related keywords'
`relevance` are kept, and numbers are stored as sent (an integer stays exact at any size).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    Field,
    PlainValidator,
    StrictBool,
    WithJsonSchema,
    field_validator,
)
from pydantic_core import PydanticKnownError

from shared.clock import iso_ms
from shared.contracts.validation import (
    JsLengthWithin,
    StoredText,
    WholeNumber,
    bounded_text,
    fail,
)
from shared.http.responses import compact
from shared.js_text import js_trim
from shared.models.saved_searches import SavedSearch
from shared.providers.base import ROW_KEYWORD_MAX, TREND_YEARS
from shared.repositories.saved_searches import NewSavedSearch

# Every id a writer of the shared table produces: ours (UUID v4), the original Redis app's
# legacy `1700000000000-abc1234`, and Prisma's defaults (cuid `c…` 25 chars, cuid2 24, uuid).
# One rule for all of them: URL-safe ASCII letters, digits, `-` and `_`, 1-64 characters.
# Anything else is malformed (400); a well-formed id that matches no search of the caller, 404.
_SEARCH_ID = re.compile(r"[A-Za-z0-9_-]{1,64}", re.ASCII)
INVALID_ID = "Invalid search ID format"
LIMIT_REACHED = "Failed to save search. You may have reached the limit of 50 saved searches."
NOT_FOUND = "Saved search not found"
UNSTORABLE = "This saved search holds text the database cannot store; delete it and save it again"


def valid_search_id(raw: str) -> str | None:
    """The trimmed id when it has the shape of a saved-search id (see `_SEARCH_ID`)."""
    search_id = js_trim(raw)
    return search_id if _SEARCH_ID.fullmatch(search_id) else None


def _name(value: str) -> str:
    return bounded_text(
        value, minimum=1, maximum=100, empty="Name is required",
        too_long="Name too long (max 100 chars)", code="name",
    )  # fmt: skip


def _short_name(value: str) -> str:
    return bounded_text(
        value, minimum=1, maximum=100, empty="Name is required", too_long="Name too long",
        code="name",
    )  # fmt: skip


def _description(value: str | None) -> str | None:
    if value is None:
        return None
    return bounded_text(
        value, minimum=0, maximum=500, empty="", too_long="Description too long", code="description"
    )


def _keyword(value: str) -> str:
    return bounded_text(
        value, minimum=1, maximum=100, empty="Keyword cannot be empty",
        too_long="Keyword too long (max 100 chars)", code="keyword",
    )  # fmt: skip


def _json_number(value: object) -> int | float:
    """A JSON number as sent: an integer stays an integer, exact at any size (a float would round
    one past 2^53), a float stays a float; a string or a boolean is refused (JS `z.number()`)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PydanticKnownError("float_type")
    return value


Amount = Annotated[
    int | float,
    PlainValidator(_json_number),
    Field(ge=0),
    WithJsonSchema({"type": "number", "minimum": 0}),
]
Score = Annotated[
    int | float,
    PlainValidator(_json_number),
    Field(ge=0, le=100),
    WithJsonSchema({"type": "number", "minimum": 0, "maximum": 100}),
]


class Trend(BaseModel):
    month: Annotated[int, Field(ge=1, le=12, strict=True), WholeNumber]
    year: Annotated[int, Field(ge=TREND_YEARS[0], le=TREND_YEARS[-1], strict=True), WholeNumber]
    volume: Amount | None  # null: the month has no figure


class KeywordResult(BaseModel):
    """A row as `POST /api/keywords` (or `/api/keywords/related`) answers it: the four metrics
    are always there, null when not measured; the other keys only when the provider has them."""

    keyword: str
    searchVolume: Amount | None
    difficulty: Score | None = None
    cpc: Amount | None
    competition: Literal["low", "medium", "high"] | None
    intent: Literal["informational", "commercial", "transactional", "navigational"] | None
    trends: list[Trend] | None = None
    noData: StrictBool | None = None
    relevance: Annotated[int, Field(ge=0, le=100, strict=True), WholeNumber] | None = None

    @field_validator("keyword")
    @classmethod
    def _keyword_length(cls, value: str) -> str:
        return bounded_text(
            value, minimum=1, maximum=ROW_KEYWORD_MAX, empty="Keyword cannot be empty",
            too_long="Keyword too long (max 200 chars)", code="result_keyword",
        )  # fmt: skip

    def stored(self) -> dict[str, Any]:
        """The row as sent: a metric's null is kept, an optional key left out (or null) is not
        stored."""
        required = {name for name, field in type(self).model_fields.items() if field.is_required()}
        return {
            name: value
            for name, value in self.model_dump().items()
            if value is not None or name in required
        }


class SearchParams(BaseModel):
    keywords: list[Annotated[str, AfterValidator(_keyword)]]
    matchType: Literal["phrase", "exact"]
    location: Annotated[str, JsLengthWithin(2, 5)]  # untrimmed, as the original
    language: Annotated[str, JsLengthWithin(0, 35)] | None = None

    @field_validator("keywords")
    @classmethod
    def _keyword_count(cls, value: list[str]) -> list[str]:
        if not value:
            raise fail("keywords_min", "At least one keyword required")
        if len(value) > 200:
            raise fail("keywords_max", "Maximum 200 keywords")
        return value


class CreateSavedSearch(StoredText):
    """POST /api/searches body; unknown keys are ignored, as the original strips them."""

    name: Annotated[str, AfterValidator(_name)]
    description: Annotated[str | None, AfterValidator(_description)] = None
    searchParams: SearchParams
    results: list[KeywordResult] | None = None


# The bodies' OpenAPI examples, for the personal and the team routes alike.
CREATE_EXAMPLE = {
    "name": "Coffee gear",
    "description": "Espresso at home",
    "searchParams": {"keywords": ["espresso machine"], "matchType": "phrase", "location": "US"},
}
UPDATE_EXAMPLE = {"name": "Coffee gear 2026", "description": "Espresso at home"}


def new_search(body: CreateSavedSearch) -> NewSavedSearch:
    """What a create body stores (personal or team): `language` defaults to `en`, results as
    sent (`KeywordResult.stored`)."""
    params = body.searchParams
    return NewSavedSearch(
        name=body.name,
        description=body.description,
        keywords=params.keywords,
        location=params.location,
        language=params.language or "en",
        match_type=params.matchType,
        results=None if body.results is None else [r.stored() for r in body.results],
    )


class UpdateSavedSearch(StoredText):
    """PUT /api/searches/{id} body: either field may be left out; neither can be cleared."""

    name: str | None = None
    description: Annotated[str | None, AfterValidator(_description)] = None

    @field_validator("name")
    @classmethod
    def _name_rules(cls, value: str | None) -> str | None:
        return None if value is None else _short_name(value)


def _metadata(search: SavedSearch) -> dict[str, Any]:
    return compact(
        {
            "createdAt": iso_ms(search.created_at),
            "updatedAt": iso_ms(search.updated_at),
            "lastRunAt": iso_ms(search.last_run_at) if search.last_run_at else None,
            "resultCount": search.result_count,
        }
    )


def record(search: SavedSearch) -> dict[str, Any]:
    """The saved-search record in the original JSON shape (absent keys omitted)."""
    return compact(
        {
            "id": search.id,
            "clerkUserId": search.user_id,
            "name": search.name,
            "description": search.description,
            "searchParams": {
                "keywords": list(search.keywords or []),
                "matchType": search.match_type,
                "location": search.location,
                "language": search.language,
            },
            "results": search.results,
            "metadata": _metadata(search),
        }
    )


def summary(search: SavedSearch) -> dict[str, Any]:
    """The list item: `{id, name, description?, keywordCount, location, metadata}`."""
    return compact(
        {
            "id": search.id,
            "name": search.name,
            "description": search.description,
            "keywordCount": len(search.keywords or []),
            "location": search.location,
            "metadata": _metadata(search),
        }
    )
