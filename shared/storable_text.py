"""What PostgreSQL text and jsonb can store: Unicode scalar values other than NUL, numbers
that are numbers.

JSON (and JS strings) can carry two things text cannot: NUL (`\\u0000`) and a UTF-16 surrogate
on its own (the `"\\ud800"` escape, a half-cut emoji), which no UTF-8 encoder takes. Python's
JSON parser also takes `NaN` and `Infinity`, which are not JSON and which jsonb refuses. Checked
before a write, each is an answer to give (a 400, a quarantined record) instead of a failed
statement. No dependencies: the crons and the webhooks check with it too.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any, Literal

NUL = "\x00"
# A valid pair parses to one code point; a surrogate left in a string stood alone.
LONE_SURROGATE = re.compile("[\ud800-\udfff]")

Unstorable = Literal["nul", "surrogate"]


def unstorable_kind(value: str) -> Unstorable | None:
    """What in `value` PostgreSQL cannot store: NUL, a lone surrogate, or None."""
    if NUL in value:
        return "nul"
    if LONE_SURROGATE.search(value):
        return "surrogate"
    return None


def without_lone_surrogates(value: str) -> str:
    """`value` with each lone surrogate as U+FFFD: what UTF-8 output (a header, a JSON
    response) can carry of it."""
    return LONE_SURROGATE.sub("\ufffd", value)


def storable(value: str) -> str:
    """`value` as PostgreSQL text holds it: NUL removed, each lone surrogate as U+FFFD. For
    text from elsewhere (a provider's) that is answered as is and may then be saved."""
    return without_lone_surrogates(value.replace(NUL, ""))


def first_unstorable(value: Any) -> Unstorable | None:
    """`unstorable_kind` of the first string, key or value, anywhere in `value` (decoded JSON)
    that has one; iterative, so any depth the parser allowed is walked."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            kind = unstorable_kind(item)
            if kind is not None:
                return kind
        elif isinstance(item, Mapping):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list | tuple):
            pending.extend(item)
    return None


class NotJsonConstantError(ValueError):
    """`NaN`, `Infinity` or `-Infinity` in a document: JSON (and JS's `JSON.parse`) has none."""


def refuse_constant(name: str) -> Any:
    """`json.loads(..., parse_constant=refuse_constant)`: parse JSON, not Python's superset."""
    raise NotJsonConstantError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("a number past a double's range")
    return value


def loads_json(text: str | bytes) -> Any:
    """`text` as JSON (bytes in the encoding they announce, as `json.loads` reads them), refusing
    (ValueError) what Python's parser takes beyond it: `NaN`, `Infinity` and a number past a
    double's range (`1e400`: JS reads Infinity), none of which jsonb stores nor a JSON response
    can carry. Every provider's answer is read with it too."""
    return json.loads(text, parse_float=_finite, parse_constant=refuse_constant)
