"""Community models: any ``.pth``/``.pt``/``.ckpt``/``.safetensors`` super-resolution file that
spandrel can load (Real-ESRGAN, SwinIR, HAT, SPAN, ... about 40 architectures, recognised from
their state-dict keys; pickles go through spandrel's restricted unpickler, never plain
``torch.load``).

``--model path/to/file.pth`` makes a registry row for the file (:func:`community_entry`), so the
model gets sr-tile's tiling, streaming, metadata keeping, reports and bench like a shipped one.
spandrel's descriptor feeds ours: scale, size requirements (``size_multiple``), its tiling hint
(a model that tiles badly gets larger tiles), and half/bfloat16 support (``precisions``).

spandrel imports torchvision for two architectures that are not super-resolution (LaMa
inpainting, RestoreFormer face restoration). A CPU-only torch wheel has no torchvision build on
PyPI that imports beside it ("operator torchvision::nms does not exist"); then a stand-in takes
its place, and only those two architectures fail, with one line, if they are ever called.
"""

from __future__ import annotations

import functools
import sys
import types
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sr_tile.errors import ConfigError
from sr_tile.models.descriptor import ModelDescriptor

SUFFIXES = (".pth", ".pt", ".ckpt", ".safetensors", ".bin")
FAMILY = "community"
MARGIN = 8  # LR px: Real-ESRGAN pads its tiles by 10; GAN nets' useful context is wider
OVERLAP = 24
TILE = 256  # LR px; 512 where spandrel says the architecture tiles badly


def is_model_file(name: str) -> bool:
    """Whether ``--model`` names a file rather than a registered model."""
    return Path(name).suffix.lower() in SUFFIXES or "/" in name or "\\" in name


class _Missing:
    """What the torchvision stand-in hands out: usable in signatures, an error when called."""

    def __init__(self, what: str) -> None:
        self._what = what

    def __getattr__(self, name: str) -> "_Missing":
        return _Missing(f"{self._what}.{name}")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise ConfigError(f"this architecture needs torchvision ({self._what}), which cannot be "
                          "imported beside this torch build")


def _spandrel() -> Any:
    """spandrel, imported with the torchvision stand-in where torchvision cannot be; the
    stand-in leaves ``sys.modules`` again once spandrel has its names (other libraries, the
    ONNX exporter among them, test for torchvision there)."""
    stand_in: list[str] = []
    if "spandrel" not in sys.modules:
        try:
            import torchvision  # noqa: F401
        except Exception:  # noqa: BLE001 - absent, or built for another torch
            _forget("torchvision")
            stand_in = ["torchvision", "torchvision.transforms",
                        "torchvision.transforms.functional"]
            for name in stand_in:
                module = types.ModuleType(name)
                module.__getattr__ = lambda attr, _n=name: _Missing(f"{_n}.{attr}")  # type: ignore
                sys.modules[name] = module
    try:
        import spandrel
    except ImportError as exc:
        raise ConfigError(f"community models need spandrel ({exc})") from None
    finally:
        if stand_in:
            _forget("torchvision")
    return spandrel


def _forget(package: str) -> None:
    for name in [n for n in sys.modules if n.split(".")[0] == package]:
        del sys.modules[name]


@functools.lru_cache(maxsize=8)
def _load(path: str, mtime_ns: int, size: int) -> Any:
    """spandrel's descriptor of the file (cached per file version)."""
    spandrel = _spandrel()
    try:
        loaded = spandrel.ModelLoader(device="cpu").load_from_file(path)
    except spandrel.UnsupportedModelError:
        raise ConfigError(f"{path}: not an architecture spandrel knows (its state-dict keys "
                          "match none of them)") from None
    except Exception as exc:  # noqa: BLE001 - a damaged file, whatever the parser raises
        lines = str(exc).strip().splitlines()
        why = lines[0][:160] if lines else type(exc).__name__
        raise ConfigError(f"{path}: not a readable model file ({why})") from None
    if not isinstance(loaded, spandrel.ImageModelDescriptor):
        raise ConfigError(f"{path}: a {loaded.purpose} model ({loaded.architecture.name}), "
                          "not an image-to-image one")
    if loaded.input_channels != 3 or loaded.output_channels != 3:
        raise ConfigError(f"{path}: {loaded.architecture.name} takes {loaded.input_channels} "
                          f"and gives {loaded.output_channels} channels; sr-tile runs RGB models")
    if loaded.scale < 2:
        raise ConfigError(f"{path}: a x{loaded.scale} {loaded.purpose} model; sr-tile upscales "
                          "(x2 and more)")
    if loaded.size_requirements.square:
        raise ConfigError(f"{path}: {loaded.architecture.name} needs square inputs, which "
                          "sr-tile's tiles are not at image edges")
    return loaded


def spandrel_model(path: str | Path) -> Any:
    """spandrel's ImageModelDescriptor of the file at ``path``; ConfigError if unusable."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no such model file")
    stat = p.stat()
    return _load(str(p.resolve()), stat.st_mtime_ns, stat.st_size)


class CommunityModel(nn.Module):
    """A spandrel model with an sr-tile descriptor; ``forward`` is the network on (N, 3, h, w)
    in [0, 1], as spandrel calls it."""

    def __init__(self, loaded: Any, name: str) -> None:
        super().__init__()
        self.net = loaded.model
        self.architecture = loaded.architecture.name
        req = loaded.size_requirements
        multiple = max(1, req.multiple_of)
        tile = TILE * (2 if loaded.tiling.name != "SUPPORTED" else 1)
        tile = max(-(-tile // multiple) * multiple, req.minimum)
        precisions = ("fp32",) + (("bf16",) if loaded.supports_bfloat16 else ()) + (
            ("fp16",) if loaded.supports_half else ())
        self.descriptor = ModelDescriptor(
            name=name, scale=loaded.scale, size_multiple=multiple, margin=MARGIN,
            default_tile=tile, default_overlap=-(-OVERLAP // multiple) * multiple,
            precisions=precisions,
            flops_note=f"classsr by layer hooks on {self.architecture}: convs and linears; "
                       "attention products inside an architecture are not seen")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def build(*, scale: int | float, path: str) -> CommunityModel:
    """The registry's builder for a model file (its row checked ``scale``)."""
    return CommunityModel(spandrel_model(path), Path(path).name)
