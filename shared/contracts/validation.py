"""Validation helpers that keep the original API's exact messages.

Errors are `PydanticCustomError`s whose type starts with `kf_`: the HTTP layer shows their
message as is (joined with ", " like the original), and pydantic's own messages with the field.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import PydanticCustomError, PydanticKnownError, core_schema

from shared.js_text import js_length, js_trim
from shared.storable_text import LONE_SURROGATE, unstorable_kind


def js_integer(value: object) -> int | None:
    """`value` as the integer JSON sent, else None. JS has one number type: `50.0` and `5e1` are
    the integer 50 to the original (zod's `.int()`), and Python's `json.dumps(50.0)` sends them.
    A boolean, a string, a fraction or a number too large for a float (inf) is no integer."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _whole_number(value: object) -> object:
    whole = js_integer(value)
    return value if whole is None else whole


# After an integer field's `Field(strict=True, …)`: an integral float is that integer, nothing
# else is coerced. After the bounds, so the OpenAPI schema states them as `minimum`/`maximum`.
WholeNumber = BeforeValidator(_whole_number)


def fail(code: str, message: str) -> PydanticCustomError:
    return PydanticCustomError(f"kf_{code}", message)


def bounded_text(
    value: str, *, minimum: int, maximum: int, empty: str, too_long: str, code: str
) -> str:
    """Trim (as JS does), then enforce length in JS units with the original's messages."""
    trimmed = js_trim(value)
    if js_length(trimmed) < minimum:
        raise fail(f"{code}_empty", empty)
    if js_length(trimmed) > maximum:
        raise fail(f"{code}_too_long", too_long)
    return trimmed


@dataclass(frozen=True, slots=True)
class JsLengthWithin:
    """zod's `.min()`/`.max()` on a string the original does not trim: JS units, as
    `bounded_text` counts, with pydantic's own messages (`String should have at most 5
    characters`). Not `Field(max_length=…)`, which counts code points (an emoji 1, not 2); and
    not JSON Schema's `minLength`/`maxLength`, which count code points too, so the OpenAPI
    schema states the bounds in its description instead."""

    minimum: int
    maximum: int

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(self._check, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        described = handler(schema)
        described["description"] = (
            f"{self.minimum} to {self.maximum} UTF-16 code units (JavaScript's string length: "
            "an emoji outside the BMP counts 2), not trimmed"
        )
        return described

    def _check(self, value: str) -> str:
        length = js_length(value)
        if length < self.minimum:
            raise PydanticKnownError("string_too_short", {"min_length": self.minimum})
        if length > self.maximum:
            raise PydanticKnownError("string_too_long", {"max_length": self.maximum})
        return value


def nul_message(field: str) -> str:
    return f"{field} cannot contain NUL (\\u0000) characters"


def surrogate_message(field: str) -> str:
    return f"{field} cannot contain unpaired UTF-16 surrogates (\\ud800-\\udfff)"


def unstorable(field: str, value: str) -> PydanticCustomError | None:
    """Why PostgreSQL text cannot store `value` (NUL, or a lone surrogate), or None."""
    kind = unstorable_kind(value)
    if kind == "nul":
        return fail("nul", nul_message(field))
    if kind == "surrogate":
        return fail("surrogate", surrogate_message(field))
    return None


def _declared_strings(model: type[BaseModel], data: Any) -> Iterator[tuple[str, str]]:
    """(field, string) for every string anywhere inside `data`'s declared fields, iteratively."""
    if not isinstance(data, dict):
        return
    for field in model.model_fields:
        pending = [data.get(field)]
        while pending:
            value = pending.pop()
            if isinstance(value, str):
                yield field, value
            elif isinstance(value, dict):
                pending.extend(value.values())
            elif isinstance(value, list):
                pending.extend(value)


class NoLoneSurrogates(BaseModel):
    """A request body whose strings are sent on, not stored (keywords, a seed, a match type): a
    declared field holding a lone UTF-16 surrogate anywhere inside is refused with the stored
    strings' message naming that field (`StoredText`), not a codec error. NUL is left to the
    fields' own rules (the keyword charset refuses it with the original's message)."""

    @model_validator(mode="before")
    @classmethod
    def _refuse_lone_surrogates(cls, data: Any) -> Any:
        for field, value in _declared_strings(cls, data):
            if LONE_SURROGATE.search(value):
                raise fail("surrogate", surrogate_message(field))
        return data


class StoredText(BaseModel):
    """A request body whose strings are stored in PostgreSQL, whose text holds only Unicode
    scalar values other than NUL: a declared field holding NUL or a lone UTF-16 surrogate
    anywhere inside is refused with a 400 naming that field, instead of failing the insert
    later (a 500). Undeclared keys are ignored, as elsewhere, and never echoed. The walk is
    iterative: a field may be nested as deeply as the JSON parser allows."""

    @model_validator(mode="before")
    @classmethod
    def _refuse_unstorable(cls, data: Any) -> Any:
        for field, value in _declared_strings(cls, data):
            if problem := unstorable(field, value):
                raise problem
        return data
