"""What every command module shares: the consoles and the one way to fail."""

from __future__ import annotations

import sys
from typing import Annotated, NoReturn

import typer
from rich.console import Console

# logs and CI capture output without a terminal; rich would then wrap at 80 columns
# markup off: file names and reasons may hold [brackets]
console = Console(width=None if sys.stdout.isatty() else 120, markup=False)
err = Console(stderr=True, soft_wrap=True, markup=False)


def fail(message: str, code: int = 1) -> NoReturn:
    err.print(f"error: {message}", style="red")
    raise typer.Exit(code)


EngineOpt = Annotated[
    str, typer.Option("--engine", help="local (this machine) | ray (a Ray cluster)")
]
AddressOpt = Annotated[
    str | None,
    typer.Option(
        "--address", help="with --engine ray: auto | ray://HEAD:10001 (none: Ray on this machine)"
    ),
]
