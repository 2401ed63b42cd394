"""The headers a request may carry once, and the rule every entry applies to them: the app's
guard (`shared.http.guards.OneValue`) and the cron's bare ASGI entry (`shared.cron.entry`),
which must not import the HTTP layer. Pure: raw ASGI header pairs in, a message out."""

from __future__ import annotations

from collections.abc import Iterable

ONE_VALUE = ("Authorization", "Origin")
REPEATED = "Send one {name} header: this request has several"


def repeated(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The 400's message when a ONE_VALUE header comes as several fields or comma-joined (how
    some sources pass repeats on: a Bearer token and an origin hold no comma); else None."""
    pairs = list(headers)
    for name in ONE_VALUE:
        key = name.lower().encode()
        values = [value for field, value in pairs if field.lower() == key]
        if len(values) > 1 or any(b"," in value for value in values):
            return REPEATED.format(name=name)
    return None
