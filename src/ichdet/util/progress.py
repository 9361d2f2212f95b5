"""Progress bars (rich) for long loops; quiet when stderr is not a terminal."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class Bar:
    """``bar(n, **fields)`` advances by n and shows the fields; ``bar.set_total(n)`` sizes it."""

    def __init__(self, progress: Progress, task: TaskID):
        self._progress, self._task = progress, task

    def __call__(self, n: int = 1, **fields: object) -> None:
        status = " ".join(f"{k}={v}" for k, v in fields.items())
        if fields:
            self._progress.update(self._task, advance=n, status=status)
        else:
            self._progress.update(self._task, advance=n)

    def set_total(self, total: int) -> None:
        self._progress.update(self._task, total=total)


@contextlib.contextmanager
def progress_bar(total: int | None, description: str) -> Iterator[Bar]:
    console = Console(stderr=True)
    columns = [
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}", markup=False),
    ]
    with Progress(*columns, console=console, disable=not console.is_terminal) as progress:
        yield Bar(progress, progress.add_task(description, total=total, status=""))
