"""Progress of long runs (hashing files, asking batches) on standard error.

Shown when standard error is a terminal, or when the user asks with
``--progress`` (a log file, a CI job). Never on standard output: that is
for the result, which ``--json`` keeps machine-readable.

On a terminal one line is redrawn in place; elsewhere a line is printed at
most every ``EVERY_LINES_S`` seconds, and always the last one.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

REDRAW_EVERY_S = 0.1
"""On a terminal, redraw the line at most this often."""
EVERY_LINES_S = 2.0
"""Elsewhere, one line at most this often."""


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class Progress:
    """``update(done, total)`` after each unit of work; ``close()`` ends the line.

    A disabled Progress prints nothing, so callers need not test whether to report.
    """

    def __init__(
        self,
        label: str,
        unit: str,
        *,
        enabled: bool,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label = label
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.tty = enabled and self.stream.isatty()
        self._clock = clock
        self._started = clock()
        self._shown_at = float("-inf")
        self._drawn = False

    def line(self, done: int, total: int) -> str:
        """``label: done/total unit (p%), rate/s, ETA t``."""
        elapsed = self._clock() - self._started
        text = f"{self.label}: {done:,}/{total:,} {self.unit}"
        if total:
            text += f" ({100 * done // total}%)"
        if done and elapsed > 0:
            rate = done / elapsed
            text += f", {rate:,.1f} {self.unit}/s"
            if done < total:
                text += f", ETA {_duration((total - done) / rate)}"
            else:
                text += f", took {_duration(elapsed)}"
        return text

    def update(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        now = self._clock()
        last = done >= total
        if not last and now - self._shown_at < (REDRAW_EVERY_S if self.tty else EVERY_LINES_S):
            return
        self._shown_at = now
        if self.tty:
            # \x1b[K clears what a longer previous line left behind.
            print(f"\r{self.line(done, total)}\x1b[K", end="", file=self.stream, flush=True)
            self._drawn = True
        else:
            print(self.line(done, total), file=self.stream, flush=True)

    def note(self, text: str) -> None:
        """A line of its own (a summary between phases), shown when progress is."""
        if not self.enabled:
            return
        self.close()
        print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self._drawn:
            print(file=self.stream, flush=True)
            self._drawn = False


def wanted(forced: bool, stream: TextIO | None = None) -> bool:
    """Whether to show progress: asked for with --progress, or a terminal to show it on."""
    return forced or (stream if stream is not None else sys.stderr).isatty()
