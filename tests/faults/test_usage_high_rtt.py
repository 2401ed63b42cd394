"""A slow but alive database keeps the pooled connection that carries the `api_usage` rows.

Each request's row is sent after its response and its answer read by the next checkout
(`shared.http.usage`). Across regions that answer is still a round trip away when the next
request comes: the checkout must wait for it rather than replace the connection (a reconnect
costs several round trips), while a silent database is still given up on soon
(tests/faults/test_usage_db_down.py). The database is behind a `DelayProxy` holding every chunk
300 ms each way, longer than ANSWER_GRACE_S; the proxy counts connects. Counts, not timings.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from benchmarks.latency_proxy import DelayProxy
from devkit._host import LOOPBACK
from tests.faults.conftest import FaultApp
from tests.support.http import Caller

pytestmark = pytest.mark.faults

DELAY_MS = 300.0  # each way: a 600 ms round trip, over twice ANSWER_GRACE_S
REQUESTS = 5
USER = "user_usage_far"
ROUTES = [  # a warm read: one statement; a route that needs no database: only its row's
    pytest.param("searches", "GET", "/api/searches", {}, id="read"),
    pytest.param(
        "keywords_related",
        "POST",
        "/api/keywords/related",
        {"json_body": {"keyword": "espresso", "limit": 3}},
        id="no-database",
    ),
]


@pytest.fixture
def far_database(fault_app: FaultApp, monkeypatch: pytest.MonkeyPatch) -> Iterator[DelayProxy]:
    """The app's database 300 ms away each way, in a cold container with one pooled connection."""
    from shared import config, db

    url = urlsplit(fault_app.url)
    assert url.port is not None
    with DelayProxy(LOOPBACK, url.port, DELAY_MS) as proxy:
        netloc = url.netloc.rsplit(":", 1)[0] + f":{proxy.port}"
        monkeypatch.setenv("DATABASE_URL", urlunsplit(url._replace(netloc=netloc)))
        monkeypatch.setenv("DB_POOL_SIZE", "1")  # Lambda's
        monkeypatch.setenv("DB_RETRY_BUDGET_S", "8")  # the default: a connect is 2 round trips
        config.get_settings.cache_clear()
        db.dispose_engine()
        try:
            yield proxy
        finally:
            db.dispose_engine()


@pytest.mark.parametrize(("module", "method", "path", "options"), ROUTES)
def test_back_to_back_requests_keep_their_connection_to_a_far_database(
    fault_app: FaultApp,
    far_database: DelayProxy,
    module: str,
    method: str,
    path: str,
    options: dict[str, Any],
) -> None:
    from shared.http import usage

    call = Caller("lambda_v2", fault_app.keys)
    held = usage.stats["held"]
    # From a thread of its own, as a warm container's next requests: `Caller` reads the row's
    # answer after a call only on the main thread, which would hide the next checkout's wait.
    with ThreadPoolExecutor(1) as container:
        for _ in range(REQUESTS):
            answer = container.submit(call, module, method, path, user=USER, **options).result()
            assert answer.status == 200, answer.text
    usage.flush()  # the last row's answer, read before the table is
    assert far_database.connections == 1  # each checkout waited for the previous answer
    with fault_app.admin() as admin:
        row = admin.execute(
            """SELECT count(*), count(DISTINCT id) FROM api_usage
               WHERE "userId" = %s AND endpoint = %s""",
            (USER, path),
        ).fetchone()
    assert row == (REQUESTS, REQUESTS)  # each row stored once
    assert usage.stats["held"] == held  # none was given up on
