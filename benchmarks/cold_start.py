"""1. Cold start: a fresh interpreter imports a function and answers its first real event.

Per function, in a new process each time (as Lambda's init phase plus first invoke): interpreter
start-up, `import functions.<name>` (timed inside the child with `perf_counter`), and the first
response to a real API Gateway v2 event, which includes connecting to PostgreSQL and Upstash.
Baselines measured in the same run, interleaved with the functions (targets shuffled each round):
a bare interpreter (`python -c pass`) and a minimal FastAPI + Mangum hello world
(`benchmarks/hello_app.py`). `-X importtime` gives the five costliest top-level packages.

A variant imports with no bytecode cache (an empty `PYTHONPYCACHEPREFIX`): what a package
deployed without `.pyc` files pays on Lambda, whose read-only `/var/task` cannot keep the
compiled files (serverless.yml packages with `slim: true`, which strips them).
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from typing import Any

from benchmarks import scenarios
from benchmarks.core import ROOT, Context, target
from benchmarks.scenarios import Fixtures, Tokens
from benchmarks.stats import ratio, summary

# Runs in the child. Only builtins/frozen modules are touched before the import is timed.
PROBE = r"""
import time
wall_start = time.time()
import importlib, sys
name = sys.argv[1]
started = time.perf_counter()
module = importlib.import_module(name)
imported = time.perf_counter()
import json
event = json.loads(sys.stdin.read())
class Context:
    function_name = name
    aws_request_id = "cold-start"
    memory_limit_in_mb = "512"
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:bench"
    def get_remaining_time_in_millis(self):
        return 30000
before = time.perf_counter()
response = module.handler(event, Context())
answered = time.perf_counter()
notable = ("fastapi", "starlette", "mangum", "sqlalchemy", "psycopg", "jwt", "cryptography",
           "httpx", "upstash_redis", "pydantic")
heavy = sorted(m for m in notable if m in sys.modules)
print("@@COLD " + json.dumps({
    "wall_start": wall_start,
    "wall_end": time.time(),
    "import_ms": (imported - started) * 1000,
    "first_response_ms": (answered - before) * 1000,
    "status": response.get("statusCode"),
    "modules": len(sys.modules),
    "heavy": heavy,
}))
"""

CRON_PROBE = r"""
import importlib, json, sys, time
started = time.perf_counter()
importlib.import_module(sys.argv[1])
elapsed = (time.perf_counter() - started) * 1000
web = sorted(m for m in ("fastapi", "starlette", "mangum") if m in sys.modules)
print("@@COLD " + json.dumps({"import_ms": elapsed, "web_framework": web}))
"""

HELLO = "hello world (FastAPI + Mangum)"
BARE = "bare interpreter"


def run(
    ctx: Context, functions: dict[str, list[tuple[str, str]]], crons: list[str]
) -> dict[str, Any]:
    tokens = Tokens(ctx.stack.private_pem)
    fixtures = Fixtures(**ctx.fixtures)
    names = list(functions)
    if ctx.quick:
        names = [name for name in ("health", "keywords") if name in functions]
    rounds = ctx.pick(3, 1)
    env = ctx.stack.app_env()
    samples: dict[str, list[dict[str, Any]]] = defaultdict(list)
    failures: dict[str, str] = {}
    targets_list = [BARE, HELLO, *names]
    scenario_of = {name: scenarios.primary(name, functions[name]) for name in names}
    ctx.log(f"  cold start: {len(targets_list)} targets x {rounds} rounds")
    # Every module gets its .pyc first (code edited since the last run would otherwise pay its
    # compilation in its first sample only): one interpreter imports them all, untimed.
    _compile_all(["benchmarks.hello_app", *(f"functions.{name}" for name in names)], env)
    for _ in range(rounds):
        order = list(targets_list)
        random.shuffle(order)
        for name in order:
            if name == BARE:
                samples[name].append(_bare(env))
                continue
            module, event, env_call = _call(name, scenario_of, tokens, fixtures, env)
            try:
                samples[name].append(_probe(module, event, env_call))
            except RuntimeError as error:
                failures[name] = str(error)[-800:]
    # No bytecode cache: a few targets, fewer rounds (every import compiles from source).
    no_pyc_names = [HELLO, *[n for n in ("health", "keywords") if n in names]]
    no_pyc: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for _ in range(ctx.pick(1, 0)):  # skipped in quick runs: every import compiles (seconds)
        for name in no_pyc_names:
            with tempfile.TemporaryDirectory(prefix="keyflash-nopyc-") as empty:
                extra = {"PYTHONPYCACHEPREFIX": empty, "PYTHONDONTWRITEBYTECODE": "1"}
                module, event, base = _call(name, scenario_of, tokens, fixtures, env)
                try:
                    no_pyc[name].append(_probe(module, event, {**base, **extra}))
                except RuntimeError as error:
                    failures[f"{name} (no .pyc)"] = str(error)[-800:]

    importtime = {
        name: _importtime("benchmarks.hello_app" if name == HELLO else f"functions.{name}", env)
        for name in ([HELLO, *names] if not ctx.quick else [HELLO, names[0]] if names else [])
    }
    rows: dict[str, Any] = {}
    for name in targets_list:
        runs = samples.get(name, [])
        rows[name] = {
            "scenario": None if name in (BARE, HELLO) else scenario_of[name].name,
            "runs": len(runs),
            "statuses": sorted({r.get("status") for r in runs if r.get("status") is not None}),
            "startup_ms": summary([r["startup_ms"] for r in runs if "startup_ms" in r]),
            "import_ms": summary([r["import_ms"] for r in runs if "import_ms" in r]),
            "first_response_ms": summary(
                [r["first_response_ms"] for r in runs if "first_response_ms" in r]
            ),
            "total_ms": summary([r["total_ms"] for r in runs]),
            "modules": runs[-1].get("modules") if runs else None,
            "heavy_packages": runs[-1].get("heavy") if runs else None,
            "top_imports": importtime.get(name, []),
        }
        if name in failures:
            rows[name]["error"] = failures[name]
    hello_import = rows[HELLO]["import_ms"].get("median")
    for name in names:
        rows[name]["import_vs_hello"] = ratio(rows[name]["import_ms"].get("median"), hello_import)
    no_pyc_rows = {
        name: {
            "import_ms": summary([r["import_ms"] for r in runs]),
            "total_ms": summary([r["total_ms"] for r in runs]),
        }
        for name, runs in no_pyc.items()
    }
    cron_rows = _cron_probes(crons, env, parallel=ctx.quick)

    over = [
        f"{n} {rows[n]['import_vs_hello']}x"
        for n in names
        if rows[n]["import_vs_hello"] is None or rows[n]["import_vs_hello"] > 1.3
    ]
    ratios = sorted(r for n in names if (r := rows[n]["import_vs_hello"]) is not None)
    spread = f"{ratios[0]}x to {ratios[-1]}x" if ratios else "no measurement"
    median_import = summary([rows[n]["import_ms"]["median"] for n in names if rows[n]["runs"]])
    verdicts = [
        target(
            "each HTTP function's import time within 1.3x the FastAPI + Mangum hello world",
            not over and bool(names),
            f"hello world {hello_import} ms; functions {median_import.get('median')} ms "
            f"(median of {len(names)}), {spread}",
            detail=(f"{len(over)} of {len(names)} over: " + ", ".join(over) + ". " + _beyond(rows))
            if over
            else "",
        )
    ]
    if crons:
        leaking = [
            c for c, row in cron_rows.items() if row.get("web_framework") or row.get("error")
        ]
        verdicts.append(
            target(
                "cron modules import no FastAPI",
                not leaking,
                ", ".join(
                    f"{c}: {row.get('web_framework') or row.get('error') or 'none'}"
                    for c, row in cron_rows.items()
                ),
            )
        )
    else:
        verdicts.append(
            target(
                "cron modules import no FastAPI",
                None,
                "no cron modules",
                reason="functions/cron/ has no modules yet (in progress elsewhere)",
            )
        )
    return {
        "rounds": rounds,
        "functions": rows,
        "no_bytecode_cache": no_pyc_rows,
        "crons": cron_rows,
        "targets": verdicts,
    }


def _beyond(rows: dict[str, Any]) -> str:
    """What the functions import that the hello world does not, from `-X importtime`: the
    median cumulative time of each top-level package among the functions' five costliest."""
    costs: dict[str, list[float]] = defaultdict(list)
    for name, row in rows.items():
        if name in (BARE, HELLO):
            continue
        for entry in row.get("top_imports", []):
            costs[entry["package"]].append(entry["cumulative_ms"])
    hello = {entry["package"] for entry in rows.get(HELLO, {}).get("top_imports", [])}
    ranked = sorted(
        ((package, summary(values)["median"], len(values)) for package, values in costs.items()),
        key=lambda item: item[1],
        reverse=True,
    )
    measured = sum(1 for n, row in rows.items() if n not in (BARE, HELLO) and row["top_imports"])
    parts = [
        f"{package} {median:.0f} ms ({count} of {measured} functions)"
        for package, median, count in ranked
        if package not in hello and count >= min(3, measured)
    ][:5]
    if not parts:
        return ""
    return "Beyond FastAPI, what dominates (median cumulative import): " + ", ".join(parts)


def _call(
    name: str,
    scenario_of: dict[str, scenarios.Scenario],
    tokens: Tokens,
    fixtures: Fixtures,
    env: dict[str, str],
) -> tuple[str, dict[str, Any], dict[str, str]]:
    """(module, event, environment) for one cold start of `name`."""
    if name == HELLO:
        return "benchmarks.hello_app", scenarios.request("GET", "/hello"), env
    scenario = scenario_of[name]
    if scenario.needs is not None:  # primary scenarios need none; generic ones never do
        raise ValueError(f"cold start cannot prepare {scenario.needs!r}")
    return f"functions.{name}", scenario.build(tokens, fixtures), {**env, **scenario.env}


def _compile_all(modules: list[str], env: dict[str, str]) -> None:
    """Import every module once in one interpreter, so each has its bytecode cache."""
    source = "import importlib\n" + "".join(
        f"try:\n    importlib.import_module({module!r})\nexcept Exception:\n    pass\n"
        for module in modules
    )
    subprocess.run(
        [sys.executable, "-c", source], env=env, cwd=ROOT, capture_output=True, timeout=300
    )


def _bare(env: dict[str, str]) -> dict[str, Any]:
    spawned = time.time()
    subprocess.run([sys.executable, "-c", "pass"], env=env, cwd=ROOT, check=True)
    return {"total_ms": (time.time() - spawned) * 1000}


def _probe(module: str, event: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    spawned = time.time()
    completed = subprocess.run(
        [sys.executable, "-c", PROBE, module],
        input=json.dumps(event),
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    for line in completed.stdout.splitlines():
        if line.startswith("@@COLD "):
            data: dict[str, Any] = json.loads(line[7:])
            data["startup_ms"] = (data.pop("wall_start") - spawned) * 1000
            data["total_ms"] = (data.pop("wall_end") - spawned) * 1000
            return data
    raise RuntimeError(f"cold probe of {module} failed: {completed.stderr[-1500:]}")


def _importtime(module: str, env: dict[str, str]) -> list[dict[str, Any]]:
    """The five top-level packages with the largest cumulative import time (`-X importtime`)."""
    completed = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {module}"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    found: dict[str, tuple[int, int]] = {}
    own = module.split(".")[0]
    for line in completed.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        parts = line[len("import time:") :].split("|")
        if len(parts) != 3:
            continue
        self_us, cumulative_us, name = parts[0].strip(), parts[1].strip(), parts[2].strip()
        if not (self_us.isdigit() and cumulative_us.isdigit()):
            continue
        if (
            "." in name
            or name in (own, "shared", "functions", "benchmarks")
            or name.startswith("_")
        ):
            continue
        previous = found.get(name)
        if previous is None or int(cumulative_us) > previous[1]:
            found[name] = (int(self_us), int(cumulative_us))
    top = sorted(found.items(), key=lambda item: item[1][1], reverse=True)[:5]
    return [
        {"package": name, "cumulative_ms": round(cum / 1000, 1), "self_ms": round(own_us / 1000, 1)}
        for name, (own_us, cum) in top
    ]


def _cron_probes(crons: list[str], env: dict[str, str], *, parallel: bool) -> dict[str, Any]:
    """Import each cron in a fresh interpreter; which web framework modules came with it.

    Parallel (quick runs) when only the imported set matters, not the import time.
    """

    def start(cron: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-c", CRON_PROBE, f"functions.cron.{cron}"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def finish(process: subprocess.Popen[str]) -> dict[str, Any]:
        stdout, stderr = process.communicate(timeout=120)
        for line in stdout.splitlines():
            if line.startswith("@@COLD "):
                data: dict[str, Any] = json.loads(line[7:])
                data["import_ms"] = round(data["import_ms"], 1)
                return data
        return {"error": stderr.strip().splitlines()[-1] if stderr.strip() else "failed"}

    if parallel:
        running = {cron: start(cron) for cron in crons}
        return {cron: finish(process) for cron, process in running.items()}
    return {cron: finish(start(cron)) for cron in crons}
