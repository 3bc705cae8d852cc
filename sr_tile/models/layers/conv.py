"""Convolutions with activations, residual blocks, and the inits that make a head start at
bicubic."""

from __future__ import annotations

import torch
from torch import nn


def make_act(kind: str, channels: int = 1) -> nn.Module:
    """``relu``, ``lrelu`` (slope 0.1, as FSRCNN exits / MSRResNet / ClassSR) or ``prelu``."""
    if kind == "relu":
        return nn.ReLU(inplace=True)
    if kind == "lrelu":
        return nn.LeakyReLU(0.1, inplace=True)
    if kind == "prelu":
        return nn.PReLU(channels)
    raise ValueError(f"unknown activation {kind!r}; use relu, lrelu or prelu")


def zero_init_(layer: nn.Module) -> nn.Module:
    """Zero a head's last layer so that an untrained path outputs exactly bicubic(x)."""
    for p in layer.parameters(recurse=False):
        nn.init.zeros_(p)
    return layer


def small_init_(layer: nn.Module, gain: float = 0.1) -> nn.Module:
    """Kaiming-normal weights scaled by ``gain``, zero bias (BasicSR's MSRResNet head init).

    An alternative to :func:`zero_init_` for a full head trained from scratch: with a zero
    last layer the trunk gets no gradient until that layer grows. (It did not by itself stop
    an L1 run from idling at bicubic quality; ``l2_warmup`` did, see ``PhaseConfig``.)
    """
    nn.init.kaiming_normal_(layer.weight)
    with torch.no_grad():
        layer.weight.mul_(gain)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer


def unpadded_twin(conv: nn.Conv2d) -> nn.Conv2d:
    """``conv`` without padding, sharing its weight and bias (``valid`` steps of a layer)."""
    twin = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, groups=conv.groups,
                     bias=conv.bias is not None, device="meta")
    twin.weight, twin.bias = conv.weight, conv.bias
    return twin


class ConvAct(nn.Sequential):
    """``conv`` (same padding) followed by ``act`` (omitted when ``act`` is None)."""

    def valid(self) -> list[tuple[nn.Module, int, int]]:
        """This layer without padding, sharing its parameters, and the input pixels it
        consumes before and after on each axis: (k // 2, k // 2). See
        ``MultiExitSR.cell_path``."""
        k = self.conv.kernel_size[0] // 2
        return [(nn.Sequential(unpadded_twin(self.conv), *list(self)[1:]), k, k)]

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *,
                 act: str | None = None, groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2,
                              groups=groups)
        if act is not None:
            self.act = make_act(act, out_channels)


class ResidualBlock(nn.Module):
    """EDSR/MSRResNet block without BN: ``x + conv2(relu(conv1(x)))``.

    Kaiming init scaled by ``init_scale`` (BasicSR's 0.1) keeps a deep stack near identity.
    """

    def __init__(self, channels: int, *, init_scale: float = 0.1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.act = nn.ReLU(inplace=True)
        for conv in (self.conv1, self.conv2):
            nn.init.kaiming_normal_(conv.weight)
            conv.weight.data.mul_(init_scale)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.act(self.conv1(x)))
