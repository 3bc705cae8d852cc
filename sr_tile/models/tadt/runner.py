"""TADT's runner: TARC picks the branches once per image (whole LR image and scale), then
every tile runs them; the books count the extractor and the upsampler apart."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from sr_tile.models.tadt.model import TADT
from sr_tile.routing import RoutingOptions
from sr_tile.runner import TileRunner, grid_coords
from sr_tile.tiler import TileConfig, TileWindow, to_float

ROUTE_CROP = 32  # TARC reads a large image as crops of its training size (lr_patch) ...
ROUTE_VIEW_PIXELS = 1 << 18  # ... spread evenly over it, at most this many pixels in all


def route_view(image: np.ndarray) -> torch.Tensor:
    """What TARC reads of an LR image (H, W, C): its colour as (n, 3, h, w) floats, at its own
    resolution. Up to ``ROUTE_VIEW_PIXELS`` the whole image (n = 1); past that, a grid of
    ``ROUTE_CROP`` px crops spread evenly over it. TARC pools its image features over all of
    them, and since its image branch ends in an average pool and a linear layer, that is the
    mean of what it would say of each crop, as it was trained. (A downscaled view would show
    it denser texture than any training crop had.)"""
    color = image[..., : 1 if image.shape[2] in (1, 2) else 3]
    view = to_float(color).expand(3, -1, -1)[None]
    h, w = view.shape[-2:]
    if h * w <= ROUTE_VIEW_PIXELS or min(h, w) < ROUTE_CROP:
        return view
    c = ROUTE_CROP
    count = ROUTE_VIEW_PIXELS // (c * c)
    rows = max(1, min(h // c, round((count * h / w) ** 0.5)))
    cols = max(1, min(w // c, count // rows))
    ys = np.linspace(0, h - c, rows).round().astype(int)
    xs = np.linspace(0, w - c, cols).round().astype(int)
    return torch.cat([view[..., y:y + c, x:x + c] for y in ys for x in xs])


class BranchRunner(TileRunner):
    """Runs TADT with the branches its controller picked for the image (``--static``: all)."""

    HANDOFF = ("route", "p")
    BOOKS = TileRunner.BOOKS + ("extractor", "extractor_static", "pixels")

    def __init__(self, model: TADT, *, device: torch.device, alpha: str,
                 routing: RoutingOptions | None = None) -> None:
        routing = routing or RoutingOptions()
        routing.refuse(f"{model.descriptor.name} picks its branches per image and scale "
                       "itself; --static runs them all")
        super().__init__(model, device=device, alpha=alpha)

    def reset(self) -> None:
        super().reset()
        self.route: torch.Tensor | None = None
        self.p: torch.Tensor | None = None
        self.extractor = self.extractor_static = 0
        self.pixels = 0

    def prepare(self, image: np.ndarray, tiling: TileConfig) -> None:
        """TARC on the whole LR image (or crops spread over it: :func:`route_view`)."""
        view = route_view(image)
        with torch.inference_mode():
            self.route, self.p = self.model.route(view.to(self.device), float(self.scale))
        self.route, self.p = self.route.cpu(), self.p.cpu()
        self.flops += self.model.tarc.flops(view[:, 0].numel())

    def run_rgb(self, x: torch.Tensor, windows: list[TileWindow], *,
                routed: bool) -> torch.Tensor:
        coords = grid_coords(windows, x.device)
        b, _, h, w = x.shape
        route = self.route if routed else None
        out = self.model(x, coords, route)
        extractor = self.model.extractor_flops(b, h, w, route)
        full = self.model.extractor_flops(b, h, w, None)
        upsampler = self.model.upsampler_flops(b * h * w, b * out.shape[-2] * out.shape[-1])
        self.extractor += extractor
        self.extractor_static += full
        self.pixels += b * h * w
        self.flops += extractor + upsampler
        self.flops_static += full + upsampler
        return out

    def extras(self) -> dict[str, Any]:
        if self.route is None:
            return {}
        return {"branches_on": int(self.route.sum()), "branches": int(self.route.numel()),
                "route": "".join("1" if v else "0" for v in self.route.tolist()),
                "extractor_flops_px": round(self.extractor / max(self.pixels, 1)),
                "extractor_pct": round(100.0 * self.extractor / max(self.extractor_static, 1), 2)}

    @staticmethod
    def describe(extras: dict[str, Any]) -> str:
        if "branches_on" not in extras:
            return ""
        text = f"branches {extras['branches_on']:.3g}/{extras['branches']:g}"  # (bench: means)
        if "extractor_pct" in extras:
            text += f", extractor {extras['extractor_pct']:.0f} %"
        return text
