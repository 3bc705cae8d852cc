"""``sr-tile export``: a model's networks as ONNX files (``sr_tile.deploy.onnx``)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from sr_tile.cli._common import handle_errors, out
from sr_tile.errors import UsageError


@handle_errors
def export(
    model: Annotated[str, typer.Argument(help="Model name (sr-tile models).")],
    output_dir: Annotated[str, typer.Option("--output-dir", "-o",
                                            help="Folder to write <model>-x<scale>/ into.")],
    fmt: Annotated[str, typer.Option("--format", "-f", help="onnx.")] = "onnx",
    scale: Annotated[float, typer.Option("--scale", "-s", help="Upscaling factor.")] = 4,
    weights: Annotated[Optional[str], typer.Option(
        help="Weights file to export instead of the shipped one.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace existing files.")] = False,
) -> None:
    """Export a model to ONNX: one self-contained file per part, dynamic batch/height/width,
    opset 18; a routed model's router parts, so that routing runs as with torch."""
    if fmt != "onnx":
        raise UsageError(f"--format must be onnx, not {fmt!r}")
    from sr_tile.deploy.onnx import export_onnx

    scale = int(scale) if float(scale).is_integer() else scale
    folder = export_onnx(model, scale=scale, out_dir=output_dir, weights=weights,
                         overwrite=overwrite)
    files = sorted(folder.glob("*.onnx"))
    for path in files:
        out.print(f"  {path.name}  {path.stat().st_size / 1e6:.2f} MB")
    out.print(f"exported {model} x{scale:g} to {folder} ({len(files)} files); run it with "
              f"'sr-tile upscale IMAGE -m {model} --scale {scale:g} --backend onnxruntime "
              f"--weights {folder}'")
