"""Progress on stderr that reads well both live and in a log file.

On a terminal the counter is one line rewritten in place (at most ten times a second).
Anywhere else (a file, a pipe, CI) it prints a whole line per tenth of the work, so a build
log holds about ten lines per task instead of thousands of carriage-return updates; with an
unknown total, a line every LOG_EVERY_S seconds. Does not decide whether progress is
wanted: callers pass ``enabled``.
"""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import IO

__all__ = ["Progress"]

LIVE_EVERY_S = 0.1
LOG_EVERY_S = 10.0


class Progress:
    """A counter of done/total units, e.g. ``Progress("embedding", 5000)`` then ``update(64)``."""

    def __init__(self, label: str, total: int | None = None, *, unit: str = "texts", enabled: bool = True,
                 stream: IO[str] | None = None, live: bool | None = None) -> None:
        self.label, self.total, self.unit, self.enabled = label, total, unit, enabled
        self.stream: IO[str] = stream if stream is not None else sys.stderr
        isatty = getattr(self.stream, "isatty", None)
        self.live = live if live is not None else bool(isatty and isatty())
        self.done = 0
        self.t0 = time.perf_counter()
        self._last = float("-inf")  # when a line was last written: the first live update always shows
        self._tenths = 0  # tenths of the total already logged
        self._shown = -1  # `done` when the last line was written
        self._width = 0  # length of the live line, to blank a longer previous one
        self._closed = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _line(self, detail: str) -> str:
        elapsed = time.perf_counter() - self.t0
        rate = self.done / max(elapsed, 1e-9)
        if self.total:
            text = f"{self.label}: {self.done}/{self.total} {self.unit} ({100 * self.done // self.total}%)"
        else:
            text = f"{self.label}: {self.done} {self.unit}"
        text += f", {rate:.0f} {self.unit}/s" if rate >= 1 else f", {elapsed:.0f} s"
        return f"{text} - {detail}" if detail else text

    def _write(self, detail: str) -> None:
        line = self._line(detail)
        if self.live:
            self.stream.write("\r" + line.ljust(self._width))
            self._width = len(line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
        self._shown, self._last = self.done, time.perf_counter()

    def update(self, n: int = 1, detail: str = "") -> None:
        """Count n more units done; detail: what is being worked on (shown after the counter)."""
        self.done += n
        if not self.enabled:
            return
        now = time.perf_counter()
        finished = self.total is not None and self.done >= self.total
        if self.live:
            if finished or now - self._last >= LIVE_EVERY_S:
                self._write(detail)
        elif self.total:
            tenths = min(10, 10 * self.done // self.total)
            if tenths > self._tenths:
                self._tenths = tenths
                self._write(detail)
        elif now - max(self._last, self.t0) >= LOG_EVERY_S:
            self._write(detail)

    def close(self) -> None:
        """End the live line; in a log, write the final count unless the last line already was it."""
        if not self.enabled or self._closed:
            return
        self._closed = True
        if self.done == 0 and self._shown < 0:
            return
        if self._shown != self.done:
            self._write("")
        if self.live:
            self.stream.write("\n")
            self.stream.flush()
