"""`keyflash package`: each function's Lambda package as a directory, built as the deploy builds it.

What goes in follows serverless.yml: `package.patterns` then the function's own patterns (later
patterns win, `!` excludes), then what serverless-python-requirements adds: the distributions
pinned in its `fileName` (requirements-lambda.txt), less `noDeploy` (by top-level name, as the
plugin filters), less what `slim` strips (its default patterns and/or `slimPatterns`). Last,
every module is compiled by this interpreter (devkit/bytecode.py), as
devkit/serverless/bytecode.js does to the deployed zips.

No AWS, no Docker, no network: dependencies are copied from this interpreter's environment,
which must be of the runtime's Python (its compiled extensions carry that version's tag) and hold
exactly the pinned versions (run.py installs every venv under the pins), so the tree holds the
deploy's distributions at the deploy's versions. Only compiled extensions differ: the deploy
fetches aarch64 wheels, a venv has its own machine's.

`--out` may be a folder holding anything: a build writes only `OUT/<function>/` and replaces such
a folder only when a build made it (it holds MARKER); any other is refused before anything changes.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
BYTECODE = ROOT / "devkit" / "bytecode.py"
# In every function folder a build writes: the only folders a later build may delete.
MARKER = ".keyflash-package"
# Never walked for sources: none of them can match a pattern that ships.
_SKIP_DIRS = frozenset({".git", "node_modules", ".serverless", ".keyflash", "build"})
# serverless-python-requirements' default `slim` patterns (`slimPatterns` append to them unless
# `slimPatternsAppendDefaults: false`); a pattern matching a directory removes all of it.
SLIM_DEFAULTS = ("**/*.py[c|o]", "**/__pycache__*", "**/*.dist-info*")


@dataclass(frozen=True)
class Descriptor:
    """What serverless.yml says about packaging."""

    runtime: str  # "3.12"
    patterns: list[str]
    functions: dict[str, list[str]]  # name -> its own package patterns
    requirements: str  # the file the plugin installs (`fileName`), relative to the root
    no_deploy: frozenset[str]
    slim: list[str]  # the patterns slim deletes (none when slim is off)


def read_descriptor(root: Path = ROOT) -> Descriptor:
    config: dict[str, Any] = yaml.safe_load((root / "serverless.yml").read_text())
    runtime = str(config["provider"]["runtime"]).removeprefix("python")
    requirements = config.get("custom", {}).get("pythonRequirements", {})
    slim: list[str] = []
    if requirements.get("slim", False):
        defaults = str(requirements.get("slimPatternsAppendDefaults", True)).lower() != "false"
        slim = [*(SLIM_DEFAULTS if defaults else ()), *requirements.get("slimPatterns", [])]
    return Descriptor(
        runtime=runtime,
        patterns=list(config.get("package", {}).get("patterns", [])),
        functions={
            name: list((spec.get("package") or {}).get("patterns", []))
            for name, spec in config["functions"].items()
        },
        requirements=str(requirements.get("fileName", "requirements.txt")),
        no_deploy=frozenset(requirements.get("noDeploy", [])),
        slim=slim,
    )


def lambda_markers(runtime: str) -> dict[str, str]:
    """The environment markers of the Lambda runtime (CPython `runtime` on arm64 Linux:
    serverless.yml's provider), so a dependency closure is the deploy's whatever venv reads it."""
    return {
        "python_version": runtime,
        "python_full_version": f"{runtime}.0",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "os_name": "posix",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": "aarch64",
    }


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """A Serverless (micromatch) glob as a regex, for the forms serverless.yml uses."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def select(paths: Iterable[str], patterns: list[str]) -> list[str]:
    """The paths the patterns keep: each path's last matching pattern decides."""
    rules = [(p.startswith("!"), _glob_regex(p.removeprefix("!"))) for p in patterns]
    kept = []
    for path in paths:
        keep = False
        for negated, regex in rules:
            if regex.match(path):
                keep = not negated
        if keep:
            kept.append(path)
    return sorted(kept)


def _walk(root: Path) -> Iterator[str]:
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = [d for d in subdirs if d not in _SKIP_DIRS and not d.startswith(".venv")]
        for name in files:
            yield (Path(directory) / name).relative_to(root).as_posix()


def read_requirements(path: Path) -> list[Requirement]:
    """A requirements file's requirements (comments and blank lines skipped)."""
    lines = (line.split("#")[0].strip() for line in path.read_text().splitlines())
    return [Requirement(line) for line in lines if line]


def closure(
    requirements: Iterable[Requirement], markers: dict[str, str]
) -> dict[str, importlib.metadata.Distribution]:
    """The installed distributions the requirements pull in, by canonical name: extras
    followed, markers evaluated in `markers`' environment."""
    wanted: dict[str, set[str]] = {}
    queue = [r for r in requirements if r.marker is None or r.marker.evaluate(markers)]
    while queue:
        requirement = queue.pop()
        name = canonicalize_name(requirement.name)
        extras = set(requirement.extras)
        if name in wanted and extras <= wanted[name]:
            continue
        wanted.setdefault(name, set()).update(extras)
        for spec in importlib.metadata.distribution(name).requires or []:
            sub = Requirement(spec)
            active = {"", *wanted[name]}
            if sub.marker is None or any(
                sub.marker.evaluate({**markers, "extra": e}) for e in active
            ):
                queue.append(sub)
    return {name: importlib.metadata.distribution(name) for name in sorted(wanted)}


def dependency_files(
    requirements: Path, no_deploy: frozenset[str], slim: list[str], markers: dict[str, str]
) -> dict[str, Path]:
    """Every file the pinned requirements install (package-relative path -> installed file),
    from this interpreter's environment, with the plugin's noDeploy and slim filters applied.

    Raises RuntimeError unless the environment holds exactly the pinned versions and the pins
    name everything they pull in: pip would install another version, or an unpinned one, and
    the tree would no longer be what the deploy ships."""
    pins: dict[str, Requirement] = {  # the plugin drops a noDeploy requirement's line first
        canonicalize_name(r.name): r
        for r in read_requirements(requirements)
        if r.name not in no_deploy
    }
    distributions = closure(pins.values(), markers)
    unpinned = sorted(set(distributions) - set(pins))
    if unpinned:
        raise RuntimeError(
            f"not pinned in {requirements.name}: {', '.join(unpinned)} (the deploy would "
            "install whichever version is newest): add them with their versions"
        )
    wrong = [
        f"{name} {dist.version} installed, {pins[name]} pinned"
        for name, dist in distributions.items()
        if not pins[name].specifier.contains(dist.version, prereleases=True)
    ]
    if wrong:
        raise RuntimeError(
            f"this environment does not hold the versions the deploy installs: {'; '.join(wrong)}"
            f" (install them: {sys.executable} -m pip install -c {requirements} -e '.[dev]')"
        )
    slimmed = [_glob_regex(pattern) for pattern in slim]
    files: dict[str, Path] = {}
    for distribution in distributions.values():
        for record in distribution.files or []:
            relative = record.as_posix()
            top = re.split(r"[-\\/]|\.py$|\.pyc$", relative, maxsplit=1)[0]
            if relative.startswith("..") or top in no_deploy or _matches(relative, slimmed):
                continue
            files[relative] = Path(str(distribution.locate_file(record)))
    return files


def _matches(relative: str, regexes: list[re.Pattern[str]]) -> bool:
    """Whether a pattern matches the file or one of its directories (deleted with its files)."""
    parts = relative.split("/")
    prefixes = ["/".join(parts[:end]) for end in range(1, len(parts) + 1)]
    return any(regex.match(prefix) for regex in regexes for prefix in prefixes)


def runtime_python(version: str) -> str:
    """An interpreter of the runtime's version: this one, `$PYTHON_BIN`, `pythonX.Y` on PATH,
    or pyenv's. Raises RuntimeError when there is none."""
    candidates = [sys.executable, os.environ.get("PYTHON_BIN", ""), f"python{version}"]
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    candidates += [str(p) for p in sorted(pyenv.glob(f"{version}*/bin/python3"), reverse=True)]
    for candidate in filter(None, candidates):
        found = shutil.which(candidate)
        if found and _version_of(found) == version:
            return found
    raise RuntimeError(
        f"no Python {version} found (the Lambda runtime's); install it (pyenv install {version}) "
        "or name one with --python"
    )


def _version_of(python: str) -> str | None:
    try:
        done = subprocess.run(
            [python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def build(
    out: Path, functions: list[str] | None = None, *, runtime: str | None = None
) -> dict[str, Path]:
    """Build `out/<function>/` for each function (default: all); {function: its tree}.

    For Python `runtime` (default: serverless.yml's; the benchmark runs the trees on another
    version), which must be this interpreter's. Everything is compiled once in a staging folder
    inside `out` and hard-linked into the trees. Raises ValueError, before anything is written,
    when a function folder in `out` is not a previous build's.
    """
    descriptor = read_descriptor()
    names = functions or list(descriptor.functions)
    unknown = sorted(set(names) - set(descriptor.functions))
    if unknown:
        raise ValueError(f"not a function in serverless.yml: {', '.join(unknown)}")
    foreign = [problem for name in names if (problem := _not_a_build(out / name))]
    if out.exists() and not out.is_dir():
        foreign.insert(0, f"{out} is not a folder")
    if foreign:
        raise ValueError(
            f"{'; '.join(foreign)}: nothing was changed (keyflash package replaces only the "
            f"folders it built, which hold {MARKER}); move them away or choose another --out"
        )
    version = runtime or descriptor.runtime
    _require_python(version)
    sources = list(_walk(ROOT))
    own = {n: select(sources, descriptor.patterns + descriptor.functions[n]) for n in names}
    deps = dependency_files(
        ROOT / descriptor.requirements,
        descriptor.no_deploy,
        descriptor.slim,
        lambda_markers(descriptor.runtime),
    )
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".keyflash-staging-", dir=out))
    try:
        return _assemble(out, staging, version, deps, own)
    finally:
        shutil.rmtree(staging)


def _not_a_build(tree: Path) -> str | None:
    """Why `tree` may not be replaced, or None: absent, or a folder (not a link) a build made."""
    if tree.is_symlink():
        return f"{tree} is a symbolic link"
    if tree.exists() and not (tree.is_dir() and (tree / MARKER).is_file()):
        return f"{tree} exists and was not built by keyflash package"
    return None


def _require_python(version: str) -> None:
    """Raise RuntimeError unless this interpreter is Python `version`: the tree's compiled
    extensions are this environment's, and another version's do not import there."""
    running = f"{sys.version_info[0]}.{sys.version_info[1]}"
    if running == version:
        return
    try:
        python = runtime_python(version)
    except RuntimeError:
        python = f"/path/to/python{version}"
    raise RuntimeError(
        f"this environment is Python {running} ({sys.executable}) but the package is for "
        f"Python {version}: its compiled extensions would be {running}'s and would not import "
        f"there. Build it from a Python {version} environment: `python3 run.py --python {python} "
        f"test --collect-only -q` makes .venv-{version}, then run "
        f"`.venv-{version}/bin/keyflash package …`"
    )


def _assemble(
    out: Path, staging: Path, version: str, deps: dict[str, Path], own: dict[str, list[str]]
) -> dict[str, Path]:
    """Stage and compile every file once, then replace each `out/<function>/` with its tree."""
    staged: set[str] = set()
    for relative, source in [*deps.items(), *((p, ROOT / p) for f in own.values() for p in f)]:
        if relative not in staged:
            target = staging / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
            staged.add(relative)
    subprocess.run(
        [sys.executable, str(BYTECODE), "--runtime", version, "--tree", str(staging)],
        check=True,
    )
    trees = {}
    for name, files in own.items():
        tree = out / name
        problem = _not_a_build(tree)  # again: something may have appeared while compiling
        if problem:
            raise ValueError(f"{problem}: left as it is; move it away or choose another --out")
        if tree.exists():
            shutil.rmtree(tree)  # never follows a symbolic link inside it
        tree.mkdir()
        (tree / MARKER).write_text(
            "Built by `keyflash package`: a later build into this folder replaces all of it.\n"
        )
        for relative in [*deps, *files]:
            _link(staging / relative, tree / relative)
            if relative.endswith(".py"):
                path = Path(relative)
                for pyc in (staging / path.parent / "__pycache__").glob(f"{path.stem}.*.pyc"):
                    _link(pyc, tree / path.parent / "__pycache__" / pyc.name)
        trees[name] = tree
    return trees


def _link(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
