"""Progress on stderr, shared by the CLI and by worker processes it launches.

In a terminal it is a rich bar; elsewhere (SLURM or nohup logs, pipes, CI) a bar would never
be drawn, so it is plain lines instead: one at the first report (the work has begun), one at
every tenth of the work, and one whenever ``LOG_EVERY_S`` seconds have passed since the last
line (checked as work is reported).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from datetime import timedelta
from types import SimpleNamespace
from typing import Any, cast

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

LOG_EVERY_S = 60.0

Advance = Callable[[int, int], None]  # (work done now, of total)
# how a library function shows one-off work it may have to do (encoding a gallery...): given
# what the work is and its unit, a context manager yielding ``advance`` (None: show nothing);
# ``lazy_progress_bar`` is one, ``silent`` another
Report = Callable[[str, str], AbstractContextManager[Advance | None]]
Log = Callable[[str], object]  # a line for the user (what was found, what was skipped)


def silent(description: str, unit: str = "") -> AbstractContextManager[Advance | None]:
    """A ``Report`` that shows nothing: the library's default."""
    return nullcontext()


def quiet(line: str) -> None:
    """A ``Log`` that says nothing: the library's default."""


class _RateColumn(ProgressColumn):
    """Items per second, e.g. ``120 images/s`` (rich's speed estimate over the last 30 s)."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        return Text(f"{task.speed:,.0f} {self.unit}/s" if task.speed else "")


class _LogLines:
    """The non-terminal progress: ``update`` takes the arguments of rich's ``Progress.update``.

    Rate and time left are measured from the first report, so work found done at the start
    (a resumed run reports its step at once) does not count as speed."""

    def __init__(self, description: str, total: int, fields: str, unit: str,
                 values: dict[str, Any]):  # fmt: skip
        self.description, self.total, self.fields, self.unit = description, total, fields, unit
        self.values, self.done, self.last_tenth = values, 0, 0
        self.last_time = time.monotonic()
        self.base: tuple[int, float] | None = None  # (done, time) at the first report

    def update(self, advance: int = 0, *, completed: int | None = None,
               total: int | None = None, **values: Any) -> None:  # fmt: skip
        self.done = completed if completed is not None else self.done + advance
        self.total = total if total is not None else self.total
        self.values.update(values)
        now = time.monotonic()
        first = self.base is None
        self.base = self.base or (self.done, now)
        tenth = 10 * self.done // self.total if self.total > 0 else 0
        if first or tenth > self.last_tenth or now - self.last_time >= LOG_EVERY_S:
            self.last_tenth, self.last_time = tenth, now
            print(self.line(now), file=sys.stderr, flush=True)

    def line(self, now: float) -> str:
        parts = [f"{self.description}: {self.done:,}"]
        if self.total > 0:
            parts[0] += f"/{self.total:,} ({100 * self.done // self.total}%)"
        if self.fields:
            parts.append(self.fields.format(task=SimpleNamespace(fields=self.values)).strip())
        assert self.base is not None  # set by update, which calls this
        done0, time0 = self.base
        rate = (self.done - done0) / (now - time0) if now > time0 else 0.0
        if self.unit and rate > 0:
            parts.append(f"{rate:,.{0 if rate >= 10 else 1}f} {self.unit}/s")
        if rate > 0 and self.done < self.total:
            parts.append(f"{timedelta(seconds=round((self.total - self.done) / rate))} left")
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
    # rich counts FORCE_COLOR as a terminal; a log with colours still cannot redraw a bar
    if not ((console.is_interactive and sys.stderr.isatty()) or console.is_jupyter):
        yield _LogLines(description, total, fields, unit, dict(initial)).update
        return
    extra = ([_RateColumn(unit)] if unit else []) + ([TextColumn(fields)] if fields else [])
    with Progress(TextColumn("{task.description}"), BarColumn(),
                  TextColumn("{task.completed:,}/{task.total:,}"), TimeRemainingColumn(),
                  *extra, console=console, transient=True) as bar:  # fmt: skip
        # the fields' names are not add_task's own parameters (start, completed, visible)
        task = bar.add_task(description, total=total, **cast(dict[str, Any], initial))
        yield lambda n, **kw: bar.update(task, advance=n, **kw)
