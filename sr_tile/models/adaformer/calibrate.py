"""AdaFormer's presets: eps_h per preset, calibrated on training images (never val).

Each image of the calibration set runs once dense (the same weights and tiles, no halting) and
once per eps of the grid; a preset is the largest-saving eps whose mean PSNR-Y loss against
dense stays within its threshold (``sr_tile.train.calibration``).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from sr_tile.bench.datasets import LRCache, load_pair
from sr_tile.metrics import psnr_y
from sr_tile.train.calibration import THRESHOLDS_DB, calibration_set, pick_presets
from sr_tile.upscale import UpscaleOptions, Upscaler

EPS_GRID = (0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5)


def calibrate(model: str, weights: str | Path, folder: str | Path, *, scale: int = 4,
              grid: tuple[float, ...] = EPS_GRID,
              thresholds: dict[str, float] = THRESHOLDS_DB,
              on_image: Callable[[str, int, int], Any] | None = None) -> dict[str, Any]:
    """Sweep eps on the calibration images; return the presets and the measured table."""
    data = calibration_set(folder, scale=scale)
    halting = Upscaler(UpscaleOptions(scale=scale, model=model, weights=str(weights),
                                      max_pixels=None))
    dense = Upscaler(replace(halting.options, static=True,
                             tile=halting.descriptor.default_tile))  # the same tiles
    runner = halting.runner
    base: list[float] = []
    psnrs: dict[float, list[float]] = {eps: [] for eps in grid}
    flops = dict.fromkeys(grid, 0)
    halted: dict[float, list[float]] = {eps: [] for eps in grid}
    static = 0
    for index, sample in enumerate(data.samples, 1):
        if on_image is not None:
            on_image(sample.name, index, len(data.samples))
        pair = load_pair(sample, scale, LRCache(None))
        base.append(psnr_y(dense.upscale_whole(pair.lr), pair.hr, scale))
        for eps in grid:
            runner.eps = eps
            psnrs[eps].append(psnr_y(halting.upscale_whole(pair.lr), pair.hr, scale))
            flops[eps] += runner.flops
            halted[eps].append(runner.halted()[0][-1])
        static += runner.flops_static
    mean_dense = statistics.fmean(base)
    table = [{"eps": eps, "loss_db": mean_dense - statistics.fmean(psnrs[eps]),
              "flops_pct": 100.0 * flops[eps] / static,
              "halted_last": statistics.fmean(halted[eps])} for eps in grid]
    return {"presets": pick_presets(table, ("eps",), thresholds), "thresholds_db": thresholds,
            "table": table, "dense_psnr_y": mean_dense,
            "images": [s.name for s in data.samples], "data": str(folder)}
