"""The ``sr-tile`` command line: a thin layer over the library API."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from sr_tile import __version__
from sr_tile.cli._common import State, out
from sr_tile.cli.models import models
from sr_tile.cli.bench import bench
from sr_tile.cli.data import data_app
from sr_tile.cli.pending import export
from sr_tile.cli.train import train
from sr_tile.cli.upscale import upscale
from sr_tile.runtime import tune_allocator

app = typer.Typer(
    name="sr-tile",
    help="Tiled, content-adaptive super-resolution for large images.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command()(upscale)
_PASS_THROUGH = {"ignore_unknown_options": True, "allow_extra_args": True}
app.command("train")(train)
app.command("bench")(bench)
app.add_typer(data_app, name="data")
app.command("export", context_settings=_PASS_THROUGH)(export)
app.command()(models)


def _version(value: bool) -> None:
    if value:
        out.print(f"sr-tile {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option(help="Show tracebacks for errors.")] = False,
    version: Annotated[
        Optional[bool],
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = None,
) -> None:
    State.debug = debug
    tune_allocator()


def main() -> None:
    app()


__all__ = ["app", "main"]
