"""ENAF-SRResNet: MSRResNet (no BN, 64 channels, 16 blocks) with two early exits.

Trunk (LR resolution): ``conv_first`` 3x3 3->64 + LeakyReLU(0.1), then ``body`` residual blocks
(conv3x3, ReLU, conv3x3, + x) keyed 0..15 across the segments: segment 0 holds conv_first
and ``body.0-8``, segment 1 ``body.9-15``. Exit 1 reads after the 9th block (segment 0), exit 2
and the full head after the 16th.

Heads (:class:`~sr_tile.models.layers.UpsampleHead`, MSRResNet's upsampler at reduced width):
``upconv.0`` 3x3 64->256 + PixelShuffle(2) + LeakyReLU, ``upconv.1`` 3x3 64->4w + PS(2) +
LeakyReLU, ``conv_hr`` 3x3 w->w + LeakyReLU, ``conv_last`` 3x3 w->3 (zeroed), + bicubic(x).
Full w=64 (MSRResNet itself), exit 2 w=32, exit 1 w=16: the first stage stays 64 wide so that
the exits read the same 64 trunk channels; only the 64x64/128x128 part, which holds most of
the head cost, is thinned.

classsr FLOPs per 32x32 LR patch at x4 (1024 LR px, 4096 mid px, 16384 HR px):
  conv_first 2*27*64*1024 = 3,538,944; block 2 * 2*576*64*1024 = 150,994,944
  trunk to block 9: 3,538,944 + 9*150,994,944 = 1,362,493,440; to block 16: 2,419,458,048
  head w: 2*576*256*1024 + 2*576*4w*4096 + 2*9*w*w*16384 + 2*9*w*3*16384
  full   w=64: 301,989,888 + 1,207,959,552 + 1,207,959,552 + 56,623,104 = 2,774,532,096
         -> 5,193,990,144 (paper 5.19 G, +0.1%)
  exit 2 w=32: 301,989,888 + 603,979,776 + 301,989,888 + 28,311,552 = 1,236,271,104
         -> 3,655,729,152 (paper 3.66 G, -0.1%)
  exit 1 w=16: 301,989,888 + 301,989,888 + 75,497,472 + 14,155,776 = 693,633,024
         -> 2,056,126,464 (paper 2.05 G, +0.3%)
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from torch import nn

from sr_tile.models.enaf.multiexit import MultiExitSR
from sr_tile.models.layers import ConvAct, ResidualBlock, UpsampleHead, upsample_factors

__all__ = ["NAME", "SCALES", "EnafSRResNet", "SRResNetConfig", "build"]

NAME = "enaf-srresnet"
SCALES = (2, 3, 4)


@dataclass(frozen=True)
class SRResNetConfig:
    """``exit_after``: residual blocks run before exit 1 / exit 2 (1 <= e1 < e2 <= num_blocks).

    ``head_widths``: channels after the last shuffle (and of ``conv_hr``) of the exit 1, exit 2
    and full heads; earlier shuffle stages keep ``channels``.
    """

    scale: int = 4
    channels: int = 64
    num_blocks: int = 16
    exit_after: tuple[int, int] = (9, 16)
    head_widths: tuple[int, int, int] = (16, 32, 64)

    def __post_init__(self) -> None:
        if self.scale not in SCALES:
            raise ValueError(f"{NAME} supports scales {SCALES}, not x{self.scale}")
        e1, e2 = self.exit_after
        if not 1 <= e1 < e2 <= self.num_blocks:
            raise ValueError(f"exit_after {self.exit_after} needs 1 <= e1 < e2 <= num_blocks")


def _body(cfg: SRResNetConfig, first: int, last: int) -> nn.Sequential:
    """Blocks ``first..last-1`` keyed by their global index, so key names never shift."""
    return nn.Sequential(OrderedDict(
        (str(i), ResidualBlock(cfg.channels)) for i in range(first, last)))


class EnafSRResNet(MultiExitSR):
    """MSRResNet with exits; see the module docstring for the layout and FLOPs."""

    def __init__(self, *, config: SRResNetConfig = SRResNetConfig()) -> None:
        cfg = config
        e1, e2 = cfg.exit_after
        segments = [
            nn.Sequential(OrderedDict([("conv_first", ConvAct(3, cfg.channels, 3, act="lrelu")),
                                       ("body", _body(cfg, 0, e1))])),
            nn.Sequential(OrderedDict([("body", _body(cfg, e1, e2))])),
        ]
        if e2 < cfg.num_blocks:
            segments.append(nn.Sequential(OrderedDict(
                [("body", _body(cfg, e2, cfg.num_blocks))])))
        factors = upsample_factors(cfg.scale)
        heads = [
            UpsampleHead(in_channels=cfg.channels,
                         widths=(cfg.channels,) * (len(factors) - 1) + (w,), factors=factors,
                         act="lrelu", hr_conv=True)
            for w in cfg.head_widths
        ]
        super().__init__(segments=segments, heads=heads, attach=(1, 2, len(segments)),
                         scale=cfg.scale, name=NAME)
        self.config = cfg


def build(*, scale: int = 4) -> EnafSRResNet:
    """The registry factory: ENAF-SRResNet (MSRResNet) at ``scale``."""
    return EnafSRResNet(config=SRResNetConfig(scale=scale))
