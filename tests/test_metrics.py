"""Tests of PSNR-Y / SSIM-Y against the numbers the SR field publishes.

Where the reference numbers come from:
* ``BASICSR``: BasicSR 1.4.2 (PyPI sdist), ``basicsr/metrics/psnr_ssim.py``
  ``calculate_psnr`` / ``calculate_ssim(img, img2, crop_border=4, input_order='HWC',
  test_y_channel=True|False)`` with opencv-python-headless 5.0.0.93, numpy 2.4.6,
  fed the BGR (channel-reversed) version of the pairs built below from
  scikit-image 0.26.0 sample images. The ``coffee_bicubic_x4`` SR image was made
  with BasicSR's ``utils/matlab_functions.py::imresize`` (x1/4 antialiased, LR
  rounded to uint8, x4, SR rounded to uint8); here we rebuild it with our
  ``imresize_np`` (1 of 196608 values differs by 1 from the float32 port).
* ``SOURCES.md`` (shared data): the independently computed "bicubic x4 PSNR-Y"
  column. Over all 35 images our pipeline with LR and SR both rounded to uint8
  (``bicubic_x4_psnr_y``) gives max |diff| 0.0048 dB, mean 0.0026 (the table has
  2 decimals); other variants miss: float LR/SR up to 0.34 dB, MATLAB's uint8
  rounding after each pass up to 0.066 dB (smooth images are the sensitive ones).
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import numpy as np
import pytest

from sr_tile.imresize import imresize_np
from sr_tile.metrics import psnr, psnr_y, rgb_to_y, ssim, ssim_y

skimage_data = pytest.importorskip("skimage.data")


def _hashnoise(shape: tuple[int, ...], seed: int, amp: float) -> np.ndarray:
    """Deterministic pseudo-noise in [-amp, amp) (a Weyl sequence: no RNG version drift)."""
    n = np.arange(int(np.prod(shape)), dtype=np.uint64)
    v = (n * np.uint64(2654435761) + np.uint64(seed) * np.uint64(40503)) % np.uint64(2**32)
    return ((v.astype(np.float64) / 2**32) - 0.5).reshape(shape) * 2 * amp


def _box3(a: np.ndarray) -> np.ndarray:
    """3x3 box blur with edge padding, integer rounding (a deterministic 'blurry SR')."""
    p = np.pad(a.astype(np.int64), ((1, 1), (1, 1), (0, 0)), mode="edge")
    s = sum(p[i : i + a.shape[0], j : j + a.shape[1]] for i in range(3) for j in range(3))
    return ((s + 4) // 9).astype(np.uint8)


def _u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def _pairs() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    a = skimage_data.astronaut()[64:320, 128:384]
    c = skimage_data.chelsea()[20:276, 40:296]
    k = skimage_data.coffee()[80:336, 160:416]
    return {
        "astronaut_noise": (_u8(a + _hashnoise(a.shape, 1, 12.0)), a),
        "chelsea_box3": (_box3(c), c),
        "coffee_bicubic_x4": (imresize_np(imresize_np(k, 0.25), 4), k),
        "astronaut_float": (a.astype(np.float64) + _hashnoise(a.shape, 7, 3.0) + 1.25, a),
    }


# name: (psnr_y, ssim_y, psnr_rgb, ssim_rgb) from BasicSR 1.4.2, crop_border=4.
BASICSR = {
    "astronaut_noise": (38.909234, 0.94264025, 31.535707, 0.77405761),
    "chelsea_box3": (32.486797, 0.84747850, 31.067677, 0.82989240),
    "coffee_bicubic_x4": (26.966789, 0.84538886, 25.506609, 0.82197859),
    "astronaut_float": (45.871965, 0.99551153, 41.538901, 0.97064324),
}
BASICSR_CAMERA_GRAY_NOISE = (32.892535, 0.87430171)
# astronaut()[10:213, 50:353] mod-cropped to 200x300, BasicSR bicubic x4 recipe (see below).
ASTRONAUT_ODD_X4 = (28.495530, 0.85664533)


@pytest.fixture(scope="module")
def pairs() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return _pairs()


@pytest.mark.parametrize("name", list(BASICSR))
def test_matches_basicsr(pairs, name):
    sr, hr = pairs[name]
    p_y, s_y, p_rgb, s_rgb = BASICSR[name]
    assert psnr_y(sr, hr, 4) == pytest.approx(p_y, abs=0.01)
    assert ssim_y(sr, hr, 4) == pytest.approx(s_y, abs=1e-4)
    assert psnr(sr, hr, 4, y_channel=False) == pytest.approx(p_rgb, abs=0.01)
    assert ssim(sr, hr, 4, y_channel=False) == pytest.approx(s_rgb, abs=1e-4)


def test_matches_basicsr_gray():
    g = skimage_data.camera()[100:228, 200:328]
    gn = _u8(g + _hashnoise(g.shape, 3, 10.0))
    assert psnr_y(gn, g, 4) == pytest.approx(BASICSR_CAMERA_GRAY_NOISE[0], abs=0.01)
    assert ssim_y(gn, g, 4) == pytest.approx(BASICSR_CAMERA_GRAY_NOISE[1], abs=1e-4)
    assert psnr_y(gn[..., None], g[..., None], 4) == psnr_y(gn, g, 4)


def test_ssim_matches_skimage_gaussian(pairs):
    """Independent check: skimage's Gaussian SSIM (sigma 1.5 -> 11 taps, population
    covariance) averages the map over the same 'valid' region as MATLAB."""
    metrics = pytest.importorskip("skimage.metrics")
    sr, hr = pairs["chelsea_box3"]
    ys, yh = rgb_to_y(sr)[4:-4, 4:-4], rgb_to_y(hr)[4:-4, 4:-4]
    ref = metrics.structural_similarity(ys, yh, data_range=255, gaussian_weights=True, sigma=1.5,
                                        use_sample_covariance=False)
    assert ssim_y(sr, hr, 4) == pytest.approx(ref, abs=1e-9)


def test_rgb_to_y_bt601_studio_range():
    px = np.array([[[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255]]], np.uint8)
    expected = [16.0, 235.0, 16 + 65.481, 16 + 128.553, 16 + 24.966]
    np.testing.assert_allclose(rgb_to_y(px)[0], expected, atol=1e-12)
    assert rgb_to_y(px).dtype == np.float64
    np.testing.assert_array_equal(rgb_to_y(px.astype(np.uint16) * 257), rgb_to_y(px))
    with pytest.raises(ValueError):
        rgb_to_y(np.zeros((2, 2)))


def test_dtypes_agree(pairs):
    sr, hr = pairs["astronaut_noise"]
    ref = psnr_y(sr, hr, 4)
    sr16, hr16 = sr.astype(np.uint16) * 257, hr.astype(np.uint16) * 257
    assert psnr_y(sr16, hr16, 4) == pytest.approx(ref, abs=1e-9)
    assert psnr_y(sr.astype(np.float32), hr, 4) == pytest.approx(ref, abs=1e-9)
    assert ssim_y(sr.astype(np.uint16) * 257, hr, 4) == pytest.approx(ssim_y(sr, hr, 4), abs=1e-12)


def test_identical_images():
    img = skimage_data.chelsea()[:64, :64]
    assert psnr_y(img, img.copy(), 4) == math.inf
    assert psnr(img, img, 0, y_channel=False) == math.inf
    assert ssim_y(img, img, 4) == pytest.approx(1.0, abs=1e-12)


def test_crop_border_is_applied():
    hr = np.full((32, 32, 3), 100, dtype=np.uint8)
    sr = hr.copy()
    sr[:4] = 0  # damage only the top border band
    assert psnr_y(sr, hr, 4) == math.inf
    assert psnr_y(sr, hr, 3) < 30


def test_errors():
    a = np.zeros((32, 32, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="shapes differ"):
        psnr_y(a, np.zeros((32, 31, 3), dtype=np.uint8), 4)
    with pytest.raises(ValueError):
        psnr_y(a, a, 16)
    with pytest.raises(ValueError):
        psnr_y(a, a, -1)
    with pytest.raises(ValueError, match="11x11"):
        ssim_y(a, a, 11)
    with pytest.raises(ValueError):
        psnr_y(np.zeros((8, 8, 4)), np.zeros((8, 8, 4)), 0)
    with pytest.raises(TypeError):
        psnr_y(a.astype(np.int32), a.astype(np.int32), 0)


# --- the bicubic x4 pipeline of SOURCES.md ------------------------------------------------------
def bicubic_x4_psnr_y(hr: np.ndarray) -> float:
    """SOURCES.md's recipe: mod-crop 4, LR = imresize(HR, 1/4) rounded to uint8,
    SR = imresize(LR, 4) rounded to uint8 (both as saved PNGs would be), PSNR-Y, border 4."""
    h, w = hr.shape[0] // 4 * 4, hr.shape[1] // 4 * 4
    hr = hr[:h, :w]
    return psnr_y(imresize_np(imresize_np(hr, 0.25), 4), hr, 4)


def test_bicubic_x4_pipeline_without_shared_data():
    # Same recipe with BasicSR's port (matlab_functions.imresize on [0,1] float32, LR and SR
    # rounded to uint8, calculate_psnr/ssim crop_border=4 test_y_channel=True); the odd-sized
    # astronaut crop also exercises the mod-crop.
    k = skimage_data.coffee()[80:336, 160:416]
    assert bicubic_x4_psnr_y(k) == pytest.approx(BASICSR["coffee_bicubic_x4"][0], abs=0.01)
    a = skimage_data.astronaut()[10:213, 50:353]
    assert bicubic_x4_psnr_y(a) == pytest.approx(ASTRONAUT_ODD_X4[0], abs=0.01)
    hr = a[:200, :300]
    sr = imresize_np(imresize_np(hr, 0.25), 4)
    assert ssim_y(sr, hr, 4) == pytest.approx(ASTRONAUT_ODD_X4[1], abs=1e-4)


def _shared_data() -> Path:
    env = os.environ.get("SR_TILE_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


def _sources_table(root: Path) -> dict[str, tuple[str, float]]:
    rows = {}
    for line in (root / "SOURCES.md").read_text(encoding="utf-8").splitlines():
        m = re.match(r"\| (train|val) \| (\S+) \| .* \| ([0-9.]+) \|$", line)
        if m:
            rows[m[2]] = (m[1], float(m[3]))
    return rows


@pytest.mark.parametrize("name", ["GreenMeadow.jpg", "FreshFlower.jpg"])  # the two smallest
def test_bicubic_x4_matches_sources_md(name):
    root = _shared_data()
    if not (root / "SOURCES.md").is_file():
        pytest.skip(f"shared data not found at {root} (set SR_TILE_SHARED_DATA)")
    table = _sources_table(root)
    if name not in table:
        pytest.skip(f"{name} not listed in SOURCES.md")
    split, expected = table[name]
    from PIL import Image

    with Image.open(root / split / name) as im:
        hr = np.asarray(im.convert("RGB"))
    assert bicubic_x4_psnr_y(hr) == pytest.approx(expected, abs=0.05)
