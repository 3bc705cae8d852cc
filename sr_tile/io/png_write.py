"""Streaming PNG encoder: 8/16-bit L, LA, RGB, RGBA in bounded memory.

Pillow needs the whole image in memory and cannot write 16-bit colour PNG
at all; outputs here can be 20480x11520 and larger. This encoder takes the
image band by band, filters each row with the usual adaptive heuristic
(the filter with the smallest sum of absolute signed residuals) and feeds
one zlib stream, emitting IDAT chunks of about 1 MiB. Filters are computed
on the unfiltered previous row, so a whole block of rows is filtered with
a handful of vectorised numpy operations.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable
from typing import BinaryIO

import numpy as np

from sr_tile.io.meta import EXIF_HEADER, ImageMeta

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_COLOUR_TYPE = {1: 0, 2: 4, 3: 2, 4: 6}
_IDAT_SIZE = 1 << 20
_BLOCK_BYTES = 1 << 18  # raw bytes filtered per numpy step (temporaries ~10x this)


def write_png(
    fp: BinaryIO,
    bands: Iterable[np.ndarray],
    *,
    width: int,
    height: int,
    channels: int,
    bit_depth: int,
    meta: ImageMeta,
    compress_level: int = 6,
    icc_profile: bytes | None = None,
) -> None:
    """Encode (h, width, channels) bands, top to bottom, to ``fp``.

    Bands are uint8 for ``bit_depth`` 8 and uint16 for 16 (the caller
    validated them). ``icc_profile`` is the profile to embed (the caller
    has checked it matches the pixel layout); DPI and EXIF come from
    ``meta``. Only one band plus ~1 MiB of filter temporaries is ever held.
    """
    fp.write(PNG_SIGNATURE)
    _write_header(fp, width, height, channels, bit_depth, meta, icc_profile)
    idat = _IdatWriter(fp, compress_level)
    bpp = channels * bit_depth // 8
    prev = np.zeros(width * bpp, np.uint8)
    step = max(1, _BLOCK_BYTES // (width * bpp))
    for band in bands:
        rows = _row_bytes(band)
        for y in range(0, rows.shape[0], step):
            block = rows[y : y + step]
            idat.write(filter_rows(block, prev, bpp))
            prev = block[-1].copy()  # the producer may reuse its band buffer
    idat.close()
    write_chunk(fp, b"IEND", b"")


def _write_header(
    fp: BinaryIO,
    width: int,
    height: int,
    channels: int,
    bit_depth: int,
    meta: ImageMeta,
    icc_profile: bytes | None,
) -> None:
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, _COLOUR_TYPE[channels], 0, 0, 0)
    write_chunk(fp, b"IHDR", ihdr)
    if icc_profile:
        write_chunk(fp, b"iCCP", b"ICC profile\x00\x00" + zlib.compress(icc_profile, 9))
    if meta.dpi is not None:
        ppm = [max(1, round(d / 0.0254)) for d in meta.dpi]
        write_chunk(fp, b"pHYs", struct.pack(">IIB", ppm[0], ppm[1], 1))
    if meta.exif:
        exif = meta.exif.removeprefix(EXIF_HEADER)
        write_chunk(fp, b"eXIf", exif)


def _row_bytes(band: np.ndarray) -> np.ndarray:
    """(h, W, C) samples -> (h, W*C*bytes) uint8 in PNG (big-endian) order."""
    h = band.shape[0]
    band = np.ascontiguousarray(band, dtype=">u2" if band.dtype == np.uint16 else np.uint8)
    return band.view(np.uint8).reshape(h, -1)


def filter_rows(rows: np.ndarray, prev: np.ndarray, bpp: int) -> np.ndarray:
    """Adaptively filtered rows, each prefixed with its filter type byte.

    ``rows`` is (n, rowbytes) uint8, ``prev`` the unfiltered row above the
    first one (zeros at the top of the image), ``bpp`` bytes per pixel.
    """
    n, rb = rows.shape
    x = rows
    b = np.empty_like(rows)
    b[0] = prev
    b[1:] = rows[:-1]
    a = np.zeros_like(rows)
    a[:, bpp:] = rows[:, :-bpp]
    c = np.zeros_like(rows)
    c[:, bpp:] = b[:, :-bpp]

    cand = np.empty((5, n, rb), np.uint8)
    cand[0] = x
    np.subtract(x, a, out=cand[1])
    np.subtract(x, b, out=cand[2])
    np.subtract(x, ((a.astype(np.uint16) + b) >> 1).astype(np.uint8), out=cand[3])
    np.subtract(x, _paeth(a, b, c), out=cand[4])

    # Cost: magnitude of each byte read as int8 (abs(-128) wraps to 128 as uint8).
    cost = np.abs(cand.view(np.int8)).view(np.uint8).sum(axis=2, dtype=np.int64)  # (5, n)
    choice = cost.argmin(axis=0)  # ties go to the lower filter type
    out = np.empty((n, rb + 1), np.uint8)
    out[:, 0] = choice
    out[:, 1:] = cand[choice, np.arange(n)]
    return out


def _paeth(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """The PNG Paeth predictor, elementwise (ties: a, then b, then c)."""
    a16, b16, c16 = (v.astype(np.int16) for v in (a, b, c))
    pa = np.abs(b16 - c16)
    pb = np.abs(a16 - c16)
    pc = np.abs(a16 + b16 - 2 * c16)
    return np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))


class _IdatWriter:
    """One zlib stream cut into IDAT chunks of about 1 MiB."""

    def __init__(self, fp: BinaryIO, level: int) -> None:
        self._fp = fp
        self._z = zlib.compressobj(level, zlib.DEFLATED, 15, 9)
        self._pending = bytearray()

    def write(self, filtered: np.ndarray) -> None:
        self._pending += self._z.compress(filtered.tobytes())
        if len(self._pending) >= _IDAT_SIZE:
            self._flush()

    def close(self) -> None:
        self._pending += self._z.flush()
        self._flush()

    def _flush(self) -> None:
        if self._pending:
            write_chunk(self._fp, b"IDAT", bytes(self._pending))
            self._pending.clear()


def write_chunk(fp: BinaryIO, ctype: bytes, data: bytes) -> None:
    """Length, type, data, CRC-32 over type+data."""
    crc = zlib.crc32(data, zlib.crc32(ctype)) & 0xFFFFFFFF
    fp.write(struct.pack(">I", len(data)) + ctype)
    fp.write(data)
    fp.write(struct.pack(">I", crc))
