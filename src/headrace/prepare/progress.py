"""Progress of a prepare run: a ``rich`` bar with tokens/s and ETA on a terminal, a few lines otherwise.

The bar counts documents when the inputs' row counts are known (indexed formats), else units.
``rich`` is imported only when a bar is shown.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any, TextIO

LINE_EVERY_S = 30.0  # without a terminal: one line at most this often


def human(n: float) -> str:
    """``1234567`` → ``"1.23M"``."""
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.3g}{unit}"
    return f"{n:.0f}"


class Progress:
    """Counts documents, tokens and finished units; thread-safe (fed by a queue-draining thread)."""

    def __init__(self, *, total_rows: int | None, total_units: int, done_units: int, quiet: bool,
                 stream: TextIO | None = None) -> None:  # fmt: skip
        self.total_rows, self.total_units = total_rows, total_units
        self.units, self.rows, self.tokens = done_units, 0, 0
        self._resumed = 0
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self.started = time.monotonic()
        self._last_line = self.started
        self._lock = threading.Lock()
        self._bar: Any = None
        self._task: Any = None
        if not quiet and self.stream.isatty():
            self._start_bar()

    def _start_bar(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        what = "docs" if self.total_rows is not None else "units"
        self._bar = Progress(
            TextColumn("[bold]prepare"), BarColumn(), MofNCompleteColumn(), TextColumn(what),
            TextColumn("{task.fields[tokens]} tokens, {task.fields[rate]} tok/s"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=Console(file=self.stream), transient=False,
        )  # fmt: skip
        total = self.total_rows if self.total_rows is not None else self.total_units
        self._task = self._bar.add_task("prepare", total=total, completed=0, tokens="0", rate="0")
        self._bar.start()

    def advance(self, rows: int, tokens: int) -> None:
        with self._lock:
            self.rows += rows
            self.tokens += tokens
            self._show()

    def unit_done(self) -> None:
        with self._lock:
            self.units += 1
            self._show()

    def skip_rows(self, rows: int) -> None:
        """Rows of units finished by an earlier run: the bar starts past them."""
        with self._lock:
            self._resumed += rows
            self._show()

    def _show(self) -> None:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = self.tokens / elapsed
        if self._bar is not None:
            completed = self._resumed + self.rows if self.total_rows is not None else self.units
            self._bar.update(self._task, completed=completed, tokens=human(self.tokens), rate=human(rate))
        elif not self.quiet and time.monotonic() - self._last_line >= LINE_EVERY_S:
            self._last_line = time.monotonic()
            self._line(rate)

    def _line(self, rate: float) -> None:
        print(f"prepare: {self.units}/{self.total_units} units, {human(self.tokens)} tokens, "
              f"{human(rate)} tokens/s", file=self.stream, flush=True)  # fmt: skip

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
