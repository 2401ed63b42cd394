"""Summaries of timing samples: a median with its spread, never a single run.

The machine is shared and small, so one figure means little; every timing in the report is the
median of several samples with p95 and the interquartile range next to it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def percentile(samples: Sequence[float], fraction: float) -> float:
    """Linear-interpolated percentile (`fraction` in 0..1) of `samples` (not empty)."""
    ordered = sorted(samples)
    if not ordered:
        raise ValueError("no samples")
    position = (len(ordered) - 1) * fraction
    low, high = math.floor(position), math.ceil(position)
    if low == high:
        return ordered[low]
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summary(samples: Sequence[float], *, digits: int = 3) -> dict[str, Any]:
    """`{n, median, p95, p25, p75, iqr, min, max}` of `samples`, rounded to `digits`."""
    if not samples:
        return {"n": 0}
    p25, p75 = percentile(samples, 0.25), percentile(samples, 0.75)
    values = {
        "median": percentile(samples, 0.5),
        "p95": percentile(samples, 0.95),
        "p25": p25,
        "p75": p75,
        "iqr": p75 - p25,
        "min": min(samples),
        "max": max(samples),
    }
    return {"n": len(samples), **{key: round(value, digits) for key, value in values.items()}}


def ratio(numerator: float | None, denominator: float | None, digits: int = 2) -> float | None:
    """`numerator / denominator`, or None when either is missing or the denominator is zero."""
    if numerator is None or not denominator:
        return None
    return round(numerator / denominator, digits)


def fmt(stats: dict[str, Any] | None, unit: str = "ms", spread: str = "p95") -> str:
    """`12.3 ms (p95 15.1)` — the way every timing is printed."""
    if not stats or not stats.get("n"):
        return "—"
    return f"{_num(stats['median'])} {unit} ({spread} {_num(stats[spread])})"


def _num(value: float) -> str:
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"
