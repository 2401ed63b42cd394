"""Feature-flag admin contract: bodies, the key rule and the flag's JSON shape.

Types are strict (`"50"` is not a percentage, `"true"` is not a boolean): an admin typo should
be refused with a message that says what to send, not coerced into a rollout.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, model_validator

from shared.clock import iso_ms
from shared.contracts.validation import StoredText, bounded_text, fail, js_integer
from shared.http.pages import PAGE_BUDGET_BYTES
from shared.http.responses import compact, render_json
from shared.models.feature_flags import FeatureFlag
from shared.repositories.feature_flags import FlagChanges, FlagValues
from shared.storable_text import unstorable_kind

# Matched with `fullmatch`: a `^…$` pattern with `match` also takes a trailing newline ("key\n").
KEY_PATTERN = re.compile(r"[a-z0-9][a-z0-9_.-]{1,63}")
INVALID_KEY = (
    "Flag key must be 2-64 characters of a-z, 0-9, '_', '.' or '-', starting with a letter or digit"
)
UNSTORABLE_KEY = "Flag key cannot contain NUL or an unpaired surrogate"
NOT_FOUND = "Feature flag not found"
ALREADY_EXISTS = "A feature flag with this key already exists"
NOTHING_TO_UPDATE = "Provide at least one of enabled, rolloutPercent, allowedUsers, description"
MAX_ALLOWED_USERS = 1000
MAX_USER_ID = 255
MAX_DESCRIPTION = 500


def valid_key(raw: str) -> str | None:
    """`raw` if a new flag may take it as key (KEY_PATTERN)."""
    return raw if KEY_PATTERN.fullmatch(raw) else None


def stored_key(raw: str) -> str | None:
    """`raw` if a flag row could hold it as key: any text PostgreSQL stores. Other writers of
    the table (the original app's Prisma client) are not held to KEY_PATTERN, and an admin
    must still reach, change and page past what they wrote."""
    return raw if unstorable_kind(raw) is None else None


def _key(value: Any) -> str:
    if value is None:
        raise fail("flag_key_required", "key is required")
    if not isinstance(value, str) or valid_key(value) is None:
        raise fail("flag_key", INVALID_KEY)
    return value


def _enabled(value: Any) -> bool:
    if not isinstance(value, bool):
        raise fail("flag_enabled", "enabled must be true or false")
    return value


def _percent(value: Any) -> int:
    percent = js_integer(value)
    if percent is None or not 0 <= percent <= 100:
        raise fail("flag_percent", "rolloutPercent must be an integer from 0 to 100")
    return percent


def _users(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise fail("flag_users", "allowedUsers must be a list of user ids")
    if len(value) > MAX_ALLOWED_USERS:
        raise fail("flag_users_max", f"allowedUsers may list at most {MAX_ALLOWED_USERS} user ids")
    message = f"allowedUsers entries must be user ids of 1-{MAX_USER_ID} characters"
    ids: dict[str, None] = {}
    for item in value:
        if not isinstance(item, str):
            raise fail("flag_user_id", message)
        user_id = bounded_text(
            item, minimum=1, maximum=MAX_USER_ID, empty=message, too_long=message,
            code="flag_user_id",
        )  # fmt: skip
        ids[user_id] = None
    return tuple(ids)  # JS-trimmed (`a\x85` is not `a`), duplicates dropped, order kept


def _description(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise fail("flag_description", "description must be a string")
    description = bounded_text(
        value, minimum=0, maximum=MAX_DESCRIPTION, empty="",
        too_long=f"Description too long (max {MAX_DESCRIPTION} chars)", code="flag_description",
    )  # fmt: skip
    return description or None  # a saved search's rule: JS trim, JS length


Key = Annotated[str, BeforeValidator(_key)]
Enabled = Annotated[bool, BeforeValidator(_enabled)]
Percent = Annotated[int, BeforeValidator(_percent)]
Users = Annotated[tuple[str, ...], BeforeValidator(_users)]
Description = Annotated[str | None, BeforeValidator(_description)]


class CreateFlag(StoredText):
    """POST /api/admin/flags body; unknown keys are ignored."""

    key: Key = Field(default=None, validate_default=True)  # missing: "key is required"
    enabled: Enabled = False
    rolloutPercent: Percent = 0
    allowedUsers: Users = ()
    description: Description = None

    def values(self) -> FlagValues:
        return FlagValues(
            enabled=self.enabled,
            rollout_percent=self.rolloutPercent,
            allowed_users=self.allowedUsers,
            description=self.description,
        )


class UpdateFlag(StoredText):
    """PUT /api/admin/flags/{key} body: only the given fields change (`description: null`
    clears it); the key itself cannot be changed."""

    enabled: Enabled | None = None
    rolloutPercent: Percent | None = None
    allowedUsers: Users | None = None
    description: Description = None

    @model_validator(mode="after")
    def _no_nulls(self) -> UpdateFlag:
        required = ("enabled", "rolloutPercent", "allowedUsers")
        nulled = [
            name
            for name in required
            if name in self.model_fields_set and getattr(self, name) is None
        ]
        if nulled:
            raise fail("flag_null", f"{', '.join(nulled)} cannot be null")
        if not self.model_fields_set & {*required, "description"}:
            raise fail("flag_empty", NOTHING_TO_UPDATE)
        return self

    def changes(self) -> FlagChanges:
        given = self.model_fields_set
        changes: FlagChanges = {}
        if self.enabled is not None:
            changes["enabled"] = self.enabled
        if self.rolloutPercent is not None:
            changes["rollout_percent"] = self.rolloutPercent
        if self.allowedUsers is not None:
            changes["allowed_users"] = list(self.allowedUsers)
        if "description" in given:
            changes["description"] = self.description
        return changes


# The fields another writer can make any size (POST and PUT bound them), left out in this order
# of a flag too large to answer whole.
OMITTABLE = ("allowedUsers", "description", "createdBy")


def record(flag: FeatureFlag) -> dict[str, Any]:
    """`{id, key, enabled, rolloutPercent, allowedUsers, description?, createdBy?, createdAt,
    updatedAt}` (absent keys omitted), abridged when larger than a list page."""
    whole = _whole(flag)
    return whole if _fits(whole) else _abridged(whole)


def _fits(item: dict[str, Any]) -> bool:
    return len(render_json(item)) <= PAGE_BUDGET_BYTES


def _abridged(whole: dict[str, Any]) -> dict[str, Any]:
    """`whole` without its OMITTABLE fields, one at a time until it fits a page: `omitted` names
    those left out, `allowedUsersCount` counts the users. A row another writer stored may be
    larger than a page or than either platform answers (6 MB), and a whole one would be the
    platform's 500, even for a PUT whose write took effect."""
    shown = {**whole, "allowedUsersCount": len(whole["allowedUsers"]), "omitted": []}
    for field in OMITTABLE:
        if field in shown:
            del shown[field]
            shown["omitted"].append(field)
        if _fits(shown):
            break
    return shown


def _whole(flag: FeatureFlag) -> dict[str, Any]:
    return compact(
        {
            "id": flag.id,
            "key": flag.key,
            "enabled": flag.enabled,
            "rolloutPercent": flag.rollout_percent,
            "allowedUsers": list(flag.allowed_users or []),
            "description": flag.description,
            "createdBy": flag.created_by,
            "createdAt": iso_ms(flag.created_at),
            "updatedAt": iso_ms(flag.updated_at),
        }
    )
