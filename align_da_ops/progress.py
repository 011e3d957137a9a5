"""One progress bar for every long command: description, bar, n/total, elapsed and remaining time, on stderr."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class Bar:
    """A running bar: `bar(completed, total=None, description=None)`, `bar.advance()`, `bar.print(text)`
    (a line above the bar, e.g. per epoch)."""

    def __init__(self, progress, task):
        self._progress, self._task = progress, task

    def __call__(self, completed: int, total: int | None = None, description: str | None = None) -> None:
        fields = {"completed": completed}
        if total is not None:
            fields["total"] = total
        if description is not None:
            fields["description"] = description
        self._progress.update(self._task, **fields)

    def advance(self, steps: int = 1) -> None:
        self._progress.advance(self._task, steps)

    def print(self, text: str) -> None:
        self._progress.console.print(text)


@contextlib.contextmanager
def progress_bar(description: str, total: int | None = None, transient: bool = False) -> Iterator[Bar]:
    """A bar on stderr (stdout stays for results); `total` None until the first update says it."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=transient) as progress:
        yield Bar(progress, progress.add_task(description, total=total))
