"""``sr-tile data``: prepare benchmark datasets (``prepare-div8k``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from sr_tile.cli._common import err, handle_errors, out, warning_line
from sr_tile.errors import ConfigError

__all__ = ["data_app", "prepare_div8k_command"]

data_app = typer.Typer(
    help="Prepare benchmark datasets.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@data_app.command("prepare-div8k")
@handle_errors
def prepare_div8k_command(
    src: Annotated[Path, typer.Argument(help="The DIV8K HR folder (0001.png ... 1500.png).")],
    dest: Annotated[Path, typer.Argument(help="Where Test2K/, Test4K/ and Test8K/ are written.")],
    sets: Annotated[Optional[list[str]], typer.Option(
        "--set", help="Build only this set (repeatable): Test2K, Test4K, Test8K.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Rebuild images already written.")] = False,
) -> None:
    """Build Test2K/Test4K/Test8K from DIV8K by the ClassSR protocol (HR/X4 + LR/X4)."""
    from sr_tile.bench.div8k import ASSUMPTIONS, DIV8K_SETS, PROTOCOL, prepare_div8k

    chosen = tuple(sets) if sets else tuple(DIV8K_SETS)
    canonical = {name.lower(): name for name in DIV8K_SETS}
    bad = [s for s in chosen if s.lower() not in canonical]
    if bad:
        raise ConfigError(f"--set {bad[0]!r}: choose from {', '.join(DIV8K_SETS)}")
    chosen = tuple(dict.fromkeys(canonical[s.lower()] for s in chosen))
    out.print(f"[bold]Protocol:[/] {escape(PROTOCOL)}")
    out.print("[bold]Assumed where the protocol says nothing:[/]")
    for line in ASSUMPTIONS:
        out.print(f"  - {escape(line)}")

    def on_image(name: str, file: str, i: int, n: int) -> None:
        err.print(f"[{name} {i}/{n}] {escape(file)}", highlight=False)

    report = prepare_div8k(src, dest, sets=chosen, overwrite=overwrite, on_image=on_image,
                           on_warning=warning_line)
    table = Table(title=f"sr-tile data prepare-div8k -> {escape(str(dest))}", title_justify="left")
    for name in ("set", "DIV8K", "HR", "written", "kept", "missing", "failed", "folder"):
        table.add_column(name, justify="left" if name in ("set", "folder", "HR") else "right")
    failed = 0
    for s in report.sets:
        failed += len(s.failed)
        table.add_row(
            s.name, f"{s.first}-{s.last}",
            "original" if s.factor == 1 else f"original / {s.factor}",
            str(len(s.written)), str(len(s.kept)), str(s.missing), str(len(s.failed)),
            escape(str(Path(report.dest) / s.name)) if s.written or s.kept else "-",
        )
    out.print(table)
    for s in report.sets:
        if s.missing:
            warning_line(f"{s.name}: {s.missing} of {s.expected} DIV8K images "
                         f"({s.first}-{s.last}) were not in {src}; the set is incomplete")
    if failed:
        raise typer.Exit(1)
