"""Rich progress bars on stderr, shared by the CLI and by worker processes it launches."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn


@contextmanager
def progress_bar(
    description: str, total: int, fields: str = "", **initial: str
) -> Iterator[Callable[..., None]]:
    """Yield ``advance(n, **kw)``; ``fields`` formats extra task fields (``initial`` values)."""
    columns = [TextColumn("{task.description}"), BarColumn(),
               TextColumn("{task.completed:,}/{task.total:,}"), TimeRemainingColumn()]  # fmt: skip
    if fields:
        columns.append(TextColumn(fields))
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=total, **initial)
        yield lambda n, **kw: bar.update(task, advance=n, **kw)
