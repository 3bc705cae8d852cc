"""``sr-tile models``: what can be used, at which scales, with which weights."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from sr_tile.cli._common import handle_errors, out
from sr_tile.io.atomic import write_json_atomic
from sr_tile.models import DEFAULT_MODEL, MODELS
from sr_tile.models.registry import ANY_SCALE


@handle_errors
def models(
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Write the list as JSON.")] = None,
) -> None:
    """List the registered models."""
    table = Table(title="sr-tile models", title_justify="left")
    for name in ("name", "scales", "routing", "weights", "description"):
        table.add_column(name)
    rows = []
    for entry in MODELS.values():
        scales = entry.describe_scales()
        weights = ", ".join(entry.weights.values()) or (
            f"none yet (sr-tile train {entry.family})" if entry.learned else "none needed")
        name = entry.name + (" (default)" if entry.name == DEFAULT_MODEL else "")
        table.add_row(name, scales, entry.routing, weights, entry.summary)
        rows.append(
            {
                "name": entry.name,
                "scales": list(entry.scales),
                "scale_range": list(entry.scale_range) if entry.scale_range else None,
                "family": entry.family,
                "trains": entry.train is not None,
                "routing": entry.routing,
                "weights": {("any" if s == ANY_SCALE else s): f for s, f in entry.weights.items()},
                "default": entry.name == DEFAULT_MODEL,
                "summary": entry.summary,
            }
        )
    out.print(table)
    if json_path is not None:
        write_json_atomic(json_path, {"models": rows})
