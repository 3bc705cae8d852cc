"""Commands whose issues have not landed yet; they say so instead of pretending."""

from __future__ import annotations

from typing import Annotated

import typer

from sr_tile.cli._common import handle_errors
from sr_tile.errors import SrTileError

_ARGS = typer.Argument(help="Arguments of the command.")


def _pending(name: str, issue: str):
    @handle_errors
    def command(args: Annotated[list[str] | None, _ARGS] = None) -> None:
        raise SrTileError(f"'sr-tile {name}' is not available yet ({issue})")

    command.__doc__ = f"Not available yet: {issue}."
    return command


export = _pending("export", "arrives with ONNX export")
