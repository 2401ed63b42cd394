"""Regenerate or check the DDL fixtures: what Prisma's schema engine makes of our two schemas.

- `devkit/prisma/original-schema.prisma` (the original app's schema) →
  `tests/fixtures/prisma/original-ddl.sql`: `tests/core/test_schema_compat.py` checks that our
  Alembic head is that plus documented additions.
- `prisma/schema.prisma` (the shared schema we ship for TypeScript) →
  `tests/fixtures/prisma/shared-ddl.sql`: `tests/core/test_prisma_schema.py` checks that it
  describes the Alembic head exactly, both ways.

The fixtures must be Prisma's own output, not hand copies. This runs Prisma's WebAssembly schema
engine under Node (`devkit/prisma/generate-ddl.mjs`). The engine opens one connection through its
driver adapter, so it gets an embedded PostgreSQL (or `DATABASE_URL`); nothing is written to it.

    python -m devkit.prisma_ddl           # rewrite both fixtures
    python -m devkit.prisma_ddl --check   # exit 1 if a fixture differs from Prisma's output

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
FIXTURES = ROOT / "tests" / "fixtures" / "prisma"
# schema → the fixture holding Prisma's DDL for it
SCHEMAS: dict[Path, Path] = {
    TOOL_DIR / "original-schema.prisma": FIXTURES / "original-ddl.sql",
    ROOT / "prisma" / "schema.prisma": FIXTURES / "shared-ddl.sql",
}


def install_tools() -> None:
    """`npm ci` in devkit/prisma on first use (the pinned engine, adapter and CLI)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        sys.exit("prisma_ddl: Node.js and npm are needed (on Debian: apt-get install nodejs npm)")
    if not (TOOL_DIR / "node_modules").is_dir():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=TOOL_DIR, check=True)


def generate(schema: Path, database_url: str) -> str:
    """Prisma's DDL for `schema`, from an empty database."""
    install_tools()
    done = subprocess.run(
        ["node", "generate-ddl.mjs", os.path.relpath(schema, TOOL_DIR), database_url],
        cwd=TOOL_DIR,
        check=True,
        capture_output=True,
        text=True,
    )
    return done.stdout


def generate_with_some_server() -> dict[Path, str]:
    """Each schema's DDL, against DATABASE_URL when set, else a throwaway embedded PostgreSQL."""
    url = os.environ.get("DATABASE_URL")
    if url:
        return {schema: generate(schema, url) for schema in SCHEMAS}
    with (
        tempfile.TemporaryDirectory(prefix="keyflash-prisma-") as tmp,
        LocalPostgres(Path(tmp) / "pgdata", ephemeral=True) as server,
    ):
        return {schema: generate(schema, server.url()) for schema in SCHEMAS}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devkit.prisma_ddl", description=__doc__)
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args(argv)
    status = 0
    for schema, ddl in generate_with_some_server().items():
        fixture = SCHEMAS[schema].relative_to(ROOT)
        if not ddl.strip():
            print(f"prisma_ddl: the schema engine printed nothing for {fixture}", file=sys.stderr)
            status = 1
        elif not args.check:
            (ROOT / fixture).write_text(ddl, encoding="utf-8")
            print(f"prisma_ddl: wrote {fixture}")
        elif (ROOT / fixture).read_text(encoding="utf-8") != ddl:
            print(
                f"prisma_ddl: {fixture} differs from what Prisma generates; "
                "run `python -m devkit.prisma_ddl` and commit the result",
                file=sys.stderr,
            )
            status = 1
        else:
            print(f"prisma_ddl: {fixture} is Prisma's output")
    return status


if __name__ == "__main__":
    sys.exit(main())
