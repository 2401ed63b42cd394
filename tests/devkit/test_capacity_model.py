"""The capacity model's arithmetic (benchmarks/capacity.py): hand-computed cases a wrong formula
would miss. Pure: no database, no timing; the model is checked against measurements by the
benchmark's capacity section, not here."""

from __future__ import annotations

import math
from typing import Any

import pytest

from benchmarks import capacity, capacity_worker
from benchmarks.capacity import Platform, RouteCost, TableCost, predict, predicted_knee
from benchmarks.capacity_check import MIX, sequence
from benchmarks.capacity_worker import redis_commands

READ = RouteCost(
    statements=2,
    transactions=2,
    server_ms=4,
    handler_ms=20,
    cpu_ms=10,
    redis_commands=1,
    rows={"api_usage": 1},
)
WRITE = RouteCost(
    statements=6,
    transactions=3,
    server_ms=12,
    handler_ms=60,
    cpu_ms=30,
    redis_commands=3,
    rows={"api_usage": 1, "search_history": 1},
)
ROUTES = {"read": READ, "write": WRITE}
TABLES = {
    "api_usage": TableCost(bytes_per_row=200, retention_days=90),
    "search_history": TableCost(bytes_per_row=500, retention_days=400),
}


def test_rates_are_the_rate_times_the_mix_weighted_mean_per_request() -> None:
    # 3:1 read:write -> 3.0 statements, 2.25 transactions, 1.5 Upstash commands per request.
    result = predict({"read": 3, "write": 1}, 100, ROUTES, TABLES)

    assert result.statements_per_s == pytest.approx(300)
    assert result.transactions_per_s == pytest.approx(225)
    assert result.redis_commands_per_s == pytest.approx(150)
    assert result.redis_commands_per_month == pytest.approx(150 * 30 * 86_400)


def test_shares_are_normalised() -> None:
    counts = predict({"read": 300, "write": 100}, 50, ROUTES, TABLES)
    shares = predict({"read": 0.75, "write": 0.25}, 50, ROUTES, TABLES)

    assert counts == shares


def test_connections_and_containers_follow_littles_law_with_the_stated_headroom() -> None:
    # Mean server-held time 0.75 * 4 + 0.25 * 12 = 6 ms; handler time 30 ms.
    result = predict({"read": 3, "write": 1}, 1000, ROUTES, TABLES)

    assert result.server_connections_busy == pytest.approx(6.0)
    assert result.server_connections_needed == math.ceil(6.0 / capacity.UTILISATION) == 9
    assert result.containers_busy == pytest.approx(30.0)
    assert result.containers_needed == math.ceil(30.0 / capacity.UTILISATION) == 43


def test_table_growth_per_day_and_at_retention() -> None:
    # 1,000 requests/s, one api_usage row each: 86.4M rows a day, 90 days kept.
    result = predict({"read": 1}, 1000, ROUTES, TABLES)
    usage = result.tables["api_usage"]

    assert usage.rows_per_day == pytest.approx(86_400_000)
    assert usage.bytes_per_day == pytest.approx(86_400_000 * 200)
    assert usage.rows_at_retention == pytest.approx(86_400_000 * 90)
    assert usage.bytes_at_retention == pytest.approx(86_400_000 * 90 * 200)
    assert result.tables["search_history"].rows_per_day == 0
    assert result.storage_gb == pytest.approx(86_400_000 * 90 * 200 / 1e9)


def test_rows_not_made_by_requests_are_added_per_day() -> None:
    tables = TABLES | {"system_metrics": TableCost(bytes_per_row=300, retention_days=90)}
    result = predict({"read": 1}, 0, ROUTES, tables, fixed_rows_per_day={"system_metrics": 5760})

    assert result.tables["system_metrics"].rows_at_retention == pytest.approx(5760 * 90)
    assert result.tables["api_usage"].rows_per_day == 0


def test_monthly_costs_use_the_cited_prices() -> None:
    # 10 requests/s of `read`: 10 Upstash commands/s, containers busy 0.2, 25.92M requests/month.
    result = predict({"read": 1}, 10, ROUTES, TABLES, platform=Platform(memory_gb=0.5))
    month = 30 * 86_400
    cost = result.monthly_cost
    prices = capacity.PRICES

    assert cost["upstash_commands"] == pytest.approx(
        10 * month / 100_000 * prices["upstash_per_100k_commands"].value
    )
    assert result.lambda_gb_seconds_per_month == pytest.approx(0.2 * month * 0.5)
    assert cost["lambda_duration"] == pytest.approx(
        0.2 * month * 0.5 * prices["lambda_gb_second_arm"].value
    )
    assert cost["api_gateway_http"] == pytest.approx(10 * month / 1e6 * 1.00)
    assert result.vercel_cpu_hours_per_month == pytest.approx(10 * 0.010 * month / 3600)
    assert capacity.aws_total(result) == pytest.approx(
        sum(cost[k] for k in ("neon_compute", "neon_storage", "upstash_commands"))
        + sum(cost[k] for k in ("lambda_requests", "lambda_duration", "api_gateway_http"))
    )


def test_neon_compute_is_the_smallest_size_with_the_cpu_and_the_pool() -> None:
    # 100 req/s x 6 ms = 0.6 busy / 0.7 = 0.86 CPU -> 1 CU; 2,000 req/s -> 17.1 CPUs: past the
    # 16 CU autoscaling ceiling (one compute cannot, reads must move to replicas).
    assert predict({"read": 3, "write": 1}, 100, ROUTES, TABLES).neon_cu == 1
    assert predict({"read": 3, "write": 1}, 2000, ROUTES, TABLES).neon_cu == math.inf
    assert capacity.neon_cu_for_connections(90) == 0.25  # 0.9 x 104 = 93.6
    assert capacity.neon_cu_for_connections(100) == 0.5
    assert capacity.neon_cu_for_connections(3600) == 9  # 0.9 x 4000
    assert capacity.neon_cu_for_connections(3601) == math.inf


def test_the_predicted_knee_is_pool_size_over_server_seconds_per_request() -> None:
    assert predicted_knee(20, 0.002) == pytest.approx(10_000)
    mix = {"read": 3, "write": 1}
    server_s = capacity.server_seconds_per_request(mix, ROUTES)
    assert server_s == pytest.approx(0.006)
    assert predicted_knee(20, server_s) == pytest.approx(20 / 0.006)
    with pytest.raises(ValueError):
        predicted_knee(0, 0.002)
    with pytest.raises(ValueError):
        predicted_knee(20, 0)


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(KeyError, match="unmeasured"):
        predict({"unmeasured": 1}, 10, ROUTES, TABLES)
    with pytest.raises(ValueError):
        predict({"read": 0}, 10, ROUTES, TABLES)
    with pytest.raises(ValueError):
        predict({"read": 1}, -1, ROUTES, TABLES)


def test_every_price_and_limit_names_its_source_and_date() -> None:
    for name, source in (capacity.PRICES | capacity.LIMITS).items():
        assert source.url.startswith("https://"), name
        assert source.read_on, name
        assert source.value > 0, name


def test_the_check_replays_the_mix_in_its_proportions() -> None:
    order = sequence()

    assert {name: order.count(name) for name in MIX} == MIX


def test_upstash_commands_count_each_command_of_a_pipeline() -> None:
    assert redis_commands(["EVAL", "PIPELINE GET INCR EXPIRE", "GET"]) == 5


def _edges(queries: int, xact_us: int, usage_rows: int) -> dict[str, object]:
    zero = {"total_query_count": 0, "total_xact_count": 0, "total_xact_time": 0}
    stats = {"total_query_count": queries, "total_xact_count": queries, "total_xact_time": xact_us}
    empty = {t: {"rows": 0, "bytes": 0} for t in ("api_usage", "search_history", "system_metrics")}
    grown = empty | {"api_usage": {"rows": usage_rows, "bytes": 0}}
    return {
        "start": (zero, empty),
        "start_at": 0.0,
        "end_at": 10.0,
        "end_stats": stats,
        "final_stats": stats,
        "end_tables": grown,
        "load_average": [1.0, 1.0],
    }


def _output(reads: int) -> dict[str, object]:
    return {
        "counts": {"read": reads},
        "statuses": {"200": reads},
        "handler_s": reads * 0.020,
        "handler_ms": {"median": 20.0},
        "redis_commands": reads,
        "max_behind_ms": 0.0,
    }


def test_the_check_reports_each_figure_with_its_error_and_flags_a_miss() -> None:
    from benchmarks.capacity_check import compare

    # 100 reads in 10 s: the model says 200 statements, 100 api_usage rows, 0.04 servers busy.
    samples = [{"sv_active": 0, "cl_waiting": 0, "maxwait_ms": 0}]
    right = compare([_output(100)], _edges(200, 400_000, 100), samples, 10, 10, ROUTES, TABLES, 20)
    wrong = compare([_output(100)], _edges(300, 400_000, 50), samples, 10, 10, ROUTES, TABLES, 20)

    by_figure = {row["figure"]: row for row in right["comparison"]}
    assert by_figure["statements (total)"]["error"] == 0
    assert by_figure["api_usage rows"]["within"]
    servers = by_figure["server connections busy (mean, Little, profile's time)"]
    assert servers["measured"] == pytest.approx(0.04)
    assert right["predicted_knee_req_per_s"] == pytest.approx(20 / 0.004)
    missed = {row["figure"]: row for row in wrong["comparison"]}
    assert missed["statements (total)"]["error"] == pytest.approx((200 - 300) / 300, abs=1e-3)
    assert not missed["statements (total)"]["within"]
    assert missed["api_usage rows"]["error"] == pytest.approx(1.0)
    assert not missed["api_usage rows"]["within"]


def test_littles_law_is_checked_from_half_a_server_and_the_profiles_times_only_reported() -> None:
    from benchmarks.capacity_check import _verdict, compare

    # 200 transactions in 10 s holding 30 s of server time: 0.15 s each, 3 servers busy.
    edges = _edges(200, 30_000_000, 100)
    law = "server connections busy: model xact/s x window's xact time vs SHOW POOLS"
    profiled = "server connections busy (mean, Little, profile's time)"

    def run(sv_active: list[int]) -> dict[str, Any]:
        samples = [{"sv_active": n, "cl_waiting": 0, "maxwait_ms": 0} for n in sv_active]
        return compare([_output(100)], edges, samples, 10, 10, ROUTES, TABLES, 20)

    agreed, missed, idle = run([3, 3, 3, 3]), run([1, 1, 1, 1]), run([0, 0, 0, 1])
    rows = {row["figure"]: row for row in agreed["comparison"]}
    # the profile says 0.04 servers, the run held 3: far off, reported, not checked
    assert rows[profiled]["reported"] and not rows[profiled]["checked"]
    assert not rows[profiled]["within"]
    assert rows[law]["checked"] and rows[law]["within"]
    assert _verdict(agreed)["status"] == "pass"
    law_missed = {row["figure"]: row for row in missed["comparison"]}[law]
    assert law_missed["checked"] and not law_missed["within"]
    assert _verdict(missed)["status"] == "fail"
    law_idle = {row["figure"]: row for row in idle["comparison"]}[law]
    assert not law_idle["checked"] and not law_idle["reported"]  # a quarter of a server
    assert _verdict(idle)["status"] == "pass"


def test_the_model_takes_the_paced_profiles_times_and_its_back_to_back_counts() -> None:
    from benchmarks.capacity_check import inputs

    row = {
        "n": 10,
        "statements": 2.0,
        "transactions": 2.0,
        "server_ms": 1.0,
        "handler_ms": 10.0,
        "cpu_ms": 5.0,
        "redis_commands": 1.0,
        "rows": {"api_usage": 1.0, "search_history": 0.0, "system_metrics": 0.0},
        "paced": {"server_ms": 1.5, "handler_ms": 12.0, "cpu_ms": 6.0, "statements": 9.0},
    }
    tables_now = {t: {"rows": 10, "bytes": 81920} for t in capacity_worker.TABLES}
    # The replayed mix grew api_usage by 1,280 rows in 64 pages and wrote no other table.
    calibration = {
        "requests": 1280,
        "rows": {"api_usage": 1280, "search_history": 0, "system_metrics": 0},
        "bytes": {"api_usage": 64 * 8192, "search_history": 0, "system_metrics": 0},
    }
    profile = {"routes": {"read": row}, "tables": tables_now, "calibration": calibration}
    routes, tables = inputs(profile)
    read = routes["read"]
    assert (read.server_ms, read.handler_ms, read.cpu_ms) == (1.5, 12.0, 6.0)
    assert read.statements == 2.0 and read.rows["api_usage"] == 1.0
    # Bytes per row from the replayed growth; a table the mix does not write: its average.
    assert tables["api_usage"].bytes_per_row == pytest.approx(409.6)
    assert tables["search_history"].bytes_per_row == pytest.approx(8192.0)


def test_the_top_step_is_near_what_the_cores_carry_with_containers_to_keep_its_pace() -> None:
    from benchmarks.capacity_check import containers_for, high_rate

    # Mix 1:1 of READ (10 ms CPU + 4 ms server) and WRITE (30 + 12): 28 ms per request.
    mix = {"read": 1, "write": 1}
    assert high_rate(mix, ROUTES, 2) == round(2 * 0.5 * 1000 / 28, -1) == 40.0
    # 40 ms of handler time per request: 2 busy at 50 req/s, 6 times that.
    assert containers_for(50, mix, ROUTES) == 12
    assert containers_for(1, mix, ROUTES) == 5


def test_a_step_short_of_its_rate_is_reported_saturated() -> None:
    from benchmarks.capacity_check import _saturated

    assert _saturated({"rate_target": 100.0, "rate_achieved": 49.1}).startswith(" (saturated")
    assert _saturated({"rate_target": 50.0, "rate_achieved": 50.2}) == ""
    assert _saturated({"rate_target": 50.0, "rate_achieved": 45.0}) == ""
