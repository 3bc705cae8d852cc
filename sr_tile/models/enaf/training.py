"""ENAF's training task: three phases (paper sec. 3.2) on the shared engine, and their parts.

* ``backbone``: L1 of the full path (path 3) against HR; trunk segments + full head train.
* ``exits``: L1 of exit 1 + exit 2; only the exit heads train, the trunk and full head are
  frozen, or train at ``frozen_lr`` (paper: 1e-8), in which case the full path's L1 joins the
  loss as in the paper's Eq. 6 so that it keeps its quality.
* ``estimator``: backbone frozen; the estimator regresses, with L1, the PSNR-Y that every path
  (path 0 = bicubic) reaches on each 8x8 LR sub-tile of a patch, the unit it reads at
  inference (outputs clamped to [0, 1], the patch's ``scale`` px border left out, capped at
  :data:`PSNR_CAP` dB for flat sub-tiles), as bicubic's PSNR plus each path's gain
  over it (see :class:`~sr_tile.models.enaf.estimator.PSNREstimator`). Its output bias starts at the
  mean target of a few batches, so it does not spend thousands of steps walking to ~40 dB.
  With ``label_pool`` the targets of a fixed set of patches are computed once
  (:func:`label_pool`) and the steps draw from them.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table
from safetensors import safe_open

from sr_tile.errors import ConfigError
from sr_tile.metrics import psnr_y
from sr_tile.models.checkpoint import save_safetensors
from sr_tile.models.enaf.estimator import MAX_CONTEXT, combine_psnr
from sr_tile.models.enaf.model import EnafSR
from sr_tile.models.enaf.multiexit import MultiExitSR
from sr_tile.models.layers import small_init_
from sr_tile.train.config import PhaseConfig, PhasesConfig, invalid
from sr_tile.train.data import PatchSampler, ValSet, step_generator
from sr_tile.train.engine import (
    JsonlLog,
    PhaseContext,
    StopFlag,
    TrainingInterrupted,
    TrainTask,
    _Display,
)
from sr_tile.train.state import RunDir

__all__ = [
    "PATH_NAMES", "PSNR_CAP", "EnafTask", "LabelPool", "evaluate", "format_val", "label_pool",
    "path_psnr_targets", "patch_psnr_y",
]

@dataclass(frozen=True)
class EnafPhaseConfig(PhaseConfig):
    """A phase of ENAF: the shared settings, and two of its own.

    ``frozen_lr``: learning rate of the parts a phase does not train (phase ``exits``: trunk
    and full head); None freezes them (``requires_grad`` False).

    ``label_pool`` (phase ``estimator`` only): label this many random training patches once
    (every path's PSNR-Y, the costly part: a whole backbone pass per patch) and train on random
    draws from them, with a random flip/transpose per batch, instead of labelling every
    batch anew. Steps then cost only the estimator, so the phase can take thousands of them.
    None labels every batch (the paper's way).

    ``context`` (phase ``estimator`` only): give the estimator this many context layers
    (``PSNREstimator``'s ``context``; new ones start as the identity) before it trains; None
    keeps what the model has.

    ``tile_loss`` (phase ``estimator`` only, with sub-tile targets): weight of a second L1
    term on the patch's gains, its sub-tiles' PSNRs combined by their mean MSE as fusion
    reads a tile (``combine_psnr``). The sub-tile term weighs every sub-tile alike; the tile
    term weighs them by their error, as a tile's PSNR does. None (0) trains sub-tiles only.
    """

    frozen_lr: float | None = None
    label_pool: int | None = None
    context: int | None = None
    tile_loss: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.frozen_lr is not None and self.frozen_lr < 0:
            raise invalid("frozen_lr", f"must be >= 0, got {self.frozen_lr}")
        if self.label_pool is not None and self.label_pool <= 0:
            raise invalid("label_pool", f"must be > 0, got {self.label_pool}")
        if self.context is not None and not 0 <= self.context <= MAX_CONTEXT:
            raise invalid("context", f"must be 0-{MAX_CONTEXT}, got {self.context}")
        if self.tile_loss is not None and self.tile_loss < 0:
            raise invalid("tile_loss", f"must be >= 0, got {self.tile_loss}")


@dataclass(frozen=True)
class EnafPhases(PhasesConfig):
    """ENAF's three phases, in order (paper sec. 3.2 / 4.1.2)."""

    backbone: EnafPhaseConfig
    exits: EnafPhaseConfig
    estimator: EnafPhaseConfig

    def __post_init__(self) -> None:
        for name in ("backbone", "exits"):
            for key in ("label_pool", "context", "tile_loss"):
                if getattr(self.get(name), key) is not None:
                    raise invalid(f"{name}.{key}", "only the estimator phase has one")


PHASES = EnafPhases.names()
PATH_NAMES = ("bicubic", "exit1", "exit2", "full")
PSNR_CAP = 60.0  # dB: flat patches would otherwise give huge or infinite targets
_Y_WEIGHTS = (65.481, 128.553, 24.966)  # BT.601, RGB in [0, 1] -> Y - 16 in [0, 219]
_ESTIMATOR_INIT_BATCHES = 4
_POOL_CHUNK = 256  # patches labelled at a time
_POOL_SAVE_EVERY_S = 60.0  # a 64k pool is 200 MB: rewrite it now and then, not every chunk
_LABEL_BATCH = 64  # patches per backbone pass when labelling
_POOL_STEP0 = -(1 << 20)  # step ids of the pool's chunks: apart from every training step's
_VAL_BATCH = 8


def patch_psnr_y(sr: torch.Tensor, hr: torch.Tensor, border: int,
                 cap: float = PSNR_CAP, block: int | None = None) -> torch.Tensor:
    """(N,) PSNR-Y (dB, 255 peak) of (N,3,H,W) batches in [0, 1]; ``sr`` is clamped first.

    ``block``: (N, H // block, W // block), the PSNR-Y of every ``block`` x ``block`` square
    instead (the ``border`` still left out: the edge squares average fewer pixels).
    """
    w = torch.tensor(_Y_WEIGHTS, dtype=torch.float32, device=sr.device).view(1, 3, 1, 1)
    err = ((sr.float().clamp(0.0, 1.0) - hr.float()) * w).sum(1).pow(2)
    inside = torch.zeros_like(err[:1])
    inside[:, border:err.shape[1] - border, border:err.shape[2] - border] = 1.0
    if block is None:
        mse = (err * inside).sum(dim=(1, 2)) / inside.sum()
    else:
        mse = F.avg_pool2d(err * inside, block) / F.avg_pool2d(inside, block)
    floor = 255.0 ** 2 * 10.0 ** (-cap / 10.0)
    return 10.0 * torch.log10(255.0 ** 2 / mse.clamp_min(floor))


@torch.no_grad()
def path_psnr_targets(backbone: MultiExitSR, lr: torch.Tensor, hr: torch.Tensor,
                      part: int | None = None) -> torch.Tensor:
    """(N, P): the estimator's targets, every path's PSNR-Y on each patch; with ``part``
    (N, P, h // part, w // part), on each ``part`` x ``part`` LR sub-tile of the patch."""
    paths = range(backbone.num_paths)
    outs = backbone.path_outputs(lr, paths)
    block = None if part is None else part * backbone.scale
    return torch.stack([patch_psnr_y(outs[p], hr, backbone.scale, block=block) for p in paths],
                       dim=1)


def estimator_targets(model: EnafSR, lr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
    """What the estimator phase regresses: every path's PSNR-Y on each sub-tile the estimator
    reads (N, P, h', w'), or on the whole patch (N, P) when it reads the patch whole."""
    return path_psnr_targets(model.backbone, lr, hr, model.estimator_part(*lr.shape[-2:]))


def _to_uint8_hwc(x: torch.Tensor) -> np.ndarray:
    return (x.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


@dataclass
class EstimatorVal:
    """The val crops cut into training-size LR patches and their PSNR targets (fixed while
    the backbone is frozen)."""

    lr: torch.Tensor
    targets: torch.Tensor


def _dihedral(x: torch.Tensor, code: int) -> torch.Tensor:
    """One of the 8 flips/transposes of (N, C, H, W) patches, coded as ``data._augment``'s."""
    if code & 1:
        x = x.flip(-1)
    if code & 2:
        x = x.flip(-2)
    if code & 4:
        x = x.transpose(-1, -2)
    return x


@dataclass
class LabelPool:
    """Training patches labelled once for the estimator: ``lr`` (N,3,p,p) uint8 and
    ``targets`` (:func:`estimator_targets`: (N, paths, p', p') per sub-tile, or (N, paths)),
    every path's PSNR-Y. PSNR does not change under a flip or a transpose of the patch (the
    backbone was trained with them), so a batch drawn from the pool is flipped/transposed at
    random, its sub-tile targets with it."""

    lr: torch.Tensor
    targets: torch.Tensor

    def batch(self, n: int, generator: torch.Generator, device: torch.device
              ) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(0, self.lr.shape[0], (n,), generator=generator)
        code = int(torch.randint(0, 8, (1,), generator=generator))
        lr = _dihedral(self.lr[idx].float().div_(255.0), code)
        targets = self.targets[idx]
        if targets.dim() == 4:
            targets = _dihedral(targets, code)
        return lr.to(device), targets.to(device)


def _backbone_fingerprint(backbone: MultiExitSR) -> str:
    digest = hashlib.sha1()
    for name, tensor in sorted(backbone.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


@torch.no_grad()
def label_pool(model: EnafSR, sampler: PatchSampler, size: int, *, seed: int,
               device: torch.device, path: Path | None = None,
               on_progress: Callable[[int, int], None] | None = None,
               stop: StopFlag | None = None) -> LabelPool:
    """Label ``size`` random training patches (the backbone's work of the estimator phase).

    With ``path`` the pool is saved at most every ``_POOL_SAVE_EVERY_S`` seconds, on a stop
    request and at the end, and a later call (a resumed run) goes on from what is there, if
    it was labelled by the same backbone, seed and patch size.
    ``on_progress(done, size)`` after every chunk; a stop request raises KeyboardInterrupt.
    """
    meta = {"backbone": _backbone_fingerprint(model.backbone), "seed": str(seed),
            "lr_patch": str(sampler.lr_patch), "scale": str(sampler.scale),
            "part": str(model.estimator_part(sampler.lr_patch, sampler.lr_patch))}
    lrs, targets = [], []
    if path is not None and path.exists():
        with safe_open(str(path), framework="pt") as saved:
            if saved.metadata() == meta:
                lrs, targets = [saved.get_tensor("lr")[:size]], [saved.get_tensor("targets")[:size]]
    done = sum(t.shape[0] for t in targets)
    if done < size and done % _POOL_CHUNK:  # keep whole chunks: the next one starts afresh
        done -= done % _POOL_CHUNK
        lrs, targets = [lrs[0][:done]], [targets[0][:done]]
    phase = PHASES.index("estimator")
    saved_at = time.monotonic()
    while done < size:
        chunk = done // _POOL_CHUNK  # done is a multiple of the chunk until the last one
        n = min(_POOL_CHUNK, size - done)
        lr, hr = sampler.batch(n, step_generator(seed, phase, _POOL_STEP0 - chunk), device)
        targets.append(torch.cat([estimator_targets(model, lr[i:i + _LABEL_BATCH],
                                                    hr[i:i + _LABEL_BATCH]).cpu()
                                  for i in range(0, n, _LABEL_BATCH)]))
        lrs.append(lr.mul(255.0).round_().to(torch.uint8).cpu())
        done += n
        stopping = stop is not None and stop.requested is not None and done < size
        if path is not None and (done == size or stopping
                                 or time.monotonic() - saved_at >= _POOL_SAVE_EVERY_S):
            path.parent.mkdir(parents=True, exist_ok=True)
            save_safetensors({"lr": torch.cat(lrs), "targets": torch.cat(targets)}, path, meta)
            lrs, targets = [torch.cat(lrs)], [torch.cat(targets)]
            saved_at = time.monotonic()
        if on_progress is not None:
            on_progress(done, size)
        if stopping:
            raise KeyboardInterrupt(stop.requested)
    return LabelPool(lr=torch.cat(lrs), targets=torch.cat(targets))


@torch.no_grad()
def estimator_val_set(model: EnafSR, val: ValSet, lr_patch: int,
                      device: torch.device) -> EstimatorVal:
    s = val.scale
    n = val.lr.shape[-1] // lr_patch
    lrs, hrs = [], []
    for i in range(n):
        for j in range(n):
            ys, xs = i * lr_patch, j * lr_patch
            lrs.append(val.lr[:, :, ys:ys + lr_patch, xs:xs + lr_patch])
            hrs.append(val.hr[:, :, ys * s:(ys + lr_patch) * s, xs * s:(xs + lr_patch) * s])
    lr = torch.cat(lrs).float().div_(255.0)
    hr = torch.cat(hrs).float().div_(255.0)
    targets = []
    for start in range(0, lr.shape[0], _LABEL_BATCH):
        end = start + _LABEL_BATCH
        targets.append(path_psnr_targets(model.backbone, lr[start:end].to(device),
                                         hr[start:end].to(device)).cpu())
    return EstimatorVal(lr=lr, targets=torch.cat(targets))


@torch.no_grad()
def evaluate(model: EnafSR, val: ValSet, *, device: torch.device,
             estimator: EstimatorVal | None = None) -> dict[str, Any]:
    """Mean PSNR-Y of every path over the val crops (and the estimator's MAE, when given)."""
    was_training = model.training
    model.eval()
    backbone = model.backbone
    paths = range(backbone.num_paths)
    scores: list[list[float]] = [[] for _ in paths]
    for start in range(0, len(val), _VAL_BATCH):
        lr = val.lr[start:start + _VAL_BATCH].to(device).float().div_(255.0)
        hr = val.hr[start:start + _VAL_BATCH].permute(0, 2, 3, 1).numpy()
        outs = backbone.path_outputs(lr, paths)
        for p in paths:
            for sr_img, hr_img in zip(_to_uint8_hwc(outs[p]), hr):
                scores[p].append(psnr_y(sr_img, hr_img, crop_border=val.scale))
    result: dict[str, Any] = {
        "psnr_y": {PATH_NAMES[p]: round(float(np.mean(scores[p])), 4) for p in paths},
    }
    result["gain_db"] = round(result["psnr_y"]["full"] - result["psnr_y"]["bicubic"], 4)
    if estimator is not None:
        preds = torch.cat([model.predict_psnr(estimator.lr[i:i + 256].to(device)).cpu()
                           for i in range(0, estimator.lr.shape[0], 256)])
        err = (preds - estimator.targets).abs()
        result["estimator_mae"] = {PATH_NAMES[p]: round(float(err[:, p].mean()), 4)
                                   for p in paths}
        result["estimator_mae_mean"] = round(float(err.mean()), 4)
        # What routing depends on: the error of the predicted gains over bicubic.
        to_gains = model.estimator.to_gains
        pred_gains, true_gains = to_gains(preds)[:, 1:], to_gains(estimator.targets)[:, 1:]
        result["estimator_gain_mae"] = round(float((pred_gains - true_gains).abs().mean()), 4)
        # A constant guess can have a fair MAE; the correlation says whether it ranks patches.
        result["estimator_gain_corr"] = round(float(np.mean([
            torch.corrcoef(torch.stack([pred_gains[:, k], true_gains[:, k]]))[0, 1]
            for k in range(pred_gains.shape[1])])), 4)
        # How often the estimator ranks the best path first (ties to the cheaper path).
        result["estimator_top1"] = round(float(
            (preds.argmax(1) == estimator.targets.argmax(1)).float().mean()), 4)
    model.train(was_training)
    return result


def format_val(result: dict[str, Any]) -> str:
    text = "PSNR-Y " + "  ".join(f"{k} {v:.2f}" for k, v in result["psnr_y"].items())
    text += f"  (full {result['gain_db']:+.2f} dB over bicubic)"
    if "estimator_mae" in result:
        text += (f"; estimator MAE {result['estimator_mae_mean']:.2f} dB "
                 f"(" + ", ".join(f"{v:.2f}" for v in result["estimator_mae"].values()) + ")"
                 f", gain MAE {result['estimator_gain_mae']:.2f} dB"
                 f" (corr {result['estimator_gain_corr']:.2f})"
                 f", top-1 {100 * result['estimator_top1']:.0f}%")
    return text


def _set_trainable(model: EnafSR, phase: str,
                   config: EnafPhaseConfig) -> list[dict[str, Any]]:
    """requires_grad per phase; returns Adam's param groups (``base_lr`` drives the cosine)."""
    for p in model.parameters():
        p.requires_grad_(False)
    bb = model.backbone
    full_head = bb.heads[bb.num_paths - 2]
    rest: list[torch.nn.Parameter] = []
    if phase == "backbone":
        main = [*bb.segments.parameters(), *full_head.parameters()]
    elif phase == "exits":
        main = [p for head in bb.heads[:-1] for p in head.parameters()]
        if config.frozen_lr is not None:
            rest = [*bb.segments.parameters(), *full_head.parameters()]
    elif phase == "estimator":
        if config.context is not None:
            model.estimator.set_context(config.context)
        main = list(model.estimator.parameters())
    else:
        raise ConfigError(f"unknown phase {phase!r}; phases: {', '.join(PHASES)}")
    for p in (*main, *rest):
        p.requires_grad_(True)
    groups = [{"params": main, "lr": config.lr, "base_lr": config.lr}]
    if rest:
        groups.append({"params": rest, "lr": config.frozen_lr, "base_lr": config.frozen_lr})
    return groups


def _phase_loss(model: EnafSR, phase: str, lr: torch.Tensor, hr: torch.Tensor,
                trunk_trains: bool, l2: bool = False, tile_loss: float = 0.0) -> torch.Tensor:
    bb = model.backbone
    full = bb.num_paths - 1
    pixel_loss = F.mse_loss if l2 else F.l1_loss
    if phase == "backbone":
        return pixel_loss(bb.path_outputs(lr, (full,))[full], hr)
    if phase == "exits":
        paths = (1, 2, full) if trunk_trains else (1, 2)
        outs = bb.path_outputs(lr, paths)
        return torch.stack([pixel_loss(outs[p], hr) for p in paths]).sum()
    return _estimator_loss(model, lr, estimator_targets(model, lr, hr), tile_loss)


def _estimator_loss(model: EnafSR, lr: torch.Tensor, targets: torch.Tensor,
                    tile_loss: float = 0.0) -> torch.Tensor:
    """L1 on bicubic's PSNR and on every gain over it, per sub-tile when ``targets`` are maps:
    each sub-tile is trained on its own PSNRs, as it is read at inference, instead of the
    combined PSNR of the patch alone (which says nothing of which sub-tile holds the detail).
    ``tile_loss`` > 0 adds, with that weight, the same L1 on the combined PSNRs
    (``EnafPhaseConfig.tile_loss``)."""
    est = model.estimator
    if targets.dim() != 4:
        return F.l1_loss(est.to_gains(est(lr)), est.to_gains(targets))
    pred = est.psnr_map(lr, lr.shape[-1] // targets.shape[-1]).flatten(2).movedim(1, -1)
    targets = targets.flatten(2).movedim(1, -1)  # (N, sub-tiles, paths)
    loss = F.l1_loss(est.to_gains(pred), est.to_gains(targets))
    if tile_loss:
        loss = loss + tile_loss * F.l1_loss(est.to_gains(combine_psnr(pred, dim=1)),
                                            est.to_gains(combine_psnr(targets, dim=1)))
    return loss


@torch.no_grad()
def _init_estimator(model: EnafSR, sampler: PatchSampler, batch_size: int, seed: int,
                    device: torch.device, pool: LabelPool | None = None) -> None:
    if pool is not None:
        targets = pool.targets.to(device)
    else:
        phase = PHASES.index("estimator")
        batches = (sampler.batch(batch_size, step_generator(seed, phase, -1 - i), device)
                   for i in range(_ESTIMATOR_INIT_BATCHES))
        targets = torch.cat([estimator_targets(model, lr, hr) for lr, hr in batches])
    gains = model.estimator.to_gains(targets.movedim(1, -1))
    model.estimator.fc.bias.copy_(gains.reshape(-1, gains.shape[-1]).mean(0))


def _label_pool(model: EnafSR, sampler: PatchSampler, size: int, *, seed: int,
                device: torch.device, run: RunDir, console: Console | None, log: JsonlLog,
                stop: StopFlag | None, start: int, total: int) -> LabelPool:
    """:func:`label_pool` with a progress bar and a log entry; an interrupt keeps the chunks
    labelled so far (in the run directory) and writes no checkpoint."""
    display = _Display(console, "labels", size, 0)
    t0 = time.perf_counter()
    last = t0

    def progress(done: int, _: int) -> None:  # speed: patches per second over the last chunk
        nonlocal last
        now = time.perf_counter()
        display.update(done, None, _POOL_CHUNK / max(now - last, 1e-9))
        last = now

    try:
        pool = label_pool(model, sampler, size, seed=seed, device=device, path=run.label_pool,
                          on_progress=progress, stop=stop)
    except KeyboardInterrupt:
        log.write("interrupted", phase="estimator", step=start, total=total, checkpoint=None,
                  labelled=str(run.label_pool))
        raise TrainingInterrupted("estimator", start, total, None) from None
    finally:
        display.close()
    log.write("label_pool", size=size, seconds=round(time.perf_counter() - t0, 3),
              path=str(run.label_pool))
    return pool


@dataclass
class _EstimatorState:
    pool: LabelPool | None
    val: EstimatorVal | None


class EnafTask(TrainTask):
    """ENAF on the shared engine: phases backbone, exits, estimator."""

    name = "enaf"
    summary = "ENAF multi-exit CNNs: backbone, exit heads, PSNR estimator (3 phases)"
    phases = PHASES
    phases_config = EnafPhases
    configs = {"fsrcnn": "enaf_fsrcnn.yaml", "carn": "enaf_carn.yaml",
               "srresnet": "enaf_srresnet.yaml"}  # --backbone -> packaged config
    default_variant = "fsrcnn"

    def init_model(self, model: torch.nn.Module, config: Any) -> None:
        if config.full_head_init == "small":
            small_init_(model.backbone.heads[-1].output_layer)

    def param_groups(self, model: torch.nn.Module, phase: str,
                     config: PhaseConfig) -> list[dict[str, Any]]:
        return _set_trainable(model, phase, config)

    def prepare_phase(self, model: torch.nn.Module, phase: str, config: PhaseConfig,
                      ctx: PhaseContext) -> _EstimatorState | None:
        if phase != "estimator":
            return None
        pool = None
        if config.label_pool is not None:
            pool = _label_pool(model, ctx.sampler, config.label_pool, seed=ctx.seed,
                               device=ctx.device, run=ctx.run, console=ctx.console, log=ctx.log,
                               stop=ctx.stop, start=ctx.start, total=ctx.total)
        if ctx.start == 0:
            _init_estimator(model, ctx.sampler, config.batch_size, ctx.seed, ctx.device, pool)
        val = (estimator_val_set(model, ctx.val, ctx.sampler.lr_patch, ctx.device)
               if ctx.val is not None else None)
        return _EstimatorState(pool, val)

    def loss(self, model: torch.nn.Module, phase: str, config: PhaseConfig, state: Any,
             batch: Callable[[], tuple[torch.Tensor, torch.Tensor]], step: int,
             generator: torch.Generator, device: torch.device) -> torch.Tensor:
        tile_loss = config.tile_loss or 0.0
        if state is not None and state.pool is not None:
            return _estimator_loss(model, *state.pool.batch(config.batch_size, generator, device),
                                   tile_loss)
        lr, hr = batch()
        trunk_trains = phase == "exits" and config.frozen_lr is not None
        return _phase_loss(model, phase, lr, hr, trunk_trains, l2=step < config.l2_warmup,
                           tile_loss=tile_loss)

    def evaluate(self, model: torch.nn.Module, val: ValSet, device: torch.device,
                 state: Any = None) -> dict[str, Any]:
        return evaluate(model, val, device=device,
                        estimator=state.val if state is not None else None)

    def format_val(self, result: dict[str, Any]) -> str:
        return format_val(result)

    finish_phase = "calibrate"

    def finish(self, cfg: Any, weights: Path | None, *, console: Console | None = None) -> Any:
        """After export (or ``--phase calibrate``): the presets, calibrated on training
        images and written into the weights file."""
        return calibrate_presets(cfg, weights, console)


def calibrate_presets(cfg: Any, weights: Path | None, console: Console | None) -> Table:
    """Find the L/M/S presets on training images, store them in the weights file; the table
    of the settings that no other beats on both loss and FLOPs."""
    from sr_tile.models.enaf.calibrate import calibrate
    from sr_tile.train.calibration import judged_loss, start, unmet_caption, write_presets

    weights, _, on_image = start(cfg, weights, console)
    result = calibrate(cfg.model, weights, cfg.data.train_dir, scale=cfg.scale,
                       on_image=on_image)
    write_presets(weights, result)
    rows = result["table"]
    front, best = [], math.inf  # cheapest first; a row stays if it loses less than all cheaper
    for row in sorted(rows, key=lambda r: (r["flops_pct"], judged_loss(r))):
        if judged_loss(row) < best:
            front.append(row)
            best = judged_loss(row)
    table = Table(title=f"presets of {weights.name} (loss vs full network, "
                        f"{len(result['images'])} training images; the {len(front)} of "
                        f"{len(rows)} settings that no other beats on both)",
                  title_justify="left", caption=unmet_caption(result))
    for name in ("gamma", "eta", "PSNR-Y loss: worst image", "mean",
                 "FLOPs % (estimator incl.)", "preset"):
        table.add_column(name, justify="right")
    for row in reversed(front):
        marks = ",".join(k for k, v in result["presets"].items()
                         if (v["eta"], v["gamma"]) == (row["eta"], row["gamma"]))
        table.add_row(f"{row['gamma']:g}", f"{row['eta']:g}", f"{judged_loss(row):.3f} dB",
                      f"{row['loss_db']:.3f} dB", f"{row['flops_pct']:.1f}", marks)
    return table
