"""The training engine every family shares: one plain loop per phase, fed with built objects.

A family plugs in a :class:`TrainTask` (its phases, which parameters each trains, its loss,
what it prepares before a phase, its evaluation); the engine does the rest, the same for
every family: Adam with cosine decay from each group's learning rate to ``lr_min``, batches
from :func:`~sr_tile.train.data.step_generator` (seed, phase, step) so that a run resumed
from a checkpoint continues exactly as the uninterrupted run would have, atomic checkpoints
every ``ckpt_every`` steps, validation every ``val_every``, a JSON-lines log, a progress bar,
and SIGTERM / Ctrl-C that checkpoint the last completed step.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

from sr_tile.errors import ConfigError
from sr_tile.train.config import PhaseConfig
from sr_tile.train.data import PatchSampler, ValSet, step_generator
from sr_tile.train.state import Checkpoint, RunDir, save_checkpoint

__all__ = [
    "JsonlLog", "PhaseContext", "PhaseResult", "StepInfo", "StopFlag", "TrainTask",
    "TrainingInterrupted", "catch_stop_signals", "cosine_lr", "train_phase",
]


def cosine_lr(step: int, total: int, base: float, lr_min: float) -> float:
    """Learning rate of ``step`` (0-based) of ``total``: cosine from ``base`` to ``lr_min``."""
    floor = min(lr_min, base)
    if total <= 1:
        return base
    return floor + (base - floor) * 0.5 * (1.0 + math.cos(math.pi * step / total))


class JsonlLog:
    """Append-only JSON-lines log of a run (one object per event)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path

    def write(self, event: str, **fields: Any) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        record = {"time": round(time.time(), 3), "event": event, **fields}
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, default=str) + "\n")


@dataclass
class StopFlag:
    """Set by SIGTERM / the first Ctrl-C; the loop stops at the next step boundary."""

    requested: str | None = None


@contextlib.contextmanager
def catch_stop_signals() -> Iterator[StopFlag]:
    """SIGTERM and SIGINT ask the loop to checkpoint and stop after the current step (a
    second Ctrl-C interrupts at once; the last periodic checkpoint is then what remains)."""
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def on_signal(signum: int, frame: Any) -> None:
        if flag.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        flag.requested = signal.Signals(signum).name

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped early; ``checkpoint`` (None if none could be written) resumes it."""

    def __init__(self, phase: str, step: int, total: int, checkpoint: Path | None,
                 signal_name: str | None = None) -> None:
        where = f"{phase} step {step}/{total}"
        saved = f"checkpoint {checkpoint}" if checkpoint else "no new checkpoint"
        super().__init__(f"training interrupted at {where}; {saved}")
        self.phase, self.step, self.total, self.checkpoint = phase, step, total, checkpoint
        self.signal_name = signal_name  # "SIGTERM"... when a stop signal asked for it

    @property
    def exit_code(self) -> int:
        """128 + the signal (SIGTERM: 143), 130 for Ctrl-C or a callback's interrupt."""
        known = self.signal_name in signal.Signals.__members__
        return 128 + (signal.Signals[self.signal_name] if known else signal.SIGINT)


@dataclass(frozen=True)
class StepInfo:
    """What a callback sees after every optimizer step (``step`` = steps completed)."""

    phase: str
    step: int
    total: int
    loss: float
    lr: float


@dataclass
class PhaseResult:
    phase: str
    steps: int
    start_step: int
    seconds: float
    losses: list[float] = field(default_factory=list)  # this session's steps only
    val: dict[str, Any] | None = None


class _Display:
    """A rich progress bar on ``console`` (none when it is None)."""

    def __init__(self, console: Console | None, phase: str, total: int, start: int) -> None:
        self.console = console
        self.progress: Progress | None = None
        if console is None:
            return
        self.progress = Progress(
            TextColumn(f"[bold]{phase}[/]"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[speed]}"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=console, transient=False)
        self.task = self.progress.add_task(phase, total=total, completed=start, loss="-",
                                           speed="- it/s")
        self.progress.start()

    def update(self, step: int, loss: float | None, its: float) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=step,
                                 loss="-" if loss is None else f"{loss:.4f}",
                                 speed=f"{its:.1f} it/s")

    def print(self, text: str) -> None:
        if self.progress is not None:
            self.progress.console.print(text, highlight=False)
        elif self.console is not None:
            self.console.print(text, highlight=False)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


@dataclass
class PhaseContext:
    """What a task's ``prepare_phase`` may use: the data, the run folder, the log, the
    console, the stop flag, and where the phase starts (``start`` > 0: a resumed phase)."""

    sampler: PatchSampler
    run: RunDir
    seed: int
    device: torch.device
    val: ValSet | None
    console: Console | None
    log: JsonlLog
    stop: StopFlag | None
    start: int
    total: int


class TrainTask:
    """A family's part of training. Subclass it in the family's package and name it in the
    family's registry rows; the engine calls:

    * ``init_model(model, config)``: set up a fresh model (an init scheme the config names);
    * ``param_groups(model, phase, config)``: freeze what the phase does not train; Adam's
      groups (each with ``base_lr``, which the cosine schedule decays); by default every
      parameter at the phase's lr;
    * ``prepare_phase(model, phase, config, ctx)``: anything computed before the steps (a
      label pool, an output bias); returns the phase's state, passed back below;
    * ``loss(model, phase, config, state, batch)``: the loss of one step, where ``batch()``
      draws this step's (LR, HR) patches (a task that trains on something else ignores it);
    * ``evaluate(model, val, device, state)`` and ``format_val(result)``.
    """

    name = ""
    summary = ""
    phases: tuple[str, ...] = ()
    phases_config: type = object  # the family's PhasesConfig subclass (typed phase settings)
    configs: dict[str, str] = {}  # --backbone (or variant) -> packaged config file
    default_variant = ""  # the key of ``configs`` that a bare ``sr-tile train FAMILY`` uses
    finish_phase: str | None = None  # a step after export (ENAF: calibrate), or None

    def finish(self, cfg: Any, weights: Path | None, *, console: Console | None = None) -> Any:
        """Run after export, and alone as ``--phase <finish_phase>``; returns what to print."""
        return None

    def init_model(self, model: torch.nn.Module, config: Any) -> None:
        """A fresh model (no init weights, no checkpoint) before its first phase."""

    def param_groups(self, model: torch.nn.Module, phase: str,
                     config: PhaseConfig) -> list[dict[str, Any]]:
        """Default: every parameter trains at ``config.lr``."""
        params = list(model.parameters())
        for p in params:
            p.requires_grad_(True)
        return [{"params": params, "lr": config.lr, "base_lr": config.lr}]

    def prepare_phase(self, model: torch.nn.Module, phase: str, config: PhaseConfig,
                      ctx: PhaseContext) -> Any:
        return None

    def loss(self, model: torch.nn.Module, phase: str, config: PhaseConfig, state: Any,
             batch: Callable[[], tuple[torch.Tensor, torch.Tensor]], step: int,
             generator: torch.Generator, device: torch.device) -> torch.Tensor:
        raise NotImplementedError

    def evaluate(self, model: torch.nn.Module, val: ValSet, device: torch.device,
                 state: Any = None) -> dict[str, Any]:
        raise NotImplementedError

    def format_val(self, result: dict[str, Any]) -> str:
        return ", ".join(f"{k} {v}" for k, v in result.items())


def train_phase(task: TrainTask, model: torch.nn.Module, phase: str, config: PhaseConfig, *,
                sampler: PatchSampler, run: RunDir, seed: int, device: torch.device,
                val: ValSet | None = None,
                resume: Checkpoint | None = None, history: dict[str, Any] | None = None,
                callbacks: Sequence[Callable[[StepInfo], None]] = (),
                console: Console | None = None, log: JsonlLog | None = None,
                stop: StopFlag | None = None) -> PhaseResult:
    """Train ``phase`` for ``config.steps`` steps (from ``resume``'s step when it is this
    phase's unfinished checkpoint) and write checkpoints to ``run.last``.

    ``history`` (finished phases) is stored in every checkpoint; this phase's entry is added
    when it finishes. A KeyboardInterrupt (a callback may raise one) or a stop request
    checkpoints the last completed step and raises :class:`TrainingInterrupted`.
    """
    if phase not in task.phases:
        raise ConfigError(f"unknown phase {phase!r}; phases: {', '.join(task.phases)}")
    history = history if history is not None else {}
    log = log or JsonlLog(None)
    phase_index = task.phases.index(phase)
    total = config.steps
    model.to(device)
    groups = task.param_groups(model, phase, config)
    params = [p for g in groups for p in g["params"]]
    optimizer = torch.optim.Adam(groups, lr=config.lr, betas=(0.9, 0.999))

    start, seconds_before = 0, 0.0
    if resume is not None and resume.phase == phase and not resume.done:
        if resume.total != total:
            raise ConfigError(f"the checkpoint is for {resume.total} {phase} steps, the config "
                              f"asks for {total}; resume with the same config")
        if resume.optimizer is None:
            raise ConfigError(f"the {phase} checkpoint has no optimizer state")
        optimizer.load_state_dict(resume.optimizer)
        start = resume.step
        seconds_before = float(resume.extra.get("phase_seconds", 0.0))
    state = task.prepare_phase(model, phase, config, PhaseContext(
        sampler, run, seed, device, val, console, log, stop, start, total))

    started = time.perf_counter()

    def elapsed() -> float:
        return seconds_before + time.perf_counter() - started

    def checkpoint(step: int, done: bool) -> Path:
        path = save_checkpoint(run.last, model=model, optimizer=optimizer, phase=phase,
                               step=step, total=total, done=done, history=history,
                               extra={"phase_seconds": round(elapsed(), 3)})
        log.write("checkpoint", phase=phase, step=step, done=done, path=str(path))
        return path

    log.write("phase_start", phase=phase, step=start, total=total, lr=config.lr,
              batch_size=config.batch_size, trainable=sum(p.numel() for p in params))
    display = _Display(console, phase, total, start)
    result = PhaseResult(phase=phase, steps=total, start_step=start, seconds=0.0)
    done_steps, in_update = start, False
    ema, window_loss, window_n = None, 0.0, 0
    window_start, its = time.perf_counter(), 0.0
    try:
        model.train()
        for step in range(start, total):
            for group in optimizer.param_groups:
                group["lr"] = cosine_lr(step, total, group["base_lr"], config.lr_min)
            generator = step_generator(seed, phase_index, step)
            loss = task.loss(model, phase, config, state,
                             lambda g=generator: sampler.batch(config.batch_size, g, device),
                             step, generator, device)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if step == config.l2_warmup > 0:
                # The switch from L2 to L1 scales the gradients up ~100x at once; Adam's
                # second moments, fitted to L2's, then let the first L1 steps grow ~30x too
                # large (they adapt over ~1/(1 - beta2) = 1000 steps). Two TADT-light runs
                # collapsed there (LIIF's hidden ReLUs 18 % -> 99.8 % dead by the next
                # validation, the output back to bicubic). Adam starts afresh instead.
                optimizer.state.clear()
            if config.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            in_update = True
            optimizer.step()
            in_update = False
            done_steps = step + 1

            value = float(loss.detach())
            result.losses.append(value)
            ema = value if ema is None else 0.98 * ema + 0.02 * value
            window_loss, window_n = window_loss + value, window_n + 1
            if window_n >= config.log_every or done_steps == total:
                now = time.perf_counter()
                its = window_n / max(now - window_start, 1e-9)
                log.write("train", phase=phase, step=done_steps, total=total,
                          loss=round(window_loss / window_n, 6),
                          lr=optimizer.param_groups[0]["lr"], it_s=round(its, 3))
                window_loss, window_n, window_start = 0.0, 0, now
            elif done_steps - start <= 10:  # a first speed estimate early on
                its = (done_steps - start) / max(time.perf_counter() - started, 1e-9)
            display.update(done_steps, ema, its)

            info = StepInfo(phase, done_steps, total, value, optimizer.param_groups[0]["lr"])
            for callback in callbacks:
                callback(info)
            if val is not None and done_steps % config.val_every == 0 and done_steps < total:
                t_val = time.perf_counter()
                scores = task.evaluate(model, val, device, state)
                log.write("val", phase=phase, step=done_steps, **scores)
                display.print(f"{phase} {done_steps}/{total}: {task.format_val(scores)}")
                window_start += time.perf_counter() - t_val  # keep it/s about training
            if done_steps % config.ckpt_every == 0 and done_steps < total:
                checkpoint(done_steps, False)
            if stop is not None and stop.requested is not None:
                raise KeyboardInterrupt(stop.requested)
    except KeyboardInterrupt as exc:
        display.close()
        if isinstance(exc, TrainingInterrupted):
            raise
        path = None if in_update else checkpoint(done_steps, False)
        log.write("interrupted", phase=phase, step=done_steps, total=total,
                  checkpoint=str(path) if path else None)
        name = exc.args[0] if exc.args and isinstance(exc.args[0], str) else None
        raise TrainingInterrupted(phase, done_steps, total, path, name) from None
    finally:
        display.close()

    if val is not None:
        result.val = task.evaluate(model, val, device, state)
        log.write("val", phase=phase, step=total, **result.val)
        if console is not None:
            console.print(f"{phase} done: {task.format_val(result.val)}", highlight=False)
    result.seconds = round(elapsed(), 3)
    history[phase] = {"steps": total, "seconds": result.seconds,
                      "batch_size": config.batch_size, "val": result.val}
    checkpoint(total, True)
    log.write("phase_end", phase=phase, steps=total, seconds=result.seconds, val=result.val)
    return result
