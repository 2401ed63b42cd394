"""What every section shares: the run context, workers, and target verdicts."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.stack import Stack
from benchmarks.worker import RESULT_MARK

ROOT = Path(__file__).resolve().parent.parent


class WorkerError(RuntimeError):
    """A worker failed; the message carries its error and the tail of its stderr."""


@dataclass
class Context:
    """One run: the servers, the mode, what seeding created, and a progress printer."""

    stack: Stack
    quick: bool
    fixtures: dict[str, Any] = field(default_factory=dict)
    crons: list[str] = field(default_factory=list)
    log: Callable[[str], None] = lambda message: print(message, file=sys.stderr, flush=True)

    def pick(self, full: Any, quick: Any) -> Any:
        return quick if self.quick else full


def run_worker(
    task: str,
    params: dict[str, Any],
    env: dict[str, str],
    *,
    timeout: float = 600,
    module: str = "benchmarks.worker",
) -> dict[str, Any]:
    """Run `python -m MODULE TASK` with `env`; its JSON result (or WorkerError)."""
    completed = subprocess.run(
        [sys.executable, "-m", module, task],
        input=json.dumps(params),
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    for line in reversed(completed.stdout.splitlines()):
        if line.startswith(RESULT_MARK):
            result: dict[str, Any] = json.loads(line[len(RESULT_MARK) :])
            if "error" in result and "traceback" in result:
                raise WorkerError(
                    f"worker {task} failed: {result['error']}\n{result['traceback']}"
                    f"\nstderr tail:\n{completed.stderr[-1500:]}"
                )
            return result
    raise WorkerError(
        f"worker {task} exited with {completed.returncode} and no result; stderr tail:\n"
        f"{completed.stderr[-3000:]}"
    )


def target(
    name: str, passed: bool | None, measured: str, *, detail: str = "", reason: str = ""
) -> dict[str, Any]:
    """A target verdict: status `pass`/`fail` (or `not_run` with a reason when the run could
    not measure it, e.g. PgBouncer missing). Benchmarks never fail on timings: they say so."""
    status = "not_run" if passed is None else ("pass" if passed else "fail")
    verdict = {"target": name, "status": status, "measured": measured}
    if detail:
        verdict["detail"] = detail
    if reason:
        verdict["reason"] = reason
    return verdict


class Timer:
    """`with Timer() as t: …` then `t.seconds`."""

    def __enter__(self) -> Timer:
        self.started = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.started
