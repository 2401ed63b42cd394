"""UTC time, injectable: business rules take `now` so tests move the clock instead of sleeping."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


def utcnow() -> datetime:
    """Now, as an aware UTC datetime truncated to milliseconds (what TIMESTAMP(3) stores)."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def month_start(moment: datetime) -> datetime:
    """Start of `moment`'s UTC calendar month."""
    moment = moment.astimezone(UTC)
    return moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def next_month_start(moment: datetime) -> datetime:
    """Start of the UTC calendar month after `moment`'s: when a monthly counter resets."""
    start = month_start(moment)
    return (
        start.replace(year=start.year + 1, month=1)
        if start.month == 12
        else start.replace(month=start.month + 1)
    )


def iso_ms(moment: datetime) -> str:
    """The original app's JSON timestamp form (JS `toISOString`): `2026-03-14T09:26:53.589Z`.
    The year is padded here: glibc's `%Y` writes year 1 (a legacy writer's zero time) as `1`."""
    moment = moment.astimezone(UTC)
    stamp = moment.strftime("-%m-%dT%H:%M:%S.")
    return f"{moment.year:04d}{stamp}{moment.microsecond // 1000:03d}Z"


def seconds_until(moment: datetime, now: datetime) -> int:
    """Whole seconds from `now` to `moment`, rounded up and at least 1: a `Retry-After` that a
    client waiting it out is never early with, and never 0 (which reads as "at once")."""
    return max(1, -((now - moment) // timedelta(seconds=1)))
