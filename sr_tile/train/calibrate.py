"""Calibrate a routed model's presets (L/M/S) on training images, never on val.

The presets trade PSNR for FLOPs like the paper's ENAF-L/M/S. A preset is the
largest eta (cheapest routing) whose mean PSNR-Y loss against the model's own
full network stays within its threshold on the calibration images. The etas go
into the weights file's metadata, where ``create_model`` reads them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from sr_tile.bench import BenchOptions, plan_rows, run_bench
from sr_tile.bench.datasets import Dataset, LRCache, image_files, scan_folder
from sr_tile.errors import ConfigError

THRESHOLDS_DB = {"L": 0.01, "M": 0.05, "S": 0.2}
ETA_GRID = (0.0, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
N_IMAGES = 6  # the smallest training images: varied content, cheap to sweep


def calibration_set(folder: str | Path, *, scale: int, n: int = N_IMAGES) -> Dataset:
    """The ``n`` smallest images of a training folder (fixed, reproducible choice)."""
    data = scan_folder(Path(folder), scale=scale)
    sizes = {s.hr_path: s.hr_path.stat().st_size for s in data.samples}
    from sr_tile.io import probe_size

    pixels = {p: probe_size(p)[0] * probe_size(p)[1] for p in sizes}
    chosen = sorted(data.samples, key=lambda s: (pixels[s.hr_path], s.name))[:n]
    return replace(data, name=f"{data.name} (calibration)", samples=chosen)


def calibrate(model: str, weights: str | Path, folder: str | Path, *, scale: int = 4,
              grid: tuple[float, ...] = ETA_GRID,
              thresholds: dict[str, float] = THRESHOLDS_DB,
              on_step: Callable[..., Any] | None = None) -> dict[str, Any]:
    """Sweep eta on the calibration images; return presets and the measured table."""
    if not image_files(Path(folder)):
        raise ConfigError(f"{folder}: no calibration images")
    data = calibration_set(folder, scale=scale)
    options = BenchOptions(scale=scale, repeat=1, warmup=False, sweep=grid,
                           weights={model: str(weights)})
    specs = [s for s in plan_rows([model], options) if s.kind in ("static", "sweep")]
    result = run_bench(data, specs, options, cache=LRCache(None), on_step=on_step)
    static = next(r for r in result.rows if r.spec.kind == "static").mean()["psnr_y"]
    table = []
    for row in result.rows:
        if row.spec.kind != "sweep":
            continue
        mean = row.mean()
        table.append({"eta": row.spec.routing.eta, "loss_db": static - mean["psnr_y"],
                      "flops_pct": mean["flops_pct"], "exits": mean["exits"]})
    table.sort(key=lambda r: r["eta"])
    presets = {}
    for name, limit in thresholds.items():
        ok = [r["eta"] for r in table if r["loss_db"] <= limit]
        presets[name] = max(ok) if ok else 0.0
    return {"presets": presets, "thresholds_db": thresholds, "table": table,
            "static_psnr_y": static, "images": [s.name for s in data.samples],
            "data": str(folder)}


def write_presets(weights: str | Path, calibration: dict[str, Any]) -> None:
    """Store the presets (and how they were found) in the weights file's metadata."""
    import json

    from sr_tile.models.checkpoint import read_metadata

    path = Path(weights)
    tensors = load_file(str(path))
    raw = {k: (v if isinstance(v, str) else json.dumps(v)) for k, v in read_metadata(path).items()}
    raw["presets"] = json.dumps(calibration["presets"])
    raw["calibration"] = json.dumps({k: v for k, v in calibration.items() if k != "presets"})
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata=raw)
    tmp.replace(path)
