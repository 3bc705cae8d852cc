"""The ``sr-tile`` command line: a thin layer over the library API."""

from __future__ import annotations

import signal
from typing import Annotated, Optional

import typer

from sr_tile import __version__
from sr_tile.cli._common import (
    State,
    error_line,
    interrupted_code,
    interrupted_message,
    out,
    route_library_output,
)
from sr_tile.errors import Interrupted
from sr_tile.cli.models import models
from sr_tile.cli.bench import bench
from sr_tile.cli.data import data_app
from sr_tile.cli.export import export
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
app.command("train")(train)
app.command("bench")(bench)
app.add_typer(data_app, name="data")
app.command("export")(export)
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
    route_library_output()
    tune_allocator()


def run(args: list[str] | None = None) -> int:
    """Run the command line; returns the exit code. A usage error (unknown option, a value
    of the wrong type) is one line and exit code 2, like our own option checks."""
    try:
        code = app(args=args, standalone_mode=False)
    except KeyboardInterrupt as exc:  # while typer builds the command line
        error_line(interrupted_message(exc))
        return interrupted_code(exc)
    except typer.Abort:
        error_line("interrupted")
        return 130
    except Exception as exc:  # click's usage errors (typer vendors click: no stable class)
        if not hasattr(exc, "format_message") or not hasattr(exc, "exit_code"):
            raise
        ctx = getattr(exc, "ctx", None)
        if type(exc).__name__ != "NoArgsIsHelpError":  # that one has printed the help
            where = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            error_line(exc.format_message() + where)
        return exc.exit_code
    code = code if isinstance(code, int) else 0
    if code == 130 and not State.interrupt_reported:  # typer caught it outside our commands
        stop = Interrupted(Interrupted.last or signal.SIGINT)
        error_line(interrupted_message(stop))
        return interrupted_code(stop)
    return code


def main() -> None:
    """The console script (see sr_tile._entry, which installs the signal handlers first)."""
    from sr_tile._entry import main as entry

    entry()


__all__ = ["app", "main", "run"]
