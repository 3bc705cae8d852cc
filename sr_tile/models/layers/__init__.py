"""Building blocks shared by every family: convolutions, residual blocks, upsamplers.

Later families add window attention, token gather/scatter and implicit upsamplers here.
A block that only one family uses lives in that family's package instead.
"""

from sr_tile.models.layers.conv import ConvAct, ResidualBlock, make_act, small_init_, zero_init_
from sr_tile.models.layers.upsample import (
    DeconvHead,
    SubPixelConvTranspose2d,
    UpsampleHead,
    bicubic,
    upsample_factors,
)

__all__ = [
    "ConvAct", "DeconvHead", "ResidualBlock", "SubPixelConvTranspose2d", "UpsampleHead",
    "bicubic", "make_act", "small_init_", "upsample_factors", "zero_init_",
]
