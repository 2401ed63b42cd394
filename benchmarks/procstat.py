"""CPU time of local processes from /proc, for the load ramp: who used the cores in a step.

Linux only (`/proc/<pid>/stat`, fields 14-17: utime, stime, cutime, cstime, in clock ticks).
A process tree's CPU time is its root's own and reaped children's time plus every live
descendant's own: a backend that exits mid-step moves its time into the postmaster's `cutime`,
so the sum stays continuous. Returns None where /proc cannot tell (another OS, a remote server).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


@dataclass(frozen=True)
class Stat:
    """The fields of one `/proc/<pid>/stat` line the ramp needs (times in clock ticks)."""

    pid: int
    ppid: int
    utime: int
    stime: int
    cutime: int
    cstime: int

    @property
    def own(self) -> int:
        return self.utime + self.stime

    @property
    def reaped_children(self) -> int:
        return self.cutime + self.cstime


def parse_stat(line: str) -> Stat:
    """One `/proc/<pid>/stat` line. The command name is in parentheses and may itself hold
    spaces or parentheses, so the fields are counted from the last `)`."""
    head, _, tail = line.rpartition(")")
    if not head:
        raise ValueError(f"not a /proc stat line: {line[:80]!r}")
    pid = int(head.split("(", 1)[0])
    fields = tail.split()  # fields[0] is field 3 (state)
    return Stat(
        pid=pid,
        ppid=int(fields[1]),
        utime=int(fields[11]),
        stime=int(fields[12]),
        cutime=int(fields[13]),
        cstime=int(fields[14]),
    )


def tree_ticks(stats: list[Stat], root: int, *, with_reaped: bool = True) -> int | None:
    """CPU ticks of `root` and its live descendants (plus children `root` reaped), or None when
    `root` is not among `stats`."""
    by_parent: dict[int, list[Stat]] = {}
    found: Stat | None = None
    for stat in stats:
        by_parent.setdefault(stat.ppid, []).append(stat)
        if stat.pid == root:
            found = stat
    if found is None:
        return None
    total = found.own + (found.reaped_children if with_reaped else 0)
    pending = [root]
    while pending:
        for child in by_parent.get(pending.pop(), []):
            total += child.own
            pending.append(child.pid)
    return total


def read_all(proc: Path = PROC) -> list[Stat]:
    """Every readable process's stat (processes that end while being read are skipped)."""
    stats = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stats.append(parse_stat((entry / "stat").read_text()))
        except (OSError, ValueError, IndexError):
            continue
    return stats


def parent_of(pid: int, proc: Path = PROC) -> int | None:
    try:
        return parse_stat((proc / str(pid) / "stat").read_text()).ppid
    except (OSError, ValueError, IndexError):
        return None


def seconds(ticks: int | None) -> float | None:
    return None if ticks is None else ticks / os.sysconf("SC_CLK_TCK")


def parse_machine(text: str) -> tuple[int, int]:
    """(busy, total) ticks of all CPUs from `/proc/stat`'s first line: idle and iowait are not
    busy; guest time is already inside user time, so it is left out of the total."""
    first = text.splitlines()[0].split()
    if first[0] != "cpu":
        raise ValueError(f"not /proc/stat: {text[:40]!r}")
    values = [int(v) for v in first[1:9]]  # user nice system idle iowait irq softirq steal
    total = sum(values)
    return total - values[3] - values[4], total


def read_machine(proc: Path = PROC) -> tuple[int, int] | None:
    try:
        return parse_machine((proc / "stat").read_text())
    except (OSError, ValueError, IndexError):
        return None
