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
refreshes the writing container at once; other containers see it within the TTL. With
DATABASE_READ_URL set, a load also reads the position its data is complete up to
(`db.ReadPosition.covered`): a reader whose consistency token is newer reloads (from a replica
that has replayed it, else the primary), a load after an admin write reads at or past that
write, and a replica's load that is older than the snapshot held (a lagging replica's) does not
replace it. One load runs
at a time: callers holding a snapshot serve it meanwhile, the others wait for its outcome. A
failed load (the database down costs it the whole retry budget) is logged once and, as
`shared.jwks` does for its reads, not tried again for RELOAD_PAUSE_S: meanwhile the last snapshot
is served at once, and a container that never loaded its flags has nothing to serve (its loading
caller gets the load's failure, a 503 when the database is down; every other caller, a 503 at
once).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import NamedTuple

import mmh3

from shared import db
from shared.config import get_settings
from shared.models.feature_flags import FeatureFlag
from shared.repositories import feature_flags
from shared.telemetry import log_event

BUCKETS = 100
RELOAD_PAUSE_S = 5.0  # after a failed load, none starts again this soon


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


class Loaded(NamedTuple):
    """A load's rules and the position they are complete up to (`db.ReadPosition.covered`);
    None while DATABASE_READ_URL is unset: the primary served them, and no caller holds a
    token. `primary`: read on the primary, so never older than a snapshot held."""

    rules: tuple[FlagRule, ...]
    position: int | None = None
    primary: bool = False


def load_rules(at_least: int | None = None) -> Loaded:
    """All flags in one query (with a read URL, after the position's statement), read where a
    replica has replayed `at_least` and the caller's token, else on the primary."""
    if get_settings().database_read_url is None:
        return Loaded(tuple(FlagRule.from_row(row) for row in db.read(feature_flags.list_all)))

    def positioned(conn: db.Conn) -> Loaded:
        server = db.read_position(conn)  # first: see `db.ReadPosition.covered`
        rows, quiet = feature_flags.list_all_quiet(conn)
        rules = tuple(FlagRule.from_row(row) for row in rows)
        return Loaded(rules, server.covered(quiet), primary=not server.replica)

    return db.read(positioned, at_least=at_least)


def _covers(position: int | None, required: int | None) -> bool:
    return position is None or required is None or required <= position


@dataclass(frozen=True, slots=True)
class _State:
    """What a container knows, replaced whole (readers take it without the lock)."""

    rules: tuple[FlagRule, ...] | None = None  # the last good load
    position: int | None = None  # what `rules` are complete up to (Loaded.position)
    floor: int | None = None  # the next load must read at or past this (an admin write's)
    loaded_at: float = float("-inf")
    failed_at: float = float("-inf")  # when the last load failed, if it did


class FlagCache:
    """The container's flag snapshot, reloaded when older than `ttl()` seconds (module
    docstring: one load at a time, a pause after a failed one).

    `ttl` is read on every call (settings may be reloaded in tests); `clock` is monotonic
    seconds.
    """

    def __init__(
        self,
        loader: Callable[[int | None], Loaded] = load_rules,
        *,
        ttl: Callable[[], float] = lambda: get_settings().flags_cache_seconds,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._loader = loader
        self._ttl = ttl
        self._clock = clock
        self._loading = threading.Lock()
        self._state = _State()

    def rules(self) -> tuple[FlagRule, ...]:
        required = db.required_position()
        rules = self._served(required)
        if rules is not None:
            return rules
        state = self._state
        if state.rules is None or not _covers(state.position, required):
            self._loading.acquire()  # nothing to serve: take the outcome of a load under way
        elif not self._loading.acquire(blocking=False):
            return state.rules  # only expired: another request is reloading
        try:
            rules = self._served(required)  # the load this caller waited for, or another's
            return self._load() if rules is None else rules
        finally:
            self._loading.release()

    def _served(self, required: int | None) -> tuple[FlagRule, ...] | None:
        """The rules to serve without loading, or None when a load is due (expired, or older
        than the reader's position); in the pause after a failed load, a container without a
        snapshot is unavailable (503), not loading."""
        state, now = self._state, self._clock()
        if (
            state.rules is not None
            and now - state.loaded_at < self._ttl()
            and _covers(state.position, required)
        ):
            return state.rules
        if now - state.failed_at < RELOAD_PAUSE_S:
            if state.rules is None:
                raise db.DatabaseUnavailableError("feature flags not loaded: the last load failed")
            return state.rules
        return None

    def _load(self) -> tuple[FlagRule, ...]:
        """Load (under the lock); on failure serve the last snapshot, or raise without one."""
        state = self._state
        try:
            loaded = self._loader(state.floor)
        except Exception as error:
            # Flags must not take pages down, nor hold each request for the retry budget.
            log_event(
                "flags_reload_failed",
                level=logging.WARNING,
                error=type(error).__name__,
                retryInS=RELOAD_PAUSE_S,
            )
            self._state = replace(state, failed_at=self._clock())
            if state.rules is None:
                raise
            return state.rules
        if (
            state.rules is not None
            and not loaded.primary
            and not _covers(loaded.position, state.position)
        ):
            # A lagging replica's: the snapshot held has all it has, and is current as of now.
            self._state = replace(state, loaded_at=self._clock(), failed_at=float("-inf"))
            return state.rules
        self._state = _State(loaded.rules, position=loaded.position, loaded_at=self._clock())
        return loaded.rules

    def invalidate(self) -> None:
        """Forget the snapshot and any pause (after a write in this container): the next load
        reads at or past this request's write."""
        tracked = db.consistency.get()
        with self._loading:
            self._state = _State(floor=None if tracked is None else tracked.written)

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
