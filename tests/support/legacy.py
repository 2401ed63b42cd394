"""Helpers for the legacy-migration tests; the generator itself is `devkit.legacy_dataset`
(the migration benchmark uses it too)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from upstash_redis import Redis

from devkit.legacy import BackfillReport, Tally
from devkit.legacy_dataset import (
    Expected,
    LegacyDataset,
    Writer,
    dumps,
    keyword_result,
    search_record,
    user_record,
    write_mess,
    write_search,
    write_user,
)

__all__ = [
    "LegacyDataset",
    "Writer",
    "assert_outcomes",
    "dumps",
    "keyword_result",
    "quarantined",
    "scan_all",
    "search_record",
    "snapshot_values",
    "user_record",
    "write_mess",
    "write_search",
    "write_user",
]


def scan_all(client: Redis, pattern: str = "*") -> Iterator[str]:
    cursor = 0
    while True:
        cursor, found = client.scan(cursor, match=pattern, count=1000)
        yield from found
        if cursor == 0:
            return


def snapshot_values(client: Redis, names: Iterable[str]) -> dict[str, Any]:
    """Every key's type and value, to prove a run left Redis untouched."""
    names = sorted(names)
    pipe = client.pipeline()
    for name in names:
        pipe.type(name)
    types = pipe.exec()
    pipe = client.pipeline()
    for name, kind in zip(names, types, strict=True):
        if kind == "set":
            pipe.smembers(name)
        else:
            pipe.get(name)
    values = pipe.exec()
    return {
        name: (kind, sorted(value) if kind == "set" else value)
        for name, kind, value in zip(names, types, values, strict=True)
    }


def quarantined(report: BackfillReport, kind: str) -> set[str]:
    """The keys the backfill quarantined for one reason."""
    return {q.key for q in report.quarantined if q.kind == kind}


def assert_outcomes(report: BackfillReport, expected: Expected) -> None:
    """The backfill counted exactly what the generated keyspace holds, outcome by outcome."""
    assert report.users == Tally(inserted=expected.users)
    assert report.saved_searches == Tally(inserted=expected.searches)
    assert report.unindexed_searches == expected.unindexed
    assert len(quarantined(report, "unindexed")) == expected.unindexed
    assert quarantined(report, "invalid") == expected.invalid
    assert quarantined(report, "wrong_type") == expected.wrong_type
    assert quarantined(report, "orphan") == expected.orphans
    assert quarantined(report, "conflict") == expected.conflicts  # whatever the SCAN order
