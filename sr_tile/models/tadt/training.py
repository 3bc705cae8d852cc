"""TADT's training task, as the paper trains it (sec. 4.1): first the ``baseline`` (the
extractor with every branch on, no TARC, L1), then ``tadt`` from it (TARC learns the routes:
r ~ Bernoulli(p) with the straight-through estimator, L = L1 + lambda * beta * M with
M = [beta >= a1 + a2 * s^a3], lambda = 2e-4; the paper's a = 0.25, 0.25, 0.5 unless the
config sets ``alphas``). The tadt phase starts beta(s) on that threshold curve.

Batches are arbitrary-scale (``sr_tile.train.data.ScaleSampler``): s ~ U(1, 4) per batch, LR
crops of ``data.lr_patch`` px made from HR crops of round(p * s) px, a grid of ``queries``
rows x columns of HR pixels as the targets; with ``hard_pool`` k, the batch keeps the crops on
which bicubic errs most of k times as many.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from sr_tile.metrics import psnr_y
from sr_tile.models.tadt.model import TADT, output_grid, sample_routes
from sr_tile.train.config import PhaseConfig, PhasesConfig, invalid
from sr_tile.train.data import ScaleSampler, ValSet
from sr_tile.train.engine import PhaseContext, TrainTask

ALPHAS = (0.25, 0.25, 0.5)  # the paper's M = [beta >= a1 + a2 * s^a3] (Eq. 6)
_VAL_BATCH = 4


@dataclass(frozen=True)
class TADTPhaseConfig(PhaseConfig):
    """The shared phase settings, plus ``queries`` (rows and columns of HR targets per crop),
    the training ``scale_min``/``scale_max``, ``penalty`` (Eq. 5's lambda; phase tadt) and
    ``hard_pool`` (keep the batch's crops on which bicubic errs most, of that many times as
    many: ``ScaleSampler``). ``alphas``: Eq. 6's a1, a2, a3, the threshold above which beta
    (the share of branches TARC may turn on) is penalised; the paper's by default.
    ``tarc_lr``: TARC's learning rate (phase tadt; None: ``lr``)."""

    queries: int = 32
    scale_min: float = 1.0
    scale_max: float = 4.0
    penalty: float = 2e-4
    hard_pool: int = 1
    alphas: tuple[float, float, float] = ALPHAS
    tarc_lr: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.queries < 1:
            raise invalid("queries", f"must be >= 1, got {self.queries}")
        if not 1.0 <= self.scale_min <= self.scale_max:
            raise invalid("scale_min", f"need 1 <= scale_min <= scale_max, got "
                                       f"{self.scale_min} and {self.scale_max}")
        if self.penalty < 0:
            raise invalid("penalty", f"must be >= 0, got {self.penalty}")
        if self.hard_pool < 1:
            raise invalid("hard_pool", f"must be >= 1, got {self.hard_pool}")
        if self.tarc_lr is not None and not self.tarc_lr > 0:
            raise invalid("tarc_lr", f"must be > 0, got {self.tarc_lr}")


@dataclass(frozen=True)
class TADTPhases(PhasesConfig):
    baseline: TADTPhaseConfig
    tadt: TADTPhaseConfig


def beta_threshold(scale: float | torch.Tensor,
                   alphas: tuple[float, float, float] = ALPHAS) -> torch.Tensor:
    """Eq. 6's a1 + a2 * s^a3."""
    a1, a2, a3 = alphas
    return a1 + a2 * torch.as_tensor(scale, dtype=torch.float32) ** a3


def fit_beta_to_threshold(model: TADT, alphas: tuple[float, float, float],
                          scales: tuple[float, float], steps: int = 1000) -> float:
    """Start TARC's scale branch on the penalty's threshold curve (at least 0.02), so that the
    phase starts on budget at every scale. From beta = 1 everywhere the penalty pushes every
    scale down at once through the shared layers, and its first steps drag the large scales
    (whose budget is not exceeded) far below their threshold. Returns the worst gap left."""
    branch = model.tarc.scale_branch
    s = torch.linspace(scales[0], scales[1], 64, device=branch[0].weight.device)
    target = beta_threshold(s, alphas).clamp(min=0.02)
    opt = torch.optim.Adam(branch.parameters(), lr=1e-2)
    with torch.enable_grad():
        for _ in range(steps):
            beta = F.softplus(branch(s[:, None]))[:, 0]
            loss = F.mse_loss(beta, target)
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        return float((F.softplus(branch(s[:, None]))[:, 0] - target).abs().max())


def beta_penalty(beta: torch.Tensor, scale: float | torch.Tensor,
                 alphas: tuple[float, float, float] = ALPHAS) -> torch.Tensor:
    """Eq. 6-7: beta * [beta >= a1 + a2 * s^a3], averaged over the batch."""
    threshold = beta_threshold(scale, alphas).to(beta.dtype)
    return (beta * (beta.detach() >= threshold).to(beta.dtype)).mean()


@torch.no_grad()
def evaluate(model: TADT, val: ValSet, device: torch.device) -> dict[str, Any]:
    """PSNR-Y on the val crops at their scale, every branch on and routed by TARC; the
    branches TARC turns on at x2, x3 and x4 and the extractor's FLOPs there as a share of
    the static one's (means over the crops)."""
    was_training = model.training
    model.eval()
    scores: dict[str, list[float]] = {"all": [], "routed": []}
    on: dict[int, list[float]] = {s: [] for s in (2, 3, 4)}
    share: dict[int, list[float]] = {s: [] for s in on}
    feature_std, dead = [], []
    for start in range(0, len(val), _VAL_BATCH):
        lr = val.lr[start:start + _VAL_BATCH].to(device).float().div_(255.0)
        hr = val.hr[start:start + _VAL_BATCH].permute(0, 2, 3, 1).numpy()
        ys, xs = output_grid(lr, val.scale)
        for k in range(lr.shape[0]):
            x = lr[k:k + 1]
            routes = {s: model.route(x, float(s))[0] for s in {*on, val.scale}}
            for name, r in (("all", None), ("routed", routes[val.scale])):
                if r is not None and bool(r.all()):  # the same network: score it once
                    scores[name].append(scores["all"][-1])
                    continue
                feat = model.extract(x, r)
                out = model.upsampler(feat, x, ys[k:k + 1], xs[k:k + 1], float(val.scale))
                if r is None:
                    feature_std.append(float(feat.std()))
                    if hasattr(model.upsampler, "dead_units"):
                        dead.append(model.upsampler.dead_units(feat, float(val.scale)))
                sr = (out.clamp(0, 1) * 255).round().to(torch.uint8)[0].permute(1, 2, 0).cpu()
                scores[name].append(psnr_y(sr.numpy(), hr[k], crop_border=val.scale))
            full = model.extractor_flops(1, *x.shape[-2:], None)
            for s in on:
                on[s].append(float(routes[s].float().sum()))
                share[s].append(model.extractor_flops(1, *x.shape[-2:], routes[s]) / full)
    model.train(was_training)
    return {"psnr_y": {k: round(float(np.mean(v)), 4) for k, v in scores.items()},
            "branches_on": {f"x{s}": round(float(np.mean(v)), 2) for s, v in on.items()},
            "branches": model.config.branches,
            "extractor_flops": {f"x{s}": round(float(np.mean(v)), 4) for s, v in share.items()},
            # collapse watch: the upsampler's input scale and its dead ReLUs (LIIF)
            "feature_std": round(float(np.mean(feature_std)), 4),
            "dead_units": round(float(np.mean(dead)), 3) if dead else None}


class TADTTask(TrainTask):
    """TADT on the shared engine: phases baseline and tadt."""

    name = "tadt"
    summary = "TADT arbitrary-scale transformer: baseline extractor, then TARC routing"
    phases = ("baseline", "tadt")
    phases_config = TADTPhases
    configs = {"light": "tadt_light.yaml", "tadt": "tadt.yaml"}
    default_variant = "light"

    def param_groups(self, model: torch.nn.Module, phase: str,
                     config: PhaseConfig) -> list[dict[str, Any]]:
        tarc = set(model.tarc.parameters())
        for p in model.parameters():
            p.requires_grad_(phase != "baseline" or p not in tarc)  # the baseline: no TARC yet
        rest = [p for p in model.parameters() if p not in tarc]
        groups = [{"params": rest, "lr": config.lr, "base_lr": config.lr}]
        if phase != "baseline":
            lr = config.tarc_lr or config.lr
            groups.append({"params": list(tarc), "lr": lr, "base_lr": lr})
        return groups

    def prepare_phase(self, model: torch.nn.Module, phase: str, config: PhaseConfig,
                      ctx: PhaseContext) -> ScaleSampler:
        if phase == "tadt" and ctx.start == 0:
            gap = fit_beta_to_threshold(model, config.alphas,
                                        (config.scale_min, config.scale_max))
            ctx.log.write("beta_init", alphas=list(config.alphas), max_gap=round(gap, 4))
        return ScaleSampler(ctx.sampler.pairs, lr_patch=ctx.sampler.lr_patch,
                            queries=config.queries, scales=(config.scale_min, config.scale_max),
                            augment=ctx.sampler.augment, hard_pool=config.hard_pool)

    def loss(self, model: torch.nn.Module, phase: str, config: PhaseConfig, state: Any,
             batch: Callable[[], Any], step: int, generator: torch.Generator,
             device: torch.device) -> torch.Tensor:
        b = state.batch(config.batch_size, generator, device)
        pixel = F.mse_loss if step < config.l2_warmup else F.l1_loss
        if phase == "baseline":
            route, penalty = None, None
        else:
            p, beta = model.tarc(b.lr, torch.full((b.lr.shape[0],), b.scale, device=device))
            route = sample_routes(p, generator if device.type == "cpu" else None)
            penalty = beta_penalty(beta, b.scale, config.alphas)
        sr = model.upsampler(model.extract(b.lr, route), b.lr, b.ys, b.xs, b.scale)
        loss = pixel(sr, b.hr)
        return loss if penalty is None else loss + config.penalty * penalty

    def evaluate(self, model: torch.nn.Module, val: ValSet, device: torch.device,
                 state: Any = None) -> dict[str, Any]:
        return evaluate(model, val, device)

    def format_val(self, result: dict[str, Any]) -> str:
        psnr, on = result["psnr_y"], result["branches_on"]
        dead = result.get("dead_units")
        return (f"PSNR-Y all branches {psnr['all']:.2f}, routed {psnr['routed']:.2f}; "
                f"branches on of {result['branches']}: "
                + ", ".join(f"{k} {v:g} ({100 * result['extractor_flops'][k]:.0f} % FLOPs)"
                            for k, v in on.items())
                + f"; feature std {result['feature_std']:.3f}"
                + (f", dead LIIF units {100 * dead:.0f} %" if dead is not None else ""))
