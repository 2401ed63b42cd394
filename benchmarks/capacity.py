"""The capacity model: from a request mix and a rate, what each part of the stack needs and costs.

Pure arithmetic, no I/O: `benchmarks.capacity_check` measures the inputs (`RouteCost` per route,
`TableCost` per table) on the local stack and checks the outputs against a run at a rate this
machine sustains; `docs/capacity.md` applies it to 1,000 requests/s and 10,000 containers.

The two queueing facts it rests on are Little's law (mean busy servers = arrival rate x time
each arrival holds one):
- server connections busy through the pooler = rate x server-held seconds per request (the
  pooler's transaction time: in transaction mode a server connection is held per transaction);
- containers busy (Lambda concurrency, one pooled client connection each with
  `DB_POOL_SIZE=1`) = rate x handler seconds per request.
Sizing adds headroom on the mean (`UTILISATION`): queues grow without bound as a pool's
utilisation nears 1, so a pool is sized to run at most 70 % busy on average.

Prices and limits live in `PRICES` and `LIMITS`, each with the page it was read from and when.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

DAY_S = 86_400
MONTH_DAYS = 30  # a billing month, as every price below is quoted per month
MONTH_S = MONTH_DAYS * DAY_S
MONTH_H = MONTH_DAYS * 24
# Mean utilisation a pool (server connections, containers, compute) is sized for.
UTILISATION = 0.7
# Retention of the append-only tables: RETENTION_*_DAYS in shared/config.py.
RETENTION_DAYS: dict[str, int] = {"api_usage": 90, "search_history": 400, "system_metrics": 90}
READ_ON = "2026-12-04"  # the day every price and limit below was read


@dataclass(frozen=True)
class Source:
    """A list price or a vendor limit, with where and when it was read."""

    value: float
    unit: str
    url: str
    read_on: str = READ_ON


PRICES: dict[str, Source] = {
    "neon_cu_hour_launch": Source(0.14, "$/CU-hour", "https://neon.com/docs/introduction/plans"),
    "neon_cu_hour_scale": Source(0.26, "$/CU-hour", "https://neon.com/docs/introduction/plans"),
    "neon_storage_gb_month": Source(0.35, "$/GB-month", "https://neon.com/docs/introduction/plans"),
    "upstash_per_100k_commands": Source(
        0.20, "$/100K commands (pay as you go)", "https://upstash.com/docs/redis/overall/billing"
    ),
    "upstash_storage_gb_month": Source(
        0.25, "$/GB-month beyond the first GB", "https://upstash.com/docs/redis/overall/billing"
    ),
    "lambda_per_million_requests": Source(
        0.20, "$/1M requests", "https://aws.amazon.com/lambda/pricing/"
    ),
    "lambda_gb_second_arm": Source(
        0.0000133334, "$/GB-second (arm64)", "https://aws.amazon.com/lambda/pricing/"
    ),
    "lambda_gb_second_x86": Source(
        0.0000166667, "$/GB-second (x86_64)", "https://aws.amazon.com/lambda/pricing/"
    ),
    "apigw_http_per_million": Source(
        1.00,
        "$/1M HTTP API calls (first 300M/month)",
        "https://aws.amazon.com/api-gateway/pricing/",
    ),
    "vercel_per_million_invocations": Source(
        0.60, "$/1M invocations (Pro)", "https://vercel.com/docs/functions/usage-and-pricing"
    ),
    "vercel_active_cpu_hour_iad1": Source(
        0.128, "$/Active CPU hour (iad1)", "https://vercel.com/docs/fluid-compute/pricing"
    ),
    "vercel_memory_gb_hour_iad1": Source(
        0.0106, "$/provisioned GB-hour (iad1)", "https://vercel.com/docs/fluid-compute/pricing"
    ),
}

LIMITS: dict[str, Source] = {
    "neon_pooler_max_client_conn": Source(
        10_000, "client connections per compute", "https://neon.com/docs/connect/connection-pooling"
    ),
    "neon_pool_fraction": Source(
        0.9,
        "default_pool_size = 0.9 x max_connections, per user and database",
        "https://neon.com/docs/connect/connection-pooling",
    ),
    "neon_max_cu": Source(16, "CU autoscaling ceiling", "https://neon.com/docs/introduction/plans"),
    "upstash_max_commands_per_s": Source(
        10_000, "commands/s (pay as you go)", "https://upstash.com/docs/redis/overall/billing"
    ),
    "lambda_concurrency_default": Source(
        1_000,
        "concurrent executions per Region (default quota, raisable)",
        "https://serverlessland.com/content/service/lambda/guides/aws-lambda-operator-guide/scaling-concurrency",
    ),
    "lambda_scaling_per_10s": Source(
        1_000,
        "new execution environments per function every 10 s",
        "https://docs.aws.amazon.com/lambda/latest/dg/scaling-behavior.html",
    ),
}

# Neon's max_connections by compute size (CU), from the connection pooling page in LIMITS.
NEON_MAX_CONNECTIONS: dict[float, int] = {
    0.25: 104,
    0.5: 209,
    1: 419,
    2: 839,
    3: 1258,
    4: 1678,
    5: 2098,
    6: 2517,
    7: 2937,
    8: 3357,
    9: 4000,
    10: 4000,
    12: 4000,
    14: 4000,
    16: 4000,
}
NEON_RESERVED_CONNECTIONS = 7  # for Neon's superuser, same page


@dataclass(frozen=True)
class RouteCost:
    """What one request of a route costs, as measured through the pooler in a warm container.

    `server_ms` is the time a server connection is held per request (PgBouncer's transaction
    time: statements plus any idle-in-transaction gaps); `handler_ms` the wall time the container
    is busy; `cpu_ms` the container's CPU time (Vercel bills Active CPU). `rows` is rows written
    per request, by table, including the request's own `api_usage` row.
    """

    statements: float
    transactions: float
    server_ms: float
    handler_ms: float
    cpu_ms: float
    redis_commands: float
    rows: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class TableCost:
    """Bytes one more row adds to a table, heap and indexes and TOAST (pg_total_relation_size)."""

    bytes_per_row: float
    retention_days: int


@dataclass(frozen=True)
class Platform:
    """Deployment assumptions the cost depends on (stated, not measured)."""

    memory_gb: float = 0.5  # Lambda / Vercel function memory
    # Wall time a request waits in production beyond the local measurement (network round trips
    # to Neon and Upstash; the local stack answers over loopback).
    extra_ms_per_request: float = 0.0
    lambda_gb_second: str = "lambda_gb_second_arm"
    neon_cu_hour: str = "neon_cu_hour_scale"
    # Neon CPU per server-held second: a held connection is not all CPU (network, waits), but
    # sizing as if it were is the safe side (the local check does not measure server CPU).
    db_cpu_per_server_s: float = 1.0


@dataclass(frozen=True)
class TableGrowth:
    """One table's growth at the model's rate, and its size once retention caps it."""

    rows_per_day: float
    bytes_per_day: float
    rows_at_retention: float
    bytes_at_retention: float


@dataclass(frozen=True)
class Capacity:
    """Everything the model derives for one mix at one rate (per second unless named)."""

    rate: float
    statements_per_s: float
    transactions_per_s: float
    server_connections_busy: float  # mean, Little's law
    server_connections_needed: int  # pool size for UTILISATION
    containers_busy: float  # mean concurrency = client connections held busy
    containers_needed: int
    redis_commands_per_s: float
    redis_commands_per_month: float
    tables: dict[str, TableGrowth]
    neon_cu: float  # compute size needed (CPU) at UTILISATION
    neon_cu_for_connections: float  # smallest size whose pool holds server_connections_needed
    storage_gb: float  # the append-only tables at retention
    lambda_gb_seconds_per_month: float
    vercel_cpu_hours_per_month: float
    vercel_memory_gb_hours_per_month: float
    monthly_cost: dict[str, float]


def server_seconds_per_request(mix: Mapping[str, float], routes: Mapping[str, RouteCost]) -> float:
    """Mean server-held seconds per request of the mix (the shares are normalised)."""
    return _mean(mix, routes, lambda cost: cost.server_ms) / 1000


def predicted_knee(pool_size: int, server_s_per_request: float) -> float:
    """Requests/s at which a pooler's server pool is 100 % busy: `pool_size / server s per request`.

    Past it requests queue at the pooler (cl_waiting > 0, wait time grows); below it, at
    UTILISATION of it, queues stay short. The load ramp (benchmarks/ramp.py) compares its knee
    with this one; other limits (server CPU, the load generator's CPU) can bind first.
    """
    if pool_size <= 0 or server_s_per_request <= 0:
        raise ValueError("pool size and server seconds per request must be positive")
    return pool_size / server_s_per_request


def neon_cu_for_connections(connections: int) -> float:
    """The smallest Neon compute whose pooler pool (0.9 x max_connections, less reserved) holds
    `connections` server connections; math.inf when none does."""
    fraction = LIMITS["neon_pool_fraction"].value
    for cu, max_connections in sorted(NEON_MAX_CONNECTIONS.items()):
        usable = min(fraction * max_connections, max_connections - NEON_RESERVED_CONNECTIONS)
        if usable >= connections:
            return cu
    return math.inf


def predict(
    mix: Mapping[str, float],
    rate: float,
    routes: Mapping[str, RouteCost],
    tables: Mapping[str, TableCost],
    *,
    fixed_rows_per_day: Mapping[str, float] | None = None,
    platform: Platform | None = None,
) -> Capacity:
    """What `rate` requests/s in the proportions `mix` (route -> share) need and cost.

    `fixed_rows_per_day` are rows not made by requests (the metrics cron's `system_metrics`).
    """
    if rate < 0:
        raise ValueError("rate must not be negative")
    platform = platform or Platform()
    statements = rate * _mean(mix, routes, lambda c: c.statements)
    transactions = rate * _mean(mix, routes, lambda c: c.transactions)
    server_busy = rate * server_seconds_per_request(mix, routes)
    handler_s = (_mean(mix, routes, lambda c: c.handler_ms) + platform.extra_ms_per_request) / 1000
    containers_busy = rate * handler_s
    redis_per_s = rate * _mean(mix, routes, lambda c: c.redis_commands)
    growth: dict[str, TableGrowth] = {}
    for table, table_cost in tables.items():
        per_request = _mean(mix, routes, _rows_of(table))
        rows_day = rate * per_request * DAY_S + (fixed_rows_per_day or {}).get(table, 0.0)
        growth[table] = TableGrowth(
            rows_per_day=rows_day,
            bytes_per_day=rows_day * table_cost.bytes_per_row,
            rows_at_retention=rows_day * table_cost.retention_days,
            bytes_at_retention=rows_day * table_cost.retention_days * table_cost.bytes_per_row,
        )
    storage_gb = sum(g.bytes_at_retention for g in growth.values()) / 1e9
    server_needed = math.ceil(server_busy / UTILISATION)
    neon_cu = _neon_size(server_busy * platform.db_cpu_per_server_s / UTILISATION)
    requests_month = rate * MONTH_S
    gb_seconds = containers_busy * MONTH_S * platform.memory_gb
    cpu_hours = rate * _mean(mix, routes, lambda c: c.cpu_ms) / 1000 * MONTH_S / 3600
    # Vercel Fluid bills memory for an instance's lifetime; one request at a time per instance
    # (DB_POOL_SIZE=1) makes it the Lambda figure in hours.
    memory_gb_hours = containers_busy * MONTH_H * platform.memory_gb
    cost = {
        "neon_compute": neon_cu * MONTH_H * PRICES[platform.neon_cu_hour].value,
        "neon_storage": storage_gb * PRICES["neon_storage_gb_month"].value,
        "upstash_commands": redis_per_s
        * MONTH_S
        / 100_000
        * PRICES["upstash_per_100k_commands"].value,
        "lambda_requests": requests_month / 1e6 * PRICES["lambda_per_million_requests"].value,
        "lambda_duration": gb_seconds * PRICES[platform.lambda_gb_second].value,
        "api_gateway_http": requests_month / 1e6 * PRICES["apigw_http_per_million"].value,
        "vercel_invocations": requests_month / 1e6 * PRICES["vercel_per_million_invocations"].value,
        "vercel_active_cpu": cpu_hours * PRICES["vercel_active_cpu_hour_iad1"].value,
        "vercel_memory": memory_gb_hours * PRICES["vercel_memory_gb_hour_iad1"].value,
    }
    return Capacity(
        rate=rate,
        statements_per_s=statements,
        transactions_per_s=transactions,
        server_connections_busy=server_busy,
        server_connections_needed=server_needed,
        containers_busy=containers_busy,
        containers_needed=math.ceil(containers_busy / UTILISATION),
        redis_commands_per_s=redis_per_s,
        redis_commands_per_month=redis_per_s * MONTH_S,
        tables=growth,
        neon_cu=neon_cu,
        neon_cu_for_connections=neon_cu_for_connections(server_needed),
        storage_gb=storage_gb,
        lambda_gb_seconds_per_month=gb_seconds,
        vercel_cpu_hours_per_month=cpu_hours,
        vercel_memory_gb_hours_per_month=memory_gb_hours,
        monthly_cost=cost,
    )


def aws_total(capacity: Capacity) -> float:
    """Monthly list cost on AWS Lambda + API Gateway HTTP API, Neon and Upstash."""
    keys = ("lambda_requests", "lambda_duration", "api_gateway_http")
    return _shared_total(capacity) + sum(capacity.monthly_cost[k] for k in keys)


def vercel_total(capacity: Capacity) -> float:
    """Monthly list cost on Vercel Functions (Fluid, Pro), Neon and Upstash."""
    keys = ("vercel_invocations", "vercel_active_cpu", "vercel_memory")
    return _shared_total(capacity) + sum(capacity.monthly_cost[k] for k in keys)


def _shared_total(capacity: Capacity) -> float:
    keys = ("neon_compute", "neon_storage", "upstash_commands")
    return sum(capacity.monthly_cost[k] for k in keys)


def _rows_of(table: str) -> Callable[[RouteCost], float]:
    return lambda cost: cost.rows.get(table, 0.0)


def _neon_size(cu: float) -> float:
    """The smallest Neon compute size (CU) at least `cu`; math.inf beyond the largest."""
    for size in sorted(NEON_MAX_CONNECTIONS):
        if size >= cu:
            return size
    return math.inf


def _mean(
    mix: Mapping[str, float], routes: Mapping[str, RouteCost], value: Callable[[RouteCost], float]
) -> float:
    """The mix-weighted mean of `value(route cost)`; every route in the mix must be measured."""
    total = sum(mix.values())
    if total <= 0:
        raise ValueError("the mix needs at least one route with a positive share")
    missing = [route for route in mix if route not in routes]
    if missing:
        raise KeyError(f"no measured cost for {', '.join(missing)}")
    return sum(share * float(value(routes[route])) for route, share in mix.items()) / total
