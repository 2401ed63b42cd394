"""List pages bounded in bytes as well as in items.

A page of rows whose size another writer or the data decides (history keywords, flags' users)
stops at PAGE_BUDGET_BYTES, so it fits both platforms' answers (Vercel 4.5 MB, Lambda 6 MB;
docs/export-and-platform-limits.md); the rest comes with the next page.
"""

from __future__ import annotations

from typing import Any

from shared.http.responses import render_json

PAGE_BUDGET_BYTES = 3_000_000


def within_budget(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The leading `items` whose JSON (with a comma each) comes to at most PAGE_BUDGET_BYTES;
    the first always goes, so a page is never empty."""
    spent = 0
    for count, item in enumerate(items):
        spent += len(render_json(item)) + 1
        if count and spent > PAGE_BUDGET_BYTES:
            return items[:count]
    return items
