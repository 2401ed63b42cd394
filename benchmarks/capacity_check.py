"""12. Capacity: the model's inputs measured, then its predictions checked at rates run here.

1. Profile (`benchmarks.capacity_worker profile`): each route of `MIX`, N warm requests in one
   container alone on PgBouncer (transaction mode, `DB_POOL_SIZE=1`), back to back and then
   paced (`PACED_GAP_S` apart). Per request: statements and transactions (PgBouncer `SHOW STATS`
   deltas), server-held time (its `total_xact_time`), Upstash commands, handler wall and CPU
   time, rows per table. Bytes per row per table from the table sizes (`pg_total_relation_size`
   over every partition) while the mix is replayed until each table it writes has grown by
   `CALIBRATION_BYTES`. The model takes the paced pass's times.
2. Load: K containers (processes, one pooled connection each) replay the mix at a fixed pace
   from a common start for a fixed time, at each rate: 25 and 50 req/s, and a top step at half
   of what the profile says the machine's cores carry. Meanwhile `SHOW POOLS` is sampled every
   100 ms; `SHOW STATS` and the tables are read at the window's edges.
3. Model vs measured: `benchmarks.capacity.predict` for the mix the containers actually sent, at
   the rate they achieved, against what the pooler, PostgreSQL and the containers counted. At
   every step, counts (statements, transactions, rows, Upstash commands) are checked within
   10 %: they do not depend on timing; bytes within 25 % (pages are 8 kB). Little's law (the
   model's transactions/s times the run's own time per transaction, against the servers the
   pool's samples saw busy) within 50 %, from half a server up. The time figures from the
   profile's times (servers and containers busy) are printed, not checked: how much longer a
   request takes under load than in the profile depends on what shares the machine (2 cores,
   other work), and the report prints that factor.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import capacity
from benchmarks.capacity import RouteCost, TableCost
from benchmarks.capacity_worker import TABLES, pooler_stats, tables_now
from benchmarks.connections import Sampler
from benchmarks.core import ROOT, Context, WorkerError, run_worker, target
from benchmarks.worker import RESULT_MARK

# A realistic mix (share of requests per route): searches mostly answered from the cache, reads
# of one's own data, few writes. Only routes a container can repeat without preparation.
MIX: dict[str, int] = {
    "POST /api/keywords (cache hit)": 6,
    "POST /api/keywords (cache miss)": 1,
    "GET /api/searches": 3,
    "GET /api/searches/{search_id}": 2,
    "PUT /api/searches/{search_id}": 1,
    "GET /api/history": 2,
    "GET /api/me": 2,
    "GET /api/flags": 2,
    "GET /api/health (database check cached)": 1,
}
TOLERANCE = {"count": 0.10, "bytes": 0.25, "time": 0.50}
# Little's law checked on the run's own times (the servers busy it implies against the pool's
# samples) only from half a server up: below it a 100 ms sample mostly sees none, and the mean
# is noise. The profile's times are reported against the run's, not checked (see `compare`).
MIN_TIME_UNITS = 0.5
# The top step: the rate at which the profile's CPU and server time per request keep this share
# of the machine's cores busy (near what it carries, short of saturating it).
HIGH_LOAD = 0.5
# Containers per step: enough for this many times the profile's handler time per request, so a
# container keeps its pace when requests take longer under load than in the profile.
CONTAINER_HEADROOM = 6
WORKER = "benchmarks.capacity_worker"
# Growth below this many bytes is a few 8 kB pages per relation: not compared (quick runs).
MIN_BYTES = 32 * 8192
# The profile measures bytes per row over this much growth of each table the mix writes (the
# mix replayed until then): a page more or less per relation is then a few per cent.
CALIBRATION_BYTES = 64 * 8192
# The profile also times each route paced, a request every PACED_GAP_S as a load container
# sends them at 50 req/s (5 containers), to show what pacing alone changes.
PACED_GAP_S = 0.1
SATURATED = 0.9  # a step achieving less than this share of its rate is reported saturated
START_LEAD_S = 0.2  # from GO to the containers' common start: every GO line is read by then


def sequence() -> list[str]:
    """The mix as a repeating sequence of 20 requests, routes interleaved (not in runs)."""
    left = dict(MIX)
    out: list[str] = []
    while any(left.values()):
        for name in MIX:
            if left[name]:
                out.append(name)
                left[name] -= 1
    return out


def run(ctx: Context) -> dict[str, Any]:
    stack = ctx.stack
    if stack.pgbouncer is None:
        reason = stack.pgbouncer_missing or "no PgBouncer"
        return {
            "targets": [target("capacity model vs measured", None, "not measured", reason=reason)]
        }
    env = stack.app_env(pooled=True, DB_POOL_SIZE="1", RATE_LIMIT_REQUESTS_PER_HOUR="1000000000")
    admin = stack.pgbouncer.dsn("pgbouncer")
    n = ctx.pick(60, 8)
    ctx.log(f"  capacity: profiling {len(MIX)} routes, {n} warm requests each, through PgBouncer")
    profile = run_worker(
        "profile",
        {
            "private_pem": stack.private_pem,
            "fixtures": ctx.fixtures,
            "routes": list(MIX),
            "n": n,
            "warmup": 2,
            "gap_s": PACED_GAP_S,
            "calibrate": {
                "sequence": sequence(),
                "min_bytes": ctx.pick(CALIBRATION_BYTES, MIN_BYTES // 4),
                "max_requests": ctx.pick(8000, 200),
            },
            "admin_dsn": admin,
            "database": stack.database,
            "direct_url": stack.direct_url,
        },
        env,
        module=WORKER,
    )
    routes, tables = inputs(profile)
    fixed = {"system_metrics": profile["metrics_cron_rows"] * capacity.DAY_S / 300}
    pool_size = int(
        next(r for r in stack.pgbouncer.admin("SHOW CONFIG") if r["key"] == "default_pool_size")[
            "value"
        ]
    )
    seconds = ctx.pick(20.0, 4.0)
    rates = ctx.pick((25.0, 50.0, high_rate(MIX, routes, os.cpu_count() or 1)), (16.0,))
    runs = []
    for rate in rates:
        containers = ctx.pick(containers_for(rate, MIX, routes), 2)
        ctx.log(f"  capacity: {containers} containers, {rate:g} requests/s for {seconds:g} s")
        runs.append(_load(ctx, env, admin, rate, containers, seconds, routes, tables, pool_size))
    verdicts = [_verdict(r) for r in runs]
    return {
        "mix": MIX,
        "profile": profile,
        "inputs": {
            "routes": {
                name: vars(cost) | {"rows": dict(cost.rows)} for name, cost in routes.items()
            },
            "tables": {name: vars(cost) for name, cost in tables.items()},
            "system_metrics_rows_per_day": fixed["system_metrics"],
        },
        "pgbouncer_pool_size": pool_size,
        "tolerance": TOLERANCE,
        "runs": runs,
        "targets": verdicts,
    }


def _verdict(run: dict[str, Any]) -> dict[str, Any]:
    checked = [row for row in run["comparison"] if row["checked"]]
    return target(
        f"model vs measured at {run['rate_achieved']} req/s: every checked figure within tolerance",
        all(row["within"] for row in checked),
        f"{sum(row['within'] for row in checked)}/{len(checked)} within "
        f"({len(run['comparison']) - len(checked)} not checked: the profile's times, or under "
        f"{MIN_TIME_UNITS:g} unit); "
        f"largest error {max(abs(row['error']) for row in checked):.0%}",
        detail=", ".join(row["figure"] for row in checked if not row["within"]),
    )


def high_rate(mix: dict[str, int], routes: dict[str, RouteCost], cores: int) -> float:
    """The top step's rate: `cores` times HIGH_LOAD over the profile's CPU plus server seconds per
    request of the mix, to the nearest 10 req/s."""
    total = sum(mix.values())
    per_request_ms = sum(
        share * (routes[name].cpu_ms + routes[name].server_ms) for name, share in mix.items()
    )
    return float(round(cores * HIGH_LOAD * 1000 * total / per_request_ms, -1))


def containers_for(rate: float, mix: dict[str, int], routes: dict[str, RouteCost]) -> int:
    """Containers for a step: CONTAINER_HEADROOM times the model's containers busy, at least 5."""
    handler_s = sum(share * routes[name].handler_ms for name, share in mix.items()) / 1000
    return max(5, math.ceil(CONTAINER_HEADROOM * rate * handler_s / sum(mix.values())))


def inputs(profile: dict[str, Any]) -> tuple[dict[str, RouteCost], dict[str, TableCost]]:
    """The model's inputs from a profile: a RouteCost per route, bytes per row per table. The
    times are the paced pass's where there is one: a container idle between requests, as a
    load container (and a Lambda container) is, takes longer per request than back to back."""
    routes = {
        name: RouteCost(
            statements=row["statements"],
            transactions=row["transactions"],
            server_ms=row.get("paced", row)["server_ms"],
            handler_ms=row.get("paced", row)["handler_ms"],
            cpu_ms=row.get("paced", row)["cpu_ms"],
            redis_commands=row["redis_commands"],
            rows=row["rows"],
        )
        for name, row in profile["routes"].items()
    }
    tables = {}
    calibration = profile["calibration"]
    for table in TABLES:
        rows, grown = calibration["rows"][table], calibration["bytes"][table]
        if rows <= 0 or grown <= 0:  # the mix does not write it: the whole table's average
            now = profile["tables"][table]
            rows, grown = now["rows"], now["bytes"]
        per_row = grown / rows if rows else 0.0
        tables[table] = TableCost(per_row, capacity.RETENTION_DAYS[table])
    return routes, tables


def _load(
    ctx: Context,
    env: dict[str, str],
    admin: str,
    rate: float,
    containers: int,
    seconds: float,
    routes: dict[str, RouteCost],
    tables: dict[str, TableCost],
    pool_size: int,
) -> dict[str, Any]:
    stack = ctx.stack
    order = sequence()
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", WORKER, "load"],
            env=env,
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(containers)
    ]
    sampler = Sampler(ctx)
    edges: dict[str, Any] = {}
    try:
        for i, process in enumerate(processes):
            params = {
                "private_pem": stack.private_pem,
                "fixtures": ctx.fixtures,
                "sequence": order,
                "offset": i * len(order) // containers,
                "rate": rate / containers,
                "seconds": seconds,
            }
            assert process.stdin is not None and process.stdout is not None
            process.stdin.write(json.dumps(params) + "\n")
            process.stdin.flush()
        for process in processes:  # every container warm before the start edge is read
            assert process.stdout is not None
            line = process.stdout.readline().strip()
            if line != "READY":
                raise WorkerError(f"a load container did not start: {line or _stderr(process)}")
        edges["start_at"] = time.time()
        edges["load_average"] = [os.getloadavg()[0]]
        edges["start"] = (pooler_stats(admin, stack.database), tables_now(stack.direct_url))
        start_at = time.time() + START_LEAD_S
        for process in processes:
            assert process.stdin is not None
            process.stdin.write(f"GO {start_at}\n")
            process.stdin.flush()
        sampler.start()
        time.sleep(max(0.0, start_at + seconds - time.time()))
        edges["end_stats"] = pooler_stats(admin, stack.database)
        edges["end_at"] = time.time()
        edges["load_average"].append(os.getloadavg()[0])
        sampler.stop()
        outputs = [_result(process, seconds) for process in processes]
    finally:
        sampler.stop()
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    edges["end_tables"] = tables_now(stack.direct_url)
    edges["final_stats"] = pooler_stats(admin, stack.database)
    return compare(outputs, edges, sampler.samples, rate, seconds, routes, tables, pool_size)


def compare(
    outputs: list[dict[str, Any]],
    edges: dict[str, Any],
    samples: list[dict[str, int]],
    rate: float,
    seconds: float,
    routes: dict[str, RouteCost],
    tables: dict[str, TableCost],
    pool_size: int,
) -> dict[str, Any]:
    """Model vs measured for one load run: the mix sent, at the rate achieved."""
    counts: dict[str, int] = {}
    for output in outputs:
        for name, count in output["counts"].items():
            counts[name] = counts.get(name, 0) + count
    requests = sum(counts.values())
    achieved = requests / seconds
    model = capacity.predict(counts, achieved, routes, tables)  # no cron runs in the window
    start_stats, start_tables = edges["start"]
    final = edges["final_stats"]
    window = {k: edges["end_stats"][k] - start_stats[k] for k in start_stats}
    total = {k: final[k] - start_stats[k] for k in start_stats}
    measured_rows = {t: edges["end_tables"][t]["rows"] - start_tables[t]["rows"] for t in TABLES}
    measured_bytes = {t: edges["end_tables"][t]["bytes"] - start_tables[t]["bytes"] for t in TABLES}
    sv_active = [s["sv_active"] for s in samples]
    rows: list[dict[str, Any]] = []
    unresolved: list[str] = []

    def add(figure: str, predicted: float, measured: float, kind: str, check: bool = True) -> None:
        error = (predicted - measured) / measured if measured else (0.0 if not predicted else 1.0)
        rows.append(
            {
                "figure": figure,
                "model": round(predicted, 2),
                "measured": round(measured, 2),
                "error": round(error, 3),
                "tolerance": TOLERANCE[kind],
                "within": abs(error) <= TOLERANCE[kind],
                "checked": check and (kind != "time" or measured >= MIN_TIME_UNITS),
                "reported": not check,
            }
        )

    # Counts over the whole run (window plus the last rows flushed after it), as the model
    # counts every request sent.
    add("statements (total)", model.statements_per_s * seconds, total["total_query_count"], "count")
    add(
        "transactions (total)",
        model.transactions_per_s * seconds,
        total["total_xact_count"],
        "count",
    )
    add(
        "Upstash commands (total)",
        model.redis_commands_per_s * seconds,
        sum(o["redis_commands"] for o in outputs),
        "count",
    )
    for table, growth in model.tables.items():
        if growth.rows_per_day or measured_rows[table]:
            add(
                f"{table} rows",
                growth.rows_per_day / capacity.DAY_S * seconds,
                measured_rows[table],
                "count",
            )
            predicted_bytes = growth.bytes_per_day / capacity.DAY_S * seconds
            if max(predicted_bytes, measured_bytes[table]) >= MIN_BYTES:
                add(f"{table} bytes", predicted_bytes, measured_bytes[table], "bytes")
            else:
                unresolved.append(f"{table} bytes")
    elapsed = edges["end_at"] - edges["start_at"]
    busy = window["total_xact_time"] / 1e6 / elapsed
    # The profile's times against the run's: reported, not checked. Under load each request
    # takes longer than in the profile (`handler_time_vs_profile`, `server_time_vs_profile`),
    # by how much depends on what else shares the machine, not on the model.
    add(
        "server connections busy (mean, Little, profile's time)",
        model.server_connections_busy,
        busy,
        "time",
        check=False,
    )
    if sv_active and window["total_xact_count"]:
        # Little's law itself, on the run's own times: the model's transactions/s times the
        # window's time per transaction, against the pool's sampled busy servers.
        per_xact_s = window["total_xact_time"] / 1e6 / window["total_xact_count"]
        add(
            "server connections busy: model xact/s x window's xact time vs SHOW POOLS",
            model.transactions_per_s * per_xact_s,
            sum(sv_active) / len(sv_active),
            "time",
        )
    add(
        "containers busy (mean, Little, profile's time)",
        model.containers_busy,
        sum(o["handler_s"] for o in outputs) / seconds,
        "time",
        check=False,
    )
    server_s = capacity.server_seconds_per_request(counts, routes)
    profiled_ms = sum(routes[name].handler_ms * n for name, n in counts.items()) / requests
    return {
        # 1-minute load average at the window's edges: the machine is shared (2 cores).
        "load_average": [round(x, 2) for x in edges["load_average"]],
        # Handler time under this load over the profile's (alone): what slows the time figures.
        "handler_time_vs_profile": round(
            sum(o["handler_s"] for o in outputs) * 1000 / requests / profiled_ms, 2
        ),
        # The same for the server-held time per request (the pooler's, over the whole run).
        "server_time_vs_profile": round(
            total["total_xact_time"] / 1e3 / requests / (server_s * 1e3), 2
        )
        if server_s
        else None,
        "rate_target": rate,
        "rate_achieved": round(achieved, 1),
        "requests": requests,
        "counts": counts,
        "containers": len(outputs),
        "statuses": _merged(o["statuses"] for o in outputs),
        "max_behind_schedule_ms": max(o["max_behind_ms"] for o in outputs),
        "handler_ms_p50": [o["handler_ms"]["median"] for o in outputs],
        "pooler": {
            "sv_active_mean": round(sum(sv_active) / len(sv_active), 2) if sv_active else None,
            "sv_active_max": max(sv_active, default=0),
            "cl_waiting_max": max((s["cl_waiting"] for s in samples), default=0),
            "maxwait_ms_max": max((s["maxwait_ms"] for s in samples), default=0),
            "samples": len(samples),
        },
        "predicted_knee_req_per_s": round(capacity.predicted_knee(pool_size, server_s), 0),
        "comparison": rows,
        "too_small_to_compare": unresolved,
    }


def _result(process: subprocess.Popen[str], seconds: float) -> dict[str, Any]:
    """A load container's JSON result (after `@@RESULT `), or WorkerError with its stderr."""
    stdout, stderr = process.communicate(timeout=seconds + 120)
    for line in reversed(stdout.splitlines()):
        if line.startswith(RESULT_MARK):
            result: dict[str, Any] = json.loads(line[len(RESULT_MARK) :])
            if "error" in result:
                raise WorkerError(f"load container failed: {result['error']}\n{stderr[-1500:]}")
            return result
    raise WorkerError(f"load container exited {process.returncode}: {stderr[-1500:]}")


def _stderr(process: subprocess.Popen[str]) -> str:
    process.kill()
    return process.communicate()[1][-1500:]


def _merged(dicts: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = out.get(k, 0) + v
    return out


def render(data: dict[str, Any]) -> str:
    """The section's Markdown: measured inputs per route, then model vs measured per run."""
    from benchmarks.report import table

    inputs = data["inputs"]
    parts = [
        "Measured inputs (one warm container alone on PgBouncer, per request):",
        "",
        table(
            [
                "route",
                "share",
                "statements",
                "transactions",
                "server ms",
                "handler ms",
                "CPU ms",
                "Upstash cmds",
                "api_usage rows",
                "search_history rows",
            ],
            [
                [
                    name,
                    data["mix"].get(name, ""),
                    round(c["statements"], 2),
                    round(c["transactions"], 2),
                    round(c["server_ms"], 2),
                    round(c["handler_ms"], 1),
                    round(c["cpu_ms"], 1),
                    round(c["redis_commands"], 2),
                    round(c["rows"].get("api_usage", 0), 2),
                    round(c["rows"].get("search_history", 0), 2),
                ]
                for name, c in inputs["routes"].items()
            ],
        ),
        "",
        "Bytes per row: "
        + ", ".join(f"{t} {round(c['bytes_per_row'])}" for t, c in inputs["tables"].items())
        + "; system_metrics rows per day (metrics cron): "
        + f"{round(inputs['system_metrics_rows_per_day'])}.",
    ]
    for run in data["runs"]:
        pooler = run["pooler"]
        parts += [
            "",
            f"Load: {run['containers']} containers, target {run['rate_target']:g} req/s, achieved "
            f"{run['rate_achieved']} req/s{_saturated(run)} ({run['requests']} requests, statuses "
            f"{run['statuses']}); load average {run['load_average']} on this shared machine, "
            f"handler time {run['handler_time_vs_profile']}x the profile's, server time "
            f"{run.get('server_time_vs_profile')}x; "
            f"pooler sv_active mean {pooler['sv_active_mean']} "
            f"(max {pooler['sv_active_max']}), cl_waiting max {pooler['cl_waiting_max']}; "
            f"predicted knee at pool size {data['pgbouncer_pool_size']}: "
            f"{run['predicted_knee_req_per_s']:g} req/s.",
            "",
            table(
                ["figure", "model", "measured", "error", "tolerance", ""],
                [
                    [
                        row["figure"],
                        row["model"],
                        row["measured"],
                        f"{row['error']:+.1%}",
                        f"±{row['tolerance']:.0%}",
                        _mark(row),
                    ]
                    for row in run["comparison"]
                ],
            ),
        ]
    return "\n".join(parts)


def _saturated(run: dict[str, Any]) -> str:
    """A step the containers could not keep up with: past what the machine carries then."""
    if run["rate_achieved"] >= SATURATED * run["rate_target"]:
        return ""
    return " (saturated: the containers fell behind their pace)"


def _mark(row: dict[str, Any]) -> str:
    if row.get("reported"):
        return "reported"
    if not row.get("checked", True):
        return f"not checked (under {MIN_TIME_UNITS:g} unit)"
    return "ok" if row["within"] else "**outside**"


def project(result_path: str, rate: float, platform: capacity.Platform) -> str:
    """The model at `rate` from a benchmark run's measured inputs (its JSON report), as Markdown."""
    data = json.loads(Path(result_path).read_text())["sections"]["capacity"]
    routes = {name: RouteCost(**cost) for name, cost in data["inputs"]["routes"].items()}
    tables = {name: TableCost(**cost) for name, cost in data["inputs"]["tables"].items()}
    fixed = {"system_metrics": data["inputs"]["system_metrics_rows_per_day"]}
    c = capacity.predict(
        data["mix"], rate, routes, tables, fixed_rows_per_day=fixed, platform=platform
    )
    from benchmarks.report import table

    rows: list[list[Any]] = [
        ["Postgres statements/s", f"{c.statements_per_s:,.0f}"],
        ["Postgres transactions/s", f"{c.transactions_per_s:,.0f}"],
        ["server connections busy (mean)", f"{c.server_connections_busy:.1f}"],
        [f"server connections needed (at {capacity.UTILISATION:.0%})", c.server_connections_needed],
        ["containers busy = client connections (mean)", f"{c.containers_busy:.1f}"],
        [f"containers needed (at {capacity.UTILISATION:.0%})", c.containers_needed],
        ["Neon compute (CPU)", f"{c.neon_cu:g} CU"],
        ["Neon compute (pool holds the connections)", f"{c.neon_cu_for_connections:g} CU"],
        ["Upstash commands/s", f"{c.redis_commands_per_s:,.0f}"],
        ["Upstash commands/month", f"{c.redis_commands_per_month:,.0f}"],
        ["Lambda GB-s/month", f"{c.lambda_gb_seconds_per_month:,.0f}"],
        ["Vercel Active CPU h/month", f"{c.vercel_cpu_hours_per_month:,.0f}"],
        ["Vercel provisioned GB-h/month", f"{c.vercel_memory_gb_hours_per_month:,.0f}"],
    ]
    for name, growth in c.tables.items():
        rows.append(
            [
                f"{name}: rows/day, GB/day; at retention rows, GB",
                f"{growth.rows_per_day:,.0f}, {growth.bytes_per_day / 1e9:,.1f}; "
                f"{growth.rows_at_retention:,.0f}, {growth.bytes_at_retention / 1e9:,.0f}",
            ]
        )
    rows += [[f"$/month {k}", f"{v:,.0f}"] for k, v in c.monthly_cost.items()]
    rows += [
        ["$/month on AWS (Lambda + API Gateway + Neon + Upstash)", f"{capacity.aws_total(c):,.0f}"],
        ["$/month on Vercel (Fluid + Neon + Upstash)", f"{capacity.vercel_total(c):,.0f}"],
    ]
    return table(["at " + f"{rate:g} requests/s", "model"], rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.capacity_check",
        description="Project a capacity run's measured inputs to another rate.",
    )
    parser.add_argument("result", help="a report's JSON (benchmarks/results/<run id>.json)")
    parser.add_argument("--rate", type=float, default=1000.0, help="requests/s (default 1000)")
    parser.add_argument(
        "--extra-ms", type=float, default=0.0, help="production wait per request beyond loopback"
    )
    parser.add_argument("--memory-gb", type=float, default=0.5, help="function memory")
    args = parser.parse_args(argv)
    platform = capacity.Platform(memory_gb=args.memory_gb, extra_ms_per_request=args.extra_ms)
    print(project(args.result, args.rate, platform))
    return 0


if __name__ == "__main__":
    sys.exit(main())
