"""The one place that lists sr-tile's models, by hand.

The CLI, training, bench and export all resolve a model name here, through
:func:`create_model`; nothing else imports architecture modules directly. A row is plain
data (its builder is named, not imported), so listing models or parsing options never
imports torch: ``sr-tile --help`` and ``sr-tile models`` start in a fraction of a second.
A new family is a package under ``sr_tile.models`` plus its rows here.
"""

from __future__ import annotations

import importlib
import math
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sr_tile.errors import ConfigError, UsageError

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class ModelEntry:
    """A registry row: which family builds the model, how, and which weights it loads.

    ``build`` is ``"module:function"``, called as ``function(scale=..., **kwargs)``.
    """

    name: str
    family: str
    summary: str
    build: str
    scales: tuple[int, ...]  # integer scales it is built for
    weights: dict[int, str] = field(default_factory=dict)  # scale (ANY_SCALE: all) -> file
    routing: str = "none"
    kwargs: dict[str, Any] = field(default_factory=dict)
    scale_range: tuple[float, float] | None = None  # (low, high]: any scale in it as well
    train: str | None = None  # "module:Class" of the family's TrainTask, if it trains
    learned: bool = True  # has weights to load (False: an interpolation like bicubic)

    def describe_scales(self) -> str:
        ints = ", ".join(f"x{s}" for s in self.scales)
        if self.scale_range is None:
            return ints
        low, high = self.scale_range
        return f"any scale in ({low:g}, {high:g}]" + (f" ({ints} exact)" if ints else "")

    def resolve_scale(self, scale: float) -> int | float:
        """``scale`` as this model is built for it (an int when it is one); UsageError when
        the model cannot do it."""
        if not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 1:
            raise UsageError(f"--scale must be a number greater than 1, not {scale!r}")
        if scale > MAX_SCALE:
            raise UsageError(f"--scale {scale:g} is more than sr-tile's limit of {MAX_SCALE}")
        if float(scale).is_integer() and int(scale) in self.scales:
            return int(scale)
        if self.scale_range is not None and self.scale_range[0] < scale <= self.scale_range[1]:
            return int(scale) if float(scale).is_integer() else float(scale)
        raise UsageError(f"model {self.name} supports {self.describe_scales()}, "
                         f"not x{scale:g}")

    def builder(self) -> Any:
        return _load(self.build)


def _load(target: str) -> Any:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


ANY_SCALE = 0  # a ``weights`` key: the file serves every scale (a model sampling any grid)
MAX_SCALE = 32  # a larger factor is a typo, not a request (TADT is asked up to x30)

_ENAF_TASK = "sr_tile.models.enaf.training:EnafTask"
_ENAF = ("ENAF multi-exit {}: bicubic path, 2 early exits, full network; a PSNR estimator "
         "picks one per 32x32 patch")
_ADAFORMER_TASK = "sr_tile.models.adaformer.training:AdaFormerTask"
_ADAFORMER = ("AdaFormer{}: conv encoder, 6 attention blocks (8x8 windows + 16 global "
              "prototypes) that halt tokens and windows once a confidence estimator says they "
              "are restored, conv decoder")
_TADT_TASK = "sr_tile.models.tadt.training:TADTTask"
_TADT = ("TADT{}: arbitrary scale; a controller picks the attention branches of a multi-scale "
         "transformer per image and scale, a LIIF upsampler reads any output grid")
_IET_TASK = "sr_tile.models.iet.training:IETTask"
_IET = ("IET{}: each token attends to its own content-adaptive candidates (dense-local "
        "sparse-global start, top-k pruning, two-hop expansion)")

MODELS: dict[str, ModelEntry] = {
    entry.name: entry
    for entry in (
        ModelEntry("bicubic", "bicubic", "MATLAB-style bicubic interpolation: the baseline every "
                   "model is read against", "sr_tile.models.bicubic:Bicubic", (2, 3, 4, 8),
                   scale_range=(1.0, MAX_SCALE), learned=False),
        ModelEntry("enaf-fsrcnn", "enaf", _ENAF.format("FSRCNN"), "sr_tile.models.enaf:build",
                   (2, 3, 4), {2: "enaf-fsrcnn-x2.safetensors", 3: "enaf-fsrcnn-x3.safetensors",
                    4: "enaf-fsrcnn-x4.safetensors"},
                   "exits", {"backbone": "fsrcnn"}, train=_ENAF_TASK),
        ModelEntry("enaf-carn", "enaf", _ENAF.format("CARN-M"), "sr_tile.models.enaf:build",
                   (2, 3, 4), {4: "enaf-carn-x4.safetensors"}, "exits", {"backbone": "carn"},
                   train=_ENAF_TASK),
        ModelEntry("enaf-srresnet", "enaf", _ENAF.format("SRResNet"), "sr_tile.models.enaf:build",
                   (2, 3, 4), {4: "enaf-srresnet-x4.safetensors"}, "exits",
                   {"backbone": "srresnet"}, train=_ENAF_TASK),
        ModelEntry("adaformer", "adaformer", _ADAFORMER.format(" (paper size, C = D = 64)"),
                   "sr_tile.models.adaformer:build", (2, 3, 4), {}, "tokens",
                   {"variant": "adaformer"}, train=_ADAFORMER_TASK),
        ModelEntry("adaformer-light", "adaformer",
                   _ADAFORMER.format("-light (C = D = 48, 2 + 2 residual blocks)"),
                   "sr_tile.models.adaformer:build", (2, 3, 4),
                   {4: "adaformer-light-x4.safetensors"}, "tokens",
                   {"variant": "adaformer-light"}, train=_ADAFORMER_TASK),
        ModelEntry("tadt", "tadt", _TADT.format(" (paper size, N = 8, C = 224)"),
                   "sr_tile.models.tadt:build", (2, 3, 4), {}, "branches",
                   {"variant": "tadt"}, scale_range=(1.0, MAX_SCALE), train=_TADT_TASK),
        ModelEntry("tadt-light", "tadt", _TADT.format("-light (N = 4, C = 64)"),
                   "sr_tile.models.tadt:build", (2, 3, 4),
                   {ANY_SCALE: "tadt-light.safetensors"}, "branches", {"variant": "tadt-light"},
                   scale_range=(1.0, MAX_SCALE), train=_TADT_TASK),
        ModelEntry("iet-light", "iet", _IET.format("-light (dim 54, 8 x 3 layers, 3 heads)"),
                   "sr_tile.models.iet:build", (2, 3, 4), {}, kwargs={"variant": "iet-light"},
                   train=_IET_TASK),
        ModelEntry("iet", "iet", _IET.format(" (dim 240, 8 x 4 layers, 6 heads)"),
                   "sr_tile.models.iet:build", (2, 3, 4), {}, kwargs={"variant": "iet"},
                   train=_IET_TASK),
    )
}

DEFAULT_MODEL = "enaf-fsrcnn"
BACKENDS = ("torch", "onnxruntime", "tensorrt")  # what runs the networks (sr_tile.deploy.onnx)


def get_entry(name: str) -> ModelEntry:
    """The row of model ``name``, or of a community model file (``sr_tile.models.community``)."""
    if name in MODELS:
        return MODELS[name]
    from sr_tile.models.community import FAMILY, is_model_file, spandrel_model

    if is_model_file(name):
        loaded = spandrel_model(name)
        return ModelEntry(name, FAMILY, f"{loaded.architecture.name} through spandrel",
                          "sr_tile.models.community:build", (int(loaded.scale),),
                          kwargs={"path": name})
    known = ", ".join(sorted(MODELS))
    raise UsageError(f"unknown model {name!r}; known models: {known} (or a model file: "
                     ".pth, .safetensors...)")


def training_task(name: str) -> Any:
    """The TrainTask of model ``name``'s family; UsageError if the family does not train."""
    entry = get_entry(name)
    if entry.train is None:
        raise UsageError(f"model {name} has no training task ({entry.family} does not train)")
    return _load(entry.train)()


def weights_dir() -> Path:
    """Where shipped weights live: $SR_TILE_WEIGHTS, else the installed package data."""
    env = os.environ.get("SR_TILE_WEIGHTS")
    if env:
        return Path(env)
    return Path(str(resources.files("sr_tile.weights")))


def shipped_weights(name: str, scale: int | float) -> Path | None:
    """The shipped weights file of (name, scale), if one is installed."""
    weights = get_entry(name).weights
    filename = weights.get(scale) or weights.get(ANY_SCALE)
    if filename is None:
        return None
    path = weights_dir() / filename
    return path if path.is_file() else None


def create_model(
    name: str, *, scale: float = 4, weights: bool | str | Path = True
) -> "nn.Module":
    """Build model `name` for `scale`; the single factory every command uses.

    ``weights``: True loads the shipped file (an error if the model needs
    weights and none ship for this scale), False builds it untrained (training),
    a path loads that file. The module is returned in eval mode and carries a
    ``descriptor``; presets calibrated at training time are read from the file.
    """
    entry = get_entry(name)
    scale = entry.resolve_scale(scale)
    from sr_tile.models.checkpoint import load_weights
    from sr_tile.runner import runner_class

    model = entry.builder()(scale=scale, **entry.kwargs)
    if entry.family == "community":  # its weights are the file itself
        if weights not in (True, False):
            raise UsageError("--weights: a model file carries its own weights")
        return model.eval()
    runner_class(model)  # a routed model without a runner must not build
    needs_weights = any(True for _ in model.parameters())
    if weights is True and needs_weights:
        path = shipped_weights(name, scale)
        if path is None:
            kin = [e.name for e in MODELS.values()
                   if e.family == entry.family and shipped_weights(e.name, scale)]
            ships = f" ({' and '.join(kin)} of its family ship{'s' * (len(kin) == 1)} them)"
            raise ConfigError(
                f"no weights for {name} x{scale} are installed{ships if kin else ''}; pass "
                f"--weights FILE or train them with 'sr-tile train'"
            )
        weights = path
    if isinstance(weights, (str, Path)):
        meta = load_weights(model, weights, name=name, scale=scale,
                            any_scale=entry.scale_range is not None)
        adopt_calibration(model, meta.get("presets"), meta.get("router"))
    return model.eval()


def adopt_calibration(model: nn.Module, presets: dict[str, Any] | None,
                      router: dict[str, Any] | None) -> None:
    """Give a routed model the presets (and router) its weights were calibrated with, as a
    weights file or an ONNX export carries them; a model without them keeps its own."""
    if presets and hasattr(model, "presets"):
        model.presets = {k.upper(): v for k, v in presets.items()}
    if router is not None and hasattr(model, "router"):
        model.router = router
