"""The load ramp's arithmetic on synthetic inputs: /proc CPU accounting, the knee, the limit.

The ramp itself only runs as a benchmark (`python -m benchmarks --only ramp`): its timings are
the machine's. What decides how they are read is pure and pinned here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from benchmarks import procstat
from benchmarks.ramp import find_knee, limiting_resource, marginal_cpu


def _stat_line(pid: int, comm: str, ppid: int, ticks: tuple[int, int, int, int]) -> str:
    # Fields 3.. : state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt, then
    # utime stime cutime cstime (14-17), then the rest.
    utime, stime, cutime, cstime = ticks
    return (
        f"{pid} ({comm}) S {ppid} {pid} {pid} 0 -1 4194560 100 0 0 0 "
        f"{utime} {stime} {cutime} {cstime} 20 0 1 0 12345 1000000 500 18446744073709551615"
    )


def test_a_stat_line_is_read_past_a_command_name_with_spaces_and_parentheses() -> None:
    stat = procstat.parse_stat(_stat_line(42, "postgres: a (b) c", 7, (11, 22, 33, 44)))
    assert (stat.pid, stat.ppid) == (42, 7)
    assert (stat.own, stat.reaped_children) == (33, 77)


def test_a_line_that_is_not_a_stat_line_is_refused() -> None:
    with pytest.raises(ValueError):
        procstat.parse_stat("no parentheses here")


def test_a_tree_counts_live_descendants_and_what_its_root_reaped() -> None:
    stats = [
        procstat.parse_stat(_stat_line(10, "postgres", 1, (100, 50, 30, 20))),  # postmaster
        procstat.parse_stat(_stat_line(11, "postgres", 10, (5, 5, 0, 0))),  # a backend
        procstat.parse_stat(_stat_line(12, "postgres", 11, (1, 1, 0, 0))),  # its child
        procstat.parse_stat(_stat_line(20, "other", 1, (999, 999, 0, 0))),  # not ours
    ]
    assert procstat.tree_ticks(stats, 10) == 150 + 50 + 10 + 2
    assert procstat.tree_ticks(stats, 10, with_reaped=False) == 150 + 10 + 2
    assert procstat.tree_ticks(stats, 99) is None


def test_the_machine_line_leaves_idle_and_iowait_out_of_busy() -> None:
    text = "cpu  100 10 50 800 40 5 5 0 7 0\ncpu0 1 2 3 4 5 6 7 8 9 0\n"
    assert procstat.parse_machine(text) == (170, 1010)
    with pytest.raises(ValueError):
        procstat.parse_machine("intr 1 2 3")


def test_this_process_is_found_in_the_real_proc(tmp_path: Path) -> None:
    import os

    stats = procstat.read_all()
    assert procstat.tree_ticks(stats, os.getpid()) is not None
    assert procstat.parent_of(os.getpid()) == os.getppid()
    assert procstat.parent_of(1, proc=tmp_path) is None  # an empty /proc knows nothing


def _step(
    containers: int,
    achieved: float,
    p95: float,
    *,
    waiting: float = 0.0,
    errors: int = 0,
    sv_active: int = 2,
    busy_ms: float = 1.0,
    cpu: tuple[float | None, float | None, float | None, float | None] = (0.2, 0.3, 0.05, 0.6),
) -> dict[str, Any]:
    client, postgres, pgbouncer, machine = cpu
    return {
        "containers": containers,
        "offered_rps": containers * 5.0,
        "achieved_rps": achieved,
        "latency_ms": {"p50": p95 / 3, "p95": p95, "p99": p95 * 1.5},
        "errors": {"OperationalError: boom": errors} if errors else {},
        "pool": {
            "cl_waiting": {"peak": int(waiting * 2), "mean": waiting},
            "sv_active": {"peak": sv_active, "mean": sv_active / 2},
        },
        "db_busy_ms_per_request": busy_ms,
        "cpu_cores": {
            "client": client,
            "postgres": postgres,
            "pgbouncer": pgbouncer,
            "machine_busy": machine,
        },
    }


def test_a_ramp_that_never_degrades_has_its_knee_past_the_last_step() -> None:
    steps = [_step(10, 50, 4), _step(50, 250, 5), _step(200, 1000, 6), _step(500, 2490, 9)]
    knee = find_knee(steps)
    assert knee["knee_containers"] is None and knee["first_degraded"] is None
    assert knee["best_rps"] == 2490


def test_the_knee_is_the_last_step_before_the_rate_falls_behind() -> None:
    steps = [_step(10, 50, 4), _step(50, 250, 5), _step(200, 1000, 6), _step(500, 1100, 900)]
    knee = find_knee(steps)
    assert (knee["knee_containers"], knee["knee_rps"], knee["first_degraded"]) == (200, 1000, 500)
    assert any("achieved 1100" in s for s in knee["signals"])
    assert any("p95 900" in s for s in knee["signals"])
    assert knee["first_by_signal"] == {
        "throughput": 500,
        "latency": 500,
        "queue": None,
        "errors": None,
    }


def test_each_signal_reports_its_own_first_step() -> None:
    steps = [
        _step(10, 50, 4),
        _step(50, 250, 200),
        _step(200, 1000, 300, waiting=30),
        _step(500, 900, 5000, waiting=300),
    ]
    knee = find_knee(steps)
    assert knee["knee_containers"] == 10
    assert knee["first_by_signal"] == {
        "throughput": 500,
        "latency": 50,
        "queue": 200,
        "errors": None,
    }


def test_queueing_in_the_pooler_or_errors_alone_mark_a_step_degraded() -> None:
    queued = [_step(10, 50, 4), _step(50, 250, 5, waiting=3.5)]
    assert find_knee(queued)["first_degraded"] == 50
    failing = [_step(10, 50, 4), _step(50, 250, 5, errors=2)]
    assert find_knee(failing)["signals"] == ["2 errors"]


def test_a_degraded_step_followed_by_a_healthy_one_is_a_blip_not_the_knee() -> None:
    steps = [_step(10, 50, 4), _step(50, 250, 40), _step(200, 1000, 6), _step(500, 1000, 800)]
    knee = find_knee(steps)
    assert knee["knee_containers"] == 200
    assert list(knee["blips"]) == [50]


def test_a_first_step_that_already_fails_has_no_healthy_knee() -> None:
    knee = find_knee([_step(10, 50, 4, errors=1), _step(50, 100, 5, errors=3)])
    assert knee["knee_containers"] is None and knee["first_degraded"] == 10


def test_a_full_pool_at_the_usual_cost_per_request_is_the_pools_limit() -> None:
    base = _step(10, 50, 4, busy_ms=1.0)
    step = _step(500, 1500, 300, waiting=40, sv_active=20, busy_ms=1.2)
    assert "pooler's server pool (20" in limiting_resource(step, base, 20, 2)["resource"]


def test_a_full_pool_because_requests_held_servers_longer_names_the_cpu() -> None:
    base = _step(10, 50, 4, busy_ms=1.0)
    step = _step(
        500, 900, 2000, waiting=300, sv_active=20, busy_ms=17.0, cpu=(0.35, 0.4, 0.1, 1.99)
    )
    limit = limiting_resource(step, base, 20, 2)
    resource = limit["resource"]
    assert resource.startswith("the machine's CPU: 1.99 of 2 cores busy, 0.85 of them ours")
    assert "ran out as a consequence" in resource
    assert limit["evidence"]["other processes"] == 1.14


def test_a_client_using_a_whole_core_is_named_before_the_machine() -> None:
    base = _step(10, 50, 4)
    step = _step(500, 900, 600, cpu=(0.97, 0.6, 0.2, 1.9))
    assert "our client's CPU" in limiting_resource(step, base, 20, 2)["resource"]


def test_unknown_cpu_figures_do_not_break_the_verdict() -> None:
    base = _step(10, 50, 4)
    step = _step(500, 900, 600, cpu=(0.3, None, None, None))
    assert "neither CPU nor the pool" in limiting_resource(step, base, 20, 2)["resource"]


def test_cpu_per_request_is_the_slope_between_two_steps_so_fixed_costs_drop_out() -> None:
    low = {"achieved_rps": 50.0, "window_s": 10.0, "cpu_seconds": {}}
    high = {"achieved_rps": 250.0, "window_s": 20.0, "cpu_seconds": {}}
    # PostgreSQL: 0.05 cores idle + 0.7 ms per request; PgBouncer unknown; the client flat.
    low["cpu_seconds"] = {"postgres": (0.05 + 50 * 0.0007) * 10, "pgbouncer": None, "client": 2.0}
    high["cpu_seconds"] = {"postgres": (0.05 + 250 * 0.0007) * 20, "pgbouncer": 1.0, "client": 4.0}
    assert marginal_cpu(low, high) == {"client": 0.0, "postgres": 0.7, "pgbouncer": None}
    assert marginal_cpu(high, low)["postgres"] is None  # no extra requests, no slope
