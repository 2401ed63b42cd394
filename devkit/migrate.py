"""Schema setup for local databases: `alembic upgrade head`, in-process, over a direct URL."""

from __future__ import annotations

import os
from pathlib import Path

from alembic import command
from alembic.config import Config

ALEMBIC_INI = Path(__file__).resolve().parent.parent / "alembic.ini"


def upgrade_head(direct_url: str) -> None:
    """Apply every migration to the database at `direct_url` (never a pooler URL).

    migrations/env.py reads DIRECT_DATABASE_URL, so it is set for the call and restored after.
    """
    previous = os.environ.get("DIRECT_DATABASE_URL")
    os.environ["DIRECT_DATABASE_URL"] = direct_url
    try:
        command.upgrade(Config(str(ALEMBIC_INI)), "head")
    finally:
        if previous is None:
            del os.environ["DIRECT_DATABASE_URL"]
        else:
            os.environ["DIRECT_DATABASE_URL"] = previous
