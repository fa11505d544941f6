"""Progress of every long step (training, the teacher pass): rows/s (or tokens/s), done/total and ETA.

In a terminal: rich bars. Anywhere else (`kd run ... | tee run.log`, CI, a cluster job's log file) a bar is
printed only when it ends, so instead one plain line is printed every KD_PROGRESS_INTERVAL seconds (default
10) while the step runs, from a background thread (so a slow step still reports on time):

    train_student: 1,200/8,000 (15%), 4,100 rows/s, elapsed 29.3 s, ETA 1:37
"""

from __future__ import annotations

import os
import sys
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

from rich import get_console
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.text import Text

from .errors import KDError

INTERVAL_ENV = "KD_PROGRESS_INTERVAL"
LOG_WIDTH = 200  # columns when the output is not a terminal: rich's default there, 80, splits values mid-line
DEFAULT_INTERVAL = 10.0  # seconds between plain progress lines when the output is not a terminal


class RateColumn(ProgressColumn):
    def __init__(self, unit: str):
        super().__init__()
        self.unit = unit

    def render(self, task) -> Text:
        rows = task.fields.get("rows", 0)
        el = task.elapsed or 0.0
        rate = rows / el if el > 0 else 0.0
        return Text(f"{rate:,.0f} {self.unit}/s", style="progress.data.speed")


@contextmanager
def progress(desc: str, total: int, unit: str = "rows", enabled: bool = True) -> Iterator[Callable[[int, int], None]]:
    """Yields advance(steps, rows): `total` counts steps; the rate counts rows (in `unit`). Steps advanced
    with no rows before any rows (a resumed run's finished steps) count as done, not as work for the ETA.
    enabled=False (ranks other than 0 under torchrun): nothing is shown."""
    if not enabled:
        yield lambda steps=1, n_rows=0: None
        return
    console = get_console()
    show = _rich_bar if console.is_terminal or console.is_jupyter else _plain_lines
    with show(desc, total, unit) as advance:
        yield advance


@contextmanager
def _rich_bar(desc: str, total: int, unit: str) -> Iterator[Callable[[int, int], None]]:
    cols = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), RateColumn(unit), TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*cols, transient=False) as p:
        task = p.add_task(desc, total=total, rows=0)
        rows = [0]

        def advance(steps: int = 1, n_rows: int = 0) -> None:
            rows[0] += n_rows
            p.update(task, advance=steps, rows=rows[0])

        yield advance


@contextmanager
def _plain_lines(desc: str, total: int, unit: str) -> Iterator[Callable[[int, int], None]]:
    every = interval()
    t0 = time.monotonic()
    s = {"done": 0, "rows": 0, "resumed": 0}  # read by the reporting thread: ints, each update is atomic

    def advance(steps: int = 1, n_rows: int = 0) -> None:
        if n_rows == 0 and s["rows"] == 0:
            s["resumed"] += steps
        s["done"] += steps
        s["rows"] += n_rows

    def line(end: str = "") -> str:
        el = time.monotonic() - t0
        done, work = s["done"], s["done"] - s["resumed"]
        rate = f"{s['rows'] / el:,.0f} {unit}/s" if el > 0 else f"- {unit}/s"
        eta = _clock((total - done) * el / work) if work > 0 else "-"
        pct = f"{100 * done // total}%" if total else "-"
        return f"{desc}: {done:,}/{total:,} ({pct}), {rate}, elapsed {_clock(el)}, " + (end or f"ETA {eta}")

    stop = threading.Event()

    def report() -> None:
        while not stop.wait(every):
            print(line(), file=sys.stdout, flush=True)

    reporter = threading.Thread(target=report, name=f"progress:{desc}", daemon=True)
    reporter.start()
    try:
        yield advance
    finally:
        stop.set()
        reporter.join()
    print(line("done"), file=sys.stdout, flush=True)  # not after an exception: the error says what happened


def make_console() -> Console:
    """A rich console on stdout (stage lines, tables and progress all in one stream, so `| tee run.log` keeps
    them together); when stdout is not a terminal and $COLUMNS is not set, LOG_WIDTH columns wide."""
    c = Console()
    if not c.is_terminal and "COLUMNS" not in os.environ:
        c = Console(width=LOG_WIDTH)
    return c


def interval() -> float:
    """Seconds between plain progress lines: $KD_PROGRESS_INTERVAL or DEFAULT_INTERVAL; KDError if invalid."""
    raw = os.environ.get(INTERVAL_ENV)
    if raw is None:
        return DEFAULT_INTERVAL
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise KDError(f"{INTERVAL_ENV}={raw}: expected seconds between progress lines, > 0")
    return value


def _clock(seconds: float) -> str:
    """12.3 s, 4:05, 1:02:03"""
    if seconds < 60:
        return f"{seconds:.1f} s"
    m, sec = divmod(int(seconds), 60)
    return f"{m}:{sec:02d}" if m < 60 else f"{m // 60}:{m % 60:02d}:{sec:02d}"
