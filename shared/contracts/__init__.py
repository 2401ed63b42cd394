"""Request and response shapes of the original KeyFlash API (docs/original-app.md#http-contract),
with its messages."""

from collections.abc import Mapping
from typing import Any


def compact(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Drop keys whose value is None: the original omits absent keys rather than sending null.

    Here, not in the HTTP layer, so a cron can build the same documents without a web framework.
    """
    return {key: value for key, value in fields.items() if value is not None}
