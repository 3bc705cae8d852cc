"""Two model families that live only in the tests, to show that a family is its own code plus
one registry row: nothing in the tiler, CLI, bench or training engine knows them.

``tiny-static``: a 3x3 conv residual on a bicubic skip. ``tiny-routed``: the same network,
but its runner sends flat tiles through bicubic alone and reports the share it skipped. Both
train with :class:`TinyTask` (one phase, L1) on the shared engine.
"""

from __future__ import annotations

from typing import Any

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sr_tile.imresize import imresize
from sr_tile.metrics import psnr_y
from sr_tile.models.descriptor import ModelDescriptor, Routing
from sr_tile.models.registry import ModelEntry
from sr_tile.runner import TileRunner
from sr_tile.tiler import TileWindow
from sr_tile.train.config import PhaseConfig, PhasesConfig
from sr_tile.train.engine import TrainTask


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


@dataclass(frozen=True)
class TinyPhases(PhasesConfig):
    main: PhaseConfig


class TinyTask(TrainTask):
    """One phase: every parameter, L1 against HR; validation = PSNR-Y of the val crops."""

    name = "tiny"
    phases = ("main",)
    phases_config = TinyPhases

    def param_groups(self, model, phase, config):
        return [{"params": list(model.parameters()), "lr": config.lr, "base_lr": config.lr}]

    def loss(self, model, phase, config, state, batch, step, generator, device):
        lr, hr = batch()
        return F.l1_loss(model(lr), hr)

    @torch.no_grad()
    def evaluate(self, model, val, device, state=None):
        sr = model(val.lr.float().div(255)).clamp(0, 1).mul(255).round().byte()
        scores = [psnr_y(s.permute(1, 2, 0).numpy(), h.permute(1, 2, 0).numpy(), val.scale)
                  for s, h in zip(sr, val.hr)]
        return {"psnr_y": round(float(np.mean(scores)), 4)}

    def format_val(self, result):
        return f"PSNR-Y {result['psnr_y']:.2f}"


_TASK = "tests.tiny_families:TinyTask"
ROWS = (
    ModelEntry("tiny-static", "tiny", "a test family: conv residual on bicubic",
               "tests.tiny_families:build_static", (2, 3), train=_TASK),
    ModelEntry("tiny-routed", "tiny", "a test family that skips flat tiles",
               "tests.tiny_families:build_routed", (2,), routing="tokens", train=_TASK),
)
