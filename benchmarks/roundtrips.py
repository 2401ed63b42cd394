"""3. Database round trips per request, for every endpoint.

A worker invokes each endpoint's handler twice: in a fresh container (engine, provisioned users,
flag snapshot, health cache all forgotten) and warm. Statements are counted with SQLAlchemy's
`before_cursor_execute` — the engine runs in autocommit, so each is one round trip, and
`BEGIN; SET LOCAL …` is one message — and transactions are the `BEGIN`s among them. Upstash
calls and new connections are counted alongside, and so are the `api_usage` rows sent after the
response without waiting for the answer (`usage_sent_after`, `shared.http.usage`): they travel
on the connection but no request waits for them. Routes nobody wrote a scenario for are still
called (generically) and listed, so a new endpoint cannot hide from this table.
"""

from __future__ import annotations

from typing import Any

from benchmarks.core import Context, run_worker, target


def run(ctx: Context) -> dict[str, Any]:
    env = ctx.stack.app_env(RATE_LIMIT_REQUESTS_PER_HOUR="1000000000")
    result = run_worker(
        "roundtrips", {"private_pem": ctx.stack.private_pem, "fixtures": ctx.fixtures}, env
    )
    endpoints = {row["name"]: row for row in result["endpoints"]}

    def warm(name: str) -> int | None:
        row = endpoints.get(name, {})
        return row.get("warm", {}).get("statements") if "error" not in row else None

    hit, miss = warm("POST /api/keywords (cache hit)"), warm("POST /api/keywords (cache miss)")
    listing = warm("GET /api/searches")
    listing_warm = endpoints.get("GET /api/searches", {}).get("warm", {})
    listing_sql = listing_warm.get("sql", [])
    sent_after = listing_warm.get("usage_sent_after", 0)
    verdicts = [
        target(
            "<= 2 DB round trips for a keyword search",
            None if hit is None or miss is None else max(hit, miss) <= 2,
            f"cache hit {hit}, cache miss {miss} (warm container)",
            reason="" if hit is not None and miss is not None else "scenario failed",
        ),
        target(
            "1 DB round trip for list searches",
            None if listing is None else listing <= 1,
            f"{listing} (warm container): {', '.join(listing_sql)}; then its api_usage row "
            f"sent after the response, not waited for ({sent_after} row)",
            detail=_extra_statements(listing, listing_sql),
        ),
    ]
    errors = {name: row["error"] for name, row in endpoints.items() if "error" in row}
    return {
        "endpoints": result["endpoints"],
        "generic_routes": result["generic"],
        "errors": errors,
        "targets": verdicts,
    }


def _extra_statements(count: int | None, sql: list[str]) -> str:
    if count is None or count <= 1:
        return ""
    extra = [kind for kind in sql if "api_usage" in kind]
    if extra:
        return (
            "besides the query, the request waited for its api_usage row's INSERT: "
            "shared.http.usage should send it after the response without waiting"
        )
    return f"statements: {', '.join(sql)}"
