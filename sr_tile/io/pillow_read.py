"""Decode PNG/JPEG/WebP/BMP/... with Pillow into the (H, W, C) arrays the model uses.

Pillow's modes are many; the pipeline wants four layouts (L, LA, RGB, RGBA)
and three dtypes. This module is the single place that maps one to the
other, keeping bit depth (16-bit stays 16-bit) and gray stays gray, so the
output file is as faithful as the input allows.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from PIL import Image, ImageCms, ImageFile

from sr_tile.errors import ImageReadError
from sr_tile.io.png16 import PngHeader, decode_png16

_GRAY16_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_CONVERT_TO = {"1": "L", "La": "LA", "RGBa": "RGBA", "RGBX": "RGB", "YCbCr": "RGB", "PA": "RGBA"}


class _PillowLimits:
    """Disable Pillow's own decompression-bomb check while our readers run.

    Our `max_pixels` check (with a message that names --max-pixels) must be
    the only one. Pillow's limit is a process global, so it is switched off
    by the first concurrent reader and restored by the last one.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._depth = 0
        self._saved: tuple[int | None, bool] = (None, False)

    @contextmanager
    def unlimited(self) -> Iterator[None]:
        with self._lock:
            if self._depth == 0:
                self._saved = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)
                Image.MAX_IMAGE_PIXELS = None
                ImageFile.LOAD_TRUNCATED_IMAGES = False  # truncated files must fail, not pad
            self._depth += 1
        try:
            yield
        finally:
            with self._lock:
                self._depth -= 1
                if self._depth == 0:
                    Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = self._saved


PILLOW_LIMITS = _PillowLimits()


def pillow_pixels(
    im: Image.Image, name: str, png: PngHeader | None = None
) -> tuple[np.ndarray, bytes | None]:
    """Decode an opened image; return ((H, W, C) pixels, ICC override).

    The override is None to keep the file's profile, b"" to drop it (CMYK
    converted without colour management: the old profile no longer
    describes the pixels) or the sRGB profile after a managed conversion.
    Orientation is NOT applied here.
    """
    if png is not None and png.is_16bit_colour:
        pixels = decode_png16(im, name, png)
        return _with_transparency(pixels, im.info.get("transparency"), 1), None
    if im.format == "BMP":
        rgba = _bmp32_with_alpha(im)
        if rgba is not None:
            return rgba, None
    im.load()
    mode = im.mode
    if mode == "CMYK":
        return _cmyk_to_rgb(im)
    if mode == "P":
        im = im.convert("RGBA" if im.has_transparency_data else "RGB")
    elif mode in _CONVERT_TO:
        im = im.convert(_CONVERT_TO[mode])
    elif mode not in ("L", "LA", "RGB", "RGBA", "I", "F", *_GRAY16_MODES):
        im = _convert_other(im, name)
    pixels = _array(im, name)
    scale = png.gray_sample_scale if png is not None else 1
    return _with_transparency(pixels, im.info.get("transparency"), scale), None


def _bmp32_with_alpha(im: Image.Image) -> np.ndarray | None:
    """RGBA pixels of a 32-bit BI_RGB BMP whose 4th byte is real alpha, else None.

    Pillow reads these as RGB (the 4th byte is often padding), so RGBA BMPs,
    which Pillow itself writes, would lose alpha on a round trip. As other
    viewers do, the 4th byte counts as alpha unless it is constant 0 or 255.
    """
    tiles = im.tile
    if len(tiles) != 1 or tiles[0].codec_name != "raw" or im.filename is None:
        return None
    args = tiles[0].args
    if not isinstance(args, tuple) or len(args) < 3 or args[0] != "BGRX":
        return None
    width, height = im.size
    stride = args[1] or width * 4
    with open(im.filename, "rb") as fp:
        fp.seek(tiles[0].offset)
        raw = fp.read(stride * height)
    if len(raw) < stride * height or stride < width * 4:
        raise OSError("image file is truncated")
    bgra = (
        np.frombuffer(raw, np.uint8)
        .reshape(height, stride)[:, : width * 4]
        .reshape(height, width, 4)
    )
    if args[2] < 0:
        bgra = bgra[::-1]
    alpha = bgra[:, :, 3]
    if not alpha.any() or (alpha == 255).all():
        return None
    return np.ascontiguousarray(bgra[:, :, [2, 1, 0, 3]])


def _convert_other(im: Image.Image, name: str) -> Image.Image:
    """Exotic modes (LAB, HSV...): whatever Pillow can turn into RGB."""
    try:
        return im.convert("RGB")
    except ValueError as exc:
        raise ImageReadError(f"{name}: unsupported colour mode {im.mode}") from exc


def _array(im: Image.Image, name: str) -> np.ndarray:
    """Pillow image in L/LA/RGB/RGBA/I/F/I;16* -> (H, W, C) array of our dtypes."""
    arr = np.asarray(im)
    if im.mode in _GRAY16_MODES:
        arr = arr.astype(np.uint16, copy=False)
    elif im.mode == "I":
        arr = _int32_to_uint16(arr, name)
    elif im.mode == "F":
        arr = arr.astype(np.float32, copy=False)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return arr


def _int32_to_uint16(arr: np.ndarray, name: str) -> np.ndarray:
    """32-bit integer gray is kept only when it is really 16-bit data."""
    if arr.size and (arr.min() < 0 or arr.max() > 65535):
        raise ImageReadError(f"{name}: 32-bit integer pixels outside 0..65535 are not supported")
    return arr.astype(np.uint16)


def _with_transparency(pixels: np.ndarray, trns: object, scale: int) -> np.ndarray:
    """Turn a tRNS-style transparent colour (gray int or RGB tuple) into alpha.

    ``scale`` maps a low-bit-depth PNG gray value to the 0..255 range Pillow
    unpacks it to (e.g. 17 for 4-bit). Palette transparency is handled by
    Pillow's conversion before we get here.
    """
    if trns is None or isinstance(trns, bytes) or pixels.shape[2] not in (1, 3):
        return pixels
    key = np.atleast_1d(np.asarray(trns, dtype=np.int64)) * scale
    if key.size != pixels.shape[2] or pixels.dtype == np.float32:
        return pixels
    opaque = np.iinfo(pixels.dtype).max
    alpha = np.where((pixels == key.astype(pixels.dtype)).all(axis=2), 0, opaque)
    return np.concatenate([pixels, alpha.astype(pixels.dtype)[:, :, None]], axis=2)


def _cmyk_to_rgb(im: Image.Image) -> tuple[np.ndarray, bytes | None]:
    """CMYK -> RGB, colour-managed to sRGB when the file carries a profile.

    Without a profile, Pillow's naive conversion is the best available and
    no profile is claimed for the result.
    """
    profile = im.info.get("icc_profile")
    if profile:
        try:
            srgb = ImageCms.createProfile("sRGB")
            src = ImageCms.ImageCmsProfile(io.BytesIO(profile))
            rgb = ImageCms.profileToProfile(im, src, srgb, outputMode="RGB")
            if rgb is not None:
                return np.asarray(rgb), ImageCms.ImageCmsProfile(srgb).tobytes()
        except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
            pass  # unusable profile: fall back to the plain conversion below
    return np.asarray(im.convert("RGB")), b""


def cmyk_array_to_rgb(cmyk: np.ndarray, icc_profile: bytes | None) -> tuple[np.ndarray, bytes]:
    """CMYK uint8 array (H, W, 4) from another decoder -> RGB, via the same path."""
    height, width = cmyk.shape[:2]
    im = Image.frombytes("CMYK", (width, height), np.ascontiguousarray(cmyk).tobytes())
    if icc_profile:
        im.info["icc_profile"] = icc_profile
    rgb, profile = _cmyk_to_rgb(im)
    return rgb, profile or b""
