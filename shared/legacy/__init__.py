"""The original app's Redis layout as code: keys, record schemas, mapping, reads and writes.

The TypeScript app kept users, usage counters and saved searches in Redis
(docs/original-app.md#redis-layout). This package is that layout, so the migration
(`shared.storage`, `devkit.legacy`) and erasure can read and write it exactly as the original did.
Nothing here decides *when* Redis is used: that is `STORAGE_MODE` in `shared.storage`.

Importing the package imports none of its modules: the rate limiter needs only `keys`, and a
function in `STORAGE_MODE=postgres` never loads the record schemas or the store. The names below
are loaded from their module on first use.
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
