"""Read any supported image file into an `ImageData`, or fail with one clear line.

The format is chosen by content (magic bytes), never by extension: TIFF and
BigTIFF go to tifffile, everything else to Pillow. Every failure a user can
cause - missing, empty, not a regular file, not an image, corrupt, truncated,
too large - ends as an `ImageReadError` whose message starts with the path,
so a batch run can print it and move on. Decoders are untrusted code paths
on untrusted bytes: any exception they raise, of any type, is such an error.

Before a decoder allocates the image, its declared size is checked against
``max_pixels`` and, for formats whose compression has a known worst-case
ratio (PNG, GIF, BMP, TIFF without JPEG/WebP/zstd/LZMA), against the bytes
the file really holds: a 69-byte PNG cannot hold 30000x30000 pixels, and is
refused before Pillow allocates a gigabyte for it. What decoders print
(warnings, log lines) is collected into the result's ``warnings``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from sr_tile.errors import ImageReadError, UsageError
from sr_tile.io.atomic import file_kind
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
from sr_tile.io.png16 import PngHeader, find_png_exif, read_png_header
from sr_tile.io.quiet import library_messages, summary
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
# Worst-case pixels per byte of file (PNG: raw scanline bytes per byte) for Pillow formats:
# deflate expands at most 1032:1; GIF's 12-bit LZW at most ~2730 pixels per byte; BMP's RLE
# 255 pixels per 2 bytes; Huffman-coded JPEG spends at least 1 bit on each 8x8 block's DC
# coefficient (512 pixels per byte). Arithmetic-coded JPEG and WebP have no hard bound:
# 32768 pixels per byte is far beyond any real picture (a 30000x30000 JPEG of 800 bytes
# decoded without error, into 2.7 GB, before this check).
_MAX_RATIO = {"PNG": 1032, "GIF": 4096, "BMP": 128, "JPEG": 512, "MPO": 512, "WEBP": 32768}
_ARITHMETIC_SOF = frozenset({0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_SLACK_BYTES = 1 << 16  # tiny files are never refused by the ratio bound
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}

SizeCheck = Callable[[int, int], None]


def read_image(
    path: str | os.PathLike[str], *, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> ImageData:
    """Decode ``path`` to (H, W, C) pixels with orientation applied, plus metadata.

    ``max_pixels`` (None: no limit) is checked from the header before any
    pixel data is decompressed, so a decompression bomb costs nothing.
    """
    if max_pixels is not None and max_pixels <= 0:
        raise UsageError(f"--max-pixels must be positive, not {max_pixels}")
    path = Path(path)
    label = str(path)
    head, file_size = _read_head(path, label)
    check = _size_check(label, max_pixels)
    notes: list[str] = []
    with PILLOW_LIMITS.unlimited(), _decode_errors(label), library_messages() as chatter:
        if head.startswith(_TIFF_MAGICS):
            pixels, meta = read_tiff(path, label, check, notes)
        else:
            pixels, meta = _read_pillow(path, label, head, check, file_size, notes)
    if pixels.dtype.kind == "f":
        _replace_non_finite(pixels, label, notes)
    said = summary(label, chatter)
    return ImageData(pixels=pixels, meta=meta, warnings=tuple(notes + ([said] if said else [])))


def probe_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(width, height) as displayed (orientation applied), from the header only.

    Lets the CLI plan work and check limits for a whole batch cheaply.
    """
    path = Path(path)
    label = str(path)
    head, _ = _read_head(path, label)
    with PILLOW_LIMITS.unlimited(), _decode_errors(label), library_messages():
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
    path: Path, label: str, head: bytes, check: SizeCheck, file_size: int, notes: list[str]
) -> tuple[np.ndarray, ImageMeta]:
    with _open_pillow(path, label, head) as im:
        check(*im.size)
        png = read_png_header(head) if im.format == "PNG" else None
        ratio = _MAX_RATIO.get(str(im.format))
        if im.format in ("JPEG", "MPO") and _jpeg_arithmetic(path):
            ratio = _MAX_RATIO["WEBP"]
        _check_data_size(label, im.format, *im.size, file_size, png, ratio)
        pixels, icc_override = pillow_pixels(im, label, png)
        frames = _frame_count(im)
        if frames != 1:
            notes.append(f"{label}: {'animated ' if im.format != 'TIFF' else ''}{im.format} with "
                         f"{frames or 'several'} frames; only the first is upscaled")
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


def _check_data_size(label: str, fmt: str | None, width: int, height: int, file_size: int,
                     png: PngHeader | None, ratio: int | None) -> None:
    """Refuse a header whose size the file cannot hold, before the image is allocated."""
    if ratio is None:
        return
    if png is not None:  # raw scanlines, with their filter bytes, that deflate must produce
        bits = png.bit_depth * _PNG_CHANNELS.get(png.colour_type, 1)
        raw = height * (1 + -(-width * bits // 8))
    else:
        raw = width * height
    if raw > ratio * file_size + _SLACK_BYTES:
        raise ImageReadError(
            f"{label}: corrupt or truncated image (the header claims {width}x{height} pixels, "
            f"more than {file_size:,} bytes of {fmt} data can hold)"
        )


def _jpeg_arithmetic(path: Path) -> bool:
    """Whether a JPEG's frame is arithmetic-coded (SOF9-11, 13-15): walk the marker
    segments from the start up to the first SOF (each step moves forward, so it ends)."""
    with open(path, "rb") as fh:
        fh.seek(2)
        while True:
            head = fh.read(4)
            if len(head) < 4 or head[0] != 0xFF:
                return False
            marker = head[1]
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                return marker in _ARITHMETIC_SOF
            fh.seek(int.from_bytes(head[2:], "big") - 2, 1)


def _frame_count(im: Image.Image) -> int | None:
    """Frames in an animated or multi-page file (1 for a still image; None: several, count
    unknown). MPO's extra frames are camera previews, not content: counted as one."""
    if im.format == "MPO":
        return 1
    try:
        if not getattr(im, "is_animated", False):
            return 1
        return int(im.n_frames) if im.format in ("PNG", "WEBP") else None
    except Exception:  # noqa: BLE001 - a damaged later frame: the first one was read fine
        return None


def _replace_non_finite(pixels: np.ndarray, label: str, notes: list[str]) -> None:
    """NaN -> 0 and +-inf -> the image's largest / smallest finite sample, in place, with a
    warning: one NaN would otherwise spread through the network over whole tiles."""
    finite = np.isfinite(pixels)
    if finite.all():
        return
    n_nan = int(np.isnan(pixels).sum())
    n_inf = int(finite.size - finite.sum()) - n_nan
    values = pixels[finite]
    high, low = (float(values.max()), float(values.min())) if values.size else (0.0, 0.0)
    np.nan_to_num(pixels, copy=False, nan=0.0, posinf=high, neginf=low)
    notes.append(f"{label}: {n_nan} NaN and {n_inf} infinite samples replaced (NaN by 0, "
                 f"infinities by the image's largest or smallest finite value {high:g} / {low:g})")


def _signature_kind(head: bytes) -> str | None:
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    for signature, kind in _SIGNATURES.items():
        if head.startswith(signature):
            return kind
    return None


def _read_head(path: Path, label: str) -> tuple[bytes, int]:
    """First bytes of the file and its size, after the checks that give the clearest
    messages. Only regular files are opened: a FIFO would block, a device never end."""
    try:
        info = path.stat()
        kind = file_kind(info.st_mode)
        if kind:
            raise ImageReadError(f"{label}: is {kind}, not an image file")
        if info.st_size == 0:
            raise ImageReadError(f"{label}: empty file")
        with open(path, "rb") as fp:
            return fp.read(64), info.st_size
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
    """Turn any decoder failure, of any exception type, into one line that names the file
    (tifffile raises ZeroDivisionError and TypeError on some damaged headers)."""
    try:
        yield
    except ImageReadError:
        raise
    except MemoryError:
        raise ImageReadError(f"{label}: not enough memory to decode this image") from None
    except RecursionError:
        raise ImageReadError(f"{label}: corrupt image (nested structures too deep)") from None
    except Exception as exc:  # noqa: BLE001 - any decoder failure is this file's error
        raise ImageReadError(f"{label}: corrupt or truncated image ({one_line(exc)})") from exc


def one_line(exc: BaseException, limit: int = 200) -> str:
    """An exception's text squeezed onto one bounded line for user messages; the type is
    named when the text alone would mean nothing (``integer modulo by zero``)."""
    text = " ".join(str(exc).split())
    if not isinstance(exc, (OSError, ValueError, ImageReadError)) or not text:
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _valid_dpi(value: object) -> tuple[float, float] | None:
    try:
        x, y = (float(v) for v in value)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        return None
    return (x, y) if x > 0 and y > 0 else None
