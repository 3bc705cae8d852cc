"""A whole run from a :class:`TrainConfig`: build the objects, run the phases, export.

This is the only place that turns a config into objects (model via ``create_model``, the
family's task from its registry row, data, run folder, resume state);
:func:`~sr_tile.train.engine.train_phase` then receives them. Nothing here is one family's.
"""

from __future__ import annotations

import hashlib
import os
import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from rich.console import Console

from sr_tile.errors import ConfigError
from sr_tile.io.atomic import write_bytes_atomic
from sr_tile.models.checkpoint import read_metadata, save_weights
from sr_tile.models.registry import create_model, training_task
from sr_tile.train.config import TrainConfig, config_to_dict, dump_config, resume_conflicts
from sr_tile.train.data import (LR_METHOD, ImagePair, LoadStats, PatchSampler, ValSet,
                                list_images, load_pairs, make_val_set)
from sr_tile.train.engine import JsonlLog, StepInfo, TrainTask, catch_stop_signals, train_phase
from sr_tile.train.state import Checkpoint, RunDir, load_checkpoint

__all__ = ["TrainResult", "build_data", "export_weights", "hardware_string",
           "resolve_device", "run_training"]


@dataclass
class TrainResult:
    run_dir: Path
    model: torch.nn.Module  # the trained model, in eval mode
    export_path: Path | None
    history: dict[str, Any]
    val: dict[str, Any] | None
    phases_run: list[str] = field(default_factory=list)
    data_seconds: float = 0.0


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name}: CUDA is not available on this machine "
                              "(use --device cpu)")
        device = torch.device(name)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device {name}: only {torch.cuda.device_count()} GPU(s)")
        return device
    return torch.device(name)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def hardware_string(device: torch.device) -> str:
    """What trained the weights, e.g. ``CPU AMD EPYC (2 cores, 2 torch threads), torch 2.x``."""
    if device.type == "cuda":
        return (f"GPU {torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda}), "
                f"torch {torch.__version__}")
    return (f"CPU {_cpu_name()} ({os.cpu_count()} cores, {torch.get_num_threads()} torch "
            f"threads), torch {torch.__version__}")


def _data_info(folder: str, pairs: Sequence[ImagePair]) -> dict[str, Any]:
    combined = hashlib.sha256("".join(sorted(p.digest for p in pairs)).encode()).hexdigest()
    return {"dir": folder, "images": len(pairs), "sha256": combined,
            "files": [p.name for p in pairs]}


def build_data(cfg: TrainConfig, *, console: Console | None = None, need_train: bool = True
               ) -> tuple[PatchSampler | None, ValSet | None, dict[str, Any], LoadStats]:
    """The train sampler (when ``need_train``), the val crops, and what they were made of
    (for the weights' metadata)."""
    data = cfg.data
    cache = data.cache_dir or str(Path(cfg.run_dir) / "lr-cache")
    total = LoadStats()

    def progress(label: str) -> Callable[[int, int, str, bool], None]:
        def on_image(index: int, count: int, name: str, cached: bool) -> None:
            if console is not None:
                console.print(f"[dim]{label} {index}/{count} {name} "
                              f"({'LR from cache' if cached else 'LR computed'})[/]",
                              highlight=False)
        return on_image

    def add(stats: LoadStats) -> None:
        total.images += stats.images
        total.lr_computed += stats.lr_computed
        total.lr_cached += stats.lr_cached
        total.seconds += stats.seconds
        total.hr_bytes += stats.hr_bytes

    info: dict[str, Any] = {
        "lr": f"{LR_METHOD}: HR mod-cropped to x{cfg.scale}, LR = MATLAB antialiased bicubic "
              f"1/{cfg.scale} of the whole image, uint8",
        "train": {"dir": data.train_dir},
    }
    sampler = None
    if need_train:
        pairs, stats = load_pairs(data.train_dir, scale=cfg.scale, cache_dir=cache,
                                  label="data.train_dir", on_image=progress("train"))
        add(stats)
        sampler = PatchSampler(pairs, scale=cfg.scale, lr_patch=data.lr_patch,
                               augment=data.augment)
        info["train"] = _data_info(data.train_dir, pairs)
    val = None
    if data.val_dir is not None:
        val_pairs, stats = load_pairs(data.val_dir, scale=cfg.scale, cache_dir=cache,
                                      label="data.val_dir", on_image=progress("val"))
        add(stats)
        val = make_val_set(val_pairs, scale=cfg.scale, val_patch=data.val_patch,
                           val_crops=data.val_crops)
        info["val"] = {**_data_info(data.val_dir, val_pairs), "protocol": val.protocol}
        del val_pairs  # only the crops are kept
    return sampler, val, info, total


def export_weights(model: torch.nn.Module, cfg: TrainConfig, path: Path, *,
                   history: dict[str, Any], val: dict[str, Any] | None,
                   data_info: dict[str, Any], hardware: str, command: str | None,
                   phases: Sequence[str]) -> Path:
    """The final weights with the metadata that shipped weights must carry."""
    extra: dict[str, Any] = {
        "config": config_to_dict(cfg),
        "iterations": {p: int(history.get(p, {}).get("steps", 0)) for p in phases},
        "batch_size": {p: history[p]["batch_size"] for p in phases if p in history},
        "phases_done": [p for p in phases if p in history],
        "train_seconds": {p: history[p]["seconds"] for p in phases if p in history},
        "hardware": hardware,
        "command": command,
        "data": data_info,
    }
    if cfg.init is not None:  # the phases this run did not redo: how they were trained
        prior = read_metadata(cfg.init)
        extra["init"] = {k: prior[k] for k in ("command", "iterations", "batch_size",
                                               "train_seconds", "hardware", "init") if k in prior}
    if val is not None:
        extra["val_psnr_y"] = val["psnr_y"]  # every task: {path or mode: mean PSNR-Y}
        extra["val"] = val
    return save_weights(model, path, name=cfg.model, scale=cfg.scale, extra=extra)


def _check_phase_order(task: TrainTask, phases: Sequence[str] | None) -> list[str]:
    if phases is None:
        return list(task.phases)
    unknown = [p for p in phases if p not in task.phases]
    if unknown:
        raise ConfigError(f"unknown phase {unknown[0]!r}; phases: {', '.join(task.phases)}")
    return [p for p in task.phases if p in phases]


def run_training(cfg: TrainConfig, *, phases: Sequence[str] | None = None, resume: bool = False,
                 console: Console | None = None,
                 callbacks: Sequence[Callable[[StepInfo], None]] = (),
                 command: str | None = None, export: bool = True) -> TrainResult:
    """Run the requested phases of ``cfg`` in ``cfg.run_dir`` and export the weights.

    ``resume``: continue from ``<run_dir>/checkpoints/last.safetensors``: finished phases are
    skipped, an unfinished one continues at its step. Without it, a run folder that already
    holds a checkpoint is refused. Raises TrainingInterrupted after checkpointing on Ctrl-C,
    SIGTERM or a KeyboardInterrupt raised by a callback.
    """
    task = training_task(cfg.model)
    selected = _check_phase_order(task, phases)
    run = RunDir(Path(cfg.run_dir))
    device = resolve_device(cfg.device)
    list_images(cfg.data.train_dir, "data.train_dir")  # fail fast, before any work
    if cfg.data.val_dir is not None:
        list_images(cfg.data.val_dir, "data.val_dir")
    if cfg.init is not None and not Path(cfg.init).is_file():
        raise ConfigError(f"init: {cfg.init!r} is not a file")

    ckpt: Checkpoint | None = None
    if resume:
        if not run.last.is_file():
            raise ConfigError(f"--resume: {run.root} has no checkpoint "
                              f"({run.last.relative_to(run.root)})")
        if run.config.is_file():
            saved = yaml.safe_load(run.config.read_text(encoding="utf-8")) or {}
            conflicts = resume_conflicts(saved, cfg)
            if conflicts:
                raise ConfigError(
                    f"--resume: the config differs from the run's {run.config} in "
                    f"{', '.join(conflicts)}; resume with the same config and --steps-scale")
        ckpt = load_checkpoint(run.last)
    elif run.last.exists():
        raise ConfigError(f"{run.root} already holds a checkpoint; pass --resume to continue "
                          "it, or choose another --run-dir")
    write_bytes_atomic(run.config, dump_config(cfg))
    log = JsonlLog(run.log)

    threads_before = torch.get_num_threads()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    try:
        return _run(task, cfg, run, device, ckpt, selected, resume=resume, console=console,
                    callbacks=callbacks, command=command, export=export, log=log)
    finally:
        torch.set_num_threads(threads_before)


def _run(task: TrainTask, cfg: TrainConfig, run: RunDir, device: torch.device,
         ckpt: Checkpoint | None,
         selected: Sequence[str], *, resume: bool, console: Console | None,
         callbacks: Sequence[Callable[[StepInfo], None]], command: str | None, export: bool,
         log: JsonlLog) -> TrainResult:
    torch.manual_seed(cfg.seed)
    model = create_model(cfg.model, scale=cfg.scale, weights=cfg.init or False)
    if cfg.init is None and ckpt is None:
        task.init_model(model, cfg)
    if ckpt is not None:
        try:
            model.load_state_dict(ckpt.model)
        except RuntimeError as exc:
            raise ConfigError(f"{run.last}: does not fit {cfg.model} x{cfg.scale} "
                              f"({str(exc).splitlines()[0]})") from None
    model.to(device)
    history: dict[str, Any] = dict(ckpt.history) if ckpt is not None else {}

    plan = []
    for name in selected:
        if name in history:
            if console is not None:
                console.print(f"[dim]{name}: already done in this run, skipped[/]")
        elif cfg.phases.get(name).steps > 0:
            plan.append(name)
    if ckpt is not None and not ckpt.done and ckpt.phase not in plan:
        raise ConfigError(f"phase {ckpt.phase} is unfinished ({ckpt.step}/{ckpt.total} steps); "
                          f"resume it with --phase {ckpt.phase} or --phase all")
    first = task.phases[0]
    if (console is not None and first not in history and first not in plan
            and cfg.init is None and plan):
        console.print(f"[yellow]warning:[/] the model is untrained (no phase {first} and no "
                      "init weights)")

    hardware = hardware_string(device)
    log.write("run_start", model=cfg.model, scale=cfg.scale, phases=plan, resume=resume,
              device=str(device), hardware=hardware, command=command)
    sampler, val, data_info, stats = build_data(cfg, console=console, need_train=bool(plan))
    log.write("data", images=stats.images, lr_computed=stats.lr_computed,
              lr_cached=stats.lr_cached, seconds=round(stats.seconds, 3),
              megabytes=round(stats.hr_bytes / 2**20, 1))
    if console is not None:
        console.print(f"data: {stats.images} images ({stats.lr_computed} LR computed, "
                      f"{stats.lr_cached} from cache) in {stats.seconds:.1f} s, "
                      f"{stats.hr_bytes / 2**20:.0f} MiB in RAM; device {device}",
                      highlight=False)

    with catch_stop_signals() as stop:
        for name in plan:
            assert sampler is not None
            resume_state = ckpt if (ckpt is not None and ckpt.phase == name
                                    and not ckpt.done) else None
            train_phase(task, model, name, cfg.phases.get(name), sampler=sampler, run=run,
                        seed=cfg.seed, device=device, val=val, resume=resume_state,
                        history=history, callbacks=callbacks, console=console, log=log,
                        stop=stop)
            save_weights(model, run.phase_weights(name), name=cfg.model, scale=cfg.scale,
                         extra={"phase": name, "config": config_to_dict(cfg)})

    final_val = None
    done_phases = [p for p in task.phases if p in history]
    if done_phases and history[done_phases[-1]].get("val") is not None:
        final_val = history[done_phases[-1]]["val"]
    elif val is not None:
        final_val = task.evaluate(model, val, device)
        if console is not None:
            console.print(f"final: {task.format_val(final_val)}", highlight=False)

    export_path = None
    if export:
        export_path = export_weights(
            model, cfg, cfg.export_path, history=history, val=final_val, data_info=data_info,
            hardware=hardware, command=command, phases=task.phases)
        log.write("export", path=str(export_path), phases_done=done_phases)
        missing = [p for p in task.phases  # an optional phase set to 0 steps is not missing
                   if p not in history and cfg.phases.get(p).steps > 0]
        if missing and console is not None:
            console.print(f"[yellow]warning:[/] exported with phases {', '.join(missing)} not "
                          "trained")
    model.eval()
    return TrainResult(run_dir=run.root, model=model, export_path=export_path, history=history,
                       val=final_val, phases_run=plan, data_seconds=stats.seconds)

