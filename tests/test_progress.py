"""Progress lines (ood_audit.progress): driven by a fake clock, never timed."""
from __future__ import annotations

import io
import logging

import pytest

from ood_audit.console import ConsoleHandler, console_is_tty
from ood_audit.progress import Progress, fmt_eta, status_counts


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def make(total: int = 1000, **kw):
    clock, lines = Clock(), []
    return Progress("scan r1", total, clock=clock, emit=lines.append, **kw), clock, lines


def test_fmt_eta():
    assert fmt_eta(None) == "-"
    assert fmt_eta(0) == "0:00:00"
    assert fmt_eta(59.6) == "0:01:00"
    assert fmt_eta(3 * 3600 + 25 * 60 + 7) == "3:25:07"
    assert fmt_eta(-5) == "0:00:00"


def test_a_line_every_ten_seconds_not_more():
    p, clock, lines = make()
    for step in range(1, 46):  # 45 s, an update every second
        clock.t += 1
        p.update(step * 10)
    assert len(lines) == 4  # at 10, 20, 30 and 40 s
    assert lines[0].startswith("scan r1: 100/1000 objects (10%), 10.0 objects/s over the last minute, ETA 0:01:30")
    p.finish()
    assert len(lines) == 5 and lines[-1].startswith("scan r1: 450/1000 objects (45%)")


def test_the_rate_is_the_last_minutes_not_the_runs():
    """100 objects/s for two minutes, then 10/s: a minute later the rate and the ETA are the new pace's."""
    p, clock, _ = make(total=20_000)
    done = 0
    for _ in range(120):
        clock.t += 1
        done += 100
        p.update(done)
    for _ in range(60):
        clock.t += 1
        done += 10
        p.update(done)
    assert p.rate() == pytest.approx(10.0)
    assert p.eta() == pytest.approx((20_000 - done) / 10.0)
    # half-way through the change the window holds 30 s of each pace
    p2, clock2, _ = make(total=20_000)
    done = 0
    for rate in [100] * 120 + [10] * 30:
        clock2.t += 1
        done += rate
        p2.update(done)
    assert p2.rate() == pytest.approx((30 * 100 + 30 * 10) / 60)


def test_unknown_rate_and_a_resumed_start():
    p, clock, lines = make(total=500, done=200)  # a resumed run: 200 done before this driver started
    assert p.rate() is None and p.eta() is None
    assert "200/500 objects (40%), rate -, ETA -" in p.line()
    clock.t += 10
    p.update(230)
    assert p.rate() == pytest.approx(3.0) and p.eta() == pytest.approx((500 - 230) / 3.0)
    assert lines == [p.line()]


def test_counts_as_a_person_reads_them():
    p, clock, lines = make(total=10)
    clock.t += 10
    p.update(10, status_counts({"ok": 8, "corrupt": 1, "missing": 1, "too_large": 0}, flagged=3))
    assert lines[-1].endswith("; ok 8, flagged 3, corrupt 1, missing 1")
    assert "ETA 0:00:00" in lines[-1]


def test_plain_lines_in_a_log(caplog):
    clock = Clock()
    with caplog.at_level(logging.INFO, logger="ood_audit.progress"):
        p = Progress("calibrate, held-out phase", 40, unit="images", clock=clock, tty=False)
        clock.t += 12
        p.update(20)
        p.finish()
    msgs = [r.getMessage() for r in caplog.records if r.name == "ood_audit.progress"]
    assert msgs[0].startswith("calibrate, held-out phase: 20/40 images (50%), 1.7 images/s")
    assert len(msgs) == 2


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_one_line_updated_in_place_and_log_lines_above_it():
    stream = _Tty()
    handler = ConsoleHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    root.handlers = [handler]
    root.setLevel(logging.INFO)
    try:
        assert console_is_tty()
        clock = Clock()
        p = Progress("scan r1", 100, clock=clock)
        for i in range(1, 6):
            clock.t += 1
            p.update(i * 10)
        logging.getLogger("ood_audit.test").warning("a log line while the bar shows")
        p.finish()
    finally:
        root.handlers = saved
        root.setLevel(level)
    out = stream.getvalue()
    assert "\r" in out  # redrawn in place, not one line per update
    assert out.count("\n") == 2  # the log line and the final summary line, nothing else
    assert "a log line while the bar shows" in out
    assert out.rstrip().endswith("scan r1: 50/100 objects (50%), 10.0 objects/s over the last minute, ETA 0:00:05")
