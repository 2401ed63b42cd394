"""One simulated warm container for the connections benchmark (section 4).

`python -m benchmarks.container USER_ID SECONDS` with the function environment (pooled
DATABASE_URL, DB_POOL_SIZE=1): builds the container's engine through the core, connects, prints
`READY`, waits for `GO` on stdin, then runs the core's calls back to back for SECONDS —
autocommit statements (`run`) and transactions (`transaction`) as the functions issue them —
and prints one JSON line: operations, errors by kind, latency summary.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from sqlalchemy import func, select, text

from shared import db
from shared.db import Conn
from shared.models.saved_searches import SavedSearch
from shared.models.users import User
from shared.repositories import saved_searches, users


def _locked_count(conn: Conn, user_id: str) -> int:
    conn.session.execute(select(User.id).where(User.id == user_id).with_for_update())
    count = conn.session.execute(
        select(func.count()).select_from(SavedSearch).where(SavedSearch.user_id == user_id)
    ).scalar_one()
    return int(count)


def main(argv: list[str]) -> int:
    user_id, seconds = argv[0], float(argv[1])
    email = f"{user_id}@bench.test"
    db.run(lambda conn: users.get_or_create(conn, user_id, email), idempotent=True)
    print("READY", flush=True)
    if sys.stdin.readline().strip() != "GO":
        return 1
    operations: list[Any] = [
        lambda: db.run(lambda conn: users.get_or_create(conn, user_id, email), idempotent=True),
        lambda: db.run(lambda conn: saved_searches.list_for_user(conn, user_id), idempotent=True),
        lambda: db.transaction(lambda conn: _locked_count(conn, user_id)),
        lambda: db.run(lambda conn: conn.session.execute(text("SELECT pg_sleep(0.001)")).all()),
    ]
    errors: dict[str, int] = {}
    samples: list[float] = []
    done = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        operation = operations[done % len(operations)]
        started = time.perf_counter()
        try:
            operation()
        except Exception as error:
            kind = f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"
            errors[kind] = errors.get(kind, 0) + 1
        samples.append((time.perf_counter() - started) * 1000)
        done += 1
    db.dispose_engine()
    print(json.dumps({"operations": done, "errors": errors, "latencies_ms": samples}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
