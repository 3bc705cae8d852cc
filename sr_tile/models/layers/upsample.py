"""Upsamplers: the MATLAB-bicubic skip, pixel-shuffle heads, and FSRCNN-style deconvolution
heads run as sub-pixel convolutions."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sr_tile.imresize import imresize
from sr_tile.models.layers.conv import make_act, unpadded_twin, zero_init_
from sr_tile.ops import PixelShuffle, pixel_shuffle


def bicubic(x: torch.Tensor, scale: int) -> torch.Tensor:
    """The global skip and path 0: MATLAB bicubic upscaling (no antialiasing when enlarging)."""
    return imresize(x, scale, antialias=False)


def upsample_factors(scale: int) -> tuple[int, ...]:
    """Pixel-shuffle stages: log2(scale) x2 stages for powers of two, one x3 stage for 3."""
    if scale == 3:
        return (3,)
    if scale >= 2 and scale & (scale - 1) == 0:
        return (2,) * int(math.log2(scale))
    raise ValueError(f"pixel-shuffle upsampling supports x3 and powers of two, not x{scale}")


class UpsampleHead(nn.Module):
    """Pixel-shuffle head: per stage ``upconv`` (3x3, to width*r^2) -> PixelShuffle(r) -> act,
    then an optional ``conv_hr`` (3x3 + act) and ``conv_last`` (3x3 to ``out_channels``, zeroed).

    ``widths[i]`` is the channel count after stage i's shuffle, so one class covers the full
    CARN-M / MSRResNet upsamplers and their lighter exit heads.
    """

    def __init__(self, *, in_channels: int, widths: Sequence[int], factors: Sequence[int],
                 act: str, groups: int = 1, hr_conv: bool = False, out_channels: int = 3) -> None:
        super().__init__()
        if len(widths) != len(factors):
            raise ValueError(f"one width per stage: widths {tuple(widths)}, factors {factors}")
        if act == "prelu":
            raise ValueError("UpsampleHead reuses one stateless activation; use relu or lrelu")
        self.upconv = nn.ModuleList()
        self.shuffle = nn.ModuleList()
        cin = in_channels
        for width, r in zip(widths, factors):
            self.upconv.append(nn.Conv2d(cin, width * r * r, 3, padding=1, groups=groups))
            self.shuffle.append(PixelShuffle(r))
            cin = width
        self.act = make_act(act)
        self.conv_hr = nn.Conv2d(cin, cin, 3, padding=1) if hr_conv else None
        self.conv_last = zero_init_(nn.Conv2d(cin, out_channels, 3, padding=1))

    @property
    def output_layer(self) -> nn.Module:
        return self.conv_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for upconv, shuffle in zip(self.upconv, self.shuffle):
            x = self.act(shuffle(upconv(x)))
        if self.conv_hr is not None:
            x = self.act(self.conv_hr(x))
        return self.conv_last(x)


class SubPixelConvTranspose2d(nn.ConvTranspose2d):
    """A stride-``s`` transposed conv computed as one LR conv to ``s*s`` phases + pixel shuffle.

    Same parameters, state dict and output as :class:`nn.ConvTranspose2d` (to float rounding;
    tested), 2.5-3x faster on CPU for FSRCNN's 9x9 stride-4 deconv, whose native kernel is slow.
    Output pixel ``s*q + r`` is ``sum_d W[s*d + r + p] * x[q - d]``, so phase ``r`` is a
    small correlation over ``d``; the phase weights are gathered from ``weight`` on every call
    (cheap, and differentiable, so training uses the same path). FLOPs hooks still see a
    ``ConvTranspose2d`` with the same output: ``classsr`` counts it at output resolution as
    before; ``torch`` and ``executed`` count the conv that actually runs. Needs ``K - 2p + output_padding = s``
    (output exactly ``s`` x the input), groups 1 and dilation 1.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, stride: int,
                 padding: int, output_padding: int, valid: bool = False,
                 device: torch.device | str | None = None) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                         output_padding=output_padding, device=device)
        #: valid: the LR conv runs without padding, so ``pad`` input pixels on each side are
        #: consumed and the output is ``s`` x the input less them (``DeconvHead.valid``)
        self.valid = valid
        s, k, p = stride, kernel_size, padding
        if k - 2 * p + output_padding != s:
            raise ValueError("SubPixelConvTranspose2d needs kernel - 2*padding + output_padding "
                             f"== stride, got {k}, {p}, {output_padding}, {s}")
        d_lo, d_hi = -((p + s - 1) // s), (k - 1 - p) // s  # taps d with 0 <= s*d + r + p < k
        taps = d_hi - d_lo + 1
        index = torch.full((s, s, taps, taps), k * k, dtype=torch.long)  # k*k: a zero slot
        for ry in range(s):
            for rx in range(s):
                for ty in range(taps):
                    for tx in range(taps):
                        # tap t reads x[q + t - d_hi], i.e. d = d_hi - t
                        ky, kx = s * (d_hi - ty) + ry + p, s * (d_hi - tx) + rx + p
                        if 0 <= ky < k and 0 <= kx < k:
                            index[ry, rx, ty, tx] = ky * k + kx
        self.register_buffer("phase_index", index.flatten(), persistent=False)
        self.taps, self.pad = taps, (d_hi, -d_lo, d_hi, -d_lo)

    def phase_weight(self) -> torch.Tensor:
        """(out * s * s, in, taps, taps): the LR conv's weight, phases in pixel-shuffle order."""
        cin, cout = self.weight.shape[:2]
        s, t = self.stride[0], self.taps
        flat = F.pad(self.weight.reshape(cin, cout, -1), (0, 1))  # append the zero slot
        w = flat.index_select(2, self.phase_index.to(flat.device)).reshape(cin, cout, s * s, t, t)
        return w.permute(1, 2, 0, 3, 4).reshape(cout * s * s, cin, t, t)

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        s = self.stride[0]
        bias = None if self.bias is None else self.bias.repeat_interleave(s * s)
        left, right = self.pad[:2]
        if self.valid:
            y = F.conv2d(x, self.phase_weight(), bias)
        elif left == right:  # the conv pads itself: no padded copy of the input (x2, x4)
            y = F.conv2d(x, self.phase_weight(), bias, padding=left)
        else:
            y = F.conv2d(F.pad(x, self.pad), self.phase_weight(), bias)
        return pixel_shuffle(y, s)

    def executed_flops(self, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> int:
        """FLOPs of the LR conv that actually runs (the ``executed`` convention)."""
        x = inputs[0]
        return 2 * self.in_channels * self.taps ** 2 * self.out_channels * self.stride[0] ** 2 \
            * x.shape[0] * x.shape[-2] * x.shape[-1]


class DeconvHead(nn.Module):
    """FSRCNN-style head: ``conv`` (k x k) -> ``act`` -> ``deconv`` (9x9 transposed, stride =
    scale, zeroed). Output is exactly ``scale`` x the input size (padding 4, output_padding s-1)."""

    def __init__(self, *, in_channels: int, mid_channels: int, scale: int, kernel_size: int,
                 act: str, out_channels: int = 3, deconv_size: int = 9) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, mid_channels, kernel_size, padding=kernel_size // 2)
        self.act = make_act(act, mid_channels)
        self.deconv = zero_init_(SubPixelConvTranspose2d(
            mid_channels, out_channels, deconv_size, stride=scale, padding=deconv_size // 2,
            output_padding=scale - 1))

    @property
    def output_layer(self) -> nn.Module:
        return self.deconv

    def valid(self) -> list[tuple[nn.Module, int, int]]:
        """This head without padding, sharing its parameters, as two steps (conv + act, the
        deconv), each with the LR pixels it consumes before and after on each axis. See
        ``MultiExitSR.cell_path``."""
        conv, deconv = self.conv, self.deconv
        twin = SubPixelConvTranspose2d(
            deconv.in_channels, deconv.out_channels, deconv.kernel_size[0],
            stride=deconv.stride[0], padding=deconv.padding[0],
            output_padding=deconv.output_padding[0], valid=True, device="meta")
        twin.weight, twin.bias = deconv.weight, deconv.bias
        twin.phase_index = deconv.phase_index
        k = conv.kernel_size[0] // 2
        lo, hi = deconv.pad[:2]
        return [(nn.Sequential(unpadded_twin(conv), self.act), k, k), (twin, lo, hi)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.deconv(self.act(self.conv(x)))
