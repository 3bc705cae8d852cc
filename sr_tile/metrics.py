"""PSNR and SSIM exactly as the SR literature reports them.

Published x2/x3/x4 numbers (and BasicSR's ``calculate_psnr`` /
``calculate_ssim`` with ``test_y_channel=True``) are computed on the BT.601
studio-range luma (Y in [16, 235]) after cropping ``scale`` pixels from every
border, with MATLAB's SSIM: an 11x11 Gaussian window (sigma 1.5), constants
from a 255 peak, and only the 'valid' part of the filtered maps. Any deviation
(RGB PSNR, full-range Y, skimage's 7x7 window, 'same' padding) moves results by
0.1-1 dB / 1e-3 SSIM and makes them incomparable, hence this dedicated module.

Everything is float64 numpy: no OpenCV/SciPy dependency, and the separable
Gaussian filter is exact to rounding.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["psnr", "psnr_y", "rgb_to_y", "squared_error_y", "ssim", "ssim_y", "to_float255"]

# BT.601 studio-range luma for RGB in [0, 255] (MATLAB rgb2ycbcr).
_Y_COEFFS = np.array([65.481, 128.553, 24.966], dtype=np.float64) / 255.0
_SSIM_RADIUS = 5  # 11x11 window
_SSIM_SIGMA = 1.5
_C1 = (0.01 * 255.0) ** 2
_C2 = (0.03 * 255.0) ** 2


def to_float255(img: np.ndarray) -> np.ndarray:
    """Any supported image as float64 on a 0-255 scale.

    uint8 is taken as is, uint16 is divided by 257 (65535 -> 255) so 16-bit
    outputs are scored on the same scale as 8-bit ground truth; floats are
    assumed to already be on 0-255 (no clipping: an SR output that overshoots is
    scored as it is, like BasicSR does).
    """
    arr = np.asarray(img)
    if arr.dtype == np.uint8:
        return arr.astype(np.float64)
    if arr.dtype == np.uint16:
        return arr.astype(np.float64) / 257.0
    if arr.dtype.kind == "f":
        return arr.astype(np.float64)
    raise TypeError(f"unsupported image dtype {arr.dtype} (use uint8, uint16 or float on 0-255)")


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """HxWx3 RGB on 0-255 -> BT.601 luma ``16 + (65.481 R + 128.553 G + 24.966 B) / 255``.

    Returns float64 in [16, 235], not rounded (BasicSR's ``to_y_channel`` does
    not round either).
    """
    arr = to_float255(img)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"rgb_to_y expects an HxWx3 image, got shape {arr.shape}")
    return arr @ _Y_COEFFS + 16.0


def _prepare(
    sr: np.ndarray, hr: np.ndarray, crop_border: int, y_channel: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Validate, crop and convert a pair to float64 HxWxC (C=1 for Y or gray)."""
    sr_a, hr_a = np.asarray(sr), np.asarray(hr)
    if sr_a.shape != hr_a.shape:
        raise ValueError(f"image shapes differ: sr {sr_a.shape} vs hr {hr_a.shape}")
    if sr_a.ndim == 3 and sr_a.shape[2] == 1:
        sr_a, hr_a = sr_a[..., 0], hr_a[..., 0]
    if sr_a.ndim not in (2, 3) or (sr_a.ndim == 3 and sr_a.shape[2] != 3):
        raise ValueError(f"expected HxW or HxWx3 images, got shape {np.asarray(sr).shape}")
    if int(crop_border) != crop_border or crop_border < 0:
        raise ValueError(f"crop_border must be a non-negative integer, got {crop_border}")
    cb = int(crop_border)
    h, w = sr_a.shape[:2]
    if h - 2 * cb < 1 or w - 2 * cb < 1:
        raise ValueError(f"crop_border={cb} leaves nothing of a {h}x{w} image")
    # Crop before the colour conversion: cheaper, and identical per pixel.
    sr_a = sr_a[cb : h - cb, cb : w - cb]
    hr_a = hr_a[cb : h - cb, cb : w - cb]
    if sr_a.ndim == 2:
        return to_float255(sr_a)[..., None], to_float255(hr_a)[..., None]
    if y_channel:
        return rgb_to_y(sr_a)[..., None], rgb_to_y(hr_a)[..., None]
    return to_float255(sr_a), to_float255(hr_a)


def psnr(sr: np.ndarray, hr: np.ndarray, crop_border: int, *, y_channel: bool = True) -> float:
    """PSNR in dB against a 255 peak; ``inf`` when the (cropped) images are equal.

    With ``y_channel`` the luma is compared (gray images are compared as they
    are); without it the MSE is taken over all channels jointly.
    """
    a, b = _prepare(sr, hr, crop_border, y_channel)
    mse = float(np.mean((a - b) ** 2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(255.0 * 255.0 / mse)


def _gaussian_window() -> np.ndarray:
    """1-D normalised Gaussian, 11 taps, sigma 1.5.

    MATLAB's ``fspecial('gaussian', 11, 1.5)`` (and OpenCV's 2-D window in
    BasicSR) is its outer product, so filtering rows then columns is the same.
    """
    t = np.arange(-_SSIM_RADIUS, _SSIM_RADIUS + 1, dtype=np.float64)
    g = np.exp(-(t * t) / (2.0 * _SSIM_SIGMA**2))
    return g / g.sum()


def _filter_valid(img: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable 'valid' filtering of a 2-D float64 array (output shrinks by 10 px per axis).

    Equals OpenCV ``filter2D`` followed by ``[5:-5, 5:-5]`` (the border mode
    never reaches the kept area) and MATLAB ``filter2(w, img, 'valid')``.
    """
    k = g.size
    h, w = img.shape
    rows = np.zeros((h - k + 1, w), dtype=np.float64)
    for i in range(k):
        rows += g[i] * img[i : i + h - k + 1, :]
    out = np.zeros((h - k + 1, w - k + 1), dtype=np.float64)
    for j in range(k):
        out += g[j] * rows[:, j : j + w - k + 1]
    return out


def _ssim_channel(a: np.ndarray, b: np.ndarray) -> float:
    """Mean of the MATLAB/Wang et al. SSIM map of one 2-D channel."""
    g = _gaussian_window()
    mu_a = _filter_valid(a, g)
    mu_b = _filter_valid(b, g)
    mu_aa, mu_bb, mu_ab = mu_a * mu_a, mu_b * mu_b, mu_a * mu_b
    var_a = _filter_valid(a * a, g) - mu_aa
    var_b = _filter_valid(b * b, g) - mu_bb
    cov = _filter_valid(a * b, g) - mu_ab
    num = (2.0 * mu_ab + _C1) * (2.0 * cov + _C2)
    den = (mu_aa + mu_bb + _C1) * (var_a + var_b + _C2)
    return float(np.mean(num / den))


def ssim(sr: np.ndarray, hr: np.ndarray, crop_border: int, *, y_channel: bool = True) -> float:
    """SSIM, MATLAB style; without ``y_channel`` the mean of per-channel SSIMs."""
    a, b = _prepare(sr, hr, crop_border, y_channel)
    win = 2 * _SSIM_RADIUS + 1
    if a.shape[0] < win or a.shape[1] < win:
        raise ValueError(
            f"SSIM needs at least {win}x{win} px after cropping, got {a.shape[0]}x{a.shape[1]}"
        )
    return float(np.mean([_ssim_channel(a[..., c], b[..., c]) for c in range(a.shape[2])]))


def squared_error_y(sr: np.ndarray, hr: np.ndarray, crop_border: int) -> np.ndarray:
    """(H - 2b, W - 2b) float64: the squared luma error of every pixel ``psnr_y`` averages."""
    a, b = _prepare(sr, hr, crop_border, True)
    return ((a - b) ** 2)[..., 0]


def psnr_y(sr: np.ndarray, hr: np.ndarray, crop_border: int) -> float:
    """PSNR on BT.601 luma: the number SR papers report."""
    return psnr(sr, hr, crop_border, y_channel=True)


def ssim_y(sr: np.ndarray, hr: np.ndarray, crop_border: int) -> float:
    """SSIM on BT.601 luma: the number SR papers report."""
    return ssim(sr, hr, crop_border, y_channel=True)
