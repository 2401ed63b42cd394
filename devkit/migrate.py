"""Schema setup for local databases: `alembic upgrade head`, in-process, over a direct URL."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

ALEMBIC_INI = Path(__file__).resolve().parent.parent / "alembic.ini"


def upgrade_head(direct_url: str, variable: str = "DIRECT_DATABASE_URL") -> Config:
    """Apply every migration to the database at `direct_url` (never a pooler URL).

    Handed to migrations/env.py as the config's `url`, which wins over the environment: the
    developer's own DIRECT_DATABASE_URL (or DATABASE_URL_UNPOOLED) is left as it is; a refusal
    names `variable`, the one it came from. Returns
    the config, whose `attributes` say what the run found (`starting_revision`;
    `adopted_prisma_tables`, set by revision 0001 when it took over a database the original
    app's Prisma schema made)."""
    config = Config(str(ALEMBIC_INI))
    config.attributes["url"] = direct_url
    config.attributes["url_variable"] = variable
    command.upgrade(config, "head")
    return config
