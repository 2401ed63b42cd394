"""Section 8: the Redis → Postgres backfill on a messy legacy keyspace of 100,000 records.

The keyspace is `devkit.legacy_dataset` (the generator the tests use) at scale: valid users with
10 saved searches each, pro and trial usage counters, vestigial stale counters in the records,
plus every kind of mess a production keyspace holds (orphans, keys of the wrong Redis type,
invalid JSON, bytes that are not UTF-8, counters that are not whole numbers, case-only
duplicate emails decided by the `email:` index, emoji and 120-UTF-16-unit names). It lives in
its own database of the stack's real Redis (REDIS_URL, else the private redis-server), behind
an Upstash emulator process of its own, so no other section's keys are read; that database
must be empty. Two workers: one writes the keyspace, a fresh one runs the backfill as
`python -m devkit.legacy backfill` does, then runs it again, so its peak RSS is the backfill's.
The outcome counts are checked against what the generator wrote, exactly, kind by kind.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
from typing import Any

from benchmarks.core import ROOT, Context, WorkerError, run_worker, target
from devkit._host import LOOPBACK, free_port, wait_for

DATABASE = int(os.environ.get("BENCH_LEGACY_REDIS_DB", "1"))
SEARCHES_PER_USER = 10


def run(ctx: Context) -> dict[str, Any]:
    records = ctx.pick(100_000, 2_000)
    if not ctx.stack.redis_url:
        reason = "needs a real Redis (redis-server installed, or REDIS_URL): the mess has bytes"
        return {"ran": "not available", "reason": reason, "targets": []}
    redis_url = f"{ctx.stack.redis_url.rsplit('/', 1)[0]}/{DATABASE}"
    port, token = free_port(), secrets.token_urlsafe(24)
    emulator = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.upstash_server", str(port), token, redis_url],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        if not wait_for(lambda: _listening(port), timeout=20):
            raise WorkerError("the migration's Upstash emulator did not start")
        env = {
            **ctx.stack.app_env(),
            "UPSTASH_REDIS_REST_URL": f"http://127.0.0.1:{port}",
            "UPSTASH_REDIS_REST_TOKEN": token,
        }
        users = max(6, records // (1 + SEARCHES_PER_USER))
        ctx.log(f"  migration: writing {records:,} messy legacy records into Redis db {DATABASE}")
        params = {"users": users, "searches_per_user": SEARCHES_PER_USER, "redis_url": redis_url}
        written = run_worker("legacy_mess_write", params, env, timeout=3600)
        ctx.log("  migration: backfill, then a re-run")
        report_path = ctx.stack.workdir / "legacy-mess-report.json"
        outcome = run_worker(
            "legacy_mess_backfill", {"report_path": str(report_path)}, env, timeout=3600
        )
    except WorkerError as error:
        return {"ran": "devkit.legacy.backfill", "error": str(error)[-1500:], "targets": []}
    finally:
        emulator.terminate()
        emulator.wait(timeout=20)
    return _result(written, outcome)


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex((LOOPBACK, port)) == 0


def _result(written: dict[str, Any], outcome: dict[str, Any]) -> dict[str, Any]:
    expected, first, again = written["expected"], outcome["first"], outcome["again"]
    got = first["quarantined_keys"]
    kinds = ("invalid", "wrong_type", "orphan", "conflict")
    exact = {
        "users inserted": (first["users"]["inserted"], expected["users"]),
        "saved searches inserted": (first["saved_searches"]["inserted"], expected["searches"]),
        "unindexed searches": (first["unindexed_searches"], expected["unindexed"]),
        **{f"quarantined {kind}": (len(got.get(kind, [])), len(expected[kind])) for kind in kinds},
    }
    same_keys = all(sorted(got.get(kind, [])) == sorted(expected[kind]) for kind in kinds)
    counts_exact = same_keys and all(a == b for a, b in exact.values())
    noop = (
        again["users"]["inserted"] + again["users"]["updated"] == 0
        and again["saved_searches"]["inserted"] + again["saved_searches"]["updated"] == 0
        and again["users"]["unchanged"] == expected["users"]
        and again["saved_searches"]["unchanged"] == expected["searches"]
        and again["quarantined_by_kind"] == first["quarantined_by_kind"]
    )
    return {
        "ran": "devkit.legacy.backfill (batch size 500, as its CLI), then again",
        "records_written": written["records"],
        "generate_s": written["seconds"],
        "records_read": first["records_read"],
        "seconds": first["seconds"],
        "records_per_s": first["records_per_s"],
        "batches": first["batches"],
        "longest_batch_ms": first["longest_batch_ms"],
        "peak_rss_mb": outcome["peak_rss_mb"],
        "baseline_rss_mb": outcome["baseline_rss_mb"],
        "outcomes": {name: {"got": a, "expected": b} for name, (a, b) in exact.items()},
        "quarantined_keys_match": same_keys,
        "rerun": {
            "seconds": again["seconds"],
            "users": again["users"],
            "saved_searches": again["saved_searches"],
            "quarantined_by_kind": again["quarantined_by_kind"],
        },
        "targets": [
            target(
                "every outcome counted exactly (records, quarantine kinds and keys)",
                counts_exact,
                "exact" if counts_exact else "differs",
            ),
            target("a complete run", bool(first["complete"]), str(first["complete"])),
            target(
                "a re-run rewrites nothing (inserted 0, updated 0, same quarantine)",
                noop,
                f"inserted {again['users']['inserted'] + again['saved_searches']['inserted']}, "
                f"updated {again['users']['updated'] + again['saved_searches']['updated']}",
            ),
        ],
    }
