"""One progress bar for every long command: description, bar, n/total, elapsed and remaining time, on stderr."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def progress_bar(description: str, total: int | None = None, transient: bool = False) -> Iterator[Callable[..., None]]:
    """Yields `update(completed, total=None, description=None)`; the bar goes to stderr (stdout stays for results)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=transient) as bar:
        task = bar.add_task(description, total=total)

        def update(completed: int, total: int | None = None, description: str | None = None) -> None:
            fields = {"completed": completed}
            if total is not None:
                fields["total"] = total
            if description is not None:
                fields["description"] = description
            bar.update(task, **fields)

        yield update
