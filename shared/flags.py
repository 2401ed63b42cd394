"""Feature flags: evaluated in process from a per-container snapshot of `feature_flags`.

Evaluation, in order: a disabled flag is off; a user in `allowedUsers` gets it; otherwise it is
on when the user's bucket is below `rolloutPercent`, where

    bucket = murmur3_x86_32(f"{flag_key}:{user_id}", seed=0, unsigned) % 100

That is Unleash's gradual rollout by user id with the flag name as group id (Unleash computes
`hash % 100 + 1 <= percent`, the same cohort), so a flag moved between the two systems keeps its
users. The hash is stable (no per-process salt), uniform, and independent across flags (the key
is part of the input); raising the percentage only adds users (`bucket < percent` is monotonic).
Anonymous callers have no bucket: they get a flag only at 100 %.

The flags are loaded with ONE query and reused by the warm container for FLAGS_CACHE_SECONDS
(default 30); the clock is injectable so tests move time instead of sleeping. An admin write
refreshes the writing container at once; other containers see it within the TTL. When a reload
fails, the last snapshot keeps being served (and the reload is retried on the next call); only
a container that never loaded its flags answers the failure (503 when the database is down).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import mmh3

from shared import db
from shared.config import get_settings
from shared.models.feature_flags import FeatureFlag
from shared.repositories import feature_flags
from shared.telemetry import log_event

BUCKETS = 100


@dataclass(frozen=True, slots=True)
class FlagRule:
    """A flag as evaluation needs it (detached from the session that loaded it)."""

    key: str
    enabled: bool
    rollout_percent: int
    allowed_users: frozenset[str]

    @classmethod
    def from_row(cls, row: FeatureFlag) -> FlagRule:
        return cls(row.key, row.enabled, row.rollout_percent, frozenset(row.allowed_users or ()))


def bucket(flag_key: str, user_id: str) -> int:
    """The user's stable bucket (0-99) for this flag; Unleash-compatible (module docstring).
    Hashed as UTF-8 bytes (the same hash): mmh3 5.x crashes the process on a str holding a
    lone surrogate, where encoding raises `UnicodeEncodeError`."""
    return int(mmh3.hash(f"{flag_key}:{user_id}".encode(), 0, signed=False)) % BUCKETS


def is_enabled(rule: FlagRule, user_id: str | None) -> bool:
    if not rule.enabled:
        return False
    if user_id is not None and user_id in rule.allowed_users:
        return True
    if rule.rollout_percent >= BUCKETS:
        return True
    if user_id is None or rule.rollout_percent <= 0:
        return False
    return bucket(rule.key, user_id) < rule.rollout_percent


def evaluate(rules: Iterable[FlagRule], user_id: str | None) -> dict[str, bool]:
    """Every flag's value for `user_id` (None: anonymous)."""
    return {rule.key: is_enabled(rule, user_id) for rule in rules}


def load_rules() -> tuple[FlagRule, ...]:
    """All flags in one query."""
    rows = db.read(feature_flags.list_all)
    return tuple(FlagRule.from_row(row) for row in rows)


class FlagCache:
    """The container's flag snapshot, reloaded when older than `ttl()` seconds.

    `ttl` is read on every call (settings may be reloaded in tests); `clock` is monotonic
    seconds. Concurrent requests on an expired snapshot load it once.
    """

    def __init__(
        self,
        loader: Callable[[], tuple[FlagRule, ...]] = load_rules,
        *,
        ttl: Callable[[], float] = lambda: get_settings().flags_cache_seconds,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._loader = loader
        self._ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._rules: tuple[FlagRule, ...] | None = None
        self._loaded_at = 0.0

    def _fresh(self) -> tuple[FlagRule, ...] | None:
        rules = self._rules
        if rules is not None and self._clock() - self._loaded_at < self._ttl():
            return rules
        return None

    def rules(self) -> tuple[FlagRule, ...]:
        rules = self._fresh()
        if rules is not None:
            return rules
        with self._lock:
            rules = self._fresh()
            if rules is not None:
                return rules
            try:
                rules = self._loader()
            except Exception as error:
                if self._rules is None:
                    raise
                # Flags must not take pages down: keep serving the last snapshot, retry next call.
                log_event("flags_reload_failed", level=logging.WARNING, error=type(error).__name__)
                return self._rules
            self._rules, self._loaded_at = rules, self._clock()
            return rules

    def invalidate(self) -> None:
        """Forget the snapshot (after a write in this container)."""
        with self._lock:
            self._rules = None

    def by_key(self) -> Mapping[str, FlagRule]:
        return {rule.key: rule for rule in self.rules()}


_cache = FlagCache()


def flags_for(user_id: str | None) -> dict[str, bool]:
    """Every flag's value for the caller, from the container's snapshot."""
    return evaluate(_cache.rules(), user_id)


def flag_enabled(key: str, user_id: str | None) -> bool:
    """One flag's value; an unknown key is off."""
    rule = _cache.by_key().get(key)
    return rule is not None and is_enabled(rule, user_id)


def invalidate_cache() -> None:
    _cache.invalidate()
