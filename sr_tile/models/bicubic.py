"""The bicubic baseline: MATLAB-style bicubic interpolation as a "model".

Every quality and cost number sr-tile prints is read against this row, so it
goes through exactly the same tiler, I/O and reporting as the networks.
"""

from __future__ import annotations

import torch
from torch import nn

from sr_tile.imresize import bicubic_grid, imresize
from sr_tile.models.descriptor import ModelDescriptor

TAPS = 4  # the cubic kernel spans 4 LR pixels when upscaling


class Bicubic(nn.Module):
    """Upscale with MATLAB's bicubic kernel (symmetric borders), at any scale > 1.

    ``forward(x)`` resizes a tile by an integer factor; at other scales the runner passes the
    tile's window of the whole image's output grid (``coords``) and the tile is sampled there,
    so the tiled result equals a whole-image ``imresize`` to the output size.
    """

    def __init__(self, *, scale: float = 4) -> None:
        super().__init__()
        self.scale = scale
        self.descriptor = ModelDescriptor(
            name="bicubic",
            scale=scale,
            margin=2,  # a 4-tap kernel reads 2 LR pixels to each side
            exact_tiling=True,
            default_tile=256,
            default_overlap=8,
            flops_note="interpolation counted at 2 FLOPs per tap (papers count path 0 as 0)",
        )

    def forward(self, x: torch.Tensor,
                coords: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        if coords is not None:
            return bicubic_grid(x, *coords)
        return imresize(x, self.scale, antialias=False)

    def flops(self, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> int:
        """Separable filtering: rows first (H_out x W_in), then columns (H_out x W_out)."""
        n, c, _, w_in = inputs[0].shape
        h_out, w_out = output.shape[-2:]
        return 2 * TAPS * n * c * (h_out * w_in + h_out * w_out)
