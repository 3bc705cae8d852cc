"""Parallel PNG and TIFF compression: exact pixels, one valid zlib stream, levels, bounds."""

from __future__ import annotations

import io
import struct
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from typer.testing import CliRunner

from sr_tile.cli import app
from sr_tile.errors import UsageError
from sr_tile.io import ImageMeta, WriteOptions, png_write, read_image, write_image
from sr_tile.io.png_write import adler32_combine, filter_rows, ordered_map, write_png
from sr_tile.io.tiff_write import write_tiff

MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}


def photo(astronaut: np.ndarray, h: int, w: int, channels: int, bits: int) -> np.ndarray:
    """A real photo tiled to (h, w), with a gradient alpha; 16-bit uses the low byte too."""
    reps = (-(-h // 512), -(-w // 512), 1)
    rgb = np.tile(astronaut, reps)[:h, :w].astype(np.uint16)
    alpha = np.linspace(0, 255, h * w).reshape(h, w, 1).astype(np.uint16)
    layout = {1: [0], 2: [0, 3], 3: [0, 1, 2], 4: [0, 1, 2, 3]}[channels]
    pixels = np.concatenate([rgb, alpha], 2)[..., layout]
    if bits == 16:
        pixels = pixels * 257 ^ (np.arange(w, dtype=np.uint16)[None, :, None] % 7)
        return np.ascontiguousarray(pixels, np.uint16)
    return np.ascontiguousarray(pixels, np.uint8)


def uneven_bands(pixels: np.ndarray):
    """Bands of 1, 6, 31, 59, 5, ... rows: block boundaries never line up with them."""
    y, size = 0, 1
    while y < pixels.shape[0]:
        yield pixels[y : y + size]
        y += size
        size = size * 5 % 97 + 1


def encode_png(pixels: np.ndarray, workers: int | None, level: int = 6, bands=None) -> bytes:
    buf = io.BytesIO()
    h, w, c = pixels.shape
    write_png(buf, uneven_bands(pixels) if bands is None else bands, width=w, height=h,
              channels=c, bit_depth=8 * pixels.itemsize, meta=ImageMeta("PNG"),
              compress_level=level, workers=workers)
    return buf.getvalue()


def idat_stream(blob: bytes) -> bytes:
    """The concatenated IDAT payloads (chunk CRCs checked)."""
    pos, data = 8, b""
    while pos < len(blob):
        (length,) = struct.unpack(">I", blob[pos : pos + 4])
        ctype, payload = blob[pos + 4 : pos + 8], blob[pos + 8 : pos + 8 + length]
        assert struct.unpack(">I", blob[pos + 8 + length : pos + 12 + length])[0] == zlib.crc32(
            ctype + payload)
        if ctype == b"IDAT":
            data += payload
        pos += 12 + length
    return data


def decoded(blob: bytes, tmp_path: Path, bits: int) -> np.ndarray:
    """Pixels as Pillow decodes them (16-bit colour through sr-tile's Pillow raw-mode reader)."""
    if bits == 8:
        with Image.open(io.BytesIO(blob)) as im:
            pixels = np.asarray(im)
        return pixels if pixels.ndim == 3 else pixels[..., None]
    path = tmp_path / "x.png"
    path.write_bytes(blob)
    return read_image(path).pixels


@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("channels", [1, 2, 3, 4])
@pytest.mark.parametrize("segment", [None, 3000])  # real 256 KiB blocks; blocks < the window
def test_png_decodes_to_the_input_pixels(tmp_path, astronaut, monkeypatch, bits, channels,
                                         segment):
    if segment:
        monkeypatch.setattr(png_write, "_SEGMENT_BYTES", segment)
    # Smaller than one block, then (real blocks) about 3.5 blocks of filtered rows.
    tall = 1 + 7 * png_write._SEGMENT_BYTES // (2 * 1001 * channels * bits // 8)
    shapes = [(3, 5), (61, 333)] + ([(tall, 1001)] if segment is None else [])
    for h, w in shapes:
        pixels = photo(astronaut, h, w, channels, bits)
        for workers in (1, 3):
            blob = encode_png(pixels, workers)
            out = decoded(blob, tmp_path, bits)
            assert out.dtype == pixels.dtype and np.array_equal(out, pixels), (h, w, workers)
            with Image.open(io.BytesIO(blob)) as im:
                assert im.size == (w, h) and (bits == 16 or im.mode == MODES[channels])


@pytest.mark.parametrize("level", [0, 1, 6, 9])
def test_png_is_one_zlib_stream_of_the_filtered_rows(astronaut, monkeypatch, level):
    """zlib.decompress checks the header and the Adler-32 of the whole stream."""
    monkeypatch.setattr(png_write, "_SEGMENT_BYTES", 20_000)  # many segments, wide rows
    pixels = photo(astronaut, 150, 1111, 3, 8)
    stream = idat_stream(encode_png(pixels, workers=3, level=level))
    expected = filter_rows(pixels.reshape(150, -1), np.zeros(1111 * 3, np.uint8), 3).tobytes()
    assert zlib.decompress(stream) == expected
    assert stream[:2] == zlib.compress(b"", level)[:2]
    assert stream[-4:] == struct.pack(">I", zlib.adler32(expected))
    # Every segment but the last ends on a sync flush: the stream holds more than one.
    assert stream.count(b"\x00\x00\xff\xff") >= len(expected) // 20_000 - 1


def test_png_bytes_do_not_depend_on_workers_or_bands(astronaut):
    pixels = photo(astronaut, 400, 1500, 3, 8)  # 1.8 MB: seven blocks
    one = encode_png(pixels, workers=1)
    assert encode_png(pixels, workers=4) == one
    assert encode_png(pixels, workers=None) == one
    assert encode_png(pixels, workers=2, bands=[pixels]) == one


def test_png_level_and_ratio_close_to_one_stream(astronaut):
    pixels = photo(astronaut, 512, 512, 3, 8)
    sizes = {level: len(encode_png(pixels, workers=2, level=level)) for level in (0, 1, 9)}
    assert sizes[0] > pixels.nbytes > sizes[1] > sizes[9]
    rows = filter_rows(pixels.reshape(512, -1), np.zeros(512 * 3, np.uint8), 3).tobytes()
    assert sizes[9] < len(zlib.compress(rows, 9)) * 1.005 + 200  # blocks cost < 0.5%


def test_png_blocks_are_compressed_in_several_threads(astronaut, monkeypatch):
    threads: set[int] = set()
    real = png_write._encode_block

    def spy(block, **kwargs):
        threads.add(threading.get_ident())
        time.sleep(0.01)  # let the other workers take the next blocks
        return real(block, **kwargs)

    monkeypatch.setattr(png_write, "_encode_block", spy)
    monkeypatch.setattr(png_write, "_SEGMENT_BYTES", 10_000)
    encode_png(photo(astronaut, 100, 512, 3, 8), workers=3)
    assert len(threads) == 3 and threading.get_ident() not in threads
    threads.clear()
    encode_png(photo(astronaut, 100, 512, 3, 8), workers=1)
    assert threads == {threading.get_ident()}


def test_png_wrong_row_count_is_an_error(astronaut):
    pixels = photo(astronaut, 20, 30, 3, 8)
    for bands in ([pixels[:19]], [pixels, pixels[:1]]):
        with pytest.raises(ValueError, match="rows|height"):
            write_png(io.BytesIO(), bands, width=30, height=20, channels=3, bit_depth=8,
                      meta=ImageMeta("PNG"), workers=2)


def test_ordered_map_keeps_order_and_bounds_items_in_flight():
    taken = 0

    def items():
        nonlocal taken
        for i in range(50):
            taken += 1
            yield i

    def slow_square(i: int) -> int:
        time.sleep(0.001 * (i % 3))  # finish out of order
        return i * i

    results = []
    for result in ordered_map(slow_square, items(), workers=3):
        assert taken - len(results) <= 6  # 2 x workers ahead at most
        results.append(result)
    assert results == [i * i for i in range(50)]

    def boom(i: int) -> int:
        if i == 7:
            raise RuntimeError("boom")
        return i

    with pytest.raises(RuntimeError, match="boom"):
        list(ordered_map(boom, range(100), workers=3))


def test_adler32_combine_matches_zlib():
    rng = np.random.default_rng(1)
    data = rng.integers(0, 256, 300_000, dtype=np.uint8).tobytes() + b"\xff" * 100_000
    for cut in (0, 1, 65521, 123_457, len(data)):
        a, b = data[:cut], data[cut:]
        assert adler32_combine(zlib.adler32(a), zlib.adler32(b), len(b)) == zlib.adler32(data)


def encode_tiff(pixels: np.ndarray, level: int, workers: int | None) -> bytes:
    buf = io.BytesIO()
    h, w, c = pixels.shape
    write_tiff(buf, uneven_bands(pixels), width=w, height=h, channels=c, dtype=pixels.dtype,
               meta=ImageMeta("TIFF"), compression="zlib", tile=64, bigtiff=False,
               icc_profile=None, compress_level=level, workers=workers)
    return buf.getvalue()


@pytest.mark.parametrize(("channels", "bits"), [(3, 8), (4, 16), (1, 8)])
def test_tiff_with_workers_decodes_to_the_input_pixels(astronaut, channels, bits):
    pixels = photo(astronaut, 300, 333, channels, bits)
    for workers in (1, 3):
        out = tifffile.imread(io.BytesIO(encode_tiff(pixels, 6, workers)))
        assert np.array_equal(out.reshape(pixels.shape), pixels)


def test_tiff_tiles_use_the_requested_level_and_threads(astronaut, monkeypatch):
    pixels = np.ascontiguousarray(astronaut)
    sizes = {level: len(encode_tiff(pixels, level, workers=3)) for level in (0, 1, 9)}
    assert sizes[0] > pixels.nbytes > sizes[1] > sizes[9]

    threads: set[int] = set()
    real = zlib.compress

    def spy(data, level=-1, **kwargs):
        threads.add(threading.get_ident())
        time.sleep(0.005)
        return real(data, level, **kwargs)

    monkeypatch.setattr(zlib, "compress", spy)  # tifffile's zlib codec calls it per tile
    assert len(encode_tiff(pixels, 9, workers=3)) == sizes[9]
    assert len(threads) == 3 and threading.get_ident() not in threads


def test_compress_level_option(tmp_path, astronaut):
    with pytest.raises(UsageError, match="compress level must be 0..9"):
        WriteOptions(compress_level=10)
    with pytest.raises(UsageError, match="workers"):
        WriteOptions(workers=0)
    pixels = np.ascontiguousarray(astronaut[:128, :128])
    sizes = {}
    for level in (1, 9):
        for suffix in ("png", "tif"):
            path = write_image(tmp_path / f"{level}.{suffix}", [pixels], width=128, height=128,
                               channels=3, dtype=np.uint8, meta=ImageMeta("PNG"),
                               fmt=suffix, options=WriteOptions(compress_level=level, workers=2))
            assert np.array_equal(read_image(path).pixels, pixels)
            sizes[level, suffix] = path.stat().st_size
    assert sizes[1, "png"] > sizes[9, "png"] and sizes[1, "tif"] > sizes[9, "tif"]


def test_cli_compress_level(tmp_path, small_png):
    runner = CliRunner()
    sizes = {}
    for level in ("0", "9"):
        out = tmp_path / f"l{level}.png"
        result = runner.invoke(app, ["upscale", str(small_png), "-s", "2", "-m", "bicubic",
                                     "--compress-level", level, "-o", str(out)])
        assert result.exit_code == 0, result.output
        sizes[level] = out.stat().st_size
    assert sizes["0"] > 96 * 80 * 3 > sizes["9"]
    for bad in ("10", "-1"):
        result = runner.invoke(app, ["upscale", str(small_png), "-m", "bicubic",
                                     "--compress-level", bad, "-o", str(tmp_path / "b.png")])
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.exit_code == 2 and len(lines) == 1, result.output
        assert "compress level" in lines[0] and "Traceback" not in result.output
    assert not (tmp_path / "b.png").exists()
