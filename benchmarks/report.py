"""The run's report: a console table, `results/<UTC timestamp>.json` and a Markdown twin."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.stats import fmt

RESULTS = Path(__file__).resolve().parent / "results"
SECTION_TITLES = {
    "cold_start": "1. Cold start",
    "warm": "2. Warm invocation overhead",
    "roundtrips": "3. Database round trips per request",
    "connections": "4. Connections through PgBouncer",
    "throughput": "5. Throughput (keyword search over HTTP)",
    "scale": "6. Scale",
    "memory": "7. Memory",
    "migration": "8. Redis → Postgres backfill of a messy keyspace",
    "export": "9. Export memory",
    "core_ops": "10. Warm core per operation",
    "latency": "11. Latency like production (a delayed hop to each server)",
    "capacity": "12. Capacity model vs measured",
    "ramp": "13. Load ramp to the knee (containers through PgBouncer)",
    "replica": "14. Reads served by a replica",
    "indexes": "15. Indexes from evidence (every endpoint's SQL explained at production size)",
}


def machine() -> dict[str, Any]:
    """What the figures were measured on (the machine is shared: load is recorded too)."""
    free = subprocess.run(["free", "-h"], capture_output=True, text=True, check=False).stdout
    nproc = subprocess.run(["nproc"], capture_output=True, text=True, check=False).stdout.strip()
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_line = next((line for line in free.splitlines() if line.startswith("Mem:")), "")
    return {
        "nproc": nproc,
        "cpu": model or platform.processor(),
        "free_h": free.strip(),
        "memory_total": mem_line.split()[1] if mem_line else "",
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }


def all_targets(sections: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for name, data in sections.items():
        for verdict in data.get("targets", []) if isinstance(data, dict) else []:
            found.append({"section": name, **verdict})
    return found


def write(report: dict[str, Any], stamp: str, folder: Path = RESULTS) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    json_path, md_path = folder / f"{stamp}.json", folder / f"{stamp}.md"
    json_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    md_path.write_text(markdown(report))
    return json_path, md_path


# --- rendering -----------------------------------------------------------------------------------


def table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def targets_table(targets: list[dict[str, Any]]) -> str:
    rows = []
    for verdict in targets:
        status = {"pass": "PASS", "fail": "**FAIL**", "not_run": "not run"}[verdict["status"]]
        note = verdict.get("detail") or verdict.get("reason") or ""
        rows.append([status, verdict["target"], verdict["measured"], note])
    return table(["", "target", "measured", "notes"], rows)


def section_tables(name: str, data: dict[str, Any]) -> str:
    if "error" in data and len(data) <= 2:
        return f"Section failed: `{data['error'][:500]}`"
    render = RENDERERS.get(name)
    return render(data) if render else ""


def _cold(data: dict[str, Any]) -> str:
    rows = []
    for name, row in data["functions"].items():
        top = ", ".join(
            f"{t['package']} {t['cumulative_ms']:.0f}" for t in row.get("top_imports", [])[:5]
        )
        rows.append(
            [
                name,
                fmt(row.get("startup_ms")),
                fmt(row.get("import_ms")),
                fmt(row.get("first_response_ms")),
                fmt(row.get("cold_ms")),
                f"{row.get('import_vs_hello')}x" if row.get("import_vs_hello") is not None else "",
                fmt(row.get("total_ms")),
                fmt(row.get("restore_ms")),
                top or "",
            ]
        )
    out = table(
        [
            "function",
            "interpreter start",
            "import",
            "first response",
            "import + first response",
            "vs hello",
            "spawn → response (or first query)",
            "SnapStart: restore → first response",
            "top imports (cumulative ms)",
        ],
        rows,
    )
    if data.get("no_bytecode_cache"):
        extra = [
            [name, fmt(row["import_ms"]), fmt(row["total_ms"])]
            for name, row in data["no_bytecode_cache"].items()
        ]
        out += (
            "\n\nWithout bytecode (no `.pyc`, as the package shipped before it was compiled for "
            "the runtime; Lambda's read-only /var/task keeps nothing):\n\n"
        )
        out += table(["function", "import", "spawn → response"], extra)
    if data.get("crons"):
        out += "\n\nCron modules: " + ", ".join(
            f"`{c}` imports in {row.get('import_ms')} ms, web framework modules: "
            f"{row.get('web_framework') or 'none'}"
            for c, row in data["crons"].items()
        )
    return out


def _warm(data: dict[str, Any]) -> str:
    rows, layer_rows = [], []
    for name, row in data["scenarios"].items():
        if "error" in row:
            rows.append([name, "error", row["error"][:120], "", "", ""])
            continue
        work = ", ".join(row["statements"] + row["redis_calls"]) or "—"
        rows.append(
            [
                name,
                fmt(row["handler_ms"]),
                fmt(row["bare_ms"]),
                fmt(row["bare_sql_only_ms"]),
                f"{row['ratio_median']}x",
                work,
            ]
        )
        layers = row.get("overhead_layers_ms", {})
        layer_rows.append(
            [
                name,
                f"{row['overhead_median_ms']:.2f}",
                *(f"{value:.2f}" for value in layers.values()),
            ]
        )
    out = table(
        [
            "call",
            "handler",
            "bare (SQL + Upstash by hand)",
            "of which SQL",
            "ratio (medians)",
            "work per call",
        ],
        rows,
    )
    if layer_rows:
        first = next(r for r in data["scenarios"].values() if "overhead_layers_ms" in r)
        out += (
            "\n\nWhat the overhead (handler minus bare, medians in ms) is made of, measured in "
            "the same loop:\n\n"
        )
        out += table(["call", "overhead", *first["overhead_layers_ms"].keys()], layer_rows)
    return out


def _roundtrips(data: dict[str, Any]) -> str:
    rows = []
    for row in data["endpoints"]:
        if "error" in row:
            rows.append([row["name"], "error", "", "", "", "", row["error"][:100]])
            continue
        cold, warm = row.get("cold", {}), row.get("warm", {})
        rows.append(
            [
                row["name"],
                warm.get("status"),
                f"{warm.get('statements')} ({cold.get('statements')})",
                f"{warm.get('transactions')}",
                f"{warm.get('redis_calls')} ({cold.get('redis_calls')})",
                warm.get("usage_sent_after", 0),
                ", ".join(warm.get("sql", [])),
            ]
        )
    out = table(
        [
            "endpoint",
            "status",
            "statements warm (fresh container)",
            "transactions",
            "Upstash calls warm (fresh)",
            "usage rows sent after, not waited for",
            "statements (warm)",
        ],
        rows,
    )
    if data.get("generic_routes"):
        out += "\n\nRoutes without a written scenario (called generically): " + ", ".join(
            str(r.get("route") or r) for r in data["generic_routes"]
        )
    return out


def _connections(data: dict[str, Any]) -> str:
    if "peaks" not in data:
        return "Not run: " + "; ".join(t.get("reason", "") for t in data.get("targets", []))
    peaks = data["peaks"]
    rows = [
        [
            data["containers"],
            f"{data['duration_s']:g} s",
            data["operations"],
            data["operations_per_s"],
            fmt(data["operation_ms"]),
            sum(data["errors"].values()) + len(data["startup_failures"]),
            peaks["server_connections"],
            peaks["cl_waiting"],
            peaks["maxwait_ms"],
        ]
    ]
    return table(
        [
            "containers",
            "duration",
            "operations",
            "ops/s",
            "operation latency",
            "errors",
            "peak server connections",
            "peak clients waiting",
            "max wait (ms)",
        ],
        rows,
    )


def _throughput(data: dict[str, Any]) -> str:
    rows = []
    for name, run in data["runs"].items():
        if "error" in run:
            rows.append([name, "error", run["error"][:100], "", ""])
            continue
        others = {k: v for k, v in run["statuses"].items() if k != "200"}
        rows.append(
            [
                f"DB_POOL_SIZE={run['db_pool_size']}",
                run["searches_per_s"],
                fmt(run["latency_ms"]),
                run["requests"],
                others or "none",
            ]
        )
    return table(["server", "searches/s", "latency", "requests", "non-200"], rows)


def _scale(data: dict[str, Any]) -> str:
    rows = []
    for job in ("reset_monthly_usage", "prune", "prune_partitioned", "legacy_backfill"):
        row = data.get(job, {})
        if "error" in row:
            rows.append([job, "", "", "", "", "", "", row["error"][:100]])
            continue
        if "seconds" not in row:
            rows.append(
                [
                    job,
                    f"{row.get('records', 0):,}",
                    "",
                    "",
                    "",
                    "",
                    "",
                    f"{row.get('ran')}: {row.get('reason', '')}",
                ]
            )
            continue
        incomplete = "" if row.get("complete", True) else " (incomplete: budget ran out)"
        rows.append(
            [
                job,
                f"{row.get('rows', 0):,}",
                f"{row.get('rows_changed') or 0:,}",
                f"{row.get('seconds')} s{incomplete}",
                f"{row.get('rows_per_s') or 0:,}",
                f"{row.get('batches')} x {row.get('batch_size')}",
                f"{row.get('longest_batch_ms')} ms",
                row.get("ran", ""),
            ]
        )
    out = table(
        ["job", "rows", "rows changed", "time", "rows/s", "batches", "longest batch", "what ran"],
        rows,
    )
    legacy = data.get("legacy_backfill", {})
    out += (
        f"\n\nData generation (not part of the jobs): users {data.get('generate_users_s')} s, "
        f"history {data.get('generate_history_s')} s, legacy records "
        f"{legacy.get('generate_s', '—')} s."
    )
    hot = data.get("prune_partitioned", {}).get("hot_paths")
    if hot:
        kept = hot["partitions"]
        out += (
            f"\n\nHot statements on what retention keeps, plain table vs partitions (median of "
            f"{hot['calls']:,} interleaved calls; partitions kept, the DEFAULT one included: "
            f"{kept['quarterly']} by quarter, {kept['monthly']} by month). A usage insert "
            f"{hot['insert_plain']} ms vs {hot['insert_partitioned']} ms "
            f"(x{hot['insert_ratio']}). A user's newest 21, ms:\n\n"
        )
        rows = [
            [
                f"{kind}, {lane}",
                hot[f"list_plain_{kind}_{lane}"],
                *(
                    f"{hot[f'list_{label}_{kind}_{lane}']} "
                    f"(x{hot[f'list_{label}_{kind}_{lane}_ratio']})"
                    + (" the app" if hot["app_list"] == label else "")
                    for label in ("statement", "function", "monthly")
                ),
            ]
            for kind in ("active", "light")
            for lane in ("prepared", "unprepared")
        ]
        headers = [
            "account, lane",
            "plain",
            "by quarter, the statement",
            "by quarter, search_history_page",
            "by month, the statement",
        ]
        out += table(headers, rows)
        generic = ", ".join(
            f"{label} {plan['rows_read']:,}" for label, plan in hot["generic_plan_active"].items()
        )
        out += f"\n\nRows an active account's generic plan reads (EXPLAIN ANALYZE): {generic}."
        settled = hot["function_rows_read"]
        out += (
            "\n\nRows `search_history_page` reads per call once the server connection's plan "
            "cache has settled (ten calls first; per-transaction statistics): "
            + ", ".join(f"{kind} account {rows:,}" for kind, rows in settled.items())
            + "."
        )
    return out


def _memory(data: dict[str, Any]) -> str:
    rows = []
    for name, row in data["functions"].items():
        if "error" in row:
            rows.append([name, "error", "", "", "", "", row["error"][:100]])
            continue
        rows.append(
            [
                name,
                f"{row['rss_at_early_kb'] / 1024:.1f} MiB",
                f"{row['rss_end_kb'] / 1024:.1f} MiB",
                f"{row['growth_pct']}%",
                f"{row['peak_rss_kb'] / 1024:.1f} MiB",
                f"{row.get('response_bytes_early') or 0:,} → "
                f"{row.get('response_bytes_end') or 0:,}",
                ", ".join(f"{k} x{v}" for k, v in row["statuses"].items()),
            ]
        )
    early, n = data["early"], data["invocations"]
    header = [
        "function",
        f"RSS after {early}",
        f"RSS after {n}",
        "growth",
        "peak RSS",
        f"response bytes at {early} → {n}",
        "statuses",
    ]
    return table(header, rows)


def _migration(data: dict[str, Any]) -> str:
    if "outcomes" not in data:
        return f"Not run: {data.get('reason') or str(data.get('error', ''))[:500]}"
    rerun = data["rerun"]
    changed = ("inserted", "updated")
    rewritten = sum(rerun[t][c] for t in ("users", "saved_searches") for c in changed)
    run = table(
        ["records written", "read", "backfill s", "records/s", "batches", "longest batch ms",
         "peak RSS MB (at start)", "re-run s", "re-run rows written"],
        [[
            f"{data['records_written']:,}", f"{data['records_read']:,}", data["seconds"],
            f"{data['records_per_s']:,}", data["batches"], data["longest_batch_ms"],
            f"{data['peak_rss_mb']} ({data['baseline_rss_mb']})", rerun["seconds"], rewritten,
        ]],
    )  # fmt: skip
    outcomes = table(
        ["outcome", "counted", "generated"],
        [[name, f"{o['got']:,}", f"{o['expected']:,}"] for name, o in data["outcomes"].items()],
    )
    return f"{run}\n\n{outcomes}"


def _export(data: dict[str, Any]) -> str:
    return table(
        ["lane", "JSON bytes", "gzip bytes", "RSS before", "peak RSS", "seconds"],
        [
            [
                data.get("lane"),
                f"{data.get('bytes') or 0:,}",
                f"{data.get('gzip_bytes') or 0:,}",
                f"{data['rss_before_kb'] / 1024:.0f} MB",
                f"{data['peak_rss_kb'] / 1024:.0f} MB",
                data.get("seconds"),
            ]
        ],
    )


def _core_ops(data: dict[str, Any]) -> str:
    rows = [
        [
            name,
            fmt(row.get("core_ms")),
            fmt(row.get("bare_ms")),
            f"{row.get('ratio_median')}x",
            "PASS" if (row.get("ratio_median") or 99) <= 1.5 else "**FAIL**",
            len(row.get("statements", [])),
        ]
        for name, row in data.get("ops", {}).items()
    ]
    return table(
        ["operation", "core", "bare psycopg (same SQL)", "ratio", "<= 1.5x", "statements"], rows
    )


def _indexes(data: dict[str, Any]) -> str:
    sizes = ", ".join(f"{table} {rows:,}" for table, rows in data.get("sizes", {}).items())
    rows = [
        [
            row["endpoint"],
            row["statement"],
            row.get("ms", "-"),
            row.get("buffers", "-"),
            "; ".join(row.get("scans", [])) or row.get("error", ""),
            ", ".join(row.get("seq_scans", [])) or "-",
        ]
        for row in data.get("statements", [])
    ]
    unused = [
        [u["table"], u["index"], f"{u['bytes'] / 1e6:.1f} MB", "yes" if u["unique"] else "no"]
        for u in data.get("unused_indexes", [])
    ]
    footprint = [
        [name, f["heap_bytes_per_row"], f["index_bytes_per_row"]]
        for name, f in data.get("footprint", {}).items()
    ]
    return (
        f"Rows: {sizes}.\n\n"
        + table(["table", "heap bytes/row", "index bytes/row"], footprint)
        + "\n\n"
        + table(["first endpoint", "statement", "ms", "buffers", "scans", "large seq scan"], rows)
        + "\n\nIndexes no statement scanned:\n\n"
        + table(["table", "index", "size", "unique"], unused)
    )


def _latency(data: dict[str, Any]) -> str:
    hop = f"{data.get('hop_ms', 0):g}"
    rows = []
    for name, by_delay in data.get("endpoints", {}).items():
        base, far = by_delay.get("0", {}), by_delay.get(hop, {})
        rows.append(
            [
                name,
                base.get("handler_ms", base.get("error", "")[:60]),
                base.get("bare_ms"),
                far.get("handler_ms", far.get("error", "")[:60]),
                far.get("bare_ms"),
                by_delay.get("added_ms"),
                by_delay.get("round_trips_waited"),
            ]
        )
    endpoints = table(
        [
            "endpoint (warm, median ms)",
            "handler, 0 ms",
            "bare, 0 ms",
            f"handler, {hop} ms",
            f"bare, {hop} ms",
            "added",
            "round trips waited",
        ],
        rows,
    )
    fluid_rows = []
    for pool, levels in data.get("fluid", {}).items():
        if isinstance(levels, dict):
            fluid_rows.append([pool, "error", levels.get("error", "")[:80], "", "", ""])
            continue
        for level in levels:
            latency = level["latency_ms"]
            fluid_rows.append(
                [
                    pool,
                    level["concurrency"],
                    latency.get("median"),
                    latency.get("p95"),
                    level["requests_per_s"],
                    ", ".join(f"{k}: {v}" for k, v in sorted(level["statuses"].items())),
                ]
            )
    fluid = table(
        ["DB_POOL_SIZE", "in flight", "median ms", "p95 ms", "requests/s", "statuses"],
        fluid_rows,
    )
    first_rows = [
        [
            f"{delay} ms",
            fmt(by_way.get("core")) if "core" in by_way else by_way.get("error", "")[:120],
            fmt(by_way.get("stock")),
            fmt(by_way.get("restored")),
            fmt(by_way.get("restored_unconnected")),
        ]
        for delay, by_way in data.get("first_query", {}).items()
    ]
    first = table(
        [
            "hop each way",
            "core: engine, connect, one query",
            "stock SQLAlchemy engine, same",
            "core after a SnapStart restore: connect, one query",
            "the same, INIT not connected: connect, the dialect's statement, one query",
        ],
        first_rows,
    )
    return (
        f"{endpoints}\n\nOne Fluid instance, GET /api/searches, {hop} ms hop:\n\n{fluid}"
        f"\n\nA new container's first query (fresh process, imports done):\n\n{first}"
    )


def _capacity(data: dict[str, Any]) -> str:
    from benchmarks.capacity_check import render  # it imports this module's table()

    return render(data)


def _ramp(data: dict[str, Any]) -> str:
    if "steps" not in data:
        return "Not run: " + "; ".join(t.get("reason", "") for t in data.get("targets", []))
    rows = []
    for s in data["steps"]:
        pool, cpu, lat = s["pool"], s["cpu_cores"], s["latency_ms"]
        rows.append(
            [
                s["containers"],
                s["offered_rps"],
                s["achieved_rps"],
                f"{lat['p50']} / {lat['p95']} / {lat['p99']}",
                sum(s["errors"].values()),
                s["backlog"],
                f"{pool['cl_active']['peak']} / {pool['cl_waiting']['peak']} "
                f"({pool['cl_waiting']['mean']})",
                f"{pool['sv_active']['peak']} / {pool['sv_idle']['peak']}",
                pool["maxwait_ms"]["peak"],
                f"{s['db_busy_ms_per_request']} / {s['server_held_ms_per_request_sampled']} "
                f"({s['server_executing_ms_per_request']} / "
                f"{s['idle_in_transaction_ms_per_request']})",
                f"{cpu['postgres']} / {cpu['pgbouncer']} / {cpu['client']} / {cpu['machine_busy']}",
                s["load_average"],
            ]
        )
    steps = table(
        [
            "containers",
            "offered req/s",
            "achieved req/s",
            "p50 / p95 / p99 ms",
            "errors",
            "backlog",
            "cl_active / cl_waiting peak (mean)",
            "sv_active / sv_idle peak",
            "maxwait ms",
            "server held ms/req: stats / sampled (executing / idle in transaction)",
            "CPU cores: postgres / pgbouncer / client / machine",
            "load avg",
        ],
        rows,
    )
    knee, limit = data["knee"], data["limit"]
    pool = ", ".join(f"{k} {v}" for k, v in data["pgbouncer"].items())
    lines = [
        f"Method: {data['method']}.",
        "",
        f"PgBouncer: {pool}. {data['rate_per_container']:g} requests/s per container, "
        f"{data['steps_s']['warmup']:g} s warm-up then {data['steps_s']['measured']:g} s measured "
        "per step.",
        "",
        steps,
        "",
        f"Knee: {knee['knee_containers']} containers ({knee['knee_rps']} req/s); "
        f"first degraded step: {knee['first_degraded']} ({'; '.join(knee['signals'])}).",
    ]
    by_signal = knee.get("first_by_signal", {})
    if by_signal:
        firsts = ", ".join(f"{kind} at {n or '—'}" for kind, n in by_signal.items())
        lines.append(f"First step degraded, by signal: {firsts}.")
    for containers, signals in knee.get("blips", {}).items():
        reasons = "; ".join(signals)
        lines.append(f"Blip at {containers} containers (healthy again later): {reasons}.")
    if limit:
        lines.append(f"Limit: {limit['resource']}.")
    model = data.get("model", {})
    if model.get("predicted_knee_rps"):
        lines.append(
            f"Capacity model (benchmarks/capacity.py): knee at {model['predicted_knee_rps']} "
            f"req/s ({model['formula']}); measured {model['measured_knee_rps']} req/s."
        )
    lines.append(f"Model inputs: {json.dumps(data['model_inputs'])}")
    return "\n".join(lines)


def _replica(data: dict[str, Any]) -> str:
    rows = [
        [row["case"], fmt(row["read_ms"]), row["statements_per_read"]]
        for row in data.get("cases", [])
    ]
    return table(["reads through db.read (warm, in a row)", "read", "statements per read"], rows)


RENDERERS = {
    "cold_start": _cold,
    "warm": _warm,
    "roundtrips": _roundtrips,
    "connections": _connections,
    "throughput": _throughput,
    "scale": _scale,
    "memory": _memory,
    "migration": _migration,
    "export": _export,
    "core_ops": _core_ops,
    "latency": _latency,
    "capacity": _capacity,
    "ramp": _ramp,
    "replica": _replica,
    "indexes": _indexes,
}


def markdown(report: dict[str, Any]) -> str:
    meta = report["meta"]
    m = meta["machine"]
    parts = [
        f"# KeyFlash benchmarks — {meta['timestamp']}",
        "",
        f"Command: `{meta['command']}`{' (quick: smoke-sized)' if meta['quick'] else ''}; "
        f"took {meta['seconds']} s"
        + ("." if meta.get("complete", True) else " so far (partial: the run did not finish)."),
        "",
        f"Machine: {m['nproc']} cores (`nproc`), {m['cpu']}, memory {m['memory_total']} "
        f"(`free -h`), load average at start {m['load_average_at_start']}, Python {m['python']}, "
        f"{m['platform']}. Stack: {', '.join(f'{k} {v}' for k, v in meta['stack'].items())}.",
        "",
        "Timings are medians with p95 in brackets; ratios compare figures measured side by side "
        "in this run. Targets are reported, never enforced.",
        "",
        "## Targets",
        "",
        targets_table(report["targets"]),
    ]
    for name, data in report["sections"].items():
        parts += ["", f"## {SECTION_TITLES.get(name, name)}", "", section_tables(name, data)]
    return "\n".join(parts) + "\n"


def console(report: dict[str, Any]) -> str:
    """The Markdown's targets and section tables, for the terminal."""
    return markdown(report)
