"""ENAF-FSRCNN: FSRCNN (d=56, s=12, m=4) with two early exits and a bicubic global skip.

Trunk (LR resolution): ``conv_first`` 5x5 3->56 + PReLU, ``shrink`` 1x1 56->12 + PReLU,
``map1..map4`` 3x3 12->12 + PReLU. Exit 1 reads after ``map1``, exit 2 after ``map4``.
Heads (:class:`~sr_tile.models.layers.DeconvHead`): exit 1 = 3x3 12->16 + LeakyReLU(0.1) +
9x9 deconv 16->3; exit 2 = 3x3 12->36 + LeakyReLU + deconv 36->3; full = FSRCNN's ``expand``
1x1 12->56 + PReLU + deconv 56->3. Each deconv has stride = scale and starts at zero, so an
untrained path returns bicubic(x) (residual learning; plain FSRCNN lost to bicubic here).

classsr FLOPs per 32x32 LR patch at x4 (1024 LR px, 16384 HR px; deconvs at HR):
  conv_first 2*75*56*1024 = 8,601,600   shrink 2*56*12*1024 = 1,376,256
  map (each) 2*108*12*1024 = 2,654,208  expand 2*12*56*1024 = 1,376,256
  deconv 56->3: 2*56*81*3*16384 = 445,906,944; 16->3: 127,401,984; 36->3: 286,654,464
  head conv 12->16: 2*108*16*1024 = 3,538,944; 12->36: 7,962,624
  exit 1 = 8,601,600 + 1,376,256 + 2,654,208 + 3,538,944 + 127,401,984 = 143,572,992
           (paper 146 M, -1.7%; branching after map2 instead would give 146,227,200)
  exit 2 = 8,601,600 + 1,376,256 + 4*2,654,208 + 7,962,624 + 286,654,464 = 315,211,776 (315 M)
  full   = 8,601,600 + 1,376,256 + 4*2,654,208 + 1,376,256 + 445,906,944 = 467,877,888 (468 M)
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from torch import nn

from sr_tile.models.enaf.multiexit import MultiExitSR
from sr_tile.models.layers import ConvAct, DeconvHead

__all__ = ["NAME", "SCALES", "EnafFSRCNN", "FSRCNNConfig", "build"]

NAME = "enaf-fsrcnn"
SCALES = (2, 3, 4)


@dataclass(frozen=True)
class FSRCNNConfig:
    """``exit_after``: map convs run before exit 1 and exit 2 (0 <= e1 < e2 <= m)."""

    scale: int = 4
    d: int = 56
    s: int = 12
    m: int = 4
    exit_after: tuple[int, int] = (1, 4)
    exit_widths: tuple[int, int] = (16, 36)

    def __post_init__(self) -> None:
        if self.scale not in SCALES:
            raise ValueError(f"{NAME} supports scales {SCALES}, not x{self.scale}")
        e1, e2 = self.exit_after
        if not 0 <= e1 < e2 <= self.m:
            raise ValueError(f"exit_after {self.exit_after} needs 0 <= e1 < e2 <= m={self.m}")


def _maps(cfg: FSRCNNConfig, first: int, last: int) -> list[tuple[str, nn.Module]]:
    """Map convs ``first+1..last`` (1-based names, stable whatever the exit positions)."""
    return [(f"map{i}", ConvAct(cfg.s, cfg.s, 3, act="prelu")) for i in range(first + 1, last + 1)]


class EnafFSRCNN(MultiExitSR):
    """FSRCNN with exits; see the module docstring for the layout and FLOPs."""

    def __init__(self, *, config: FSRCNNConfig = FSRCNNConfig()) -> None:
        cfg = config
        e1, e2 = cfg.exit_after
        stem = [("conv_first", ConvAct(3, cfg.d, 5, act="prelu")),
                ("shrink", ConvAct(cfg.d, cfg.s, 1, act="prelu"))]
        segments = [nn.Sequential(OrderedDict(stem + _maps(cfg, 0, e1))),
                    nn.Sequential(OrderedDict(_maps(cfg, e1, e2)))]
        if e2 < cfg.m:
            segments.append(nn.Sequential(OrderedDict(_maps(cfg, e2, cfg.m))))
        heads = [
            DeconvHead(in_channels=cfg.s, mid_channels=w, scale=cfg.scale, kernel_size=3,
                       act="lrelu")
            for w in cfg.exit_widths
        ]
        heads.append(DeconvHead(in_channels=cfg.s, mid_channels=cfg.d, scale=cfg.scale,
                                kernel_size=1, act="prelu"))
        # x2 routes by tiles: its trunk is a larger share of the network and its halos are
        # wider (6-9 px), so cells cost more than they save there (val, preset M: 1.77x the
        # static best's time by cells, 1.11x by tiles; x3 and x4 gain FLOPs and quality)
        super().__init__(segments=segments, heads=heads, attach=(1, 2, len(segments)),
                         scale=cfg.scale, name=NAME, cells=cfg.scale != 2)
        self.config = cfg


def build(*, scale: int = 4) -> EnafFSRCNN:
    """The registry factory: ENAF-FSRCNN with the paper's layout at ``scale``."""
    return EnafFSRCNN(config=FSRCNNConfig(scale=scale))
