"""The original app's Redis layout as code: keys, record schemas, mapping, reads and writes.

The TypeScript app kept users, usage counters and saved searches in Redis
(docs/original-app.md#redis-layout). This package is that layout, so the migration and erasure
can read and write it exactly as the original did. Its `bridge` keeps the layout in step with
Postgres in the migration's dual and fallback modes (`STORAGE_MODE`, switched in
`shared.storage`); the backfill and repair commands are `devkit.legacy`.

Importing the package imports none of its modules: the rate limiter needs only `keys`, and a
function in `STORAGE_MODE=postgres` never loads the record schemas, the store or the bridge
(unless a sign-in or an erasure touches legacy keys). The names below are loaded from their
module on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "REDIS_ERRORS": "store",
    "erase_user_keys": "store",
    "LegacyRecordError": "schemas",
    "SavedSearchRecord": "schemas",
    "UserData": "schemas",
}
__all__ = ["REDIS_ERRORS", "LegacyRecordError", "SavedSearchRecord", "UserData", "erase_user_keys"]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)
