"""Tensor ops that torch has, done faster on CPU."""

from __future__ import annotations

import torch
from torch import nn


def pixel_shuffle(x: torch.Tensor, factor: int) -> torch.Tensor:
    """``F.pixel_shuffle`` (N, C*r*r, h, w) -> (N, C, h*r, w*r), the same values (tested).

    Going through channels-last first turns torch's strided gather into copies of ``r``
    contiguous floats: about 2x faster on CPU for the tile batches sr-tile runs (every ENAF
    tile's bicubic skip and FSRCNN's sub-pixel heads pay one or two of these).
    """
    n, c, h, w = x.shape
    r = factor
    if c % (r * r):
        raise ValueError(f"pixel_shuffle: {c} channels is not a multiple of {r}^2")
    y = x.permute(0, 2, 3, 1).reshape(n, h, w, c // (r * r), r, r)
    return y.permute(0, 3, 1, 4, 2, 5).reshape(n, c // (r * r), h * r, w * r)


class PixelShuffle(nn.Module):
    """:func:`pixel_shuffle` as a module (no parameters: a drop-in for ``nn.PixelShuffle``)."""

    def __init__(self, factor: int) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pixel_shuffle(x, self.factor)

    def extra_repr(self) -> str:
        return f"factor={self.factor}"
