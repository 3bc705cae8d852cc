"""Training: typed configs, data, the engine, and the families ``sr-tile train`` knows.

``sr-tile upscale`` never imports this package. A family trains when its registry rows name
a training task (``sr_tile.train.engine.TrainTask``, in the family's package): its phases,
their typed config, its loss and evaluation, and its packaged configs (``configs/``).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from sr_tile.errors import UsageError
from sr_tile.train.config import (DataConfig, PhaseConfig, PhasesConfig, TrainConfig,
                                  load_config, scale_steps)
from sr_tile.train.engine import TrainingInterrupted, TrainTask, train_phase
from sr_tile.train.run import TrainResult, run_training

__all__ = [
    "DataConfig", "PhaseConfig", "PhasesConfig", "TrainConfig", "TrainResult", "TrainTask",
    "TrainingInterrupted", "default_config", "families", "get_family", "load_config",
    "run_training", "scale_steps", "train_phase",
]


def families() -> dict[str, Any]:
    """{family: its TrainTask}, for every family whose registry rows name one."""
    from sr_tile.models.registry import MODELS, training_task

    found: dict[str, Any] = {}
    for name, entry in MODELS.items():
        if entry.train is not None and entry.family not in found:
            found[entry.family] = training_task(name)
    return found


def get_family(name: str) -> Any:
    """The TrainTask of family ``name``; UsageError for a family that does not train."""
    known = families()
    try:
        return known[name]
    except KeyError:
        raise UsageError(f"unknown model family {name!r}; trainable families: "
                         f"{', '.join(sorted(known))}") from None


def default_config(family: str, backbone: str) -> Path:
    """The packaged config of ``family``'s ``backbone``."""
    task = get_family(family)
    if backbone not in task.configs:
        raise UsageError(f"unknown {family} backbone {backbone!r}; choose "
                         f"{', '.join(task.configs)}")
    return Path(str(resources.files("sr_tile.train") / "configs" / task.configs[backbone]))
