"""SnapStart hooks (shared.snapstart), emulated as Lambda runs them, without AWS.

A fresh interpreter gets a stand-in for the runtime's `snapshot_restore_py` (which only Lambda's
managed Python has), imports a function as INIT does with `AWS_LAMBDA_INITIALIZATION_TYPE=
snap-start`, uses the database, runs the before-snapshot hooks, then forks twice: each child is a
container restored from the same snapshot. Checked: INIT warmed the lazily imported modules and
connected once (the dialect's one statement), the pooled connection is closed before the
snapshot, every restored child reconnects on its own and sends only its query, and the ids and
retry jitter drawn after restore differ between children (they do not without the after-restore
hooks: the control pair).
"""

from __future__ import annotations

import os

from tests.support.processes import ROOT, fresh_interpreter

SCRIPT = r"""
import json, os, random, sys, types

import psycopg

sent = []  # every statement sent to the server, INIT's and each restored container's
execute = psycopg.Cursor.execute
psycopg.Cursor.execute = lambda cursor, query, *a, **k: sent.append(str(query)) or execute(
    cursor, query, *a, **k
)
hooks = {"before": [], "after": []}
stand_in = types.ModuleType("snapshot_restore_py")
stand_in.register_before_snapshot = lambda fn: hooks["before"].append(fn) or fn
stand_in.register_after_restore = lambda fn: hooks["after"].append(fn) or fn
sys.modules["snapshot_restore_py"] = stand_in

import importlib
importlib.import_module(sys.argv[1])  # INIT
from sqlalchemy import text
from shared import db, ids

warmed = "shared.models" in sys.modules
sent_by_init = list(sent)
uncompiled = db.compile_hot_statements()  # what a restored container's requests would compile
watched = ("shared.storage", "shared.legacy.bridge", "upstash_redis")
loaded = [name for name in watched if name in sys.modules]
pooled = db.get_engine().raw_connection()
driver = pooled.driver_connection
pooled.close()  # back to the pool, still open
open_before = not driver.closed
for hook in hooks["before"]:
    hook()
closed_by_hooks = driver.closed
# CPython re-seeds `random` in a forked child by itself; a restored snapshot is not a fork, so
# each child puts back the state the snapshot froze before anything else runs.
frozen_random = random.getstate()


def restored(run_hooks):
    read, write = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(read)
        random.setstate(frozen_random)
        if run_hooks:
            for hook in hooks["after"]:
                hook()
        sent.clear()
        pid = text("SELECT pg_backend_pid()")
        backend = db.run(lambda conn: conn.session.execute(pid).scalar_one())
        out = {"cuid": ids.new_cuid(), "jitter": random.random(), "backend": backend,
               "statements": len(sent)}
        os.write(write, json.dumps(out).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        data = json.loads(pipe.read())
    os.waitpid(child, 0)
    return data


print("@@" + json.dumps({
    "hooks": [len(hooks["before"]), len(hooks["after"])],
    "warmed": warmed,
    "sent_by_init": sent_by_init,
    "uncompiled": uncompiled,
    "loaded": loaded,
    "open_before": open_before,
    "closed_by_hooks": closed_by_hooks,
    "restored": [restored(True), restored(True)],
    "control": [restored(False), restored(False)],
}))
"""


def _emulate(env: dict[str, str], module: str = "functions.health") -> dict[str, object]:
    result: dict[str, object] = fresh_interpreter(SCRIPT, module, env=env)
    return result


def _counter(cuid: str) -> str:
    return cuid[9:13]  # c + time(8) + counter(4) + fingerprint(4) + random(8)


def test_snapshot_hooks_close_connections_and_restored_containers_differ(db_env: str) -> None:
    env = {**os.environ, "AWS_LAMBDA_INITIALIZATION_TYPE": "snap-start", "PYTHONPATH": str(ROOT)}
    result = _emulate(env)
    assert result["hooks"] == [1, 1]
    assert result["warmed"] is True, "INIT imports what requests would load on first use"
    assert result["uncompiled"] == 0, "INIT builds and compiles the hot statements"
    [learned] = result["sent_by_init"]  # type: ignore[misc]
    assert "current_schema()" in learned, "INIT connects: the dialect learns the server"
    assert result["open_before"] is True
    assert result["closed_by_hooks"] is True, "a pooled connection went into the snapshot"
    first, second = result["restored"]  # type: ignore[misc]
    assert _counter(first["cuid"]) != _counter(second["cuid"])
    assert first["jitter"] != second["jitter"]
    assert first["backend"] and second["backend"], "each restored container reconnects"
    assert first["statements"] == second["statements"] == 1, "and sends only its query"
    # Without the after-restore hooks, two containers from one snapshot draw the same values.
    same_a, same_b = result["control"]  # type: ignore[misc]
    assert _counter(same_a["cuid"]) == _counter(same_b["cuid"])
    assert same_a["jitter"] == same_b["jitter"]


def test_an_ordinary_cold_start_does_not_warm(db_env: str) -> None:
    env = {**os.environ, "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand", "PYTHONPATH": str(ROOT)}
    result = _emulate(env)
    assert result["hooks"] == [1, 1]
    assert result["warmed"] is False, "health loads no ORM mappers unless a snapshot is taken"
    assert result["sent_by_init"] == [], "nor connects before its first request"
    history = _emulate({**env, "STORAGE_MODE": "postgres"}, "functions.history")
    assert history["uncompiled"] > 0, "statements are built on first use, not at import"


def test_a_snapshot_of_a_signing_in_function_holds_the_storage_switch_not_the_legacy_layer(
    db_env: str,
) -> None:
    """The first caller of a function that authenticates is provisioned through
    `shared.storage`: a snapshot pays for it at publish time. In postgres mode that switch
    needs neither the legacy bridge nor the Upstash SDK (history reads no Redis)."""
    base = {**os.environ, "PYTHONPATH": str(ROOT), "STORAGE_MODE": "postgres"}
    snap = _emulate({**base, "AWS_LAMBDA_INITIALIZATION_TYPE": "snap-start"}, "functions.history")
    assert snap["loaded"] == ["shared.storage"]
    cold = _emulate({**base, "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand"}, "functions.history")
    assert cold["loaded"] == [], "an ordinary cold start loads the switch on first use"
