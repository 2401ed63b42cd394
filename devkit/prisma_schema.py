"""`prisma validate`, `prisma generate` and a client smoke run on `prisma/schema.prisma`.

What a TypeScript app does with the schema we ship, done in CI with the pinned Prisma CLI, so a
schema Prisma rejects, or whose client does not work on our database, never reaches them
(`tests/core/test_prisma_schema.py` holds the schema's DDL to the Alembic head; this holds the
schema to Prisma itself):

1. `prisma validate` and `prisma generate` (the `prisma-client` generator, TypeScript output);
2. `tsc --strict` over the generated client and `devkit/prisma/client-smoke.ts`;
3. that script, under tsx, with the generated client over `@prisma/adapter-pg` against a throwaway
   embedded PostgreSQL migrated by `alembic upgrade head`: it reads every model and checks the
   defaults, the UUID saved-search ids, relations, cascades and the case-insensitive email, and
   on the time-partitioned logs (primary key (id, time)) create, find, update and delete by id,
   and the one thing refused there: upsert.

Everything runs in a temporary directory holding a copy of `prisma/` (its `node_modules` a link to
devkit/prisma's), so nothing is written into the repository. validate and generate run in
Prisma's WebAssembly builds and need no database; the CLI still looks for its native schema
engine (only `migrate` and `db` commands use it) and would download it, so
`PRISMA_SCHEMA_ENGINE_BINARY` points at a stub that refuses: nothing here can migrate anything.

    python -m devkit.prisma_schema    # exit 1 on the first failing step

Needs Node.js and npm (`npm ci` in devkit/prisma on first use), so it is a CI step of its own.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from devkit.migrate import upgrade_head
from devkit.postgres import LocalPostgres
from devkit.prisma_ddl import ROOT, TOOL_DIR, install_tools

SCHEMA_DIR = ROOT / "prisma"
SMOKE = TOOL_DIR / "client-smoke.ts"
BIN = TOOL_DIR / "node_modules" / ".bin"
REFUSING_ENGINE = (
    '#!/bin/sh\necho "prisma_schema: the native schema engine is not used here" >&2\nexit 1\n'
)
TSC_FLAGS = [
    "--noEmit",
    "--strict",
    "--target",
    "es2022",
    "--module",
    "nodenext",
    "--moduleResolution",
    "nodenext",
    "--allowImportingTsExtensions",
    "--skipLibCheck",
]


def run(step: str, command: list[str], cwd: Path, env: dict[str, str]) -> bool:
    """Run one step; say which failed."""
    if subprocess.run(command, cwd=cwd, env=env).returncode == 0:
        return True
    print(f"prisma_schema: {step} failed", file=sys.stderr)
    return False


def workspace(tmp: Path) -> Path:
    """tmp/prisma: a copy of prisma/ plus the smoke script, in an ES-module package whose
    node_modules is devkit/prisma's (the generated client imports @prisma/client from there)."""
    (tmp / "package.json").write_text('{"type": "module"}\n', encoding="utf-8")
    (tmp / "node_modules").symlink_to(TOOL_DIR / "node_modules", target_is_directory=True)
    copy = tmp / "prisma"
    shutil.copytree(SCHEMA_DIR, copy, ignore=shutil.ignore_patterns("generated"))
    shutil.copy(SMOKE, copy / SMOKE.name)
    return copy


def main(argv: list[str] | None = None) -> int:
    del argv
    install_tools()
    with tempfile.TemporaryDirectory(prefix="keyflash-prisma-schema-") as tmp_name:
        tmp = Path(tmp_name)
        copy = workspace(tmp)
        stub = tmp / "schema-engine"
        stub.write_text(REFUSING_ENGINE, encoding="utf-8")
        stub.chmod(0o755)
        env = {key: value for key, value in os.environ.items() if key != "DATABASE_URL"} | {
            "PRISMA_SCHEMA_ENGINE_BINARY": str(stub),
            "CHECKPOINT_DISABLE": "1",  # no telemetry or update check
            "PRISMA_HIDE_UPDATE_MESSAGE": "1",
        }
        config = ["--config", str(copy / "prisma.config.ts")]
        for command in ("validate", "generate"):
            if not run(f"prisma {command}", [str(BIN / "prisma"), command, *config], tmp, env):
                return 1
        if not (copy / "generated" / "client.ts").is_file():
            print("prisma_schema: `prisma generate` wrote no client", file=sys.stderr)
            return 1
        smoke = str(copy / SMOKE.name)
        if not run("tsc --strict", [str(BIN / "tsc"), *TSC_FLAGS, smoke], tmp, env):
            return 1
        with LocalPostgres(tmp / "pgdata", ephemeral=True) as server:
            server.create_database("keyflash_prisma_smoke")
            url = server.url("keyflash_prisma_smoke")
            upgrade_head(url)
            if not run("the client smoke run", [str(BIN / "tsx"), smoke, url], tmp, env):
                return 1
    print("prisma_schema: prisma/schema.prisma validates, generates and works on the Alembic head")
    return 0


if __name__ == "__main__":
    sys.exit(main())
