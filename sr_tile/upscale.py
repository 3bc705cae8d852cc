"""Library API of the main job: upscale image files, tile by tile, and report.

    >>> from sr_tile import Upscaler, UpscaleOptions
    >>> report = Upscaler(UpscaleOptions(scale=4)).upscale_file("in.png", "out.png")

The CLI is a thin layer over :class:`Upscaler`; it adds batch handling and
printing only.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sr_tile.errors import ImageWriteError, UsageError
from sr_tile.flops import flops_cached
from sr_tile.imresize import imresize
from sr_tile.io import (
    DEFAULT_MAX_PIXELS,
    WriteOptions,
    canonical_format,
    output_format_for,
    read_image,
    write_image,
)
from sr_tile.models import DEFAULT_MODEL, create_model
from sr_tile.models.enaf import ESTIMATOR_PART, EnafSR
from sr_tile.models.descriptor import Routing
from sr_tile.models.layers import BLANK_THRESHOLD, combine_psnr, gray_u8, laplacian_abs
from sr_tile.routing import RoutingOptions, eta_for_budget, fuse
from sr_tile.tiler import TileConfig, TilePlan, tiled_upscale, to_float

FLOPS_CONVENTION = "classsr"


@dataclass(frozen=True)
class UpscaleOptions:
    """Everything that decides how an image is upscaled (the CLI's flags)."""

    scale: int = 4
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
    route: bool = True  # False: run a routed model as its static backbone (baseline rows)
    weights: str | None = None  # a weights file instead of the shipped one

    def __post_init__(self) -> None:
        """Bad values are usage errors, found before a model is loaded or a file read."""
        if self.alpha not in ("bicubic", "model"):
            raise UsageError(f"--alpha must be bicubic or model, not {self.alpha!r}")
        if self.max_pixels is not None and self.max_pixels <= 0:
            raise UsageError(f"--max-pixels must be positive, not {self.max_pixels}")
        if self.scale <= 0:
            raise UsageError(f"--scale must be positive, not {self.scale}")
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
    scale: int | None = None
    model: str | None = None
    tiles: int | None = None
    latency_s: float | None = None  # model compute only
    total_s: float | None = None  # read + compute + blend + write
    flops: int | None = None
    flops_static: int | None = None
    flops_convention: str = FLOPS_CONVENTION
    flops_note: str | None = None
    eta: float | None = None  # routed models: the eta used for this image
    gamma: float | None = None  # routed models: the blank-vector weight used
    exits: dict[str, float] | None = None  # routed models: share of tiles per path
    exit_map: str | None = None

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
    """Runs a static network on batches of tiles and keeps the books.

    Colour goes through the model (gray is replicated to RGB and averaged back);
    alpha goes through bicubic, or through the model with ``alpha="model"``.
    Time is model compute only (synchronised on CUDA); FLOPs are counted in the
    ``classsr`` convention for the colour path, per batch shape.
    """

    eta: float | None = None  # routing settings, reported per image; none for static nets
    gamma: float | None = None

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

    def prepare(self, image: np.ndarray, tiling: TileConfig) -> None:
        """Called once per image before its tiles, untimed: a first-time FLOPs count of the
        tile shape happens here, not inside the timed batches (the first count of a process
        costs ~1 s, mostly torch importing its meta-tensor machinery)."""
        self.tile_flops(*tiling.tile_shape(image.shape[0], image.shape[1]))

    def tile_flops(self, height: int, width: int) -> int:
        """classsr FLOPs of the network on one ``height x width`` tile (linear in the batch)."""
        return flops_cached(self.model, (1, 3, height, width), FLOPS_CONVENTION)

    def exit_shares(self) -> dict[str, float] | None:
        return None

    def token_sparsity(self) -> float | None:
        """Share of tokens a token-halting model skipped; None for convolutional runners."""
        return None

    def run_rgb(self, x: torch.Tensor, *, routed: bool) -> torch.Tensor:
        """(N, 3, h, w) on the device -> upscaled; adds to the FLOPs tallies."""
        flops = self.tile_flops(*x.shape[-2:]) * x.shape[0]
        self.flops += flops
        self.flops_static += flops
        return self.model(x)

    def to_device(self, x: torch.Tensor) -> torch.Tensor:
        """A batch of tiles on the device, channels-last on the CPU: oneDNN's convolutions run
        25-30 % faster on NHWC for these nets (FSRCNN, CARN-M, the SRResNet trunk, the
        estimator); same values to float rounding."""
        if self.device.type == "cpu":
            return x.contiguous(memory_format=torch.channels_last)
        return x.to(self.device)

    def _network(self, x: torch.Tensor, *, routed: bool = True) -> torch.Tensor:
        """(N, 1 or 3, h, w) -> same channels, upscaled by the model."""
        gray = x.shape[1] == 1
        x = x.expand(-1, 3, -1, -1) if gray else x
        with torch.inference_mode():
            y = self.run_rgb(self.to_device(x), routed=routed)
        return y.mean(1, keepdim=True) if gray else y

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        n_color = 1 if batch.shape[1] in (1, 2) else 3
        parts = [self._network(batch[:, :n_color])]
        if batch.shape[1] > n_color:
            alpha = batch[:, n_color:]
            if self.alpha == "model":
                parts.append(self._network(alpha, routed=False))
            else:
                with torch.inference_mode():
                    parts.append(imresize(alpha.to(self.device), self.scale, antialias=False))
        out = torch.cat(parts, 1) if len(parts) > 1 else parts[0]
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds += time.perf_counter() - start
        return out


class ExitRunner(TileRunner):
    """ENAF: the estimator and blank vector pick a path per tile (Eq. 9).

    Tiles are run by ``backbone.forward_paths``: grouped by path, the trunk
    shared and cut at each tile's depth. ``flops`` counts the paths taken plus
    the estimator on every tile; ``flops_static`` the full network on every tile.
    Alpha with ``alpha="model"`` takes the full network.
    """

    PATH_NAMES = ("bicubic", "exit1", "exit2", "full")

    def __init__(self, model: EnafSR, *, device: torch.device, alpha: str,
                 routing: RoutingOptions) -> None:
        self.routing = routing
        self.eta, self.gamma = routing.resolve(model.presets)
        if routing.path is not None:
            self.eta = None
        super().__init__(model, device=device, alpha=alpha)

    def reset(self) -> None:
        super().reset()
        self.paths: list[int] = []
        self._u = torch.empty(0, self.model.num_paths)  # every tile's estimate, row-major
        self._blank = torch.empty(0, dtype=torch.bool)
        self._next = 0  # the first tile the next batch holds

    def prepare(self, image: np.ndarray, tiling: TileConfig) -> None:
        """Estimate every tile before the first batch runs; with a budget, then pick this
        image's eta. The estimator and the blank test read the whole image once, not tile by
        tile: overlapping tiles would read most pixels ~1.8 times (see ``_estimate``)."""
        height, width = tiling.tile_shape(image.shape[0], image.shape[1])
        for convention in ("torch", FLOPS_CONVENTION):  # first counts here, untimed
            self.model.costs(height, width, convention)
        if self.routing.path is not None:
            return
        self.model.estimator_flops(height, width)
        self.model.estimator_flops(ESTIMATOR_BLOCK, ESTIMATOR_BLOCK)
        start = time.perf_counter()
        color = image[..., : 1 if image.shape[2] in (1, 2) else 3]
        py, px = tiling.plans(color.shape[0], color.shape[1])
        with torch.inference_mode():
            self._u = self._estimate(color, py, px)
            self._blank = (self._blank_flags(color, py, px) if self.gamma != 0
                           else torch.zeros(py.count * px.count, dtype=torch.bool))
        self._next = 0
        if self.routing.budget is not None:
            full = self.model.backbone.path_flops(height, width)[-1]
            self.eta = eta_for_budget(
                self._u, self._blank, self.model.costs(height, width), gamma=self.gamma,
                budget=self.routing.budget, overhead=self.flops / (len(self._u) * full),
                measure=self.model.costs(height, width, FLOPS_CONVENTION),
            )
        self.seconds += time.perf_counter() - start

    def _estimate(self, color: np.ndarray, py: TilePlan, px: TilePlan) -> torch.Tensor:
        """(tiles, P) the estimator's PSNRs of every tile, row-major; counts its FLOPs.

        Tiles on the sub-tile grid (start and size multiples of ``ESTIMATOR_PART``; all but
        the last row and column for the default 32/8 tiling) combine their sub-tiles' PSNRs
        from one map of the whole image: the same numbers as reading each tile (to float
        rounding, tested), at ~1/1.8 of the cost. The other tiles are read one by one.
        """
        part, paths = ESTIMATOR_PART, self.model.num_paths
        u = torch.empty(py.count, px.count, paths)
        grid_y = [i for i, y in enumerate(py.starts) if y % part == 0 and py.tile % part == 0]
        grid_x = [j for j, x in enumerate(px.starts) if x % part == 0 and px.tile % part == 0]
        if grid_y and grid_x:
            umap = self._psnr_map(color, part)  # (P, H // part, W // part)
            ry = torch.tensor([py.starts[i] // part for i in grid_y])[:, None] + torch.arange(
                py.tile // part)
            rx = torch.tensor([px.starts[j] // part for j in grid_x])[:, None] + torch.arange(
                px.tile // part)
            blocks = umap[:, ry[:, None, :, None], rx[None, :, None, :]]  # (P, ny, nx, ky, kx)
            u[torch.tensor(grid_y)[:, None], torch.tensor(grid_x)[None, :]] = combine_psnr(
                blocks.flatten(3), dim=3).permute(1, 2, 0)
        on_y, on_x = set(grid_y), set(grid_x)
        rest = [(i, j) for i in range(py.count) for j in range(px.count)
                if i not in on_y or j not in on_x]
        for k in range(0, len(rest), ESTIMATOR_BATCH):
            where = rest[k:k + ESTIMATOR_BATCH]
            x = torch.stack([to_float(color[py.starts[i]:py.starts[i] + py.tile,
                                            px.starts[j]:px.starts[j] + px.tile])
                             for i, j in where])
            x = self.to_device(x.expand(-1, 3, -1, -1))
            self.flops += self.model.estimator_flops(py.tile, px.tile) * len(where)
            u[tuple(torch.tensor(where).T)] = self.model.predict_psnr(x).float().cpu()
        return u.reshape(-1, paths)

    def _psnr_map(self, color: np.ndarray, part: int) -> torch.Tensor:
        """(P, H // part, W // part) the estimator's PSNR of every sub-tile of the image on
        the grid from its top-left corner, in bands of ``ESTIMATOR_ROWS`` rows.

        A band is cut into non-overlapping ``b x b`` blocks (zero-padded at the right and
        bottom; the estimator reads each sub-tile alone, so padding changes no kept value) and
        run as one batch: torch runs a one-image band's 1x1 convolutions on a slow path.
        """
        height, width = (n // part * part for n in color.shape[:2])
        b = ESTIMATOR_BLOCK
        maps = []
        for top in range(0, height, ESTIMATOR_ROWS):
            band = to_float(color[top:min(top + ESTIMATOR_ROWS, height), :width])
            h, w = band.shape[-2:]
            band = F.pad(band.expand(3, -1, -1), (0, -w % b, 0, -h % b))
            ny, nx = band.shape[1] // b, band.shape[2] // b
            blocks = band.reshape(3, ny, b, nx, b).permute(1, 3, 0, 2, 4).reshape(-1, 3, b, b)
            self.flops += self.model.estimator_flops(b, b) * len(blocks)
            u = self.model.estimator.psnr_map(self.to_device(blocks), part).float().cpu()
            k = b // part
            u = u.reshape(ny, nx, -1, k, k).permute(2, 0, 3, 1, 4).reshape(-1, ny * k, nx * k)
            maps.append(u[:, : h // part, : w // part])
        return torch.cat(maps, dim=1)

    @staticmethod
    def _blank_flags(color: np.ndarray, py: TilePlan, px: TilePlan) -> torch.Tensor:
        """(tiles,) ENAF's blank test of every tile (``is_blank``), row-major: per tile row, the
        |Laplacian| of the band once, then each tile's sum from column prefix sums (exact:
        integers in float64)."""
        if py.tile < 3 or px.tile < 3:  # no valid Laplacian: no tile is called blank
            return torch.zeros(py.count * px.count, dtype=torch.bool)
        x0 = torch.tensor(px.starts)
        flags = []
        for y0 in py.starts:
            band = to_float(color[y0:y0 + py.tile]).expand(3, -1, -1)[None]
            columns = laplacian_abs(gray_u8(band))[0].sum(dim=0, dtype=torch.float64)
            prefix = torch.cat([columns.new_zeros(1), columns.cumsum(0)])
            sums = prefix[x0 + px.tile - 2] - prefix[x0]
            flags.append(sums / ((py.tile - 2) * (px.tile - 2)) <= BLANK_THRESHOLD)
        return torch.cat(flags)

    def take_estimates(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The next ``n`` tiles' estimates and blank flags (batches come in tile order)."""
        k = self._next
        self._next += n
        return self._u[k:k + n], self._blank[k:k + n]

    def run_rgb(self, x: torch.Tensor, *, routed: bool) -> torch.Tensor:
        costs = self.model.backbone.path_flops(*x.shape[-2:])
        self.flops_static += costs[-1] * x.shape[0]
        if not routed:
            self.flops += costs[-1] * x.shape[0]
            return self.model(x)
        if self.routing.path is not None:  # a fixed exit: no estimator runs, none is counted
            paths = torch.full((x.shape[0],), self.routing.path, dtype=torch.long)
        else:
            u, blank = self.take_estimates(x.shape[0])  # prepare() estimated every tile
            paths = fuse(u, blank, self.model.costs(*x.shape[-2:]), eta=self.eta,
                         gamma=self.gamma)
        chosen = paths.tolist()
        self.paths += chosen
        self.flops += sum(costs[p] for p in chosen)
        return self.model.backbone.forward_paths(x, paths)

    def exit_shares(self) -> dict[str, float]:
        n = max(len(self.paths), 1)
        return {name: self.paths.count(j) / n for j, name in enumerate(self.PATH_NAMES)}


ESTIMATOR_BATCH = 256  # off-grid tiles per estimator pass (~2x faster per tile than 32)
ESTIMATOR_ROWS = 256  # LR rows per band of the whole-image estimator map (bounds its memory)
ESTIMATOR_BLOCK = 32  # block side a band is cut into for the estimator's batch


def auto_batch_size(tile: int) -> int:
    """About 64k LR pixels per forward pass: 64 tiles of 32x32, 1 tile of 256x256."""
    return max(1, min(256, 65536 // (tile * tile)))


def resolve_device(name: str) -> torch.device:
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError("--device cuda: no CUDA GPU is available to torch on this machine")
        return torch.device(name)
    raise UsageError(f"unknown device {name!r}; use cpu or cuda")


def _with_constant_alpha(bands: Iterator[np.ndarray], value) -> Iterator[np.ndarray]:
    for band in bands:
        alpha = np.full(band.shape[:2] + (1,), value, dtype=band.dtype)
        yield np.concatenate([band, alpha], axis=2)


class Upscaler:
    """A model loaded once, applied to any number of images."""

    def __init__(self, options: UpscaleOptions | None = None) -> None:
        self.options = options = options or UpscaleOptions()
        self.device = resolve_device(options.device)
        self.model = create_model(
            options.model, scale=options.scale, weights=options.weights or True
        ).to(self.device)
        self.descriptor = d = self.model.descriptor
        self.tiling = TileConfig.resolve(
            tile=options.tile,
            overlap=options.overlap,
            margin=d.margin,
            default_tile=d.default_tile,
            default_overlap=d.default_overlap,
            size_multiple=d.size_multiple,
            batch_size=options.batch_size or auto_batch_size(options.tile or d.default_tile),
        )
        if d.routing == Routing.EXITS and options.route:
            self.runner: TileRunner = ExitRunner(
                self.model, device=self.device, alpha=options.alpha, routing=options.routing
            )
        else:
            self.runner = TileRunner(self.model, device=self.device, alpha=options.alpha)

    @property
    def routed(self) -> bool:
        """Whether tiles take different paths (so an exit map means something)."""
        return isinstance(self.runner, ExitRunner)

    def tile_count(self, width: int, height: int) -> int:
        return self.tiling.count(height, width)

    def upscale_array(
        self, pixels: np.ndarray, on_tiles: Callable[[int], None] | None = None
    ) -> Iterator[np.ndarray]:
        """Yield output bands of ``pixels`` (H, W, C) upscaled; constant alpha skips work."""
        s = self.options.scale
        self.runner.reset()
        self.runner.prepare(pixels, self.tiling)
        if pixels.shape[2] in (2, 4):
            alpha = pixels[..., -1]
            first = alpha.flat[0]
            if (alpha == first).all():
                bands = tiled_upscale(
                    pixels[..., :-1], self.runner, scale=s, config=self.tiling, on_tiles=on_tiles
                )
                return _with_constant_alpha(bands, first)
        return tiled_upscale(pixels, self.runner, scale=s, config=self.tiling, on_tiles=on_tiles)

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
        exit_map: str | Path | None = None,
    ) -> ImageReport:
        """Read ``src``, upscale, write ``dst`` atomically; raise SrTileError on bad input.

        ``on_start(total_tiles)`` is called once the image is decoded; ``on_warning`` gets
        each warning line (what the decoder reported, frames dropped, lossy conversions;
        without it they are Python warnings). ``exit_map``: for routed models, also write
        a picture of the path taken by every tile.
        """
        opts = self.options
        src, dst = Path(src), Path(dst)
        start = time.perf_counter()
        if exit_map is not None and not self.routed:
            raise UsageError(f"--exit-map: {self.descriptor.name} runs every tile the same "
                             "way; exit maps are for routed models")
        for target in (dst, exit_map):
            if target is not None:
                check_not_input(src, Path(target))
        image = read_image(src, max_pixels=opts.max_pixels)
        for line in image.warnings:
            (on_warning or _python_warning)(line)
        fmt = output_format_for(dst, opts.fmt, image.meta.format)
        h, w = image.height, image.width
        s = opts.scale
        if on_start is not None:
            on_start(self.tile_count(w, h))
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
        shares = self.runner.exit_shares()
        if exit_map is not None:
            from sr_tile.exitmap import write_exit_map

            write_exit_map(exit_map, image.pixels, self.tiling, self.runner.paths,
                           ExitRunner.PATH_NAMES, overwrite=opts.overwrite)
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
            eta=self.runner.eta,
            gamma=self.runner.gamma,
            exits=shares,
            exit_map=str(exit_map) if exit_map is not None else None,
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
