"""The error statuses a route's own code can answer, read from its source for the OpenAPI.

A status is answered where the code builds `ApiError(<status>, …)` or `error_response(<status>, …)`
with a literal status, or raises an exception the app maps to an answer (`EmailInUseError` → 409,
through the app's handler, whose code says which). The route's endpoint and dependencies are read,
and every project function they name (`functions.*`, `shared.*`), however deep, so a rate limit
called from a helper (`POST /api/me/export`'s) is declared as surely as one run as a dependency.
Calls through an object's attribute (`self.x()`, `settings.y()`) are not followed: the test
`tests/http/test_openapi_statuses.py` fails when a status is built where no route's reading
reaches it.

Documentation only: read once per app by `shared.http.openapi`, never per request.
"""

from __future__ import annotations

import ast
import importlib
import inspect
from collections import ChainMap
from collections.abc import Callable, Iterable, Mapping
from functools import cache
from types import FunctionType, ModuleType
from typing import Any, TypeGuard

from shared.http.errors import ApiError, error_response

PROJECT = ("functions.", "shared.")
BUILDERS = (ApiError, error_response)  # called with the status as the first argument


def answered(
    calls: Iterable[Callable[..., Any]],
    handlers: Mapping[type[BaseException], Callable[..., Any]],
    home: str,
) -> set[int]:
    """Every status `calls` (a route's endpoint and dependencies) can answer; `handlers` are the
    app's exception handlers, read for what a raised exception of theirs answers; `home` is the
    route's module, read as the project's are."""
    return {status for function in reached(calls, handlers, home) for status in _read(function)[0]}


def reached(
    calls: Iterable[Callable[..., Any]],
    handlers: Mapping[type[BaseException], Callable[..., Any]],
    home: str,
) -> set[FunctionType]:
    """`calls` and every function of the project (or of `home`) they name or raise into."""
    modules = (*PROJECT, f"{home}.")
    seen: set[FunctionType] = set()
    pending = list(calls)
    while pending:
        function = inspect.unwrap(pending.pop())
        if not _read_here(function, modules) or function in seen:
            continue
        seen.add(function)
        _, named, raised = _read(function)
        pending.extend(named)
        pending.extend(_handlers_of(raised, handlers))
    return seen


def _read_here(value: object, modules: tuple[str, ...]) -> TypeGuard[FunctionType]:
    return isinstance(value, FunctionType) and f"{value.__module__}.".startswith(modules)


def _handlers_of(
    raised: Iterable[type[BaseException]],
    handlers: Mapping[type[BaseException], Callable[..., Any]],
) -> list[Callable[..., Any]]:
    return [
        handler
        for kind in raised
        for handled, handler in handlers.items()
        if issubclass(kind, handled) and handled is not ApiError  # ApiError: its literal status
    ]


@cache
def _read(
    function: FunctionType,
) -> tuple[frozenset[int], tuple[FunctionType, ...], tuple[type[BaseException], ...]]:
    """(the literal statuses built, the project functions named, the exception classes raised)."""
    nodes = list(ast.walk(_definition(function)))
    imports = [node for node in nodes if isinstance(node, ast.ImportFrom)]
    closure = dict(inspect.getclosurevars(function).nonlocals)
    names = ChainMap(_local_imports(imports), closure, function.__globals__)
    literal: set[int] = set()
    named: dict[FunctionType, None] = {}
    raised: dict[type[BaseException], None] = {}
    for node in nodes:
        if isinstance(node, ast.Call) and node.args and _resolve(node.func, names) in BUILDERS:
            status = node.args[0]
            if isinstance(status, ast.Constant) and isinstance(status.value, int):
                literal.add(status.value)
        elif isinstance(node, ast.Raise) and node.exc is not None:
            target = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            kind = _resolve(target, names)
            if isinstance(kind, type) and issubclass(kind, BaseException):
                raised[kind] = None
        elif isinstance(node, ast.Name | ast.Attribute):
            value = _resolve(node, names)
            if isinstance(value, FunctionType) and value is not function:
                named[value] = None
    return frozenset(literal), tuple(named), tuple(raised)


def _definition(function: FunctionType) -> ast.AST:
    """The function's node in its module's tree (parsed once per module)."""
    code = function.__code__
    return _definitions(code.co_filename)[code.co_firstlineno]


@cache
def _definitions(filename: str) -> dict[int, ast.AST]:
    """The module's functions and lambdas by first line, as their code objects number it (a
    decorated function's is its first decorator's)."""
    with open(filename, encoding="utf-8") as source:
        tree = ast.parse(source.read(), filename)
    found: dict[int, ast.AST] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            decorators = getattr(node, "decorator_list", [])
            found.setdefault(min([node.lineno, *(d.lineno for d in decorators)]), node)
    return found


def _local_imports(imports: Iterable[ast.ImportFrom]) -> dict[str, Any]:
    """The project names a function imports in its body (`from shared import storage`, done
    there to keep a module off the import path of functions that never need it)."""
    names: dict[str, Any] = {}
    for node in imports:
        if node.module and node.level == 0 and f"{node.module}.".startswith(PROJECT):
            module = importlib.import_module(node.module)
            for alias in node.names:
                value = getattr(module, alias.name, None)
                if value is None:
                    value = importlib.import_module(f"{node.module}.{alias.name}")
                names[alias.asname or alias.name] = value
    return names


def _resolve(node: ast.expr, names: Mapping[str, Any]) -> object:
    """What `name` or `module.name` stands for in the function, else None."""
    if isinstance(node, ast.Name):
        return names.get(node.id)
    if isinstance(node, ast.Attribute):
        owner = _resolve(node.value, names)
        if isinstance(owner, ModuleType):
            return getattr(owner, node.attr, None)
    return None
