"""Typed training configs: frozen dataclasses loaded from YAML with ``yaml.safe_load``.

A config is validated completely before anything is built: an unknown key, a value of the
wrong type or out of range is a :class:`~sr_tile.errors.ConfigError` that names the key
(``phases.backbone.lr: must be > 0, got -0.001``). Relative paths are resolved against the
current directory, so the resolved config saved next to a run holds absolute paths.

Overrides are ``dotted.key=value`` strings whose value is parsed as YAML
(``phases.backbone.steps=200``, ``data.val_dir=null``).
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import yaml

from sr_tile.errors import ConfigError, UsageError

__all__ = [
    "DataConfig", "PhaseConfig", "invalid", "PhasesConfig", "TrainConfig", "config_to_dict",
    "dump_config", "from_dict", "load_config", "parse_override", "resume_conflicts",
    "scale_steps", "with_overrides",
]

_FLOAT_RE = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
DEVICES = ("auto", "cpu", "cuda")


class _Invalid(ConfigError):
    """A bad value, raised by a dataclass with the field name; the loader adds the path."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


def invalid(key: str, message: str) -> ConfigError:
    """The error a config dataclass raises for a bad field (the loader adds the path)."""
    return _Invalid(key, message)


def _positive(key: str, value: float) -> None:
    if not value > 0 or (isinstance(value, float) and not math.isfinite(value)):
        raise _Invalid(key, f"must be > 0, got {value!r}")


def _non_negative(key: str, value: float) -> None:
    if not value >= 0 or (isinstance(value, float) and not math.isfinite(value)):
        raise _Invalid(key, f"must be >= 0, got {value!r}")


@dataclass(frozen=True)
class DataConfig:
    """Where the images are and how patches are cut.

    ``cache_dir``: where the LR images (MATLAB bicubic of each whole HR image) are cached as
    .npy, keyed by file content and scale; None = ``<run_dir>/lr-cache``. ``val_patch`` is the
    LR side of the fixed validation crops, ``val_crops`` how many per image: 1 = centre,
    5 = centre and the four corners.
    """

    train_dir: str
    val_dir: str | None = None
    cache_dir: str | None = None
    lr_patch: int = 32
    augment: bool = True
    val_patch: int = 96
    val_crops: int = 5

    def __post_init__(self) -> None:
        if not self.train_dir:
            raise _Invalid("train_dir", "must not be empty")
        if self.lr_patch < 8:
            raise _Invalid("lr_patch", f"must be >= 8, got {self.lr_patch}")
        if self.val_patch < 8:
            raise _Invalid("val_patch", f"must be >= 8, got {self.val_patch}")
        if self.val_crops not in (1, 5):
            raise _Invalid("val_crops", f"must be 1 (centre) or 5 (centre + corners), "
                                        f"got {self.val_crops}")


@dataclass(frozen=True)
class PhaseConfig:
    """One training phase: Adam at ``lr`` with cosine decay to ``lr_min`` over ``steps``.

    ``grad_clip``: max global gradient norm, None = no clipping. ``val_every`` / ``ckpt_every`` / ``log_every`` are in
    steps; validation and a checkpoint also happen at the end of the phase. ``l2_warmup``:
    the first steps use L2 instead of L1 (in a phase whose loss is a pixel loss). Over a bicubic
    skip the residual to learn is small and mostly noise, L1's gradient is only its sign, and
    a run from scratch can idle at bicubic quality for thousands of steps (FSRCNN: ~8k; CARN-M:
    +0.001 dB after 1k steps, with zero or small head init); L2's gradient is the residual
    itself, so edges lead from the first step (CARN-M: +0.25 dB after 500 steps).

    A family whose phases need more settings subclasses this (ENAF: ``EnafPhaseConfig``).
    """

    steps: int
    lr: float = 1e-3
    lr_min: float = 1e-8
    batch_size: int = 16
    grad_clip: float | None = None
    val_every: int = 1000
    ckpt_every: int = 500
    log_every: int = 50
    l2_warmup: int = 0

    def __post_init__(self) -> None:
        _non_negative("l2_warmup", self.l2_warmup)
        if self.steps < 0:
            raise _Invalid("steps", f"must be >= 0, got {self.steps}")
        _positive("lr", self.lr)
        _non_negative("lr_min", self.lr_min)
        if self.lr_min > self.lr:
            raise _Invalid("lr_min", f"must be <= lr ({self.lr}), got {self.lr_min}")
        if self.batch_size < 1:
            raise _Invalid("batch_size", f"must be >= 1, got {self.batch_size}")
        if self.grad_clip is not None:
            _positive("grad_clip", self.grad_clip)
        for key in ("val_every", "ckpt_every", "log_every"):
            if getattr(self, key) < 1:
                raise _Invalid(key, f"must be >= 1, got {getattr(self, key)}")


@dataclass(frozen=True)
class PhasesConfig:
    """A family's phases, one field per phase in order (a family's task names its subclass,
    e.g. ENAF's backbone, exits and estimator)."""

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    def get(self, name: str) -> PhaseConfig:
        if name not in self.names():
            raise ConfigError(f"unknown phase {name!r}; phases: {', '.join(self.names())}")
        return typing.cast(PhaseConfig, getattr(self, name))


@dataclass(frozen=True)
class TrainConfig:
    """A whole training run of any family; ``phases`` is the family's own (typed by its task).

    ``device``: auto (cuda when available), cpu, cuda or cuda:N. ``threads``: CPU threads for
    torch (None: torch's default, one per core; 1 is much faster on a machine that other jobs
    keep busy, where idle OpenMP workers spin). ``export``: where the final
    weights go; None = ``<run_dir>/<model>-x<scale>.safetensors``. ``init``: a weights file
    (``save_weights`` format) to start from instead of an untrained model, e.g. to run only
    phase ``estimator`` on trained backbone weights. ``full_head_init``: how a run from
    scratch initialises the full head's output layer: ``zero`` (the path starts as exactly
    bicubic) or ``small`` (Kaiming x 0.1, BasicSR's; the trunk learns from step 1).
    """

    model: str
    data: DataConfig
    phases: Any  # the family's PhasesConfig subclass, built by from_dict
    scale: int = 4
    seed: int = 0
    run_dir: str = "runs/train"
    device: str = "auto"
    threads: int | None = None
    export: str | None = None
    init: str | None = None
    full_head_init: str = "zero"

    def __post_init__(self) -> None:
        if self.full_head_init not in ("zero", "small"):
            raise _Invalid("full_head_init", f"must be zero or small, got {self.full_head_init!r}")
        if self.scale < 2:
            raise _Invalid("scale", f"must be >= 2, got {self.scale}")
        if self.seed < 0:
            raise _Invalid("seed", f"must be >= 0, got {self.seed}")
        if not (self.device in DEVICES or self.device.startswith("cuda:")):
            raise _Invalid("device", f"must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if not self.run_dir:
            raise _Invalid("run_dir", "must not be empty")
        if self.threads is not None and self.threads < 1:
            raise _Invalid("threads", f"must be >= 1 or null, got {self.threads}")

    @property
    def export_path(self) -> Path:
        if self.export is not None:
            return Path(self.export)
        return Path(self.run_dir) / f"{self.model}-x{self.scale}.safetensors"


# ----------------------------------------------------------------------------- loading


def _type_name(tp: Any) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    if tp in names:
        return names[tp]
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return str(tp)


def _convert(value: Any, tp: Any, key: str) -> Any:
    """``value`` checked against the annotation ``tp`` (int, float, str, bool, X | None,
    a fixed-length tuple of those, or a config dataclass; ``Any``: already built)."""
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{key}: must be a list of {len(args)}, got {value!r}")
        return tuple(_convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _convert(value, inner[0], key)
        raise TypeError(f"unsupported annotation {tp}")  # pragma: no cover - a bug here
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: must be {_type_name(tp)}, got {value!r}")
        return _build(tp, value, key + ".")
    ok = False
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        if isinstance(value, str) and _FLOAT_RE.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads 1e-4 (no dot) as a string
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif tp is str:
        ok = isinstance(value, str)
    if not ok:
        raise ConfigError(f"{key}: must be {_type_name(tp)}, got {value!r}")
    return value


def _build(cls: Any, data: Mapping[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in fields]
    if unknown:
        known = ", ".join(fields)
        raise ConfigError(f"{prefix}{unknown[0]}: unknown key (known here: {known})")
    kwargs = {}
    for name, f in fields.items():
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{prefix}{name}: missing (required)")
            continue
        kwargs[name] = _convert(data[name], hints[name], prefix + name)
    try:
        return cls(**kwargs)
    except _Invalid as exc:
        raise ConfigError(f"{prefix}{exc.key}: {exc.message}") from None


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a", "b", "c"], YAML-parsed value)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise UsageError(f"--set {text!r}: expected key=value, e.g. phases.backbone.steps=200")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise UsageError(f"--set {text!r}: value is not valid YAML ({exc})") from None
    return key.split("."), value


def _assign(data: dict[str, Any], parts: Sequence[str], value: Any, label: str) -> None:
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{label}: {'.'.join(parts[:i + 1])} is not a mapping")
        node = child
    node[parts[-1]] = value


def with_overrides(data: Mapping[str, Any], overrides: Iterable[str] = (),
                   values: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A deep copy of ``data`` with every ``key=value`` override (value parsed as YAML), then
    every ``values`` entry (dotted key -> value, taken as is) applied."""
    result = _deep_copy(data)
    for text in overrides:
        parts, value = parse_override(text)
        _assign(result, parts, value, f"--set {text!r}")
    for key, value in (values or {}).items():
        _assign(result, key.split("."), value, key)
    return result


def _deep_copy(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else v for k, v in data.items()}


def _resolve_path(path: str, base: Path) -> str:
    p = Path(path).expanduser()
    return str(p if p.is_absolute() else (base / p).resolve())


def _resolve(path: str | None, base: Path) -> str | None:
    return None if path is None else _resolve_path(path, base)


def from_dict(data: Mapping[str, Any], *, base: Path | None = None,
              source: str = "config") -> TrainConfig:
    """Validate a config mapping; relative paths are resolved against ``base`` (CWD)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: must be a YAML mapping at the top level")
    task = _task(data.get("model"), source)
    try:
        if not isinstance(data.get("phases"), Mapping):  # missing: reported in field order
            _build(TrainConfig, data)
            raise ConfigError(f"phases: must be a mapping, got {data['phases']!r}")
        phases = _build(task.phases_config, data["phases"], "phases.")
        cfg: TrainConfig = _build(TrainConfig, {**data, "phases": phases})
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    _check_scale(cfg, source)
    base = Path.cwd() if base is None else base
    data_cfg = dataclasses.replace(
        cfg.data, train_dir=_resolve_path(cfg.data.train_dir, base),
        val_dir=_resolve(cfg.data.val_dir, base), cache_dir=_resolve(cfg.data.cache_dir, base))
    return dataclasses.replace(
        cfg, data=data_cfg, run_dir=_resolve_path(cfg.run_dir, base),
        export=_resolve(cfg.export, base), init=_resolve(cfg.init, base))


def _task(model: Any, source: str) -> Any:
    """The training task of the config's model (its family's, from the registry)."""
    from sr_tile.models.registry import MODELS, training_task

    trainable = sorted(n for n, e in MODELS.items() if e.train is not None)
    if not isinstance(model, str) or model not in MODELS or MODELS[model].train is None:
        raise ConfigError(f"{source}: model: {model!r} cannot be trained; "
                          f"use one of {', '.join(trainable)}")
    return training_task(model)


def _check_scale(cfg: TrainConfig, source: str) -> None:
    from sr_tile.models.registry import MODELS

    entry = MODELS[cfg.model]
    if cfg.scale not in entry.scales:
        raise ConfigError(f"{source}: scale: {cfg.model} supports "
                          f"{', '.join(f'x{s}' for s in entry.scales)}, not x{cfg.scale}")


def load_config(path: str | Path, overrides: Sequence[str] = (), *,
                values: Mapping[str, Any] | None = None,
                base: Path | None = None) -> TrainConfig:
    """Read a YAML config, apply ``key=value`` overrides (then ``values``, dotted key ->
    value, e.g. from CLI options) and validate everything."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror or exc})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from None
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: must be a YAML mapping at the top level")
    return from_dict(with_overrides(data, overrides, values), base=base, source=str(path))


def scale_steps(cfg: TrainConfig, factor: float) -> TrainConfig:
    """Every phase's ``steps`` multiplied by ``factor`` (at least 1 step), for quick runs."""
    if not factor > 0 or not math.isfinite(factor):
        raise UsageError(f"--steps-scale must be > 0, got {factor}")
    phases = {
        name: dataclasses.replace(p, steps=max(1, round(p.steps * factor)) if p.steps else 0)
        for name in cfg.phases.names() for p in [cfg.phases.get(name)]
    }
    return dataclasses.replace(cfg, phases=type(cfg.phases)(**phases))


def config_to_dict(cfg: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg, dict_factory=lambda items: {
        k: list(v) if isinstance(v, tuple) else v for k, v in items})


def dump_config(cfg: TrainConfig) -> str:
    """The resolved config as YAML (loads back to an equal config with ``load_config``)."""
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


# Keys that may change between a run and its resumption: where things are, and how often to
# report. (device and threads change float rounding, not the computation: a resumed run
# equals the uninterrupted one bit for bit only on the same device and thread count.)
RESUMABLE_CHANGES = frozenset({
    "device", "threads", "export", "data.cache_dir", "data.train_dir", "data.val_dir",
})
_RESUMABLE_PHASE_KEYS = ("val_every", "ckpt_every", "log_every")  # under phases.<phase>.


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def resume_conflicts(saved: Mapping[str, Any], current: TrainConfig) -> list[str]:
    """Keys whose value differs from the saved run's in a way that changes the result. A key
    the saved config lacks (a setting newer than the run) counts at its default."""
    try:
        saved = config_to_dict(from_dict(saved))
    except ConfigError:  # a config this version cannot read: compare it as written
        pass
    old, new = flatten(saved), flatten(config_to_dict(current))
    keys = sorted(set(old) | set(new))
    return [k for k in keys if old.get(k) != new.get(k) and k not in RESUMABLE_CHANGES
            and not (k.startswith("phases.") and k.rsplit(".", 1)[-1] in _RESUMABLE_PHASE_KEYS)]

