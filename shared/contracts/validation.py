"""Validation helpers that keep the original API's exact messages.

Errors are `PydanticCustomError`s whose type starts with `kf_`: the HTTP layer shows their
message as is (joined with ", " like the original), and pydantic's own messages with the field.
"""

from __future__ import annotations

from pydantic_core import PydanticCustomError


def fail(code: str, message: str) -> PydanticCustomError:
    return PydanticCustomError(f"kf_{code}", message)


def bounded_text(
    value: str, *, minimum: int, maximum: int, empty: str, too_long: str, code: str
) -> str:
    """Trim, then enforce length with the original's messages."""
    trimmed = value.strip()
    if len(trimmed) < minimum:
        raise fail(f"{code}_empty", empty)
    if len(trimmed) > maximum:
        raise fail(f"{code}_too_long", too_long)
    return trimmed
