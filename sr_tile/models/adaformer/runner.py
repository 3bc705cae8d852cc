"""AdaFormer's runner: halting for real, and the books of what halted.

Each batch of tiles runs ``AdaFormer.forward_halting`` at the preset's eps. FLOPs count what
ran (convs, confidence maps, active windows and tokens of every TSAB) against the dense
network on the same tiles; per image the runner reports, per TSAB, the share of halted tokens
and windows (the paper's Fig. 4), and keeps the depth at which every LR pixel's token halted
for ``--halting-map`` (the paper's Fig. 1/6).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from sr_tile.models.adaformer.model import AdaFormer
from sr_tile.routemap import RouteMap, owned_span
from sr_tile.routing import RoutingOptions
from sr_tile.runner import TileRunner
from sr_tile.tiler import TileConfig, TilePlan, TileWindow


class HaltingRunner(TileRunner):
    """Runs AdaFormer with token and window halting at the preset's ``eps``."""

    HANDOFF = ("_plans", "_overlap")
    BOOKS = TileRunner.BOOKS + ("tokens", "windows", "active_tokens", "active_windows")

    def __init__(self, model: AdaFormer, *, device: torch.device, alpha: str,
                 routing: RoutingOptions | None = None) -> None:
        routing = routing or RoutingOptions()
        routing.refuse(f"{model.descriptor.name} halts tokens; choose how early with "
                       "--preset L, M or S", keep=("--preset",))
        self.preset = (routing.preset or "M").upper()
        self.eps = float(model.presets[self.preset]["eps"])
        super().__init__(model, device=device, alpha=alpha)

    def reset(self) -> None:
        super().reset()
        blocks = len(self.model.blocks)
        self.tokens = self.windows = 0
        self.active_tokens = [0] * blocks
        self.active_windows = [0] * blocks
        self._depth: np.ndarray | None = None
        self._plans: tuple[TilePlan, TilePlan] | None = None
        self._overlap = 0
        self._painted = (0, 0)  # LR rows [from, to) of the depth map painted so far

    def prepare(self, image: np.ndarray, tiling: TileConfig) -> None:
        self._plans = tiling.plans(image.shape[0], image.shape[1])
        self._overlap = tiling.overlap
        self._depth = np.zeros(image.shape[:2], np.uint8)

    def adopt(self, handoff: dict[str, Any]) -> None:
        super().adopt(handoff)
        py, px = self._plans
        self._depth = np.zeros((py.length, px.length), np.uint8)
        self._painted = (py.length, 0)

    def books(self) -> dict[str, Any]:
        low, high = self._painted
        rows = self._depth[low:high] if self._depth is not None and low < high else None
        return {**super().books(), "depth": (low, rows)}

    def add_books(self, books: dict[str, Any]) -> None:
        super().add_books(books)
        low, rows = books["depth"]
        if rows is not None and self._depth is not None:
            self._depth[low:low + len(rows)] = rows  # the rows its tiles own

    def tile_flops(self, height: int, width: int) -> int:
        return self.model.dense_flops(1, height, width)  # exact, no counting pass needed

    def run_rgb(self, x: torch.Tensor, windows: list[TileWindow], *,
                routed: bool) -> torch.Tensor:
        dense = self.model.dense_flops(x.shape[0], *x.shape[-2:])
        self.flops_static += dense
        if not routed:
            self.flops += dense
            return self.model(x)
        out, trace = self.model.forward_halting(x, self.eps)
        self.flops += self.model.halting_flops(trace, x.shape[0])
        self.tokens += trace.tokens
        self.windows += trace.windows
        for k, (t, w) in enumerate(zip(trace.active_tokens, trace.active_windows)):
            self.active_tokens[k] += t
            self.active_windows[k] += w
        self._paint(trace.depth, windows)
        return out

    def _paint(self, depth: torch.Tensor, windows: list[TileWindow]) -> None:
        """Each tile's token depths over the part of the image it owns."""
        if self._depth is None or self._plans is None:
            return
        py, px = self._plans
        for tile, window in zip(depth.numpy(), windows):
            y0, y1 = owned_span(py, window.row, self._overlap)
            x0, x1 = owned_span(px, window.col, self._overlap)
            self._depth[y0:y1, x0:x1] = tile[y0 - window.y0:y1 - window.y0,
                                             x0 - window.x0:x1 - window.x0]
            self._painted = (min(self._painted[0], y0), max(self._painted[1], y1))

    def halted(self) -> tuple[list[float], list[float]]:
        """Per TSAB, the shares of halted tokens and halted windows of the last image."""
        tokens = [1.0 - a / self.tokens if self.tokens else 0.0 for a in self.active_tokens]
        wins = [1.0 - a / self.windows if self.windows else 0.0 for a in self.active_windows]
        return tokens, wins

    def extras(self) -> dict[str, Any]:
        tokens, wins = self.halted()
        return {"eps": self.eps, "halted_tokens": [round(v, 4) for v in tokens],
                "halted_windows": [round(v, 4) for v in wins]}

    @staticmethod
    def describe(extras: dict[str, Any]) -> str:
        tokens = extras.get("halted_tokens")
        return f"halted {100 * tokens[-1]:.0f}% (last TSAB)" if tokens else ""

    def route_map(self) -> RouteMap:
        if self._depth is None:
            raise RuntimeError("no image has run yet")
        blocks = len(self.model.blocks)
        return RouteMap(self._depth, tuple(f"{k} TSABs" if k < blocks else "all"
                                           for k in range(blocks + 1)),
                        "TSABs each token ran before it halted")
