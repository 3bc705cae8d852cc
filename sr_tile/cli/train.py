"""``sr-tile train FAMILY``: train a model family from a YAML config, resumably.

Progress goes to stderr; the summary table to stdout. Ctrl-C or SIGTERM checkpoints the
last completed step; the same command with ``--resume`` continues it. Training code is
imported only when the command runs, so ``sr-tile upscale`` never loads it.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.markup import escape
from rich.table import Table

from sr_tile.cli._common import State, err, handle_errors, out
from sr_tile.errors import ConfigError
from sr_tile.models.registry import MODELS

_FAMILY_HELP = "Model family to train: " + ", ".join(sorted(  # from the registry, torch-free
    {entry.family for entry in MODELS.values() if entry.train is not None})) + "."
_PHASE_HELP = ("Phases to run: all, or one of the family's (ENAF: backbone, exits, estimator, "
               "and calibrate, its presets (and router) on training images; all ends with it. "
               "AdaFormer: train, then calibrate, its eps_h presets; TADT: baseline, tadt; "
               "IET: train).")


def _command_line(family: str, options: list[tuple[str, Any]], sets: list[str]) -> str:
    parts = ["sr-tile", "train", family]
    for flag, value in options:
        if value is None or value is False:
            continue
        parts += [flag] if value is True else [flag, str(value)]
    for item in sets:
        parts += ["--set", item]
    return shlex.join(parts)


def _summary(result: Any, task: Any) -> Table:
    table = Table(title=f"sr-tile train: {result.run_dir}", title_justify="left")
    for name in ("phase", "steps", "batch", "time", "validation"):
        table.add_column(name, justify="left" if name in ("phase", "validation") else "right")
    for phase, entry in result.history.items():
        val = entry.get("val")
        table.add_row(phase, str(entry["steps"]), str(entry.get("batch_size", "-")),
                      f"{entry['seconds'] / 60:.1f} min",
                      escape(task.format_val(val)) if val else "-")
    return table


@handle_errors
def train(
    family: Annotated[str, typer.Argument(help=_FAMILY_HELP)],
    backbone: Annotated[Optional[str], typer.Option(
        "--backbone", "-b", help="The family's packaged config to use (ENAF: fsrcnn (default), carn "
                                 "or srresnet; AdaFormer and TADT: light (default) or the "
                                 "paper's size, adaformer / tadt; IET: light).")] = None,
    config: Annotated[Optional[Path], typer.Option(
        "--config", "-c", help="YAML config (default: the packaged one of --backbone).")] = None,
    phase: Annotated[str, typer.Option(help=_PHASE_HELP)] = "all",
    run_dir: Annotated[Optional[Path], typer.Option(
        help="Run folder: config, log, checkpoints (default: the config's run_dir).")] = None,
    resume: Annotated[bool, typer.Option(
        help="Continue the run in --run-dir from its last checkpoint.")] = False,
    device: Annotated[Optional[str], typer.Option(
        help="cpu, cuda, cuda:N or auto (default: the config's).")] = None,
    steps_scale: Annotated[float, typer.Option(
        help="Multiply every phase's steps (quick runs, e.g. 0.01).")] = 1.0,
    export: Annotated[Optional[Path], typer.Option(
        help="Where the final weights go (default: <run-dir>/<model>-x<scale>.safetensors).")
    ] = None,
    set_: Annotated[Optional[list[str]], typer.Option(
        "--set", help="Override a config value: key=value (YAML), repeatable, e.g. "
                      "--set phases.backbone.steps=200.")] = None,
) -> None:
    """Train a model family on the shared engine and export weights with their metadata."""
    from sr_tile.train import (TrainingInterrupted, default_config, get_family, load_config,
                               run_training, scale_steps)

    task = get_family(family)
    sets = list(set_ or [])
    if backbone is not None and config is not None:
        raise ConfigError("give --backbone or --config, not both")
    config_path = config or default_config(family, backbone or task.default_variant)
    finish = (task.finish_phase,) if task.finish_phase else ()
    phases = task.phases if phase in ("all", *finish) else (phase,)
    if phase not in ("all", *finish, *task.phases):
        raise ConfigError(f"--phase must be all or one of {', '.join((*task.phases, *finish))}, "
                          f"not {phase!r}")
    values: dict[str, Any] = {}
    if run_dir is not None:
        values["run_dir"] = str(run_dir)
    if device is not None:
        values["device"] = device
    if export is not None:
        values["export"] = str(export)
    cfg = load_config(config_path, sets, values=values)
    if steps_scale != 1.0:
        cfg = scale_steps(cfg, steps_scale)

    command = _command_line(family, [
        ("--backbone", backbone), ("--config", config), ("--phase", None if phase == "all"
                                                         else phase),
        ("--run-dir", run_dir), ("--resume", resume), ("--device", device),
        ("--steps-scale", None if steps_scale == 1.0 else steps_scale), ("--export", export),
    ], sets)
    if phase in finish:
        out.print(task.finish(cfg, None, console=err))
        return
    err.print(f"training {escape(cfg.model)} x{cfg.scale} in {escape(str(cfg.run_dir))}",
              highlight=False)
    try:
        result = run_training(cfg, phases=phases, resume=resume, console=err, command=command)
    except TrainingInterrupted as exc:
        where = f"{exc.phase} step {exc.step}/{exc.total}"
        if exc.checkpoint is not None:
            err.print(f"[yellow]interrupted[/] at {where}; checkpoint saved to "
                      f"{escape(str(exc.checkpoint))}. Continue with the same command plus "
                      f"--resume.", highlight=False)
        else:
            err.print(f"[yellow]interrupted[/] at {where}; the last periodic checkpoint "
                      "remains. Continue with the same command plus --resume.", highlight=False)
        State.interrupt_reported = True  # this line says it; no second "interrupted" line
        raise typer.Exit(exc.exit_code) from None
    out.print(_summary(result, task))
    if result.export_path is not None:
        out.print(f"weights: {result.export_path}", highlight=False)
        if phase == "all" and task.finish_phase:
            out.print(task.finish(cfg, result.export_path, console=err))


