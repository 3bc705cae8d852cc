"""Image I/O for sr-tile: faithful reading and bounded-memory, atomic writing.

Readers detect the format by content and return (H, W, C) pixels in
uint8/uint16/float32 with orientation applied; writers take the output as a
stream of row bands so 20k-pixel-wide results never need to fit in memory.
"""

from sr_tile.io.meta import ImageData, ImageMeta
from sr_tile.io.read import DEFAULT_MAX_PIXELS, probe_size, read_image
from sr_tile.io.write import (
    WRITABLE_FORMATS,
    WriteOptions,
    canonical_format,
    output_format_for,
    write_image,
)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "WRITABLE_FORMATS",
    "ImageData",
    "ImageMeta",
    "WriteOptions",
    "canonical_format",
    "output_format_for",
    "probe_size",
    "read_image",
    "write_image",
]
