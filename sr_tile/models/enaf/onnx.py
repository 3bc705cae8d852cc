"""ENAF in ONNX: the estimator, every trunk segment and every head, and (a backbone that routes
by cells) every path on cell windows, each its own graph, so that the router runs in Python on
ONNX Runtime's numbers exactly as it does on torch's."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sr_tile.deploy.onnx import ExportPart, OrtPart
from sr_tile.models.enaf.estimator import PSNREstimator, combine_psnr


class EstimatorCells(nn.Module):
    """(N, 3, h, w) -> (N, P, h // 4, w // 4): the estimator's linear layer on every 4x4
    cell's features, before any pooling. The layer is affine, so pooling its outputs equals
    pooling its inputs: every reading of the estimator (by sub-tiles, whole) comes from this
    one graph."""

    def __init__(self, estimator: PSNREstimator) -> None:
        super().__init__()
        self.estimator = estimator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.estimator
        return e.fc(e.features(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class OrtEstimator(OrtPart):
    """The estimator's readings (``forward``, ``psnr_map``) from its cells in ONNX Runtime."""

    def psnr_map(self, x: torch.Tensor, part: int) -> torch.Tensor:
        cells = F.avg_pool2d(self.run(x), part // 4)
        return PSNREstimator.from_gains(cells.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    def forward(self, x: torch.Tensor, part: int | None = None) -> torch.Tensor:
        if part is None:
            return PSNREstimator.from_gains(self.run(x).mean(dim=(2, 3)))
        return combine_psnr(self.psnr_map(x, part).flatten(2), dim=2)


def enaf_parts(model) -> list[ExportPart]:
    """The parts of an ``EnafSR``: ``estimator``, ``backbone.segments.<i>``,
    ``backbone.heads.<i>``, each traced on what it reads from a 32x32 LR patch."""
    backbone = model.backbone
    x = torch.rand(2, 3, 32, 32)
    parts = [ExportPart("estimator", EstimatorCells(model.estimator), x,
                        install=lambda m, p: setattr(m, "estimator",
                                                     OrtEstimator(p.reference, p.run)))]
    feats = [x]
    with torch.no_grad():
        for i, segment in enumerate(backbone.segments):
            parts.append(ExportPart(f"backbone.segments.{i}", segment, feats[-1]))
            feats.append(segment(feats[-1]))
    for i, (head, depth) in enumerate(zip(backbone.heads, backbone.attach)):
        parts.append(ExportPart(f"backbone.heads.{i}", head, feats[depth]))
    if backbone.runs_cells:  # each path on cell windows (``MultiExitSR.cell_path``)
        for path in range(1, backbone.num_paths):
            net = backbone.cell_path(path)
            lo, hi = net.halo
            parts.append(ExportPart(
                f"backbone.cells.{path}", net, torch.rand(2, 4, 32 + lo + hi, 32 + lo + hi),
                install=lambda m, p, path=path: m.backbone.set_cell_path(path, p)))
    return parts
