"""Benchmark models over a dataset: quality, FLOPs and latency, each row read against its baseline.

Rows (:func:`plan_rows`): ``bicubic`` always; for a static model one row; for a dynamic (routed)
model its static backbone on the routing tiles (``static``: the baseline of its FLOPs %), the
same weights at their best static tiling (``best``: ``--static`` on the model's large static
tiles, what a user would run without routing), AND the routed model at the requested preset,
eta or budget; with a sweep, one more routed row per eta (for the PSNR-vs-FLOPs curve).
Routed rows read their FLOPs and time against both static rows.

Each row runs every image exactly as ``sr-tile upscale`` does (:meth:`Upscaler.upscale_array`,
tiled, uint8 in and out). Per model there is one untimed warm-up on a crop of the first image;
then each image is run ``repeat`` times, the repeats taken round the rows in turn, and its
latency is the median of the runner's seconds (model compute only). Decoding and LR making
are timed apart (``io_s``); each image is loaded once for all rows. PSNR-Y / SSIM-Y are taken
on the SR output of the first run against the mod-cropped HR with a border of ``scale`` pixels.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from sr_tile.bench.datasets import Dataset, LRCache, Pair, load_pair
from sr_tile.errors import ConfigError, SrTileError
from sr_tile.metrics import psnr_y, ssim_y
from sr_tile.models.registry import get_entry
from sr_tile.routing import DEFAULT_SWEEP, RoutingOptions
from sr_tile.upscale import UpscaleOptions, Upscaler

__all__ = [
    "DEFAULT_SWEEP",
    "BenchOptions",
    "BenchResult",
    "ImageResult",
    "RowResult",
    "RowSpec",
    "Variant",
    "plan_rows",
    "run_bench",
]

#: Etas of the default sweep (ENAF's public code sweeps 0.15..5).
BASELINE_MODEL = "bicubic"


@dataclass(frozen=True)
class Variant:
    """How a model's networks run in a row: what ``--backend``, ``--precision``, ``--tta``
    choose for ``sr-tile upscale``."""

    backend: str = "torch"
    precision: str = "fp32"
    tta: bool = False

    @property
    def suffix(self) -> str:
        """`` [onnxruntime bf16 tta]``: what a row label adds for a variant ("" plain)."""
        words = [w for w, on in ((self.backend, self.backend != "torch"),
                                 (self.precision, self.precision != "fp32"),
                                 ("tta", self.tta)) if on]
        return f" [{' '.join(words)}]" if words else ""


def variants_for(backends: list[str], precisions: list[str], tta: bool) -> tuple[Variant, ...]:
    """Every combination that runs (reduced precision is torch's), the plain run first; with
    ``tta``, a TTA row of the first backend and precision too."""
    found = [Variant(b, p) for b in backends for p in precisions if p == "fp32" or b == "torch"]
    if not found:
        raise ConfigError("--precision other than fp32 needs --backend torch in the list")
    return tuple(found) + ((replace(found[0], tta=True),) if tta else ())


@dataclass(frozen=True)
class BenchOptions:
    """How rows are run; the routing options apply to the routed row of each dynamic model."""

    scale: float = 4
    tile: int | None = None
    overlap: int | None = None
    batch_size: int | None = None
    device: str = "cpu"
    repeat: int = 3
    warmup: bool = True
    routing: RoutingOptions = field(default_factory=RoutingOptions)
    sweep: tuple[float, ...] = ()
    weights: Mapping[str, str] = field(default_factory=dict)  # model name -> weights file
    limit: int | None = None  # only the first N images
    threads: int | None = None  # torch CPU threads while benchmarking; None: torch's default
    exit_rows: bool = False  # one row per early exit taken by every tile (routed models)
    # every model's rows once per variant, side by side: (backend, precision, tta); the first
    # is the plain run the others are read against (ONNX Runtime against torch, bf16 against
    # fp32, TTA against none)
    variants: tuple[Variant, ...] = ()

    def __post_init__(self) -> None:
        if self.repeat < 1:
            raise ConfigError(f"--repeat must be >= 1, got {self.repeat}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"--limit must be >= 1, got {self.limit}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {self.threads}")
        if any(e < 0 or not math.isfinite(e) for e in self.sweep):
            raise ConfigError(f"--sweep etas must be finite and >= 0, got {list(self.sweep)}")


@dataclass(frozen=True)
class RowSpec:
    """One row of the report: a model run one way."""

    label: str
    model: str
    kind: str  # "bicubic" | "static" | "best" | "routed" | "exit" | "sweep"
    route: bool
    routing: RoutingOptions
    repeat: int
    baseline: str | None  # label of the row this one's savings are read against
    dynamic: bool = False  # the model routes (its static row is its backbone)
    best: str | None = None  # label of the model's static-best row (routed rows)
    variant: Variant = Variant()

    @property
    def preset(self) -> str | None:
        """The preset a routed row used (L/M/S), None for static rows, --eta and --budget."""
        if not self.route or not self.dynamic:
            return None
        r = self.routing
        if r.eta is not None or r.budget is not None or r.path is not None:
            return None
        return (r.preset or "M").upper()


@dataclass
class ImageResult:
    name: str
    status: str = "ok"  # ok | failed
    error: str | None = None
    width: int | None = None  # HR after mod-crop
    height: int | None = None
    lr_source: str | None = None  # given | cache | made
    psnr_y: float | None = None
    ssim_y: float | None = None
    flops: int | None = None
    flops_static: int | None = None
    latency_s: float | None = None  # median of the timed runs, model compute only
    latency_runs: list[float] = field(default_factory=list)
    wall_s: float | None = None  # median wall time of upscale_array (compute + tiling/blending)
    wall_runs: list[float] = field(default_factory=list)
    io_s: float | None = None  # decode + LR making, once per image
    tiles: int | None = None
    extras: dict[str, Any] = field(default_factory=dict)  # the runner's family fields

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def flops_pct(self) -> float | None:
        if not self.flops_static:
            return None
        return 100.0 * (self.flops or 0) / self.flops_static


@dataclass
class RowResult:
    spec: RowSpec
    weights: str | None = None  # file used, None for shipped / weightless
    tile: int | None = None
    overlap: int | None = None
    flops_note: str | None = None
    images: list[ImageResult] = field(default_factory=list)
    describe: Callable[[dict[str, Any]], str] = field(default=lambda extras: "", repr=False)

    @property
    def ok_images(self) -> list[ImageResult]:
        return [im for im in self.images if im.ok]

    def mean(self) -> dict:
        """Means over the images that ran: quality and latency averaged per image; flops_pct is
        total FLOPs over total static FLOPs; the runner's extras by :func:`mean_extras`."""
        ok = self.ok_images
        m: dict = {"psnr_y": None, "ssim_y": None, "flops": None, "flops_pct": None,
                   "latency_s": None, "flops_static": None, "wall_s": None, "io_s": None,
                   "n_images": len(ok), "n_failed": len(self.images) - len(ok)}
        if not ok:
            return m
        finite = [im.psnr_y for im in ok if im.psnr_y is not None and math.isfinite(im.psnr_y)]
        m["psnr_y"] = statistics.fmean(finite) if finite else None
        m["ssim_y"] = statistics.fmean(im.ssim_y for im in ok)
        m["flops"] = round(statistics.fmean(im.flops or 0 for im in ok))
        m["flops_static"] = round(statistics.fmean(im.flops_static or 0 for im in ok))
        total_static = sum(im.flops_static or 0 for im in ok)
        if total_static:
            m["flops_pct"] = 100.0 * sum(im.flops or 0 for im in ok) / total_static
        m["latency_s"] = statistics.fmean(im.latency_s or 0.0 for im in ok)
        m["wall_s"] = statistics.fmean(im.wall_s or 0.0 for im in ok)
        m["io_s"] = statistics.fmean(im.io_s or 0.0 for im in ok)
        m.update(mean_extras(ok))
        return m


def mean_extras(images: list[ImageResult]) -> dict[str, Any]:
    """A family's per-image fields over a row, without knowing the family: a number is
    averaged per image; a mapping of numbers (shares of tiles, say) is weighted by each
    image's tile count; a list of numbers (a value per layer) is averaged per image, entry by
    entry; anything else is kept when all images agree."""
    out: dict[str, Any] = {}
    for key in dict.fromkeys(k for im in images for k in im.extras):
        values = [(im.extras[key], im.tiles or 1) for im in images
                  if im.extras.get(key) is not None]
        if not values:
            out[key] = None
        elif all(isinstance(v, (int, float)) for v, _ in values):
            out[key] = statistics.fmean(float(v) for v, _ in values)
        elif all(isinstance(v, dict) for v, _ in values):
            tiles = sum(n for _, n in values)
            names = dict.fromkeys(k for v, _ in values for k in v)
            out[key] = {k: sum(v.get(k, 0.0) * n for v, n in values) / tiles for k in names}
        elif all(isinstance(v, list) and len(v) == len(values[0][0])
                 and all(isinstance(x, (int, float)) for x in v) for v, _ in values):
            out[key] = [statistics.fmean(col) for col in zip(*(v for v, _ in values))]
        elif all(v == values[0][0] for v, _ in values):
            out[key] = values[0][0]
    return out


@dataclass
class BenchResult:
    dataset: Dataset
    options: BenchOptions
    rows: list[RowResult]
    lr_cache: str | None = None
    seconds: float = 0.0
    threads: int | None = None  # torch CPU threads the rows ran with

    def row(self, label: str) -> RowResult | None:
        return next((r for r in self.rows if r.spec.label == label), None)

    @property
    def n_failed(self) -> int:
        return max((len(r.images) - len(r.ok_images) for r in self.rows), default=0)


# ---------------------------------------------------------------------------------------------


def _eta_label(eta: float) -> str:
    return f"eta={eta:g}"


def _model_rows(name: str, variant: Variant, options: BenchOptions, rows: list[RowSpec],
                sweeps: list[RowSpec]) -> None:
    """One model's rows for one variant (labels end with the variant's suffix)."""
    entry, v, routing = get_entry(name), variant.suffix, options.routing
    if entry.routing == "none":
        rows.append(RowSpec(name + v, name, "static", False, RoutingOptions(), options.repeat,
                            BASELINE_MODEL, variant=variant))
        return
    static, best = f"{name} static{v}", f"{name} static best{v}"
    common = {"dynamic": True, "variant": variant}
    rows.append(RowSpec(static, name, "static", False, RoutingOptions(), options.repeat,
                        BASELINE_MODEL, **common))
    rows.append(RowSpec(best, name, "best", False, RoutingOptions(), options.repeat,
                        BASELINE_MODEL, **common))
    if routing.budget is not None:
        how = f"budget={routing.budget:g}"
    elif routing.eta is not None:
        how = _eta_label(routing.eta)
    else:
        how = (routing.preset or "M").upper()
    rows.append(RowSpec(f"{name} {how}{v}", name, "routed", True, routing, options.repeat,
                        static, best=best, **common))
    if options.exit_rows:
        for k in range(1, 3):
            rows.append(RowSpec(f"{name} exit{k}{v}", name, "exit", True,
                                RoutingOptions(path=k), options.repeat, static, best=best,
                                **common))
    for eta in options.sweep:
        sweeps.append(RowSpec(f"{name} {_eta_label(eta)}{v}", name, "sweep", True,
                              replace(routing, eta=eta, preset=None, budget=None), 1, static,
                              best=best, **common))


def plan_rows(models: list[str], options: BenchOptions) -> list[RowSpec]:
    """The rows to run for ``--model`` names: bicubic first, then each model's rows, then sweeps.

    Unknown names raise ConfigError (before any work). Duplicate names are run once.
    """
    names = [BASELINE_MODEL]
    for name in models:
        get_entry(name)  # unknown name -> ConfigError listing the known ones
        if name not in names:
            names.append(name)
    rows: list[RowSpec] = []
    sweeps: list[RowSpec] = []
    for name in names:
        if name == BASELINE_MODEL:
            rows.append(RowSpec(name, name, "bicubic", False, RoutingOptions(), options.repeat,
                                None))
            continue
        for variant in options.variants or (Variant(),):
            _model_rows(name, variant, options, rows, sweeps)
    return rows + sweeps


def _upscaler(spec: RowSpec, options: BenchOptions) -> Upscaler:
    """The row's upscaler: the static-best row on the model's own static tiles, a routed
    model's static row on the routing tiles (its routed rows' grid: equal tiles, so that
    their FLOPs % compares paths alone)."""
    best = spec.kind == "best"
    opts = UpscaleOptions(
        scale=options.scale, model=spec.model, tile=None if best else options.tile,
        overlap=None if best else options.overlap, batch_size=options.batch_size,
        device=options.device, routing=spec.routing, static=not spec.route,
        weights=options.weights.get(spec.model), max_pixels=None,
        backend=spec.variant.backend, precision=spec.variant.precision, tta=spec.variant.tta,
    )
    up = Upscaler(opts)
    if spec.kind == "static" and spec.dynamic and options.tile is None:
        up = Upscaler(replace(opts, tile=up.descriptor.default_tile))
    return up


def _drop_duplicate_sweeps(specs: list[RowSpec], upscalers: list[Upscaler]) -> None:
    """A sweep eta equal to its model's routed row's eta would repeat that row: drop it."""
    routed_etas = {
        (spec.model, spec.variant, float(up.runner.eta))  # type: ignore[attr-defined]
        for spec, up in zip(specs, upscalers)
        if spec.kind == "routed" and spec.routing.budget is None
        and getattr(up.runner, "eta", None) is not None
    }
    for i in reversed(range(len(specs))):
        spec = specs[i]
        if spec.kind == "sweep" and (spec.model, spec.variant,
                                     float(spec.routing.eta or 0.0)) in routed_etas:
            del specs[i], upscalers[i]


def _drop_best_without_own_tiles(specs: list[RowSpec], upscalers: list[Upscaler]) -> None:
    """A routed model with no static tiling of its own (``static_tile`` None: AdaFormer,
    whose dense run is its routing tiles without halting) has no "static best" row apart
    from its static row: drop it, and read its routed rows against the static row."""
    for i in reversed(range(len(specs))):
        spec = specs[i]
        if spec.kind == "best" and upscalers[i].descriptor.static_tile is None:
            static = next(s.label for s in specs if s.model == spec.model
                          and s.kind == "static" and s.variant == spec.variant)
            del specs[i], upscalers[i]
            for k, other in enumerate(specs):
                if other.best == spec.label:
                    specs[k] = replace(other, best=static)


def _warm_up(up: Upscaler, lr: np.ndarray) -> None:
    """One untimed run on a crop of ``lr`` big enough for a full and a partial tile batch."""
    t = up.tiling.tile
    crop = lr[: min(lr.shape[0], 2 * t), : min(lr.shape[1], (up.tiling.batch_size + 1) * t)]
    up.upscale_whole(np.ascontiguousarray(crop))


def _time_run(up: Upscaler, lr: np.ndarray, result: ImageResult) -> np.ndarray:
    """One timed run; appends model and wall time to ``result``."""
    start = time.perf_counter()
    out = up.upscale_whole(lr)
    result.wall_runs.append(time.perf_counter() - start)
    result.latency_runs.append(up.runner.seconds)
    return out


def _first_run(up: Upscaler, spec: RowSpec, name: str, pair: Pair) -> tuple[ImageResult,
                                                                           np.ndarray]:
    """The first timed run of a row on an image, with its FLOPs and exits; the output."""
    result = ImageResult(name, width=pair.hr.shape[1], height=pair.hr.shape[0],
                         lr_source=pair.lr_source, io_s=pair.io_s,
                         tiles=up.tile_count(pair.lr.shape[1], pair.lr.shape[0]))
    sr = _time_run(up, pair.lr, result)
    if sr.shape != pair.hr.shape:
        raise SrTileError(f"{name}: output is {sr.shape}, HR is {pair.hr.shape}")
    runner = up.runner
    result.flops = int(runner.flops)
    result.flops_static = int(runner.flops_static)
    result.extras = runner.extras()
    return result, sr


def _measure_image(upscalers: list[Upscaler], rows: list[RowResult], name: str, pair: Pair,
                   scale: float, on_row: Callable[[RowResult], None],
                   on_error: Callable[[RowResult, SrTileError], None]) -> None:
    """Every row on one image. Repeats go round the rows (row 1, row 2, ..., row 1, ...), so
    a slow spell of the machine hits every row alike and the rows' ratios stay fair."""
    done: list[tuple[int, ImageResult, np.ndarray]] = []
    for k, (row, up) in enumerate(zip(rows, upscalers)):
        on_row(row)
        try:
            done.append((k, *_first_run(up, row.spec, name, pair)))
        except SrTileError as exc:
            on_error(row, exc)
    for rep in range(1, max((row.spec.repeat for row in rows), default=1)):
        for k, result, _ in done:
            if rep < rows[k].spec.repeat:
                _time_run(upscalers[k], pair.lr, result)
    for k, result, sr in done:
        result.latency_s = statistics.median(result.latency_runs)
        result.wall_s = statistics.median(result.wall_runs)
        border = math.ceil(scale)  # BasicSR crops `scale` px; a fraction rounds up
        result.psnr_y = psnr_y(sr, pair.hr, border)
        result.ssim_y = ssim_y(sr, pair.hr, border)
        rows[k].images.append(result)


ProgressFn = Callable[[str, int, int, str], None]  # (image name, index, total, row label)


def run_bench(
    dataset: Dataset,
    specs: list[RowSpec],
    options: BenchOptions,
    *,
    cache: LRCache,
    on_step: ProgressFn | None = None,
    on_image_error: Callable[[str], None] | None = None,
    on_start: Callable[[int], None] | None = None,
) -> BenchResult:
    """Run every row over every image. Models are built first, so a missing weights file or a bad
    option fails before any image is touched. ``on_start(steps)`` gets the number of (image, row)
    steps, ``on_step`` is called before each. An unreadable image is recorded as failed in every
    row and the run goes on; ConfigError if no image could be read at all."""
    threads = torch.get_num_threads()
    if options.threads is not None:
        torch.set_num_threads(options.threads)
    try:
        return _run(dataset, list(specs), options, cache=cache, on_step=on_step,
                    on_image_error=on_image_error, on_start=on_start)
    finally:
        torch.set_num_threads(threads)


def _run(
    dataset: Dataset,
    specs: list[RowSpec],
    options: BenchOptions,
    *,
    cache: LRCache,
    on_step: ProgressFn | None,
    on_image_error: Callable[[str], None] | None,
    on_start: Callable[[int], None] | None,
) -> BenchResult:
    upscalers = [_upscaler(spec, options) for spec in specs]
    _drop_duplicate_sweeps(specs, upscalers)
    _drop_best_without_own_tiles(specs, upscalers)
    rows = [
        RowResult(spec, weights=options.weights.get(spec.model), tile=up.tiling.tile,
                  overlap=up.tiling.overlap, flops_note=up.descriptor.flops_note or None,
                  describe=up.runner.describe)
        for spec, up in zip(specs, upscalers)
    ]
    samples = dataset.samples[: options.limit] if options.limit else dataset.samples
    if on_start is not None:
        on_start(len(samples) * len(rows))  # (image, row) steps
    warmed = not options.warmup
    start = time.perf_counter()
    for index, sample in enumerate(samples, 1):
        try:
            pair = load_pair(sample, options.scale, cache)
        except SrTileError as exc:
            if on_image_error is not None:
                on_image_error(str(exc))
            for row in rows:
                row.images.append(ImageResult(sample.name, status="failed", error=str(exc)))
            continue
        if not warmed:
            for up in upscalers:
                _warm_up(up, pair.lr)
            warmed = True
        def step(row: RowResult, name: str = sample.name, index: int = index) -> None:
            if on_step is not None:
                on_step(name, index, len(samples), row.spec.label)

        def failed(row: RowResult, exc: SrTileError, name: str = sample.name) -> None:
            if on_image_error is not None:
                on_image_error(f"{name} ({row.spec.label}): {exc}")
            row.images.append(ImageResult(name, status="failed", error=str(exc)))

        _measure_image(upscalers, rows, sample.name, pair, options.scale, step, failed)
        del pair
    if rows and not rows[0].ok_images:
        raise ConfigError(f"{dataset.root}: none of the {len(samples)} images could be read")
    return BenchResult(dataset, options, rows,
                       lr_cache=str(cache.folder) if cache.folder is not None else None,
                       seconds=time.perf_counter() - start, threads=torch.get_num_threads())
