"""Rich progress bars on stderr, shared by the CLI and by worker processes it launches."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn


def _columns() -> tuple:
    """Fresh columns per bar (rich columns keep per-bar render state)."""
    return (TextColumn("{task.description}"), BarColumn(),
            TextColumn("{task.completed:,}/{task.total:,}"), TimeRemainingColumn())  # fmt: skip


@contextmanager
def lazy_progress_bar(description: str) -> Iterator[Callable[[int, int], None]]:
    """Yield ``advance(n, total)``; the bar appears only if work is reported (a cache miss)."""
    bar = Progress(*_columns(), console=Console(stderr=True), transient=True)
    task = None

    def advance(n: int, total: int) -> None:
        nonlocal task
        if task is None:
            bar.start()
            task = bar.add_task(description, total=total)
        bar.advance(task, n)

    try:
        yield advance
    finally:
        if task is not None:
            bar.stop()


@contextmanager
def progress_bar(
    description: str, total: int, fields: str = "", **initial: str
) -> Iterator[Callable[..., None]]:
    """Yield ``advance(n, **kw)``; ``fields`` formats extra task fields (``initial`` values)."""
    extra = [TextColumn(fields)] if fields else []
    with Progress(*_columns(), *extra, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=total, **initial)
        yield lambda n, **kw: bar.update(task, advance=n, **kw)
