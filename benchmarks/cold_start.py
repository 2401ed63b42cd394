"""1. Cold start: a fresh interpreter imports a function and answers its first real event.

Measured on the deployed artifact: each function's package is built as the deploy builds it
(`devkit.package`: serverless.yml's patterns, the requirements, bytecode compiled ahead of time,
unchecked hash-based), made read-only, and run with `PYTHONDONTWRITEBYTECODE=1` and the base
interpreter (no virtualenv, no editable install), as Lambda runs `/var/task`. Run the benchmark
from `.venv-3.12` to measure the runtime's own files.

Per function, in a new process each time (Lambda's init phase plus the first invoke):
interpreter start-up, `import functions.<name>` and the first response to a real API Gateway v2
event, which includes connecting to PostgreSQL and Upstash (timed inside the child with
`perf_counter`). Baselines in the same run, interleaved with the functions (shuffled each round):
a bare interpreter, a FastAPI + Mangum hello world (`benchmarks/hello_app.py`, from the same
package), and for the core: `shared.db` + one repository from process start to the first query
result, against a bare `import psycopg`, connect and one query. Two floors show what the
bundle's fixed libraries cost before any KeyFlash code runs: the hello world that also imports
SQLAlchemy (with its ORM) and psycopg and answers after one query through a plain engine
(`benchmarks/hello_db_app.py`), and the same libraries to the core's first query. `-X importtime`
gives the five costliest top-level packages.

A variant imports with no bytecode (an empty `PYTHONPYCACHEPREFIX`): what the package cost when
serverless.yml shipped it without `.pyc` files. SnapStart is emulated too: import and warm, the
before-snapshot hooks, a fork; the child runs the after-restore hooks and answers the first
event ("restore → first response").
"""

from __future__ import annotations

import json
import os
import py_compile
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from benchmarks import scenarios
from benchmarks.core import ROOT, Context, target
from benchmarks.scenarios import Fixtures, Tokens
from benchmarks.stats import ratio, summary
from devkit.package import build

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
response = module.lambda_handler(event, Context())
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

# SnapStart emulated: INIT (import; the hooks warm when AWS_LAMBDA_INITIALIZATION_TYPE says
# snap-start), the before-snapshot hooks, then a fork as the restored container: it runs the
# after-restore hooks and answers the first event. A stand-in registers the hooks, as Lambda's
# `snapshot_restore_py` would.
SNAP_PROBE = r"""
import importlib, json, os, sys, time, types
hooks = {"before": [], "after": []}
stand_in = types.ModuleType("snapshot_restore_py")
stand_in.register_before_snapshot = lambda fn: hooks["before"].append(fn) or fn
stand_in.register_after_restore = lambda fn: hooks["after"].append(fn) or fn
sys.modules["snapshot_restore_py"] = stand_in
module = importlib.import_module(sys.argv[1])
event = json.loads(sys.stdin.read())
class Context:
    function_name = sys.argv[1]
    aws_request_id = "restored"
    memory_limit_in_mb = "512"
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:bench"
    def get_remaining_time_in_millis(self):
        return 30000
for hook in hooks["before"]:
    hook()
read, write = os.pipe()
child = os.fork()
if child == 0:
    os.close(read)
    restored = time.perf_counter()
    for hook in hooks["after"]:
        hook()
    response = module.lambda_handler(event, Context())
    elapsed = (time.perf_counter() - restored) * 1000
    answer = {"restore_ms": elapsed, "status": response.get("statusCode")}
    os.write(write, json.dumps(answer).encode())
    os._exit(0)
os.close(write)
with os.fdopen(read) as pipe:
    data = json.loads(pipe.read())
os.waitpid(child, 0)
data["wall_end"] = time.time()
print("@@COLD " + json.dumps(data))
"""

# From process start to the first query result: the core alone, and the floor under it.
CORE_PROBE = r"""
from shared import db
from shared.repositories import users
user = db.run(lambda conn: users.get(conn, "user_cold_probe"), idempotent=True)
import json, time
print("@@COLD " + json.dumps({"wall_end": time.time()}))
"""
PSYCOPG_PROBE = r"""
import os
import psycopg
with psycopg.connect(os.environ["DATABASE_URL"]) as conn:
    conn.execute("SELECT * FROM users WHERE id = %s", ("user_cold_probe",)).fetchone()
import json, time
print("@@COLD " + json.dumps({"wall_end": time.time()}))
"""

# The floor under the core on its libraries: SQLAlchemy (with the ORM, as the tables are ORM
# classes) and its psycopg dialect, one query through a plain engine; no KeyFlash code.
LIBRARIES_PROBE = r"""
import os
import sqlalchemy.orm
from sqlalchemy import create_engine, make_url, text
url = make_url(os.environ["DATABASE_URL"]).set(drivername="postgresql+psycopg")
with create_engine(url, isolation_level="AUTOCOMMIT").connect() as conn:
    conn.execute(text("SELECT * FROM users WHERE id = :id"), {"id": "user_cold_probe"}).first()
import json, time
print("@@COLD " + json.dumps({"wall_end": time.time()}))
"""

HELLO = "hello world (FastAPI + Mangum)"
HELLO_DB = "hello world + SQLAlchemy and psycopg, one query"
LIBRARIES = "SQLAlchemy + psycopg to first query, no KeyFlash code"
BARE = "bare interpreter"
CORE = "core to first query (shared.db + users.get)"
PSYCOPG = "bare psycopg to first query"
# Lambda's interpreter, not this venv's: the package must carry everything it imports. Started
# without `site` (`-S`): the base interpreter's own site-packages (on this machine: click, which
# httpx imports whenever it can, and a .pth run at every start) are not Lambda's, and a module
# found only there would hide one missing from the package.
PYTHON = getattr(sys, "_base_executable", sys.executable)
NO_SITE = "-S"
PROBES = {CORE: CORE_PROBE, LIBRARIES: LIBRARIES_PROBE, PSYCOPG: PSYCOPG_PROBE}


def run(
    ctx: Context, functions: dict[str, list[tuple[str, str]]], crons: list[str]
) -> dict[str, Any]:
    names = list(functions)
    if ctx.quick:
        names = [name for name in ("health", "keywords") if name in functions]
    with tempfile.TemporaryDirectory(prefix="keyflash-package-") as scratch:
        ctx.log(f"  cold start: packaging {len(names)} functions (devkit.package)")
        trees = _package(Path(scratch), names)
        return _measure(ctx, functions, crons, names, trees)


def _package(out: Path, names: list[str]) -> dict[str, str]:
    """Each function's package, the hello world's and the core's: {target: PYTHONPATH}.

    The trees are made read-only, as /var/task is."""
    running = f"{sys.version_info[0]}.{sys.version_info[1]}"  # the trees run on this version
    built = build(out, names, runtime=running)
    hello = out / "hello"
    hello.mkdir()
    for app in ("hello_app.py", "hello_db_app.py"):
        shutil.copy2(ROOT / "benchmarks" / app, hello / app)
        py_compile.compile(
            str(hello / app), invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH
        )
    for directory, _, files in os.walk(out):
        for name in files:
            os.chmod(os.path.join(directory, name), 0o444)
        os.chmod(directory, 0o555)
    any_tree = str(built[names[0]])  # every package holds shared/ and the dependencies
    paths = {name: str(tree) for name, tree in built.items()}
    paths[HELLO] = paths[HELLO_DB] = f"{hello}{os.pathsep}{any_tree}"
    paths[CORE] = paths[LIBRARIES] = paths[PSYCOPG] = paths[BARE] = any_tree
    return paths


def _measure(
    ctx: Context,
    functions: dict[str, list[tuple[str, str]]],
    crons: list[str],
    names: list[str],
    trees: dict[str, str],
) -> dict[str, Any]:
    tokens = Tokens(ctx.stack.private_pem)
    fixtures = Fixtures(**ctx.fixtures)
    rounds = ctx.pick(5, 1)
    # As deployed: /var/task keeps no bytecode, and serverless.yml's provider.environment.
    env = {
        **ctx.stack.app_env(),
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYDANTIC_DISABLE_PLUGINS": "__all__",
    }
    samples: dict[str, list[dict[str, Any]]] = defaultdict(list)
    failures: dict[str, str] = {}
    targets_list = [BARE, HELLO, HELLO_DB, CORE, LIBRARIES, PSYCOPG, *names]
    scenario_of = {name: scenarios.primary(name, functions[name]) for name in names}
    ctx.log(f"  cold start: {len(targets_list)} targets x {rounds} rounds")
    for _ in range(rounds):
        order = list(targets_list)
        random.shuffle(order)
        for name in order:
            packaged = {**env, "PYTHONPATH": trees[name]}
            try:
                if name == BARE:
                    samples[name].append(_spawn(["-c", "pass"], None, packaged))
                elif name in PROBES:
                    samples[name].append(_spawn(["-c", PROBES[name]], None, packaged))
                else:
                    module, event, extra = _call(name, scenario_of, tokens, fixtures)
                    samples[name].append(_probe(module, event, {**packaged, **extra}))
            except RuntimeError as error:
                failures[name] = str(error)[-800:]
    # No bytecode: a few targets, fewer rounds (every import compiles from source).
    no_pyc_names = [HELLO, *[n for n in ("health", "keywords") if n in names]]
    no_pyc: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for _ in range(ctx.pick(2, 0)):  # skipped in quick runs: every import compiles (seconds)
        for name in no_pyc_names:
            with tempfile.TemporaryDirectory(prefix="keyflash-nopyc-") as empty:
                module, event, extra = _call(name, scenario_of, tokens, fixtures)
                nopyc = {**env, **extra, "PYTHONPATH": trees[name], "PYTHONPYCACHEPREFIX": empty}
                try:
                    no_pyc[name].append(_probe(module, event, nopyc))
                except RuntimeError as error:
                    failures[f"{name} (no .pyc)"] = str(error)[-800:]

    snap: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for _ in range(ctx.pick(3, 1)):
        for name in [HELLO, *names]:
            module, event, extra = _call(name, scenario_of, tokens, fixtures)
            snapstart = {
                **env,
                **extra,
                "PYTHONPATH": trees[name],
                "AWS_LAMBDA_INITIALIZATION_TYPE": "snap-start",
            }
            try:
                snap[name].append(_spawn(["-c", SNAP_PROBE, module], json.dumps(event), snapstart))
            except RuntimeError as error:
                failures[f"{name} (SnapStart)"] = str(error)[-800:]

    profiled = [HELLO, *names] if not ctx.quick else [HELLO, names[0]] if names else []
    importtime = {
        name: _importtime(
            "hello_app" if name == HELLO else f"functions.{name}",
            {**env, "PYTHONPATH": trees[name]},
        )
        for name in profiled
    }
    rows: dict[str, Any] = {}
    for name in targets_list:
        runs = samples.get(name, [])
        rows[name] = {
            "scenario": scenario_of[name].name if name in scenario_of else None,
            "runs": len(runs),
            "statuses": sorted({r.get("status") for r in runs if r.get("status") is not None}),
            "startup_ms": summary([r["startup_ms"] for r in runs if "startup_ms" in r]),
            "import_ms": summary([r["import_ms"] for r in runs if "import_ms" in r]),
            "first_response_ms": summary(
                [r["first_response_ms"] for r in runs if "first_response_ms" in r]
            ),
            "cold_ms": summary([r["cold_ms"] for r in runs if "cold_ms" in r]),
            "total_ms": summary([r["total_ms"] for r in runs]),
            "modules": runs[-1].get("modules") if runs else None,
            "heavy_packages": runs[-1].get("heavy") if runs else None,
            "top_imports": importtime.get(name, []),
        }
        if name in snap:
            rows[name]["restore_ms"] = summary([r["restore_ms"] for r in snap[name]])
            rows[name]["restore_statuses"] = sorted({r.get("status") for r in snap[name]})
        if name in failures:
            rows[name]["error"] = failures[name]
    hello_cold = rows[HELLO]["cold_ms"].get("median")
    for name in [HELLO_DB, *names]:
        rows[name]["import_vs_hello"] = ratio(rows[name]["cold_ms"].get("median"), hello_cold)
    no_pyc_rows = {
        name: {
            "import_ms": summary([r["import_ms"] for r in runs]),
            "total_ms": summary([r["total_ms"] for r in runs]),
        }
        for name, runs in no_pyc.items()
    }
    cron_rows = _cron_probes(crons, ctx.stack.app_env(), parallel=ctx.quick)

    over = [
        f"{n} {rows[n]['import_vs_hello']}x"
        for n in names
        if rows[n]["import_vs_hello"] is None or rows[n]["import_vs_hello"] > 1.3
    ]
    ratios = sorted(r for n in names if (r := rows[n]["import_vs_hello"]) is not None)
    spread = f"{ratios[0]}x to {ratios[-1]}x" if ratios else "no measurement"
    median_cold = summary([rows[n]["cold_ms"]["median"] for n in names if rows[n]["runs"]])
    core_ms = rows[CORE]["total_ms"].get("median")
    floor_ms = rows[PSYCOPG]["total_ms"].get("median")
    core_ratio = ratio(core_ms, floor_ms)
    # The floors on the bundle's fixed libraries: what no KeyFlash change can take away.
    hello_db_cold = rows[HELLO_DB]["cold_ms"].get("median")
    libraries_ms = rows[LIBRARIES]["total_ms"].get("median")
    over_floor = sorted(
        r
        for n in names
        if (r := ratio(rows[n]["cold_ms"].get("median"), hello_db_cold)) is not None
    )
    functions_floor = (
        f"The floor on the bundle's libraries: {HELLO_DB} {hello_db_cold} ms, "
        f"{ratio(hello_db_cold, hello_cold)}x the hello world; the functions over that floor: "
        + (f"{over_floor[0]}x to {over_floor[-1]}x" if over_floor else "no measurement")
    )
    core_floor = (
        f"The floor on the core's libraries: {LIBRARIES} {libraries_ms} ms, "
        f"{ratio(libraries_ms, floor_ms)}x bare psycopg; the core over that floor: "
        f"{ratio(core_ms, libraries_ms)}x"
    )
    verdicts = [
        target(
            "each HTTP function's import + first response within 1.3x the FastAPI + Mangum "
            "hello world (packaged, read-only, bytecode shipped)",
            not over and bool(names),
            f"hello world {hello_cold} ms; functions {median_cold.get('median')} ms "
            f"(median of {len(names)}), {spread}",
            detail=(
                f"{len(over)} of {len(names)} over: {', '.join(over)}. {functions_floor}. "
                + _beyond(rows)
            )
            if over
            else "",
        ),
        target(
            "the core from process start to its first query result within 1.5x bare psycopg "
            "(import, connect, one query)",
            core_ratio is not None and core_ratio <= 1.5,
            f"core {core_ms} ms, bare psycopg {floor_ms} ms: {core_ratio}x",
            detail=core_floor if core_ratio is None or core_ratio > 1.5 else "",
        ),
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
        if name in (BARE, HELLO, HELLO_DB, *PROBES):
            continue
        for entry in row.get("top_imports", []):
            costs[entry["package"]].append(entry["cumulative_ms"])
    hello = {entry["package"] for entry in rows.get(HELLO, {}).get("top_imports", [])}
    ranked = sorted(
        ((package, summary(values)["median"], len(values)) for package, values in costs.items()),
        key=lambda item: item[1],
        reverse=True,
    )
    measured = sum(1 for row in rows.values() if row["scenario"] and row["top_imports"])
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
) -> tuple[str, dict[str, Any], dict[str, str]]:
    """(module, event, extra environment) for one cold start of `name`."""
    if name in (HELLO, HELLO_DB):
        module = "hello_app" if name == HELLO else "hello_db_app"
        return module, scenarios.request("GET", "/hello"), {}
    scenario = scenario_of[name]
    if scenario.needs is not None:  # primary scenarios need none; generic ones never do
        raise ValueError(f"cold start cannot prepare {scenario.needs!r}")
    return f"functions.{name}", scenario.build(tokens, fixtures), dict(scenario.env)


def _spawn(args: list[str], stdin: str | None, env: dict[str, str]) -> dict[str, Any]:
    """Run PYTHON with `args` in a fresh process; spawn to exit, or to the child's `@@COLD`
    line (with its own fields) when it prints one."""
    spawned = time.time()
    completed = subprocess.run(
        [PYTHON, NO_SITE, *args],
        input=stdin,
        env=env,
        cwd=env["PYTHONPATH"].split(os.pathsep)[0],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"{args[:2]} failed: {completed.stderr[-1500:]}")
    for line in completed.stdout.splitlines():
        if line.startswith("@@COLD "):
            data: dict[str, Any] = json.loads(line[7:])
            if "wall_start" in data:
                data["startup_ms"] = (data.pop("wall_start") - spawned) * 1000
            data["total_ms"] = (data.pop("wall_end") - spawned) * 1000
            return data
    return {"total_ms": (time.time() - spawned) * 1000}


def _probe(module: str, event: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    data = _spawn(["-c", PROBE, module], json.dumps(event), env)
    if "import_ms" not in data:
        raise RuntimeError(f"cold probe of {module} printed no result")
    data["cold_ms"] = data["import_ms"] + data["first_response_ms"]
    return data


def _importtime(module: str, env: dict[str, str]) -> list[dict[str, Any]]:
    """The five top-level packages with the largest cumulative import time (`-X importtime`)."""
    completed = subprocess.run(
        [PYTHON, NO_SITE, "-X", "importtime", "-c", f"import {module}"],
        env=env,
        cwd=env["PYTHONPATH"].split(os.pathsep)[0],
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
