"""ENAF-CARN: CARN-M with two early exits and a bicubic global skip.

Trunk (one segment, LR resolution): ``conv_first`` 3x3 3->64; three cascading ``blocks``, each
one efficient residual block (``erb``: 3x3 group-4 conv, ReLU, 3x3 group-4 conv, ReLU, 1x1 conv,
ReLU(out + x)) applied three times with shared weights, cascaded by 1x1 ``fuses`` (64k->64 +
ReLU); the blocks are cascaded by the trunk's own 1x1 ``fuses``. CARN's mean shift is dropped:
the bicubic skip makes every path learn a residual. Both exits read after the last cascading
stage, as in the authors' code, so the exits differ only in their upsampling head.

Heads (:class:`~sr_tile.models.layers.UpsampleHead`, CARN-M's upsampler at width w: per x2
stage a 3x3 group-4 conv 64->4w + PixelShuffle(2) + ReLU, then ``conv_last`` 3x3 w->3, zeroed):
full w=64 (CARN-M itself), exit 2 w=32, exit 1 w=16. Halving/quartering the width keeps the
original upsampler's shape and lands each path within 1% of the paper's FLOPs.

classsr FLOPs per 32x32 LR patch at x4 (1024 LR px, 64x64 = 4096 mid px, 16384 HR px):
  conv_first 2*27*64*1024 = 3,538,944
  erb = 2 * (2*16*9*64*1024) + 2*64*64*1024 = 37,748,736 + 8,388,608 = 46,137,344
  fuses 1x1 (128, 192, 256 -> 64) = 16,777,216 + 25,165,824 + 33,554,432 = 75,497,472
  block = 3*erb + fuses = 213,909,504; trunk = 3,538,944 + 3*213,909,504 + 75,497,472
        = 720,764,928
  head w: 2*16*9*4w*1024 + 2*(w/4)*9*4w*4096 + 2*w*9*3*16384
  full   w=64: 75,497,472 + 301,989,888 + 56,623,104 = 434,110,464 -> 1,154,875,392 (1162 M, -0.6%)
  exit 2 w=32: 37,748,736 + 75,497,472 + 28,311,552 = 141,557,760 ->   862,322,688 (869 M, -0.8%)
  exit 1 w=16: 18,874,368 + 18,874,368 + 14,155,776 =  51,904,512 ->   772,669,440 (779 M, -0.8%)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from sr_tile.models.enaf.multiexit import MultiExitSR
from sr_tile.models.layers import ConvAct, UpsampleHead, upsample_factors

__all__ = ["NAME", "SCALES", "CARNConfig", "EnafCARN", "build"]

NAME = "enaf-carn"
SCALES = (2, 3, 4)


@dataclass(frozen=True)
class CARNConfig:
    """``head_widths``: channels after each shuffle in the exit 1, exit 2 and full heads."""

    scale: int = 4
    channels: int = 64
    groups: int = 4
    num_blocks: int = 3
    num_units: int = 3  # ERB applications per cascading block (shared weights in CARN-M)
    head_widths: tuple[int, int, int] = (16, 32, 64)

    def __post_init__(self) -> None:
        if self.scale not in SCALES:
            raise ValueError(f"{NAME} supports scales {SCALES}, not x{self.scale}")
        if any(w % self.groups for w in (self.channels, *self.head_widths)):
            raise ValueError(f"channels and head widths must be multiples of groups={self.groups}")


def _cascade(x: torch.Tensor, units: Sequence[nn.Module], fuses: nn.ModuleList) -> torch.Tensor:
    """CARN's cascading: o_k = fuse_k(cat[x, u_1, ..., u_k]) with u_k = unit_k(o_{k-1})."""
    cat, out = x, x
    for unit, fuse in zip(units, fuses):
        cat = torch.cat([cat, unit(out)], dim=1)
        out = fuse(cat)
    return out


def _fuses(channels: int, n: int) -> nn.ModuleList:
    return nn.ModuleList(ConvAct(channels * (k + 2), channels, 1, act="relu") for k in range(n))


class EfficientResidualBlock(nn.Module):
    """CARN-M's ERB: ReLU(x + conv3(ReLU(conv2(ReLU(conv1(x)))))), conv1/2 grouped 3x3."""

    def __init__(self, channels: int, *, groups: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, groups=groups)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, groups=groups)
        self.conv3 = nn.Conv2d(channels, channels, 1)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv3(self.act(self.conv2(self.act(self.conv1(x)))))
        return self.act(y + x)


class CascadingBlock(nn.Module):
    """One ERB applied ``num_units`` times (shared weights), cascaded by 1x1 ``fuses``."""

    def __init__(self, channels: int, *, groups: int, num_units: int) -> None:
        super().__init__()
        self.erb = EfficientResidualBlock(channels, groups=groups)
        self.fuses = _fuses(channels, num_units)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _cascade(x, [self.erb] * len(self.fuses), self.fuses)


class CARNTrunk(nn.Module):
    """``conv_first`` then ``blocks`` cascaded by the global 1x1 ``fuses``."""

    def __init__(self, cfg: CARNConfig) -> None:
        super().__init__()
        self.conv_first = nn.Conv2d(3, cfg.channels, 3, padding=1)
        self.blocks = nn.ModuleList(
            CascadingBlock(cfg.channels, groups=cfg.groups, num_units=cfg.num_units)
            for _ in range(cfg.num_blocks))
        self.fuses = _fuses(cfg.channels, cfg.num_blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _cascade(self.conv_first(x), self.blocks, self.fuses)


class EnafCARN(MultiExitSR):
    """CARN-M with exits; see the module docstring for the layout and FLOPs."""

    def __init__(self, *, config: CARNConfig = CARNConfig()) -> None:
        cfg = config
        factors = upsample_factors(cfg.scale)
        heads = [
            UpsampleHead(in_channels=cfg.channels, widths=(w,) * len(factors), factors=factors,
                         act="relu", groups=cfg.groups)
            for w in cfg.head_widths
        ]
        super().__init__(segments=[CARNTrunk(cfg)], heads=heads, attach=(1, 1, 1),
                         scale=cfg.scale, name=NAME)
        self.config = cfg


def build(*, scale: int = 4) -> EnafCARN:
    """The registry factory: ENAF-CARN (CARN-M) at ``scale``."""
    return EnafCARN(config=CARNConfig(scale=scale))
