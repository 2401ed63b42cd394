#!/usr/bin/env python3
"""Bootstrap for a fresh clone: `python3 run.py dev` runs the stack, `python3 run.py test` tests.

Standard library only, because it runs before any dependency is installed. It keeps `.venv` in
step with pyproject.toml (a hash stamp inside the venv says when to reinstall), then hands over
to the real command with exec, so signals and the exit code are the command's own.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import NoReturn

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PYTHON = VENV / "bin" / "python"
STAMP = VENV / ".keyflash-pyproject.sha256"
USAGE = "usage: python3 run.py dev | python3 run.py test [pytest args...]"


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


def ensure_venv() -> None:
    """Create .venv on first use and (re)install the project whenever pyproject.toml changed."""
    if not PYTHON.exists():
        print("run.py: creating .venv", flush=True)
        step(
            "creating .venv (on Debian: apt-get install python3-venv)",
            sys.executable, "-m", "venv", str(VENV),
        )  # fmt: skip
        step("upgrading pip", str(PYTHON), "-m", "pip", "install", "--quiet", "--upgrade", "pip")
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text().strip() == digest:
        return
    print("run.py: installing the project and its dev dependencies into .venv", flush=True)
    step("pip install -e .[dev]", str(PYTHON), "-m", "pip", "install", "--quiet", "-e", ".[dev]")
    STAMP.write_text(digest + "\n")


def main(argv: list[str]) -> NoReturn:
    if sys.version_info < (3, 11):  # noqa: UP036 - runs under whatever python3 the user has
        fail(f"Python 3.11 or newer is needed, this is {sys.version.split()[0]}")
    if argv[:1] in (["-h"], ["--help"]):
        print(USAGE)
        sys.exit(0)
    if argv[:1] not in (["dev"], ["test"]):
        print(USAGE, file=sys.stderr)
        sys.exit(2)
    ensure_venv()
    command, rest = argv[0], argv[1:]
    if command == "test":
        program = [str(PYTHON), "-m", "pytest", *rest]
    else:
        program = [str(VENV / "bin" / "keyflash"), "dev", *rest]
    os.chdir(ROOT)  # pytest's rootdir and relative paths are the repo's, wherever we were called
    try:
        os.execv(program[0], program)
    except OSError as error:
        fail(f"could not run {program[0]}: {error}")


if __name__ == "__main__":
    main(sys.argv[1:])
