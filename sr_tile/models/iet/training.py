"""IET's training task: one phase of L1 on the shared engine, DLSG at the training dilation
(the paper trains with d = 2 and infers with d = 3; the dilation changes the candidates, not
the weights)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from sr_tile.metrics import psnr_y
from sr_tile.models.iet.model import IET
from sr_tile.train.config import PhaseConfig, PhasesConfig, invalid
from sr_tile.train.data import ValSet
from sr_tile.train.engine import PhaseContext, TrainTask

_VAL_BATCH = 4


@dataclass(frozen=True)
class IETPhaseConfig(PhaseConfig):
    """The shared settings, plus DLSG's ``dilation`` while training."""

    dilation: int = 2

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.dilation < 1:
            raise invalid("dilation", f"must be >= 1, got {self.dilation}")


@dataclass(frozen=True)
class IETPhases(PhasesConfig):
    train: IETPhaseConfig


@torch.no_grad()
def evaluate(model: IET, val: ValSet, device: torch.device) -> dict[str, Any]:
    """Mean PSNR-Y on the val crops, at the model's inference dilation."""
    was_training = model.training
    model.eval()
    scores = []
    for start in range(0, len(val), _VAL_BATCH):
        lr = val.lr[start:start + _VAL_BATCH].to(device).float().div_(255.0)
        hr = val.hr[start:start + _VAL_BATCH].permute(0, 2, 3, 1).numpy()
        sr = (model(lr).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()
        scores += [psnr_y(a, b, crop_border=val.scale) for a, b in zip(sr.numpy(), hr)]
    model.train(was_training)
    return {"psnr_y": {"full": round(float(np.mean(scores)), 4)}}


class IETTask(TrainTask):
    name = "iet"
    summary = "IET individualized exploratory transformer: L1"
    phases = ("train",)
    phases_config = IETPhases
    configs = {"light": "iet_light.yaml"}
    default_variant = "light"

    def prepare_phase(self, model: torch.nn.Module, phase: str, config: PhaseConfig,
                      ctx: PhaseContext) -> int:
        return model.config.dilation  # the inference dilation, restored for evaluation

    def loss(self, model: torch.nn.Module, phase: str, config: PhaseConfig, state: Any,
             batch: Callable[[], tuple[torch.Tensor, torch.Tensor]], step: int,
             generator: torch.Generator, device: torch.device) -> torch.Tensor:
        lr, hr = batch()
        model.set_dilation(config.dilation)
        try:
            sr = model(lr)
        finally:
            model.set_dilation(state)
        pixel = F.mse_loss if step < config.l2_warmup else F.l1_loss
        return pixel(sr, hr)

    def evaluate(self, model: torch.nn.Module, val: ValSet, device: torch.device,
                 state: Any = None) -> dict[str, Any]:
        return evaluate(model, val, device)

    def format_val(self, result: dict[str, Any]) -> str:
        return f"PSNR-Y {result['psnr_y']['full']:.2f}"
