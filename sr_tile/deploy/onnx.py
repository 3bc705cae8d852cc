"""ONNX export, and models whose networks run in ONNX Runtime.

A model exports as a folder of self-contained ``.onnx`` files, one per *part*: the whole
network for a static model (``model.onnx``); for a routed family whatever its router needs,
named by where the part sits in the model (ENAF: ``estimator``, ``backbone.segments.0``...,
``backbone.heads.2``), so that routing stays in Python and runs exactly as with torch. A family
says how it exports with ``model.onnx_parts()`` (a list of :class:`ExportPart`) or why it cannot
with ``model.onnx_unsupported`` (a string); a static network needs neither.

Every graph has dynamic batch, height and width axes (the dynamo exporter, ``dynamic_shapes``)
and opset :data:`OPSET`; window sizes and masks come from the runtime input shape. Each file
carries its identity in its metadata (``sr_tile.*`` keys: model, scale, version, part, the
full list of parts, its classsr FLOPs on one default tile, the preset table, the weights' hash,
the name and shape of every tensor of the weights).

Loading (:func:`onnx_model`) builds the model's torch graph untrained and puts an
:class:`OrtPart` in each part's place. The torch graph stays as the *reference* of the parts:
FLOPs are counted on it (``sr_tile.flops`` deep-copies a model; a part copies as its reference),
so the books are the same for both backends, and the numbers that come out are ONNX Runtime's.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sr_tile import __version__
from sr_tile.errors import ConfigError
from sr_tile.io.atomic import write_bytes_atomic
from sr_tile.models.descriptor import Routing
from sr_tile.models.layers import bicubic
from sr_tile.models.registry import (BACKENDS, adopt_calibration, create_model, get_entry,
                                    shipped_weights)

OPSET = 18  # the dynamo exporter's oldest; ORT >= 1.14 and TensorRT >= 8.6 read it
FORMAT = "sr-tile-onnx-1"
__all__ = ["BACKENDS", "OPSET", "ExportPart", "OrtPart", "export_onnx", "onnx_model"]


@dataclass(frozen=True)
class ExportPart:
    """One graph of an exported model.

    ``name``: its file stem and its place in the model (``"model"``: the whole model;
    else a submodule path, ``"backbone.heads.0"``). ``module``: what is exported, called as
    ``module(example)``. ``install(model, part)`` puts the loaded :class:`OrtPart` in its
    place (its reference: the submodule ``name``, or ``module`` where ``name`` is none);
    None: ``model.set_submodule(name, part)``. ``skip``: the graph leaves out the
    model's MATLAB-bicubic global skip, added after it in torch (its weights depend on the
    tile size, which a traced graph would fix).
    """

    name: str
    module: nn.Module
    example: torch.Tensor
    install: Callable[[nn.Module, "OrtPart"], None] | None = None
    skip: bool = False


def export_parts(model: nn.Module) -> list[ExportPart]:
    """The parts ``model`` exports as; ConfigError when it cannot be exported."""
    d = model.descriptor
    reason = getattr(model, "onnx_unsupported", None)
    if reason:
        raise ConfigError(f"{d.name} cannot be exported to ONNX: {reason}")
    if not any(True for _ in model.parameters()):
        raise ConfigError(f"{d.name} has no network to export; it runs the same on every backend")
    own = getattr(model, "onnx_parts", None)
    if own is not None:
        return own()
    if d.routing != Routing.NONE:  # a family that routes must say how it exports
        raise ConfigError(f"{d.name} cannot be exported to ONNX: its family names no parts")
    if not float(d.scale).is_integer():
        raise ConfigError(f"{d.name} x{d.scale:g} samples an output grid; export it at an "
                          "integer scale")
    side = max(d.size_multiple, 16) * 2
    return [ExportPart("model", model, torch.rand(2, d.in_channels, side, side))]


def require(module: str) -> Any:
    """An ONNX package, or a ConfigError that says which extra installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"ONNX export and --backend onnxruntime need {module}: pip install "
                          "'sr-tile[onnx]' (or 'sr-tile[gpu]' for CUDA)") from None


def weights_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def export_onnx(name: str, *, scale: float, out_dir: str | os.PathLike[str],
                weights: str | Path | None = None, overwrite: bool = False) -> Path:
    """Export model ``name`` at ``scale`` (shipped weights, or the ``weights`` file) to
    ``out_dir/<name>-x<scale>/``, one file per part, each written atomically; returns the
    folder."""
    import onnx

    entry = get_entry(name)
    scale = entry.resolve_scale(scale)
    if entry.learned:  # a model that cannot export is refused before its weights are sought
        export_parts(create_model(name, scale=scale, weights=False))
    source = _source(name, scale, weights)
    community = entry.family == "community"
    model = create_model(name, scale=scale, weights=True if community else source)
    parts = export_parts(model)
    folder = Path(out_dir) / f"{source.stem if community else name}-x{scale:g}"
    folder.mkdir(parents=True, exist_ok=True)
    d = model.descriptor
    common = {
        "sr_tile.format": FORMAT, "sr_tile.version": __version__, "sr_tile.model": name,
        "sr_tile.scale": f"{scale:g}", "sr_tile.opset": str(OPSET),
        "sr_tile.parts": json.dumps([p.name for p in parts]),
        "sr_tile.presets": json.dumps(getattr(model, "presets", {})),
        "sr_tile.router": json.dumps(getattr(model, "router", None)),
        "sr_tile.weights_sha256": weights_hash(source),
        "sr_tile.routing": d.routing.value if len(parts) > 1 else "none",
        # what the runtime rebuilds its reference model from (see onnx_model)
        "sr_tile.shapes": json.dumps({k: list(v.shape) for k, v in model.state_dict().items()}),
    }
    from sr_tile.flops import count_flops

    for part in parts:
        proto = _export_graph(part)
        tile = d.default_tile if part.name != "model" else (d.static_tile or d.default_tile)
        # FLOPs of the part on one default tile (its input at that tile's resolution)
        shape = (1, part.example.shape[1], tile, tile)
        meta = dict(common, **{
            "sr_tile.part": part.name,
            "sr_tile.flops_per_tile": json.dumps({
                "tile": tile, "convention": "classsr",
                "flops": count_flops(part.module, shape)}),
        })
        for key, value in meta.items():
            entry_ = proto.metadata_props.add()
            entry_.key, entry_.value = key, value
        onnx.checker.check_model(proto)
        path = folder / f"{part.name}.onnx"
        if path.exists() and not overwrite:
            raise ConfigError(f"{path}: exists (use --overwrite to replace it)")
        write_bytes_atomic(path, proto.SerializeToString())
    return folder


def _export_graph(part: ExportPart):
    """The ONNX ModelProto of one part, with dynamic batch/height/width axes."""
    import warnings

    auto = torch.export.Dim.AUTO  # constraints such as "a multiple of the window" inferred
    with warnings.catch_warnings(), torch.no_grad(), _quiet("torch.onnx", "torch.export"):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            part.module.eval(), (part.example,), dynamo=True, external_data=False,
            opset_version=OPSET, input_names=["x"], output_names=["y"],
            dynamic_shapes=({0: auto, 2: auto, 3: auto},), verbose=False, optimize=True)
    proto = program.model_proto
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    fixed = [axis for axis in (0, 2, 3) if not dims[axis].dim_param]
    if fixed:  # a size the trace specialised on: the graph would fail at any other
        raise ConfigError(f"{part.name}: its graph fixed the input's axes {fixed}; it must "
                          "take its shapes from the input")
    return proto


@contextlib.contextmanager
def _quiet(*loggers: str) -> Iterator[None]:
    """The exporter's progress and notes (missing torchvision ops...) kept off the console."""
    saved = [(logging.getLogger(n), logging.getLogger(n).level) for n in loggers]
    for logger, _ in saved:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in saved:
            logger.setLevel(level)


class OrtSession:
    """One ``.onnx`` file in ONNX Runtime, called like a module on a torch tensor."""

    def __init__(self, path: Path, providers: list[Any], threads: int) -> None:
        ort = require("onnxruntime")

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # spinning threads slow the torch code that runs between calls (onnxruntime#13808)
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(path), so, providers=providers)
        except Exception as exc:  # noqa: BLE001 - a damaged file, whatever ORT raises
            raise ConfigError(f"{path}: not a readable ONNX model ({_first_line(exc)})") from None
        self.path = path
        self.input = self.session.get_inputs()[0].name
        self.meta = dict(self.session.get_modelmeta().custom_metadata_map)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        y = self.session.run(None, {self.input: x.detach().float().contiguous().cpu().numpy()})
        return torch.from_numpy(y[0]).to(x.device)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__


class OrtPart(nn.Module):
    """A part of a model run by ONNX Runtime, in the place of its torch ``reference``.

    A deep copy (what ``sr_tile.flops`` counts on) is a copy of the reference: FLOPs are those
    of the torch graph the file was exported from."""

    def __init__(self, reference: nn.Module, run: OrtSession, *, skip: int = 0) -> None:
        super().__init__()
        self.reference = reference
        self.run = run
        self.skip = skip  # the scale of a bicubic skip added after the graph (0: none)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.run(x)
        return y + bicubic(x, self.skip) if self.skip else y

    def __deepcopy__(self, memo: dict[int, Any]) -> nn.Module:
        return copy.deepcopy(self.reference, memo)


class OrtModel(OrtPart):
    """A whole model in ONNX Runtime (part ``"model"``): its network runs dense, as a static
    model, whatever its family's routing."""

    def __init__(self, reference: nn.Module, run: OrtSession, *, skip: int = 0) -> None:
        super().__init__(reference, run, skip=skip)
        self.descriptor = replace(reference.descriptor, routing=Routing.NONE)
        self.scale = reference.descriptor.scale

    def tile_flops(self, height: int, width: int) -> int:
        from sr_tile.flops import flops_cached

        own = getattr(self.reference, "tile_flops", None)
        if own is not None:
            return int(own(height, width))
        return flops_cached(self.reference, (1, 3, height, width))


@dataclass(frozen=True)
class Providers:
    """The execution providers of a run and the line that says where it runs."""

    providers: list[Any]
    note: str


def providers_for(backend: str, device: torch.device, cache: Path) -> Providers:
    """ONNX Runtime's providers for ``backend`` (``onnxruntime`` or ``tensorrt``): TensorRT
    (asked for, engines cached under ``cache``) and CUDA when they are available, then the
    CPU. ``--device cpu`` keeps ONNX Runtime on the CPU too."""
    ort = require("onnxruntime")

    available = set(ort.get_available_providers())
    chosen: list[Any] = []
    if device.type == "cuda":
        if backend == "tensorrt" and "TensorrtExecutionProvider" in available:
            (cache / "tensorrt").mkdir(parents=True, exist_ok=True)
            chosen.append(("TensorrtExecutionProvider", {
                "trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache / "tensorrt"),
                "trt_fp16_enable": False}))
        if "CUDAExecutionProvider" in available:
            chosen.append(("CUDAExecutionProvider", {"device_id": device.index or 0}))
    names = [p[0] for p in chosen]
    chosen.append("CPUExecutionProvider")
    if backend == "tensorrt" and "TensorrtExecutionProvider" not in names:
        note = "onnxruntime: the TensorRT execution provider is not available here"
    elif device.type == "cuda" and not names:
        note = "onnxruntime: no CUDA execution provider here (install sr-tile[gpu])"
    else:
        note = ""
    where = names[0].removesuffix("ExecutionProvider") if names else "CPU"
    note = (note + "; " if note else "onnxruntime: ") + f"running on {where}"
    return Providers(chosen, note)


def cache_dir() -> Path:
    """Where exports made on first use live: $SR_TILE_CACHE, else $XDG_CACHE_HOME/sr-tile."""
    env = os.environ.get("SR_TILE_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sr-tile"


@dataclass
class LoadedOnnx:
    """An ONNX model ready for the runners, and what a run should say once about it."""

    model: nn.Module
    folder: Path | None
    notes: list[str]


def onnx_model(name: str, *, scale: float, weights: str | Path | None, device: torch.device,
               backend: str = "onnxruntime") -> LoadedOnnx:
    """Model ``name`` with its networks in ONNX Runtime.

    ``weights``: a folder made by ``sr-tile export`` (or one ``.onnx`` file of it); else a
    safetensors file, or None for the shipped one, exported once into :func:`cache_dir`
    (keyed by the weights' hash and sr-tile's version)."""
    entry = get_entry(name)
    scale = entry.resolve_scale(scale)
    if not entry.learned:  # an interpolation: no network to hand to ONNX Runtime
        return LoadedOnnx(create_model(name, scale=scale).to(device), None, [])
    notes: list[str] = []
    path = Path(weights) if weights is not None else None
    if path is not None and (path.is_dir() or path.suffix == ".onnx"):
        folder = path if path.is_dir() else path.parent
    else:
        source = _source(name, scale, weights)
        key = f"{weights_hash(source)[:16]}-{__version__}-opset{OPSET}"
        folder = cache_dir() / "onnx" / key / f"{name}-x{scale:g}"
        if not _complete(folder):
            notes.append(f"exported {name} x{scale:g} to ONNX once, in {folder}")
            export_onnx(name, scale=scale, out_dir=folder.parent, weights=source,
                        overwrite=True)
    threads = torch.get_num_threads()
    chosen = providers_for(backend, device, cache_dir())
    notes.append(chosen.note)
    model = create_model(name, scale=scale, weights=False)
    parts = export_parts(model)
    sessions = {p.name: _session(folder, p.name, name, scale, chosen.providers, threads)
                for p in parts}
    meta = next(iter(sessions.values())).meta
    if json.loads(meta.get("sr_tile.parts", "[]")) != [p.name for p in parts]:
        raise ConfigError(f"{folder}: its parts {meta.get('sr_tile.parts')} are not those of "
                          f"{name} in sr-tile {__version__}; export it again")
    # a model whose layers follow its weights file (ENAF's estimator context) gets the tensors
    # the fresh one lacks, so that its FLOPs are counted on the exported architecture
    fresh = model.state_dict().keys()
    extra = {k: torch.zeros(shape) for k, shape in
             json.loads(meta.get("sr_tile.shapes") or "{}").items() if k not in fresh}
    if extra:
        model.load_state_dict(extra, strict=False)
    adopt_calibration(model, json.loads(meta.get("sr_tile.presets") or "{}"),
                      json.loads(meta.get("sr_tile.router") or "null"))
    for part in parts:
        skip = int(model.descriptor.scale) if part.skip else 0
        if part.name == "model":
            model = OrtModel(model, sessions["model"], skip=skip)
            if entry.routing != "none":
                notes.append(f"onnxruntime: {name} runs dense (its routing has no static graph)")
        elif part.install is not None:
            try:
                reference = model.get_submodule(part.name)
            except AttributeError:  # a graph of no one submodule (ENAF's cell paths)
                reference = part.module
            part.install(model, OrtPart(reference, sessions[part.name], skip=skip))
        else:
            model.set_submodule(part.name, OrtPart(model.get_submodule(part.name),
                                                    sessions[part.name], skip=skip))
    return LoadedOnnx(model.eval().to(device), folder, notes)


def _source(name: str, scale: float, weights: str | Path | None) -> Path:
    """The file a model's networks come from: ``weights``, a community model's own file,
    or the shipped weights."""
    entry = get_entry(name)
    if not entry.learned:
        raise ConfigError(f"{name} has no network to export; it runs the same on every backend")
    if entry.family == "community":
        if weights is not None:
            raise ConfigError("--weights: a model file carries its own weights")
        return Path(name)
    source = Path(weights) if weights is not None else shipped_weights(name, scale)
    if source is None:
        create_model(name, scale=scale)  # raises its own "no weights installed" line
    if not source.is_file():
        raise ConfigError(f"{source}: no such weights file")
    return source


def _complete(folder: Path) -> bool:
    """Whether an export made on first use has all its files (the last one lists them)."""
    return folder.is_dir() and any(folder.glob("*.onnx")) and all(
        (folder / f"{p}.onnx").is_file()
        for p in _listed_parts(sorted(folder.glob("*.onnx"))[0]))


def _listed_parts(path: Path) -> list[str]:
    onnx = require("onnx")

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - a damaged file: export again
        return [path.stem + ".missing"]
    meta = {p.key: p.value for p in proto.metadata_props}
    return json.loads(meta.get("sr_tile.parts", '["missing"]'))


def _session(folder: Path, part: str, name: str, scale: float, providers: list[Any],
             threads: int) -> OrtSession:
    path = folder / f"{part}.onnx"
    if not path.is_file():
        raise ConfigError(f"{folder}: has no {part}.onnx; is it an export of {name} "
                          f"x{scale:g} ('sr-tile export {name} --scale {scale:g}')?")
    session = OrtSession(path, providers, threads)
    meta = session.meta
    if meta.get("sr_tile.format") != FORMAT:
        raise ConfigError(f"{path}: not an sr-tile export (no {FORMAT} metadata)")
    if meta.get("sr_tile.model") != name or meta.get("sr_tile.scale") != f"{scale:g}":
        raise ConfigError(f"{path}: is an export of {meta.get('sr_tile.model')} "
                          f"x{meta.get('sr_tile.scale')}, not {name} x{scale:g}")
    return session
