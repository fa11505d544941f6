"""rich progress bars that show rows/s (or tokens/s) on every long step."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.text import Text


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
    """Yields advance(steps, rows): `total` counts steps; the rate column counts rows. enabled=False (ranks
    other than 0 under torchrun): nothing is shown."""
    if not enabled:
        yield lambda steps=1, n_rows=0: None
        return
    cols = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), RateColumn(unit), TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*cols, transient=False) as p:
        task = p.add_task(desc, total=total, rows=0)
        rows = [0]

        def advance(steps: int = 1, n_rows: int = 0) -> None:
            rows[0] += n_rows
            p.update(task, advance=steps, rows=rows[0])

        yield advance
