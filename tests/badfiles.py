"""Bad and odd image files, made from good ones the way a fuzzer or a broken disk would.

Each maker returns bytes (or writes the file, for links and FIFOs). The TIFF
damage reproduces what fuzzing a valid file's IFD found: tifffile raising
ZeroDivisionError or TypeError, and (``looping_tiff``) an IFD chain that sends
``TiffFile.series`` into an endless, memory-growing loop.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

RNG = np.random.default_rng(13)


def photo(height: int = 24, width: int = 32) -> np.ndarray:
    """A small real photo crop (uint8 RGB)."""
    from skimage import data

    return np.ascontiguousarray(data.astronaut()[100:100 + height, 180:180 + width])


def encoded(fmt: str, pixels: np.ndarray | None = None, **kwargs) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(photo() if pixels is None else pixels).save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(width: int, height: int, idat: bytes, *, colour_type: int = 2, depth: int = 8,
        extra: bytes = b"") -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + extra + chunk(b"IDAT", idat)
            + chunk(b"IEND", b""))


def png_bomb() -> bytes:
    """69 bytes whose header claims 30000x30000 pixels."""
    return png(30000, 30000, zlib.compress(b"\0" * 10))


def tiff(*, tile: tuple[int, int] | None = None, pixels: np.ndarray | None = None,
         **kwargs) -> bytearray:
    buf = io.BytesIO()
    data = photo(16, 16) if pixels is None else pixels
    tifffile.imwrite(buf, data, metadata=None, tile=tile, **kwargs)
    return bytearray(buf.getvalue())


def with_tag(blob: bytearray, tag: int, *, count: int | None = None,
             value: int | None = None) -> bytes:
    """A classic little-endian TIFF with one entry of its first IFD changed."""
    first = struct.unpack("<I", blob[4:8])[0]
    for entry in range(struct.unpack("<H", blob[first:first + 2])[0]):
        at = first + 2 + 12 * entry
        if struct.unpack("<H", blob[at:at + 2])[0] == tag:
            if count is not None:
                struct.pack_into("<I", blob, at + 4, count)
            if value is not None:
                struct.pack_into("<I", blob, at + 8, value)
            return bytes(blob)
    raise KeyError(tag)


def looping_tiff(chain: int = 110, back: int = 50) -> bytes:
    """A valid first image whose IFD chain then runs through ``chain`` empty IFDs and cycles
    back: tifffile checks for a cycle only at the 100th IFD, so ``series`` never ends."""
    blob = tiff(pixels=photo(8, 8)[..., 0])
    first = struct.unpack("<I", blob[4:8])[0]
    next_at = first + 2 + 12 * struct.unpack("<H", blob[first:first + 2])[0]
    blob += b"\0" * (len(blob) % 2)
    offsets = [len(blob) + 6 * i for i in range(chain)]
    struct.pack_into("<I", blob, next_at, offsets[0])
    for i in range(chain):
        blob += struct.pack("<HI", 0, offsets[i + 1] if i + 1 < chain else offsets[back])
    return bytes(blob)


def tiff_bomb() -> bytes:
    """Uncompressed, claims 30000x30000 RGB, holds 768 bytes of pixels."""
    blob = tiff()
    blob = bytearray(with_tag(blob, 256, value=30000))
    blob = bytearray(with_tag(blob, 257, value=30000))
    return with_tag(blob, 278, value=30000)  # one strip: its byte count stays 768


def bmp_bomb() -> bytes:
    blob = bytearray(encoded("BMP"))
    struct.pack_into("<ii", blob, 18, 30000, 30000)
    return bytes(blob)


def gif_bomb() -> bytes:
    blob = bytearray(encoded("GIF"))
    struct.pack_into("<HH", blob, 6, 30000, 30000)  # logical screen
    at = blob.index(b"\x2c")  # image descriptor
    struct.pack_into("<HH", blob, at + 5, 30000, 30000)
    return bytes(blob)


def jpeg_sof_zero() -> bytes:
    blob = bytearray(encoded("JPEG"))
    at = blob.index(b"\xff\xc0")
    struct.pack_into(">HH", blob, at + 5, 0, 0)  # height, width
    return bytes(blob)


def jpeg_bomb() -> bytes:
    """800 bytes whose frame header claims 30000x30000 (Pillow decoded it, into 2.7 GB)."""
    blob = bytearray(encoded("JPEG"))
    at = blob.index(b"\xff\xc0")
    struct.pack_into(">HH", blob, at + 5, 30000, 30000)
    return bytes(blob)


def fuzzed(blob: bytes, start: int, stop: int, n: int = 6) -> bytes:
    """``n`` random bytes of ``blob[start:stop]`` replaced (deterministic)."""
    out = bytearray(blob)
    for at in RNG.integers(start, min(stop, len(out)), n):
        out[at] = int(RNG.integers(0, 256))
    return bytes(out)


def animated_gif() -> bytes:
    frames = [Image.fromarray(photo()), Image.fromarray(photo()[::-1].copy())]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    return buf.getvalue()


def multipage_tiff() -> bytes:
    buf = io.BytesIO()
    with tifffile.TiffWriter(buf) as writer:
        for _ in range(3):
            writer.write(photo(16, 16), photometric="rgb", metadata=None)
    return buf.getvalue()


def nan_tiff() -> bytes:
    pixels = (photo(16, 16) / 255.0).astype(np.float32)
    pixels[3, 4, 1] = np.nan
    pixels[5, 6, 0] = np.inf
    return bytes(tiff(pixels=pixels, photometric="rgb"))


def corrupt_exif_jpeg() -> bytes:
    """A good JPEG whose EXIF block claims more entries than it holds (Pillow warns)."""
    exif = b"Exif\x00\x00" + b"II*\x00\x08\x00\x00\x00" + b"\x05\x00" + b"\x12\x01\x03\x00"
    return encoded("JPEG", exif=exif)


# Files that must fail, one error line each: name -> bytes.
def bad_files() -> dict[str, bytes]:
    good_png, good_jpg = encoded("PNG"), encoded("JPEG")
    good_tif = bytes(tiff())
    return {
        "png_bomb.png": png_bomb(),
        "png_truncated.png": good_png[: len(good_png) // 2],
        "png_no_idat.png": good_png[:33] + chunk(b"IEND", b""),
        "png_zero_width.png": png(0, 10, zlib.compress(b"\0" * 10)),
        "png_bad_colour.png": png(8, 8, zlib.compress(b"\0" * 200), colour_type=5),
        "png_garbage_idat.png": png(64, 64, bytes(RNG.integers(0, 256, 300, dtype=np.uint8))),
        "png_fuzzed_header_1.png": fuzzed(good_png, 8, 33),
        "png_fuzzed_header_2.png": fuzzed(good_png, 12, 29),
        "png_signature_only.png": b"\x89PNG\r\n\x1a\n",
        "jpeg_truncated.jpg": good_jpg[: len(good_jpg) // 2],
        "jpeg_header_only.jpg": good_jpg[:20],
        "jpeg_sof_zero.jpg": jpeg_sof_zero(),
        "jpeg_bomb.jpg": jpeg_bomb(),
        "jpeg_fuzzed.jpg": fuzzed(good_jpg, 2, 200, n=40),
        "webp_truncated.webp": encoded("WEBP")[:40],
        "gif_bomb.gif": gif_bomb(),
        "bmp_bomb.bmp": bmp_bomb(),
        "bmp_truncated.bmp": encoded("BMP")[:100],
        "tiff_tile_length_0.tif": with_tag(tiff(tile=(16, 16)), 323, value=0),
        "tiff_tile_width_0.tif": with_tag(tiff(tile=(16, 16)), 322, value=0),
        "tiff_tile_length_pair.tif": with_tag(tiff(tile=(16, 16)), 323, count=2),
        "tiff_image_length_pair.tif": with_tag(tiff(), 257, count=2),
        "tiff_bomb.tif": tiff_bomb(),
        "tiff_truncated.tif": good_tif[: len(good_tif) // 2],
        "tiff_strip_past_end.tif": with_tag(tiff(), 273, value=1 << 30),
        "tiff_header_only.tif": good_tif[:8],
        "tiff_fuzzed_ifd.tif": fuzzed(good_tif, struct.unpack("<I", good_tif[4:8])[0],
                                      len(good_tif), n=30),
        "empty.png": b"",
        "text.jpg": b"not an image at all\n" * 20,
        "esc\x1b[31mred.png": b"\x1b]0;title\x07 not an image",
    }


# Files that are fine to upscale but need a warning line: name -> (bytes, words in it).
def odd_files() -> dict[str, tuple[bytes, str]]:
    return {
        "animated.gif": (animated_gif(), "only the first"),
        "pages.tif": (multipage_tiff(), "only the first"),
        "nan.tif": (nan_tiff(), "NaN"),
        "looping_ifds.tif": (looping_tiff(), ""),
    }


def make_fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path
