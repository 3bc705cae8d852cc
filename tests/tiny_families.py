"""Two model families that live only in the tests, to show that a family is its own code plus
one registry row: nothing in the tiler, CLI or bench knows them.

``tiny-static``: a 3x3 conv residual on a bicubic skip. ``tiny-routed``: the same network,
but its runner sends flat tiles through bicubic alone and reports the share it skipped.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sr_tile.imresize import imresize
from sr_tile.models.descriptor import ModelDescriptor, Routing
from sr_tile.models.registry import ModelEntry
from sr_tile.runner import TileRunner
from sr_tile.tiler import TileWindow


class TinyNet(nn.Module):
    def __init__(self, *, scale: int = 2, routing: Routing = Routing.NONE,
                 name: str = "tiny-static") -> None:
        super().__init__()
        self.scale = scale
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(8, 3 * scale * scale, 3, padding=1),
                                  nn.PixelShuffle(scale))
        self.descriptor = ModelDescriptor(name=name, scale=scale, margin=4, default_tile=32,
                                          default_overlap=12, routing=routing)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return imresize(x, self.scale, antialias=False) + self.body(x)


class SkipFlatRunner(TileRunner):
    """Flat tiles (std < 0.02) take bicubic alone; the rest the whole network."""

    def reset(self) -> None:
        super().reset()
        self.skipped = self.tiles = 0

    def run_rgb(self, x: torch.Tensor, windows: list[TileWindow], *,
                routed: bool) -> torch.Tensor:
        full = self.tile_flops(*x.shape[-2:])
        flat = x.flatten(1).std(dim=1) < 0.02 if routed else torch.zeros(len(x), dtype=bool)
        out = imresize(x, self.scale, antialias=False)
        if (~flat).any():
            out[~flat] = self.model(x[~flat])
        self.flops += full * int((~flat).sum())
        self.flops_static += full * len(x)
        self.skipped += int(flat.sum())
        self.tiles += len(x)
        return out

    def extras(self) -> dict[str, Any]:
        return {"skipped": self.skipped / max(self.tiles, 1)}

    @staticmethod
    def describe(extras: dict[str, Any]) -> str:
        return f"skip {100 * extras['skipped']:.0f}%"


class TinyRouted(TinyNet):
    runner_cls = SkipFlatRunner

    def __init__(self, *, scale: int = 2) -> None:
        super().__init__(scale=scale, routing=Routing.TOKENS, name="tiny-routed")


def build_static(*, scale: int = 2) -> TinyNet:
    return TinyNet(scale=scale)


def build_routed(*, scale: int = 2) -> TinyRouted:
    return TinyRouted(scale=scale)


ROWS = (
    ModelEntry("tiny-static", "tiny", "a test family: conv residual on bicubic",
               "tests.tiny_families:build_static", (2, 3)),
    ModelEntry("tiny-routed", "tiny", "a test family that skips flat tiles",
               "tests.tiny_families:build_routed", (2,), routing="tokens"),
)
