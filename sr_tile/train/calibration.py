"""What every routed family's preset calibration shares: which training images it reads, the
loss thresholds of the presets, and how presets go into a weights file.

A preset (L/M/S) is the cheapest setting of a family's router whose PSNR-Y loss against the
same weights without routing stays within its threshold on the calibration images (on every
one where the family records each image's loss: ENAF), never on val. The family's
``finish`` step sweeps its own knob (ENAF: eta and gamma; AdaFormer:
eps_h) and stores the result with :func:`write_presets`, where ``create_model`` reads it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from safetensors.torch import load_file

from sr_tile.bench.datasets import Dataset, scan_folder
from sr_tile.errors import ConfigError
from sr_tile.io import probe_size
from sr_tile.models.checkpoint import read_metadata, save_safetensors

# M is the routing bar: at most 0.05 dB below the same weights without routing.
THRESHOLDS_DB = {"L": 0.02, "M": 0.05, "S": 0.3}
N_IMAGES = 6  # the smallest training images: varied content, cheap to sweep


def calibration_set(folder: str | Path, *, scale: int, n: int = N_IMAGES) -> Dataset:
    """The ``n`` smallest images of a training folder (fixed, reproducible choice)."""
    data = scan_folder(Path(folder), scale=scale)
    pixels = {s.hr_path: math.prod(probe_size(s.hr_path)) for s in data.samples}
    chosen = sorted(data.samples, key=lambda s: (pixels[s.hr_path], s.name))[:n]
    return replace(data, name=f"{data.name} (calibration)", samples=chosen)


def judged_loss(row: dict[str, Any]) -> float:
    """The loss a preset is held to: the worst image's (``worst_db``) where a family
    records it, so that a preset holds on every calibration image, not on their mean."""
    return row.get("worst_db", row["loss_db"])


def pick_presets(table: list[dict[str, Any]], keys: tuple[str, ...],
                 thresholds: dict[str, float] = THRESHOLDS_DB) -> dict[str, dict[str, Any]]:
    """Per preset, the fewest-FLOPs row of ``table`` (each with ``loss_db``, ``flops_pct``,
    maybe ``worst_db``, and the setting's ``keys``) within its loss threshold
    (:func:`judged_loss`); if none is, the most accurate."""
    presets = {}
    for name, limit in thresholds.items():
        ok = [r for r in table if judged_loss(r) <= limit]
        best = (min(ok, key=lambda r: r["flops_pct"]) if ok
                else min(table, key=judged_loss))
        presets[name] = {k: best[k] for k in keys}
    return presets


def unmet_caption(calibration: dict[str, Any]) -> str | None:
    """A line naming the presets that no setting meets (they take the most accurate one,
    see :func:`pick_presets`), for the calibration table; None when every preset holds."""
    limits = calibration["thresholds_db"]
    missed = [n for n, limit in limits.items()
              if all(judged_loss(r) > limit for r in calibration["table"])]
    if not missed:
        return None
    return ("no setting within " + ", ".join(f"{n}'s {limits[n]:g} dB" for n in missed)
            + ": " + ("it takes" if len(missed) == 1 else "they take") + " the most accurate one")


def write_presets(weights: str | Path, calibration: dict[str, Any]) -> None:
    """Store the presets (and how they were found) in the weights file's metadata."""
    path = Path(weights)
    tensors = load_file(str(path))
    raw = {k: (v if isinstance(v, str) else json.dumps(v)) for k, v in read_metadata(path).items()}
    raw["presets"] = json.dumps(calibration["presets"])
    raw.pop("router", None)  # a router belongs to the presets it was calibrated with
    if calibration.get("router") is not None:
        raw["router"] = json.dumps(calibration["router"])
    raw["calibration"] = json.dumps({k: v for k, v in calibration.items()
                                     if k not in ("presets", "router")})
    save_safetensors(tensors, path, raw)


def start(cfg: Any, weights: Path | None, console: Any
          ) -> tuple[Path, Callable[..., Any], Callable[[str, int, int], Any]]:
    """A family's ``finish`` step begins the same way: the weights file it calibrates (the
    run's export unless given; it must exist), a ``say`` that prints to ``console`` (or
    nowhere) and an ``on_image(name, k, n)`` progress line."""
    from rich.markup import escape

    path = Path(weights or cfg.export_path)
    if not path.is_file():
        raise ConfigError(f"{path}: no weights to calibrate; train first")
    say = console.print if console is not None else (lambda *a, **k: None)
    say(f"calibrating presets of {escape(str(path))} on {escape(cfg.data.train_dir)}",
        highlight=False)
    return path, say, lambda name, k, n: say(f"calibration image {k}/{n} {escape(name)}",
                                             highlight=False)
