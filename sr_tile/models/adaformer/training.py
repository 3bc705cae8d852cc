"""AdaFormer's training task: one phase on the shared engine, L = L1 + alpha * L_USL (Eq. 25).

During training, halting works by masks (``AdaFormer.forward_masked``). The uncertainty loss
(Eq. 17, missing from the authors' code) trains the confidence estimator:

    L_USL = sum_l mean_px( C_l^ * e + log(1 / (C_l^ + 1e-8)) )

with C_l^ the confidence map read before TSAB l, bilinearly upsampled to HR, and e the
per-pixel error |HR - SR| (mean over RGB) in 8-bit levels. Its minimum over C is
C = min(1, 1/e): a pixel restored to within one grey level gets full confidence and its
token halts after one TSAB; one that is e levels off halts after about e TSABs (R >= 1 - eps).
On [0, 1] images every error is below 1 and every confidence would go to 1 (everything halts
at once), hence 8-bit levels. The error and the estimator's input are detached: L_USL trains
the estimator, L1 the network (undetached, L_USL would add a confidence-weighted L1 about 255
times stronger than L1 itself).

``dense_share`` of the steps (every ``round(1 / dense_share)``-th) run the network dense and
with L1 alone, so that ``--static`` (the same weights without halting) is a trained mode and
an honest baseline; the paper trains with masks only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from sr_tile.metrics import psnr_y
from sr_tile.models.adaformer.model import AdaFormer
from sr_tile.train.config import PhaseConfig, PhasesConfig, invalid
from sr_tile.train.data import ValSet
from sr_tile.train.engine import TrainTask

_VAL_BATCH = 4


@dataclass(frozen=True)
class AdaFormerPhaseConfig(PhaseConfig):
    """The shared phase settings, plus ``usl_weight`` (Eq. 25's alpha, 1 in the paper) and
    ``dense_share`` (see the module docstring; 0 trains with masks only)."""

    usl_weight: float = 1.0
    dense_share: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.usl_weight >= 0:
            raise invalid("usl_weight", f"must be >= 0, got {self.usl_weight}")
        if not 0.0 <= self.dense_share < 1.0:
            raise invalid("dense_share", f"must be in [0, 1), got {self.dense_share}")

    def dense_step(self, step: int) -> bool:
        return self.dense_share > 0 and step % max(1, round(1 / self.dense_share)) == 0


@dataclass(frozen=True)
class AdaFormerPhases(PhasesConfig):
    """AdaFormer trains in one phase."""

    train: AdaFormerPhaseConfig


def usl_loss(confidences: list[torch.Tensor], sr: torch.Tensor, hr: torch.Tensor
             ) -> torch.Tensor:
    """Eq. 17 (see the module docstring): ``confidences`` (B, h, w) maps at LR, ``sr`` and
    ``hr`` (B, 3, H, W) in [0, 1]."""
    error = (hr - sr).detach().abs().mean(dim=1, keepdim=True) * 255.0
    total = sr.new_zeros(())
    for conf in confidences:
        up = F.interpolate(conf[:, None], size=sr.shape[-2:], mode="bilinear",
                           align_corners=False)
        total = total + (up * error + torch.log(1.0 / (up + 1e-8))).mean()
    return total


@torch.no_grad()
def evaluate(model: AdaFormer, val: ValSet, device: torch.device) -> dict[str, Any]:
    """Mean PSNR-Y of the dense and the halting network on the val crops, and the share of
    halted tokens per TSAB."""
    was_training = model.training
    model.eval()
    dense, halting = [], []
    halted = np.zeros(len(model.blocks))
    for start in range(0, len(val), _VAL_BATCH):
        lr = val.lr[start:start + _VAL_BATCH].to(device).float().div_(255.0)
        hr = val.hr[start:start + _VAL_BATCH].permute(0, 2, 3, 1).numpy()
        out_halt, trace = model.forward_halting(lr)
        halted += np.array(trace.token_sparsity()) * lr.shape[0]
        for scores, out in ((dense, model(lr)), (halting, out_halt)):
            sr = (out.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()
            scores += [psnr_y(a, b, crop_border=val.scale) for a, b in zip(sr.numpy(), hr)]
    model.train(was_training)
    return {"psnr_y": {"dense": round(float(np.mean(dense)), 4),
                       "halting": round(float(np.mean(halting)), 4)},
            "halted": [round(float(v), 3) for v in halted / len(val)]}


class AdaFormerTask(TrainTask):
    """AdaFormer on the shared engine: one phase, L1 + alpha * L_USL with masked halting."""

    name = "adaformer"
    summary = "AdaFormer token-halting transformer: L1 + uncertainty loss, masked halting"
    phases = ("train",)
    phases_config = AdaFormerPhases
    configs = {"light": "adaformer_light.yaml", "adaformer": "adaformer.yaml"}
    default_variant = "light"

    def param_groups(self, model: torch.nn.Module, phase: str,
                     config: PhaseConfig) -> list[dict[str, Any]]:
        params = list(model.parameters())
        for p in params:
            p.requires_grad_(True)
        return [{"params": params, "lr": config.lr, "base_lr": config.lr}]

    def loss(self, model: torch.nn.Module, phase: str, config: PhaseConfig, state: Any,
             batch: Callable[[], tuple[torch.Tensor, torch.Tensor]], step: int,
             generator: torch.Generator, device: torch.device) -> torch.Tensor:
        lr, hr = batch()
        pixel = F.mse_loss if step < config.l2_warmup else F.l1_loss
        if config.dense_step(step):
            return pixel(model(lr), hr)
        sr, confidences = model.forward_masked(lr)
        return pixel(sr, hr) + config.usl_weight * usl_loss(confidences, sr, hr)

    def evaluate(self, model: torch.nn.Module, val: ValSet, device: torch.device,
                 state: Any = None) -> dict[str, Any]:
        return evaluate(model, val, device)

    def format_val(self, result: dict[str, Any]) -> str:
        psnr = result["psnr_y"]
        return (f"PSNR-Y dense {psnr['dense']:.2f}, halting {psnr['halting']:.2f}"
                f"; halted tokens per TSAB "
                + "/".join(f"{100 * v:.0f}" for v in result["halted"]) + " %")
