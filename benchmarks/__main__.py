"""`.venv/bin/python -m benchmarks [--quick] [--only NAME …] [--output DIR]`: run, and report.

Starts the stack (embedded PostgreSQL or DATABASE_URL, PgBouncer, the Upstash emulator or
REDIS_URL behind it), seeds the rows the requests refer to, runs the sections in order, prints
the report and writes `benchmarks/results/<UTC timestamp>.json` and `.md`. A section that fails
is reported as failed and the others still run. The exit status is 0 whenever the report was
written: timings never fail a run, targets are marked pass/fail inside the report.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks import (
    capacity_check,
    cold_start,
    connections,
    core_ops,
    export_memory,
    indexes,
    latency,
    memory,
    migration,
    ramp,
    replica_reads,
    report,
    roundtrips,
    scale,
    throughput,
    warm,
)
from benchmarks.core import Context, run_worker
from benchmarks.stack import Stack

SECTIONS = [
    "cold_start",
    "warm",
    "roundtrips",
    "connections",
    "throughput",
    "memory",
    "scale",
    "migration",
    "export",
    "core_ops",
    "latency",
    "capacity",
    "ramp",
    "replica",
    "indexes",
]


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Benchmark the functions against a local stack and write a report.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke-sized: tiny data, few samples (about a minute)"
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=report.RESULTS,
        metavar="DIR",
        help="where to write <UTC timestamp>.json and .md (default: benchmarks/results)",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=SECTIONS,
        metavar="NAME",
        help=f"run only these sections: {', '.join(SECTIONS)}",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    chosen = [name for name in SECTIONS if not args.only or name in args.only]
    started = time.perf_counter()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    command = "python -m benchmarks" + (" " + shlex.join(sys.argv[1:]) if sys.argv[1:] else "")
    log = _log
    log(f"benchmarks: {'quick' if args.quick else 'full'} run of {', '.join(chosen)}")
    machine = report.machine()
    sections: dict[str, Any] = {}
    pooled_sections = {"connections", "export", "capacity", "ramp", "scale"}
    with Stack(want_pgbouncer=bool(pooled_sections & set(chosen))) as stack:
        ctx = Context(stack=stack, quick=args.quick, log=log)
        stack_info = stack.describe()
        log("  stack up: " + ", ".join(f"{k} {v}" for k, v in stack_info.items()))
        env = stack.app_env()
        discovered = run_worker("routes", {}, env)
        functions = {
            name: [tuple(route) for route in routes]
            for name, routes in discovered["functions"].items()
            if isinstance(routes, list)
        }
        broken = {n: r["error"] for n, r in discovered["functions"].items() if isinstance(r, dict)}
        if broken:
            log(f"  functions that failed to import (left out): {broken}")
        ctx.fixtures = run_worker("seed", {"private_pem": stack.private_pem}, env)
        ctx.crons = discovered["crons"]
        runners: dict[str, Callable[[], dict[str, Any]]] = {
            "cold_start": lambda: cold_start.run(ctx, functions, discovered["crons"]),
            "warm": lambda: warm.run(ctx),
            "roundtrips": lambda: roundtrips.run(ctx),
            "connections": lambda: connections.run(ctx),
            "throughput": lambda: throughput.run(ctx),
            "memory": lambda: memory.run(ctx, list(functions)),
            "scale": lambda: scale.run(ctx),
            "migration": lambda: migration.run(ctx),
            "export": lambda: export_memory.run(ctx),
            "core_ops": lambda: core_ops.run(ctx),
            "latency": lambda: latency.run(ctx),
            "capacity": lambda: capacity_check.run(ctx),
            "ramp": lambda: ramp.run(ctx),
            "replica": lambda: replica_reads.run(ctx),
            "indexes": lambda: indexes.run(ctx),
        }
        for name in chosen:
            log(f"{report.SECTION_TITLES[name]}")
            section_started = time.perf_counter()
            try:
                sections[name] = runners[name]()
            except Exception as error:
                sections[name] = {
                    "error": f"{type(error).__name__}: {error}",
                    "traceback": traceback.format_exc(),
                    "targets": [],
                }
            sections[name]["section_seconds"] = round(time.perf_counter() - section_started, 1)
            log(f"  done in {sections[name]['section_seconds']} s")
            # Written after every section, so an interrupted run still leaves its figures.
            report.write(
                _result(stamp, command, args.quick, chosen, started, machine, stack_info, sections),
                stamp,
                args.output,
            )
        if broken and "cold_start" in sections:
            sections["cold_start"]["import_failures"] = broken
    result = _result(stamp, command, args.quick, chosen, started, machine, stack_info, sections)
    json_path, md_path = report.write(result, stamp, args.output)
    print(report.console(result))
    log(f"wrote {json_path} and {md_path}")
    return 0


def _result(
    stamp: str,
    command: str,
    quick: bool,
    chosen: list[str],
    started: float,
    machine: dict[str, Any],
    stack_info: dict[str, Any],
    sections: dict[str, Any],
) -> dict[str, Any]:
    return {
        "meta": {
            "timestamp": stamp,
            "command": command,
            "quick": quick,
            "sections": chosen,
            "complete": set(chosen) <= set(sections),
            "seconds": round(time.perf_counter() - started, 1),
            "machine": machine,
            "stack": stack_info,
        },
        "targets": report.all_targets(sections),
        "sections": sections,
    }


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
