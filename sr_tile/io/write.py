"""Write an image from a stream of row bands, atomically, in the chosen format.

The pipeline produces the output band by band while the model runs, so
`write_image` consumes an iterator: PNG and TIFF are encoded as the bands
arrive (bounded memory, any size), JPEG/WebP/BMP are assembled first
because Pillow cannot stream them. Everything a user can get wrong (format,
existing file, alpha in JPEG...) is refused before the first band is
requested, i.e. before any model time is spent.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import numpy.typing as npt

from sr_tile.errors import ImageWriteError, UsageError
from sr_tile.io.atomic import atomic_output, check_target
from sr_tile.io.meta import ImageMeta, icc_colour_space
from sr_tile.io.pillow_write import (
    JPEG_MAX_EXIF,
    JPEG_MAX_SIDE,
    WEBP_MAX_SIDE,
    convert_band,
    expand_gray_alpha,
    write_with_pillow,
)
from sr_tile.io.png_write import write_png
from sr_tile.io.read import one_line
from sr_tile.io.tiff_write import (
    choose_compression,
    compression_problem,
    needs_bigtiff,
    write_tiff,
)

WRITABLE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF")
FORMAT_FOR_SUFFIX = {
    "png": "PNG",
    "jpg": "JPEG",
    "jpeg": "JPEG",
    "jpe": "JPEG",
    "jfif": "JPEG",
    "webp": "WEBP",
    "bmp": "BMP",
    "dib": "BMP",
    "tif": "TIFF",
    "tiff": "TIFF",
    "btf": "TIFF",  # BigTIFF suffixes
    "tf8": "TIFF",
}
_BIGTIFF_SUFFIXES = (".btf", ".tf8")
_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32))
Warn = Callable[[str], None]


@dataclass(frozen=True)
class WriteOptions:
    """Encoder settings (CLI flags). Defaults favour fidelity over size."""

    jpeg_quality: int = 95
    webp_quality: int = 95
    webp_lossless: bool = False
    # zlib level for PNG and deflate TIFF (lzma/zstd TIFF keep their own defaults).
    # Default 4, measured (benchmarks/encode.py, 1 worker, CPU s, 5 val photos, 61 MB raw):
    #                x4 bicubic 640x400 crops          full size 2560x1600
    #   level     PNG MB   s   TIFF MB   s        PNG MB    s   TIFF MB    s
    #     1       10.81  1.08   12.89  0.51        20.57  1.55   21.72  0.75
    #     2       10.30  1.22   11.87  0.56        20.02  1.54   21.05  0.86
    #     3        9.75  1.52   10.93  0.87        19.13  1.99   19.96  1.28
    #     4        9.27  1.40   10.64  0.88        18.94  1.93   19.93  1.25
    #     5        8.92  1.90    9.85  1.33        18.46  2.78   19.33  2.00
    #     6        8.56  3.36    9.40  2.64        17.88  4.83   18.71  3.62
    #     7        8.37  4.68    9.27  4.04        17.63  6.86   18.47  5.31
    #     8        8.04 13.58    8.97 12.29        17.21 18.39   18.06 15.22
    #     9        7.90 22.96    8.89 21.44        16.99 30.65   17.88 27.52
    # MB saved per extra CPU second: 1 -> 4: 4.3-4.8 (PNG), 3.6-6.1 (TIFF); 4 -> 5: 0.6-0.7,
    # 0.8-1.8; 5 -> 6: 0.25-0.4; 7 -> 8: < 0.1 (3 is no faster than 4 and larger: zlib's
    # lazy matching starts at 4). Size stops paying for time after 4. Against the former
    # default 6: PNG 6-8% larger, TIFF 7-13%, for 2.4-3.0x less CPU.
    compress_level: int = 4
    tiff_compression: str | None = None
    tiff_tile: int = 256
    bigtiff: bool | None = None
    workers: int | None = None  # PNG/TIFF compression threads; None: one per CPU

    def __post_init__(self) -> None:
        """Values come from CLI flags: a bad one is a usage error, before any work."""
        ranges = {"jpeg_quality": (1, 100), "webp_quality": (0, 100), "compress_level": (0, 9)}
        for name, (low, high) in ranges.items():
            value = getattr(self, name)
            if not isinstance(value, int) or not low <= value <= high:
                raise UsageError(f"{name.replace('_', ' ')} must be {low}..{high}, not {value!r}")
        if self.workers is not None and (not isinstance(self.workers, int) or self.workers < 1):
            raise UsageError(f"workers must be at least 1, not {self.workers!r}")
        if not isinstance(self.tiff_tile, int) or self.tiff_tile <= 0 or self.tiff_tile % 16:
            raise UsageError(
                f"TIFF tile size must be a positive multiple of 16, not {self.tiff_tile!r}")


def output_format_for(
    path: str | os.PathLike[str], fmt: str | None, input_format: str | None
) -> str:
    """The format to write ``path`` in; never bytes of one format under another's name.

    The suffix decides (``out.jpg`` is JPEG); an explicit ``fmt`` ('jpg', 'tif'...
    accepted) must agree with it. A suffix we cannot write (``.gif``) is refused. With
    no suffix: ``fmt``, else the input's format if writable, else PNG.
    """
    suffix = Path(path).suffix.lower().lstrip(".")
    by_suffix = FORMAT_FOR_SUFFIX.get(suffix)
    if suffix and by_suffix is None:
        raise UsageError(f"{path}: sr-tile cannot write .{suffix} files; name it "
                         + ", ".join(sorted(f".{s}" for s in FORMAT_FOR_SUFFIX)))
    if fmt is not None:
        chosen = canonical_format(fmt)
        if by_suffix is not None and by_suffix != chosen:
            raise UsageError(f"{path}: names a {by_suffix} file but --format asks for {chosen}; "
                             "drop one of them")
        return chosen
    if by_suffix is not None:
        return by_suffix
    inherited = "JPEG" if input_format == "MPO" else (input_format or "").upper()
    return inherited if inherited in WRITABLE_FORMATS else "PNG"


def canonical_format(fmt: str) -> str:
    """'jpg', 'TIF', '.png'... -> the format's name; UsageError for one we cannot write."""
    name = FORMAT_FOR_SUFFIX.get(fmt.strip().lower().lstrip("."))
    if name is None:
        raise UsageError(f"--format {fmt!r}: unknown output format; "
                         "choose png, jpeg, webp, bmp or tiff")
    return name


@dataclass(frozen=True)
class _Plan:
    """What will actually be written, decided before any band is consumed."""

    fmt: str
    dtype: np.dtype  # dtype of the incoming bands
    out_dtype: np.dtype
    channels: int
    out_channels: int
    meta: ImageMeta
    icc_profile: bytes | None
    warnings: tuple[str, ...]


def write_image(
    path: str | os.PathLike[str],
    bands: Iterable[np.ndarray],
    *,
    width: int,
    height: int,
    channels: int,
    dtype: npt.DTypeLike,
    meta: ImageMeta,
    fmt: str,
    options: WriteOptions = WriteOptions(),
    overwrite: bool = False,
    on_warning: Warn | None = None,
) -> Path:
    """Write ``bands`` ((h_i, width, channels) arrays of ``dtype``, top to bottom) to ``path``.

    The file appears complete or not at all: on any exception, including
    one raised by ``bands`` itself or KeyboardInterrupt, the temp file is
    removed and the exception propagates unchanged. Returns ``path``.
    """
    path = Path(path)
    label = str(path)
    _check_geometry(width, height, channels)
    if options.bigtiff is None and path.suffix.lower() in _BIGTIFF_SUFFIXES:
        options = dataclasses.replace(options, bigtiff=True)
    plan = _make_plan(
        canonical_format(fmt),
        width,
        height,
        channels,
        np.dtype(dtype),
        meta,
        options,
        label,
    )
    check_target(path, label, overwrite)
    warn = on_warning or _python_warning
    for message in plan.warnings:
        warn(message)
    upstream = _Upstream()
    checked = _checked_bands(bands, width, height, channels, plan.dtype, upstream)
    try:
        with atomic_output(path, label, overwrite) as fp:
            _encode(fp, _converted(checked, plan), plan, width, height, options)
    except OSError as exc:
        if upstream.failed:
            raise
        raise ImageWriteError(f"{label}: cannot write ({one_line(exc)})") from exc
    finally:
        checked.close()
    return path


def _python_warning(message: str) -> None:
    warnings.warn(message, UserWarning, stacklevel=3)


def _check_geometry(width: int, height: int, channels: int) -> None:
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if channels not in (1, 2, 3, 4):
        raise ValueError(f"channels must be 1..4, got {channels}")


def _make_plan(
    fmt: str,
    width: int,
    height: int,
    channels: int,
    dtype: np.dtype,
    meta: ImageMeta,
    options: WriteOptions,
    label: str,
) -> _Plan:
    """Decide output dtype/layout/metadata; raise for impossible combinations."""
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be uint8, uint16 or float32, got {dtype}")
    _check_options(options, fmt, meta, label)
    notes: list[str] = []
    out_dtype, out_channels = dtype, channels
    if fmt == "PNG" and dtype == np.float32:
        out_dtype = np.dtype(np.uint16)
        notes.append(
            f"{label}: PNG cannot store floating-point samples; "
            "written as 16-bit (values clipped to 0..1)"
        )
    elif fmt in ("JPEG", "WEBP", "BMP"):
        _check_pillow_limits(fmt, width, height, channels, label)
        out_dtype = np.dtype(np.uint8)
        if dtype == np.uint16:
            notes.append(f"{label}: {fmt} holds 8 bits per channel; 16-bit input written as 8-bit")
        elif dtype == np.float32:
            notes.append(
                f"{label}: {fmt} cannot store floating-point samples; "
                "written as 8-bit (values clipped to 0..1)"
            )
        if fmt == "BMP" and channels == 2:
            out_channels = 4
    if fmt == "JPEG" and meta.exif and len(meta.exif) > JPEG_MAX_EXIF:
        notes.append(
            f"{label}: EXIF block too large for JPEG ({len(meta.exif)} bytes); not written"
        )
        meta = dataclasses.replace(meta, exif=None)
    icc = _icc_for(meta.icc_profile, fmt, out_channels, label, notes)
    return _Plan(fmt, dtype, out_dtype, channels, out_channels, meta, icc, tuple(notes))


def _check_options(options: WriteOptions, fmt: str, meta: ImageMeta, label: str) -> None:
    """What only this format can refuse (the values themselves are checked on creation)."""
    if fmt != "TIFF":
        return
    problem = compression_problem(choose_compression(options.tiff_compression, meta.compression))
    if problem is not None:
        raise ImageWriteError(f"{label}: {problem}")


def _check_pillow_limits(fmt: str, width: int, height: int, channels: int, label: str) -> None:
    if fmt == "JPEG" and channels in (2, 4):
        raise ImageWriteError(f"{label}: JPEG cannot store alpha; use --format png or webp")
    limit = {"JPEG": JPEG_MAX_SIDE, "WEBP": WEBP_MAX_SIDE}.get(fmt)
    if limit is not None and max(width, height) > limit:
        raise ImageWriteError(
            f"{label}: {fmt} images are limited to {limit} pixels per side, "
            f"output is {width}x{height}; use --format png or tiff"
        )
    if fmt == "BMP" and width * height * 4 >= 2**32 - 2**16:
        raise ImageWriteError(
            f"{label}: {width}x{height} is too large for BMP; use --format png or tiff"
        )


def _icc_for(
    profile: bytes | None, fmt: str, channels: int, label: str, notes: list[str]
) -> bytes | None:
    """The profile to embed, or None when the format cannot hold it or it does not fit."""
    if not profile:
        return None
    if fmt == "BMP":
        notes.append(f"{label}: BMP cannot store an ICC profile; profile not written")
        return None
    gray_output = channels <= 2 and fmt != "WEBP"  # Pillow writes gray WebP as RGB
    expected = "GRAY" if gray_output else "RGB"
    space = icc_colour_space(profile)
    if space is not None and space != expected:
        notes.append(
            f"{label}: input ICC profile is for {space} but the output is {expected}; "
            "profile not embedded"
        )
        return None
    return profile


class _Upstream:
    """Remembers whether an exception came from the caller's ``bands`` iterator."""

    failed = False


def _checked_bands(
    bands: Iterable[np.ndarray],
    width: int,
    height: int,
    channels: int,
    dtype: np.dtype,
    upstream: _Upstream,
) -> Iterator[np.ndarray]:
    """Validate the bands contract (programming errors: ValueError) as they stream."""
    iterator = iter(bands)
    total = 0
    try:
        while True:
            try:
                band = next(iterator)
            except StopIteration:
                break
            except BaseException:
                upstream.failed = True
                raise
            _check_band(band, width, channels, dtype)
            total += band.shape[0]
            if total > height:
                raise ValueError(f"bands give more than the declared height {height}")
            if band.shape[0]:
                yield band
        if total != height:
            raise ValueError(f"bands gave {total} rows, expected {height}")
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            close()  # let an abandoned producer release its resources now


def _check_band(band: object, width: int, channels: int, dtype: np.dtype) -> None:
    if not isinstance(band, np.ndarray) or band.ndim != 3:
        raise ValueError(
            f"each band must be an (h, width, channels) ndarray, got {type(band).__name__}"
            + (f" with shape {band.shape}" if isinstance(band, np.ndarray) else "")
        )
    if band.shape[1:] != (width, channels):
        raise ValueError(f"band shape {band.shape} does not match (h, {width}, {channels})")
    if band.dtype != dtype:
        raise ValueError(f"band dtype {band.dtype} does not match declared {dtype}")


def _converted(bands: Iterable[np.ndarray], plan: _Plan) -> Iterator[np.ndarray]:
    for band in bands:
        band = convert_band(band, plan.out_dtype)
        if plan.out_channels != plan.channels:
            band = expand_gray_alpha(band)
        yield band


def _encode(
    fp: BinaryIO,
    bands: Iterable[np.ndarray],
    plan: _Plan,
    width: int,
    height: int,
    options: WriteOptions,
) -> None:
    common = {"width": width, "height": height, "channels": plan.out_channels, "meta": plan.meta}
    if plan.fmt == "PNG":
        bit_depth = 16 if plan.out_dtype == np.uint16 else 8
        write_png(
            fp,
            bands,
            bit_depth=bit_depth,
            compress_level=options.compress_level,
            icc_profile=plan.icc_profile,
            workers=options.workers,
            **common,
        )
    elif plan.fmt == "TIFF":
        nbytes = width * height * plan.out_channels * plan.out_dtype.itemsize
        write_tiff(
            fp,
            bands,
            dtype=plan.out_dtype,
            icc_profile=plan.icc_profile,
            compression=choose_compression(options.tiff_compression, plan.meta.compression),
            tile=options.tiff_tile,
            bigtiff=needs_bigtiff(options.bigtiff, plan.meta, nbytes),
            compress_level=options.compress_level,
            workers=options.workers,
            **common,
        )
    else:
        quality = options.jpeg_quality if plan.fmt == "JPEG" else options.webp_quality
        write_with_pillow(
            fp,
            bands,
            fmt=plan.fmt,
            icc_profile=plan.icc_profile,
            quality=quality,
            webp_lossless=options.webp_lossless,
            **common,
        )
