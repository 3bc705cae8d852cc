"""Weights on disk: safetensors with the model's identity in the metadata.

Loading never unpickles anything; a file made for another model or scale is
refused with a clear message instead of loading shapes that happen to fit.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save
from torch import nn

from sr_tile import __version__
from sr_tile.errors import ConfigError
from sr_tile.io.atomic import file_kind, write_bytes_atomic

FORMAT = "sr-tile-weights-1"


def save_weights(model: nn.Module, path: str | Path, *, name: str, scale: int,
                 extra: dict[str, Any] | None = None) -> Path:
    """Write ``model.state_dict()`` with metadata (name, scale, version, extras as JSON)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"format": FORMAT, "model": name, "scale": str(scale), "sr_tile": __version__}
    for key, value in (extra or {}).items():
        meta[key] = json.dumps(value)
    save_safetensors(tensors, path, meta)
    return path


def save_safetensors(tensors: dict[str, torch.Tensor], path: Path,
                     metadata: dict[str, str]) -> None:
    """Write a safetensors file whole or not at all (``io.atomic``)."""
    write_bytes_atomic(path, save(tensors, metadata=metadata))


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata of a weights file, extras decoded from JSON."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        meta = dict(fh.metadata() or {})
    decoded: dict[str, Any] = {}
    for key, value in meta.items():
        if key in ("format", "model", "scale", "sr_tile"):
            decoded[key] = value
        else:
            try:
                decoded[key] = json.loads(value)
            except json.JSONDecodeError:
                decoded[key] = value
    return decoded


def load_weights(model: nn.Module, path: str | Path, *, name: str, scale: int | float,
                 strict: bool = True, any_scale: bool = False) -> dict[str, Any]:
    """Load ``path`` into ``model`` after checking it was made for (name, scale); with
    ``any_scale`` (a model that samples any output grid, TADT) the name alone."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: no such weights file")
    kind = file_kind(path.stat().st_mode)
    if kind:
        raise ConfigError(f"{path}: is {kind}, not a weights file")
    try:
        meta = read_metadata(path)
        state = load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - a damaged file, whatever the parser raises
        raise ConfigError(f"{path}: not a readable safetensors file ({exc})") from None
    if meta.get("model") != name or (not any_scale and meta.get("scale") != str(scale)):
        raise ConfigError(
            f"{path}: weights are for {meta.get('model')} x{meta.get('scale')}, not {name} x{scale}"
        )
    try:
        with torch.no_grad():
            result = model.load_state_dict(state, strict=strict)
    except RuntimeError as exc:  # tensors of other shapes under the right name
        first = str(exc).strip().splitlines()
        raise ConfigError(f"{path}: its tensors do not fit {name} x{scale} "
                          f"({first[-1].strip() if first else exc})") from None
    if strict is False and (result.missing_keys or result.unexpected_keys):
        meta["missing_keys"] = list(result.missing_keys)
    return meta
