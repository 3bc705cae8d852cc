"""Runners: what turns batches of LR tiles into SR tiles for the tiler, and keeps the books.

:class:`TileRunner` runs any network as it is (a static network, or a routed one with
``--static``). A routed family subclasses it in its own package and names the subclass in
its model's ``runner_cls``; :func:`make_runner` picks one, so that a routed model can never
run silently as a static network. A runner sees each image once (``prepare``) before its
tiles, and reports per image: compute seconds, FLOPs as executed, FLOPs of the static network
on the same tiles, and its family's ``extras``.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from sr_tile.flops import flops_cached
from sr_tile.imresize import bicubic_grid, imresize
from sr_tile.models.descriptor import Routing
from sr_tile.routemap import RouteMap
from sr_tile.routing import RoutingOptions
from sr_tile.tiler import TileConfig, TileWindow

FLOPS_CONVENTION = "classsr"
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
#: Below this PSNR (dB) against fp32 on the first tile, reduced precision has collapsed.
PRECISION_FLOOR_DB = 30.0


@dataclass(frozen=True)
class Inference:
    """How a runner computes, whatever the model: its precision (``--precision``: autocast
    to bf16/fp16, checked once against fp32), and ``--tta`` (the 8 flips and rotations of
    every tile, averaged; FLOPs counted 8 times)."""

    precision: str = "fp32"
    tta: bool = False


def is_out_of_memory(exc: BaseException) -> bool:
    """torch's out-of-memory error, or ONNX Runtime's failed allocation."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text
                                              or "failed to allocate memory" in text)


class TileRunner:
    """Runs a static network on batches of tiles and keeps the books.

    Colour goes through the model (gray is replicated to RGB and averaged back);
    alpha goes through bicubic, or through the model with ``alpha="model"``.
    Time is model compute only (synchronised on CUDA); FLOPs are counted in the
    ``classsr`` convention for the colour path, per batch shape.
    """

    def __init__(self, model: torch.nn.Module, *, device: torch.device, alpha: str,
                 routing: RoutingOptions | None = None) -> None:
        self.model = model
        self.device = device
        self.alpha = alpha
        self.scale = model.descriptor.scale
        self.fixed_scale = float(self.scale).is_integer()  # else: tiles sampled on the grid
        self.inference = Inference()
        self.max_batch: int | None = None  # set by an out-of-memory error, kept for the run
        self._precision_checked = False
        self.reset()

    #: What ``prepare`` decides for an image that a runner in another process needs to run
    #: some of its tiles as this one would (one huge image across workers, sr_tile.cluster).
    HANDOFF: tuple[str, ...] = ()
    #: The books kept per image that add up across runners (numbers, or lists of numbers).
    BOOKS: tuple[str, ...] = ("seconds", "flops", "flops_static")

    def reset(self) -> None:
        self.seconds = 0.0
        self.flops = 0
        self.flops_static = 0

    def handoff(self) -> dict[str, Any]:
        """After ``prepare``: what another runner needs to run this image's tiles (``adopt``)."""
        return {name: getattr(self, name) for name in self.HANDOFF}

    def adopt(self, handoff: dict[str, Any]) -> None:
        """Start an image from another runner's ``prepare``, with empty books."""
        self.reset()
        for name, value in handoff.items():
            setattr(self, name, value)

    def books(self) -> dict[str, Any]:
        """This runner's books of the tiles it ran, for the runner that prepared the image."""
        return {name: getattr(self, name) for name in self.BOOKS}

    def add_books(self, books: dict[str, Any]) -> None:
        """Add another runner's ``books()`` of the same image to these."""
        for name in self.BOOKS:
            mine, theirs = getattr(self, name), books[name]
            setattr(self, name, [a + b for a, b in zip(mine, theirs)]
                    if isinstance(mine, list) else mine + theirs)

    def prepare(self, image: np.ndarray, tiling: TileConfig) -> None:
        """Called once per image before its tiles, untimed: a first-time FLOPs count of the
        tile shape happens here, not inside the timed batches (the first count of a process
        costs ~1 s, mostly torch importing its meta-tensor machinery)."""
        self.tile_flops(*tiling.tile_shape(image.shape[0], image.shape[1]))

    def tile_flops(self, height: int, width: int) -> int:
        """classsr FLOPs of the network on one ``height x width`` tile (linear in the batch):
        the model's own ``tile_flops(height, width)`` when it has one (an analytic count, no
        pass of the network), else counted once per shape."""
        own = getattr(self.model, "tile_flops", None)
        if own is not None:
            return int(own(height, width))
        return flops_cached(self.model, (1, 3, height, width), FLOPS_CONVENTION)

    def extras(self) -> dict[str, Any]:
        """The family's own fields of the last image's report (a routed family's exit shares,
        token sparsity, routing settings...); they reach ``--json``, the console and bench
        without those knowing the family. None for a static network."""
        return {}

    @staticmethod
    def describe(extras: dict[str, Any]) -> str:
        """``extras`` in a few characters, for the console table's routing column."""
        return ""

    def route_map(self) -> RouteMap:
        """Where the last image's work went, per LR pixel, for ``--route-map``; only routed
        runners have one."""
        raise TypeError(f"{self.model.descriptor.name} runs every tile the same way")

    def run_rgb(self, x: torch.Tensor, windows: list[TileWindow], *,
                routed: bool) -> torch.Tensor:
        """(N, 3, h, w) on the device -> upscaled; adds to the FLOPs tallies. A model of a
        non-integer scale samples each tile's window of the global output grid."""
        flops = self.tile_flops(*x.shape[-2:]) * x.shape[0]
        self.flops += flops
        self.flops_static += flops
        return self._plain(x, windows)

    def to_device(self, x: torch.Tensor) -> torch.Tensor:
        """A batch of tiles on the device, channels-last on the CPU: oneDNN's convolutions run
        25-30 % faster on NHWC for these nets (FSRCNN, CARN-M, the SRResNet trunk, the
        estimator); same values to float rounding."""
        if self.device.type == "cpu":
            return x.contiguous(memory_format=torch.channels_last)
        return x.to(self.device)

    def _network(self, x: torch.Tensor, windows: list[TileWindow], *,
                 routed: bool = True) -> torch.Tensor:
        """(N, 1 or 3, h, w) -> same channels, upscaled by the model."""
        gray = x.shape[1] == 1
        x = x.expand(-1, 3, -1, -1) if gray else x
        with torch.inference_mode():
            y = self._in_pieces(self.to_device(x), windows, routed)
        return y.mean(1, keepdim=True) if gray else y

    def _in_pieces(self, x: torch.Tensor, windows: list[TileWindow],
                   routed: bool) -> torch.Tensor:
        """The batch in pieces of at most ``max_batch`` tiles. Out of memory, a piece's books
        are undone and it is redone as two (the smaller batch kept for the run), and a single
        tile as two halves of itself (``_halves``); no output of a failed pass is kept."""
        outs, i = [], 0
        while i < x.shape[0]:
            n = min(self.max_batch or x.shape[0], x.shape[0] - i)
            books = (self.flops, self.flops_static)
            try:
                outs.append(self._compute(x[i:i + n], windows[i:i + n], routed))
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
                self.flops, self.flops_static = books
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                if n > 1:
                    self.max_batch = n // 2
                    warnings.warn(f"out of memory on {n} tiles: batches of {n // 2} from now on")
                    continue
                outs.append(self._halves(x[i:i + 1], windows[i:i + 1], routed, exc))
            i += n
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    def _halves(self, x: torch.Tensor, windows: list[TileWindow], routed: bool,
                exc: BaseException) -> torch.Tensor:
        """One tile that does not fit, as two overlapping halves cut across its longer side,
        each run with the tile's own window (its route), joined at the middle."""
        d = self.model.descriptor
        m = d.size_multiple
        context = math.ceil(max(2 * d.margin, 8) / m) * m
        dim = 2 if x.shape[2] >= x.shape[3] else 3
        side = x.shape[dim]
        mid = side // 2 // m * m
        if not self.fixed_scale or mid - context < m or mid + context > side - m:
            raise exc
        warnings.warn(f"out of memory on one {x.shape[2]}x{x.shape[3]} tile: running it in "
                      "halves (a smaller --tile avoids this)")
        first = self._in_pieces(x.narrow(dim, 0, mid + context), windows, routed)
        second = self._in_pieces(x.narrow(dim, mid - context, side - mid + context), windows,
                                 routed)
        s = int(self.scale)
        return torch.cat([first.narrow(dim, 0, mid * s),
                          second.narrow(dim, context * s, (side - mid) * s)], dim)

    def _compute(self, x: torch.Tensor, windows: list[TileWindow],
                 routed: bool) -> torch.Tensor:
        """``run_rgb`` at the run's precision, over the 8 transforms with ``--tta``."""
        if not self.inference.tta:
            return self._at_precision(x, windows, routed)
        total = None
        for k in (1, 2, 3, 4, 5, 6, 7, 0):  # the identity last: a route map keeps its paint
            y = untransform(self._at_precision(transform(x, k), windows, routed), k)
            total = y if total is None else total.add_(y)
        return total / 8

    def _at_precision(self, x: torch.Tensor, windows: list[TileWindow],
                      routed: bool) -> torch.Tensor:
        dtype = PRECISIONS[self.inference.precision]
        if dtype is not None and not self._precision_checked:
            self._check_precision(x[:1], windows[:1], dtype)
            dtype = PRECISIONS[self.inference.precision]
        if dtype is None:
            return self.run_rgb(x, windows, routed=routed)
        with torch.autocast(self.device.type, dtype=dtype):
            y = self.run_rgb(x, windows, routed=routed)
        return y.float()

    def _check_precision(self, x: torch.Tensor, windows: list[TileWindow],
                         dtype: torch.dtype) -> None:
        """The first tile of a run, through the whole network (outside the books) at the
        reduced precision and at fp32: not finite, or under ``PRECISION_FLOOR_DB`` from fp32
        (black or collapsed images, Real-ESRGAN#330), the run goes on in fp32 and says so."""
        self._precision_checked = True
        with torch.autocast(self.device.type, dtype=dtype):
            low = self._plain(x, windows).float()
        ref = self._plain(x, windows).float()
        mse = float((low - ref).square().mean()) if bool(torch.isfinite(low).all()) else math.inf
        db = -10 * math.log10(mse) if 0 < mse < math.inf else (math.inf if mse == 0 else -math.inf)
        if db < PRECISION_FLOOR_DB:
            name = self.inference.precision
            self.inference = Inference("fp32", self.inference.tta)
            what = "not finite" if mse == math.inf else f"{db:.1f} dB from fp32"
            warnings.warn(f"--precision {name}: {self.model.descriptor.name}'s first tile is "
                          f"{what}; running in fp32")

    def _plain(self, x: torch.Tensor, windows: list[TileWindow]) -> torch.Tensor:
        """The model's own forward (its full network), outside the books."""
        if self.fixed_scale:
            return self.model(x)
        return self.model(x, grid_coords(windows, x.device))

    def __call__(self, batch: torch.Tensor, windows: list[TileWindow]) -> torch.Tensor:
        """A batch of tiles (N, C, h, w) and where each lies -> their outputs (the tiler's
        ``fn``). Tiles may come in any order; ``windows`` say which they are."""
        start = time.perf_counter()
        n_color = 1 if batch.shape[1] in (1, 2) else 3
        parts = [self._network(batch[:, :n_color], windows)]
        if batch.shape[1] > n_color:
            alpha = batch[:, n_color:]
            if self.alpha == "model":
                parts.append(self._network(alpha, windows, routed=False))
            else:
                with torch.inference_mode():
                    alpha = alpha.to(self.device)
                    parts.append(imresize(alpha, self.scale, antialias=False) if self.fixed_scale
                                 else bicubic_grid(alpha, *grid_coords(windows, self.device)))
        out = torch.cat(parts, 1) if len(parts) > 1 else parts[0]
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds += time.perf_counter() - start
        return out


def transform(x: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th of the 8 flips and rotations (k in 0..7; 0 the identity) of (N, C, h, w)."""
    x = x.flip(-1) if k & 4 else x
    return torch.rot90(x, k % 4, dims=(-2, -1)) if k % 4 else x


def untransform(y: torch.Tensor, k: int) -> torch.Tensor:
    """The inverse of :func:`transform`."""
    y = torch.rot90(y, -(k % 4), dims=(-2, -1)) if k % 4 else y
    return y.flip(-1) if k & 4 else y


def grid_coords(windows: list[TileWindow], device: torch.device
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, H'), (N, W'): the tile-local LR coordinates (pixel centres at integers) of the
    centres of each tile's output rows and columns on the global grid, padded to the
    batch's largest window by repeating the last one (those outputs are cut)."""
    def axis(starts, firsts, counts, scale) -> torch.Tensor:
        n = max(counts)
        k = torch.arange(n, dtype=torch.float64)[None, :].minimum(
            torch.tensor(counts, dtype=torch.float64)[:, None] - 1)
        global_k = k + torch.tensor(firsts, dtype=torch.float64)[:, None]
        u = (global_k + 0.5) / torch.tensor(scale, dtype=torch.float64)[:, None] - 0.5
        return (u - torch.tensor(starts, dtype=torch.float64)[:, None]).to(device)

    return (axis([w.y0 for w in windows], [w.out_y0 for w in windows],
                 [w.out_h for w in windows], [w.scale_y for w in windows]),
            axis([w.x0 for w in windows], [w.out_x0 for w in windows],
                 [w.out_w for w in windows], [w.scale_x for w in windows]))


def make_runner(model: torch.nn.Module, *, device: torch.device, alpha: str,
                routing: RoutingOptions, static: bool = False,
                inference: Inference = Inference()) -> TileRunner:
    """The model's own runner, or :class:`TileRunner` for a static network (or ``static``)."""
    if static or model.descriptor.routing == Routing.NONE:
        runner = TileRunner(model, device=device, alpha=alpha)
    else:
        runner = runner_class(model)(model, device=device, alpha=alpha, routing=routing)
    runner.inference = inference
    return runner


def runner_class(model: torch.nn.Module) -> type[TileRunner]:
    """A routed model's ``runner_cls``; TypeError when it has none (checked at build)."""
    cls = getattr(model, "runner_cls", None)
    if model.descriptor.routing != Routing.NONE and not (
            isinstance(cls, type) and issubclass(cls, TileRunner)):
        raise TypeError(f"{model.descriptor.name} routes by {model.descriptor.routing.value} "
                        "but names no runner_cls (a TileRunner subclass)")
    return cls or TileRunner
