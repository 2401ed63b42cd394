"""Regenerate or check the reference DDL: what Prisma's schema engine makes of the original schema.

`tests/core/test_schema_compat.py` compares our Alembic head with this DDL, so the fixture must be
Prisma's own output, not a hand copy. This runs Prisma's WebAssembly schema engine under Node
(`devkit/prisma/generate-ddl.mjs`) on `devkit/prisma/original-schema.prisma`. The engine opens one
connection through its driver adapter, so it gets an embedded PostgreSQL (or `DATABASE_URL`);
nothing is written to it.

    python -m devkit.prisma_ddl           # rewrite tests/fixtures/prisma/original-ddl.sql
    python -m devkit.prisma_ddl --check   # exit 1 if the fixture differs from Prisma's output

Needs Node.js and npm (`npm ci` fetches the engine on first use), so it is a CI step of its own,
not a test: the test suite only reads the committed fixture.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from devkit.postgres import LocalPostgres

ROOT = Path(__file__).resolve().parent.parent
TOOL_DIR = ROOT / "devkit" / "prisma"
SCHEMA = TOOL_DIR / "original-schema.prisma"
FIXTURE = ROOT / "tests" / "fixtures" / "prisma" / "original-ddl.sql"


def generate(database_url: str) -> str:
    """Prisma's DDL for the original schema, from an empty database."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        sys.exit("prisma_ddl: Node.js and npm are needed (on Debian: apt-get install nodejs npm)")
    if not (TOOL_DIR / "node_modules").is_dir():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=TOOL_DIR, check=True)
    done = subprocess.run(
        ["node", "generate-ddl.mjs", str(SCHEMA.relative_to(TOOL_DIR)), database_url],
        cwd=TOOL_DIR,
        check=True,
        capture_output=True,
        text=True,
    )
    return done.stdout


def generate_with_some_server() -> str:
    """`generate` against DATABASE_URL when set, else a throwaway embedded PostgreSQL."""
    url = os.environ.get("DATABASE_URL")
    if url:
        return generate(url)
    with (
        tempfile.TemporaryDirectory(prefix="keyflash-prisma-") as tmp,
        LocalPostgres(Path(tmp) / "pgdata", ephemeral=True) as server,
    ):
        return generate(server.url())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devkit.prisma_ddl", description=__doc__)
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args(argv)
    ddl = generate_with_some_server()
    if not ddl.strip():
        print("prisma_ddl: the schema engine printed nothing", file=sys.stderr)
        return 1
    if args.check:
        if FIXTURE.read_text(encoding="utf-8") != ddl:
            print(
                f"prisma_ddl: {FIXTURE.relative_to(ROOT)} differs from what Prisma generates; "
                "run `python -m devkit.prisma_ddl` and commit the result",
                file=sys.stderr,
            )
            return 1
        print(f"prisma_ddl: {FIXTURE.relative_to(ROOT)} is Prisma's output")
        return 0
    FIXTURE.write_text(ddl, encoding="utf-8")
    print(f"prisma_ddl: wrote {FIXTURE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
