"""Which deployable function may read where: derived from the code, never hand-kept.

Read-only work is declared by calling `db.read(...)` (`shared.db.read`); everything else runs on
the primary. For each function in functions/ (endpoints and crons) this follows its imports
inside the repository (module level and lazy ones alike), finds every `db.read` call in those
modules and names the code that holds it (`module.function`) and where it reads: `replica`
(DATABASE_READ_URL), `analytics` (ANALYTICS_DATABASE_URL, then the replica). docs/replicas.md
holds the table `markdown()` prints, and a test keeps the two equal:

    python -m devkit.read_routing     # the table, to paste into docs/replicas.md
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

from devkit.descriptors import ROOT, discover_modules

PACKAGES = ("shared", "functions")


@dataclass(frozen=True, order=True)
class ReadSite:
    """One `db.read` call: the code holding it and the URL it prefers."""

    holder: str  # module.function (the enclosing top-level function or method)
    target: str  # "replica" or "analytics"
    snapshot: bool


def _source(module: str) -> Path | None:
    path = ROOT.joinpath(*module.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def _imports(module: str, tree: ast.Module) -> set[str]:
    """Repository modules `tree` imports anywhere (lazy imports in functions included)."""
    found: set[str] = set()
    is_package = _source(module) == ROOT.joinpath(*module.split("."), "__init__.py")
    package = module if is_package else module.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join([*parts[: len(parts) - node.level + 1], *filter(None, [base])])
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in found if name.split(".")[0] in PACKAGES and _source(name)}


def _closure(module: str) -> dict[str, ast.Module]:
    """`module` and every repository module it reaches through imports, parsed."""
    seen: dict[str, ast.Module] = {}
    pending = [module]
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        source = _source(name)
        if source is None:
            continue
        tree = ast.parse(source.read_text(), filename=str(source))
        seen[name] = tree
        pending.extend(_imports(name, tree) - seen.keys())
    return seen


def _is_db_read(call: ast.Call) -> bool:
    func = call.func
    return (
        isinstance(func, ast.Attribute)
        and func.attr == "read"
        and isinstance(func.value, ast.Name)
        and func.value.id == "db"
    )


def _keyword(call: ast.Call, name: str) -> bool:
    for keyword in call.keywords:
        if keyword.arg == name:
            if not isinstance(keyword.value, ast.Constant):
                raise ValueError(f"db.read({name}=…) must be a literal to be routed statically")
            return bool(keyword.value.value)
    return False


def read_sites(module: str, tree: ast.Module) -> list[ReadSite]:
    """Every `db.read(...)` call in `tree`, with the top-level function or method holding it."""
    sites: list[ReadSite] = []

    def visit(node: ast.AST, holder: str, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            name, inside = holder, in_function
            if not in_function and isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                name, inside = f"{holder}.{child.name}", True  # nested helpers count as it
            elif not in_function and isinstance(child, ast.ClassDef):
                name = f"{holder}.{child.name}"
            if isinstance(child, ast.Call) and _is_db_read(child):
                target = "analytics" if _keyword(child, "analytics") else "replica"
                sites.append(ReadSite(holder, target, _keyword(child, "snapshot")))
            visit(child, name, inside)

    visit(tree, module, False)
    return sites


def _references(module: str, tree: ast.Module) -> set[tuple[str, str]]:
    """`(module, name)` pairs `tree` uses: `alias.name` where the alias is an imported
    repository module, names imported with `from module import name`, and its own module's
    names used bare."""
    aliases: dict[str, str] = {}
    found: set[tuple[str, str]] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                aliases[alias.asname or alias.name] = alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                qualified = f"{node.module}.{alias.name}"
                if _source(qualified):
                    aliases[alias.asname or alias.name] = qualified
                else:
                    found.add((node.module, alias.name))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            target = aliases.get(node.value.id)
            if target is not None:
                found.add((target, node.attr))
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
            found.add((module, node.id))
    return found


def _top_level(module: str, holder: str) -> str:
    """The module-level name holding a site: its function, or for a method its class."""
    return holder.removeprefix(f"{module}.").split(".")[0]


def routing_table() -> dict[str, list[ReadSite]]:
    """Deployable function module → the `db.read` sites it can reach, sorted: those in its own
    module (its routes or job), and those in modules it loads whose holder some loaded code
    names (`module.holder`, an import of it, or a use inside its own module): a module imported
    for something else does not bring its reads along."""
    http, crons = discover_modules()
    table: dict[str, list[ReadSite]] = {}
    for function in [*http, *crons]:
        trees = _closure(function)
        used = {pair for name, tree in trees.items() for pair in _references(name, tree)}
        sites = {
            site
            for name, tree in trees.items()
            for site in read_sites(name, tree)
            # A method's reads come with its class.
            if name == function
            or (name, site.holder.removeprefix(f"{name}.").split(".")[0]) in used
        }
        table[function] = sorted(sites)
    return table


def markdown() -> str:
    """The table as docs/replicas.md shows it: one row per function, primary-only ones too."""
    lines = [
        "| function | reads declared read-only (`db.read`), and where they prefer to read |",
        "|---|---|",
    ]
    for function, sites in routing_table().items():
        reads = "; ".join(
            f"`{site.holder}` → {site.target}{' (snapshot)' if site.snapshot else ''}"
            for site in sites
        )
        lines.append(f"| `{function}` | {reads or 'primary only'} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown())
