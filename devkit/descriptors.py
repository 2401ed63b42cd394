"""functions/, serverless.yml and vercel.json in step: the checker for tests and `keyflash check`.

The source of truth is the code: every module in functions/ is a deployable unit, and its
FastAPI app's routes are what both platforms must route to it. From them the checker derives
what each descriptor has to declare and reports every difference at once:

- HTTP function `functions/<module>.py`: in serverless.yml a function with handler
  `functions/<module>.lambda_handler`, one `httpApi` event per path of the app with
  `method: '*'` (API Gateway's ANY), `snapStart: true` (docs/performance.md#snapstart), and
  package patterns that ship its module; in vercel.json a `builds` entry
  `{"src": "functions/<module>.py", "use": "@vercel/python"}` and one route per path,
  `^/api/x/(?<param>[^/]+)$` → `/functions/<module>.py`, without `methods`. Every method
  of a path thus reaches the function, which answers HEAD, OPTIONS (CORS preflights: no
  `httpApi.cors`, nor CORS headers in vercel.json's routes) and the 405 itself
  (`shared/http/methods.py`); a platform's own 404 would have no envelope, `Allow` or CORS.
- Cron `functions/cron/<job>.py` (exports `SCHEDULE`, a 5-field UTC cron; `lambda_handler` for
  Lambda; `app`, a small ASGI GET endpoint guarded by CRON_SECRET, for Vercel): in serverless.yml
  a function with handler `functions/cron/<job>.lambda_handler` and one `schedule: cron(...)`
  event with the same schedule in AWS's 6-field form; in vercel.json a build, a GET route for its
  path (`CRON_PATH`, default `/api/cron/<job>`) and a `crons` entry with the same schedule.
- Vercel serves each module's `app`: no module may export `handler` or `Handler`, which
  Vercel's runtime would take first (see `vercel_shadows`).
- Nothing declared that does not exist.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import re
import sys
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml
from fastapi.routing import APIRoute

ROOT = Path(__file__).resolve().parent.parent
FUNCTIONS_DIR = ROOT / "functions"
CRON_PACKAGE = "cron"
ANY_METHOD = "*"  # serverless.yml's catch-all method, API Gateway's ANY
EVERY_METHOD = (
    "every method of a path must reach its function, which answers HEAD, OPTIONS and the 405 itself"
)
CRON_METHOD = "GET"  # how Vercel Cron calls a cron's path
_PARAM = re.compile(r"\{(\w+)(?::(\w+))?\}")


# --------------------------------------------------------------------------- the functions


@dataclass(frozen=True)
class FunctionSpec:
    """One deployable module and what the descriptors must say about it."""

    module: str  # dotted: functions.searches, functions.cron.cleanup
    kind: str  # "http" or "cron"
    routes: dict[str, frozenset[str]] = field(default_factory=dict)  # FastAPI path → methods
    schedule: str | None = None  # crons: 5-field UTC cron
    cron_path: str | None = None  # crons: the path Vercel GETs
    vercel_shadows: tuple[str, ...] = ()  # names Vercel would take before `app` (below)

    @property
    def file(self) -> str:
        return self.module.replace(".", "/") + ".py"

    @property
    def handler(self) -> str:
        return self.module.replace(".", "/") + ".lambda_handler"

    @property
    def vercel_dest(self) -> str:
        return "/" + self.file


def discover_modules(directory: Path = FUNCTIONS_DIR) -> tuple[list[str], list[str]]:
    """Dotted names of the endpoint modules and of the cron modules (private `_x` skipped)."""
    http: list[str] = []
    crons: list[str] = []
    for info in pkgutil.iter_modules([str(directory)]):
        if info.name.startswith("_"):
            continue
        if not info.ispkg:
            http.append(f"functions.{info.name}")
        elif info.name == CRON_PACKAGE:
            for job in pkgutil.iter_modules([str(directory / CRON_PACKAGE)]):
                if not job.ispkg and not job.name.startswith("_"):
                    crons.append(f"functions.{CRON_PACKAGE}.{job.name}")
        else:
            raise AssertionError(
                f"functions/{info.name}/ is a package, but only functions/{CRON_PACKAGE}/ may be "
                "one: put an endpoint in functions/<name>.py and shared code in shared/"
            )
    return sorted(http), sorted(crons)


def app_routes(module: ModuleType) -> dict[str, frozenset[str]]:
    """FastAPI path → the methods its routes serve (both descriptors route every method of a
    path alike, so the checks use only the paths)."""
    routes: dict[str, set[str]] = {}
    for route in module.app.routes:
        if isinstance(route, APIRoute):
            routes.setdefault(route.path, set()).update((route.methods or set()) - {"HEAD"})
    return {path: frozenset(methods) for path, methods in routes.items()}


def vercel_shadows(module: ModuleType) -> tuple[str, ...]:
    """The module's names that Vercel's Python runtime takes before `app`.

    It looks for `handler` (then `Handler`) first and, when found, requires a
    `BaseHTTPRequestHandler` subclass: anything else there (a Mangum adapter, a function) stops
    the function at its cold start, and its `app` is never served. Hence the Lambda entry is
    `lambda_handler`."""
    return tuple(
        name
        for name in ("handler", "Handler")
        if name in dir(module)
        and not (
            isinstance(getattr(module, name), type)
            and issubclass(getattr(module, name), BaseHTTPRequestHandler)
        )
    )


def load_spec(dotted: str) -> FunctionSpec:
    module = importlib.import_module(dotted)
    shadows = vercel_shadows(module)
    if f".{CRON_PACKAGE}." in dotted:
        job = dotted.rsplit(".", 1)[1]
        return FunctionSpec(
            dotted,
            "cron",
            schedule=getattr(module, "SCHEDULE", None),
            cron_path=getattr(module, "CRON_PATH", f"/api/cron/{job}"),
            vercel_shadows=shadows,
        )
    return FunctionSpec(dotted, "http", routes=app_routes(module), vercel_shadows=shadows)


# --------------------------------------------------------------------------- conversions


def http_api_path(path: str) -> str:
    """FastAPI `/a/{id}` → API Gateway `/a/{id}`; a `{rest:path}` becomes greedy `{rest+}`."""
    return _PARAM.sub(lambda m: f"{{{m[1]}+}}" if m[2] == "path" else f"{{{m[1]}}}", path)


def vercel_src(path: str) -> str:
    """FastAPI `/a/{id}` → Vercel `^/a/(?<id>[^/]+)$` (named groups, PCRE)."""
    out, last = [], 0
    for match in _PARAM.finditer(path):
        out.append(re.sub(r"([.^$*+?()\[\]{}|\\])", r"\\\1", path[last : match.start()]))
        out.append(f"(?<{match[1]}>.+)" if match[2] == "path" else f"(?<{match[1]}>[^/]+)")
        last = match.end()
    out.append(re.sub(r"([.^$*+?()\[\]{}|\\])", r"\\\1", path[last:]))
    return "^" + "".join(out) + "$"


def aws_cron(schedule: str) -> str:
    """A 5-field UTC cron (Vercel) → EventBridge `cron(min hour dom month dow year)`.

    EventBridge wants `?` in one of day-of-month/day-of-week and numbers weekdays 1-7 from
    Sunday (cron: 0-7, 0 and 7 = Sunday); names (MON-FRI) mean the same in both.
    """
    fields = schedule.split()
    if len(fields) != 5:
        raise ValueError(f"SCHEDULE {schedule!r} is not a 5-field cron expression")
    minute, hour, dom, month, dow = fields
    if dom != "*" and dow != "*":
        raise ValueError(f"SCHEDULE {schedule!r}: EventBridge cannot combine a day and a weekday")
    if dow == "*":
        dow = "?"
    else:
        dom = "?"
        dow = re.sub(r"(?<![/\w])\d+", lambda m: str(int(m[0]) % 7 + 1), dow)
    return f"cron({minute} {hour} {dom} {month} {dow} *)"


# --------------------------------------------------------------------------- the checks


def _fmt(pairs: set[tuple[str, str]]) -> str:
    return ", ".join(f"{method} {path}" for path, method in sorted(pairs))


def serverless_functions(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: fn or {} for name, fn in (config.get("functions") or {}).items()}


def http_api_route(http: str | dict[str, Any]) -> tuple[str, str]:
    """(path, METHOD) of an `httpApi` event, in its short ("GET /path") or long form."""
    if isinstance(http, str):
        method, _, path = http.partition(" ")
    else:
        method, path = str(http.get("method", "")), str(http.get("path", ""))
    return path, method.upper()


def check_serverless(specs: list[FunctionSpec], config: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    functions = serverless_functions(config)
    by_handler: dict[str, str] = {}
    for name, fn in functions.items():
        handler = str(fn.get("handler", ""))
        if handler in by_handler:
            problems.append(
                f"serverless.yml: functions `{by_handler[handler]}` and `{name}` both use "
                f"handler {handler}"
            )
        by_handler[handler] = name
    known = {spec.handler: spec for spec in specs}
    for handler, name in sorted(by_handler.items()):
        if handler not in known:
            problems.append(
                f"serverless.yml: function `{name}` has handler `{handler}`, but there is no "
                f"{handler.rsplit('.', 1)[0]}.py in functions/ (remove it or fix the handler)"
            )

    if "cors" in ((config.get("provider") or {}).get("httpApi") or {}):
        problems.append(
            "serverless.yml: provider.httpApi.cors must not be set: the functions answer CORS "
            "themselves (shared/http/guards.py), and API Gateway would drop their headers"
        )
    service_patterns = list((config.get("package") or {}).get("patterns") or [])
    if not (config.get("package") or {}).get("individually"):
        problems.append("serverless.yml: package.individually must be true")
    if not service_patterns or service_patterns[0] != "!**" or "shared/**" not in service_patterns:
        problems.append(
            "serverless.yml: package.patterns must start with '!**' and include 'shared/**' "
            "(each function then adds only its own module)"
        )
    owners: dict[tuple[str, str], str] = {}
    for spec in specs:
        found = by_handler.get(spec.handler)
        if found is None:
            problems.append(
                f"{spec.file}: serverless.yml declares no function with handler "
                f"`{spec.handler}`; add one with {_expected_events_text(spec)}"
            )
            continue
        name = found
        fn = functions[name]
        problems += _check_package_patterns(spec, name, fn, specs)
        declared_http: set[tuple[str, str]] = set()
        declared_cron: list[str] = []
        for event in fn.get("events") or []:
            if "httpApi" in event:
                declared_http.add(http_api_route(event["httpApi"]))
            elif "schedule" in event:
                schedule = event["schedule"]
                rates = schedule.get("rate") if isinstance(schedule, dict) else schedule
                declared_cron += rates if isinstance(rates, list) else [str(rates)]
            else:
                problems.append(
                    f"serverless.yml: function `{name}` has an event of kind "
                    f"{sorted(event)}; only httpApi and schedule are used"
                )
        for key in declared_http:
            if key in owners:
                problems.append(
                    f"serverless.yml: {key[1]} {key[0]} is routed to both `{owners[key]}` "
                    f"and `{name}`"
                )
            owners[key] = name
        if spec.kind == "http":
            expected = {(http_api_path(path), ANY_METHOD) for path in spec.routes}
            if missing := expected - declared_http:
                problems.append(
                    f"{spec.file}: serverless.yml function `{name}` lacks httpApi events with "
                    f"method '{ANY_METHOD}' for {', '.join(sorted(p for p, _ in missing))} "
                    f"({EVERY_METHOD})"
                )
            if extra := declared_http - expected:
                problems.append(
                    f"{spec.file}: serverless.yml function `{name}` declares httpApi events "
                    f"other than one method '{ANY_METHOD}' per path of its app: {_fmt(extra)} "
                    f"({EVERY_METHOD})"
                )
            if fn.get("snapStart") is not True:
                problems.append(
                    f"{spec.file}: serverless.yml function `{name}` is an HTTP function without "
                    "`snapStart: true` (docs/performance.md#snapstart)"
                )
            if declared_cron:
                problems.append(
                    f"{spec.file}: serverless.yml function `{name}` is an HTTP function but "
                    f"has schedule events {declared_cron}; crons live in functions/cron/"
                )
        else:
            problems += _check_cron_events(spec, name, declared_http, declared_cron)
    return problems


def _expected_events_text(spec: FunctionSpec) -> str:
    if spec.kind == "cron":
        return f"a schedule event {_aws_or_error(spec)}"
    paths = ", ".join(sorted(http_api_path(path) for path in spec.routes))
    return (
        f"httpApi events with method '{ANY_METHOD}' for {paths} and package.patterns "
        f"[functions/__init__.py, {spec.file}]"
    )


def _aws_or_error(spec: FunctionSpec) -> str:
    try:
        return aws_cron(spec.schedule or "")
    except ValueError as error:
        return f"(cannot convert: {error})"


def _check_cron_events(
    spec: FunctionSpec, name: str, declared_http: set[tuple[str, str]], rates: list[str]
) -> list[str]:
    problems: list[str] = []
    if not isinstance(spec.schedule, str):
        return [f"{spec.file}: a cron module must export SCHEDULE, e.g. SCHEDULE = '0 3 * * *'"]
    if declared_http:
        problems.append(
            f"{spec.file}: serverless.yml function `{name}` is a cron but has httpApi events "
            f"{_fmt(declared_http)}"
        )
    try:
        expected = aws_cron(spec.schedule)
    except ValueError as error:
        return [*problems, f"{spec.file}: {error}"]
    if rates != [expected]:
        problems.append(
            f"{spec.file}: serverless.yml function `{name}` must have exactly one schedule "
            f"event `{expected}` (SCHEDULE = {spec.schedule!r}); it has {rates or 'none'}"
        )
    return problems


def _check_package_patterns(
    spec: FunctionSpec, name: str, fn: dict[str, Any], specs: list[FunctionSpec]
) -> list[str]:
    patterns = set((fn.get("package") or {}).get("patterns") or [])
    needed = {"functions/__init__.py", spec.file}
    if spec.kind == "cron":
        needed.add(f"functions/{CRON_PACKAGE}/__init__.py")
    problems = []
    if missing := needed - patterns:
        problems.append(
            f"{spec.file}: serverless.yml function `{name}` package.patterns lacks "
            f"{sorted(missing)} (its zip would not contain its own module)"
        )
    others = {other.file for other in specs if other.module != spec.module} & patterns
    wildcard = {p for p in patterns if not p.startswith("!") and ("*" in p) and "functions" in p}
    if others or wildcard:
        problems.append(
            f"{spec.file}: serverless.yml function `{name}` ships other functions' code: "
            f"{sorted(others | wildcard)}"
        )
    return problems


def check_vercel(specs: list[FunctionSpec], config: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    if "functions" in config:
        problems.append(
            "vercel.json: `functions` cannot be combined with `builds` (and only matches api/); "
            "configure each function in its `builds` entry"
        )
    for key in ("headers", "rewrites", "redirects", "cleanUrls", "trailingSlash"):
        if key in config:
            problems.append(f"vercel.json: `{key}` cannot be combined with `routes`")
    builds: dict[str, dict[str, Any]] = {}
    for build in config.get("builds") or []:
        src = str(build.get("src", ""))
        if src in builds:
            problems.append(f"vercel.json: two builds for {src}")
        builds[src] = build
    known = {spec.file: spec for spec in specs}
    for src, build in sorted(builds.items()):
        if src not in known:
            problems.append(
                f"vercel.json: builds has {src}, which is not a module in functions/ (remove it)"
            )
        if build.get("use") != "@vercel/python":
            problems.append(f"vercel.json: build {src} must use @vercel/python")
        if src in known and known[src].vercel_shadows:
            names = " and ".join(f"`{name}`" for name in known[src].vercel_shadows)
            problems.append(
                f"{src}: exports {names}, which Vercel's Python runtime takes before `app` and "
                "refuses unless it is a BaseHTTPRequestHandler subclass (the function would fail "
                "at every cold start); name the Lambda entry `lambda_handler`"
            )

    routes_by_dest: dict[str, dict[str, set[str]]] = {}
    seen_src: dict[str, str] = {}
    for index, route in enumerate(config.get("routes") or []):
        dest, src = route.get("dest"), route.get("src")
        if any(
            str(name).lower().startswith("access-control-") for name in route.get("headers") or {}
        ):
            problems.append(
                f"vercel.json: route #{index} {src} sets CORS headers: the functions answer "
                "CORS themselves (shared/http/guards.py), for the configured origins only"
            )
        if dest is None:
            continue  # header-only (`continue: true`) routes
        if src in seen_src:
            problems.append(
                f"vercel.json: route {src} is declared twice (→ {seen_src[src]}, {dest})"
            )
        seen_src[str(src)] = str(dest)
        if str(dest).lstrip("/") not in known:
            problems.append(
                f"vercel.json: route #{index} {src} → {dest}: no such module in functions/ "
                "(remove the route or fix dest)"
            )
        methods = {str(m).upper() for m in route.get("methods") or []}
        routes_by_dest.setdefault(str(dest), {})[str(src)] = methods

    crons = {str(c.get("path")): str(c.get("schedule")) for c in config.get("crons") or []}
    cron_paths = {spec.cron_path for spec in specs if spec.kind == "cron"}
    for path in sorted(set(crons) - cron_paths):
        problems.append(
            f"vercel.json: crons has {path}, which is no module's cron path in functions/cron/"
        )

    for spec in specs:
        if spec.file not in builds:
            problems.append(
                f'{spec.file}: vercel.json builds lacks {{"src": "{spec.file}", '
                f'"use": "@vercel/python"}}'
            )
        declared = routes_by_dest.get(spec.vercel_dest, {})
        expected: dict[str, set[str]]  # src → methods, none for an HTTP function's routes
        if spec.kind == "http":
            expected = {vercel_src(path): set() for path in spec.routes}
        else:
            expected = {vercel_src(spec.cron_path or ""): {CRON_METHOD}}
            if spec.cron_path not in crons:
                problems.append(
                    f'{spec.file}: vercel.json crons lacks {{"path": "{spec.cron_path}", '
                    f'"schedule": "{spec.schedule}"}}'
                )
            elif crons[spec.cron_path] != spec.schedule:
                problems.append(
                    f"{spec.file}: vercel.json cron {spec.cron_path} runs on "
                    f"{crons[spec.cron_path]!r} but SCHEDULE is {spec.schedule!r}"
                )
        for src, methods in sorted(expected.items()):
            filtered = f', "methods": {json.dumps(sorted(methods))}' if methods else ""
            if src not in declared:
                problems.append(
                    f'{spec.file}: vercel.json routes lacks {{"src": "{src}", "dest": '
                    f'"{spec.vercel_dest}"{filtered}}}'
                )
            elif declared[src] != methods and spec.kind == "http":
                problems.append(
                    f"{spec.file}: vercel.json route {src} filters methods "
                    f"{sorted(declared[src])}: drop `methods` ({EVERY_METHOD})"
                )
            elif declared[src] != methods:
                problems.append(
                    f"{spec.file}: vercel.json route {src} has methods {sorted(declared[src])}, "
                    f"but Vercel Cron calls it with {CRON_METHOD}"
                )
        for src in sorted(set(declared) - set(expected)):
            problems.append(
                f"{spec.file}: vercel.json routes {src} → {spec.vercel_dest}, which its app "
                f"does not serve (it serves {sorted(expected)})"
            )
    return problems


def report(problems: list[str]) -> str:
    return "functions/, serverless.yml and vercel.json are out of step:\n  - " + "\n  - ".join(
        problems
    )


def load_specs() -> list[FunctionSpec]:
    """Every function module, imported, with what the descriptors must say about it."""
    http, crons = discover_modules()
    return [load_spec(name) for name in [*http, *crons]]


def load_serverless() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load((ROOT / "serverless.yml").read_text())
    return config


def load_vercel() -> dict[str, Any]:
    config: dict[str, Any] = json.loads((ROOT / "vercel.json").read_text())
    return config


def problems() -> list[str]:
    """Every difference between functions/ and the two descriptors; empty when in step."""
    specs = load_specs()
    return check_serverless(specs, load_serverless()) + check_vercel(specs, load_vercel())


def main() -> int:
    """`python -m devkit.descriptors`, `keyflash check`: exit 1 with the report when out of step."""
    found = problems()
    if found:
        print(report(found), file=sys.stderr)
        return 1
    print("functions/, serverless.yml and vercel.json are in step")
    return 0


if __name__ == "__main__":
    sys.exit(main())
