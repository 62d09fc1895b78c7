"""Terminal output: aligned tables and a progress line that suits a TTY and a log alike."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None) -> str:
    """A plain-text table; numbers are right-aligned.

    >>> print(format_table(["channel", "events"], [["web", 12], ["amazon", 3]]))
    channel  events
    -------  ------
    web          12
    amazon        3
    """
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, value in enumerate(row):
            widths[i] = max(widths[i], len(value))
    numeric = [
        bool(rows) and all(isinstance(row[i], (int, float)) or row[i] is None for row in rows)
        for i in range(len(headers))
    ]

    def line(values: Sequence[str]) -> str:
        out = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)]
        return "  ".join(out).rstrip()

    parts = [title] if title else []
    parts += [line(list(headers)), line(["-" * w for w in widths])]
    parts += [line(row) for row in cells]
    return "\n".join(parts)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


class Progress:
    """``label  done/total  pct  rate/s``: redrawn in place on a TTY, a line every few seconds otherwise."""

    def __init__(self, label: str, total: int, stream: TextIO = sys.stderr, every: float = 2.0) -> None:
        self.label = label
        self.total = total
        self.stream = stream
        self.every = every
        self.started = time.monotonic()
        self._last = 0.0
        self.tty = stream.isatty()

    def update(self, done: int, extra: str = "") -> None:
        now = time.monotonic()
        if not self.tty and now - self._last < self.every and done < self.total:
            return
        self._last = now
        elapsed = max(now - self.started, 1e-9)
        pct = 100.0 * done / self.total if self.total else 100.0
        text = f"{self.label:<22} {done:>10,}/{self.total:<10,} {pct:5.1f}%  {done / elapsed:>9,.0f}/s  {extra}"
        if self.tty:
            self.stream.write("\r" + text.ljust(100)[:100])
        else:
            self.stream.write(text.rstrip() + "\n")
        self.stream.flush()

    def finish(self, done: int, extra: str = "") -> float:
        self._last = 0.0
        self.update(done, extra)
        if self.tty:
            self.stream.write("\n")
        return time.monotonic() - self.started
