"""The one place that lists sr-tile's models, by hand.

The CLI, training, bench and export all resolve a model name here, through
:func:`create_model`; nothing else imports architecture modules directly.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from torch import nn

from sr_tile.errors import ConfigError, UsageError
from sr_tile.models import enaf_carn, enaf_fsrcnn, enaf_srresnet
from sr_tile.models.bicubic import Bicubic
from sr_tile.models.checkpoint import load_weights
from sr_tile.models.enaf import enaf_factory


@dataclass(frozen=True)
class ModelEntry:
    """A registry row: how to build a model and which shipped weights it loads."""

    name: str
    summary: str
    factory: Callable[..., nn.Module]
    scales: tuple[int, ...]
    weights: dict[int, str] = field(default_factory=dict)  # scale -> file in weights/
    routing: str = "none"


MODELS: dict[str, ModelEntry] = {
    entry.name: entry
    for entry in (
        ModelEntry(
            name="bicubic",
            summary="MATLAB-style bicubic interpolation: the baseline every model is read against",
            factory=Bicubic,
            scales=(2, 3, 4, 8),
        ),
        *(
            ModelEntry(
                name=module.NAME,
                summary=f"ENAF multi-exit {label}: bicubic path, 2 early exits, full network; "
                "a PSNR estimator picks one per 32x32 patch",
                factory=enaf_factory(module.build),
                scales=module.SCALES,
                weights={4: f"{module.NAME}-x4.safetensors"},
                routing="exits",
            )
            for module, label in (
                (enaf_fsrcnn, "FSRCNN"),
                (enaf_carn, "CARN-M"),
                (enaf_srresnet, "SRResNet"),
            )
        ),
    )
}

DEFAULT_MODEL = "enaf-fsrcnn"


def get_entry(name: str) -> ModelEntry:
    try:
        return MODELS[name]
    except KeyError:
        known = ", ".join(sorted(MODELS))
        raise UsageError(f"unknown model {name!r}; known models: {known}") from None


def weights_dir() -> Path:
    """Where shipped weights live: $SR_TILE_WEIGHTS, else the installed package data."""
    env = os.environ.get("SR_TILE_WEIGHTS")
    if env:
        return Path(env)
    return Path(str(resources.files("sr_tile.weights")))


def shipped_weights(name: str, scale: int) -> Path | None:
    """The shipped weights file of (name, scale), if one is installed."""
    filename = get_entry(name).weights.get(scale)
    if filename is None:
        return None
    path = weights_dir() / filename
    return path if path.is_file() else None


def create_model(
    name: str, *, scale: int = 4, weights: bool | str | Path = True
) -> nn.Module:
    """Build model `name` for `scale`; the single factory every command uses.

    ``weights``: True loads the shipped file (an error if the model needs
    weights and none ship for this scale), False builds it untrained (training),
    a path loads that file. The module is returned in eval mode and carries a
    ``descriptor``; presets calibrated at training time are read from the file.
    """
    entry = get_entry(name)
    if scale not in entry.scales:
        supported = ", ".join(f"x{s}" for s in entry.scales)
        raise UsageError(f"model {name} supports {supported}, not x{scale}")
    model = entry.factory(scale=scale)
    needs_weights = any(True for _ in model.parameters())
    if weights is True and needs_weights:
        path = shipped_weights(name, scale)
        if path is None:
            raise ConfigError(
                f"no weights for {name} x{scale} are installed; pass --weights FILE "
                f"or train them with 'sr-tile train'"
            )
        weights = path
    if isinstance(weights, (str, Path)):
        meta = load_weights(model, weights, name=name, scale=scale)
        if "presets" in meta and hasattr(model, "presets"):
            model.presets = {k.upper(): v for k, v in meta["presets"].items()}
    return model.eval()
