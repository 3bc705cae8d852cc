"""Runners: what turns batches of LR tiles into SR tiles for the tiler, and keeps the books.

:class:`TileRunner` runs any network as it is (a static network, or a routed one with
``--static``). A routed family subclasses it in its own package and names the subclass in
its model's ``runner_cls``; :func:`make_runner` picks one, so that a routed model can never
run silently as a static network. A runner sees each image once (``prepare``) before its
tiles, and reports per image: compute seconds, FLOPs as executed, FLOPs of the static network
on the same tiles, and its family's ``extras``.
"""

from __future__ import annotations

import time
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
        if self.fixed_scale:
            return self.model(x)
        return self.model(x, grid_coords(windows, x.device))

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
            y = self.run_rgb(self.to_device(x), windows, routed=routed)
        return y.mean(1, keepdim=True) if gray else y

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
                routing: RoutingOptions, static: bool = False) -> TileRunner:
    """The model's own runner, or :class:`TileRunner` for a static network (or ``static``)."""
    if static or model.descriptor.routing == Routing.NONE:
        return TileRunner(model, device=device, alpha=alpha)
    return runner_class(model)(model, device=device, alpha=alpha, routing=routing)


def runner_class(model: torch.nn.Module) -> type[TileRunner]:
    """A routed model's ``runner_cls``; TypeError when it has none (checked at build)."""
    cls = getattr(model, "runner_cls", None)
    if model.descriptor.routing != Routing.NONE and not (
            isinstance(cls, type) and issubclass(cls, TileRunner)):
        raise TypeError(f"{model.descriptor.name} routes by {model.descriptor.routing.value} "
                        "but names no runner_cls (a TileRunner subclass)")
    return cls or TileRunner
