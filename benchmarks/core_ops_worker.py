"""The `core_ops` worker task: each hot repository operation through the core, against the
exact SQL it sends on a bare psycopg connection, in one warm process.

Runs inside `python -m benchmarks.worker core_ops` (function code never runs in the
orchestrator). For every operation:
- the core call is `db.run` / `db.transaction` around the repository function(s), as the
  request paths call them;
- the SQL it sends is captured from the engine (`before_cursor_execute`: statement text and
  driver parameters, `BEGIN; SET LOCAL …` and `COMMIT` included) on a warm-up call, never
  written by hand; the bare side replays it on its own already-open autocommit psycopg
  connection, with the same prepared-statement setting as the engine (the pooler rule);
- writes get fresh values each call (user ids, emails, reservation and event ids) on both
  sides, substituted into the captured parameters, so an insert inserts rather than collides;
- an operation may have an untimed `prepare` step (e.g. emptying the saved-search quota).

Calls are interleaved: every round runs each (operation, side) pair once, in a shuffled order,
so drift and noise hit both sides alike. Medians and p95 per side; the ratio is core / bare.
"""

from __future__ import annotations

import cProfile
import gc
import io
import pstats
import random
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from benchmarks.stats import ratio, summary

# The operations, in report order (the table, then the three it adds).
OPS = (
    "user by id",
    "create user",
    "update tier + Stripe ids",
    "increment usage",
    "reset monthly usage",
    "saved searches, newest 10",
    "history aggregate, 24 h",
    "2-statement transaction",
    "keyword reservation",
    "saved-search create",
    "Stripe webhook transaction",
)


@dataclass
class Op:
    """One operation: `core(values)` runs it through the core; `fresh()` makes the per-call
    values (substituted for the captured ones on the bare side); `prepare()` runs untimed."""

    core: Callable[[dict[str, str]], object]
    fresh: Callable[[], dict[str, str]] = dict
    prepare: Callable[[], None] | None = None
    captured: list[tuple[str, Any]] = field(default_factory=list)
    template: dict[str, str] = field(default_factory=dict)


def _token() -> str:
    return secrets.token_hex(8)


def _swap(value: Any, mapping: dict[str, str]) -> Any:
    if isinstance(value, str):
        return mapping.get(value, value)
    if isinstance(value, dict):
        return {key: _swap(item, mapping) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_swap(item, mapping) for item in value)
    return value


def task_core_ops(params: dict[str, Any]) -> dict[str, Any]:
    """`{n, warmup, history_rows, only?, profile?}` → per-operation timings and ratios."""
    from sqlalchemy import event

    from benchmarks.worker import bare_connection
    from shared import db

    n, warmup = int(params["n"]), int(params["warmup"])
    bare = bare_connection()
    ops = _operations(bare, int(params["history_rows"]))
    wanted = params.get("only") or list(OPS)
    ops = {name: op for name, op in ops.items() if name in wanted}

    engine = db.get_engine()
    sink: list[tuple[str, Any]] | None = None

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, *rest: Any) -> None:
        if sink is not None:
            sink.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", capture)
    for op in ops.values():
        if op.prepare:
            op.prepare()
        op.template = op.fresh()
        sink = op.captured
        op.core(op.template)
        sink = None
    event.remove(engine, "before_cursor_execute", capture)

    def run_core(op: Op) -> float:
        values = op.fresh()
        started = time.perf_counter()
        op.core(values)
        return (time.perf_counter() - started) * 1000

    def run_bare(op: Op) -> float:
        mapping = dict(zip(op.template.values(), op.fresh().values(), strict=True))
        statements = [
            (statement, _swap(parameters, mapping) or None) for statement, parameters in op.captured
        ]
        started = time.perf_counter()
        for statement, parameters in statements:
            cursor = bare.execute(statement, parameters)
            if cursor.description is not None:
                cursor.fetchall()
        return (time.perf_counter() - started) * 1000

    if params.get("profile"):
        return _profile(ops, run_core, n)

    samples: dict[str, dict[str, list[float]]] = {name: {"core": [], "bare": []} for name in ops}
    pairs = [(name, side) for name in ops for side in ("core", "bare")]
    rng = random.Random(14)
    for round_no in range(warmup + n):
        rng.shuffle(pairs)
        if round_no == warmup:
            gc.collect()
        for name, side in pairs:
            op = ops[name]
            if op.prepare:
                op.prepare()
            elapsed = run_core(op) if side == "core" else run_bare(op)
            if round_no >= warmup:
                samples[name][side].append(elapsed)
    bare.close()
    rows: dict[str, Any] = {}
    for name, op in ops.items():
        core, plain = summary(samples[name]["core"]), summary(samples[name]["bare"])
        rows[name] = {
            "core_ms": core,
            "bare_ms": plain,
            "ratio_median": ratio(core["median"], plain["median"]),
            "ratio_p95": ratio(core["p95"], plain["p95"]),
            "statements": [" ".join(s.split())[:120] for s, _ in op.captured],
        }
    return {"ops": rows}


def _profile(ops: dict[str, Op], run_core: Callable[[Op], float], n: int) -> dict[str, Any]:
    """cProfile over `n` core calls of each operation: where the core's time goes."""
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(n):
        for op in ops.values():
            if op.prepare:
                op.prepare()
            run_core(op)
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out).sort_stats("tottime")
    stats.print_stats(40)
    stats.sort_stats("cumulative").print_stats(40)
    return {"profile": out.getvalue()}


def _operations(bare: Any, history_rows: int) -> dict[str, Op]:
    from shared import db
    from shared.clock import utcnow
    from shared.ids import new_uuid
    from shared.models import UserTier
    from shared.quotas import Limits
    from shared.repositories import saved_searches, search_history, subscriptions, users
    from shared.repositories import webhook_events as webhooks
    from shared.repositories.reservations import Hold

    run_id = _token()

    def make_user(label: str, tier: UserTier = UserTier.FREE) -> str:
        user_id = f"user_core_{label}_{run_id}"
        db.run(lambda conn: users.create(conn, user_id, f"{user_id}@bench.test", tier=tier))
        return user_id

    reader = make_user("reader")
    writer = make_user("writer")
    counter = make_user("counter")
    reserver = make_user("reserver", UserTier.PRO)
    lister = make_user("lister")
    creator = make_user("creator")
    subscriber = make_user("subscriber")
    customer = f"cus_core_{run_id}"
    db.run(lambda conn: users.update_user(conn, subscriber, stripe_customer_id=customer))
    search = saved_searches.NewSavedSearch(
        name="bench", keywords=["alpha", "beta", "gamma"], location="US", language="en",
        match_type="phrase", description="core ops",
    )  # fmt: skip
    for _ in range(12):
        db.transaction(lambda conn: saved_searches.create(conn, lister, search))
    _seed_history(bare, history_rows)
    limits = Limits(trial=10**9, pro=10**9, enterprise=10**9)
    subscription = f"sub_core_{run_id}"

    def fresh_user() -> dict[str, str]:
        user_id = f"user_new_{_token()}"
        return {"id": user_id, "email": f"{user_id}@bench.test"}

    def empty_quota() -> None:
        bare.execute('DELETE FROM saved_searches WHERE "userId" = %s', [creator])

    def fresh_hold() -> dict[str, str]:
        return {"hold": new_uuid()}

    def reserve(values: dict[str, str]) -> users.Usage:
        now = utcnow()
        hold = Hold(id=values["hold"], expires_at=now + timedelta(minutes=5))
        return db.run(
            lambda conn: users.reserve_keywords(
                conn, reserver, f"{reserver}@bench.test", 1, limits=limits, enforce=True, now=now,
                hold=hold,
            )
        )  # fmt: skip

    def two_statements(values: dict[str, str]) -> users.Usage:
        def work(conn: Any) -> users.Usage:
            users.get(conn, counter, lock=True)
            return users.increment_usage(conn, counter, 1)

        return db.transaction(work)

    def webhook(values: dict[str, str]) -> object:
        now = utcnow()
        change = subscriptions.SubscriptionChange(
            subscription_id=subscription, status="active", tier=UserTier.PRO,
            customer_id=customer, plan="pro", ends_at=now + timedelta(days=30),
            created_at=now - timedelta(days=1),
        )  # fmt: skip

        def work(conn: Any) -> object:
            user_id = subscriptions.lock_user(conn, [("customer", customer)])  # before the claim
            assert user_id is not None
            if webhooks.claim(conn, values["event"], "customer.subscription.updated", {}) is None:
                return None
            applied = subscriptions.apply_change(conn, user_id, change, event_at=now, now=now)
            webhooks.mark_processed(conn, values["event"], now=now)
            return applied

        return db.transaction(work)

    def since() -> Any:
        return utcnow() - timedelta(hours=24)

    return {
        "user by id": Op(lambda v: db.run(lambda conn: users.get(conn, reader), idempotent=True)),
        "create user": Op(
            lambda v: db.run(lambda conn: users.create(conn, v["id"], v["email"])), fresh=fresh_user
        ),
        "update tier + Stripe ids": Op(
            lambda v: db.run(
                lambda conn: users.update_user(
                    conn,
                    writer,
                    tier=UserTier.PRO,
                    stripe_customer_id=f"cus_w_{run_id}",
                    stripe_subscription_id=f"sub_w_{run_id}",
                )
            )
        ),
        "increment usage": Op(
            lambda v: db.run(lambda conn: users.increment_usage(conn, counter, 1))
        ),
        "reset monthly usage": Op(
            lambda v: db.run(lambda conn: users.reset_monthly_usage(conn, counter))
        ),
        "saved searches, newest 10": Op(
            lambda v: db.run(
                lambda conn: saved_searches.list_for_user(conn, lister, limit=10), idempotent=True
            )
        ),
        "history aggregate, 24 h": Op(
            lambda v: db.run(
                lambda conn: search_history.stats(conn, since=since()), idempotent=True
            )
        ),
        "2-statement transaction": Op(two_statements),
        "keyword reservation": Op(reserve, fresh=fresh_hold),
        "saved-search create": Op(
            lambda v: db.transaction(
                lambda conn: saved_searches.create(conn, creator, search, search_id=v["id"])
            ),
            fresh=lambda: {"id": new_uuid()},
            prepare=empty_quota,
        ),
        "Stripe webhook transaction": Op(webhook, fresh=lambda: {"event": f"evt_{_token()}"}),
    }


def _seed_history(bare: Any, rows: int) -> None:
    """`rows` search_history rows spread over the last 24 h, over three providers."""
    bare.execute(
        """
        INSERT INTO search_history (id, keywords, location, language, "matchType", provider,
            "cacheHit", "responseTime", "keywordCount", "avgVolume", "totalVolume", "searchedAt")
        SELECT 'core' || g || md5(random()::text), ARRAY['kw' || (g %% 50)], 'US', 'en', 'phrase',
               (ARRAY['mock', 'google-ads', 'dataforseo'])[1 + g %% 3], g %% 4 = 0,
               50 + g %% 400, 1, 100, 100,
               now() - make_interval(secs => (g * 86000.0 / %s))
        FROM generate_series(1, %s) AS g
        """,
        [rows, rows],
    )
    bare.execute("ANALYZE search_history")
