"""``sr-tile upscale``: upscale files, folders or globs; one bad file never stops the rest.

Every path the run writes is decided and checked before any work (``sr_tile.paths``).
Each job's failure, of any kind, is one line and the batch goes on; the summary and
the ``--json`` report are written however the run ends: done, stopped by an error,
or interrupted (Ctrl-C, SIGTERM, SIGHUP), with what finished.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from sr_tile import __version__
from sr_tile.cli._common import (
    State,
    err,
    error_line,
    handle_errors,
    interrupted_code,
    interrupted_message,
    out,
    printable,
    progress_for,
    warning_line,
)
from sr_tile.errors import SrTileError, UsageError
from sr_tile.io import DEFAULT_MAX_PIXELS, WriteOptions
from sr_tile.io.atomic import write_json_atomic
from sr_tile.models import DEFAULT_MODEL
from sr_tile.paths import RunPlan, plan_run
from sr_tile.routing import RoutingOptions

if TYPE_CHECKING:  # torch comes with these: imported when the command runs, not for --help
    from sr_tile.upscale import ImageReport, UpscaleOptions, Upscaler


def _seconds(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f} s"


def report_table(reports: list[ImageReport]) -> Table:
    from sr_tile.flops import format_flops

    table = Table(title="sr-tile upscale (FLOPs: classsr convention)", title_justify="left")
    routed = any(r.routing for r in reports)
    names = ["input", "size", "model", "latency", "total", "FLOPs", "% static"]
    for name in names + (["routing"] if routed else []) + ["status"]:
        table.add_column(name, justify="left" if name in ("input", "model", "size") else "right")
    for r in reports:
        ok = r.status == "ok"
        pct = r.flops_pct
        table.add_row(
            escape(printable(Path(r.input).name)),
            f"{r.width}x{r.height}→{r.out_width}x{r.out_height}" if ok else "",
            r.model or "",
            _seconds(r.latency_s) if ok else "",
            _seconds(r.total_s) if ok else "",
            format_flops(r.flops) if ok and r.flops is not None else "",
            f"{pct:.1f}%" if ok and pct is not None else "",
            *([escape(r.routing)] if routed else []),
            {"ok": "[green]ok[/]", "skipped": "[yellow]skipped[/]"}.get(r.status, "[red]failed[/]"),
        )
    return table


def _job_failed(message: str, exc: BaseException | None) -> None:
    if State.debug and exc is not None:
        from rich.traceback import Traceback

        err.print(Traceback.from_exception(type(exc), exc, exc.__traceback__))
    error_line(message)


def _finish(plan: RunPlan, reports: list[ImageReport], upscaler: Upscaler | None,
            options: UpscaleOptions, stop: BaseException | None) -> dict[str, int]:
    """Print the table and the summary and write the ``--json`` report, however the run
    ended. A failure here is one more error line, never a replacement for ``stop``."""
    from sr_tile.upscale import ImageReport

    counts = {k: sum(r.status == k for r in reports) for k in ("ok", "failed", "skipped")}
    counts["not_run"] = len(plan.jobs) - len(reports) + sum(r.status == "not run"
                                                            for r in reports)
    try:
        if reports:
            out.print(report_table(reports))
        out.print(f"{counts['ok']} written, {counts['failed']} failed, {counts['skipped']} "
                  f"skipped" + (f", {counts['not_run']} not run" if counts["not_run"] else ""))
    except SrTileError as exc:
        error_line(str(exc))
        counts["failed"] += 1  # the run did not deliver what it was asked for
    if plan.report is None:
        return counts
    stopped = None
    if isinstance(stop, KeyboardInterrupt):
        stopped = {"reason": interrupted_message(stop), "exit_code": interrupted_code(stop)}
    elif isinstance(stop, SrTileError):
        stopped = {"reason": str(stop), "exit_code": stop.exit_code}
    elif stop is not None:
        stopped = {"reason": f"internal error: {type(stop).__name__}: {stop}", "exit_code": 1}
    images = [r.to_dict() for r in reports] + [
        ImageReport(str(job.src), None, status="not run").to_dict()
        for job in plan.jobs[len(reports):]]
    try:
        write_json_atomic(plan.report, {
            "sr_tile_version": __version__,
            "command": "upscale",
            "model": upscaler.descriptor.name if upscaler else options.model,
            "scale": options.scale,
            "device": options.device,
            "tile": upscaler.tiling.tile if upscaler else None,
            "overlap": upscaler.tiling.overlap if upscaler else None,
            "flops_convention": "classsr",
            "images": images,
            "skipped_inputs": plan.notes,
            "summary": counts,
            "stopped": stopped,
        }, overwrite=options.overwrite)
    except SrTileError as exc:
        error_line(str(exc))
        counts["failed"] += 1
    return counts


@handle_errors
def upscale(
    inputs: Annotated[list[str], typer.Argument(help="Image files, folders or quoted globs.")],
    scale: Annotated[float, typer.Option(
        "--scale", "-s", help="Upscaling factor: 2, 3, 4, or any float the model supports (2.5).")
    ] = 4,
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
    follow_links: Annotated[bool, typer.Option(
        help="With --recursive, also search folders reached through symlinks (each once).")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace existing outputs.")] = False,
    skip_existing: Annotated[
        bool, typer.Option(help="Skip inputs whose output exists (resume a batch).")
    ] = False,
    max_pixels: Annotated[
        int, typer.Option(help="Refuse inputs with more pixels (decompression bombs).")
    ] = DEFAULT_MAX_PIXELS,
    alpha: Annotated[str, typer.Option(help="Alpha upscaling: bicubic or model.")] = "bicubic",
    quality: Annotated[int, typer.Option(help="JPEG/WebP quality.")] = 95,
    compress_level: Annotated[int, typer.Option(
        help=f"zlib level 0-9 for PNG and deflate TIFF (default {WriteOptions.compress_level}: "
        "measured best size for time)", show_default=False)] = WriteOptions.compress_level,
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
    eta: Annotated[Optional[float], typer.Option(
        help="Routed models: the price of network cost (ENAF: image dB per unit of mean cost "
             "with a texture router, else Eq. 9's eta).")] = None,
    gamma: Annotated[Optional[float], typer.Option(
        help="Routed models: blank-vector weight (default: the preset's).")] = None,
    budget: Annotated[
        Optional[float],
        typer.Option(help="Routed models: mean FLOPs as a fraction of the full network."),
    ] = None,
    static: Annotated[bool, typer.Option(
        help="Routed models: run the full network on every tile, on the model's large static "
             "tiles unless --tile (best quality, most FLOPs).")
    ] = False,
    route_map: Annotated[
        Optional[Path],
        typer.Option("--route-map", "--exit-map", "--halting-map",
                     help="Routed models: a PNG of where the work went (ENAF: the path of "
                          "every tile; AdaFormer: the TSABs each token ran before it halted); "
                          "a folder when there are several inputs."),
    ] = None,
    backend: Annotated[str, typer.Option(
        help="What runs the networks: torch, onnxruntime (an export made on first use, or "
             "--weights FOLDER from 'sr-tile export'), or tensorrt (ONNX Runtime's TensorRT "
             "provider).")] = "torch",
    precision: Annotated[str, typer.Option(
        help="fp32, bf16 (CPU or CUDA) or fp16 (CUDA); checked against fp32 on the first tile, "
             "with a fallback to fp32 if it breaks.")] = "fp32",
    tta: Annotated[bool, typer.Option(
        help="8-fold flip/rotate self-ensemble (8x the FLOPs, counted so).")] = False,
    threads: Annotated[Optional[int], typer.Option(
        min=1, help="CPU threads for torch and ONNX Runtime (default: torch's; with --ray: per "
                    "worker, default 1).")] = None,
    pipeline: Annotated[Optional[int], typer.Option(
        min=1, help="Images in flight: the next one decodes and the last one encodes while "
                    "one computes (default: 2 on a GPU, 1 on the CPU, where encoding already "
                    "runs beside the compute).")] = None,
    ray: Annotated[Optional[str], typer.Option(
        "--ray", help="Run on a Ray cluster: auto, HOST:PORT, or local:N (start one here with "
                      "N CPUs). Workers read and write the same paths (a shared filesystem); "
                      "needs the 'ray' extra.")] = None,
    ray_workers: Annotated[Optional[int], typer.Option(
        help="--ray: workers, each with the model loaded (default: the cluster's CPUs / "
             "--threads).")] = None,
    ray_gpus_per_worker: Annotated[float, typer.Option(
        help="--ray: GPUs per worker (with --device cuda).")] = 0.0,
    ray_split_pixels: Annotated[Optional[int], typer.Option(
        help="--ray: a single input with more pixels is cut into bands of tile rows across "
             "the workers (default: 16M).")] = None,
) -> None:
    """Upscale images tile by tile; print latency and FLOPs per image."""
    from sr_tile.batch import default_in_flight, run_jobs
    from sr_tile.upscale import UpscaleOptions, Upscaler

    scale = int(scale) if float(scale).is_integer() else scale  # x4 stays "4" in names, JSON
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
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
        write=WriteOptions(jpeg_quality=quality, webp_quality=quality, bigtiff=bigtiff,
                           compress_level=compress_level),
        routing=RoutingOptions(eta=eta, gamma=gamma, preset=preset, budget=budget),
        weights=weights,
        static=static,
        backend=backend,
        precision=precision,
        tta=tta,
    )
    cluster_options = None
    if ray is not None:
        from sr_tile.cluster import SPLIT_PIXELS, ClusterOptions

        if pipeline is not None:
            raise UsageError("--pipeline is for local runs; with --ray every worker runs one "
                             "image at a time")
        cluster_options = ClusterOptions(ray, ray_workers, threads or 1, ray_gpus_per_worker,
                                         ray_split_pixels or SPLIT_PIXELS)
    plan = plan_run(inputs, scale=scale, output=output, output_dir=output_dir, fmt=fmt,
                    recursive=recursive, follow_links=follow_links, report=json_path,
                    route_map=route_map, overwrite=overwrite, skip_existing=skip_existing)
    for note in plan.notes:
        warning_line(note)
    reports: list[ImageReport] = []
    upscaler: Upscaler | None = None
    stop: BaseException | None = None
    try:
        upscaler = Upscaler(options)
        for note in upscaler.notes:
            warning_line(note)
        with progress_for(len(plan.jobs)) as bar:
            hooks = {"on_start": lambda i, job, total: bar.start_file(i, job.src.name)(total),
                     "on_tiles": bar.advance, "on_warning": warning_line, "on_error": _job_failed}
            if cluster_options is None:
                jobs = run_jobs(upscaler, plan.jobs,
                                in_flight=pipeline or default_in_flight(upscaler), **hooks)
            else:
                from sr_tile.cluster import Cluster

                jobs = Cluster(upscaler, cluster_options).run_jobs(plan.jobs, **hooks)
            reports.extend(jobs)
    except BaseException as exc:
        stop = exc
        raise
    finally:
        counts = _finish(plan, reports, upscaler, options, stop)
    if counts["failed"]:
        raise typer.Exit(1)
