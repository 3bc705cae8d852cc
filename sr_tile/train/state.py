"""Training checkpoints: one safetensors file, written atomically, never unpickled.

``last.safetensors`` holds the model tensors (``model.*``), the optimizer's per-parameter
tensors (``optim.<index>.<name>``) and, in its metadata, a JSON document with everything else
(phase, step, history of finished phases, optimizer hyper-parameters). Being one file, it is
replaced by a single rename: a crash while saving leaves the previous checkpoint intact.
``last.json`` next to it repeats the state for humans; loading never reads it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import nn

from sr_tile.errors import ConfigError
from sr_tile.io.atomic import write_json_atomic
from sr_tile.models.checkpoint import save_safetensors

__all__ = ["CHECKPOINT_FORMAT", "Checkpoint", "RunDir", "load_checkpoint", "save_checkpoint"]

CHECKPOINT_FORMAT = "sr-tile-train-checkpoint-1"
_MODEL = "model."
_OPTIM = "optim."


@dataclass
class Checkpoint:
    """What a checkpoint restores: ``phase`` at ``step`` (steps completed) of ``total``.

    ``done``: the phase finished; ``history``: per finished phase, what the run recorded
    (steps, seconds, final validation).
    """

    phase: str
    step: int
    total: int
    done: bool
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any] | None
    history: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RunDir:
    """The files of one run."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def log(self) -> Path:
        return self.root / "log.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def last(self) -> Path:
        return self.checkpoints / "last.safetensors"

    @property
    def label_pool(self) -> Path:
        """The estimator's labelled patches (see ``PhaseConfig.label_pool``)."""
        return self.checkpoints / "label-pool.safetensors"

    def phase_weights(self, phase: str) -> Path:
        """The model after ``phase`` (save_weights format: usable as ``init``)."""
        return self.checkpoints / f"after-{phase}.safetensors"


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for index, per_param in state["state"].items():
        for name, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{_OPTIM}{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    per_param: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        index, name = key[len(_OPTIM):].split(".", 1)
        per_param.setdefault(int(index), {})[name] = value
    for key, value in meta.get("scalars", {}).items():
        index, name = key.split(".", 1)
        per_param.setdefault(int(index), {})[name] = value
    groups = []
    for group in meta["param_groups"]:
        group = dict(group)
        if isinstance(group.get("betas"), list):
            group["betas"] = tuple(group["betas"])
        groups.append(group)
    return {"state": per_param, "param_groups": groups}


def save_checkpoint(path: Path, *, model: nn.Module, optimizer: torch.optim.Optimizer | None,
                    phase: str, step: int, total: int, done: bool,
                    history: dict[str, Any], extra: dict[str, Any] | None = None) -> Path:
    """Write model + optimizer + training state to ``path`` atomically."""
    tensors = {_MODEL + k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    optim_meta = None
    if optimizer is not None:
        optim_tensors, optim_meta = _flatten_optimizer(optimizer.state_dict())
        tensors.update(optim_tensors)
    state = {"format": CHECKPOINT_FORMAT, "phase": phase, "step": step, "total": total,
             "done": done, "history": history, "extra": extra or {}}
    metadata = {"format": CHECKPOINT_FORMAT, "state": json.dumps(state),
                "optimizer": json.dumps(optim_meta)}
    save_safetensors(tensors, path, metadata)
    write_json_atomic(path.with_suffix(".json"), state)
    return path


def load_checkpoint(path: Path) -> Checkpoint:
    if not path.is_file():
        raise ConfigError(f"{path}: no checkpoint to resume from")
    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = dict(fh.metadata() or {})
        tensors = load_file(str(path))
        if metadata.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"format {metadata.get('format')!r}")
        state = json.loads(metadata["state"])
        optim_meta = json.loads(metadata["optimizer"])
    except (SafetensorError, OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"{path}: not a readable training checkpoint ({exc})") from None
    model = {k[len(_MODEL):]: v for k, v in tensors.items() if k.startswith(_MODEL)}
    optim = None
    if optim_meta is not None:
        optim = _unflatten_optimizer(
            {k: v for k, v in tensors.items() if k.startswith(_OPTIM)}, optim_meta)
    return Checkpoint(phase=state["phase"], step=int(state["step"]), total=int(state["total"]),
                      done=bool(state["done"]), model=model, optimizer=optim,
                      history=state.get("history", {}), extra=state.get("extra", {}))
