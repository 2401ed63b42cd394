"""`/api/me` and `/api/me/export` JSON shapes: the caller's profile, usage and stored rows."""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

from sqlalchemy import inspect

from shared.clock import iso_ms
from shared.config import Settings
from shared.contracts import compact
from shared.models import Base, UserTier
from shared.models.users import User
from shared.quotas import Limits, this_month, trial_end, usage_view
from shared.repositories.personal_data import PersonalData


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else iso_ms(moment)


def usage(user: User, settings: Settings, now: datetime) -> dict[str, Any]:
    """`{thisMonth, total, limit?, remaining?, resetsAt? | trialEndsAt?}`.

    `limit`/`remaining` only when quotas are enforced (BILLING_ENABLED); paid tiers show when the
    monthly counter resets, the FREE trial when its allowance ends instead.
    """
    view = usage_view(user, Limits.from_settings(settings), now)
    trial = user.tier is UserTier.FREE
    enforced = settings.billing_enabled
    return compact(
        {
            "thisMonth": this_month(user, now),
            "total": user.keyword_searches_total,
            "limit": view.limit if enforced else None,
            "remaining": (0 if view.trial_expired else view.remaining) if enforced else None,
            "resetsAt": _iso(view.resets_at),
            "trialEndsAt": _iso(trial_end(user)) if trial else None,
        }
    )


def profile(user: User, settings: Settings, now: datetime) -> dict[str, Any]:
    """`{id, email, tier, trialEndsAt?, subscription?, usage}`; absent keys are omitted."""
    subscription = compact(
        {
            "status": user.subscription_status,
            "plan": user.subscription_plan,
            "endsAt": _iso(user.subscription_ends_at),
        }
    )
    return compact(
        {
            "id": user.id,
            "email": user.email,
            "tier": user.tier.value,
            "trialEndsAt": _iso(trial_end(user)) if user.tier is UserTier.FREE else None,
            "subscription": subscription or None,
            "usage": usage(user, settings, now),
        }
    )


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso_ms(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, float) and not math.isfinite(value):
        # another writer's NaN or ±Infinity in a double column: not JSON, so PostgreSQL's name
        return {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}[repr(value)]
    return value


def row(record: Base) -> dict[str, Any]:
    """Every stored column under its database name (camelCase), NULLs omitted.

    Driven by the mapper, so a column added to a model is exported without touching this code.
    """
    values = {}
    for attribute in inspect(type(record)).column_attrs:
        values[attribute.columns[0].name] = _json_value(getattr(record, attribute.key))
    return compact(values)


# What erasure keeps (docs/accounts-and-privacy.md), told to the person in their export.
ERASURE_RETENTION = (
    "Deleting your account erases everything in this export. Searches you saved for a team "
    "stay with the team, without you as their creator, and the searches you made for a team "
    "stay in its history without your user id, IP address or browser. One record is kept, to "
    "prevent "
    "abuse of the free trial: a keyed hash (HMAC-SHA256) of your user id and one of your email "
    "address, each with the end of your trial and the number of keywords you used, so that "
    "signing up again continues that trial instead of starting a new one. When your account "
    "is deleted at our sign-in provider (Clerk), the record of your user id also says so, so "
    "that id can never open an account here again. The hashes cannot be turned back into your "
    "id or email."
)


def dumps(value: Any) -> bytes:
    """JSON as the API serialises it (Starlette's JSONResponse: compact, non-ASCII kept)."""
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def write_export(data: PersonalData, write: Callable[[bytes], object]) -> None:
    """Write `{user?, organizationMemberships, savedSearches, searchHistory, apiUsage,
    webhookEvents, systemMetrics, featureFlags, onErasure}` to `write` piece by piece, a row at
    a time: everything stored about the caller (`savedSearches` includes the team searches they
    created; `featureFlags`: flag keys only), and what an erasure would keep
    (`onErasure`). The bytes are those of the whole document serialised at once (`dumps`), so
    nothing but one row is ever held."""
    write(b"{")
    if data.user is not None:
        write(b'"user":' + dumps(row(data.user)) + b",")
    tables: tuple[tuple[str, Iterator[Any]], ...] = (
        ("organizationMemberships", data.memberships),
        ("savedSearches", data.saved_searches),
        ("searchHistory", data.search_history),
        ("apiUsage", data.api_usage),
        ("webhookEvents", data.webhook_events),
        ("systemMetrics", data.system_metrics),
    )
    for name, rows in tables:
        write(dumps(name) + b":[")
        separator = b""
        for record in rows:
            write(separator + dumps(row(record)))
            separator = b","
        write(b"],")
    flags = dumps(list(data.feature_flags))
    write(b'"featureFlags":' + flags + b',"onErasure":' + dumps(ERASURE_RETENTION) + b"}")
