"""The paged lists' query rules (`/api/history`, `/api/orgs/{orgId}/members`): `limit`, a
whole number in the route's range, and `cursor`, the `nextCursor` of the previous page.

The cursor is opaque to clients: base64url (no padding) of the JSON `["<timestamp .mmmZ>",
"<id>"]` keyset tuple. It carries no authority (every query is scoped to the caller), so a
forged cursor can only move the start of the caller's own page; anything that is not exactly
what `encode_cursor` produces is refused.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from datetime import UTC, datetime

from shared.clock import iso_ms
from shared.http.errors import ApiError

INVALID_CURSOR = "Invalid cursor"
ROW_IDS = re.compile(r"[A-Za-z0-9_-]{1,64}")  # the ids our writers make (cuid, uuid, legacy)
# Any id the Clerk mirror stores (1 to 255 characters text can hold): a membership's user id.
CLERK_IDS = re.compile("[^\x00\ud800-\udfff]{1,255}")
# The longest canonical cursor: 255 astral characters, each a 12-byte JSON escape, in base64.
_MAX_CURSOR_CHARS = 4_200
_DIGITS = re.compile(r"[0-9]{1,6}")
_TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def bounded_int(raw: str | None, *, name: str, default: int, minimum: int, maximum: int) -> int:
    """A query parameter that must be a whole number in [minimum, maximum]; 400 otherwise."""
    if raw is None:
        return default
    value = raw.strip()
    if not _DIGITS.fullmatch(value) or not minimum <= int(value) <= maximum:
        raise ApiError(
            400,
            f"{name} must be a whole number from {minimum} to {maximum}",
            label="Validation Error",
        )
    return int(value)


def encode_cursor(keyset: tuple[datetime, str]) -> str:
    moment, row_id = keyset
    raw = json.dumps([iso_ms(moment), row_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_cursor(cursor: str, ids: re.Pattern[str] = ROW_IDS) -> tuple[datetime, str]:
    """The keyset tuple, or 400 `Invalid cursor` for anything malformed or altered (an id not
    matching `ids` included)."""
    try:
        if len(cursor) > _MAX_CURSOR_CHARS:
            raise ValueError("too long")
        padded = cursor + "=" * (-len(cursor) % 4)
        decoded = json.loads(base64.b64decode(padded, altchars=b"-_", validate=True))
        if not isinstance(decoded, list) or len(decoded) != 2:
            raise ValueError("not a pair")
        stamp, row_id = decoded
        if not (isinstance(stamp, str) and _TIMESTAMP.fullmatch(stamp)):
            raise ValueError("bad timestamp")
        if not (isinstance(row_id, str) and ids.fullmatch(row_id)):
            raise ValueError("bad id")
        keyset = (datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC), row_id)
        if encode_cursor(keyset) != cursor:  # one canonical spelling per cursor
            raise ValueError("not canonical")
    except (ValueError, binascii.Error, UnicodeError, RecursionError):  # brackets nested deep
        raise ApiError(400, INVALID_CURSOR) from None
    return keyset
