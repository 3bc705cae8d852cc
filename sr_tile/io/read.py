"""Read any supported image file into an `ImageData`, or fail with one clear line.

The format is chosen by content (magic bytes), never by extension: TIFF and
BigTIFF go to tifffile, everything else to Pillow. Every failure a user can
cause - missing, empty, not an image, corrupt, truncated, too large - ends
as an `ImageReadError` whose message starts with the path, so a batch run
can print it and move on.
"""

from __future__ import annotations

import os
import stat
import struct
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from sr_tile.errors import ImageReadError
from sr_tile.io.meta import (
    ImageData,
    ImageMeta,
    exif_orientation,
    normalise_exif,
    orient,
    oriented_dpi,
    oriented_size,
    owned_pixels,
)
from sr_tile.io.pillow_read import PILLOW_LIMITS, pillow_pixels
from sr_tile.io.png16 import find_png_exif, read_png_header
from sr_tile.io.tiff_read import probe_tiff, read_tiff

DEFAULT_MAX_PIXELS = 1_000_000_000

_TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
# Signatures that prove the file meant to be an image, for a better message
# than "not a recognised image" when its header is damaged.
_SIGNATURES = {
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"\xff\xd8\xff": "JPEG",
    b"GIF87a": "GIF",
    b"GIF89a": "GIF",
}
# What Pillow, tifffile and zlib raise on malformed or truncated data.
_DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
    zlib.error,
    IndexError,
    KeyError,
)

SizeCheck = Callable[[int, int], None]


def read_image(
    path: str | os.PathLike[str], *, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> ImageData:
    """Decode ``path`` to (H, W, C) pixels with orientation applied, plus metadata.

    ``max_pixels`` (None: no limit) is checked from the header before any
    pixel data is decompressed, so a decompression bomb costs nothing.
    """
    if max_pixels is not None and max_pixels <= 0:
        raise ValueError(f"max_pixels must be positive or None, not {max_pixels}")
    path = Path(path)
    label = str(path)
    head = _read_head(path, label)
    check = _size_check(label, max_pixels)
    with PILLOW_LIMITS.unlimited(), _decode_errors(label):
        if head.startswith(_TIFF_MAGICS):
            pixels, meta = read_tiff(path, label, check)
        else:
            pixels, meta = _read_pillow(path, label, head, check)
    return ImageData(pixels=pixels, meta=meta)


def probe_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(width, height) as displayed (orientation applied), from the header only.

    Lets the CLI plan work and check limits for a whole batch cheaply.
    """
    path = Path(path)
    label = str(path)
    head = _read_head(path, label)
    with PILLOW_LIMITS.unlimited(), _decode_errors(label):
        if head.startswith(_TIFF_MAGICS):
            return probe_tiff(path, label)
        with _open_pillow(path, label, head) as im:
            width, height = im.size
            raw_exif = im.info.get("exif")
            if raw_exif is None and im.format == "PNG":
                with open(path, "rb") as fp:
                    raw_exif = find_png_exif(fp)
        return oriented_size(width, height, exif_orientation(raw_exif))


def _read_pillow(
    path: Path, label: str, head: bytes, check: SizeCheck
) -> tuple[np.ndarray, ImageMeta]:
    with _open_pillow(path, label, head) as im:
        check(*im.size)
        png = read_png_header(head) if im.format == "PNG" else None
        pixels, icc_override = pillow_pixels(im, label, png)
        icc = im.info.get("icc_profile") or None
        if icc_override is not None:
            icc = icc_override or None
        exif, orientation = normalise_exif(im.info.get("exif"))
        dpi = _valid_dpi(im.info.get("dpi"))
        fmt = "JPEG" if im.format == "MPO" else str(im.format)
    pixels = owned_pixels(orient(pixels, orientation))
    meta = ImageMeta(format=fmt, icc_profile=icc, exif=exif, dpi=oriented_dpi(dpi, orientation))
    return pixels, meta


def _open_pillow(path: Path, label: str, head: bytes) -> Image.Image:
    try:
        return Image.open(path)
    except UnidentifiedImageError:
        kind = _signature_kind(head)
        if kind is not None:
            raise ImageReadError(
                f"{label}: corrupt or truncated image (invalid {kind} header)"
            ) from None
        raise ImageReadError(f"{label}: not a recognised image") from None


def _signature_kind(head: bytes) -> str | None:
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    for signature, kind in _SIGNATURES.items():
        if head.startswith(signature):
            return kind
    return None


def _read_head(path: Path, label: str) -> bytes:
    """First bytes of the file, after the checks that give the clearest messages."""
    try:
        info = path.stat()
        if stat.S_ISDIR(info.st_mode):
            raise ImageReadError(f"{label}: is a directory, not an image file")
        if info.st_size == 0:
            raise ImageReadError(f"{label}: empty file")
        with open(path, "rb") as fp:
            return fp.read(64)
    except FileNotFoundError:
        raise ImageReadError(f"{label}: no such file") from None
    except PermissionError:
        raise ImageReadError(f"{label}: permission denied") from None
    except OSError as exc:
        raise ImageReadError(f"{label}: cannot read file ({one_line(exc)})") from None


def _size_check(label: str, max_pixels: int | None) -> SizeCheck:
    def check(width: int, height: int) -> None:
        if max_pixels is not None and width * height > max_pixels:
            raise ImageReadError(
                f"{label}: image is {width}x{height} ({width * height:,} pixels), more than "
                f"the limit of {max_pixels:,} pixels; raise it with --max-pixels"
            )

    return check


@contextmanager
def _decode_errors(label: str) -> Iterator[None]:
    """Turn any decoder failure into one line that names the file."""
    try:
        yield
    except ImageReadError:
        raise
    except MemoryError:
        raise ImageReadError(f"{label}: not enough memory to decode this image") from None
    except _DECODE_ERRORS as exc:
        raise ImageReadError(f"{label}: corrupt or truncated image ({one_line(exc)})") from exc


def one_line(exc: BaseException, limit: int = 200) -> str:
    """An exception's text squeezed onto one bounded line for user messages."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _valid_dpi(value: object) -> tuple[float, float] | None:
    try:
        x, y = (float(v) for v in value)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        return None
    return (x, y) if x > 0 and y > 0 else None
