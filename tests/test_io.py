"""Image I/O: real files on disk, round trips, metadata, errors, atomic writes.

Inputs are made with Pillow/tifffile or built byte by byte here (16-bit
colour PNG), and PNG output is also checked with a slow pure-Python decoder,
so the reader and the writer are never only checked against each other.
"""

from __future__ import annotations

import itertools
import struct
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image, ImageCms, ImageOps
from skimage import data

from sr_tile.errors import ImageReadError, ImageWriteError, UsageError
from sr_tile.io import (
    DEFAULT_MAX_PIXELS,
    WRITABLE_FORMATS,
    ImageMeta,
    WriteOptions,
    output_format_for,
    probe_size,
    read_image,
    write_image,
)
from sr_tile.io.meta import load_exif

RNG = np.random.default_rng(1234)
ADAM7 = [
    (0, 0, 8, 8),
    (4, 0, 8, 8),
    (0, 4, 4, 8),
    (2, 0, 4, 4),
    (0, 2, 2, 4),
    (1, 0, 2, 2),
    (0, 1, 1, 2),
]


# ----------------------------------------------------------------- helpers


def photo(h: int = 48, w: int = 64, source=data.astronaut) -> np.ndarray:
    """A real photo crop (uint8 RGB)."""
    img = source()
    return np.ascontiguousarray(img[100 : 100 + h, 150 : 150 + w])


def photo16(h: int = 40, w: int = 52, channels: int = 3) -> np.ndarray:
    """16-bit photo content with real low bytes (not just x * 257)."""
    rgb = photo(h, w, data.coffee).astype(np.uint16) * 257
    rgb += RNG.integers(0, 257, rgb.shape, dtype=np.uint16)
    alpha = np.linspace(0, 65535, h * w).reshape(h, w, 1).astype(np.uint16)
    layouts = {
        1: rgb[..., :1],
        2: np.concatenate([rgb[..., :1], alpha], 2),
        3: rgb,
        4: np.concatenate([rgb, alpha], 2),
    }
    return np.ascontiguousarray(layouts[channels])


def bands(pixels: np.ndarray):
    """Uneven bands: 1 row, a few rows, a big chunk, the rest."""
    h = pixels.shape[0]
    cuts = sorted({0, 1, min(8, h), max(1, h // 2 + 3), h})
    for top, bottom in itertools.pairwise(cuts):
        yield pixels[top:bottom]


def save(src: Path, dst: Path, fmt: str | None = None, **kwargs):
    """read -> write_image in uneven bands -> read; returns (input, output)."""
    img = read_image(src)
    fmt = fmt or output_format_for(dst, None, img.meta.format)
    write_image(
        dst,
        bands(img.pixels),
        width=img.width,
        height=img.height,
        channels=img.channels,
        dtype=img.pixels.dtype,
        meta=img.meta,
        fmt=fmt,
        **kwargs,
    )
    return img, read_image(dst)


def chunk(ctype: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + ctype
        + payload
        + struct.pack(">I", zlib.crc32(ctype + payload))
    )


def make_png16(
    arr: np.ndarray,
    colour_type: int,
    *,
    interlace: bool = False,
    sub_filter: bool = False,
    extra: bytes = b"",
) -> bytes:
    """A 16-bit PNG built by hand (filter None or Sub), independent of sr_tile."""
    h, w, c = arr.shape
    bpp = 2 * c

    def scanlines(sub: np.ndarray) -> bytes:
        out = b""
        for row in np.ascontiguousarray(sub, dtype=">u2").reshape(sub.shape[0], -1).view(np.uint8):
            line = row.copy()
            if sub_filter:
                line[bpp:] = row[bpp:] - row[:-bpp]
            out += bytes([1 if sub_filter else 0]) + line.tobytes()
        return out

    if interlace:
        raw = b"".join(
            scanlines(arr[y0::dy, x0::dx]) for x0, y0, dx, dy in ADAM7 if arr[y0::dy, x0::dx].size
        )
    else:
        raw = scanlines(arr)
    ihdr = struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, int(interlace))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + extra
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def slow_png_decode(path: Path):
    """Pure-Python PNG decoder (non-interlaced): (pixels, chunks, filter types used)."""
    blob = path.read_bytes()
    assert blob[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks, idat = 8, {}, b""
    while pos < len(blob):
        (length,) = struct.unpack(">I", blob[pos : pos + 4])
        ctype, payload = blob[pos + 4 : pos + 8], blob[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", blob[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(ctype + payload), f"bad CRC in {ctype}"
        if ctype == b"IDAT":
            idat += payload
        else:
            chunks[ctype] = payload
        pos += 12 + length
    w, h, depth, ctype_, _, _, interlace = struct.unpack(">IIBBBBB", chunks[b"IHDR"])
    assert interlace == 0
    channels = {0: 1, 4: 2, 2: 3, 6: 4}[ctype_]
    bpp, rowbytes = channels * depth // 8, w * channels * depth // 8
    raw, prev, rows, used = zlib.decompress(idat), bytearray(rowbytes), [], set()
    for y in range(h):
        ft, line = (
            raw[y * (rowbytes + 1)],
            bytearray(raw[y * (rowbytes + 1) + 1 : (y + 1) * (rowbytes + 1)]),
        )
        used.add(ft)
        for i in range(rowbytes):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], (prev[i - bpp] if i >= bpp else 0)
            if ft == 1:
                line[i] = (line[i] + a) & 255
            elif ft == 2:
                line[i] = (line[i] + b) & 255
            elif ft == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif ft == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        prev = line
    dtype = ">u2" if depth == 16 else np.uint8
    pixels = np.frombuffer(b"".join(rows), dtype).reshape(h, w, channels).astype(dtype)
    return pixels, chunks, used


def srgb_profile() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def make_exif(orientation: int = 1, width: int = 64, height: int = 48) -> bytes:
    exif = Image.Exif()
    exif[0x010F] = "SrTileCam"
    exif[0x0112] = orientation
    exif[0x8769] = {0xA002: width, 0xA003: height}
    return exif.tobytes()


def assert_one_line(exc: pytest.ExceptionInfo, path: Path, *words: str) -> None:
    message = str(exc.value)
    assert "\n" not in message
    assert message.startswith(str(path)), message
    for word in words:
        assert word in message, message


def listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# ------------------------------------------------------ round trips: Pillow


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA"])
def test_png_8bit_round_trip(tmp_path, mode):
    rgb = photo()
    alpha = np.linspace(0, 255, rgb.shape[0] * rgb.shape[1]).reshape(rgb.shape[:2]).astype(np.uint8)
    im = Image.fromarray(rgb).convert(mode if mode in ("RGB", "L") else mode[:-1])
    if mode.endswith("A"):
        im.putalpha(Image.fromarray(alpha))
    expected = np.asarray(im).reshape(rgb.shape[0], rgb.shape[1], -1)
    im.save(tmp_path / "in.png")
    src, out = save(tmp_path / "in.png", tmp_path / "out.png")
    assert src.pixels.dtype == np.uint8 and src.channels == len(mode)
    assert src.pixels.flags.c_contiguous and src.pixels.flags.writeable
    np.testing.assert_array_equal(src.pixels, expected)
    np.testing.assert_array_equal(out.pixels, expected)
    np.testing.assert_array_equal(
        np.asarray(Image.open(tmp_path / "out.png")).reshape(expected.shape), expected
    )  # Pillow reads our PNG the same


def test_png_16bit_gray_round_trip(tmp_path):
    gray = photo16(channels=1)
    Image.fromarray(gray[:, :, 0]).save(tmp_path / "in.png")  # Pillow writes I;16 as 16-bit gray
    src, out = save(tmp_path / "in.png", tmp_path / "out.png")
    assert src.pixels.dtype == np.uint16 and src.channels == 1
    np.testing.assert_array_equal(src.pixels, gray)
    np.testing.assert_array_equal(out.pixels, gray)


@pytest.mark.parametrize("channels,colour_type", [(3, 2), (4, 6), (2, 4)])
@pytest.mark.parametrize("interlace,sub_filter", [(False, False), (False, True), (True, False)])
def test_png_16bit_colour_read_exact(tmp_path, channels, colour_type, interlace, sub_filter):
    pixels = photo16(channels=channels)
    path = tmp_path / "in.png"
    path.write_bytes(make_png16(pixels, colour_type, interlace=interlace, sub_filter=sub_filter))
    img = read_image(path)
    assert img.pixels.dtype == np.uint16 and img.pixels.flags.c_contiguous
    np.testing.assert_array_equal(img.pixels, pixels)


@pytest.mark.parametrize("channels,colour_type", [(3, 2), (4, 6), (2, 4)])
def test_png_16bit_colour_round_trip(tmp_path, channels, colour_type):
    pixels = photo16(channels=channels)
    (tmp_path / "in.png").write_bytes(make_png16(pixels, colour_type, sub_filter=True))
    _, out = save(tmp_path / "in.png", tmp_path / "out.png")
    np.testing.assert_array_equal(out.pixels, pixels)
    decoded, chunks, _ = slow_png_decode(tmp_path / "out.png")
    assert chunks[b"IHDR"][8:10] == bytes([16, colour_type])
    np.testing.assert_array_equal(decoded, pixels)


def test_png_16bit_rgb_transparent_colour_becomes_alpha(tmp_path):
    pixels = photo16(channels=3)
    key = pixels[3, 5].copy()
    pixels[10:12, 0:4] = key
    trns = chunk(b"tRNS", struct.pack(">HHH", *key.tolist()))
    (tmp_path / "t.png").write_bytes(make_png16(pixels, 2, extra=trns))
    img = read_image(tmp_path / "t.png")
    assert img.channels == 4 and img.pixels.dtype == np.uint16
    transparent = (pixels == key).all(axis=2)
    np.testing.assert_array_equal(img.pixels[..., 3], np.where(transparent, 0, 65535))
    np.testing.assert_array_equal(img.pixels[..., :3], pixels)


@pytest.mark.parametrize("depth,interesting", [(8, 3), (16, 3)])
def test_png_encoder_matches_independent_decoder(tmp_path, depth, interesting):
    pixels = photo(40, 37) if depth == 8 else photo16(40, 37)
    pixels = np.concatenate([pixels, pixels[::-1, :, :1]], axis=2)  # RGBA
    write_image(
        tmp_path / "o.png",
        bands(pixels),
        width=37,
        height=40,
        channels=4,
        dtype=pixels.dtype,
        meta=ImageMeta("PNG", dpi=(300.0, 300.0)),
        fmt="PNG",
    )
    decoded, chunks, used = slow_png_decode(tmp_path / "o.png")
    np.testing.assert_array_equal(decoded, pixels)
    assert len(used) >= interesting, used  # adaptive filtering really picks several filters
    assert struct.unpack(">IIB", chunks[b"pHYs"]) == (11811, 11811, 1)


@pytest.mark.parametrize("transparency", [False, True])
def test_palette_png(tmp_path, transparency):
    im = Image.fromarray(photo()).quantize(16)
    index = np.asarray(im)
    palette = np.array(im.getpalette()[:48], np.uint8).reshape(16, 3)
    kwargs = {"transparency": 0} if transparency else {}
    im.save(tmp_path / "p.png", **kwargs)
    src, out = save(tmp_path / "p.png", tmp_path / "out.png")
    expected = palette[index]
    if transparency:
        expected = np.concatenate([expected, np.where(index == 0, 0, 255)[..., None]], 2).astype(
            np.uint8
        )
    assert (index == 0).any()
    np.testing.assert_array_equal(src.pixels, expected)
    np.testing.assert_array_equal(out.pixels, expected)


def test_bilevel_png_reads_as_0_255_gray(tmp_path):
    bits = photo()[..., 0] > 128
    Image.fromarray(bits).save(tmp_path / "b.png")
    img = read_image(tmp_path / "b.png")
    assert img.channels == 1 and img.pixels.dtype == np.uint8
    np.testing.assert_array_equal(img.pixels[..., 0], np.where(bits, 255, 0))


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    rgb = photo(source=data.chelsea)
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "c.jpg", quality=98)
    src, out = save(tmp_path / "c.jpg", tmp_path / "c_out.png")
    assert src.channels == 3 and src.meta.icc_profile is None
    assert np.abs(src.pixels.astype(int) - rgb).mean() < 4
    np.testing.assert_array_equal(out.pixels, src.pixels)


def test_jpeg_round_trip_approximately_equal(tmp_path):
    rgb = photo(64, 80, data.chelsea)
    Image.fromarray(rgb).save(tmp_path / "in.jpg", quality=95)
    src, out = save(tmp_path / "in.jpg", tmp_path / "out.jpg")
    assert out.meta.format == "JPEG" and out.pixels.shape == rgb.shape
    assert np.abs(out.pixels.astype(int) - src.pixels).mean() < 2.5
    with Image.open(tmp_path / "out.jpg") as im:  # written 4:4:4
        assert im.layer[0][1:3] == im.layer[1][1:3] == (1, 1)


def test_webp_round_trip(tmp_path):
    rgba = np.concatenate([photo(), photo()[..., :1]], 2)
    Image.fromarray(rgba).save(tmp_path / "in.webp", lossless=True)
    src, out = save(
        tmp_path / "in.webp", tmp_path / "out.webp", options=WriteOptions(webp_lossless=True)
    )
    np.testing.assert_array_equal(src.pixels, rgba)
    np.testing.assert_array_equal(out.pixels, rgba)
    _, lossy = save(tmp_path / "in.webp", tmp_path / "lossy.webp")
    assert np.abs(lossy.pixels.astype(int) - rgba).mean() < 4


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_bmp_round_trip(tmp_path, mode):
    rgb = photo(31, 45)
    pixels = rgb if mode == "RGB" else np.concatenate([rgb, rgb[..., 1:2]], 2)
    Image.fromarray(pixels).save(tmp_path / "in.bmp")
    src, out = save(tmp_path / "in.bmp", tmp_path / "out.bmp")
    np.testing.assert_array_equal(src.pixels, pixels)
    np.testing.assert_array_equal(out.pixels, pixels)


def test_gray_alpha_to_bmp_is_expanded_to_rgba(tmp_path):
    la = photo16(channels=2)[..., :2] // 257
    la = la.astype(np.uint8)
    write_image(
        tmp_path / "o.bmp",
        bands(la),
        width=la.shape[1],
        height=la.shape[0],
        channels=2,
        dtype=np.uint8,
        meta=ImageMeta("PNG"),
        fmt="BMP",
    )
    out = read_image(tmp_path / "o.bmp").pixels
    np.testing.assert_array_equal(out, la[..., [0, 0, 0, 1]])


# -------------------------------------------------------- round trips: TIFF


@pytest.mark.parametrize(
    "pixels,kwargs",
    [
        (photo(), {"photometric": "rgb"}),
        (photo16(), {"photometric": "rgb", "compression": "zlib"}),
        (photo()[..., :1], {"photometric": "minisblack"}),
        (photo16(channels=1), {"photometric": "minisblack", "compression": "zlib"}),
        (photo16(channels=4), {"photometric": "rgb", "extrasamples": ["unassalpha"]}),
        (RNG.normal(0.5, 0.7, (30, 41, 3)).astype(np.float32), {"photometric": "rgb"}),
        (photo(), {"photometric": "rgb", "planarconfig": "separate"}),
    ],
    ids=["rgb8", "rgb16", "gray8", "gray16", "rgba16", "float32", "planar"],
)
def test_tiff_round_trip(tmp_path, pixels, kwargs):
    stored = pixels[..., 0] if pixels.shape[2] == 1 else pixels
    if kwargs.get("planarconfig") == "separate":
        stored = np.moveaxis(pixels, 2, 0)
    tifffile.imwrite(tmp_path / "in.tif", stored, metadata=None, **kwargs)
    src, out = save(tmp_path / "in.tif", tmp_path / "out.tif", options=WriteOptions(tiff_tile=16))
    assert src.pixels.dtype == pixels.dtype and src.meta.format == "TIFF"
    np.testing.assert_array_equal(src.pixels, pixels)
    np.testing.assert_array_equal(out.pixels, pixels)
    independent = tifffile.imread(tmp_path / "out.tif")
    np.testing.assert_array_equal(independent.reshape(pixels.shape), pixels)
    with tifffile.TiffFile(tmp_path / "out.tif") as tif:
        page = tif.pages[0]
        assert page.is_tiled and page.tilewidth == 16
        assert len(page.extrasamples) == (pixels.shape[2] in (2, 4))


def test_bigtiff_round_trip(tmp_path):
    pixels = photo16()
    tifffile.imwrite(tmp_path / "in.tif", pixels, bigtiff=True, photometric="rgb", metadata=None)
    src, out = save(tmp_path / "in.tif", tmp_path / "out.tif")
    assert src.meta.bigtiff
    np.testing.assert_array_equal(out.pixels, pixels)
    with tifffile.TiffFile(tmp_path / "out.tif") as tif:
        assert tif.is_bigtiff
    tifffile.imwrite(tmp_path / "classic.tif", pixels, photometric="rgb", metadata=None)
    save(tmp_path / "classic.tif", tmp_path / "classic_out.tif")
    save(tmp_path / "classic.tif", tmp_path / "by_suffix.btf")  # .btf asks for BigTIFF
    with (
        tifffile.TiffFile(tmp_path / "classic_out.tif") as a,
        tifffile.TiffFile(tmp_path / "by_suffix.btf") as b,
    ):
        assert (a.is_bigtiff, b.is_bigtiff) == (False, True)


def test_tiff_compression_follows_input_or_falls_back_to_zlib(tmp_path):
    rgb = photo()
    tifffile.imwrite(tmp_path / "raw.tif", rgb, photometric="rgb", metadata=None)
    Image.fromarray(rgb).save(tmp_path / "lzw.tif", compression="tiff_lzw")  # needs Pillow fallback
    src, _ = save(tmp_path / "raw.tif", tmp_path / "raw_out.tif")
    lzw, lzw_out = save(tmp_path / "lzw.tif", tmp_path / "lzw_out.tif")
    assert (src.meta.compression, lzw.meta.compression) == ("none", "lzw")
    np.testing.assert_array_equal(lzw.pixels, rgb)
    np.testing.assert_array_equal(lzw_out.pixels, rgb)
    with (
        tifffile.TiffFile(tmp_path / "raw_out.tif") as a,
        tifffile.TiffFile(tmp_path / "lzw_out.tif") as b,
    ):
        assert (int(a.pages[0].compression), int(b.pages[0].compression)) == (1, 8)


def test_tiff_palette_miniswhite_cmyk_and_bilevel(tmp_path):
    index = (photo()[..., 0] // 64).astype(np.uint8)
    cmap = np.zeros((3, 256), np.uint16)
    cmap[:, :4] = np.array([[0, 255, 0, 10], [0, 0, 255, 20], [255, 0, 0, 30]]) * 257
    tifffile.imwrite(
        tmp_path / "pal.tif", index, photometric="palette", colormap=cmap, metadata=None
    )
    np.testing.assert_array_equal(
        read_image(tmp_path / "pal.tif").pixels, (cmap[:, :4].T // 257)[index]
    )
    gray = photo()[..., 1]
    tifffile.imwrite(tmp_path / "mw.tif", gray, photometric="miniswhite", metadata=None)
    np.testing.assert_array_equal(read_image(tmp_path / "mw.tif").pixels[..., 0], 255 - gray)
    bits = gray > 100  # tifffile stores bool as MINISWHITE: True is black
    tifffile.imwrite(tmp_path / "bl.tif", bits, metadata=None)
    np.testing.assert_array_equal(
        read_image(tmp_path / "bl.tif").pixels[..., 0], np.where(bits, 0, 255)
    )
    with Image.open(tmp_path / "bl.tif") as im:  # Pillow agrees
        np.testing.assert_array_equal(
            read_image(tmp_path / "bl.tif").pixels[..., 0], np.asarray(im.convert("L"))
        )
    cmyk = np.asarray(Image.fromarray(photo()).convert("CMYK"))
    tifffile.imwrite(tmp_path / "cmyk.tif", cmyk, photometric="separated", metadata=None)
    expected = np.asarray(Image.fromarray(cmyk, "CMYK").convert("RGB"))
    np.testing.assert_array_equal(read_image(tmp_path / "cmyk.tif").pixels, expected)


def test_tiff_associated_alpha_is_unpremultiplied(tmp_path):
    rgb, alpha = photo().astype(np.float64), np.full(photo().shape[:2] + (1,), 128.0)
    alpha[:4] = 0
    premultiplied = np.rint(rgb * alpha / 255).astype(np.uint8)
    tifffile.imwrite(
        tmp_path / "a.tif",
        np.concatenate([premultiplied, alpha.astype(np.uint8)], 2),
        photometric="rgb",
        extrasamples=["assocalpha"],
        metadata=None,
    )
    img = read_image(tmp_path / "a.tif")
    assert np.abs(img.pixels[4:, :, :3].astype(int) - rgb[4:]).max() <= 2
    assert not img.pixels[:4, :, :3].any()


@pytest.mark.parametrize("dtype", [np.int16, np.uint32, np.complex64])
def test_unsupported_tiff_sample_format(tmp_path, dtype):
    tifffile.imwrite(tmp_path / "x.tif", np.ones((8, 9), dtype), metadata=None)
    with pytest.raises(ImageReadError) as exc:
        read_image(tmp_path / "x.tif")
    assert_one_line(exc, tmp_path / "x.tif", "unsupported TIFF sample format")


# ----------------------------------------------------------------- metadata


@pytest.mark.parametrize(
    "src_ext,dst_ext",
    [("png", "png"), ("png", "jpg"), ("jpg", "png"), ("jpg", "jpg"), ("png", "webp")],
)
def test_icc_and_exif_kept(tmp_path, src_ext, dst_ext):
    profile, exif = srgb_profile(), make_exif()
    Image.fromarray(photo()).save(tmp_path / f"in.{src_ext}", icc_profile=profile, exif=exif)
    src, out = save(tmp_path / f"in.{src_ext}", tmp_path / f"out.{dst_ext}")
    assert src.meta.icc_profile == profile and out.meta.icc_profile == profile
    written = load_exif(out.meta.exif)
    assert written[0x010F] == "SrTileCam" and written.get_ifd(0x8769)[0xA002] == 64
    with Image.open(tmp_path / f"out.{dst_ext}") as im:  # Pillow sees them too
        assert im.info["icc_profile"] == profile
        assert im.getexif()[0x010F] == "SrTileCam"


@pytest.mark.parametrize(
    "orientation,expected",
    [(3, lambda a: np.rot90(a, 2)), (6, lambda a: np.rot90(a, -1)), (8, lambda a: np.rot90(a, 1))],
)
def test_exif_orientation_applied_and_reset(tmp_path, orientation, expected):
    pixels = photo(30, 50)
    Image.fromarray(pixels).save(tmp_path / "in.png", exif=make_exif(orientation, 50, 30))
    assert probe_size(tmp_path / "in.png") == ((30, 50) if orientation in (6, 8) else (50, 30))
    src, out = save(tmp_path / "in.png", tmp_path / "out.png")
    np.testing.assert_array_equal(src.pixels, expected(pixels))
    np.testing.assert_array_equal(out.pixels, expected(pixels))
    if orientation == 6:  # the top-left pixel of the display is the bottom-left of the stored image
        np.testing.assert_array_equal(src.pixels[0, 0], pixels[-1, 0])
    assert load_exif(src.meta.exif)[0x0112] == 1
    with Image.open(tmp_path / "out.png") as im:
        assert im.getexif()[0x0112] == 1 and im.getexif()[0x010F] == "SrTileCam"


@pytest.mark.parametrize("orientation", range(1, 9))
def test_all_orientations_match_pillow(tmp_path, orientation):
    Image.fromarray(photo(12, 20)).save(tmp_path / "o.png", exif=make_exif(orientation))
    with Image.open(tmp_path / "o.png") as im:
        expected = np.asarray(ImageOps.exif_transpose(im))
    np.testing.assert_array_equal(read_image(tmp_path / "o.png").pixels, expected)


def test_png_exif_after_idat_found_by_probe_and_reader(tmp_path):
    pixels = photo16(channels=3)
    png = make_png16(pixels, 2)
    exif_chunk = chunk(b"eXIf", make_exif(6)[6:])
    (tmp_path / "late.png").write_bytes(png[:-12] + exif_chunk + png[-12:])  # before IEND
    assert probe_size(tmp_path / "late.png") == (40, 52)
    img = read_image(tmp_path / "late.png")
    np.testing.assert_array_equal(img.pixels, np.rot90(pixels, -1))
    assert load_exif(img.meta.exif)[0x0112] == 1


def test_icc_profile_not_matching_output_is_dropped_with_warning(tmp_path):
    gray = photo()[..., :1]
    messages: list[str] = []
    write_image(
        tmp_path / "g.png",
        bands(gray),
        width=64,
        height=48,
        channels=1,
        dtype=np.uint8,
        meta=ImageMeta("PNG", icc_profile=srgb_profile()),
        fmt="PNG",
        on_warning=messages.append,
    )
    assert len(messages) == 1 and "ICC profile is for RGB" in messages[0]
    _, chunks, _ = slow_png_decode(tmp_path / "g.png")
    assert b"iCCP" not in chunks
    np.testing.assert_array_equal(read_image(tmp_path / "g.png").pixels, gray)


@pytest.mark.parametrize("ext", ["png", "tif", "bmp"])
def test_non_contiguous_bands(tmp_path, ext):
    pixels = photo16(channels=4) if ext != "bmp" else photo()[..., [0, 1, 2, 0]]
    swapped = pixels[:, :, [2, 1, 0, 3]]  # fancy indexing: not C-contiguous bands
    strided = (band[:, :, [2, 1, 0, 3]] for band in bands(pixels))
    write_image(
        tmp_path / f"o.{ext}",
        strided,
        width=pixels.shape[1],
        height=pixels.shape[0],
        channels=4,
        dtype=pixels.dtype,
        meta=ImageMeta("PNG"),
        fmt=output_format_for(f"o.{ext}", None, None),
    )
    np.testing.assert_array_equal(read_image(tmp_path / f"o.{ext}").pixels, swapped)


def test_jpeg_orientation_and_probe(tmp_path):
    pixels = photo(32, 48)
    Image.fromarray(pixels).save(tmp_path / "o.jpg", exif=make_exif(6), quality=98)
    img = read_image(tmp_path / "o.jpg")
    assert probe_size(tmp_path / "o.jpg") == (32, 48) and img.pixels.shape == (48, 32, 3)
    assert np.abs(img.pixels.astype(int) - np.rot90(pixels, -1)).mean() < 3


def test_dpi_scaled(tmp_path):
    Image.fromarray(photo()).save(tmp_path / "in.png", dpi=(72, 96), exif=make_exif())
    img = read_image(tmp_path / "in.png")
    meta = img.meta.scaled(4, 256, 192)
    assert meta.dpi == pytest.approx((288, 384), rel=2e-4)  # PNG stores whole pixels per metre
    assert load_exif(meta.exif).get_ifd(0x8769)[0xA002] == 256
    big = np.repeat(np.repeat(img.pixels, 4, 0), 4, 1)
    for ext in ("png", "jpg", "tif"):
        write_image(
            tmp_path / f"o.{ext}",
            bands(big),
            width=256,
            height=192,
            channels=3,
            dtype=np.uint8,
            meta=meta,
            fmt=output_format_for(f"o.{ext}", None, "PNG"),
        )
        assert read_image(tmp_path / f"o.{ext}").meta.dpi == pytest.approx((288, 384), rel=2e-4)


def test_tiff_icc_resolution_and_orientation(tmp_path):
    profile = srgb_profile()
    pixels = photo16()
    tifffile.imwrite(
        tmp_path / "in.tif",
        pixels,
        photometric="rgb",
        iccprofile=profile,
        metadata=None,
        resolution=(100, 50),
        resolutionunit="centimeter",
        extratags=[(274, "H", 1, 8, True)],
    )
    assert probe_size(tmp_path / "in.tif") == (40, 52)
    src, out = save(tmp_path / "in.tif", tmp_path / "out.tif")
    np.testing.assert_array_equal(src.pixels, np.rot90(pixels, 1))
    assert src.meta.dpi == pytest.approx((127, 254))  # axes swapped with the rotation
    assert out.meta.icc_profile == profile and out.meta.dpi == pytest.approx((127, 254), rel=1e-4)
    with tifffile.TiffFile(tmp_path / "out.tif") as tif:
        tags = tif.pages[0].tags
        assert tags[34675].value == profile and int(tags[296].value) == 2
        assert 274 not in tags or int(tags[274].value) == 1


# ------------------------------------------------------------------- errors


def test_read_errors_are_one_line(tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(photo(64, 64)).save(good)
    blob = good.read_bytes()
    Image.fromarray(photo(64, 64)).save(tmp_path / "good.jpg")
    jpeg = (tmp_path / "good.jpg").read_bytes()
    cases = {
        "garbage.png": (
            b"\x89PNG\r\n\x1a\n" + bytes(RNG.integers(0, 256, 500, dtype=np.uint8)),
            "corrupt",
        ),
        "bad_idat.png": (blob[:60] + bytes(200) + blob[260:], "corrupt or truncated"),
        "truncated.png": (blob[: len(blob) // 2], "corrupt or truncated"),
        "truncated.jpg": (jpeg[: len(jpeg) // 2], "corrupt or truncated"),
        "empty.png": (b"", "empty file"),
        "notes.txt": (b"hello, this is not an image\n" * 10, "not a recognised image"),
    }
    for name, (content, words) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ImageReadError) as exc:
            read_image(tmp_path / name)
        assert_one_line(exc, tmp_path / name, words)
    for path, words in ((tmp_path / "missing.png", "no such file"), (tmp_path, "directory")):
        for func in (read_image, probe_size):
            with pytest.raises(ImageReadError) as exc:
                func(path)
            assert_one_line(exc, path, words)


def test_truncated_tiff(tmp_path):
    tifffile.imwrite(
        tmp_path / "t.tif", photo16(), photometric="rgb", compression="zlib", metadata=None
    )
    blob = (tmp_path / "t.tif").read_bytes()
    (tmp_path / "t.tif").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ImageReadError) as exc:
        read_image(tmp_path / "t.tif")
    assert_one_line(exc, tmp_path / "t.tif", "corrupt or truncated")


def test_max_pixels_checked_before_decoding(tmp_path, monkeypatch):
    bomb = tmp_path / "bomb.png"  # claims 100000 x 100000, holds almost nothing
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    bomb.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 99))
        + chunk(b"IEND", b"")
    )
    assert probe_size(bomb) == (100_000, 100_000)
    with pytest.raises(ImageReadError) as exc:
        read_image(bomb)
    assert_one_line(exc, bomb, "--max-pixels", "100000x100000")
    assert DEFAULT_MAX_PIXELS == 1_000_000_000 and Image.MAX_IMAGE_PIXELS is not None  # restored

    def no_decoding(*args, **kwargs):
        raise AssertionError("pixels were decoded")

    Image.fromarray(photo()).save(tmp_path / "small.png")
    tifffile.imwrite(tmp_path / "small.tif", photo(), photometric="rgb", metadata=None)
    monkeypatch.setattr("PIL.ImageFile.ImageFile.load", no_decoding)
    monkeypatch.setattr(tifffile.TiffPage, "asarray", no_decoding)
    for name in ("small.png", "small.tif"):
        with pytest.raises(ImageReadError) as exc:
            read_image(tmp_path / name, max_pixels=1000)
        assert_one_line(exc, tmp_path / name, "--max-pixels", "64x48")


# ------------------------------------------------------------------ writing


def write_rgb(path: Path, band_source, **kwargs) -> Path:
    defaults = {
        "width": 64,
        "height": 48,
        "channels": 3,
        "dtype": np.uint8,
        "meta": ImageMeta("PNG"),
        "fmt": output_format_for(path, None, None),
    }
    return write_image(path, band_source, **{**defaults, **kwargs})


@pytest.mark.parametrize("ext", ["png", "tif", "jpg", "webp", "bmp"])
@pytest.mark.parametrize("error", [RuntimeError("model exploded"), KeyboardInterrupt()])
def test_failing_bands_leave_nothing(tmp_path, ext, error):
    def failing():
        yield photo()[:20]
        raise error

    with pytest.raises(type(error)):
        write_rgb(tmp_path / f"out.{ext}", failing())
    assert listing(tmp_path) == []


def test_wrong_band_total_is_a_programming_error_and_leaves_nothing(tmp_path):
    with pytest.raises(ValueError):
        write_rgb(tmp_path / "o.png", iter([photo()[:40]]))
    with pytest.raises(ValueError):
        write_rgb(tmp_path / "o.tif", iter([photo()[:40, :, :2]]))
    assert listing(tmp_path) == []


def test_existing_target_needs_overwrite(tmp_path):
    target = tmp_path / "out.png"
    target.write_bytes(b"precious")
    consumed = []

    def tracked():
        consumed.append(True)
        yield photo()

    with pytest.raises(ImageWriteError) as exc:
        write_rgb(target, tracked())
    assert_one_line(exc, target, "exists", "--overwrite")
    assert not consumed and target.read_bytes() == b"precious"
    write_rgb(target, tracked(), overwrite=True)
    np.testing.assert_array_equal(read_image(target).pixels, photo())
    assert listing(tmp_path) == ["out.png"]


def test_format_errors_and_warnings_before_any_band(tmp_path):
    def never():
        raise AssertionError("bands consumed")
        yield  # pragma: no cover

    rgba = {"channels": 4}
    for path, kwargs, words in [
        (tmp_path / "a.jpg", rgba, "cannot store alpha"),
        (tmp_path / "c.webp", {"width": 20_000}, "16383"),
        (tmp_path / "d.tif", {"options": WriteOptions(tiff_compression="lzw")}, "imagecodecs"),
        (tmp_path / "nodir" / "g.png", {}, "does not exist"),
    ]:
        with pytest.raises(ImageWriteError) as exc:
            write_rgb(path, never(), **kwargs)
        assert_one_line(exc, path, words)
    assert listing(tmp_path) == []
    for kwargs, words in [({"tiff_tile": 100}, "multiple of 16"), ({"jpeg_quality": 0}, "jpeg quality")]:
        with pytest.raises(UsageError, match=words):
            WriteOptions(**kwargs)
    with pytest.raises(UsageError, match="unknown output format"):
        write_rgb(tmp_path / "b.png", never(), fmt="gif")


def test_16bit_and_float_to_8bit_formats_warn_and_round(tmp_path):
    pixels16 = photo16()
    messages: list[str] = []
    for ext in ("jpg", "webp", "bmp"):
        path = tmp_path / f"o.{ext}"
        write_image(
            path,
            bands(pixels16),
            width=52,
            height=40,
            channels=3,
            dtype=np.uint16,
            meta=ImageMeta("PNG"),
            fmt=output_format_for(path, None, None),
            on_warning=messages.append,
        )
    assert len(messages) == 3 and all("16-bit input written as 8-bit" in m for m in messages)
    assert messages[0].startswith(str(tmp_path / "o.jpg")) and "JPEG holds 8 bits" in messages[0]
    np.testing.assert_array_equal(read_image(tmp_path / "o.bmp").pixels, np.rint(pixels16 / 257))
    floats = RNG.uniform(-0.2, 1.2, (10, 12, 3)).astype(np.float32)
    write_image(
        tmp_path / "f.png",
        bands(floats),
        width=12,
        height=10,
        channels=3,
        dtype=np.float32,
        meta=ImageMeta("TIFF"),
        fmt="PNG",
        on_warning=messages.append,
    )
    assert "floating-point" in messages[-1]
    out = read_image(tmp_path / "f.png").pixels
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, np.rint(np.clip(floats, 0, 1) * 65535))


def test_output_format_for():
    """The suffix decides; --format must agree with it; a suffix we cannot write is refused,
    never given another format's bytes (x.gif, x.tga, x.ppm used to get PNG)."""
    assert output_format_for("x.jpg", "JPEG", "PNG") == "JPEG"
    assert output_format_for("x", "tif", None) == "TIFF"
    assert output_format_for("x.webp", None, "PNG") == "WEBP"  # suffix beats input format
    assert output_format_for("x", None, "TIFF") == "TIFF"
    assert output_format_for("x", None, "GIF") == "PNG"
    assert output_format_for("x", None, None) == "PNG"
    assert output_format_for("x", None, "MPO") == "JPEG"
    assert output_format_for("x.btf", None, "PNG") == "TIFF"
    assert set(WRITABLE_FORMATS) == {"PNG", "JPEG", "WEBP", "BMP", "TIFF"}
    for path, fmt, words in [("x.png", "heic", "unknown output format"),
                             ("x.png", "jpg", "names a PNG file"),
                             ("x.gif", None, "cannot write .gif"), ("x.tga", "png", ".tga"),
                             ("x.ppm", None, ".ppm")]:
        with pytest.raises(UsageError, match=words):
            output_format_for(path, fmt, "PNG")


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_streaming_writers_use_bounded_memory(tmp_path, fmt):
    width, height, band_rows = 4096, 2048, 64
    base = np.tile(data.astronaut()[:band_rows], (1, width // 512, 1))

    def generated():
        for i in range(height // band_rows):
            yield np.roll(base, i * 7, axis=1)

    tracemalloc.start()
    try:
        write_image(
            tmp_path / "big",
            generated(),
            width=width,
            height=height,
            channels=3,
            dtype=np.uint8,
            meta=ImageMeta("PNG"),
            fmt=fmt,
            options=WriteOptions(workers=2),  # each compression thread holds ~1.5 MB more
        )
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < width * height * 3 / 2, f"peak {peak / 1e6:.1f} MB"
    out = read_image(tmp_path / "big").pixels
    np.testing.assert_array_equal(out[band_rows * 5 : band_rows * 6], np.roll(base, 35, axis=1))
