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
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sr_tile.bench.datasets import Dataset, LRCache, image_files, load_pair, scan_folder
from sr_tile.errors import ConfigError
from sr_tile.metrics import psnr_y, squared_error_y
from sr_tile.models.enaf import EnafSR, texture
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
#: the texture router's eta is image dB per unit of mean cost: the presets lie near 0.01-0.1
TEXTURE_ETA_GRID = (*(k / 400 for k in range(21)), *(k / 100 for k in range(6, 21)),
                    0.25, 0.3, 0.4, 0.5, 0.75, 1.0)
#: training images that the texture router is neither fitted nor calibrated on, so that its
#: presets can be checked on photos it never saw (names absent from the folder are ignored)
HELD_OUT = ("Altai", "Blinds", "Garden")


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
            self._estimates = (self._u, self._blank, self._stats, self._grid)
        else:
            self.flops += self._estimator_flops
            self._u, self._blank, self._stats, self._grid = self._estimates
            eta, gamma = self.setting
            self._losses = self.path_losses(gamma)
            if self.cells:  # the setting's path of every cell, once per image
                self.paths = fuse(self._losses, self.model.costs(CELL, CELL),
                                  eta=eta).tolist()

    def run_rgb(self, x: torch.Tensor, windows: list[TileWindow], *,
                routed: bool) -> torch.Tensor:
        n, (h, w) = x.shape[0], x.shape[-2:]
        costs = self.model.backbone.path_flops(h, w)
        self.flops_static += costs[-1] * n
        if self.cells:
            return self._cells(x, windows)
        if self.setting is None:
            outs = self.model.backbone.path_outputs(x, range(self.model.num_paths))
            self.recorded.append(([w.index for w in windows],
                                  torch.stack([outs[p] for p in sorted(outs)])))
            self.flops += costs[-1] * n
            return outs[self.model.num_paths - 1]
        indices, outs = self.recorded[self._replayed]
        self._replayed += 1
        paths = fuse(self.take_losses(indices), self.model.costs(h, w), eta=self.setting[0])
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


def texture_set(folder: str | Path, *, scale: int) -> Dataset:
    """What the texture router is fitted and calibrated on: every training image but
    ``HELD_OUT``."""
    data = scan_folder(Path(folder), scale=scale)
    return replace(data, name=f"{data.name} (texture router)",
                   samples=[s for s in data.samples if s.name not in HELD_OUT])


def measure_cells(up: Upscaler, data: Dataset, *, scale: int,
                  on_image: Callable[[str, int, int], Any] | None = None
                  ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """What the texture router of ``up``'s model (cells) is fitted on, per image of ``data``:
    the cells' texture statistics, and each cell's MSE-Y against HR (the pixels ``psnr_y``
    reads) of every path less the full network's, from every path run once on the image."""
    model, measured = up.model, []
    for index, sample in enumerate(data.samples, 1):
        if on_image is not None:
            on_image(f"{sample.name} (every path, for the router)", index, len(data.samples))
        pair = load_pair(sample, scale, LRCache(None))
        sums = []
        for path in range(model.num_paths):
            up.runner = ExitRunner(model, device=up.device, alpha="bicubic",
                                   routing=RoutingOptions(path=path))
            error = squared_error_y(up.upscale_whole(pair.lr), pair.hr, scale)
            rows, cols = up.runner._grid
            sums.append(_cell_sums(error, rows, cols, scale))
        sums = torch.stack(sums, dim=1)  # (cells, paths): sums of squared errors
        pixels = _cell_pixels(rows, cols, scale, error.shape)[:, None]
        measured.append((texture.patch_statistics(pair.lr, rows, cols),
                         (sums[:, :-1] - sums[:, -1:]) / pixels))
    return measured


def fit_router(measured: list[tuple[torch.Tensor, torch.Tensor]], names: list[str]
               ) -> dict[str, Any]:
    """The texture router fitted on ``measure_cells``' images (``names``)."""
    return {"kind": texture.KIND, "features": list(texture.FEATURES),
            "coef": texture.fit(torch.cat([m[0] for m in measured]),
                                torch.cat([m[1] for m in measured])),
            "fitted_on": names}


def cross_fitted(measured: list[tuple[torch.Tensor, torch.Tensor]], names: list[str]
                 ) -> list[dict[str, Any]]:
    """For each image, the router fitted on the other half of the images (alternate ones),
    so that the sweep measures each image as an unseen one (an in-sample sweep flatters the
    fit; for FSRCNN x4 it put M at eta 0.0325 where this one found 0.035)."""
    folds = []
    for k in (0, 1):
        other = [i for i in range(len(names)) if i % 2 != k] or list(range(len(names)))
        folds.append(fit_router([measured[i] for i in other], [names[i] for i in other]))
    return [folds[i % 2] for i in range(len(names))]


def _cell_index(rows: list[tuple[int, int]], cols: list[tuple[int, int]], scale: int,
                shape: tuple[int, int]) -> np.ndarray:
    """The row-major cell of every pixel of a ``psnr_y`` error map (HR, ``scale`` px cropped
    at each border)."""
    def axis(spans: list[tuple[int, int]], length: int) -> np.ndarray:
        ids = np.repeat(np.arange(len(spans)), [(b - a) * scale for a, b in spans])
        return ids[scale:scale + length]
    return (axis(rows, shape[0])[:, None] * len(cols) + axis(cols, shape[1])[None, :]).ravel()


def _cell_sums(error: np.ndarray, rows: list, cols: list, scale: int) -> torch.Tensor:
    return torch.from_numpy(np.bincount(_cell_index(rows, cols, scale, error.shape),
                                        weights=error.ravel(), minlength=len(rows) * len(cols)))


def _cell_pixels(rows: list, cols: list, scale: int, shape: tuple[int, int]) -> torch.Tensor:
    counts = np.bincount(_cell_index(rows, cols, scale, shape), minlength=len(rows) * len(cols))
    return torch.from_numpy(np.maximum(counts, 1)).double()


def calibrate(model: str, weights: str | Path, folder: str | Path, *, scale: int = 4,
              grid: tuple[float, ...] | None = None, gammas: tuple[float, ...] = GAMMA_GRID,
              thresholds: dict[str, float] = THRESHOLDS_DB,
              on_image: Callable[[str, int, int], Any] | None = None,
              texture_router: bool | None = None) -> dict[str, Any]:
    """Sweep (gamma, eta) on the calibration images; return presets and the measured table.

    A preset is the cheapest (fewest FLOPs) setting whose loss on every image is within its
    threshold; if none is, the most accurate setting measured. ``on_image(name, index,
    total)`` before each image.

    ``texture_router`` (default: when the backbone routes by cells): fit the texture router
    on every training image but ``HELD_OUT`` (``fit_router``), and sweep its eta
    (``TEXTURE_ETA_GRID``; gamma 0) on the same images, each with a router fitted on the
    other half (``cross_fitted``); else the paper's fusion on the 6 smallest training images
    (``calibration_set``, ``ETA_GRID`` x ``gammas``).
    """
    if not image_files(Path(folder)):
        raise ConfigError(f"{folder}: no calibration images")
    up = Upscaler(UpscaleOptions(scale=scale, model=model, weights=str(weights),
                                 max_pixels=None))
    if texture_router is None:
        texture_router = up.model.backbone.runs_cells
    up.model.router = None
    router = None
    routers: list[dict[str, Any]] = []  # the texture router each image is swept with
    if texture_router:
        data = texture_set(folder, scale=scale)
        names = [s.name for s in data.samples]
        measured = measure_cells(up, data, scale=scale, on_image=on_image)
        router, routers = fit_router(measured, names), cross_fitted(measured, names)
        up.model.router = routers[0]
        grid, gammas = grid or TEXTURE_ETA_GRID, (0.0,)
    else:
        data = calibration_set(folder, scale=scale)
        grid = grid or ETA_GRID
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
        if routers:
            up.model.router = routers[index - 1]
        for setting in [None, *settings]:  # None first: it records what the others replay
            runner.setting = setting
            psnrs[setting].append(psnr_y(up.upscale_whole(pair.lr), pair.hr, scale))
            if setting is None:
                static_flops += runner.flops_static
            else:
                flops[setting] += runner.flops
                paths[setting] += runner.paths
    up.model.router = router
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
    return {"presets": pick_presets(table, ("eta", "gamma"), thresholds),
            "thresholds_db": thresholds, "table": table, "router": router,
            "static_psnr_y": static, "images": [s.name for s in data.samples],
            "data": str(folder)}
