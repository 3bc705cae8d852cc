"""Calibrate a routed model's presets (L/M/S) on training images, never on val.

The presets trade PSNR for FLOPs like the paper's ENAF-L/M/S. A preset is the
largest eta (cheapest routing) whose mean PSNR-Y loss against the model's own
full network stays within its threshold on the calibration images. The etas go
into the weights file's metadata, where ``create_model`` reads them.

The sweep runs every path of every tile once per image and replays each (gamma, eta) from
those outputs (``SweepRunner``): the same images and FLOPs as routed runs, for about one
full-network pass per image instead of one routed run per setting.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sr_tile.bench.datasets import LRCache, image_files, load_pair
from sr_tile.errors import ConfigError
from sr_tile.metrics import psnr_y
from sr_tile.models.enaf import EnafSR
from sr_tile.models.enaf.routing import fuse
from sr_tile.models.enaf.runner import CELL, ExitRunner
from sr_tile.routing import RoutingOptions
from sr_tile.tiler import TileConfig, TileWindow
from sr_tile.train.calibration import THRESHOLDS_DB, calibration_set, pick_presets, write_presets
from sr_tile.upscale import UpscaleOptions, Upscaler

__all__ = ["ETA_GRID", "GAMMA_GRID", "SweepRunner", "calibrate", "write_presets"]

# Replaying a setting costs only the stitching, so the grid can be fine: the cost of a preset
# can jump between neighbouring etas (CARN-M: 86 % -> 59 % of the FLOPs from eta 0.3 to 0.5).
ETA_GRID = (*(k / 20 for k in range(21)), 1.25, 1.5, 2.0, 3.0, 4.0, 6.0)
GAMMA_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)


class SweepRunner(ExitRunner):
    """ENAF's runner for a sweep: every path of every tile runs once, then any (eta, gamma) is
    replayed from memory.

    With ``setting`` None (record) a pass runs the estimator and all paths (trunk shared) and
    keeps them, and outputs the full network: the static result. With ``setting`` (eta, gamma)
    the next pass over the same image runs no network: each batch takes the recorded outputs of
    the paths ``fuse`` picks, and the FLOPs are tallied as ``ExitRunner`` does (paths taken +
    estimator), so the image and the numbers equal a routed run's. A sweep of S settings costs
    about one full-network pass per image instead of S routed runs.
    """

    def __init__(self, model: EnafSR, *, device: torch.device) -> None:
        super().__init__(model, device=device, alpha="bicubic",
                         routing=RoutingOptions(eta=0.0, gamma=1.0))  # gamma != 0: test blanks
        self.setting: tuple[float, float] | None = None
        self.recorded: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._replayed = 0
        self._estimator_flops = 0
        self._estimates: tuple = ()  # the record pass's, for the replays (``reset`` clears them)

    def prepare(self, image: np.ndarray, tiling: TileConfig) -> None:
        self._replayed = 0
        if self.setting is None:
            self.recorded.clear()
            super().prepare(image, tiling)
            self._estimator_flops = self.flops
            self._estimates = (self._u, self._blank, self._grid)
        else:
            self.flops += self._estimator_flops
            self._u, self._blank, self._grid = self._estimates
            if self.cells:  # the setting's path of every cell, once per image
                eta, gamma = self.setting
                self.paths = fuse(self._u, self._blank, self.model.costs(CELL, CELL),
                                  eta=eta, gamma=gamma).tolist()

    def run_rgb(self, x: torch.Tensor, windows: list[TileWindow], *,
                routed: bool) -> torch.Tensor:
        n, (h, w) = x.shape[0], x.shape[-2:]
        costs = self.model.backbone.path_flops(h, w)
        self.flops_static += costs[-1] * n
        if self.cells:
            return self._cells(x, windows)
        if self.setting is None:
            u, blank = self.take_estimates([w.index for w in windows])
            outs = self.model.backbone.path_outputs(x, range(self.model.num_paths))
            self.recorded.append((u, blank, torch.stack([outs[p] for p in sorted(outs)])))
            self.flops += costs[-1] * n
            return outs[self.model.num_paths - 1]
        u, blank, outs = self.recorded[self._replayed]
        self._replayed += 1
        eta, gamma = self.setting
        paths = fuse(u, blank, self.model.costs(h, w), eta=eta, gamma=gamma)
        chosen = paths.tolist()
        self.record_paths(windows, chosen)
        self.flops += sum(costs[p] for p in chosen)
        return outs[paths, torch.arange(n)]


    def _cells(self, x: torch.Tensor, windows: list[TileWindow]) -> torch.Tensor:
        """``run_rgb`` for a backbone that routes by cells: record each path on every cell
        of the batch; replay the cells' paths of a setting from those, with the FLOPs of
        the runs ``ExitRunner.run_cells`` would make."""
        if self.setting is None:
            pieces = self.cell_pieces(x, windows)
            outs = [self.run_cells(x, windows, self.cell_runs(pieces, [p] * len(pieces)))
                    for p in range(self.model.num_paths)]
            self.recorded.append((pieces, torch.stack(outs)))
            return outs[-1]
        pieces, outs = self.recorded[self._replayed]
        self._replayed += 1
        chosen = [self.paths[p.cell] for p in pieces]
        self.flops += self.runs_flops(self.cell_runs(pieces, chosen))
        out = outs[0].clone()
        s = int(self.scale)
        for p, path in zip(pieces, chosen):
            if path:
                where = (p.b, slice(None), slice(p.y * s, (p.y + p.h) * s),
                         slice(p.x * s, (p.x + p.w) * s))
                out[where] = outs[path][where]
        return out


def calibrate(model: str, weights: str | Path, folder: str | Path, *, scale: int = 4,
              grid: tuple[float, ...] = ETA_GRID, gammas: tuple[float, ...] = GAMMA_GRID,
              thresholds: dict[str, float] = THRESHOLDS_DB,
              on_image: Callable[[str, int, int], Any] | None = None) -> dict[str, Any]:
    """Sweep (gamma, eta) on the calibration images; return presets and the measured table.

    A preset is the cheapest (fewest FLOPs) setting whose loss on every image is within its
    threshold; if none is, the most accurate setting measured. ``on_image(name, index,
    total)`` before each image.
    """
    if not image_files(Path(folder)):
        raise ConfigError(f"{folder}: no calibration images")
    data = calibration_set(folder, scale=scale)
    up = Upscaler(UpscaleOptions(scale=scale, model=model, weights=str(weights),
                                 max_pixels=None))
    runner = up.runner = SweepRunner(up.model, device=up.device)
    settings = [(eta, gamma) for gamma in gammas for eta in grid]
    psnrs: dict[tuple[float, float] | None, list[float]] = {k: [] for k in [None, *settings]}
    flops = dict.fromkeys(settings, 0)
    paths: dict[tuple[float, float], list[int]] = {k: [] for k in settings}
    static_flops = 0
    for index, sample in enumerate(data.samples, 1):
        if on_image is not None:
            on_image(sample.name, index, len(data.samples))
        pair = load_pair(sample, scale, LRCache(None))
        for setting in [None, *settings]:  # None first: it records what the others replay
            runner.setting = setting
            psnrs[setting].append(psnr_y(up.upscale_whole(pair.lr), pair.hr, scale))
            if setting is None:
                static_flops += runner.flops_static
            else:
                flops[setting] += runner.flops
                paths[setting] += runner.paths
    static = statistics.fmean(psnrs[None])
    table = []
    for eta, gamma in settings:
        taken = paths[(eta, gamma)]
        losses = [a - b for a, b in zip(psnrs[None], psnrs[(eta, gamma)])]
        table.append({
            "eta": eta, "gamma": gamma,
            "loss_db": statistics.fmean(losses), "worst_db": max(losses),
            "flops_pct": 100.0 * flops[(eta, gamma)] / static_flops,
            "exits": {name: taken.count(j) / len(taken)
                      for j, name in enumerate(ExitRunner.PATH_NAMES)},
        })
    return {"presets": pick_presets(table, ("eta", "gamma"), thresholds), "thresholds_db": thresholds, "table": table,
            "static_psnr_y": static, "images": [s.name for s in data.samples],
            "data": str(folder)}
