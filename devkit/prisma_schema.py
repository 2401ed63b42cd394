"""`prisma validate` and `prisma generate` on `prisma/schema.prisma`, with the pinned Prisma CLI.

What a TypeScript app does with the schema we ship, done in CI so a schema Prisma rejects, or one
it cannot generate a client from, never reaches them (`tests/core/test_prisma_schema.py` holds
the schema to the database; this holds it to Prisma). Runs on a copy of `prisma/` in a temporary
directory, so the generated client never lands in the repository.

Both commands run in Prisma's WebAssembly builds and need no database. The CLI still looks for
its native schema engine (only `migrate` and `db` commands use it) and would download it, so
`PRISMA_SCHEMA_ENGINE_BINARY` points at a stub that refuses: nothing here can migrate anything.

    python -m devkit.prisma_schema    # exit 1 if Prisma rejects the schema

Needs Node.js and npm (`npm ci` in devkit/prisma on first use), so it is a CI step of its own.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from devkit.prisma_ddl import ROOT, TOOL_DIR, install_tools

SCHEMA_DIR = ROOT / "prisma"
PRISMA = TOOL_DIR / "node_modules" / ".bin" / "prisma"
REFUSING_ENGINE = (
    '#!/bin/sh\necho "prisma_schema: the native schema engine is not used here" >&2\nexit 1\n'
)


def prisma(args: list[str], config: Path, engine_stub: Path) -> int:
    """Run the pinned CLI with `config`, no telemetry or update check, the engine stubbed."""
    env = os.environ | {
        "PRISMA_SCHEMA_ENGINE_BINARY": str(engine_stub),
        "CHECKPOINT_DISABLE": "1",
        "PRISMA_HIDE_UPDATE_MESSAGE": "1",
    }
    env.pop("DATABASE_URL", None)  # neither command may need a database
    done = subprocess.run([str(PRISMA), *args, "--config", str(config)], cwd=TOOL_DIR, env=env)
    return done.returncode


def main(argv: list[str] | None = None) -> int:
    del argv
    install_tools()
    with tempfile.TemporaryDirectory(prefix="keyflash-prisma-schema-") as tmp:
        copy = Path(tmp) / "prisma"
        shutil.copytree(SCHEMA_DIR, copy, ignore=shutil.ignore_patterns("generated"))
        stub = Path(tmp) / "schema-engine"
        stub.write_text(REFUSING_ENGINE, encoding="utf-8")
        stub.chmod(0o755)
        config = copy / "prisma.config.ts"
        for command in (["validate"], ["generate"]):
            if prisma(command, config, stub) != 0:
                print(f"prisma_schema: `prisma {command[0]}` failed", file=sys.stderr)
                return 1
        if not (copy / "generated" / "client.ts").is_file():
            print("prisma_schema: `prisma generate` wrote no client", file=sys.stderr)
            return 1
    print("prisma_schema: prisma/schema.prisma validates and generates a client")
    return 0


if __name__ == "__main__":
    sys.exit(main())
