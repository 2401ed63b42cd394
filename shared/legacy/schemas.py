"""The original app's Redis records, validated as the original validated them on every read.

`UserData` is the user service's `UserDataSchema` (docs/original-app.md#user-service-operations) and
`SavedSearchRecord` the saved-search service's domain schema
(docs/original-app.md#saved-search-record). The original answered 503 for any record that failed
them, so the backfill quarantines such records instead of guessing
(docs/original-app.md#redis-to-postgres-field-mapping), and the dual-mode read path reports them as
a store failure.

Deliberate differences, chosen per call: the original's read schema wants integer
`searchVolume` and trend `volume`, while its create endpoint accepted any number
(docs/original-app.md#d9), and it wants every metric of a result, while this API saves the rows
its keyword routes answer, where an unmeasured metric is null and `difficulty` may be absent
(docs/keyword-search.md#missing-data-stays-missing). `original_rules=True` (the backfill, verify)
applies the original's rules; the dual-mode read path leaves them off, so a search this API saved
can always be read back.
"""

from __future__ import annotations

import json
import math
import re
import sys
from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from shared.js_text import js_length
from shared.storable_text import NotJsonConstantError, first_unstorable, refuse_constant

# zod v4 `z.string().datetime()`: UTC with a literal Z, any number of fractional digits.
# Matched whole (`fullmatch`): Python's `$` also matches before a final newline, JS's does not.
_ISO_Z = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?Z")
# The original's `SearchIdSchema` (a UUID, or `<13 ASCII digits>-<7 base36>`); this API
# accepts more forms (shared.contracts.saved_searches), but original records are held to it.
_ORIGINAL_SEARCH_ID = re.compile(
    r"(?i:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})|[0-9]{13}-[a-z0-9]{7}"
)
# zod v4 `z.string().email()`, matched whole.
_EMAIL = re.compile(
    r"(?!\.)(?!.*\.\.)([A-Za-z0-9_'+\-\.]*)[A-Za-z0-9_+-]@([A-Za-z0-9][A-Za-z0-9\-]*\.)+[A-Za-z]{2,}"
)


M = TypeVar("M", bound="_Record")


class LegacyRecordError(Exception):
    """A legacy key holds something the original app could not read; `reason` says what."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


def _timestamp(value: object) -> datetime:
    """The moment JS `new Date(value)` reads, to the millisecond: the ECMAScript format has
    exactly three fraction digits and leaves longer ones to the engine, and V8 keeps the first
    three (`…T23:59:59.9996Z` is `…T23:59:59.999Z`: still that day, whose trial counter the
    original named). `fromisoformat` keeps six digits, so the rest is dropped the same way."""
    if not isinstance(value, str) or not _ISO_Z.fullmatch(value):
        raise ValueError("must be an ISO 8601 timestamp in UTC ending in Z")
    moment = datetime.fromisoformat(value)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def _js_number(value: object) -> object:
    """A JSON number (JS has one number type): not a string, not a boolean, and finite: JS reads
    `1e400` as Infinity, which zod v4's `z.number()` refuses (and Postgres' jsonb cannot hold)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("must be a finite number")
    if isinstance(value, int) and abs(value) > sys.float_info.max:  # 309+ digits: JS's Infinity
        raise ValueError("must be a finite number")
    return value


def _js_int(value: object) -> int:
    """`z.number().int()`: 3 and 3.0 pass (JS cannot tell them apart), 3.5 and "3" do not."""
    _js_number(value)
    assert isinstance(value, int | float)
    if isinstance(value, float) and not value.is_integer():
        raise ValueError("must be an integer")
    return int(value)


def _email(value: object) -> str:
    if not isinstance(value, str) or not _EMAIL.fullmatch(value):
        raise ValueError("must be a valid email address")
    return value


def _js_length(minimum: int, maximum: int) -> AfterValidator:
    """zod's `.min()`/`.max()` on a string: JS `length`, in UTF-16 code units (an emoji is 2)."""

    def check(value: str, info: ValidationInfo) -> str:
        if (info.context or {}).get("listing"):  # the original's list checked no record
            return value
        if not minimum <= js_length(value) <= maximum:
            raise ValueError(
                f"must be {minimum} to {maximum} UTF-16 code units long (JS string length)"
            )
        return value

    return AfterValidator(check)


def _search_id(value: object) -> str:
    if not isinstance(value, str) or not _ORIGINAL_SEARCH_ID.fullmatch(value):
        raise ValueError("must be a UUID or a legacy id like 1700000000000-abc1234")
    return value


Timestamp = Annotated[datetime, BeforeValidator(_timestamp)]
JsInt = Annotated[int, BeforeValidator(_js_int)]
JsNumber = Annotated[int | float, BeforeValidator(_js_number)]  # keeps 1200 vs 1200.5 as stored


class _Record(BaseModel):
    """Unknown keys are dropped (zod strips them); `null` is refused where zod's `.optional()`
    only allows the key to be absent. Outside the original rules, the `nullable` fields take
    null and the `required_by_original` ones may be absent: what this API saves."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    nullable: ClassVar[frozenset[str]] = frozenset()
    required_by_original: ClassVar[frozenset[str]] = frozenset()

    @model_validator(mode="before")
    @classmethod
    def _no_nulls(cls, data: Any, info: ValidationInfo) -> Any:
        if isinstance(data, dict):
            nulls = [name for name in cls.model_fields if name in data and data[name] is None]
            optional = [name for name in nulls if name not in cls.nullable]
            if optional:
                raise ValueError(f"{', '.join(optional)}: null is not allowed (leave the key out)")
            if (info.context or {}).get("original_rules"):
                unread = nulls + sorted(cls.required_by_original - data.keys())
                if unread:
                    raise ValueError(
                        f"{', '.join(unread)}: null or absent, which the original read schema "
                        "refuses"
                    )
        return data


class UserData(_Record):
    """`user:{clerkUserId}` (docs/original-app.md#user-service-operations). `keywordsUsedThisMonth`
    and `monthlyResetAt` are vestigial: validated, never used as the usage source."""

    clerkUserId: Annotated[str, Field(min_length=1, strict=True)]
    email: Annotated[str, BeforeValidator(_email)]
    tier: Literal["trial", "pro"]
    trialStartedAt: Timestamp
    trialExpiresAt: Timestamp
    stripeCustomerId: Annotated[str, Field(strict=True)] | None = None
    subscriptionId: Annotated[str, Field(strict=True)] | None = None
    subscriptionStatus: Literal["active", "canceled", "past_due", "unpaid"] | None = None
    keywordsUsedThisMonth: Annotated[JsInt, Field(ge=0)]
    monthlyResetAt: Timestamp
    createdAt: Timestamp
    updatedAt: Timestamp


def _integer_under_original_rules(value: float | None, info: ValidationInfo) -> float | None:
    """The integer rule of the original read schema, on when the caller asks for it (a null
    only gets here outside the original rules)."""
    if value is None:
        return None
    if (info.context or {}).get("original_rules") and not float(value).is_integer():
        raise ValueError("must be an integer (the original read schema; it answered 503)")
    return value


class Trend(_Record):
    nullable = frozenset({"volume"})

    month: Annotated[JsInt, Field(ge=1, le=12)]
    year: JsInt
    volume: Annotated[JsNumber, Field(ge=0)] | None

    check_volume = field_validator("volume")(_integer_under_original_rules)


class KeywordData(_Record):
    """A saved result. Outside the original rules also the rows this API saves
    (`shared.contracts.saved_searches.KeywordResult`): `noData` and `relevance` are kept."""

    nullable = frozenset({"searchVolume", "cpc", "competition", "intent"})
    required_by_original = frozenset({"difficulty"})

    keyword: Annotated[str, Field(strict=True)]
    searchVolume: Annotated[JsNumber, Field(ge=0)] | None
    difficulty: Annotated[JsNumber, Field(ge=0, le=100)] | None = None
    cpc: Annotated[JsNumber, Field(ge=0)] | None
    competition: Literal["low", "medium", "high"] | None
    intent: Literal["informational", "commercial", "transactional", "navigational"] | None
    trends: list[Trend] | None = None
    noData: Annotated[bool, Field(strict=True)] | None = None
    relevance: Annotated[JsInt, Field(ge=0, le=100)] | None = None

    check_search_volume = field_validator("searchVolume")(_integer_under_original_rules)


class SearchParams(_Record):
    keywords: list[Annotated[str, Field(strict=True)]]
    location: Annotated[str, Field(strict=True)] | None = None
    language: Annotated[str, Field(strict=True)] | None = None
    matchType: Literal["phrase", "exact"] | None = None


class Metadata(_Record):
    createdAt: Timestamp
    updatedAt: Timestamp
    lastRunAt: Timestamp | None = None
    resultCount: Annotated[JsInt, Field(ge=0)] | None = None


class SavedSearchRecord(_Record):
    """`saved-search:{uid}:{sid}` (docs/original-app.md#saved-search-record)."""

    id: Annotated[str, BeforeValidator(_search_id)]
    clerkUserId: Annotated[str, Field(min_length=1, strict=True)]
    name: Annotated[str, Field(strict=True), _js_length(1, 100)]
    description: Annotated[str, Field(strict=True), _js_length(0, 500)] | None = None
    searchParams: SearchParams
    results: list[KeywordData] | None = None
    metadata: Metadata


def describe(error: ValidationError) -> str:
    """Every issue as `path: message`, joined; the value itself is never echoed (PII)."""
    parts = []
    for issue in error.errors(include_url=False, include_input=False):
        path = ".".join(str(part) for part in issue["loc"]) or "record"
        parts.append(f"{path}: {issue['msg']}")
    return "; ".join(parts)


def load_json(key: str, raw: str) -> Any:
    try:
        return json.loads(raw, parse_constant=refuse_constant)
    except json.JSONDecodeError as error:
        raise LegacyRecordError(key, f"malformed JSON ({error.msg})") from None
    except NotJsonConstantError as error:
        raise LegacyRecordError(key, f"malformed JSON ({error})") from None
    except ValueError:  # an integer past Python's 4,300-digit limit
        raise LegacyRecordError(key, "malformed JSON (a number too long to read)") from None
    except RecursionError:
        raise LegacyRecordError(key, "JSON nested too deeply to read") from None


def _validate(key: str, model: type[M], data: Any, context: dict[str, Any] | None = None) -> M:
    """Validate, turning every failure into `LegacyRecordError`: a record is untrusted input,
    and no single one may stop a backfill (an `ArithmeticError` out of a validator, for one,
    which pydantic lets through)."""
    try:
        return model.model_validate(data, context=context)
    except ValidationError as error:
        raise LegacyRecordError(key, describe(error)) from None
    except (ArithmeticError, RecursionError, ValueError) as error:
        raise LegacyRecordError(key, f"unreadable ({type(error).__name__})") from None


def parse_user(key: str, raw: str) -> UserData:
    """The record at `user:{id}`, or `LegacyRecordError` (also when it names another user)."""
    record = _validate(key, UserData, load_json(key, raw))
    if key != f"user:{record.clerkUserId}":
        raise LegacyRecordError(key, "clerkUserId does not match the key")
    return record


_UNSTORABLE = {"nul": "a NUL character", "surrogate": "an unpaired UTF-16 surrogate"}


def storable(key: str, record: M) -> M:
    """`record`, unless a string in it holds what PostgreSQL text and jsonb cannot store (NUL,
    an unpaired UTF-16 surrogate): JS strings may hold both, and copying it would fail."""
    kind = first_unstorable(record.model_dump())
    if kind is not None:
        raise LegacyRecordError(key, f"holds {_UNSTORABLE[kind]}, which Postgres cannot store")
    return record


def parse_saved_search(
    key: str, raw: str, *, original_rules: bool, listing: bool = False
) -> SavedSearchRecord:
    """The record at `saved-search:{uid}:{sid}`, or `LegacyRecordError`. `listing`: for the
    list, which the original rendered without validating, the string lengths are not checked
    (a 51-emoji name is shown as it was)."""
    context = {"original_rules": original_rules, "listing": listing}
    record = _validate(key, SavedSearchRecord, load_json(key, raw), context)
    if key != f"saved-search:{record.clerkUserId}:{record.id}":
        raise LegacyRecordError(key, "clerkUserId or id does not match the key")
    return record
