"""Calibrate a routed model's presets (L/M/S) on training images, never on val.

The presets trade PSNR for FLOPs like the paper's ENAF-L/M/S. A preset is the
largest eta (cheapest routing) whose mean PSNR-Y loss against the model's own
full network stays within its threshold on the calibration images. The etas go
into the weights file's metadata, where ``create_model`` reads them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from sr_tile.bench import BenchOptions, plan_rows, run_bench
from sr_tile.bench.datasets import Dataset, LRCache, image_files, scan_folder
from sr_tile.errors import ConfigError
from sr_tile.io import probe_size
from sr_tile.models.checkpoint import read_metadata
from sr_tile.routing import RoutingOptions

THRESHOLDS_DB = {"L": 0.02, "M": 0.1, "S": 0.3}
ETA_GRID = (0.0, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
GAMMA_GRID = (0.0, 0.5, 1.0)
N_IMAGES = 6  # the smallest training images: varied content, cheap to sweep


def calibration_set(folder: str | Path, *, scale: int, n: int = N_IMAGES) -> Dataset:
    """The ``n`` smallest images of a training folder (fixed, reproducible choice)."""
    data = scan_folder(Path(folder), scale=scale)
    pixels = {s.hr_path: math.prod(probe_size(s.hr_path)) for s in data.samples}
    chosen = sorted(data.samples, key=lambda s: (pixels[s.hr_path], s.name))[:n]
    return replace(data, name=f"{data.name} (calibration)", samples=chosen)


def calibrate(model: str, weights: str | Path, folder: str | Path, *, scale: int = 4,
              grid: tuple[float, ...] = ETA_GRID, gammas: tuple[float, ...] = GAMMA_GRID,
              thresholds: dict[str, float] = THRESHOLDS_DB,
              on_step: Callable[..., Any] | None = None) -> dict[str, Any]:
    """Sweep (gamma, eta) on the calibration images; return presets and the measured table.

    A preset is the cheapest (fewest FLOPs) setting within its PSNR-loss threshold; if none
    is, the most accurate setting measured.
    """
    if not image_files(Path(folder)):
        raise ConfigError(f"{folder}: no calibration images")
    data = calibration_set(folder, scale=scale)
    table = []
    static = None
    for gamma in gammas:
        options = BenchOptions(scale=scale, repeat=1, warmup=False, sweep=grid,
                               weights={model: str(weights)},
                               routing=RoutingOptions(gamma=gamma))
        keep = ("static", "sweep") if static is None else ("sweep",)
        specs = [s for s in plan_rows([model], options) if s.kind in keep]
        result = run_bench(data, specs, options, cache=LRCache(None), on_step=on_step)
        for row in result.rows:
            mean = row.mean()
            if row.spec.kind == "static":
                static = mean["psnr_y"]
                continue
            table.append({"eta": row.spec.routing.eta, "gamma": gamma, "psnr_y": mean["psnr_y"],
                          "flops_pct": mean["flops_pct"], "exits": mean["exits"]})
    for row in table:
        row["loss_db"] = static - row.pop("psnr_y")
    table.sort(key=lambda r: (r["gamma"], r["eta"]))
    presets = {}
    for name, limit in thresholds.items():
        ok = [r for r in table if r["loss_db"] <= limit]
        best = min(ok, key=lambda r: r["flops_pct"]) if ok else min(table,
                                                                    key=lambda r: r["loss_db"])
        presets[name] = {"eta": best["eta"], "gamma": best["gamma"]}
    return {"presets": presets, "thresholds_db": thresholds, "table": table,
            "static_psnr_y": static, "images": [s.name for s in data.samples],
            "data": str(folder)}


def write_presets(weights: str | Path, calibration: dict[str, Any]) -> None:
    """Store the presets (and how they were found) in the weights file's metadata."""
    path = Path(weights)
    tensors = load_file(str(path))
    raw = {k: (v if isinstance(v, str) else json.dumps(v)) for k, v in read_metadata(path).items()}
    raw["presets"] = json.dumps(calibration["presets"])
    raw["calibration"] = json.dumps({k: v for k, v in calibration.items() if k != "presets"})
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata=raw)
    tmp.replace(path)
