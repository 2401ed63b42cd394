"""Lambda SnapStart: warm during INIT, close connections before the snapshot, re-seed after.

With SnapStart, Lambda runs a function's INIT once when a version is published, snapshots the
memory and restores that snapshot for each new container. So:
- INIT should do what a first request would otherwise do: the lazily imported modules (the usage
  row's repository and its table; the `STORAGE_MODE` switch, which provisions a function's
  first caller), the configuration of the ORM mappers the function loaded, the hot statements
  of the repositories it imported (built and compiled), the engine and settings objects, and
  one connection, so that the engine's dialect has learned the server (its one statement) and a
  restored container's first request only connects;
- no socket may be in the snapshot: it would be long dead at restore, and shared by every
  container restored from it, so pooled database and Redis connections are closed before it
  (both reconnect on first use);
- whatever was drawn at random during INIT is the same in every restored container: the id
  generator's counter and fingerprint (`shared.ids`) and the `random` module behind the retry
  jitter are re-seeded after each restore. `secrets` and `uuid4` read the OS's randomness on
  every call and need nothing.

The hooks register through `snapshot_restore_py`, which only Lambda's managed Python runtime
(3.12+) has; elsewhere `register()` does nothing. Warming runs only in a SnapStart INIT
(`AWS_LAMBDA_INITIALIZATION_TYPE=snap-start`), so an ordinary cold start never pays for it.
"""

from __future__ import annotations

import gc
import importlib
import os
import random
import sys

from shared import db, ids

# Imported by requests on first use; in a snapshot they are paid for once, at publish time:
# the usage recorder's repository (with its table) in every function,
USAGE_RECORDER = "shared.repositories.api_usage"
# and the switch in a function that loads `shared.auth`, when it provisions its first caller
# (flags loads it to identify callers and never provisions: its snapshot carries the switch
# unused).
PROVISIONING = "shared.storage"


def warm() -> None:
    importlib.import_module(USAGE_RECORDER)
    if "shared.auth" in sys.modules:
        importlib.import_module(PROVISIONING)
    from sqlalchemy.orm import configure_mappers

    configure_mappers()
    db.compile_hot_statements()  # those of the repositories the function imported
    db.connect_ahead()  # builds the engine, reads the settings; its dialect learns the server
    gc.collect()  # INIT's garbage, paid at publish time; `make_lambda_handler` freezes the rest


def before_snapshot() -> None:
    db.close_connections()
    redis = sys.modules.get("shared.redis")  # not imported here: a function without Redis
    if redis is not None:  # would pay for its SDK, and has no client to close
        redis.reset_redis(close=True)


def after_restore() -> None:
    ids.reseed()
    random.seed()  # from the OS's randomness


def register() -> None:
    """Register the hooks with the Lambda runtime, and warm when this INIT is a snapshot's."""
    try:
        from snapshot_restore_py import (  # type: ignore[import-not-found]
            register_after_restore,
            register_before_snapshot,
        )
    except ImportError:  # not on Lambda's managed runtime: nothing will snapshot us
        return
    register_before_snapshot(before_snapshot)
    register_after_restore(after_restore)
    if os.environ.get("AWS_LAMBDA_INITIALIZATION_TYPE") == "snap-start":
        warm()
