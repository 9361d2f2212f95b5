"""Progress bars (rich) for long loops; quiet when stderr is not a terminal unless asked."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


@contextlib.contextmanager
def progress_bar(total: int | None, description: str) -> Iterator[Callable[..., None]]:
    """Yield ``advance(n=1, total=None, **fields)``; ``fields`` set a status text by the bar."""
    console = Console(stderr=True)
    columns = [
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
    ]
    with Progress(
        *columns, console=console, transient=False, disable=not console.is_terminal
    ) as bar:
        task = bar.add_task(description, total=total, status="")

        def advance(n: int = 1, total: int | None = None, **fields: object) -> None:
            if total is not None:
                bar.update(task, total=total)
            status = " ".join(f"{k}={v}" for k, v in fields.items())
            bar.update(task, advance=n, **({"status": status} if fields else {}))

        yield advance
