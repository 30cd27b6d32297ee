"""Progress on stderr, shared by the CLI and by worker processes it launches.

In a terminal it is a rich bar; elsewhere (SLURM or nohup logs, pipes, CI) a bar would never
be drawn, so it is plain lines instead: one at every tenth of the work, and one at least every
``LOG_EVERY_S`` seconds in between.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import timedelta
from types import SimpleNamespace

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
from rich.text import Text

LOG_EVERY_S = 60.0


class _RateColumn(ProgressColumn):
    """Items per second, e.g. ``120 images/s`` (rich's speed estimate over the last 30 s)."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task) -> Text:
        return Text(f"{task.speed:,.0f} {self.unit}/s" if task.speed else "")


class _LogLines:
    """The non-terminal progress: ``update`` takes the arguments of rich's ``Progress.update``."""

    def __init__(self, description: str, total: int, fields: str, unit: str, values: dict):
        self.description, self.total, self.fields, self.unit = description, total, fields, unit
        self.values, self.done = values, 0
        self.start = self.last_time = time.monotonic()
        self.last_tenth = 0

    def update(self, advance: int = 0, *, completed: int | None = None,
               total: int | None = None, **values) -> None:  # fmt: skip
        self.done = completed if completed is not None else self.done + advance
        self.total = total if total is not None else self.total
        self.values.update(values)
        now = time.monotonic()
        tenth = 10 * self.done // max(1, self.total)
        if tenth > self.last_tenth or now - self.last_time >= LOG_EVERY_S:
            self.last_tenth, self.last_time = tenth, now
            print(self.line(now - self.start), file=sys.stderr, flush=True)

    def line(self, elapsed: float) -> str:
        parts = [f"{self.description}: {self.done:,}/{self.total:,}"
                 f" ({100 * self.done // max(1, self.total)}%)"]  # fmt: skip
        if self.fields:
            parts.append(self.fields.format(task=SimpleNamespace(fields=self.values)).strip())
        if self.unit and self.done and elapsed > 0:
            parts.append(f"{self.done / elapsed:,.0f} {self.unit}/s")
        if 0 < self.done < self.total:
            left = elapsed * (self.total - self.done) / self.done
            parts.append(f"{timedelta(seconds=round(left))} left")
        return ", ".join(p for p in parts if p)


@contextmanager
def lazy_progress_bar(description: str, unit: str = "") -> Iterator[Callable[[int, int], None]]:
    """Yield ``advance(n, total)``; progress shows only if work is reported (a cache miss)."""
    with ExitStack() as stack:
        bar = None

        def advance(n: int, total: int) -> None:
            nonlocal bar
            if bar is None:
                bar = stack.enter_context(progress_bar(description, total, unit=unit))
            bar(n)

        yield advance


@contextmanager
def progress_bar(
    description: str, total: int, fields: str = "", unit: str = "", **initial: str
) -> Iterator[Callable[..., None]]:
    """Yield ``advance(n, **kw)`` (``kw`` as rich's ``Progress.update``: ``completed``, ``total``,
    fields). ``fields`` formats extra task fields (``initial`` values); ``unit`` adds a rate."""
    console = Console(stderr=True)
    if not (console.is_interactive or console.is_jupyter):
        yield _LogLines(description, total, fields, unit, dict(initial)).update
        return
    extra = ([_RateColumn(unit)] if unit else []) + ([TextColumn(fields)] if fields else [])
    with Progress(TextColumn("{task.description}"), BarColumn(),
                  TextColumn("{task.completed:,}/{task.total:,}"), TimeRemainingColumn(),
                  *extra, console=console, transient=True) as bar:  # fmt: skip
        task = bar.add_task(description, total=total, **initial)
        yield lambda n, **kw: bar.update(task, advance=n, **kw)
