"""The original app's Redis layout as code: keys, record schemas, mapping, reads and writes.

The TypeScript app kept users, usage counters and saved searches in Redis
(docs/original-app.md#redis-layout). This package is that layout, so the migration
(`shared.storage`, `devkit.legacy`) and erasure can read and write it exactly as the original did.
Nothing here decides *when* Redis is used: that is `STORAGE_MODE` in `shared.storage`.
"""

from __future__ import annotations

from shared.legacy import keys
from shared.legacy.schemas import LegacyRecordError, SavedSearchRecord, UserData
from shared.legacy.store import REDIS_ERRORS, erase_user_keys

__all__ = [
    "REDIS_ERRORS",
    "LegacyRecordError",
    "SavedSearchRecord",
    "UserData",
    "erase_user_keys",
    "keys",
]
