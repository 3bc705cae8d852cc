"""Library API of the main job: upscale image files, tile by tile, and report.

    >>> from sr_tile import Upscaler, UpscaleOptions
    >>> report = Upscaler(UpscaleOptions(scale=4)).upscale_file("in.png", "out.png")

The CLI is a thin layer over :class:`Upscaler`; it adds batch handling and
printing only.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from sr_tile.errors import ConfigError, ImageWriteError
from sr_tile.flops import flops_cached
from sr_tile.imresize import imresize
from sr_tile.io import (
    DEFAULT_MAX_PIXELS,
    WriteOptions,
    output_format_for,
    read_image,
    write_image,
)
from sr_tile.models import DEFAULT_MODEL, create_model
from sr_tile.tiler import TileConfig, tiled_upscale

FLOPS_CONVENTION = "classsr"


@dataclass(frozen=True)
class UpscaleOptions:
    """Everything that decides how an image is upscaled (the CLI's flags)."""

    scale: int = 4
    model: str = DEFAULT_MODEL
    tile: int | None = None  # LR tile side; None: the model's default
    overlap: int | None = None  # LR overlap; None: the model's default
    batch_size: int = 4
    device: str = "cpu"
    alpha: str = "bicubic"  # how alpha is upscaled: "bicubic" or "model"
    fmt: str | None = None  # output format; None: keep the input's
    overwrite: bool = False
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    write: WriteOptions = field(default_factory=WriteOptions)


@dataclass
class ImageReport:
    """One image's result; the ``--json`` report is a list of these."""

    input: str
    output: str | None
    status: str = "ok"  # ok | failed | skipped
    error: str | None = None
    width: int | None = None
    height: int | None = None
    out_width: int | None = None
    out_height: int | None = None
    scale: int | None = None
    model: str | None = None
    tiles: int | None = None
    latency_s: float | None = None  # model compute only
    total_s: float | None = None  # read + compute + blend + write
    flops: int | None = None
    flops_static: int | None = None
    flops_convention: str = FLOPS_CONVENTION
    flops_note: str | None = None

    @property
    def flops_pct(self) -> float | None:
        if not self.flops_static:
            return None
        return 100.0 * (self.flops or 0) / self.flops_static

    def to_dict(self) -> dict:
        d = asdict(self)
        d["flops_pct"] = self.flops_pct
        return d


class TileRunner:
    """Runs the network on a batch of tiles and keeps the books.

    Colour goes through the model (gray is replicated to RGB and averaged back);
    alpha goes through bicubic, or through the model with ``alpha="model"``.
    Time is model compute only (synchronised on CUDA); FLOPs are counted in the
    ``classsr`` convention for the colour path, per batch shape.
    """

    def __init__(self, model: torch.nn.Module, *, device: torch.device, alpha: str) -> None:
        self.model = model
        self.device = device
        self.alpha = alpha
        self.scale = model.descriptor.scale
        self.reset()

    def reset(self) -> None:
        self.seconds = 0.0
        self.flops = 0
        self.flops_static = 0

    def _network(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1 or 3, h, w) -> same channels, upscaled by the model."""
        gray = x.shape[1] == 1
        if gray:
            x = x.expand(-1, 3, -1, -1)
        with torch.inference_mode():
            y = self.model(x.to(self.device))
        self.flops += flops_cached(self.model, tuple(x.shape), FLOPS_CONVENTION)
        return y.mean(1, keepdim=True) if gray else y

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        n_color = 1 if batch.shape[1] in (1, 2) else 3
        flops_before = self.flops
        parts = [self._network(batch[:, :n_color])]
        if batch.shape[1] > n_color:
            alpha = batch[:, n_color:]
            if self.alpha == "model":
                parts.append(self._network(alpha))
            else:
                with torch.inference_mode():
                    parts.append(imresize(alpha.to(self.device), self.scale, antialias=False))
        out = torch.cat(parts, 1) if len(parts) > 1 else parts[0]
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds += time.perf_counter() - start
        self.flops_static += self.flops - flops_before  # a static network costs the same
        return out


def resolve_device(name: str) -> torch.device:
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda: no CUDA GPU is available to torch on this machine")
        return torch.device(name)
    raise ConfigError(f"unknown device {name!r}; use cpu or cuda")


def _with_constant_alpha(bands: Iterator[np.ndarray], value) -> Iterator[np.ndarray]:
    for band in bands:
        alpha = np.full(band.shape[:2] + (1,), value, dtype=band.dtype)
        yield np.concatenate([band, alpha], axis=2)


class Upscaler:
    """A model loaded once, applied to any number of images."""

    def __init__(self, options: UpscaleOptions | None = None) -> None:
        self.options = options = options or UpscaleOptions()
        if options.alpha not in ("bicubic", "model"):
            raise ConfigError(f"--alpha must be bicubic or model, not {options.alpha!r}")
        self.device = resolve_device(options.device)
        self.model = create_model(options.model, scale=options.scale).to(self.device)
        self.descriptor = d = self.model.descriptor
        self.tiling = TileConfig.resolve(
            tile=options.tile,
            overlap=options.overlap,
            margin=d.margin,
            default_tile=d.default_tile,
            default_overlap=d.default_overlap,
            size_multiple=d.size_multiple,
            batch_size=options.batch_size,
        )
        self.runner = TileRunner(self.model, device=self.device, alpha=options.alpha)

    def tile_count(self, width: int, height: int) -> int:
        return self.tiling.count(height, width)

    def upscale_array(
        self, pixels: np.ndarray, on_tiles: Callable[[int], None] | None = None
    ) -> Iterator[np.ndarray]:
        """Yield output bands of ``pixels`` (H, W, C) upscaled; constant alpha skips work."""
        s = self.options.scale
        if pixels.shape[2] in (2, 4):
            alpha = pixels[..., -1]
            first = alpha.flat[0]
            if (alpha == first).all():
                bands = tiled_upscale(
                    pixels[..., :-1], self.runner, scale=s, config=self.tiling, on_tiles=on_tiles
                )
                return _with_constant_alpha(bands, first)
        return tiled_upscale(pixels, self.runner, scale=s, config=self.tiling, on_tiles=on_tiles)

    def upscale_file(
        self,
        src: str | Path,
        dst: str | Path,
        *,
        on_start: Callable[[int], None] | None = None,
        on_tiles: Callable[[int], None] | None = None,
        on_warning: Callable[[str], None] | None = None,
    ) -> ImageReport:
        """Read ``src``, upscale, write ``dst`` atomically; raise SrTileError on bad input.

        ``on_start(total_tiles)`` is called once the image is decoded.
        """
        opts = self.options
        src, dst = Path(src), Path(dst)
        start = time.perf_counter()
        check_output(src, dst, overwrite=opts.overwrite)
        image = read_image(src, max_pixels=opts.max_pixels)
        fmt = output_format_for(dst, opts.fmt, image.meta.format)
        h, w = image.height, image.width
        s = opts.scale
        if on_start is not None:
            on_start(self.tile_count(w, h))
        self.runner.reset()
        bands = self.upscale_array(image.pixels, on_tiles)
        write_image(
            dst,
            bands,
            width=w * s,
            height=h * s,
            channels=image.channels,
            dtype=image.pixels.dtype,
            meta=image.meta.scaled(s, w * s, h * s),
            fmt=fmt,
            options=opts.write,
            overwrite=opts.overwrite,
            on_warning=on_warning,
        )
        return ImageReport(
            input=str(src),
            output=str(dst),
            width=w,
            height=h,
            out_width=w * s,
            out_height=h * s,
            scale=s,
            model=self.descriptor.name,
            tiles=self.tile_count(w, h),
            latency_s=self.runner.seconds,
            total_s=time.perf_counter() - start,
            flops=self.runner.flops,
            flops_static=self.runner.flops_static,
            flops_note=self.descriptor.flops_note or None,
        )


def check_output(src: Path, dst: Path, *, overwrite: bool) -> None:
    """Refuse before any work: the input is never overwritten, an output only if asked."""
    if dst.exists() and src.exists() and os.path.samefile(src, dst):
        raise ImageWriteError(f"{dst}: output would overwrite the input; choose another name")
    if dst.exists() and not overwrite:
        raise ImageWriteError(f"{dst}: exists; pass --overwrite to replace it")
    if dst.is_dir():
        raise ImageWriteError(f"{dst}: is a directory")
