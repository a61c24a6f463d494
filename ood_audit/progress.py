"""Progress a person can read, for every long phase (scan, calibration, training): done / total, the rate over
the last minute, the time left and, where there are any, the counts so far.

The rate is taken over a sliding window (the last minute by default), not since the start: a run that slowed
down, or sped up once its actors were warm, gets an ETA from what it does now. On a terminal the line is one
status line that updates in place (tqdm; the console's log lines are written above it, see
:class:`ood_audit.console.ConsoleHandler`); anywhere else (a log file, a CronJob's pod log) it is a plain log
line every ``every_s`` seconds, and one at the end. Time comes from ``clock`` so that tests can drive it.
"""
from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

log = logging.getLogger(__name__)


def fmt_eta(seconds: float | None) -> str:
    """``H:MM:SS``, or ``-`` while the rate is unknown."""
    if seconds is None:
        return "-"
    s = int(max(0.0, seconds) + 0.5)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class Progress:
    """``what``: ``done``/``total`` ``unit``, ``rate``/s over the last ``window_s``, ETA, counts.

    Call :meth:`update` as work completes (absolute figures: a pass that starts again can go back), and
    :meth:`finish` at the end. A line goes out at most every ``every_s`` seconds (a terminal's line is
    redrawn at most every second), and always at :meth:`finish`.
    """

    def __init__(self, what: str, total: int, *, unit: str = "objects", done: int = 0, every_s: float = 10.0,
                 window_s: float = 60.0, clock: Callable[[], float] = time.monotonic,
                 emit: Callable[[str], None] | None = None, tty: bool | None = None) -> None:
        from ood_audit.console import console_is_tty

        self.what, self.total, self.unit = what, max(0, int(total)), unit
        self.done, self.counts = int(done), {}
        self.every_s, self.window_s, self.clock = every_s, window_s, clock
        self._emit = emit or (lambda line: log.info("%s", line))
        self._samples: deque[tuple[float, int]] = deque([(clock(), self.done)])
        self._last_line = self._samples[0][0]
        self._bar: Any = None
        if (console_is_tty() if tty is None else tty) and emit is None:
            from tqdm import tqdm

            from ood_audit.console import console_stream

            self._bar = tqdm(total=self.total, bar_format="{desc}", file=console_stream(), leave=False,
                             mininterval=1.0, dynamic_ncols=True)
            self._bar.set_description_str(self.line(), refresh=True)

    def update(self, done: int, counts: Mapping[str, int] | None = None) -> None:
        """Now ``done`` of ``total`` are done (``counts``: the counts so far, by name, e.g. statuses)."""
        now = self.clock()
        self.done = int(done)
        if counts is not None:
            self.counts = {k: int(v) for k, v in counts.items()}
        self._samples.append((now, self.done))
        # keep the newest sample at or before the window's start: the rate spans the whole window
        while len(self._samples) > 2 and self._samples[1][0] <= now - self.window_s:
            self._samples.popleft()
        if self._bar is not None:
            if now - self._last_line >= 1.0:
                self._last_line = now
                self._bar.set_description_str(self.line(), refresh=True)
        elif now - self._last_line >= self.every_s:
            self._last_line = now
            self._emit(self.line())

    def rate(self) -> float | None:
        """Units per second over the window; None until a second has passed."""
        (t0, d0), (t1, d1) = self._samples[0], self._samples[-1]
        t1 = max(t1, self.clock())
        return None if t1 - t0 < 1.0 else max(0.0, d1 - d0) / (t1 - t0)

    def eta(self) -> float | None:
        """Seconds left at the window's rate; None while it is unknown or zero."""
        rate = self.rate()
        return None if not rate else max(0, self.total - self.done) / rate

    def line(self) -> str:
        pct = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        rate = self.rate()
        per = f"{rate:.1f} {self.unit}/s over the last {_span(self.window_s)}" if rate is not None else "rate -"
        counts = ", ".join(f"{k} {v}" for k, v in self.counts.items())
        return (f"{self.what}: {self.done}/{self.total} {self.unit}{pct}, {per}, ETA {fmt_eta(self.eta())}"
                + (f"; {counts}" if counts else ""))

    def finish(self) -> None:
        """The last line, always printed (as a log line, also on a terminal)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self._emit(self.line())


def _span(seconds: float) -> str:
    return "minute" if seconds == 60 else f"{seconds:g} s"


def status_counts(counts: Mapping[str, int], flagged: int) -> dict[str, int]:
    """A scan's statuses so far as a person reads them: ok, flagged (of ok), then each error status seen."""
    out = {"ok": int(counts.get("ok", 0)), "flagged": int(flagged)}
    out.update({s: int(n) for s, n in counts.items() if s != "ok" and n})
    return out
