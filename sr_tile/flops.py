"""FLOPs accounting: how much work one forward pass of a model costs.

Reports compare each image's adaptive FLOPs to the static network's, and papers do not agree on
what a FLOP is, so every number is produced under a named, labelled *convention*:

``classsr`` (default; the convention of ClassSR, ARM, ENAF and AdaFormer)
    2 x the multiply-accumulates of ``Conv*``, ``ConvTranspose*`` and ``Linear`` layers; biases,
    activations, norms, pixel-shuffle and additions are free. A transposed conv is counted at its
    OUTPUT resolution, ``2 * Cin/groups * prod(kernel) * Cout * prod(out_spatial)``; that is what
    makes FSRCNN x4 ~468 M FLOPs per 32x32 LR patch as the papers quote it.
``torch``
    Whatever ``torch.utils.flop_counter.FlopCounterMode`` reports. It counts a transposed conv at
    its input size (FSRCNN: ~50 M) but sees every dispatched op (attention matmuls included).
    Its first use in a process costs ~2 s (it imports torch's dynamo machinery).
``executed``
    ``classsr``'s layer hooks, but a transposed conv counted at its INPUT resolution: the
    multiply-adds its kernels actually do (a subclass that runs another conv says so with
    ``executed_flops(inputs, output)``, e.g. ``SubPixelConvTranspose2d``). For a network of
    convs and linears it equals ``torch`` without torch's dispatch machinery; ENAF's routing
    weighs its paths by it.

**The ``flops`` protocol.** Layer hooks cannot see work done with functional ops (attention
``matmul``, interpolation, gathers). A module may therefore define
``flops(self, inputs: tuple[Tensor, ...], output) -> int`` returning its own ``classsr`` FLOPs for
one call; under ``classsr`` that number is used INSTEAD of descending into its children (so it
must include its children's convs). It is called on the meta-device copy: use shapes only, never
values. A zero-argument ``flops(self)`` (SwinIR/HAT style, fixed resolution) is not this protocol:
it is ignored with a warning and the children are counted. ``torch`` ignores the protocol.

Counting runs on a copy of the model: on the meta device, so a 5120x2880 input costs no compute
or memory; but a process's first meta run imports ~2 s of torch's dynamo machinery (its Python meta
kernels are wrapped by it), so a small input (a routing tile) is counted by a real CPU run of the
copy on zeros instead while that machinery is not loaded: same counts, a few ms.
"""

from __future__ import annotations

import copy
import inspect
import sys
import threading
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from sr_tile.errors import ConfigError

Convention = Literal["classsr", "torch", "executed"]
CONVENTIONS: tuple[str, ...] = ("classsr", "torch", "executed")
#: Inputs up to this many pixels (N x H x W) are counted by a real CPU run while torch's dynamo
#: machinery is not loaded (SRResNet on 64x64: ~0.1 s, against ~2 s for the first meta run).
REAL_RUN_PIXELS = 64 * 64

#: Builds the forward's positional args for ``input_shape`` on ``device`` (tensor or tuple).
InputsFn = Callable[[tuple[int, ...], torch.device], torch.Tensor | tuple[torch.Tensor, ...]]

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
          nn.ConvTranspose3d)


@runtime_checkable
class SupportsFlops(Protocol):
    """A module that reports its own ``classsr`` FLOPs for one call (see module docstring)."""

    def flops(self, inputs: tuple[torch.Tensor, ...], output: Any) -> int: ...


def _own_flops(module: nn.Module) -> Callable[..., Any] | None:
    """The module's protocol ``flops`` method, or None.

    The signature is checked because SwinIR-style ``flops(self)`` exists in the wild with another
    meaning; calling it with (inputs, output) would crash, trusting it would be wrong per tile.
    """
    method = getattr(module, "flops", None)
    if not callable(method):
        return None
    try:
        inspect.signature(method).bind((), None)
    except (TypeError, ValueError):
        warnings.warn(f"{type(module).__name__}.flops() does not take (inputs, output); "
                      "ignoring it and counting its children's layers instead", stacklevel=2)
        return None
    return method


def _clone(model: nn.Module, device: str) -> nn.Module:
    """A deep copy of ``model`` on ``device``, in eval mode, leaving ``model`` untouched.

    Tensors are pre-seeded in the deepcopy memo so that (a) a meta copy never duplicates real
    weights (a large model would otherwise be copied in full just to be thrown away) and (b) plain
    non-leaf tensor attributes (old ``torch.nn.utils.weight_norm``) do not make deepcopy fail.
    """
    memo: dict[int, Any] = {}
    for module in model.modules():
        for t in vars(module).values():
            if isinstance(t, torch.Tensor):
                memo[id(t)] = t.detach().to(device, copy=True)
        for p in module.parameters(recurse=False):
            if not isinstance(p, nn.parameter.UninitializedParameter):
                memo[id(p)] = nn.Parameter(p.detach().to(device, copy=True), p.requires_grad)
        for b in module.buffers(recurse=False):
            if not isinstance(b, nn.parameter.UninitializedBuffer):
                memo[id(b)] = b.detach().to(device, copy=True)
    clone = copy.deepcopy(model, memo)
    return clone.to(device).eval()  # inference FLOPs: e.g. dropout/BN behave as at test time


class _Tally:
    """Running FLOPs total shared by the hooks of one counting run."""

    def __init__(self) -> None:
        self.total = 0

    def add(self, n: int) -> None:
        if n < 0:
            raise ValueError(f"negative FLOPs count {n}")
        self.total += n


def _install_hooks(model: nn.Module, tally: _Tally, *, transposed_at_output: bool) -> None:
    """Hook the layers that ``classsr`` (and ``executed``) count; a protocol ``flops`` module
    hides its subtree.

    Each module is hooked once (a shared module reached twice must not double count per call);
    a module *called* twice is counted twice, as it should be.
    """
    seen: set[int] = set()

    def visit(module: nn.Module) -> None:
        if id(module) in seen:
            return
        seen.add(id(module))
        own = _own_flops(module)
        if own is not None:
            module.register_forward_hook(
                lambda _m, inputs, out, f=own: tally.add(int(f(inputs, out))))
            return
        if isinstance(module, _CONVS):
            cin_per_group = module.in_channels // module.groups
            k = 1
            for s in module.kernel_size:
                k *= s
            executed = getattr(module, "executed_flops", None)
            if module.transposed and not transposed_at_output and executed is not None:
                module.register_forward_hook(
                    lambda _m, inputs, out, f=executed: tally.add(int(f(inputs, out))))
            elif module.transposed and not transposed_at_output:  # N*Cout*prod(in_spatial)
                d = len(module.kernel_size)
                module.register_forward_hook(
                    lambda _m, inputs, out, c=cin_per_group * k, d=d: tally.add(
                        2 * c * out.numel() // out.shape[-d:].numel()
                        * inputs[0].shape[-d:].numel()))
            else:  # out.numel() = N * Cout * prod(out_spatial)
                module.register_forward_hook(
                    lambda _m, _i, out, c=cin_per_group * k: tally.add(2 * c * out.numel()))
        elif isinstance(module, nn.Linear):
            # output.numel() = rows * out_features, whatever the leading dims are.
            module.register_forward_hook(
                lambda m, _i, out: tally.add(2 * m.in_features * out.numel()))
        for child in module.children():
            visit(child)

    visit(model)


def _run(model: nn.Module, input_shape: tuple[int, ...], convention: Convention, device: str,
         inputs_fn: InputsFn | None) -> int:
    """Clone ``model`` onto ``device``, run it once and return the FLOPs under ``convention``."""
    clone = _clone(model, device)
    dev = torch.device(device)
    if inputs_fn is not None:
        args = inputs_fn(input_shape, dev)
    else:
        dtype = next((t.dtype for t in [*clone.parameters(), *clone.buffers()]
                      if t.is_floating_point()), torch.float32)
        args = torch.zeros(input_shape, device=dev, dtype=dtype)
    args = args if isinstance(args, tuple) else (args,)
    with torch.no_grad():
        if convention == "torch":
            with FlopCounterMode(display=False) as counter:
                clone(*args)
            return int(counter.get_total_flops())
        tally = _Tally()
        _install_hooks(clone, tally, transposed_at_output=convention == "classsr")
        clone(*args)
        return tally.total


def count_flops(model: nn.Module, input_shape: tuple[int, ...], convention: Convention = "classsr",
                *, inputs_fn: InputsFn | None = None) -> int:
    """FLOPs of one forward pass of ``model`` on a zero tensor of ``input_shape`` (N, C, H, W).

    Runs on a meta-device copy so counting a 5120x2880 input costs nothing, and never changes
    ``model`` (device, weights, training flag, hooks). The copy runs in eval mode under
    ``no_grad``; the zero input has the dtype of the model's first floating parameter.
    ``inputs_fn(input_shape, device)`` may build other forward args instead (extra inputs, or
    content for a content-adaptive model, whose FLOPs depend on which path its input takes).

    Falls back, with a warning, to a real CPU run only when the model cannot run on meta: an op
    without a meta kernel, or data-dependent Python control flow (``.item()``, ``if x.max() > t``)
    that needs actual values. That fallback costs a real forward at full input size. User hooks are
    copied with the model (some, like old ``weight_norm``, are needed by forward) and run on the
    copy.
    """
    if convention not in CONVENTIONS:
        raise ConfigError(f"unknown FLOPs convention {convention!r}; choose one of {CONVENTIONS}")
    shape = tuple(int(s) for s in input_shape)
    if not shape or any(s <= 0 for s in shape):
        raise ConfigError(f"input_shape must be positive sizes, got {input_shape!r}")
    pixels = shape[0] * (shape[-2] * shape[-1] if len(shape) > 2 else 1)
    if (convention != "torch" and pixels <= REAL_RUN_PIXELS
            and "torch._dynamo" not in sys.modules):
        return _run(model, shape, convention, "cpu", inputs_fn)
    try:
        return _run(model, shape, convention, "meta", inputs_fn)
    except Exception as meta_error:  # noqa: BLE001 - a genuine bug re-raises from the CPU run
        warnings.warn(f"{type(model).__name__} cannot run on the meta device ({meta_error}); "
                      "counting FLOPs with a real CPU forward pass instead", stacklevel=2)
        return _run(model, shape, convention, "cpu", inputs_fn)


_CACHE_PER_MODEL = 256  # distinct (shape, convention) per model: tiles, edge tiles, batch sizes
_cache: weakref.WeakKeyDictionary[nn.Module, OrderedDict[tuple[Any, ...], int]] = (
    weakref.WeakKeyDictionary())
_cache_lock = threading.Lock()


def flops_cached(model: nn.Module, input_shape: tuple[int, ...],
                 convention: Convention = "classsr") -> int:
    """``count_flops`` memoised per (model identity, shape, convention) for tilers.

    Keyed weakly on the model object (identity, like ``id(model)`` but never confused by a
    recycled id), so a dropped model drops its entries; each model keeps at most
    ``_CACHE_PER_MODEL`` shapes (LRU). Assumes the model's architecture is not mutated in place
    afterwards; call ``clear_flops_cache()`` if it is.
    """
    key = (tuple(int(s) for s in input_shape), convention)
    with _cache_lock:
        per_model = _cache.get(model)
        if per_model is not None and key in per_model:
            per_model.move_to_end(key)
            return per_model[key]
    n = count_flops(model, key[0], convention)  # outside the lock: a duplicate count is harmless
    with _cache_lock:
        per_model = _cache.setdefault(model, OrderedDict())
        per_model[key] = n
        while len(per_model) > _CACHE_PER_MODEL:
            per_model.popitem(last=False)
    return n


def clear_flops_cache() -> None:
    """Forget every memoised count (after mutating a model's layers in place)."""
    with _cache_lock:
        _cache.clear()


def format_flops(n: float) -> str:
    """``'468.0 M'``, ``'5.19 G'``, ``'1.20 T'``: ~3 significant digits with decimal SI prefixes.

    A fixed width per magnitude keeps table columns aligned; values that round up to 1000 move to
    the next prefix ('1.00 G', never '1000.0 M').
    """
    if n != n or n in (float("inf"), float("-inf")):
        return str(n)
    sign, value = ("-" if n < 0 else ""), abs(float(n))
    if value < 1000:
        return f"{sign}{value:.0f}" if value == int(value) else f"{sign}{value:.3g}"
    for prefix in ("K", "M", "G", "T", "P", "E"):
        value /= 1000
        text = f"{value:.2f}" if value < 9.995 else f"{value:.1f}"
        if float(text) < 1000 or prefix == "E":
            return f"{sign}{text} {prefix}"
    raise AssertionError("unreachable")
