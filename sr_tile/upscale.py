"""Library API of the main job: upscale image files, tile by tile, and report.

    >>> from sr_tile import Upscaler, UpscaleOptions
    >>> report = Upscaler(UpscaleOptions(scale=4)).upscale_file("in.png", "out.png")

The CLI is a thin layer over :class:`Upscaler`; it adds batch handling and
printing only.
"""

from __future__ import annotations

import math
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sr_tile.errors import ImageWriteError, UsageError
from sr_tile.io import (
    DEFAULT_MAX_PIXELS,
    WriteOptions,
    canonical_format,
    output_format_for,
    read_image,
    write_image,
)
from sr_tile.models import DEFAULT_MODEL, create_model
from sr_tile.models.registry import BACKENDS
from sr_tile.models.descriptor import ModelDescriptor, Routing
from sr_tile.routing import RoutingOptions
from sr_tile.runner import FLOPS_CONVENTION, PRECISIONS, Inference, TileRunner, make_runner
from sr_tile.tiler import TileConfig, Tiler, output_length, tiled_upscale


@dataclass(frozen=True)
class UpscaleOptions:
    """Everything that decides how an image is upscaled (the CLI's flags)."""

    scale: float = 4  # any float the model supports; the output is round_half_up(scale * size)
    model: str = DEFAULT_MODEL
    tile: int | None = None  # LR tile side; None: the model's default
    overlap: int | None = None  # LR overlap; None: the model's default
    batch_size: int | None = None  # tiles per forward pass; None: ~64k LR pixels per batch
    device: str = "cpu"
    alpha: str = "bicubic"  # how alpha is upscaled: "bicubic" or "model"
    fmt: str | None = None  # output format; None: keep the input's
    overwrite: bool = False
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    write: WriteOptions = field(default_factory=WriteOptions)
    routing: RoutingOptions = field(default_factory=RoutingOptions)
    static: bool = False  # a routed model as its full network, on its static tiles (--static)
    weights: str | None = None  # a weights file (or an ONNX export's folder), not the shipped one
    backend: str = "torch"  # torch, onnxruntime or tensorrt (ONNX Runtime's TensorRT provider)
    precision: str = "fp32"  # fp32, bf16 (CPU or CUDA) or fp16 (CUDA): autocast, checked once
    tta: bool = False  # 8-fold flip/rotate self-ensemble

    def __post_init__(self) -> None:
        """Bad values are usage errors, found before a model is loaded or a file read."""
        if self.backend not in BACKENDS:
            raise UsageError(f"--backend must be one of {', '.join(BACKENDS)}, "
                             f"not {self.backend!r}")
        if self.precision not in PRECISIONS:
            raise UsageError(f"--precision must be one of {', '.join(PRECISIONS)}, "
                             f"not {self.precision!r}")
        if self.precision != "fp32" and self.backend != "torch":
            raise UsageError(f"--precision {self.precision} runs on --backend torch; the ONNX "
                             "exports are fp32")
        if self.precision == "fp16" and not self.device.startswith("cuda"):
            raise UsageError("--precision fp16 is for CUDA (--device cuda); on the CPU use bf16")
        if self.alpha not in ("bicubic", "model"):
            raise UsageError(f"--alpha must be bicubic or model, not {self.alpha!r}")
        if self.max_pixels is not None and self.max_pixels <= 0:
            raise UsageError(f"--max-pixels must be positive, not {self.max_pixels}")
        if not math.isfinite(self.scale) or self.scale <= 1:
            raise UsageError(f"--scale must be a number greater than 1, not {self.scale!r}")
        for name in ("tile", "batch_size"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise UsageError(f"--{name.replace('_', '-')} must be positive, "
                                 f"not {getattr(self, name)}")
        if self.overlap is not None and self.overlap < 0:
            raise UsageError(f"--overlap must be >= 0, not {self.overlap}")
        if self.fmt is not None:
            canonical_format(self.fmt)


@dataclass
class ImageReport:
    """One image's result; the ``--json`` report is a list of these."""

    input: str
    output: str | None
    status: str = "ok"  # ok | failed | skipped | not run
    error: str | None = None
    width: int | None = None
    height: int | None = None
    out_width: int | None = None
    out_height: int | None = None
    scale: float | None = None
    model: str | None = None
    tiles: int | None = None
    latency_s: float | None = None  # model compute only
    total_s: float | None = None  # read + compute + blend + write
    flops: int | None = None
    flops_static: int | None = None
    flops_convention: str = FLOPS_CONVENTION
    flops_note: str | None = None
    route_map: str | None = None
    routing: str = ""  # the runner's extras in a few characters (console table)
    extras: dict[str, Any] = field(default_factory=dict)  # the family's own fields (runner)

    @property
    def flops_pct(self) -> float | None:
        if not self.flops_static:
            return None
        return 100.0 * (self.flops or 0) / self.flops_static

    def to_dict(self) -> dict:
        """Flat: a family's extras (ENAF's ``eta``, ``gamma``, ``exits``) are top-level keys."""
        d = asdict(self)
        d.update(d.pop("extras"))
        d.pop("routing")
        d["flops_pct"] = self.flops_pct
        return d


def auto_batch_size(tile: int, pixels: int) -> int:
    """About ``pixels`` LR pixels per forward pass (the descriptor's ``batch_pixels``; its
    default: 64 tiles of 32x32, 1 tile of 256x256)."""
    return max(1, min(256, pixels // (tile * tile)))


def resolve_device(name: str) -> torch.device:
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError("--device cuda: no CUDA GPU is available to torch on this machine")
        return torch.device(name)
    raise UsageError(f"unknown device {name!r}; use cpu or cuda")


def load_model(options: UpscaleOptions, device: torch.device) -> tuple[torch.nn.Module, list[str]]:
    """The model of ``options`` on ``device`` for its backend, and the lines a run says once
    about it (where ONNX Runtime runs, an export made on first use)."""
    if options.backend == "torch":
        model = create_model(options.model, scale=options.scale, weights=options.weights or True)
        return model.to(device), []
    from sr_tile.deploy.onnx import onnx_model

    loaded = onnx_model(options.model, scale=options.scale, weights=options.weights,
                        device=device, backend=options.backend)
    return loaded.model, loaded.notes


class Cancelled(Exception):
    """A job stopped before its next band because its batch was interrupted."""


def scale_notes(descriptor: ModelDescriptor) -> list[str]:
    """A model asked for a scale outside the ones it was trained on says so."""
    if descriptor.trained_scales is None:
        return []
    low, high = descriptor.trained_scales
    if low <= descriptor.scale <= high:
        return []
    return [f"{descriptor.name} was trained on scales x{low:g} to x{high:g}; at "
            f"x{descriptor.scale:g} its quality is out of distribution"]


def _with_constant_alpha(bands: Iterator[np.ndarray], value) -> Iterator[np.ndarray]:
    for band in bands:
        alpha = np.full(band.shape[:2] + (1,), value, dtype=band.dtype)
        yield np.concatenate([band, alpha], axis=2)


class Upscaler:
    """A model loaded once, applied to any number of images."""

    def __init__(self, options: UpscaleOptions | None = None) -> None:
        self.options = options = options or UpscaleOptions()
        #: What runs an image's tiles and blends them (``sr_tile.cluster`` swaps in Ray's).
        self.tiler: Tiler = tiled_upscale
        self.device = resolve_device(options.device)
        self.model, self.notes = load_model(options, self.device)
        self.descriptor = d = self.model.descriptor
        if options.precision not in d.precisions:
            raise UsageError(f"{d.name} runs in {', '.join(d.precisions)}, not "
                             f"{options.precision}")
        if options.tta and not float(d.scale).is_integer():
            raise UsageError("--tta needs an integer scale (a rotated tile samples another grid)")
        default_tile, default_overlap, margin = (
            (d.default_tile, d.default_overlap, d.margin) if self.routed else d.static_tiling)
        self.tiling = TileConfig.resolve(
            tile=options.tile,
            overlap=options.overlap,
            margin=margin,
            default_tile=default_tile,
            default_overlap=default_overlap,
            size_multiple=d.size_multiple,
            batch_size=options.batch_size or auto_batch_size(options.tile or default_tile,
                                                             d.batch_pixels),
            # the model's own tile shrinks to fit the image; a --tile given, or a router's
            # decision grid, is kept exactly (a routed model whose output does not depend on
            # its tiles has its grid elsewhere: ENAF's cells; TADT routes whole images)
            fit=options.tile is None and (not self.routed or d.exact_tiling
                                          or not d.routing.per_tile),
        )
        self.runner: TileRunner = self.new_runner()
        self.notes += scale_notes(d)  # said once per run by the CLI
        # Jobs run in threads (``sr_tile.batch``) share the model: one computes at a time.
        self._compute = threading.Lock()

    def new_runner(self) -> TileRunner:
        """A runner of this model with its own books: one per job that runs at once."""
        o = self.options
        return make_runner(self.model, device=self.device, alpha=o.alpha, routing=o.routing,
                           static=o.static, inference=Inference(o.precision, o.tta))

    @property
    def routed(self) -> bool:
        """Whether tiles take different paths (so a route map means something)."""
        return not self.options.static and self.descriptor.routing != Routing.NONE

    def tile_count(self, width: int, height: int) -> int:
        return self.tiling.count(height, width)

    def upscale_array(
        self, pixels: np.ndarray, on_tiles: Callable[[int], None] | None = None, *,
        runner: TileRunner | None = None, cancel: threading.Event | None = None,
    ) -> Iterator[np.ndarray]:
        """Yield output bands of ``pixels`` (H, W, C) upscaled; constant alpha skips work.

        ``runner``: whose books to keep (default ``self.runner``). Bands are computed one at a
        time under the model's lock, so jobs in threads interleave their bands; ``cancel``
        set stops before the next band (:class:`Cancelled`)."""
        runner = runner or self.runner
        with self._compute:
            runner.reset()
            runner.prepare(pixels, self.tiling)
        alpha = pixels[..., -1] if pixels.shape[2] in (2, 4) else None
        constant = alpha is not None and bool((alpha == alpha.flat[0]).all())
        bands = self._one_at_a_time(self.tiler(
            pixels[..., :-1] if constant else pixels, runner, scale=runner.scale,
            config=self.tiling, on_tiles=on_tiles), cancel)
        return _with_constant_alpha(bands, alpha.flat[0]) if constant else bands

    def _one_at_a_time(self, bands: Iterator[np.ndarray],
                       cancel: threading.Event | None) -> Iterator[np.ndarray]:
        while True:
            with self._compute:
                if cancel is not None and cancel.is_set():
                    raise Cancelled
                band = next(bands, None)
            if band is None:
                return
            yield band

    def upscale_whole(self, pixels: np.ndarray) -> np.ndarray:
        """``pixels`` upscaled as one array (``upscale_array``'s bands joined)."""
        bands = list(self.upscale_array(pixels))
        return bands[0] if len(bands) == 1 else np.concatenate(bands, axis=0)

    def upscale_file(
        self,
        src: str | Path,
        dst: str | Path,
        *,
        on_start: Callable[[int], None] | None = None,
        on_tiles: Callable[[int], None] | None = None,
        on_warning: Callable[[str], None] | None = None,
        route_map: str | Path | None = None,
        runner: TileRunner | None = None,
        cancel: threading.Event | None = None,
    ) -> ImageReport:
        """Read ``src``, upscale, write ``dst`` atomically; raise SrTileError on bad input.

        ``on_start(total_tiles)`` is called once the image is decoded; ``on_warning`` gets
        each warning line (what the decoder reported, frames dropped, lossy conversions;
        without it they are Python warnings). ``route_map``: for routed models, also write
        a picture of where the work went (``sr_tile.routemap``). ``runner`` and ``cancel``: see
        :meth:`upscale_array` (jobs in threads, ``sr_tile.batch``).
        """
        runner = runner or self.runner
        opts = self.options
        src, dst = Path(src), Path(dst)
        start = time.perf_counter()
        if route_map is not None and not self.routed:
            raise UsageError(f"--route-map: {self.descriptor.name} runs every tile the same "
                             "way; route maps are for routed models")
        for target in (dst, route_map):
            if target is not None:
                check_not_input(src, Path(target))
        image = read_image(src, max_pixels=opts.max_pixels)
        for line in image.warnings:
            (on_warning or _python_warning)(line)
        fmt = output_format_for(dst, opts.fmt, image.meta.format)
        h, w = image.height, image.width
        s = runner.scale
        out_h, out_w = output_length(h, s), output_length(w, s)
        if on_start is not None:
            on_start(self.tile_count(w, h))
        bands = self.upscale_array(image.pixels, on_tiles, runner=runner, cancel=cancel)
        write_image(
            dst,
            bands,
            width=out_w,
            height=out_h,
            channels=image.channels,
            dtype=image.pixels.dtype,
            meta=image.meta.scaled(s, out_w, out_h),
            fmt=fmt,
            options=opts.write,
            overwrite=opts.overwrite,
            on_warning=on_warning,
        )
        extras = runner.extras()
        if route_map is not None:
            from sr_tile.routemap import write_route_map

            write_route_map(route_map, image.pixels, runner.route_map(), overwrite=opts.overwrite)
        return ImageReport(
            input=str(src),
            output=str(dst),
            width=w,
            height=h,
            out_width=out_w,
            out_height=out_h,
            scale=s,
            model=self.descriptor.name,
            tiles=self.tile_count(w, h),
            latency_s=runner.seconds,
            total_s=time.perf_counter() - start,
            flops=runner.flops,
            flops_static=runner.flops_static,
            flops_note=self.descriptor.flops_note or None,
            routing=runner.describe(extras),
            extras=extras,
            route_map=str(route_map) if route_map is not None else None,
        )


def check_not_input(src: Path, dst: Path) -> None:
    """The input is never overwritten, whatever the flags (the writer checks the rest)."""
    try:
        same = dst.exists() and src.exists() and os.path.samefile(src, dst)
    except OSError:
        return  # a path that cannot be used fails in the writer, with its own message
    if same:
        raise ImageWriteError(f"{dst}: is the input of this job and is never replaced; "
                              "choose another name")


def _python_warning(message: str) -> None:
    warnings.warn(message, UserWarning, stacklevel=3)
