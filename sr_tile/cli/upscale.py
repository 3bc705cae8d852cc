"""``sr-tile upscale``: upscale files, folders or globs, one bad file never stops the rest."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from sr_tile import __version__
from sr_tile.cli._common import (
    State,
    err,
    error_line,
    handle_errors,
    out,
    progress_for,
    warning_line,
    write_json,
)
from sr_tile.errors import SrTileError
from sr_tile.flops import format_flops
from sr_tile.io import DEFAULT_MAX_PIXELS, WriteOptions
from sr_tile.models import DEFAULT_MODEL
from sr_tile.paths import plan_jobs
from sr_tile.routing import RoutingOptions
from sr_tile.upscale import ImageReport, UpscaleOptions, Upscaler


def _exit_map_path(option: Path | None, src: Path, n_jobs: int) -> Path | None:
    if option is None or (n_jobs == 1 and option.suffix):
        return option
    option.mkdir(parents=True, exist_ok=True)
    return option / f"{src.stem}_exits.png"


def _seconds(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f} s"


def report_table(reports: list[ImageReport]) -> Table:
    table = Table(title="sr-tile upscale (FLOPs: classsr convention)", title_justify="left")
    routed = any(r.exits for r in reports)
    names = ["input", "size", "model", "latency", "total", "FLOPs", "% static"]
    for name in names + (["exits b/1/2/full"] if routed else []) + ["status"]:
        table.add_column(name, justify="left" if name in ("input", "model", "size") else "right")
    for r in reports:
        ok = r.status == "ok"
        pct = r.flops_pct
        table.add_row(
            escape(Path(r.input).name),
            f"{r.width}x{r.height}→{r.out_width}x{r.out_height}" if ok else "",
            r.model or "",
            _seconds(r.latency_s) if ok else "",
            _seconds(r.total_s) if ok else "",
            format_flops(r.flops) if ok and r.flops is not None else "",
            f"{pct:.1f}%" if ok and pct is not None else "",
            *(["/".join(f"{100 * v:.0f}" for v in r.exits.values()) if r.exits else ""]
              if routed else []),
            {"ok": "[green]ok[/]", "skipped": "[yellow]skipped[/]"}.get(r.status, "[red]failed[/]"),
        )
    return table


@handle_errors
def upscale(
    inputs: Annotated[list[str], typer.Argument(help="Image files, folders or quoted globs.")],
    scale: Annotated[int, typer.Option("--scale", "-s", help="Upscaling factor.")] = 4,
    output: Annotated[
        Optional[str], typer.Option("--output", "-o", help="Output file (one input only).")
    ] = None,
    output_dir: Annotated[
        Optional[str], typer.Option("--output-dir", "-d", help="Folder for the outputs.")
    ] = None,
    model: Annotated[str, typer.Option("--model", "-m", help="Model name (sr-tile models).")] = DEFAULT_MODEL,
    tile: Annotated[Optional[int], typer.Option(help="LR tile side in pixels.")] = None,
    overlap: Annotated[Optional[int], typer.Option(help="LR overlap between tiles.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(
        help="Tiles per forward pass (default: about 64k LR pixels).")] = None,
    fmt: Annotated[
        Optional[str], typer.Option("--format", "-f", help="png, jpeg, webp, bmp or tiff.")
    ] = None,
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="Recurse into folders.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace existing outputs.")] = False,
    skip_existing: Annotated[
        bool, typer.Option(help="Skip inputs whose output exists (resume a batch).")
    ] = False,
    max_pixels: Annotated[
        int, typer.Option(help="Refuse inputs with more pixels (decompression bombs).")
    ] = DEFAULT_MAX_PIXELS,
    alpha: Annotated[str, typer.Option(help="Alpha upscaling: bicubic or model.")] = "bicubic",
    quality: Annotated[int, typer.Option(help="JPEG/WebP quality.")] = 95,
    bigtiff: Annotated[
        Optional[bool], typer.Option("--bigtiff/--no-bigtiff", help="Force (or forbid) BigTIFF.")
    ] = None,
    json_path: Annotated[
        Optional[Path], typer.Option("--json", help="Write a machine-readable report here.")
    ] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    weights: Annotated[
        Optional[str], typer.Option(help="Weights file to use instead of the shipped one.")
    ] = None,
    preset: Annotated[
        Optional[str], typer.Option(help="Routed models: L (quality), M or S (speed).")
    ] = None,
    eta: Annotated[Optional[float], typer.Option(help="Routed models: cost weight of Eq. 9.")] = None,
    gamma: Annotated[Optional[float], typer.Option(
        help="Routed models: blank-vector weight (default: the preset's).")] = None,
    budget: Annotated[
        Optional[float],
        typer.Option(help="Routed models: mean FLOPs as a fraction of the full network."),
    ] = None,
    exit_map: Annotated[
        Optional[Path],
        typer.Option(help="Routed models: write the path of every tile as a PNG "
                     "(a folder when there are several inputs)."),
    ] = None,
) -> None:
    """Upscale images tile by tile; print latency and FLOPs per image."""
    options = UpscaleOptions(
        scale=scale,
        model=model,
        tile=tile,
        overlap=overlap,
        batch_size=batch_size,
        device=device,
        alpha=alpha,
        fmt=fmt,
        overwrite=overwrite,
        max_pixels=max_pixels,
        write=WriteOptions(jpeg_quality=quality, webp_quality=quality, bigtiff=bigtiff),
        routing=RoutingOptions(eta=eta, gamma=gamma, preset=preset, budget=budget),
        weights=weights,
    )
    jobs = plan_jobs(
        inputs, scale=scale, output=output, output_dir=output_dir, fmt=fmt, recursive=recursive
    )
    upscaler = Upscaler(options)
    reports: list[ImageReport] = []
    with progress_for(len(jobs)) as bar:
        for index, job in enumerate(jobs, 1):
            if skip_existing and job.dst.exists():
                reports.append(ImageReport(str(job.src), str(job.dst), status="skipped"))
                continue
            try:
                job.dst.parent.mkdir(parents=True, exist_ok=True)
                report = upscaler.upscale_file(
                    job.src,
                    job.dst,
                    on_start=bar.start_file(index, job.src.name),
                    on_tiles=bar.advance,
                    on_warning=warning_line,
                    exit_map=_exit_map_path(exit_map, job.src, len(jobs)),
                )
            except SrTileError as exc:
                if State.debug:
                    err.print_exception()
                error_line(str(exc))
                report = ImageReport(str(job.src), None, status="failed", error=str(exc))
            except OSError as exc:  # disk full, permissions: this file fails, the batch goes on
                message = f"{job.dst}: {exc.strerror or exc}"
                error_line(message)
                report = ImageReport(str(job.src), None, status="failed", error=message)
            reports.append(report)

    out.print(report_table(reports))
    counts = {k: sum(r.status == k for r in reports) for k in ("ok", "failed", "skipped")}
    out.print(f"{counts['ok']} written, {counts['failed']} failed, {counts['skipped']} skipped")
    if json_path is not None:
        write_json(
            json_path,
            {
                "sr_tile_version": __version__,
                "command": "upscale",
                "model": upscaler.descriptor.name,
                "scale": scale,
                "device": device,
                "tile": upscaler.tiling.tile,
                "overlap": upscaler.tiling.overlap,
                "flops_convention": "classsr",
                "images": [r.to_dict() for r in reports],
                "summary": counts,
            },
        )
    if counts["failed"]:
        raise typer.Exit(1)
