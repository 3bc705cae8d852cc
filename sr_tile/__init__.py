"""sr-tile: tiled, content-adaptive super-resolution for large images.

The public API is imported lazily, so ``import sr_tile.metrics`` (say) does not
pull in the models, the tiler or the CLI.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Upscaler": "sr_tile.upscale",
    "UpscaleOptions": "sr_tile.upscale",
    "ImageReport": "sr_tile.upscale",
    "create_model": "sr_tile.models",
    "read_image": "sr_tile.io",
    "write_image": "sr_tile.io",
    "count_flops": "sr_tile.flops",
    "psnr_y": "sr_tile.metrics",
    "ssim_y": "sr_tile.metrics",
    "imresize": "sr_tile.imresize",
    "tune_allocator": "sr_tile.runtime",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'sr_tile' has no attribute {name!r}")
