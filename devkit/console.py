"""Terminal output for the `keyflash` CLI: one-line errors, optional colour, progress bars.

Colour and the redrawn progress bar only appear when stdout is a terminal and NO_COLOR is
unset (https://no-color.org), so logs, pipes and tests get plain, stable text. Progress goes to
stderr: stdout stays clean for what a command produces (a token, an OpenAPI document).
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from types import TracebackType
from typing import Self, TextIO


class CliError(Exception):
    """A failure the user can act on: printed as ONE line, `keyflash: <message>`, exit `code`."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def colour_enabled(stream: TextIO | None = None) -> bool:
    """Whether to emit ANSI colour: stdout (and `stream`, if given) is a TTY and no NO_COLOR."""
    if "NO_COLOR" in os.environ:
        return False
    streams = [sys.stdout] if stream is None else [sys.stdout, stream]
    return all(_isatty(s) for s in streams)


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed or replaced streams
        return False


_CODES = {"bold": "1", "dim": "2", "red": "31", "green": "32", "yellow": "33", "cyan": "36"}


def paint(text: str, style: str, stream: TextIO | None = None) -> str:
    """`text` wrapped in the ANSI codes for `style` ("bold", "red", …) when colour is on."""
    if not colour_enabled(stream):
        return text
    return f"\x1b[{_CODES[style]}m{text}\x1b[0m"


def error_line(message: str) -> str:
    """The single line a failing command prints on stderr."""
    first = message.strip().splitlines()[0] if message.strip() else "failed"
    return f"{paint('keyflash:', 'red', sys.stderr)} {first}"


def info(message: str) -> None:
    """A status line on stderr (stdout is reserved for a command's output)."""
    print(message, file=sys.stderr, flush=True)


class Progress:
    """A stdlib progress bar for work with known steps: `[######----] 3/5 migrating`.

    On a terminal it redraws one line in place; elsewhere each step is one plain line, so CI
    logs show what happened and when. Use as a context manager: the bar is closed on exit.
    """

    WIDTH = 24

    def __init__(self, total: int, title: str, *, stream: TextIO | None = None) -> None:
        self.total = max(1, total)
        self.title = title
        self.done = 0
        self.stream = stream or sys.stderr
        # Redrawn in place only on a terminal that can (NO_COLOR is about colour, not this).
        self.live = _isatty(self.stream) and os.environ.get("TERM") != "dumb"
        self.started = time.perf_counter()
        self._last_width = 0
        self._closed = False

    def step(self, label: str) -> None:
        """Announce the step that starts now (the bar shows the steps finished before it)."""
        self._draw(label)
        self.done = min(self.total, self.done + 1)

    def update(self, done: int, label: str) -> None:
        """Set the count directly (e.g. tables restored so far)."""
        self.done = max(0, min(self.total, done))
        self._draw(label)

    def close(self, summary: str | None = None) -> None:
        """Finish the line; `summary` replaces the bar (terminal) or is printed (plain)."""
        if self._closed:
            return
        self._closed = True
        elapsed = time.perf_counter() - self.started
        text = summary or f"{self.title}: done in {elapsed:.1f} s"
        if self.live:
            self.stream.write("\r" + " " * self._last_width + "\r")
        self.stream.write(text + "\n")
        self.stream.flush()

    def _draw(self, label: str) -> None:
        if not self.live:
            self.stream.write(f"{self.title}: {label}\n")
            self.stream.flush()
            return
        filled = round(self.WIDTH * self.done / self.total)
        bar = "#" * filled + "-" * (self.WIDTH - filled)
        line = f"{self.title} [{bar}] {self.done}/{self.total} {label}"
        columns = shutil.get_terminal_size((100, 20)).columns
        line = line[: columns - 1]
        padding = " " * max(0, self._last_width - len(line))
        self.stream.write("\r" + line + padding)
        self.stream.flush()
        self._last_width = len(line)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        elif self.live and not self._closed:  # keep the bar where it stopped; the error follows
            self._closed = True
            self.stream.write("\n")
            self.stream.flush()
