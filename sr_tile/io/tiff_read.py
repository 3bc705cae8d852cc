"""TIFF / BigTIFF input via tifffile: 16-bit, float, planar and huge files.

Pillow handles TIFF only in 8 bits per colour channel, so tifffile is the
primary decoder. Without the optional ``imagecodecs`` package tifffile
cannot decompress LZW or JPEG; such files (very common) are then decoded
with Pillow when that is lossless (8-bit data or 16-bit gray) and refused
with an actionable message otherwise.

Damaged files must fail fast, not hang: the IFD chain is walked by our own
bounded reader (tifffile's page indexing, used by ``TiffFile.series``, loops
forever on a chain that cycles after more than 100 IFDs), only the first page
is handed to tifffile, and its strips or tiles must lie inside the file and
hold enough bytes for the declared size before anything is decoded.
"""

from __future__ import annotations

import struct
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from sr_tile.errors import ImageReadError
from sr_tile.io.meta import ImageMeta, orient, oriented_dpi, oriented_size, owned_pixels
from sr_tile.io.pillow_read import cmyk_array_to_rgb, pillow_pixels
from sr_tile.io.quiet import library_messages

_COMPRESSION_NAMES = {
    1: "none",
    5: "lzw",
    6: "jpeg",
    7: "jpeg",
    8: "zlib",
    32946: "zlib",
    32773: "packbits",
    34925: "lzma",
    50000: "zstd",
    34927: "webp",
}
_MINISWHITE, _MINISBLACK, _RGB, _PALETTE, _SEPARATED, _YCBCR = 0, 1, 2, 3, 5, 6
_ASSOCIATED_ALPHA = 1
_RESUNIT_INCH, _RESUNIT_CM = 2, 3
# Worst-case expansion (decoded bytes per stored byte) of TIFF codecs with a known bound;
# others (JPEG, WebP, zstd, LZMA...) are bounded by --max-pixels only.
_MAX_RATIO = {1: 1, 32773: 128, 5: 4096, 8: 1032, 32946: 1032}
_SLACK_BYTES = 1 << 16
MAX_PAGES = 100_000  # IFDs counted before we stop walking the chain
_MAX_TAGS = 4096  # more entries in one IFD than any real file has: a damaged chain
_NEW_SUBFILE_TYPE = 254
_REDUCED_OR_MASK = 0b101  # NewSubfileType bits: reduced-resolution copy, transparency mask


def probe_tiff(path: Path, name: str) -> tuple[int, int]:
    """(width, height) after orientation, from the first IFD only."""
    with tifffile.TiffFile(path) as tif:
        page = _first_page(tif, name)
        return oriented_size(page.imagewidth, page.imagelength, _orientation(page))


def read_tiff(
    path: Path, name: str, check_size: Callable[[int, int], None], notes: list[str]
) -> tuple[np.ndarray, ImageMeta]:
    """Decode the first page to (H, W, C) and meta.

    ``name`` labels error messages; ``check_size(width, height)`` runs
    before any pixel data is read. A file with more than one image (pages
    that are not reduced-resolution copies or masks of the first) adds a
    line to ``notes``: only the first is upscaled.
    """
    with open(path, "rb") as fh:
        images = count_images(fh)
    if images > 1:
        more = "+" if images >= MAX_PAGES else ""
        notes.append(f"{name}: TIFF with {images}{more} pages; only the first is upscaled")
    with tifffile.TiffFile(path) as tif:
        page = _first_page(tif, name)
        check_size(page.imagewidth, page.imagelength)
        _check_layout(page, name)
        _check_data(page, name, tif.filehandle.size)
        icc = _icc(page)
        try:
            pixels, icc = _to_colour_layout(_decode(page), page, icc)
        except ValueError as exc:
            if "imagecodecs" not in str(exc):
                raise
            pixels, override = _decode_with_pillow(path, page, name)
            icc = icc if override is None else (override or None)
        meta = ImageMeta(
            format="TIFF",
            icc_profile=icc,
            dpi=oriented_dpi(_dpi(page), _orientation(page)),
            bigtiff=bool(tif.is_bigtiff),
            compression=_compression_name(page.compression),
        )
        pixels = orient(pixels, _orientation(page))
    return owned_pixels(pixels), meta


def _first_page(tif: tifffile.TiffFile, name: str) -> tifffile.TiffPage:
    page = tif.pages.first if len(tif.pages._offsets) else None  # no chain walk (see above)
    if not isinstance(page, tifffile.TiffPage) or not page.shape or not page.size:
        raise ImageReadError(f"{name}: TIFF file contains no image")
    return page


def count_images(fh) -> int:
    """Images in a TIFF's IFD chain, without trusting it: stops at a loop, at an offset
    outside the file, at an IFD with an absurd tag count, and after ``MAX_PAGES`` IFDs.
    Reduced-resolution copies and masks (NewSubfileType) are not counted."""
    fh.seek(0, 2)
    size = fh.tell()
    fh.seek(0)
    head = fh.read(16)
    order = "<" if head[:2] == b"II" else ">"
    big = struct.unpack(order + "H", head[2:4])[0] == 43
    count_fmt, entry, offset_fmt = ("Q", 20, "Q") if big else ("H", 12, "I")
    offset = struct.unpack(order + offset_fmt, head[8:16] if big else head[4:8])[0]
    seen: set[int] = set()
    images = 0
    while offset and offset not in seen and len(seen) < MAX_PAGES and offset < size:
        seen.add(offset)
        fh.seek(offset)
        raw = fh.read(struct.calcsize(count_fmt))
        if len(raw) < struct.calcsize(count_fmt):
            break
        n = struct.unpack(order + count_fmt, raw)[0]
        if n > _MAX_TAGS:
            break
        table = fh.read(n * entry + struct.calcsize(offset_fmt))
        if len(table) < n * entry + struct.calcsize(offset_fmt):
            break
        images += not _reduced_or_mask(table, n, entry, order, big) if n else 0
        offset = struct.unpack(order + offset_fmt, table[n * entry:])[0]
    return images


def _reduced_or_mask(table: bytes, n: int, entry: int, order: str, big: bool) -> bool:
    for i in range(n):
        tag, kind = struct.unpack(order + "HH", table[i * entry:i * entry + 4])
        if tag == _NEW_SUBFILE_TYPE and kind in (3, 4):  # SHORT or LONG, stored inline
            start = i * entry + (12 if big else 8)
            value = struct.unpack(order + ("H" if kind == 3 else "I"),
                                  table[start:start + (2 if kind == 3 else 4)])[0]
            return bool(value & _REDUCED_OR_MASK)
    return False


def _check_data(page: tifffile.TiffPage, name: str, file_size: int) -> None:
    """The strips/tiles must lie inside the file and, for codecs with a bounded ratio,
    hold enough bytes for the declared size: checked before anything is allocated."""
    stored = 0
    for offset, count in zip(page.dataoffsets, page.databytecounts):
        if count and offset + count > file_size:
            raise ImageReadError(f"{name}: corrupt or truncated image "
                                 "(image data runs past the end of the file)")
        stored += count
    ratio = _MAX_RATIO.get(int(page.compression))
    raw = page.imagelength * page.imagewidth * page.samplesperpixel * page.bitspersample // 8
    if ratio is not None and raw > ratio * stored + _SLACK_BYTES:
        raise ImageReadError(
            f"{name}: corrupt or truncated image (the header claims "
            f"{page.imagewidth}x{page.imagelength} pixels, more than its {stored:,} bytes "
            f"of {'uncompressed' if ratio == 1 else _compression_name(page.compression)} data "
            "can hold)")


def _check_layout(page: tifffile.TiffPage, name: str) -> None:
    """Refuse what we cannot represent, before decoding anything."""
    if page.imagedepth != 1:
        raise ImageReadError(f"{name}: unsupported TIFF layout (volumetric image)")
    dtype = np.dtype(page.dtype) if page.dtype is not None else None
    if (
        dtype is None
        or not (dtype.kind in "uf" or dtype == np.bool_)
        or (dtype.kind == "u" and dtype.itemsize > 2)
    ):
        raise ImageReadError(
            f"{name}: unsupported TIFF sample format ({dtype}); "
            "use 8/16-bit unsigned or floating point samples"
        )
    spp, photometric = page.samplesperpixel, int(page.photometric)
    colour = {_MINISWHITE: 1, _MINISBLACK: 1, _PALETTE: 1, _RGB: 3, _SEPARATED: 4, _YCBCR: 3}
    if photometric not in colour:
        raise ImageReadError(f"{name}: unsupported TIFF photometric interpretation ({photometric})")
    extra = spp - colour[photometric]
    if spp > 4 or extra not in (0, 1):
        raise ImageReadError(
            f"{name}: unsupported TIFF sample format "
            f"({spp} samples per pixel, photometric {photometric})"
        )
    if photometric == _SEPARATED and dtype != np.uint8:
        raise ImageReadError(f"{name}: unsupported TIFF sample format (CMYK with {dtype} samples)")
    if photometric == _PALETTE and (page.colormap is None or spp != 1):
        raise ImageReadError(
            f"{name}: unsupported TIFF layout (palette with extra samples or no colormap)"
        )
    if photometric == _YCBCR and int(page.compression) not in (6, 7):
        raise ImageReadError(f"{name}: unsupported TIFF layout (uncompressed YCbCr)")


def _decode(page: tifffile.TiffPage) -> np.ndarray:
    """Raw samples as (H, W, S), planar data moved to the last axis."""
    arr = page.asarray()
    h, w, spp = page.imagelength, page.imagewidth, page.samplesperpixel
    if spp > 1 and int(page.planarconfig) == 2:
        arr = np.moveaxis(arr.reshape(spp, h, w), 0, -1)
    return arr.reshape(h, w, spp)


def _decode_with_pillow(
    path: Path, page: tifffile.TiffPage, name: str
) -> tuple[np.ndarray, bytes | None]:
    """Pillow fallback for codecs tifffile lacks, only where Pillow is exact.

    Pillow already resolves palette, MINISWHITE (8-bit), CMYK and associated
    alpha, so its result needs no further layout conversion. Returns the
    pixels and Pillow's ICC override (see `pillow_pixels`).
    """
    dtype = np.dtype(page.dtype)
    photometric = int(page.photometric)
    exact = dtype in (np.uint8, np.bool_) or (
        dtype == np.uint16 and page.samplesperpixel == 1 and photometric == _MINISBLACK
    )
    if not exact:
        codec = _compression_name(page.compression)
        raise ImageReadError(
            f"{name}: reading {codec}-compressed {dtype} TIFF needs the imagecodecs "
            "package (pip install imagecodecs)"
        )
    with library_messages(c_stderr=True) as said:  # libtiff prints straight to fd 2
        with Image.open(path) as im:
            result = pillow_pixels(im, name)
    for line in said:  # passed on to the reader's own collection
        warnings.warn(line, stacklevel=1)
    return result


def _to_colour_layout(
    raw: np.ndarray, page: tifffile.TiffPage, icc: bytes | None
) -> tuple[np.ndarray, bytes | None]:
    """Photometric/extra samples/dtype -> L, LA, RGB or RGBA of our dtypes."""
    photometric = int(page.photometric)
    if raw.dtype == np.bool_:
        raw = raw.astype(np.uint8) * np.uint8(255)
    elif raw.dtype.kind == "f" and raw.dtype != np.float32:
        raw = raw.astype(np.float32)
    if photometric == _PALETTE:
        return _apply_colormap(raw[:, :, 0], page.colormap), icc
    if photometric == _SEPARATED:
        rgb, profile = cmyk_array_to_rgb(raw, icc)
        return rgb, profile or None
    if photometric == _MINISWHITE:
        raw = raw.copy()
        raw[:, :, 0] = _invert(raw[:, :, 0])
    extras = tuple(int(e) for e in (page.extrasamples or ()))
    if extras and extras[0] == _ASSOCIATED_ALPHA and raw.shape[2] in (2, 4):
        raw = _unpremultiply(raw)
    return raw, icc


def _invert(gray: np.ndarray) -> np.ndarray:
    if gray.dtype.kind == "f":
        return np.float32(1.0) - gray
    return np.iinfo(gray.dtype).max - gray


def _apply_colormap(index: np.ndarray, colormap: np.ndarray) -> np.ndarray:
    """Palette indices -> RGB, in 8 bits when the 16-bit colormap is just scaled 8-bit."""
    cmap = np.asarray(colormap).T  # (N, 3) uint16
    if cmap.max() <= 255:
        table = cmap.astype(np.uint8)
    elif not (cmap % 257).any():
        table = (cmap // 257).astype(np.uint8)
    elif not (cmap % 256).any():
        table = (cmap >> 8).astype(np.uint8)
    else:
        table = cmap.astype(np.uint16)
    return table[np.minimum(index, len(table) - 1)]


def _unpremultiply(pixels: np.ndarray, rows: int = 256) -> np.ndarray:
    """Associated (premultiplied) alpha -> the straight alpha every writer stores.

    Processed in row blocks so the float temporaries stay small.
    """
    out = pixels.copy()
    top = 1.0 if pixels.dtype.kind == "f" else float(np.iinfo(pixels.dtype).max)
    for y in range(0, pixels.shape[0], rows):
        block = pixels[y : y + rows].astype(np.float32)
        alpha = block[:, :, -1:]
        with np.errstate(divide="ignore", invalid="ignore"):
            colour = np.where(alpha > 0, block[:, :, :-1] * top / alpha, 0.0)
        if pixels.dtype.kind != "f":
            colour = np.clip(np.rint(colour), 0, top)
        out[y : y + rows, :, :-1] = colour.astype(pixels.dtype)
    return out


def _orientation(page: tifffile.TiffPage) -> int:
    tag = page.tags.get(274)
    try:
        value = int(tag.value) if tag is not None else 1
    except (TypeError, ValueError):
        return 1
    return value if 1 <= value <= 8 else 1


def _icc(page: tifffile.TiffPage) -> bytes | None:
    tag = page.tags.get(34675)
    if tag is None:
        return None
    value = tag.value
    return (
        bytes(value) if isinstance(value, (bytes, bytearray, np.ndarray)) and len(value) else None
    )


def _dpi(page: tifffile.TiffPage) -> tuple[float, float] | None:
    """XResolution/YResolution in dots per inch; None when the unit is 'none'."""
    xres, yres, unit = page.tags.get(282), page.tags.get(283), page.tags.get(296)
    if xres is None or yres is None:
        return None
    unit_value = int(unit.value) if unit is not None else _RESUNIT_INCH
    factor = {_RESUNIT_INCH: 1.0, _RESUNIT_CM: 2.54}.get(unit_value)
    x, y = _rational(xres.value), _rational(yres.value)
    if factor is None or not x or not y or x <= 0 or y <= 0:
        return None
    return (x * factor, y * factor)


def _rational(value: object) -> float | None:
    try:
        if isinstance(value, tuple):
            return value[0] / value[1] if value[1] else None
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, IndexError, ZeroDivisionError):
        return None


def _compression_name(compression: object) -> str:
    code = int(compression)  # type: ignore[call-overload]
    if code in _COMPRESSION_NAMES:
        return _COMPRESSION_NAMES[code]
    try:
        return tifffile.COMPRESSION(code).name.lower()
    except ValueError:
        return str(code)
