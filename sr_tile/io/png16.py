"""16-bit colour PNG decoding on top of Pillow, which would truncate it to 8 bits.

Pillow opens 16-bit RGB/RGBA PNGs as 8-bit modes and unpacks only the high
byte of each big-endian sample (rawmode ``RGB;16B``). The zlib/unfilter
stage, however, works on whole pixels of the right size. So we decode the
same file twice: once as Pillow would (high bytes), once with the
``RGB;16L`` unpacker, which takes byte 1 of each 2-byte sample - for
big-endian data that is the low byte. Unfiltering is unchanged because the
bits per pixel are the same. 16-bit gray+alpha (``LA;16B``, opened as RGBA)
is decoded once with rawmode ``RGBA``: the 4 bytes per pixel are then
L_hi, L_lo, A_hi, A_lo. Interlaced files work the same way.

Anything that does not look like those layouts is refused with a clear
error rather than silently returned as 8-bit.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from sr_tile.errors import ImageReadError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# colour type -> (rawmode Pillow sets, rawmode that yields the low bytes)
_LOW_BYTE_RAWMODE = {2: ("RGB;16B", "RGB;16L"), 6: ("RGBA;16B", "RGBA;16L")}
_GRAY_ALPHA_RAWMODE = ("LA;16B", "RGBA")


@dataclass(frozen=True)
class PngHeader:
    """The IHDR fields that decide how we decode."""

    bit_depth: int
    colour_type: int
    interlace: int

    @property
    def is_16bit_colour(self) -> bool:
        """True for the layouts Pillow would silently reduce to 8 bits."""
        return self.bit_depth == 16 and self.colour_type in (2, 4, 6)

    @property
    def gray_sample_scale(self) -> int:
        """Factor from a low-bit gray sample (tRNS value) to Pillow's 0..255 pixel."""
        if self.colour_type == 0 and self.bit_depth < 8:
            return 255 // ((1 << self.bit_depth) - 1)
        return 1


def read_png_header(head: bytes) -> PngHeader | None:
    """Parse IHDR from the first 33 bytes of a file; None if it is not a PNG."""
    if len(head) < 29 or not head.startswith(PNG_SIGNATURE) or head[12:16] != b"IHDR":
        return None
    return PngHeader(bit_depth=head[24], colour_type=head[25], interlace=head[28])


def decode_png16(im: Image.Image, name: str, png: PngHeader) -> np.ndarray:
    """Full 16-bit pixels (H, W, C) of an opened, not yet loaded, 16-bit colour PNG."""
    rawmode = _tile_rawmode(im, name)
    if png.colour_type == 4:
        if rawmode != _GRAY_ALPHA_RAWMODE[0]:
            raise _layout_error(name, rawmode)
        _set_rawmode(im, _GRAY_ALPHA_RAWMODE[1])
        im.load()
        b = np.asarray(im)
        return np.stack([_join(b[..., 0], b[..., 1]), _join(b[..., 2], b[..., 3])], axis=2)
    expected, low_rawmode = _LOW_BYTE_RAWMODE[png.colour_type]
    if rawmode != expected or im.filename is None:
        raise _layout_error(name, rawmode)
    with Image.open(Path(im.filename)) as low_im:
        if _tile_rawmode(low_im, name) != expected or low_im.tile != im.tile:
            raise _layout_error(name, rawmode)
        _set_rawmode(low_im, low_rawmode)
        low_im.load()
        low = np.asarray(low_im)
    im.load()
    high = np.asarray(im)
    return _join(high, low)


def _join(high: np.ndarray, low: np.ndarray) -> np.ndarray:
    out = high.astype(np.uint16)
    out <<= 8
    out |= low
    return out


def _tile_rawmode(im: Image.Image, name: str) -> str:
    tiles = getattr(im, "tile", None) or []
    if len(tiles) != 1:
        raise _layout_error(name, f"{len(tiles)} tiles")
    args = tiles[0].args
    return args[0] if isinstance(args, tuple) else str(args)


def _set_rawmode(im: Image.Image, rawmode: str) -> None:
    tile = im.tile[0]
    args = (rawmode, *tile.args[1:]) if isinstance(tile.args, tuple) else rawmode
    im.tile = [tile._replace(args=args)]


def _layout_error(name: str, what: object) -> ImageReadError:
    return ImageReadError(
        f"{name}: unsupported 16-bit PNG layout ({what}); cannot decode it exactly"
    )


def find_png_exif(fp, limit: int = 1 << 16) -> bytes | None:
    """Raw eXIf chunk data, found by walking chunk headers only (no decoding).

    Used by `probe_size`, which must not decompress pixels just to learn the
    orientation. ``limit`` bounds the number of chunks visited.
    """
    fp.seek(len(PNG_SIGNATURE))
    for _ in range(limit):
        header = fp.read(8)
        if len(header) < 8:
            return None
        length, ctype = struct.unpack(">I4s", header)
        if ctype == b"eXIf":
            return fp.read(length)
        if ctype == b"IEND":
            return None
        fp.seek(length + 4, 1)
    return None
