"""``sr-tile bench``: quality, FLOPs and latency of models over a dataset, each against its baseline."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from sr_tile.cli._common import err, error_line, handle_errors, out, warning_line
from sr_tile.errors import UsageError
from sr_tile.io.atomic import write_json_atomic
from sr_tile.models.registry import MODELS, get_entry, shipped_weights
from sr_tile.routing import DEFAULT_SWEEP, RoutingOptions

__all__ = ["bench", "parse_sweep", "parse_weights"]


def parse_weights(items: list[str]) -> dict[str, str]:
    """``NAME=FILE`` options -> {model name: file}; UsageError on a bad item or unknown model."""
    weights: dict[str, str] = {}
    for item in items:
        name, sep, file = item.partition("=")
        if not sep or not name or not file:
            raise UsageError(f"--weights {item!r}: expected NAME=FILE, e.g. enaf-fsrcnn=run.safetensors")
        get_entry(name.strip())
        weights[name.strip()] = file.strip()
    return weights


def parse_sweep(text: str | None) -> tuple[float, ...]:
    """``"0,0.5,1"`` -> etas; ``"default"`` -> :data:`DEFAULT_SWEEP`; None/"" -> none."""
    if not text:
        return ()
    if text.strip().lower() == "default":
        return DEFAULT_SWEEP
    try:
        etas = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise UsageError(f"--sweep {text!r}: expected comma-separated etas, e.g. 0,0.5,1,2") from None
    if not etas:
        raise UsageError("--sweep: no eta given")
    return tuple(dict.fromkeys(etas))


def _default_models(scale: int, weights: dict[str, str]) -> list[str]:
    return ["bicubic"] + [
        name for name, entry in MODELS.items()
        if name != "bicubic" and (name in weights or (entry.weights and shipped_weights(name, scale)))
    ]


def _words(value: str) -> list[str]:
    return [w.strip() for w in value.split(",") if w.strip()]


@handle_errors
def bench(
    dataset: Annotated[str, typer.Argument(
        help="A folder of HR images, a ClassSR folder (HR/X4 + LR/X4), or a name: Test2K, "
             "Test4K, Test8K, F2K, DIV2K-val (looked up under --data-root / $SR_TILE_DATA).")],
    model: Annotated[Optional[list[str]], typer.Option(
        "--model", "-m",
        help="Model to bench (repeatable). bicubic is always included; a routed model adds its "
             "static-backbone row. Default: bicubic + every model with weights.")] = None,
    scale: Annotated[Optional[list[float]], typer.Option(
        "--scale", "-s",
        help="Upscaling factor (a float for models of a continuous range); repeatable: one "
             "table per scale, and --json/--csv/--plot files get a -x<scale> suffix. "
             "[default: 4]")] = None,
    preset: Annotated[Optional[str], typer.Option(
        help="Routed rows: L (quality), M or S (speed); default M.")] = None,
    eta: Annotated[Optional[float], typer.Option(
        help="Routed rows: the price of network cost (ENAF: image dB per unit of mean cost "
             "with a texture router, else Eq. 9's eta).")] = None,
    gamma: Annotated[Optional[float], typer.Option(
        help="Routed rows: blank-vector weight (default: the preset's).")] = None,
    budget: Annotated[Optional[float], typer.Option(
        help="Routed rows: mean FLOPs as a fraction of the full network.")] = None,
    sweep: Annotated[Optional[str], typer.Option(
        help="Extra routed rows over eta, e.g. 0,0.5,1,2 or 'default' "
             f"({','.join(f'{e:g}' for e in DEFAULT_SWEEP)}); --plot implies the default.")] = None,
    repeat: Annotated[int, typer.Option(
        help="Timed runs per image, taken round the rows in turn; latency is their median "
             "(sweep rows run once).")] = 3,
    warmup: Annotated[bool, typer.Option(help="One untimed warm-up run per model.")] = True,
    tile: Annotated[Optional[int], typer.Option(help="LR tile side (default: the model's).")] = None,
    overlap: Annotated[Optional[int], typer.Option(help="LR overlap between tiles.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(
        help="Tiles per forward pass (default: about 64k LR pixels).")] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    threads: Annotated[Optional[int], typer.Option(
        help="torch CPU threads (default: torch's). On a busy machine use 1: more threads "
             "than free cores can slow small tiles down many times over.")] = None,
    weights: Annotated[Optional[list[str]], typer.Option(
        help="NAME=FILE: weights for a model instead of the shipped ones (repeatable).")] = None,
    backend: Annotated[str, typer.Option(
        help="What runs the networks; a list runs each model's rows once per backend, side by "
             "side: torch,onnxruntime.")] = "torch",
    precision: Annotated[str, typer.Option(
        help="fp32, bf16, fp16, or a list (fp32,bf16): each model's rows once per precision "
             "(reduced precision on torch).")] = "fp32",
    tta: Annotated[bool, typer.Option(
        help="Also run each model's rows with the 8-fold flip/rotate self-ensemble.")] = False,
    data_root: Annotated[Optional[Path], typer.Option(
        help="Where dataset names are looked up (default: $SR_TILE_DATA).")] = None,
    cache_dir: Annotated[Optional[Path], typer.Option(
        help="Cache of made LR images (default: $SR_TILE_CACHE or ~/.cache/sr-tile).")] = None,
    cache: Annotated[bool, typer.Option(help="Cache made LR images.")] = True,
    limit: Annotated[Optional[int], typer.Option(help="Only the first N images.")] = None,
    per_image: Annotated[bool, typer.Option(help="Also print PSNR-Y per image.")] = True,
    exit_rows: Annotated[bool, typer.Option(
        help="Routed models: add a row per early exit taken by every tile.")] = False,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Write the results as JSON.")] = None,
    csv_path: Annotated[Optional[Path], typer.Option("--csv", help="Write the results as CSV.")] = None,
    plot_path: Annotated[Optional[Path], typer.Option(
        "--plot", help="Draw PSNR-Y vs FLOPs to this PNG (needs matplotlib).")] = None,
) -> None:
    """Benchmark models on a dataset: PSNR-Y, SSIM-Y, FLOPs and latency per image and in the mean."""
    from sr_tile.bench.datasets import LRCache, default_cache_dir
    from sr_tile.bench.run import variants_for

    weight_files = parse_weights(weights or [])
    sweep_etas = parse_sweep(sweep)
    if plot_path is not None:
        from sr_tile.bench.plot import check_available

        check_available()
        if not sweep_etas:
            sweep_etas = DEFAULT_SWEEP
    scales = [int(s) if float(s).is_integer() else s for s in (scale or [4])]  # x4 stays "x4"
    for one in scales:  # every scale checked before the first one runs
        for name in ["bicubic", *(model or [])]:
            get_entry(name).resolve_scale(one)
    if model:
        stray = [n for n in weight_files if n not in model]
        if stray:
            raise UsageError(f"--weights names {', '.join(stray)}, which is not benchmarked "
                              f"(add --model {stray[0]})")
    lr_cache = LRCache((cache_dir or default_cache_dir()) if cache else None)
    failed = 0
    for one in scales:
        failed += _bench_scale(
            dataset, one, data_root=data_root, models=model, weight_files=weight_files,
            sweep_etas=sweep_etas, routing=RoutingOptions(eta=eta, gamma=gamma, preset=preset,
                                                          budget=budget),
            routing_given=any(x is not None for x in (preset, eta, budget, sweep)),
            options=dict(tile=tile, overlap=overlap, batch_size=batch_size, device=device,
                         repeat=repeat, warmup=warmup, limit=limit, threads=threads,
                         exit_rows=exit_rows,
                         variants=variants_for(_words(backend), _words(precision), tta)),
            lr_cache=lr_cache, per_image=per_image,
            outputs=[_for_scale(p, one, len(scales) > 1)
                     for p in (json_path, csv_path, plot_path)])
    if failed:
        error_line(f"{failed} image(s) failed; their rows are left out of the means")
        raise typer.Exit(1)


def _for_scale(path: Optional[Path], scale: float, several: bool) -> Optional[Path]:
    """``r.json`` -> ``r-x2.5.json`` when several scales are benched."""
    if path is None or not several:
        return path
    return path.with_name(f"{path.stem}-x{scale:g}{path.suffix}")


def _bench_scale(dataset: str, scale: float, *, data_root: Optional[Path],
                 models: Optional[list[str]], weight_files: dict[str, str],
                 sweep_etas: list[float], routing: RoutingOptions, routing_given: bool,
                 options: dict, lr_cache, per_image: bool,
                 outputs: list[Optional[Path]]) -> int:
    """One scale's bench: its tables and files; returns the number of failed images."""
    from sr_tile.bench.datasets import resolve_dataset
    from sr_tile.bench.report import image_table, summary_table, to_dict, write_csv
    from sr_tile.bench.run import BenchOptions, plan_rows, run_bench

    json_path, csv_path, plot_path = outputs
    data = resolve_dataset(dataset, scale=scale, data_root=data_root)
    if models:
        models = list(models)
    else:
        models = _default_models(scale, weight_files)
        if len(models) == 1:
            warning_line("no model has weights installed: benchmarking bicubic only "
                         "(use --model NAME --weights NAME=FILE)")
    options = BenchOptions(scale=scale, routing=routing, sweep=sweep_etas, weights=weight_files,
                           **options)
    specs = plan_rows(models, options)
    if routing_given and not any(spec.dynamic for spec in specs):
        warning_line("--preset/--eta/--budget/--sweep apply to routed models; none is benchmarked")

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=err, transient=True)
    task = progress.add_task("loading models", total=None)

    def on_start(steps: int) -> None:
        progress.update(task, total=steps)

    def on_step(name: str, index: int, total: int, label: str) -> None:
        progress.update(task, description=f"[{index}/{total}] {name}: {label}")
        progress.advance(task)

    with progress:
        result = run_bench(data, specs, options, cache=lr_cache, on_step=on_step,
                           on_image_error=error_line, on_start=on_start)
    for message in lr_cache.write_errors[:3]:
        warning_line(f"LR cache not written: {message}")

    out.print(summary_table(result))
    if per_image:
        out.print(image_table(result))
    report = to_dict(result)
    if json_path is not None:
        write_json_atomic(json_path, report)
    if csv_path is not None:
        write_csv(csv_path, result)
    if plot_path is not None:
        from sr_tile.bench.plot import plot_psnr_flops

        plot_psnr_flops(report, plot_path)
    written = [str(p) for p in (json_path, csv_path, plot_path) if p is not None]
    if written:
        err.print(f"wrote {', '.join(written)}")
    return result.n_failed
