"""AdaFormer's training task on the shared engine: L1 + alpha * L_USL (Eq. 25), then the estimator.

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

The paper trains with masks at one eps_h. Here each step draws its eps from
[``eps_min``, ``eps_max``] (log-uniform, seeded by the step, so a resumed run draws the same),
by default the span of the L/M/S presets, so that every preset is a trained mode rather
than the one eps the weights were fitted at. ``dense_share`` of the steps (spread
evenly) run dense with L1 alone, so that ``--static`` (the same weights
without halting) is a trained mode too. Three 150-step trials on the real data (val crops,
PSNR-Y dense / halting at eps 0.05): a quarter of the steps dense and one eps, 36.27 / 34.27;
no dense step, 30.75 / 36.08 (dense untrained: not a baseline at all); a tenth dense, 36.84 /
36.38, the shipped config.

A second phase, ``halting`` (0 steps unless set), trains the estimator alone: L_USL over
masked halting with every other weight frozen. Masked steps that halt early let the network
learn to do without its TSABs (the shipped light model's first runs: the TSABs added under
0.01 dB, so every token halted before the first); a network trained dense, then an estimator
fitted to it, keeps what the TSABs add and only learns where to skip them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from sr_tile.metrics import psnr_y
from sr_tile.models.adaformer.model import AdaFormer
from sr_tile.train.config import PhaseConfig, PhasesConfig, invalid
from sr_tile.train.data import ValSet
from sr_tile.train.engine import TrainTask

_VAL_BATCH = 4


@dataclass(frozen=True)
class AdaFormerPhaseConfig(PhaseConfig):
    """The shared phase settings, plus ``usl_weight`` (Eq. 25's alpha, 1 in the paper),
    ``eps_min`` / ``eps_max`` (the span each step's eps_h is drawn from; equal: one eps) and
    ``dense_share`` (see the module docstring; 0 trains with masks only)."""

    usl_weight: float = 1.0
    eps_min: float = 0.02
    eps_max: float = 0.15
    dense_share: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.usl_weight >= 0:
            raise invalid("usl_weight", f"must be >= 0, got {self.usl_weight}")
        if not 0.0 < self.eps_min <= self.eps_max < 1.0:
            raise invalid("eps_min", f"need 0 < eps_min <= eps_max < 1, got {self.eps_min} "
                                     f"and {self.eps_max}")
        if not 0.0 <= self.dense_share <= 1.0:
            raise invalid("dense_share", f"must be in [0, 1], got {self.dense_share}")

    def draw_eps(self, generator: torch.Generator) -> float:
        """This step's eps_h, log-uniform in [eps_min, eps_max]."""
        u = float(torch.rand((), generator=generator))
        return math.exp(math.log(self.eps_min) + u * math.log(self.eps_max / self.eps_min))

    def dense_step(self, step: int) -> bool:
        """Spread the dense steps evenly: ``dense_share`` of every run of steps is dense."""
        return math.ceil((step + 1) * self.dense_share) > math.ceil(step * self.dense_share)


@dataclass(frozen=True)
class AdaFormerPhases(PhasesConfig):
    """``train``: the whole network, L1 + alpha * L_USL with masked halting (``dense_share``
    of the steps dense). ``halting`` (optional, 0 steps by default): the confidence estimator
    alone, L_USL with masked halting, every other weight frozen (``dense_share`` unused)."""

    train: AdaFormerPhaseConfig
    halting: AdaFormerPhaseConfig = AdaFormerPhaseConfig(steps=0)


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
    """Mean PSNR-Y of the dense and the halting network on the val crops, of the network
    with no TSAB (what the TSABs add: a halting that saves time because they add nothing is
    no success), and the share of halted tokens per TSAB."""
    was_training = model.training
    model.eval()
    dense, halting, no_tsab = [], [], []
    halted = np.zeros(len(model.blocks))
    for start in range(0, len(val), _VAL_BATCH):
        lr = val.lr[start:start + _VAL_BATCH].to(device).float().div_(255.0)
        hr = val.hr[start:start + _VAL_BATCH].permute(0, 2, 3, 1).numpy()
        out_halt, trace = model.forward_halting(lr)
        halted += np.array(trace.token_sparsity()) * lr.shape[0]
        for scores, out in ((dense, model(lr)), (halting, out_halt),
                            (no_tsab, model(lr, depth=0))):
            sr = (out.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()
            scores += [psnr_y(a, b, crop_border=val.scale) for a, b in zip(sr.numpy(), hr)]
    model.train(was_training)
    return {"psnr_y": {"dense": round(float(np.mean(dense)), 4),
                       "halting": round(float(np.mean(halting)), 4),
                       "no_tsab": round(float(np.mean(no_tsab)), 4)},
            "halted": [round(float(v), 3) for v in halted / len(val)]}


class AdaFormerTask(TrainTask):
    """AdaFormer on the shared engine: one phase, L1 + alpha * L_USL with masked halting."""

    name = "adaformer"
    summary = "AdaFormer token-halting transformer: L1 + uncertainty loss, masked halting"
    phases = ("train", "halting")
    phases_config = AdaFormerPhases
    configs = {"light": "adaformer_light.yaml", "adaformer": "adaformer.yaml"}
    default_variant = "light"

    def param_groups(self, model: torch.nn.Module, phase: str,
                     config: PhaseConfig) -> list[dict[str, Any]]:
        trained = model.estimator.parameters() if phase == "halting" else model.parameters()
        model.requires_grad_(phase != "halting")
        params = list(trained)
        for p in params:
            p.requires_grad_(True)
        return [{"params": params, "lr": config.lr, "base_lr": config.lr}]

    def loss(self, model: torch.nn.Module, phase: str, config: PhaseConfig, state: Any,
             batch: Callable[[], tuple[torch.Tensor, torch.Tensor]], step: int,
             generator: torch.Generator, device: torch.device) -> torch.Tensor:
        lr, hr = batch()
        if phase == "halting":  # the network is frozen: L1 would train nothing
            sr, confidences = model.forward_masked(lr, config.draw_eps(generator))
            return usl_loss(confidences, sr, hr)
        pixel = F.mse_loss if step < config.l2_warmup else F.l1_loss
        if config.dense_step(step):
            return pixel(model(lr), hr)
        sr, confidences = model.forward_masked(lr, config.draw_eps(generator))
        return pixel(sr, hr) + config.usl_weight * usl_loss(confidences, sr, hr)

    def evaluate(self, model: torch.nn.Module, val: ValSet, device: torch.device,
                 state: Any = None) -> dict[str, Any]:
        return evaluate(model, val, device)

    def format_val(self, result: dict[str, Any]) -> str:
        psnr = result["psnr_y"]
        return (f"PSNR-Y dense {psnr['dense']:.2f}, halting {psnr['halting']:.2f}"
                f" (TSABs add {psnr['dense'] - psnr['no_tsab']:+.3f} dB)"
                f"; halted tokens per TSAB "
                + "/".join(f"{100 * v:.0f}" for v in result["halted"]) + " %")

    finish_phase = "calibrate"

    def finish(self, cfg: Any, weights: Path | None, *, console: Console | None = None) -> Any:
        """After export (or ``--phase calibrate``): eps_h of the L/M/S presets, calibrated on
        training images against the dense network and written into the weights file."""
        from sr_tile.models.adaformer.calibrate import calibrate
        from sr_tile.train.calibration import start, unmet_caption, write_presets

        weights, _, on_image = start(cfg, weights, console)
        result = calibrate(cfg.model, weights, cfg.data.train_dir, scale=cfg.scale,
                           on_image=on_image)
        write_presets(weights, result)
        table = Table(title=f"presets of {weights.name} (loss vs dense, "
                            f"{len(result['images'])} training images)", title_justify="left",
                      caption=unmet_caption(result))
        for name in ("eps", "PSNR-Y loss", "FLOPs % of dense", "halted (last TSAB)", "preset"):
            table.add_column(name, justify="right")
        for row in result["table"]:
            marks = ",".join(k for k, v in result["presets"].items() if v["eps"] == row["eps"])
            table.add_row(f"{row['eps']:g}", f"{row['loss_db']:.3f} dB",
                          f"{row['flops_pct']:.1f}", f"{100 * row['halted_last']:.0f} %", marks)
        return table
