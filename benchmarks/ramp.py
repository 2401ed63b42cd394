"""13. The load ramp: 10 → 50 → 200 → 500 containers through PgBouncer, to the knee.

A fleet of simulated warm containers (`benchmarks.ramp_worker`: asyncio tasks in one process,
each with its own connection, replaying the SQL each route of a realistic mix sends, captured
from the real handlers; its docstring says why replay) grows step by step through the run's
PgBouncer (transaction mode, loopback). Each container gets `RATE` requests/s. During each
step's measured window this process samples PgBouncer's `SHOW POOLS` every 250 ms and reads,
before and after, `SHOW STATS` (server-side busy time), the CPU time of the PostgreSQL process
tree, of PgBouncer and of the fleet's process from /proc, and the machine's busy CPU.

The knee is the last healthy step before a degradation that lasts to the end of the ramp (the
achieved rate falls behind the offered one, p95 jumps, clients queue in PgBouncer or errors
appear; each signal's own first step is reported too), and the first degraded step names what
limited it. The capacity model's inputs (pool size, DB-busy seconds and CPU per request of this
mix) are reported under `model_inputs`.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from typing import IO, Any

import psycopg
from psycopg.rows import dict_row

from benchmarks import procstat
from benchmarks.capacity import predicted_knee
from benchmarks.core import ROOT, Context, target

STEPS = (10, 50, 200, 500)
RATE = 5.0  # requests per second per container: a busy function's warm container
SAMPLE_S = 0.25
DRAIN_S = 10.0  # how long a step's end waits for the requests still in flight
METHOD = (
    "one process, one asyncio task and one psycopg AsyncConnection per container (500 "
    "interpreters would not fit two cores); each route of the mix ran once through its real "
    "handler with a statement recorder on, and the fleet replays exactly that SQL"
)
POOL_SETTINGS = (
    "pool_mode",
    "default_pool_size",
    "min_pool_size",
    "reserve_pool_size",
    "max_db_connections",
    "max_client_conn",
)
POOL_KEYS = ("cl_active", "cl_waiting", "sv_active", "sv_idle", "maxwait_ms")
STATS_KEYS = (
    "total_xact_count",
    "total_query_count",
    "total_xact_time",
    "total_query_time",
    "total_wait_time",
)


def run(ctx: Context) -> dict[str, Any]:
    stack = ctx.stack
    steps = [(n, *ctx.pick((3.0, 15.0), (1.0, 3.0))) for n in STEPS]
    if stack.pgbouncer is None:
        reason = stack.pgbouncer_missing or "no PgBouncer"
        return {"targets": [target("load ramp through PgBouncer", None, "not run", reason=reason)]}
    bouncer = stack.pgbouncer
    config = {row["key"]: row["value"] for row in bouncer.admin("SHOW CONFIG")}
    pool = {key: config.get(key) for key in POOL_SETTINGS}
    pool_size = int(config.get("default_pool_size", 0))
    postmaster = None if stack.external_database else _postmaster(stack.direct_url)
    ctx.log(f"  ramp: postmaster pid {postmaster}, pgbouncer pid {bouncer.pid}")
    log_path = stack.workdir / "ramp-worker.log"
    # The capture records the path of a user within their limits, whatever earlier sections
    # spent of the benchmark user's hourly rate limit and keyword quota; with the quotas as
    # they are, the ramp's users would also use up a trial's keywords within the run.
    unlimited = str(10**9)
    env = stack.app_env(
        pooled=True,
        RATE_LIMIT_REQUESTS_PER_HOUR=unlimited,
        TRIAL_KEYWORD_LIMIT=unlimited,
        PRO_MONTHLY_LIMIT=unlimited,
        ENTERPRISE_MONTHLY_LIMIT=unlimited,
    )
    params = {
        "private_pem": stack.private_pem,
        "fixtures": ctx.fixtures,
        "users": max(STEPS),
        "rate": RATE,
        "seed": 7,
    }
    ctx.log(f"  ramp: capturing the mix, {max(STEPS)} users")
    with log_path.open("w") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.ramp_worker"],
            env=env,
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
    assert worker.stdin is not None and worker.stdout is not None
    # The whole section is bounded: a worker that hangs (a connect, a lock) is killed, and the
    # wait for its next line ends with the error its log explains.
    budget = 120 + sum(warmup + measure + DRAIN_S for _, warmup, measure in steps)
    watchdog = threading.Timer(budget, worker.kill)
    watchdog.start()
    results: list[dict[str, Any]] = []
    try:
        _send(worker.stdin, json.dumps(params))
        ready = json.loads(_expect(worker, "READY", log_path))
        for containers, warmup_s, measure_s in steps:
            ctx.log(f"  ramp: {containers} containers, {RATE:g} req/s each, {measure_s:g} s")
            _send(worker.stdin, f"STEP {containers} {warmup_s} {measure_s} {DRAIN_S}")
            _expect(worker, "MEASURING", log_path)
            sampler = PoolSampler(bouncer.dsn("pgbouncer"), stack.database)
            before = _snapshot(bouncer, stack.database, postmaster, worker.pid)
            sampler.start()
            _expect(worker, "MEASURED", log_path)
            after = _snapshot(bouncer, stack.database, postmaster, worker.pid)
            sampler.stop()
            fleet = json.loads(_expect(worker, "RESULT", log_path))
            results.append(_step(fleet, before, after, sampler))
        _send(worker.stdin, "STOP")
        worker.wait(timeout=60)
    finally:
        watchdog.cancel()
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    routes = ready["routes"]
    knee = find_knee(results)
    degraded = next((s for s in results if s["containers"] == knee["first_degraded"]), None)
    limit = (
        limiting_resource(degraded, results[0], pool_size, os.cpu_count() or 1)
        if degraded
        else None
    )
    errors = sum(sum(s["errors"].values()) for s in results)
    inputs = model_inputs(results, routes, pool_size)
    return {
        "method": METHOD,
        "rate_per_container": RATE,
        "steps_s": {"warmup": steps[0][1], "measured": steps[0][2]},
        "pgbouncer": pool,
        "processes": {"postmaster": postmaster, "pgbouncer": bouncer.pid, "fleet": worker.pid},
        "mix": routes,
        "steps": results,
        "knee": knee,
        "limit": limit,
        "model_inputs": inputs,
        "model": model_said(inputs, knee),
        "targets": [
            target(
                "load ramp: the knee found within 500 containers",
                knee["first_degraded"] is not None,
                f"knee at {knee['knee_containers']} containers "
                f"({knee['knee_rps']} req/s); limit: {limit['resource'] if limit else 'none'}",
                detail=f"{errors} errors over the ramp",
            )
        ],
    }


# --- what the steps mean (pure) -------------------------------------------------------------


def degradation(step: dict[str, Any], first: dict[str, Any]) -> dict[str, str]:
    """Why `step` is past the knee, by signal (empty when healthy): `throughput` (the achieved
    rate under 90 % of the offered one), `latency` (p95 over three times the `first` step's and
    20 ms more), `queue` (clients waiting in PgBouncer on average), `errors`."""
    signals = {}
    if step["achieved_rps"] < 0.9 * step["offered_rps"]:
        signals["throughput"] = (
            f"achieved {step['achieved_rps']} of {step['offered_rps']} req/s offered"
        )
    p95, base = step["latency_ms"]["p95"], first["latency_ms"]["p95"]
    if p95 is not None and base is not None and p95 > max(3 * base, base + 20):
        signals["latency"] = f"p95 {p95} ms against {base} ms at the first step"
    waiting = step["pool"]["cl_waiting"]["mean"]
    if waiting >= 1:
        signals["queue"] = f"{waiting} clients waiting in PgBouncer on average"
    errors = sum(step["errors"].values())
    if errors:
        signals["errors"] = f"{errors} errors"
    return signals


def find_knee(steps: list[dict[str, Any]]) -> dict[str, Any]:
    """The knee: the last healthy step before the degradation that lasts to the end of the ramp.

    A degraded step followed by a healthy one is reported as a blip (on a shared machine a
    neighbour's burst can spoil a few seconds), not as the knee."""
    flags = [degradation(step, steps[0]) for step in steps] if steps else []
    lasting = len(flags)
    while lasting > 0 and flags[lasting - 1]:
        lasting -= 1
    blips = {steps[i]["containers"]: list(flags[i].values()) for i in range(lasting) if flags[i]}
    # Each signal on its own: on a shared machine the latency knee can come long before the
    # pooler queues or the rate stops rising.
    first_by_signal = {
        kind: next((s["containers"] for s, f in zip(steps, flags, strict=True) if kind in f), None)
        for kind in ("throughput", "latency", "queue", "errors")
    }
    healthy = steps[lasting - 1] if lasting > 0 else None
    if lasting == len(steps):
        return {
            "knee_containers": None,
            "knee_rps": None,
            "first_degraded": None,
            "signals": ["no step degraded for good: the knee is past the last step"],
            "blips": blips,
            "first_by_signal": first_by_signal,
            "best_rps": max((s["achieved_rps"] for s in steps), default=None),
        }
    return {
        "knee_containers": healthy["containers"] if healthy else None,
        "knee_rps": healthy["achieved_rps"] if healthy else None,
        "first_degraded": steps[lasting]["containers"],
        "signals": list(flags[lasting].values()),
        "blips": blips,
        "first_by_signal": first_by_signal,
    }


def limiting_resource(
    step: dict[str, Any], baseline: dict[str, Any], pool_size: int, cores: int
) -> dict[str, Any]:
    """What held the degraded `step` back, from its CPU shares and PgBouncer's pool.

    A pool that ran out is the limit only if each request held a server about as long as at the
    `baseline` (lightest) step; if that time grew, the servers were held longer because
    something was slow (CPU), and that is named as the cause."""
    cpu = step["cpu_cores"]
    ours = {
        "our client": cpu["client"],
        "PostgreSQL": cpu["postgres"],
        "PgBouncer": cpu["pgbouncer"],
    }
    known = {k: v for k, v in ours.items() if v is not None}
    machine = cpu["machine_busy"]
    pool = step["pool"]
    busy, base_busy = step["db_busy_ms_per_request"], baseline["db_busy_ms_per_request"]
    evidence = {
        **ours,
        "machine busy": machine,
        "other processes": round(machine - sum(known.values()), 2) if machine else None,
        "cores": cores,
        "db_busy_ms_per_request": busy,
        "baseline_db_busy_ms_per_request": base_busy,
        "server_executing_ms_per_request": step.get("server_executing_ms_per_request"),
        "idle_in_transaction_ms_per_request": step.get("idle_in_transaction_ms_per_request"),
        "sv_active_peak": pool["sv_active"]["peak"],
        "cl_waiting_mean": pool["cl_waiting"]["mean"],
    }
    exhausted = pool["cl_waiting"]["mean"] >= 1 and pool["sv_active"]["peak"] >= pool_size
    held_longer = bool(base_busy) and busy > 2 * base_busy
    if exhausted and not held_longer:
        return {
            "resource": f"the pooler's server pool ({pool_size} connections, all busy)",
            "evidence": evidence,
        }
    if (cpu["client"] or 0) >= 0.85:
        cause = "our client's CPU: the fleet's one event loop used a whole core"
    elif (cpu["pgbouncer"] or 0) >= 0.85:
        cause = "PgBouncer's CPU: its single thread used a whole core"
    elif machine is not None and machine >= 0.85 * cores:
        top = max(known, key=lambda k: known[k] or 0) if known else "unknown"
        cause = (
            f"the machine's CPU: {machine} of {cores} cores busy, "
            f"{round(sum(v or 0 for v in known.values()), 2)} of them ours (largest: {top})"
        )
    else:
        cause = "neither CPU nor the pool by these counters (look at locks and latency)"
    if exhausted:
        idle = step.get("idle_in_transaction_ms_per_request") or 0.0
        where = (
            f", {idle} ms of it idle in transaction waiting for the client"
            if idle >= 0.5 * busy
            else ""
        )
        cause = (
            f"{cause}; PgBouncer's {pool_size} server connections ran out as a consequence: "
            f"each request held one {busy} ms instead of {base_busy} ms{where}"
        )
    return {"resource": cause, "evidence": evidence}


def model_inputs(
    steps: list[dict[str, Any]], routes: list[dict[str, Any]], pool_size: int
) -> dict[str, Any]:
    """What the capacity model needs: the pool, and this mix's cost per request, measured at
    the lightest step (the least contended: the figure a bigger server would see)."""
    weight = sum(r["weight"] for r in routes) or 1
    first = steps[0] if steps else {}
    return {
        "pool_size": pool_size,
        "db_busy_s_per_request": round(first["db_busy_ms_per_request"] / 1000, 6)
        if first
        else None,
        "db_busy_ms_per_request_by_step": {
            s["containers"]: s["db_busy_ms_per_request"] for s in steps
        },
        "statements_per_request": round(
            sum(r["weight"] * r["statements"] for r in routes) / weight, 2
        ),
        "pgbouncer_queries_per_request": first.get("queries_per_request"),
        "pgbouncer_transactions_per_request": first.get("transactions_per_request"),
        # CPU per request as the slope between the first two steps: the processes' fixed
        # background cost (PostgreSQL's checkpointer, an idle event loop) drops out.
        "cpu_ms_per_request": marginal_cpu(steps[0], steps[1]) if len(steps) > 1 else None,
        "upstash_calls_per_request": round(
            sum(r["weight"] * r["redis_calls"] for r in routes) / weight, 2
        ),
        "measured_at": f"{first.get('containers')} containers, {first.get('achieved_rps')} req/s",
    }


def model_said(inputs: dict[str, Any], knee: dict[str, Any]) -> dict[str, Any]:
    """The capacity model's knee for the measured pool and cost per request, beside the ramp's."""
    busy = inputs.get("db_busy_s_per_request")
    if not busy:
        return {"predicted_knee_rps": None, "measured_knee_rps": knee.get("knee_rps")}
    predicted = predicted_knee(inputs["pool_size"], busy)
    return {
        "predicted_knee_rps": round(predicted),
        "measured_knee_rps": knee.get("knee_rps"),
        "formula": f"pool {inputs['pool_size']} / {busy * 1000:.2f} ms server-held per request",
    }


def marginal_cpu(low: dict[str, Any], high: dict[str, Any]) -> dict[str, float | None]:
    """CPU ms per extra request between two steps, per process (None where unknown)."""
    rate = high["achieved_rps"] - low["achieved_rps"]
    out: dict[str, float | None] = {}
    for key in ("client", "postgres", "pgbouncer"):
        a, b = low["cpu_seconds"][key], high["cpu_seconds"][key]
        if a is None or b is None or rate <= 0:
            out[key] = None
            continue
        cores = b / high["window_s"] - a / low["window_s"]
        out[key] = round(cores / rate * 1000, 3)
    return out


# --- a step's figures -----------------------------------------------------------------------


def _step(
    fleet: dict[str, Any], before: dict[str, Any], after: dict[str, Any], sampler: PoolSampler
) -> dict[str, Any]:
    wall = after["at"] - before["at"]
    delta = {k: after["stats"][k] - before["stats"][k] for k in STATS_KEYS}
    served = fleet["served"] or 1
    pool = sampler.summary()
    used = {
        key: procstat.seconds(after[key] - before[key])
        if before[key] is not None and after[key] is not None
        else None
        for key in ("client", "postgres", "pgbouncer")
    }
    machine = None
    if before["machine"] and after["machine"]:
        busy = after["machine"][0] - before["machine"][0]
        total = after["machine"][1] - before["machine"][1]
        machine = round((os.cpu_count() or 1) * busy / total, 2) if total else None
    return {
        **fleet,
        "window_s": round(wall, 2),
        "pool": pool,
        # PgBouncer 1.18 starts a transaction's clock at the client's first query, before a
        # server is assigned: its xact time includes the wait, so the wait is taken off.
        "db_busy_ms_per_request": round(
            (delta["total_xact_time"] - delta["total_wait_time"]) / 1000 / served, 3
        ),
        # Split: a query's clock also starts before the wait, so query time less the wait is
        # the server executing; transaction time less query time is a server held idle in a
        # transaction, waiting for the client's next statement.
        "server_executing_ms_per_request": round(
            (delta["total_query_time"] - delta["total_wait_time"]) / 1000 / served, 3
        ),
        "idle_in_transaction_ms_per_request": round(
            (delta["total_xact_time"] - delta["total_query_time"]) / 1000 / served, 3
        ),
        # Little's law on the sampled pool: servers busy on average x window / requests.
        "server_held_ms_per_request_sampled": round(
            pool["sv_active"]["mean"] * wall * 1000 / served, 3
        ),
        "queries_per_request": round(delta["total_query_count"] / served, 2),
        "transactions_per_request": round(delta["total_xact_count"] / served, 2),
        "pgbouncer_wait_ms_total": round(delta["total_wait_time"] / 1000, 1),
        "cpu_seconds": {key: None if s is None else round(s, 3) for key, s in used.items()},
        "cpu_cores": {
            **{key: None if s is None else round(s / wall, 2) for key, s in used.items()},
            "machine_busy": machine,
        },
        "cpu_ms_per_request": {
            key: None if s is None else round(s * 1000 / served, 3) for key, s in used.items()
        },
        "load_average": round(os.getloadavg()[0], 2),
    }


def _snapshot(bouncer: Any, database: str, postmaster: int | None, client: int) -> dict[str, Any]:
    stats = procstat.read_all()
    pgbouncer_pid = bouncer.pid
    rows = bouncer.admin("SHOW STATS")
    row = next((r for r in rows if r.get("database") == database), {})
    return {
        "at": time.monotonic(),
        "postgres": procstat.tree_ticks(stats, postmaster) if postmaster else None,
        "pgbouncer": procstat.tree_ticks(stats, pgbouncer_pid) if pgbouncer_pid else None,
        "client": procstat.tree_ticks(stats, client, with_reaped=False),
        "machine": procstat.read_machine(),
        "stats": {key: int(row.get(key, 0)) for key in STATS_KEYS},
    }


def _postmaster(url: str) -> int | None:
    """The local server's postmaster: the parent of our own backend."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
    return procstat.parent_of(int(row[0])) if row else None


class PoolSampler:
    """`SHOW POOLS` for one database every SAMPLE_S on a thread, over one admin connection."""

    def __init__(self, dsn: str, database: str) -> None:
        self.dsn = dsn
        self.database = database
        self.samples: list[dict[str, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        with psycopg.connect(
            self.dsn, autocommit=True, cursor_factory=psycopg.ClientCursor, row_factory=dict_row
        ) as conn:
            while not self._stop.is_set():
                rows = conn.execute("SHOW POOLS").fetchall()
                pool = next((p for p in rows if p.get("database") == self.database), None)
                if pool is not None:
                    self.samples.append(
                        {
                            "cl_active": int(pool["cl_active"]),
                            "cl_waiting": int(pool["cl_waiting"]),
                            "sv_active": int(pool["sv_active"]),
                            "sv_idle": int(pool["sv_idle"]),
                            "maxwait_ms": int(pool["maxwait"]) * 1000
                            + int(pool.get("maxwait_us", 0)) // 1000,
                        }
                    )
                self._stop.wait(SAMPLE_S)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"samples": len(self.samples)}
        for key in POOL_KEYS:
            values = [s[key] for s in self.samples]
            out[key] = {
                "peak": max(values, default=0),
                "mean": round(sum(values) / len(values), 1) if values else 0,
            }
        return out


# --- the worker's protocol --------------------------------------------------------------------


def _send(pipe: IO[str], line: str) -> None:
    pipe.write(line + "\n")
    pipe.flush()


def _expect(worker: subprocess.Popen[str], mark: str, log: Any) -> str:
    """The rest of the worker's next line starting with `mark` (other output is skipped)."""
    assert worker.stdout is not None
    for line in worker.stdout:
        if line.startswith(mark):
            return line[len(mark) :].strip()
    worker.wait(timeout=30)
    tail = ""
    with contextlib.suppress(OSError):
        tail = log.read_text(errors="replace")[-3000:]
    raise RuntimeError(f"ramp worker exited ({worker.returncode}) before {mark}:\n{tail}")
