"""Copy the original Redis layout into Postgres, check the copy, and finish pending mirrors.

`keyflash legacy backfill|verify|repair|reattach`, or `python -m devkit.legacy …` where there is no
`keyflash` (dev tooling: deployable code never imports it).
It reads UPSTASH_REDIS_REST_URL/UPSTASH_REDIS_REST_TOKEN and DIRECT_DATABASE_URL (else
DATABASE_URL), or their other names, as the settings do (`shared.config.ALTERNATE_NAMES`).

backfill: SCAN (MATCH + COUNT) each legacy key family, checking TYPE before reading: users first
(`user:*`, with their real usage counters), then saved searches (`saved-search:*`, owners must
exist and their index set must list them, as the original's list required), then the index sets
(`saved-searches:*`, only to report members without an item). Each record is validated with the
original's read schema and mapped (docs/original-app.md#redis-to-postgres-field-mapping); batches
are written with one multi-row upsert each, keeping original ids, and a second run changes nothing.
Records that cannot be copied (invalid, orphaned, unindexed, or conflicting with another row's
unique email or Stripe id) are quarantined into the JSON report with the reason; nothing aborts the
run and nothing in Redis is modified. After every committed batch a checkpoint (phase, SCAN cursor,
report so far) is written, so an interrupted run continues where it stopped; SCAN guarantees every
key present throughout is returned, possibly twice, which the upserts absorb.

verify: compares every valid legacy record with its Postgres row and reports each difference.
repair: copies Postgres's state to Redis for the keys the dual-write outbox still lists.
"""

from __future__ import annotations

import argparse
import base64
import functools
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import httpx
from sqlalchemy import text
from sqlalchemy.exc import DataError, IntegrityError
from upstash_redis import Redis
from upstash_redis.errors import UpstashError

from shared import db
from shared.clock import iso_ms, month_start, utcnow
from shared.config import every_spelling, get_settings, read_variable
from shared.db import Conn
from shared.legacy import keys, store
from shared.legacy.mapping import (
    Counters,
    counter_keys,
    saved_search_row,
    user_row,
)
from shared.legacy.schemas import (
    LegacyRecordError,
    SavedSearchRecord,
    UserData,
    parse_saved_search,
    parse_user,
    storable,
)
from shared.models import UserTier
from shared.repositories import legacy_import
from shared.repositories.legacy_import import Upserted
from shared.repositories.users import placeholder_email

Phase = Literal["users", "saved_searches", "indexes", "done"]
QuarantineKind = Literal["invalid", "wrong_type", "orphan", "conflict", "unindexed"]
PHASES: tuple[tuple[Phase, str], ...] = (
    ("users", keys.USER_PATTERN),
    ("saved_searches", keys.SAVED_SEARCH_PATTERN),
    ("indexes", keys.INDEX_PATTERN),
)
CHECKPOINT_VERSION = 1


@dataclass
class Quarantined:
    """A legacy key that was not copied, and why (never its value: it may hold PII)."""

    key: str
    kind: QuarantineKind
    reason: str


@dataclass
class Tally:
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    kept: int = 0  # Postgres holds the newer state: not overwritten (counters may still grow)
    erased: int = 0  # erased here (tombstone or owed erasure): not imported

    def add(self, written: Upserted, batch: int) -> None:
        self.inserted += written.inserted
        self.updated += written.updated
        self.kept += written.kept
        self.erased += written.erased
        self.unchanged += batch - written.inserted - written.updated - written.kept - written.erased


@dataclass
class BackfillReport:
    """What a backfill did; written as JSON to `report_path` (also when interrupted)."""

    started_at: str = field(default_factory=lambda: iso_ms(utcnow()))
    finished_at: str | None = None
    complete: bool = False
    records_read: int = 0
    batches: int = 0
    elapsed_s: float = 0.0
    users: Tally = field(default_factory=Tally)
    saved_searches: Tally = field(default_factory=Tally)
    index_sets: int = 0
    unindexed_searches: int = 0  # items the original's list never showed; not copied
    quarantined: list[Quarantined] = field(default_factory=list)

    @property
    def records_per_s(self) -> float:
        return self.records_read / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def quarantine(self, key: str, kind: QuarantineKind, reason: str) -> None:
        self.quarantined.append(Quarantined(key, kind, reason))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["records_per_s"] = round(self.records_per_s, 1)
        data["quarantined_by_kind"] = {
            kind: sum(1 for q in self.quarantined if q.kind == kind)
            for kind in ("invalid", "wrong_type", "orphan", "conflict", "unindexed")
        }
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BackfillReport:
        fields = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        fields["users"] = Tally(**fields.get("users", {}))
        fields["saved_searches"] = Tally(**fields.get("saved_searches", {}))
        fields["quarantined"] = [Quarantined(**q) for q in fields.get("quarantined", [])]
        return cls(**fields)


@dataclass(frozen=True)
class Progress:
    """Passed to the `progress` callback after every committed (and checkpointed) batch."""

    phase: Phase
    batches: int
    records_read: int
    quarantined: int
    elapsed_s: float

    def line(self) -> str:
        rate = self.records_read / self.elapsed_s if self.elapsed_s > 0 else 0.0
        return (
            f"[{self.phase}] batch {self.batches}: {self.records_read} records read, "
            f"{self.quarantined} quarantined, {rate:.0f} records/s"
        )


@dataclass
class Checkpoint:
    """Where an interrupted run continues: the phase, the SCAN cursor after the last committed
    batch, and the report so far."""

    phase: Phase = "users"
    cursor: int = 0
    report: BackfillReport = field(default_factory=BackfillReport)

    def save(self, path: Path) -> None:
        """Atomically (write, then rename), so a crash never leaves half a checkpoint."""
        data = {
            "version": CHECKPOINT_VERSION,
            "phase": self.phase,
            "cursor": self.cursor,
            "report": self.report.to_dict(),
        }
        partial = path.with_name(path.name + ".partial")
        partial.write_text(json.dumps(data), encoding="utf-8")
        partial.replace(path)

    @classmethod
    def load(cls, path: Path) -> Checkpoint:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("version") != CHECKPOINT_VERSION:
            raise ValueError(f"{path} is not a checkpoint this version can resume")
        return cls(data["phase"], int(data["cursor"]), BackfillReport.from_dict(data["report"]))


def default_checkpoint(report_path: Path) -> Path:
    return report_path.with_name(report_path.name + ".checkpoint")


# --- reading Redis ------------------------------------------------------------------------------


def _scan_batches(
    client: Redis,
    pattern: str,
    cursor: int,
    *,
    batch_size: int,
    scan_count: int,
    report: BackfillReport | None = None,
) -> Iterator[tuple[list[str], int]]:
    """(keys, cursor to resume after them) in batches of about `batch_size` keys. A key name
    that is not UTF-8 is quarantined (shown with backslash escapes), never returned."""
    buffer: list[str] = []
    while True:
        try:
            cursor, found = client.scan(cursor, match=pattern, count=scan_count)
        except UnicodeDecodeError:
            cursor, found, unreadable = _scan_bytes(client, cursor, pattern, scan_count)
            if report is not None:
                for name in unreadable:
                    report.quarantine(name, "invalid", "its key name is not valid UTF-8")
        buffer.extend(found)
        if len(buffer) >= batch_size or cursor == 0:
            if buffer or cursor == 0:
                yield list(dict.fromkeys(buffer)), cursor
            buffer = []
        if cursor == 0:
            return


def _scan_bytes(
    client: Redis, cursor: int, pattern: str, count: int
) -> tuple[int, list[str], list[str]]:
    """The same SCAN page, decoded here: the SDK decodes a whole reply at once, so one key name
    that is not UTF-8 spoils the page. (next cursor, readable names, unreadable names escaped).
    Its client sends `Upstash-Encoding: base64`, so every string comes back base64."""
    command = ["SCAN", str(cursor), "MATCH", pattern, "COUNT", str(count)]
    body = client._http._client.post(client._url, headers=client._headers, json=command).json()
    if not isinstance(body, dict) or "result" not in body:
        raise UpstashError(str(body.get("error") if isinstance(body, dict) else body))
    raw_cursor, raw_names = body["result"]
    readable, unreadable = [], []
    for raw in raw_names:
        name = base64.b64decode(raw)
        try:
            readable.append(name.decode("utf-8"))
        except UnicodeDecodeError:
            unreadable.append(name.decode("utf-8", "backslashreplace"))
    return int(base64.b64decode(raw_cursor)), readable, unreadable


def _types(client: Redis, names: Sequence[str]) -> list[str]:
    return [str(kind) for kind in store.pipe_types(client, names)] if names else []


def _strings(
    client: Redis, names: Sequence[str], report: BackfillReport | None
) -> list[tuple[str, str]]:
    """(key, value) of the keys holding readable strings; other types and values that are not
    UTF-8 are quarantined, vanished keys skipped."""
    keep = []
    for name, kind in zip(names, _types(client, names), strict=True):
        if kind == "string":
            keep.append(name)
        elif kind != "none" and report is not None:
            report.quarantine(name, "wrong_type", f"expected a string holding JSON, found {kind}")
    found = []
    for name, value in zip(keep, store.read_values(client, keep), strict=True):
        if isinstance(value, LegacyRecordError):
            if report is not None:
                report.quarantine(name, "invalid", value.reason)
        elif value is not None:
            found.append((name, value))
    return found


@dataclass(frozen=True)
class _User:
    key: str
    record: UserData
    counters: Counters
    unreadable_counter: bool = False  # quarantined: `counters` holds None in its place


def _read_users(
    client: Redis, names: Sequence[str], now: datetime, report: BackfillReport | None
) -> list[_User]:
    """Valid user records with their real usage counters (three round trips per batch). A
    counter that cannot be read is quarantined on its own: the user is copied without it."""
    parsed: list[tuple[str, UserData]] = []
    for key, raw in _strings(client, names, report):
        try:
            parsed.append((key, storable(key, parse_user(key, raw))))
        except LegacyRecordError as error:
            if report is not None:
                report.quarantine(key, "invalid", error.reason)
    counter_names = [name for _, record in parsed for name in counter_keys(record, now)]
    values = store.read_counters(client, counter_names)
    found: list[_User] = []
    for index, (key, record) in enumerate(parsed):
        pair: list[int | None] = []
        unreadable = False
        for value in values[2 * index : 2 * index + 2]:
            if isinstance(value, LegacyRecordError):
                unreadable = True
                if report is not None:
                    kind: QuarantineKind = "wrong_type" if "holds a" in value.reason else "invalid"
                    report.quarantine(value.key, kind, f"{value.reason}; {key} copied without it")
                pair.append(None)
            else:
                pair.append(value)
        found.append(_User(key, record, Counters(monthly=pair[0], trial=pair[1]), unreadable))
    return found


def _read_searches(
    client: Redis, names: Sequence[str], report: BackfillReport | None
) -> list[tuple[str, SavedSearchRecord]]:
    """Valid saved-search records, under the original read schema."""
    valid = []
    for name in names:
        if keys.saved_search_ids_of(name) is None and report is not None:
            report.quarantine(name, "invalid", "not a saved-search:{userId}:{searchId} key")
    for key, raw in _strings(client, [n for n in names if keys.saved_search_ids_of(n)], report):
        try:
            valid.append((key, storable(key, parse_saved_search(key, raw, original_rules=True))))
        except LegacyRecordError as error:
            if report is not None:
                report.quarantine(key, "invalid", error.reason)
    return valid


# --- writing Postgres ---------------------------------------------------------------------------

Writer = Callable[..., Upserted]


Refusal = tuple[str, QuarantineKind, str]  # (row id, kind, reason)


def _write(writer: Writer, rows: list[dict[str, Any]]) -> tuple[Upserted, list[Refusal]]:
    """One multi-row upsert; when a row breaks a constraint or holds a value Postgres cannot
    store (a NUL character, say), the batch again row by row (a savepoint each) so only the
    offending rows are left out: (written, [(id, kind, reason)])."""
    if not rows:
        return Upserted(), []
    try:
        return db.transaction(lambda conn: writer(conn, rows, overwrite=True)), []
    except (IntegrityError, DataError):
        pass

    def one_by_one(conn: Conn) -> tuple[Upserted, list[Refusal]]:
        inserted = updated = kept = erased = 0
        refused: list[Refusal] = []
        for row in rows:
            conn.session.execute(text("SAVEPOINT legacy_row"))
            try:
                written = writer(conn, [row], overwrite=True)
            except (IntegrityError, DataError) as error:
                conn.session.execute(text("ROLLBACK TO SAVEPOINT legacy_row"))
                refused.append((row["id"], *_refusal(error)))
                continue
            conn.session.execute(text("RELEASE SAVEPOINT legacy_row"))
            inserted += written.inserted
            updated += written.updated
            kept += written.kept
            erased += written.erased
        return Upserted(inserted, updated, kept, erased), refused

    return db.transaction(one_by_one)


def _refusal(error: DataError | IntegrityError) -> tuple[QuarantineKind, str]:
    """A constraint another row holds is a conflict; a value Postgres cannot store is invalid
    (said by SQLSTATE, never the value)."""
    constraint = getattr(getattr(error.orig, "diag", None), "constraint_name", None)
    if isinstance(error, IntegrityError) and constraint:
        return "conflict", _CONFLICTS.get(constraint, f"violates {constraint}")
    state = getattr(error.orig, "sqlstate", None)
    return "invalid", f"Postgres cannot store a value of it (SQLSTATE {state})"


_CONFLICTS = {
    "users_email_key": "another user has this email",
    "users_email_lower_key": "another user has this email (compared case-insensitively)",
    "users_stripeCustomerId_key": "another user has this Stripe customer id",
    "users_stripeSubscriptionId_key": "another user has this Stripe subscription id",
    "saved_searches_userId_fkey": "the owner has no user row",
}


def _unclaimed(
    client: Redis, rows: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Rows whose email (case-insensitively) and Stripe ids no other row of the batch or of
    Postgres holds; the rest by id with the reason.

    Emails that differ only in case, and a Stripe customer two records name, are decided by
    the original's own truth, the `email:` and `stripe:` index keys: a user whose address or
    customer the index gives to another existing user is refused wherever SCAN meets it.
    Without such an index key, the first of a batch wins, as SCAN met it.
    """
    lookups = [(row["id"], keys.email(row["email"]), "address") for row in rows] + [
        (row["id"], keys.stripe(row["stripeCustomerId"]), "Stripe customer id")
        for row in rows
        if row["stripeCustomerId"]
    ]
    owners = store.read_values(client, [name for _, name, _ in lookups])
    named = [
        (user_id, name, what, owner)
        for (user_id, name, what), owner in zip(lookups, owners, strict=True)
        if isinstance(owner, str) and owner != user_id
    ]
    others = sorted({owner for *_, owner in named})
    pipe = client.pipeline()
    for other in others:
        pipe.exists(keys.user(other))
    alive = {o for o, n in zip(others, pipe.exec() if others else [], strict=True) if n}
    refused: dict[str, str] = {}
    for user_id, name, what, owner in named:
        if owner in alive:
            index = name.split(":", 1)[0]
            refused.setdefault(
                user_id, f"the {index}: index key of its {what} names {keys.user(owner)}"
            )
    claimed: dict[tuple[str, str], str] = {}
    for row in rows:
        if row["id"] in refused:
            continue
        for what, value in (
            ("email", row["email"].lower()),
            ("Stripe customer id", row["stripeCustomerId"]),
            ("Stripe subscription id", row["stripeSubscriptionId"]),
        ):
            if value is None:
                continue
            owner = claimed.setdefault((what, value), row["id"])
            if owner != row["id"]:
                refused.setdefault(row["id"], f"another user has this {what}")
    candidates = [row for row in rows if row["id"] not in refused]
    taken = db.run(lambda conn: legacy_import.taken_identifiers(conn, candidates), idempotent=True)
    refused.update(taken)
    return [row for row in candidates if row["id"] not in taken], refused


def _handovers(
    client: Redis, refused: Sequence[_User], reasons: dict[str, str]
) -> dict[str, tuple[str, str]]:
    """Refused users whose address Postgres gives another user although the original moved it
    to them: the `email:` index names them, and the holder's own record (in Redis, readable,
    its Postgres row not the newer state) holds another address now (a swap, or a handover).
    By id: (holder, lower-cased email) for `legacy_import.backfill_users` to release first."""
    candidates = [u for u in refused if reasons[u.record.clerkUserId].endswith("this email")]
    if not candidates:
        return {}
    owners = store.read_values(client, [keys.email(u.record.email) for u in candidates])
    named = [u for u, o in zip(candidates, owners, strict=True) if o == u.record.clerkUserId]
    rows = [{"id": u.record.clerkUserId, "email": u.record.email} for u in named]
    holders = db.run(lambda conn: legacy_import.email_holders(conn, rows), idempotent=True)
    names = [keys.user(h["id"]) for h in holders.values()]
    records = dict(zip(names, store.read_values(client, names), strict=True))
    handed: dict[str, tuple[str, str]] = {}
    for user in named:
        holder = holders.get(user.record.clerkUserId)
        raw = None if holder is None else records.get(keys.user(holder["id"]))
        if holder is None or holder["owed"] or not isinstance(raw, str):
            continue
        try:
            theirs = parse_user(keys.user(holder["id"]), raw)
        except LegacyRecordError:
            continue
        email = user.record.email.lower()
        moved = theirs.email.lower() != email
        if moved and not legacy_import.newer_than(holder["updatedAt"], theirs.updatedAt):
            handed[user.record.clerkUserId] = (holder["id"], email)
    return handed


def _backfill_users(
    client: Redis, names: Sequence[str], report: BackfillReport, now: datetime
) -> int:
    found = _read_users(client, names, now, report)
    rows, refused = _unclaimed(client, [user_row(u.record, u.counters, now) for u in found])
    handed = _handovers(client, [u for u in found if u.record.clerkUserId in refused], refused)
    rows += [user_row(u.record, u.counters, now) for u in found if u.record.clerkUserId in handed]
    for user_id in handed:
        del refused[user_id]
    releases = sorted({(holder, email) for holder, email in handed.values()})
    writer = functools.partial(legacy_import.backfill_users, releases=releases)
    written, raced = _write(writer, rows)
    for user_id, reason in refused.items():
        report.quarantine(keys.user(user_id), "conflict", reason)
    for user_id, kind, reason in raced:
        report.quarantine(keys.user(user_id), kind, reason)
    report.users.add(written, len(rows) - len(raced))
    return len(names)


def _backfill_searches(client: Redis, names: Sequence[str], report: BackfillReport) -> int:
    found = _read_searches(client, names, report)
    owners = {record.clerkUserId for _, record in found}

    def owners_state(conn: Conn) -> tuple[set[str], set[str]]:
        return (
            legacy_import.existing_user_ids(conn, sorted(owners)),
            legacy_import.erased_user_ids(conn, sorted(owners)),
        )

    existing, erased = db.run(owners_state, idempotent=True)
    quarantined_users = {q.key for q in report.quarantined if q.key.startswith("user:")}
    owned = []
    for key, record in found:
        owner = keys.user(record.clerkUserId)
        if record.clerkUserId in erased:
            report.saved_searches.erased += 1  # an erased account's: never imported
        elif record.clerkUserId in existing:
            owned.append((key, record))
        elif owner in quarantined_users:
            report.quarantine(key, "orphan", f"its owner {owner} was quarantined")
        else:
            report.quarantine(key, "orphan", f"its owner {owner} does not exist")
    unlisted = _unlisted(client, [record for _, record in owned])
    report.unindexed_searches += len(unlisted)
    for key, record in owned:
        if record.id in unlisted:
            report.quarantine(key, "unindexed", unlisted[record.id])
    owned = [(key, record) for key, record in owned if record.id not in unlisted]
    written, refused = _write(
        legacy_import.backfill_saved_searches, [saved_search_row(r) for _, r in owned]
    )
    by_id = {record.id: key for key, record in owned}
    for search_id, kind, reason in refused:
        report.quarantine(by_id[search_id], kind, reason)
    report.saved_searches.add(written, len(owned) - len(refused))
    return len(names)


def _unlisted(client: Redis, records: Sequence[SavedSearchRecord]) -> dict[str, str]:
    """The records the original's list never showed, by search id, with the reason: those
    their owner's index set does not list (SREM then a failed DEL leaves a deleted search so),
    and those whose index is not a set (the original's SMEMBERS failed). Checked with TYPE,
    never SISMEMBER on a key that is not a set."""
    indexes = sorted({keys.saved_searches(record.clerkUserId) for record in records})
    kinds = dict(zip(indexes, _types(client, indexes), strict=True))
    unlisted: dict[str, str] = {}
    listed = []
    for record in records:
        index = keys.saved_searches(record.clerkUserId)
        if kinds[index] in ("set", "none"):
            listed.append(record)
        else:
            unlisted[record.id] = f"{index} is not a set, so the original never showed it"
    if listed:
        pipe = client.pipeline()
        for record in listed:
            pipe.sismember(keys.saved_searches(record.clerkUserId), record.id)
        for record, member in zip(listed, pipe.exec(), strict=True):
            if not member:
                index = keys.saved_searches(record.clerkUserId)
                unlisted[record.id] = f"{index} does not list it, so the original never showed it"
    return {sid: f"{reason}; not copied" for sid, reason in unlisted.items()}


def _set_members(client: Redis, sets: Sequence[str], report: BackfillReport) -> list[list[str]]:
    """SMEMBERS of each set in one pipeline; a set with a member that is not UTF-8 is read
    alone and, if that fails, quarantined (its members count as none)."""
    pipe = client.pipeline()
    for name in sets:
        pipe.smembers(name)
    try:
        replies = pipe.exec()
        return [sorted(map(str, m)) if isinstance(m, list) else [] for m in replies]
    except UnicodeDecodeError:
        pass
    found = []
    for name in sets:
        try:
            found.append(sorted(client.smembers(name)))
        except UnicodeDecodeError:
            report.quarantine(name, "invalid", store.NOT_UTF8)
            found.append([])
    return found


def _check_indexes(client: Redis, names: Sequence[str], report: BackfillReport) -> int:
    """Index members without an item are orphans
    (docs/original-app.md#redis-to-postgres-field-mapping): reported, nothing to copy."""
    sets = []
    for name, kind in zip(names, _types(client, names), strict=True):
        if kind == "set" and keys.index_owner_of(name):
            sets.append(name)
        elif kind not in ("none", "set"):
            report.quarantine(name, "wrong_type", f"expected a set of search ids, found {kind}")
    report.index_sets += len(sets)
    if not sets:
        return len(names)
    items = [
        keys.saved_search(str(keys.index_owner_of(name)), member)
        for name, members in zip(sets, _set_members(client, sets, report), strict=True)
        for member in members
    ]
    if items:
        pipe = client.pipeline()
        for item in items:
            pipe.exists(item)
        for item, exists in zip(items, pipe.exec(), strict=True):
            if not exists:
                report.quarantine(item, "orphan", "listed in its index set but has no item")
    return len(names)


def backfill(
    redis_client: Redis,
    *,
    batch_size: int = 500,
    resume_from: Path | None = None,
    report_path: Path,
    progress: Callable[[Progress], None] | None = None,
    scan_count: int = 1000,
    now: datetime | None = None,
) -> BackfillReport:
    """Copy every legacy user and saved search into Postgres; the report is also written to
    `report_path` as JSON.

    The checkpoint lives at `resume_from` (default: `<report_path>.checkpoint`): when that file
    exists the run continues from it, it is rewritten after every committed batch, and it is
    removed once the run completes. `progress` is called after each batch.
    """
    now = now or utcnow()
    checkpoint_path = resume_from or default_checkpoint(report_path)
    state = Checkpoint.load(checkpoint_path) if checkpoint_path.exists() else Checkpoint()
    report = state.report
    clock = time.perf_counter() - report.elapsed_s
    handlers: dict[Phase, Callable[[Sequence[str]], int]] = {
        "users": lambda names: _backfill_users(redis_client, names, report, now),
        "saved_searches": lambda names: _backfill_searches(redis_client, names, report),
        "indexes": lambda names: _check_indexes(redis_client, names, report),
    }
    order = [name for name, _ in PHASES]
    first = order.index(state.phase) if state.phase != "done" else len(order)
    try:
        for index in range(first, len(PHASES)):
            phase, pattern = PHASES[index]
            start = state.cursor if index == first else 0
            for names, cursor in _scan_batches(
                redis_client,
                pattern,
                start,
                batch_size=batch_size,
                scan_count=scan_count,
                report=report,
            ):
                report.records_read += handlers[phase](names)
                report.batches += 1
                report.elapsed_s = time.perf_counter() - clock
                # The phase's last batch (cursor 0) moves the checkpoint on to the next phase.
                after = (
                    Checkpoint(phase, cursor, report)
                    if cursor
                    else Checkpoint(_next_phase(phase), 0, report)
                )
                after.save(checkpoint_path)
                if progress is not None:
                    progress(
                        Progress(
                            phase,
                            report.batches,
                            report.records_read,
                            len(report.quarantined),
                            report.elapsed_s,
                        )
                    )
        report.complete = True
    finally:
        report.elapsed_s = time.perf_counter() - clock
        report.finished_at = iso_ms(utcnow())
        report_path.write_text(json.dumps(report.to_dict(), indent=2), encoding="utf-8")
    checkpoint_path.unlink(missing_ok=True)
    return report


def _next_phase(phase: Phase) -> Phase:
    order = [name for name, _ in PHASES]
    index = order.index(phase)
    return PHASES[index + 1][0] if index + 1 < len(order) else "done"


# --- verify -------------------------------------------------------------------------------------


UsersLoaded = tuple[dict[str, dict[str, Any]], set[str], dict[str, set[str]]]


def _load_users(wanted: list[dict[str, Any]]) -> UsersLoaded:
    """Postgres rows by id; the ids of missing rows another user's email or Stripe id blocks
    (what the backfill quarantines as conflicts); and, by id, the columns of a present row
    that the reattach of such a conflict left out: the address it stores as the placeholder,
    an address or Stripe id another user holds (the backfill still quarantines the key)."""

    def load(conn: Conn) -> UsersLoaded:
        from shared.legacy import bridge

        rows = legacy_import.users_by_id(conn, [row["id"] for row in wanted])
        missing = [row for row in wanted if row["id"] not in rows]
        left_out: dict[str, set[str]] = {}
        for row in wanted:
            have = rows.get(row["id"])
            if have is None or all(have[c] == row[c] for c in bridge.UNIQUE_COLUMNS):
                continue  # nothing to leave out (and no query for the common case)
            columns = set(bridge.held_by_others(conn, row))
            if have["email"] == placeholder_email(row["id"]):
                columns.add("email")
            left_out[row["id"]] = columns
        return rows, set(legacy_import.taken_identifiers(conn, missing)), left_out

    return db.run(load, idempotent=True)


def _load_searches(ids: list[str], owners: list[str]) -> tuple[dict[str, dict[str, Any]], set[str]]:
    """Postgres rows by id, and which owners have a user row."""

    def load(conn: Conn) -> tuple[dict[str, dict[str, Any]], set[str]]:
        return (
            legacy_import.saved_searches_by_id(conn, ids),
            legacy_import.existing_user_ids(conn, owners),
        )

    return db.run(load, idempotent=True)


@dataclass(frozen=True)
class Difference:
    """A legacy record and its Postgres row disagree on `field` (`row`: the row is missing)."""

    key: str
    field: str
    redis: Any
    postgres: Any

    def __str__(self) -> str:
        return f"{self.key} {self.field}: redis={_show(self.redis)} postgres={_show(self.postgres)}"


def _show(value: Any) -> str:
    if isinstance(value, datetime):
        return iso_ms(value)
    if isinstance(value, UserTier):
        return value.value
    return json.dumps(value, default=str, ensure_ascii=False)


def _user_differences(
    key: str,
    expected: dict[str, Any],
    actual: dict[str, Any] | None,
    now: datetime,
    quarantined: set[str],
) -> Iterable[Difference]:
    """`quarantined`: the fields not compared (what the backfill quarantines is not copied)."""
    if actual is None:
        yield Difference(key, "row", "present", "missing")
        return
    for name, want in expected.items():
        have = actual[name]
        if name == "monthlyResetAt" or name in quarantined:
            continue  # Postgres's own bookkeeping for the lazy reset; or not copied
        if name == "tier" and have is UserTier.ENTERPRISE and want is UserTier.PRO:
            continue  # the legacy layout has no enterprise tier
        if name == "keywordSearchesThisMonth" and actual["monthlyResetAt"] < month_start(now):
            have = 0  # the lazy monthly reset
        if name == "keywordSearchesTotal":
            if have < want:  # the legacy value is a lower bound
                yield Difference(key, name, want, have)
            continue
        if name == "updatedAt":
            # A lower bound too: Postgres also stamps what the original keeps off its record
            # (a keyword search moves only the counter, mirrored by INCRBY); only a record
            # the original stamped later than our row is a change Postgres lacks.
            if legacy_import.newer_than(want, have):
                yield Difference(key, name, want, have)
            continue
        if have != want:
            yield Difference(key, name, want, have)


def _search_differences(
    key: str, expected: dict[str, Any], actual: dict[str, Any] | None
) -> Iterable[Difference]:
    if actual is None:
        yield Difference(key, "row", "present", "missing")
        return
    for name, want in expected.items():
        if name != "lastAccessedAt" and actual[name] != want:
            yield Difference(key, name, want, actual[name])


def verify(
    redis_client: Redis,
    *,
    batch_size: int = 500,
    scan_count: int = 1000,
    echo: Callable[[str], None] | None = None,
    now: datetime | None = None,
) -> list[Difference]:
    """Every difference between a valid legacy record and its Postgres row, then every Postgres
    row that has no Redis key, each also passed to `echo` as a line. What the backfill
    quarantines (invalid records, unreadable counters, orphans, users whose email or Stripe id
    another user holds, also once reattached without them) is not compared."""
    now = now or utcnow()
    found: list[Difference] = []

    def note(differences: Iterable[Difference]) -> None:
        for difference in differences:
            found.append(difference)
            if echo is not None:
                echo(str(difference))

    for names, _ in _scan_batches(
        redis_client, keys.USER_PATTERN, 0, batch_size=batch_size, scan_count=scan_count
    ):
        legacy = _read_users(redis_client, names, now, None)
        expected = {user.key: user_row(user.record, user.counters, now) for user in legacy}
        rows, conflicting, left_out = _load_users(list(expected.values()))
        for user in legacy:
            user_id = user.record.clerkUserId
            if user_id in conflicting:
                continue  # another user holds its email or Stripe id: quarantined, not copied
            quarantined = left_out.get(user_id, set())
            if user.unreadable_counter:  # quarantined: its value is unknown, never read as 0
                quarantined = quarantined | {"keywordSearchesThisMonth", "keywordSearchesTotal"}
            note(
                _user_differences(user.key, expected[user.key], rows.get(user_id), now, quarantined)
            )

    for names, _ in _scan_batches(
        redis_client, keys.SAVED_SEARCH_PATTERN, 0, batch_size=batch_size, scan_count=scan_count
    ):
        searches = _read_searches(redis_client, names, None)
        rows, existing = _load_searches(
            [record.id for _, record in searches],
            sorted({record.clerkUserId for _, record in searches}),
        )
        unlisted = _unlisted(redis_client, [r for _, r in searches if r.clerkUserId in existing])
        for key, record in searches:
            # an orphan or an item the original never showed: quarantined, not compared
            if record.clerkUserId in existing and record.id not in unlisted:
                note(_search_differences(key, saved_search_row(record), rows.get(record.id)))
    note(_only_in_postgres(redis_client, batch_size))
    return found


def _only_in_postgres(client: Redis, batch_size: int) -> Iterator[Difference]:
    """Postgres rows with no Redis key at all (`row: redis=missing postgres=present`): what
    the TypeScript app would not see, so the switch to postgres mode is decided on both
    directions. One EXISTS per row, pipelined per batch."""

    def users(after: str, conn: Conn) -> list[tuple[str, str]]:
        page = legacy_import.user_ids_after(conn, after, batch_size)
        return [(user_id, keys.user(user_id)) for user_id in page]

    def searches(after: str, conn: Conn) -> list[tuple[str, str]]:
        page = legacy_import.saved_searches_after(conn, after, batch_size)
        return [(search_id, keys.saved_search(owner, search_id)) for search_id, owner in page]

    for read in (users, searches):
        after = ""
        while batch := db.run(functools.partial(read, after), idempotent=True):
            pipe = client.pipeline()
            for _, key in batch:
                pipe.exists(key)
            for (_, key), exists in zip(batch, pipe.exec(), strict=True):
                if not exists:
                    yield Difference(key, "row", "missing", "present")
            after = batch[-1][0]


# --- command line -------------------------------------------------------------------------------


def reattach(client: Redis, user_ids: Sequence[str]) -> int:
    """Reattach each user (`shared.legacy.bridge.reattach_user`) and print one line for each;
    1 when one of them was not reattached. Ids another row holds are left out by
    `reattach_user` itself; one taken meanwhile (the unique index) or an unreadable record
    refuses that user with the reason. Either way the remaining ids are still processed."""
    from shared.legacy import bridge

    failed = 0
    for user_id in user_ids:
        key = keys.user(user_id)
        try:
            inserted = bridge.reattach_user(client, user_id)
        except IntegrityError as error:
            failed += 1
            print(f"{key}: not reattached: {_refusal(error)[1]}")
            continue
        except LegacyRecordError as error:
            failed += 1
            print(f"{key}: not reattached: unreadable record: {error.reason}")
            continue
        if inserted is None:
            failed += 1
            print(f"{key}: no such record in Redis")
        else:
            print(f"{key}: reattached, {inserted} saved search(es) imported")
    return 1 if failed else 0


def _redis_from_env() -> Redis:
    url, token = read_variable("UPSTASH_REDIS_REST_URL"), read_variable("UPSTASH_REDIS_REST_TOKEN")
    if not (url and token):
        raise SystemExit(
            "set UPSTASH_REDIS_REST_URL and UPSTASH_REDIS_REST_TOKEN to the Redis to read"
        )
    client = Redis(url=url[1], token=token[1], rest_retries=2, allow_telemetry=False)
    client._http._client.timeout = httpx.Timeout(30.0)  # SCAN/MGET batches, not a request path
    return client


def _database_from_env() -> None:
    """A long batch job: the direct endpoint when known (no pooler needed), else DATABASE_URL."""
    url = read_variable("DIRECT_DATABASE_URL") or read_variable("DATABASE_URL")
    if not url:
        raise SystemExit("set DIRECT_DATABASE_URL (or DATABASE_URL) to the Postgres to write")
    os.environ.update(every_spelling({"DATABASE_URL": url[1]}))
    get_settings.cache_clear()
    db.dispose_engine()


def _parser(prog: str = "python -m devkit.legacy") -> argparse.ArgumentParser:
    """The actions' parser; `prog` is how the caller was invoked (`keyflash legacy`'s help names
    that form, as the docs do)."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser("backfill", help="copy legacy Redis records into Postgres")
    run.add_argument(
        "--batch-size", type=int, default=500, help="records per upsert and checkpoint (500)"
    )
    run.add_argument("--scan-count", type=int, default=1000, help="SCAN's COUNT hint (1000)")
    run.add_argument(
        "--report",
        type=Path,
        default=Path("legacy-backfill-report.json"),
        help="where the JSON report goes (default: legacy-backfill-report.json)",
    )
    run.add_argument(
        "--checkpoint", type=Path, help="default: <report>.checkpoint (resumed when present)"
    )
    check = commands.add_parser("verify", help="print every legacy record that Postgres lacks")
    check.add_argument(
        "--batch-size", type=int, default=500, help="records compared per batch (500)"
    )
    fix = commands.add_parser("repair", help="copy pending dual-write mirrors to Redis")
    fix.add_argument(
        "--limit",
        type=int,
        default=500,
        help="keys (and users owed counter deltas) repaired per round (500)",
    )
    attach = commands.add_parser(
        "reattach",
        help="import users whose address another account holds, with the placeholder email",
    )
    attach.add_argument("user_ids", nargs="+", metavar="USER_ID", help="Clerk user id")
    return parser


def main(argv: Sequence[str] | None = None, prog: str = "python -m devkit.legacy") -> int:
    """`python -m devkit.legacy backfill|verify|repair|reattach` (`keyflash legacy` passes its own
    `prog`); the exit status says whether all is well (verify: no differences; repair: nothing
    left; reattach: every user reattached)."""
    return _run(_parser(prog).parse_args(argv))


def _run(args: argparse.Namespace) -> int:
    client = _redis_from_env()
    _database_from_env()
    if args.command == "backfill":
        report = backfill(
            client,
            batch_size=args.batch_size,
            scan_count=args.scan_count,
            resume_from=args.checkpoint,
            report_path=args.report,
            progress=lambda p: print(p.line(), file=sys.stderr, flush=True),
        )
        print(
            f"backfill complete: users {asdict(report.users)}, saved searches "
            f"{asdict(report.saved_searches)}, {len(report.quarantined)} quarantined, "
            f"{report.records_per_s:.0f} records/s; report: {args.report}"
        )
        return 0
    if args.command == "verify":
        differences = verify(client, batch_size=args.batch_size, echo=print)
        print(f"{len(differences)} difference(s)")
        return 1 if differences else 0
    from shared.legacy import bridge

    if args.command == "reattach":
        return reattach(client, args.user_ids)
    while True:
        summary = bridge.repair_pending(client, limit=args.limit)
        print(
            f"repaired {summary.repaired}, failed {summary.failed}, skipped {summary.skipped}, "
            f"remaining {summary.remaining}"
        )
        if summary.remaining == 0 or summary.repaired == 0:
            return 0 if summary.remaining == 0 else 1


if __name__ == "__main__":
    from devkit.cli import reported

    # `keyflash legacy`'s ending: one line and exit 1 on a failure, 130 on Ctrl-C (the report
    # and checkpoint are written by then)
    arguments = _parser().parse_args()
    sys.exit(reported(functools.partial(_run, arguments), debug=arguments.debug))
