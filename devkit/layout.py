"""Where things are in the repository, and which modules are functions (standard library only,
so commands that time a function's cold start have not imported its libraries already)."""

from __future__ import annotations

import pkgutil
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
FUNCTIONS_DIR = REPO_ROOT / "functions"
FUNCTIONS_PACKAGE = "functions"
CRON_PACKAGE = "cron"
CRON_DIR = FUNCTIONS_DIR / CRON_PACKAGE
VERCEL_JSON = REPO_ROOT / "vercel.json"


def http_functions(directory: Path = FUNCTIONS_DIR) -> list[str]:
    """Names of the HTTP function modules: `functions/<name>.py` (`_private` modules and
    packages such as `cron/` are not endpoints)."""
    return sorted(
        info.name
        for info in pkgutil.iter_modules([str(directory)])
        if not info.ispkg and not info.name.startswith("_")
    )


def cron_modules(directory: Path = CRON_DIR) -> list[str]:
    """Names of the scheduled jobs: `functions/cron/<job>.py`; [] while the package is absent."""
    if not directory.is_dir():
        return []
    return sorted(
        info.name
        for info in pkgutil.iter_modules([str(directory)])
        if not info.ispkg and not info.name.startswith("_")
    )
