"""Training: typed configs, data, the phase loop and the families ``sr-tile train`` knows.

``sr-tile upscale`` never imports this package. A family is one row of :data:`FAMILIES`:
its backbones (each with a packaged YAML config in ``configs/``), its phases, how a config
file is loaded and how a run is started.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from sr_tile.errors import UsageError
from sr_tile.train.config import (PHASES, DataConfig, PhaseConfig, PhasesConfig, TrainConfig,
                                  load_config, scale_steps)
from sr_tile.train.engine import TrainingInterrupted, TrainTask, train_phase
from sr_tile.train.run import TrainResult, run_training

__all__ = [
    "FAMILIES", "PHASES", "DataConfig", "PhaseConfig", "PhasesConfig", "TrainConfig",
    "TrainFamily", "TrainResult", "TrainTask", "TrainingInterrupted", "default_config",
    "get_family", "load_config", "run_training", "scale_steps", "train_phase",
]


@dataclass(frozen=True)
class TrainFamily:
    """How ``sr-tile train <family>`` trains one model family."""

    name: str
    summary: str
    backbones: Mapping[str, str]  # --backbone value -> packaged config file in configs/
    phases: tuple[str, ...]
    load: Callable[..., Any]  # (path, overrides, values=...) -> config
    run: Callable[..., Any]  # (config, phases=, resume=, console=, command=) -> result


FAMILIES: dict[str, TrainFamily] = {
    "enaf": TrainFamily(
        name="enaf",
        summary="ENAF multi-exit CNNs: backbone, exit heads, PSNR estimator (3 phases)",
        backbones={"fsrcnn": "enaf_fsrcnn.yaml", "carn": "enaf_carn.yaml",
                   "srresnet": "enaf_srresnet.yaml"},
        phases=PHASES,
        load=load_config,
        run=run_training,
    ),
}


def get_family(name: str) -> TrainFamily:
    try:
        return FAMILIES[name]
    except KeyError:
        raise UsageError(f"unknown model family {name!r}; trainable families: "
                          f"{', '.join(sorted(FAMILIES))}") from None


def default_config(family: str, backbone: str) -> Path:
    """The packaged config of ``family``'s ``backbone``."""
    fam = get_family(family)
    if backbone not in fam.backbones:
        raise UsageError(f"unknown {family} backbone {backbone!r}; choose "
                          f"{', '.join(fam.backbones)}")
    return Path(str(resources.files("sr_tile.train") / "configs" / fam.backbones[backbone]))
