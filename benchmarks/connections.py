"""4. Connections: K warm containers, one connection each, through PgBouncer in transaction mode.

K processes (`benchmarks.container`), each with its own engine (`DB_POOL_SIZE=1`, as on Lambda),
connect through PgBouncer, wait for a common start, then issue the core's calls back to back.
Meanwhile the orchestrator samples PostgreSQL's `pg_stat_activity` (server connections in the
run's database) and PgBouncer's `SHOW POOLS` (clients active/waiting, servers, max wait) every
100 ms. Without a pooler each container would hold a server connection of its own: K of them.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
from typing import Any

from benchmarks.core import ROOT, Context, target
from benchmarks.stats import summary


def run(ctx: Context) -> dict[str, Any]:
    stack = ctx.stack
    containers, seconds = ctx.pick(50, 4), ctx.pick(10.0, 1.5)
    if stack.pgbouncer is None:
        return {
            "containers": containers,
            "targets": [
                target(
                    f"{containers} containers through PgBouncer: zero errors",
                    None,
                    "not measured",
                    reason=stack.pgbouncer_missing or "no PgBouncer",
                )
            ],
        }
    env = stack.app_env(pooled=True, DB_POOL_SIZE="1")
    ctx.log(f"  connections: starting {containers} containers")
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "benchmarks.container", f"user_bench_c{i:03d}", str(seconds)],
            env=env,
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(containers)
    ]
    startup_failures: list[str] = []
    sampler = Sampler(ctx)
    try:
        for process in processes:
            assert process.stdout is not None
            line = process.stdout.readline().strip()
            if line != "READY":
                startup_failures.append(
                    line or (process.stderr.read() if process.stderr else "")[-500:]
                )
        at_rest = sampler.sample()
        sampler.start()
        for process in processes:
            if process.poll() is None and process.stdin is not None:
                process.stdin.write("GO\n")
                process.stdin.flush()
        outputs = []
        for process in processes:
            stdout, stderr = process.communicate(timeout=seconds + 120)
            lines = [line for line in stdout.splitlines() if line.startswith("{")]
            if lines:
                outputs.append(json.loads(lines[-1]))
            else:
                startup_failures.append(f"exit {process.returncode}: {stderr[-500:]}")
    finally:
        sampler.stop()
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    errors: dict[str, int] = {}
    latencies: list[float] = []
    operations = 0
    for output in outputs:
        operations += output["operations"]
        latencies += output["latencies_ms"]
        for kind, count in output["errors"].items():
            errors[kind] = errors.get(kind, 0) + count
    error_count = sum(errors.values()) + len(startup_failures)
    peaks = sampler.peaks()
    verdict = target(
        f"{containers} containers through PgBouncer: zero errors",
        error_count == 0,
        f"{error_count} errors in {operations} operations; peak server connections "
        f"{peaks['server_connections']} for {containers} clients",
        detail="; ".join(list(errors)[:3] + startup_failures[:2]),
    )
    return {
        "containers": containers,
        "duration_s": seconds,
        "operations": operations,
        "operations_per_s": round(operations / seconds, 1),
        "errors": errors,
        "startup_failures": startup_failures,
        "operation_ms": summary(latencies),
        "at_rest": at_rest,
        "peaks": peaks,
        "pgbouncer_pool_size": 20,
        "without_pooler_would_need": containers,
        "targets": [verdict],
    }


class Sampler:
    """Polls pg_stat_activity and SHOW POOLS on a thread; keeps the peaks."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.samples: list[dict[str, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):  # a sample lost under load is not a result
                self.samples.append(self.sample())
            self._stop.wait(0.1)

    def sample(self) -> dict[str, int]:
        stack = self.ctx.stack
        with stack.connect() as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
                "AND backend_type = 'client backend' AND pid <> pg_backend_pid()",
                (stack.database,),
            ).fetchone()
        server = int(row[0]) if row else 0
        pools = stack.pgbouncer.admin("SHOW POOLS") if stack.pgbouncer else []
        pool = next((p for p in pools if p.get("database") == stack.database), {})
        return {
            "server_connections": server,
            "cl_active": int(pool.get("cl_active", 0)),
            "cl_waiting": int(pool.get("cl_waiting", 0)),
            "sv_active": int(pool.get("sv_active", 0)),
            "sv_idle": int(pool.get("sv_idle", 0)),
            "maxwait_ms": int(pool.get("maxwait", 0)) * 1000
            + int(pool.get("maxwait_us", 0)) // 1000,
        }

    def peaks(self) -> dict[str, int]:
        keys = ("server_connections", "cl_active", "cl_waiting", "sv_active", "maxwait_ms")
        return {key: max((sample[key] for sample in self.samples), default=0) for key in keys} | {
            "samples": len(self.samples)
        }
