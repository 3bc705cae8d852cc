"""Streaming tiled TIFF / BigTIFF output via tifffile.

tifffile accepts an iterator of tiles when given the full shape, dtype and
tile size, and zero-pads short edge tiles itself. We buffer incoming bands
into one tile row (tile x width x C) and yield that row's tiles.

Tiles are compressed by ``workers`` threads (tifffile's ``maxworkers``; its
own default is half the cores, i.e. one thread on a 2-core machine). With a
tile iterator tifffile works in batches: it takes max(maxworkers,
buffersize // tile bytes) tiles from the iterator, compresses them with
``ThreadPoolExecutor.map`` and writes them in order before taking the next
batch (so bands are not produced while a batch compresses). With
``buffersize`` one tile row, memory stays at our row buffer plus one batch
(one tile row, or ``workers`` tiles if that is more) and its compressed
tiles, whatever the image height, and a batch of a tile row keeps the
workers busy: a 20480-wide image has 80 tiles of 256 per row.

EXIF is not written to TIFF: TIFF stores EXIF as a sub-IFD whose tags
tifffile cannot take from a raw EXIF block, and carrying it half-way would
be worse than leaving it out. ICC profile and resolution are kept.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import BinaryIO

import numpy as np
import tifffile

from sr_tile.io.meta import ImageMeta
from sr_tile.io.png_write import resolve_workers

BIGTIFF_THRESHOLD = int(3.5 * 2**30)  # uncompressed bytes; classic TIFF offsets are 32-bit
# Codecs tifffile implements itself when imagecodecs is not installed.
_BUILTIN_CODECS = ("none", "zlib", "lzma", "zstd")
_ALIASES = {"deflate": "zlib", "adobe_deflate": "zlib", "uncompressed": "none", "raw": "none"}
_LOSSLESS = ("none", "zlib", "lzma", "zstd", "lzw", "packbits")


def normalise_compression(name: str | None) -> str | None:
    if name is None:
        return None
    key = name.strip().lower()
    return _ALIASES.get(key, key)


def can_encode(name: str) -> bool:
    """Whether tifffile can write ``name`` in this environment (with or without imagecodecs)."""
    if name == "none":
        return True
    codecs = tifffile.tifffile.imagecodecs
    encode = getattr(codecs, f"{name}_encode", None)
    if encode is None:
        return False
    try:
        encode(b"\x00" * 64)
    except Exception:  # noqa: BLE001 - e.g. Python built without lzma, or no zstd before 3.14
        return False
    return True


def choose_compression(option: str | None, input_compression: str | None) -> str:
    """Resolve WriteOptions.tiff_compression: explicit name, else input's if writable, else zlib."""
    if option is not None:
        return normalise_compression(option) or "zlib"
    inherited = normalise_compression(input_compression)
    if inherited in _BUILTIN_CODECS and can_encode(inherited):
        return inherited
    return "zlib"


def compression_problem(name: str) -> str | None:
    """Why ``name`` cannot be used for output, or None if it can."""
    if name not in _LOSSLESS:
        return f"unsupported TIFF compression {name!r}; use one of {', '.join(_LOSSLESS)}"
    if not can_encode(name):
        return f"TIFF compression {name!r} is not available here (needs the imagecodecs package)"
    return None


def needs_bigtiff(option: bool | None, meta: ImageMeta, nbytes: int) -> bool:
    if option is not None:
        return option
    return meta.bigtiff or nbytes > BIGTIFF_THRESHOLD


def write_tiff(
    fp: BinaryIO,
    bands: Iterable[np.ndarray],
    *,
    width: int,
    height: int,
    channels: int,
    dtype: np.dtype,
    meta: ImageMeta,
    compression: str,
    tile: int,
    bigtiff: bool,
    icc_profile: bytes | None,
    compress_level: int = 6,
    workers: int | None = None,
) -> None:
    """Write validated bands as one tiled image (contig samples, alpha unassociated).

    ``compress_level`` (0-9) is zlib's level; lzma and zstd keep their codecs'
    own defaults (the 0-9 scale does not carry over: lzma's preset 9 needs
    ~670 MiB per thread, zstd's levels go to 22). ``workers`` threads compress
    tiles (None: one per CPU).
    """
    dtype = np.dtype(dtype)
    shape = (height, width) if channels == 1 else (height, width, channels)
    tile_row_bytes = tile * width * channels * dtype.itemsize
    kwargs: dict = {
        "shape": shape,
        "dtype": dtype,
        "photometric": "rgb" if channels >= 3 else "minisblack",
        "tile": (tile, tile),
        "compression": None if compression == "none" else compression,
        "metadata": None,
        "software": "sr-tile",
        "buffersize": max(tile_row_bytes, 1),
        "maxworkers": resolve_workers(workers),
    }
    if channels > 1:
        kwargs["planarconfig"] = "contig"
    if channels in (2, 4):
        kwargs["extrasamples"] = ("unassalpha",)
    if compression in ("zlib", "lzma", "zstd") and dtype.kind == "u":
        kwargs["predictor"] = True  # horizontal differencing: much smaller photos
    if compression == "zlib":
        kwargs["compressionargs"] = {"level": compress_level}
    if icc_profile:
        kwargs["iccprofile"] = icc_profile
    if meta.dpi is not None:
        kwargs["resolution"] = (float(meta.dpi[0]), float(meta.dpi[1]))
        kwargs["resolutionunit"] = "inch"
    tiles = _tiles(bands, width, channels, dtype, tile)
    with tifffile.TiffWriter(fp, bigtiff=bigtiff) as writer:
        writer.write(tiles, **kwargs)


def _tiles(
    bands: Iterable[np.ndarray], width: int, channels: int, dtype: np.dtype, tile: int
) -> Iterator[np.ndarray]:
    """Tiles in row-major order from bands of any height.

    Each tile is a fresh copy: tifffile may hold several before encoding
    them in threads, while the row buffer is refilled.
    """
    row = np.empty((tile, width, channels), dtype)
    filled = 0
    for band in bands:
        y = 0
        while y < band.shape[0]:
            take = min(tile - filled, band.shape[0] - y)
            row[filled : filled + take] = band[y : y + take]
            filled += take
            y += take
            if filled == tile:
                yield from _split_row(row, tile, channels)
                filled = 0
    if filled:
        yield from _split_row(row[:filled], tile, channels)


def _split_row(row: np.ndarray, tile: int, channels: int) -> Iterator[np.ndarray]:
    for x in range(0, row.shape[1], tile):
        piece = row[:, x : x + tile]
        yield (piece[:, :, 0] if channels == 1 else piece).copy()
