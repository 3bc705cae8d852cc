"""JPEG / WebP / BMP output with Pillow, plus the sample conversions all writers share.

These encoders need the whole image in memory anyway (Pillow has no
streaming save), so bands are assembled straight into one array of the
final 8-bit dtype - never into a float or 16-bit copy of the full image.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import BinaryIO

import numpy as np
from PIL import Image

from sr_tile.io.meta import EXIF_HEADER, ImageMeta

JPEG_MAX_SIDE = 65_500
WEBP_MAX_SIDE = 16_383
JPEG_MAX_EXIF = 65_533  # one APP1 segment


def convert_band(band: np.ndarray, out_dtype: np.dtype) -> np.ndarray:
    """Samples to ``out_dtype`` with rounding; float is taken as 0..1 and clipped.

    16 -> 8 bits uses round(x / 257), the exact inverse of 8 -> 16 (x * 257).
    """
    out_dtype = np.dtype(out_dtype)
    if band.dtype == out_dtype:
        return band
    if band.dtype == np.uint16 and out_dtype == np.uint8:
        return ((band.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if band.dtype.kind == "f":
        top = float(np.iinfo(out_dtype).max)
        scaled = np.nan_to_num(band, nan=0.0, posinf=1.0, neginf=0.0)
        np.clip(scaled, 0.0, 1.0, out=scaled)
        scaled *= top
        return np.rint(scaled).astype(out_dtype)
    raise ValueError(f"cannot convert {band.dtype} samples to {out_dtype}")


def expand_gray_alpha(band: np.ndarray) -> np.ndarray:
    """LA -> RGBA, for formats that have no gray+alpha mode (BMP)."""
    return band[:, :, [0, 0, 0, 1]]


def write_with_pillow(
    fp: BinaryIO,
    bands: Iterable[np.ndarray],
    *,
    fmt: str,
    width: int,
    height: int,
    channels: int,
    meta: ImageMeta,
    icc_profile: bytes | None,
    quality: int,
    webp_lossless: bool = False,
) -> None:
    """Assemble 8-bit bands (already converted) into one image and save it.

    ``channels`` is the layout of the incoming bands after conversion.
    """
    shape = (height, width) if channels == 1 else (height, width, channels)
    image = np.empty(shape, np.uint8)
    y = 0
    for band in bands:
        h = band.shape[0]
        image[y : y + h] = band[:, :, 0] if channels == 1 else band
        y += h
    im = Image.fromarray(image)  # 2-D -> L, (H, W, 2/3/4) -> LA/RGB/RGBA
    im.save(fp, format=fmt, **_save_options(fmt, meta, icc_profile, quality, webp_lossless))


def _save_options(
    fmt: str, meta: ImageMeta, icc_profile: bytes | None, quality: int, webp_lossless: bool
) -> dict:
    options: dict = {}
    if fmt == "JPEG":
        options.update(quality=quality, subsampling=0)  # 4:4:4: no chroma blur on upscales
    elif fmt == "WEBP":
        options.update(quality=quality, lossless=webp_lossless)
    if fmt in ("JPEG", "WEBP"):
        if icc_profile:
            options["icc_profile"] = icc_profile
        if meta.exif:
            options["exif"] = _exif_for(fmt, meta.exif)
    if meta.dpi is not None and fmt in ("JPEG", "BMP"):
        options["dpi"] = tuple(meta.dpi)
    return options


def _exif_for(fmt: str, exif: bytes) -> bytes:
    """JPEG's APP1 needs the ``Exif\\0\\0`` header; WebP's EXIF chunk is bare TIFF data."""
    bare = exif.removeprefix(EXIF_HEADER)
    return bare if fmt == "WEBP" else EXIF_HEADER + bare
