#!/usr/bin/env python3
"""Bootstrap for a fresh clone: `python3 run.py dev` runs the stack, `python3 run.py test` tests.

Standard library only, because it runs before any dependency is installed. It keeps `.venv` in
step with pyproject.toml and requirements-lambda.txt (a hash stamp inside the venv says when to
reinstall), installing under the Lambda's pins so the tests run the versions that ship, then
hands over to the real command with exec, so signals and the exit code are the command's own.

`--python PATH` (or `KEYFLASH_PYTHON=PATH`) picks another interpreter, e.g. the 3.12 that Lambda
and Vercel run: its environment is `.venv-3.12` beside `.venv`, so both can be kept.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import NoReturn

ROOT = Path(__file__).resolve().parent
USAGE = "usage: python3 run.py [--python PATH] dev | test [pytest args...]"
# What every Lambda zip installs (serverless.yml `fileName`); the venvs get the same versions.
PINS = "requirements-lambda.txt"


def fail(message: str) -> NoReturn:
    sys.exit(f"run.py: {message}")


def step(what: str, *command: str) -> None:
    """Run one setup command, turning any failure into a one-line error."""
    try:
        subprocess.run(command, check=True, cwd=ROOT)
    except subprocess.CalledProcessError as error:
        fail(f"{what} failed (exit {error.returncode}); see the output above")
    except OSError as error:
        fail(f"{what} failed: {error}")


def interpreter_version(interpreter: str) -> tuple[int, int]:
    """`(major, minor)` of another interpreter, asked by running it."""
    try:
        done = subprocess.run(
            [interpreter, "-c", "import sys; print(*sys.version_info[:2])"],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
    except (OSError, subprocess.CalledProcessError) as error:
        fail(f"cannot run the interpreter {interpreter!r}: {error}")
    major, minor = done.stdout.split()
    return int(major), int(minor)


def choose_venv(interpreter: str | None) -> tuple[str, Path]:
    """The interpreter that builds the venv, and the venv: `.venv`, or `.venv-X.Y` for another."""
    if interpreter is None:
        return sys.executable, ROOT / ".venv"
    major, minor = interpreter_version(interpreter)
    if (major, minor) < (3, 11):
        fail(f"Python 3.11 or newer is needed, {interpreter} is {major}.{minor}")
    return interpreter, ROOT / f".venv-{major}.{minor}"


def ensure_venv(interpreter: str, venv: Path) -> Path:
    """Create the venv on first use and (re)install the project whenever pyproject.toml or the
    pins changed.

    Returns the venv's python.
    """
    python = venv / "bin" / "python"
    stamp = venv / ".keyflash-pyproject.sha256"
    if not python.exists():
        print(f"run.py: creating {venv.name}", flush=True)
        step(
            f"creating {venv.name} (on Debian: apt-get install python3-venv)",
            interpreter, "-m", "venv", str(venv),
        )  # fmt: skip
        step("upgrading pip", str(python), "-m", "pip", "install", "--quiet", "--upgrade", "pip")
    digest = hashlib.sha256(
        (ROOT / "pyproject.toml").read_bytes() + (ROOT / PINS).read_bytes()
    ).hexdigest()
    if stamp.exists() and stamp.read_text().strip() == digest:
        return python
    print(f"run.py: installing the project and its dev dependencies into {venv.name}", flush=True)
    step(
        f"pip install -c {PINS} -e .[dev]",
        str(python), "-m", "pip", "install", "--quiet", "-c", PINS, "-e", ".[dev]",
    )  # fmt: skip
    stamp.write_text(digest + "\n")
    return python


def main(argv: list[str]) -> NoReturn:
    if sys.version_info < (3, 11):  # noqa: UP036 - runs under whatever python3 the user has
        fail(f"Python 3.11 or newer is needed, this is {sys.version.split()[0]}")
    if argv[:1] in (["-h"], ["--help"]):
        print(USAGE)
        sys.exit(0)
    interpreter = os.environ.get("KEYFLASH_PYTHON") or None
    if argv[:1] == ["--python"] and len(argv) > 1:
        interpreter, argv = argv[1], argv[2:]
    if argv[:1] not in (["dev"], ["test"]):
        print(USAGE, file=sys.stderr)
        sys.exit(2)
    python = ensure_venv(*choose_venv(interpreter))
    command, rest = argv[0], argv[1:]
    if command == "test":
        program = [str(python), "-m", "pytest", *rest]
    else:
        program = [str(python.parent / "keyflash"), "dev", *rest]
    os.chdir(ROOT)  # pytest's rootdir and relative paths are the repo's, wherever we were called
    try:
        os.execv(program[0], program)
    except OSError as error:
        fail(f"could not run {program[0]}: {error}")


if __name__ == "__main__":
    main(sys.argv[1:])
