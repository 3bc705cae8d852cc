"""Tests of the MATLAB-compatible bicubic imresize.

Reference arrays marked "BasicSR" were produced with BasicSR 1.4.2 (PyPI sdist),
``basicsr/utils/matlab_functions.py::imresize(img, scale, antialiasing=...)``, a
float32 Python port of MATLAB's ``imresize(..., 'bicubic')``, loaded by file path
with torch 2.13 CPU, on the ``_pattern`` inputs below. Hence the 1e-5 tolerance
(float32); our float64 results agree with the port to < 5e-6 on every case the
port handles (it crashes when no mirroring is needed at one end, and on images
smaller than the antialiased kernel, which we mirror like MATLAB's modulo trick).
The hand-derived weights follow directly from the cubic kernel (a=-0.5).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sr_tile.imresize import bicubic_taps, cubic, imresize, imresize_np


def _pattern(h: int, w: int) -> np.ndarray:
    """Deterministic non-smooth test image in [0, 1] (no RNG: identical everywhere)."""
    i, j = np.mgrid[0:h, 0:w]
    return ((i * 37 + j * 101) % 23) / 22.0


# --- BasicSR 1.4.2 matlab_functions.imresize references --------------------------------------
BSR_8x10_HALF_AA = [
    [0.27730006, 0.49050003, 0.60780674, 0.64712244, 0.40678057],
    [0.5058531, 0.3108957, 0.47663394, 0.60619205, 0.6471225],
    [0.45888793, 0.5002809, 0.31098312, 0.47853994, 0.60411346],
    [0.37949648, 0.458888, 0.5023034, 0.30303535, 0.5159004],
]
BSR_8x10_HALF_NOAA = [
    [0.22460938, 0.62322444, 0.57972306, 0.61381394, 0.38760653],
    [0.49573863, 0.18785511, 0.63441056, 0.5909091, 0.6138139],
    [0.46573153, 0.4845525, 0.18785511, 0.63441056, 0.579723],
    [0.43465906, 0.46573153, 0.49573866, 0.19495738, 0.59357244],
]
BSR_8x10_X3_ROW0 = [
    -0.12906855, -0.07070711, 0.06977196, 0.26861197, 0.4545455, 0.6425365, 0.81762064,
    0.8636364, 0.6515153, 0.31032568, 0.11111109, 0.19584735, 0.42255905, 0.6363636,
    0.8243547, 0.99943906, 1.0454546, 0.8333332, 0.4921434, 0.2929293, 0.42068878,
    0.69042313, 0.8181818, 0.6146655, 0.2691737, 0.06565653, 0.16554408, 0.4074071,
    0.5909092, 0.64927065,
]
BSR_8x10_X3_ROW13 = [
    0.40909088, 0.45454547, 0.5993266, 0.78956246, 0.8636364, 0.69023585, 0.4006736,
    0.22727273, 0.32491562, 0.5387202, 0.6363636, 0.46296278, 0.1734004, 0.0, 0.05892255,
    0.23400684, 0.4090909, 0.58417517, 0.75925946, 0.8181818, 0.644781, 0.3552186,
    0.18181819, 0.2407406, 0.41582456, 0.59090906, 0.74242425, 0.893939, 1.0, 1.0454546,
]
BSR_16x20_QUARTER_AA = [
    [0.3997603, 0.56794435, 0.56171215, 0.5156971, 0.46562275],
    [0.45367056, 0.4161167, 0.5611417, 0.5633919, 0.5156971],
    [0.4931636, 0.45120886, 0.41656333, 0.56149596, 0.56080854],
    [0.53075266, 0.4931636, 0.45150518, 0.4134006, 0.56741023],
]
BSR_18x21_THIRD_AA = [
    [0.35868284, 0.5414363, 0.59604967, 0.54666007, 0.5001385, 0.5144379, 0.44128528],
    [0.4724682, 0.3803536, 0.5393371, 0.594477, 0.54540604, 0.50664395, 0.5144379],
    [0.4611963, 0.46213853, 0.38067228, 0.5397044, 0.59484416, 0.54540604, 0.5001385],
    [0.49815714, 0.46340632, 0.46177137, 0.38067228, 0.5397043, 0.594477, 0.54666],
    [0.5477546, 0.49866286, 0.46340632, 0.46213853, 0.3800834, 0.54018235, 0.5967355],
    [0.50872934, 0.54775465, 0.49815714, 0.4611963, 0.4701265, 0.37479737, 0.5234513],
]


@pytest.mark.parametrize(
    ("shape", "scale", "aa", "expected"),
    [
        ((8, 10), 0.5, True, BSR_8x10_HALF_AA),
        ((8, 10), 0.5, False, BSR_8x10_HALF_NOAA),
        ((16, 20), 0.25, True, BSR_16x20_QUARTER_AA),
        ((18, 21), 1 / 3, True, BSR_18x21_THIRD_AA),
    ],
)
def test_matches_basicsr_port_downscale(shape, scale, aa, expected):
    out = imresize_np(_pattern(*shape), scale, antialias=aa)
    np.testing.assert_allclose(out, np.array(expected), atol=1e-5, rtol=0)


def test_matches_basicsr_port_upscale_x3():
    out = imresize(torch.from_numpy(_pattern(8, 10)), 3)
    assert out.shape == (24, 30)
    np.testing.assert_allclose(out[0].numpy(), BSR_8x10_X3_ROW0, atol=1e-5, rtol=0)
    np.testing.assert_allclose(out[13].numpy(), BSR_8x10_X3_ROW13, atol=1e-5, rtol=0)


# --- kernel and taps ---------------------------------------------------------------------------
def test_cubic_kernel_values():
    np.testing.assert_allclose(cubic(np.array([0.0, 0.5, 1.0, 1.5, 2.0, 2.5])),
                               [1.0, 0.5625, 0.0, -0.0625, 0.0, 0.0])


@pytest.mark.parametrize(
    ("in_len", "out_len", "scale", "aa"),
    [(16, 64, 4.0, True), (20, 10, 0.5, True), (20, 10, 0.5, False), (37, 10, 0.27, True),
     (5, 2, 0.25, True), (3, 1, 0.25, True), (7, 11, 1.5, True), (1, 4, 4.0, True)],
)
def test_taps_weights_sum_to_one_and_indices_in_range(in_len, out_len, scale, aa):
    idx, w = bicubic_taps(in_len, out_len, scale, aa)
    assert idx.shape == w.shape and idx.shape[0] == out_len
    assert idx.dtype == np.int64 and w.dtype == np.float64
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-12)
    assert idx.min() >= 0 and idx.max() < in_len
    assert np.any(w != 0, axis=0).all()  # all-zero columns were dropped


def test_taps_scale4_interior_hand_derived():
    # Output x=22 (1-based): u = 22/4 + 0.5*(1-1/4) = 5.875; taps 1-based 4..7 at
    # distances 1.875, 0.875, -0.125, -1.125 -> cubic = -7/1024, 93/1024, 987/1024, -49/1024.
    idx, w = bicubic_taps(16, 64, 4.0, True)
    assert idx.shape[1] == 4  # the two always-zero columns of the 6 candidates are dropped
    np.testing.assert_array_equal(idx[21], [3, 4, 5, 6])
    np.testing.assert_allclose(w[21], np.array([-7, 93, 987, -49]) / 1024, atol=1e-15)


def test_taps_half_antialiased_hand_derived():
    # x=5: u = 2*5 - 0.5 = 9.5; kernel 0.5*cubic(0.5 d), width 8; non-zero taps 1-based 6..13
    # at d = 3.5..-3.5 -> 0.5*cubic(1.75, 1.25, 0.75, 0.25) = -3/256, -9/256, 29/256, 111/256.
    idx, w = bicubic_taps(20, 10, 0.5, True)
    assert idx.shape[1] == 8
    np.testing.assert_array_equal(idx[4], np.arange(5, 13))
    half = np.array([-3, -9, 29, 111]) / 256
    np.testing.assert_allclose(w[4], np.concatenate([half, half[::-1]]), atol=1e-15)


def test_taps_half_no_antialias_hand_derived():
    # Without antialiasing the plain kernel (width 4) samples at d = 1.5, 0.5, -0.5, -1.5.
    idx, w = bicubic_taps(20, 10, 0.5, False)
    np.testing.assert_array_equal(idx[4], [7, 8, 9, 10])
    np.testing.assert_allclose(w[4], [-0.0625, 0.5625, 0.5625, -0.0625], atol=1e-15)


def test_taps_mirror_symmetrically_at_borders():
    # x=1 at scale 4: u = 0.625, taps 1-based -1..2 -> mirrored [1:n, n:-1:1] -> 2, 1, 1, 2.
    idx, _ = bicubic_taps(16, 64, 4.0, True)
    np.testing.assert_array_equal(idx[0], [1, 0, 0, 1])
    np.testing.assert_array_equal(idx[-1], [14, 15, 15, 14])


def test_taps_are_cached_and_read_only():
    a = bicubic_taps(30, 120, 4.0, True)
    assert bicubic_taps(30, 120, 4.0, True) is a
    with pytest.raises(ValueError):
        a[1][0, 0] = 0.0


# --- imresize behaviour ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("hw", "scale", "out_hw"),
    [((10, 11), 1 / 3, (4, 4)), ((17, 16), 0.25, (5, 4)), ((7, 9), 1.5, (11, 14)),
     ((400, 300), 0.25, (100, 75)), ((3, 5), 4, (12, 20)), ((30, 30), 0.1, (3, 3))],
)
def test_output_size_is_ceil(hw, scale, out_hw):
    assert imresize(torch.zeros(hw, dtype=torch.float64), scale).shape == out_hw


def test_out_size_and_nonuniform_scales():
    x = torch.from_numpy(_pattern(12, 16))
    np.testing.assert_allclose(imresize(x, out_size=(24, 32)), imresize(x, 2), atol=1e-12)
    assert imresize(x, out_size=(5, 40)).shape == (5, 40)


@pytest.mark.parametrize("scale", [4, 3, 2, 1.5, 0.5, 1 / 3, 0.25])
@pytest.mark.parametrize("aa", [True, False])
def test_constant_image_stays_constant(scale, aa):
    for hw in [(13, 7), (3, 2)]:
        out = imresize(torch.full((2, *hw), 0.7, dtype=torch.float64), scale, antialias=aa)
        torch.testing.assert_close(out, torch.full_like(out, 0.7), atol=1e-12, rtol=0)


def test_shapes_dtype_device_preserved():
    x = torch.rand(2, 3, 9, 11, dtype=torch.float32, generator=torch.Generator().manual_seed(0))
    out = imresize(x, 2)
    assert out.shape == (2, 3, 18, 22) and out.dtype == torch.float32 and out.device == x.device
    torch.testing.assert_close(imresize(x[0], 2), out[0])
    torch.testing.assert_close(imresize(x[0, 1], 2), out[0, 1])
    y = imresize(x, 1)
    torch.testing.assert_close(y, x)
    assert y is not x


def test_antialias_flag():
    x = torch.from_numpy(_pattern(16, 20))
    assert not torch.allclose(imresize(x, 0.5), imresize(x, 0.5, antialias=False))
    torch.testing.assert_close(imresize(x, 3), imresize(x, 3, antialias=False), atol=0, rtol=0)


@pytest.mark.parametrize("s", [2, 3, 4])
def test_shift_invariance_integer_upscale(s):
    """Resize(crop) == crop(resize) away from crop borders; at image borders the mirror matches."""
    g = torch.Generator().manual_seed(1)
    x = torch.rand(1, 3, 30, 34, dtype=torch.float64, generator=g)
    full = imresize(x, s)
    m = 2 * s  # taps reach 2 input px = 2*s output px
    a, b, c, d = 5, 21, 7, 30
    tile = imresize(x[..., a:b, c:d], s)
    exact = {"atol": 1e-12, "rtol": 0}
    ref = full[..., a * s + m : b * s - m, c * s + m : d * s - m]
    torch.testing.assert_close(tile[..., m:-m, m:-m], ref, **exact)
    # Crops touching the top-left and bottom-right borders: exact there too.
    tl = imresize(x[..., :b, :d], s)
    torch.testing.assert_close(tl[..., :-m, :-m], full[..., : b * s - m, : d * s - m], **exact)
    br = imresize(x[..., a:, c:], s)
    torch.testing.assert_close(br[..., m:, m:], full[..., a * s + m :, c * s + m :], **exact)


def test_shift_invariance_downscale_by_4():
    g = torch.Generator().manual_seed(2)
    x = torch.rand(2, 40, 48, dtype=torch.float64, generator=g)
    full = imresize(x, 0.25)
    tile = imresize(x[:, 8:32, 12:40], 0.25)  # offsets multiple of 4 -> output offsets 2, 3
    m = 3  # the antialiased kernel spans 8 input px = 2 output px each side
    ref = full[:, 2 + m : 8 - m, 3 + m : 10 - m]
    torch.testing.assert_close(tile[:, m:-m, m:-m], ref, atol=1e-12, rtol=0)


def test_uint8_rounds_half_up_and_clips():
    # Half-scale without antialiasing averages the 2x2 block with weights summing to 0.5/0.5.
    img = np.array([[10, 11], [10, 11]], dtype=np.uint8)
    out = imresize_np(img, 0.5, antialias=False)
    assert out.dtype == np.uint8 and out.tolist() == [[11]]  # 10.5 -> 11 (np.round would give 10)
    # A hard edge overshoots below 0 and above 255 when upscaled: clipped, not wrapped.
    edge = np.zeros((6, 6, 3), dtype=np.uint8)
    edge[:, 3:] = 255
    f = imresize_np(edge.astype(np.float64), 4)
    u = imresize_np(edge, 4)
    assert f.min() < 0 and f.max() > 255 and u.dtype == np.uint8
    np.testing.assert_array_equal(u, np.floor(np.clip(f, 0, 255) + 0.5).astype(np.uint8))


def test_uint16_and_float_numpy():
    img = (_pattern(12, 10) * 255).round().astype(np.uint8)
    u16 = imresize_np(img.astype(np.uint16) * 257, 0.5)
    assert u16.dtype == np.uint16
    f = imresize_np(img.astype(np.float32), 0.5)
    assert f.dtype == np.float64
    np.testing.assert_array_equal(u16, np.floor(np.clip(f * 257, 0, 65535) + 0.5).astype(np.uint16))
    hwc = imresize_np(np.stack([img, 255 - img], axis=-1), 2)
    assert hwc.shape == (24, 20, 2)
    np.testing.assert_array_equal(hwc[..., 0], imresize_np(img, 2))


def test_rejects_bad_input():
    with pytest.raises(TypeError):
        imresize(torch.zeros(4, 4, dtype=torch.uint8), 2)
    with pytest.raises(ValueError):
        imresize(torch.zeros(1, 1, 1, 4, 4), 2)
    with pytest.raises(ValueError):
        imresize(torch.zeros(4, 4), 0)
    with pytest.raises(ValueError):
        imresize(torch.zeros(4, 4))
    with pytest.raises(ValueError):
        imresize_np(np.zeros((2, 2, 2, 2)), 2)


def _gather_upscale(x: torch.Tensor, s: int) -> torch.Tensor:
    """The general path (gathered shifted copies), applied directly."""
    from sr_tile.imresize import _resize_dim

    out = x
    for dim in (-2, -1):
        indices, weights = bicubic_taps(x.shape[dim], x.shape[dim] * s, float(s), False)
        out = _resize_dim(out, dim, indices, weights)
    return out


@pytest.mark.parametrize("s", [2, 3, 4])
@pytest.mark.parametrize("shape", [(2, 3, 32, 32), (1, 1, 5, 41), (3, 9, 4), (7, 6),
                                   (1, 2, 70, 81)])  # > _MATRIX_MAX: the polyphase conv
def test_integer_upscale_fast_paths_equal_general_path(s, shape):
    from sr_tile.imresize import _polyphase_ok

    x = torch.from_numpy(_pattern(int(np.prod(shape[:-1])), shape[-1])).reshape(shape)
    assert _polyphase_ok(tuple(x.shape[-2:]), (float(s), float(s)),
                         (x.shape[-2] * s, x.shape[-1] * s))
    fast = imresize(x, s, antialias=False)
    assert fast.shape == (*shape[:-2], shape[-2] * s, shape[-1] * s)
    torch.testing.assert_close(fast, _gather_upscale(x, s), rtol=0, atol=1e-12)
    # float32 too (the models' skip): same values to float rounding
    torch.testing.assert_close(imresize(x.float(), s), _gather_upscale(x, s).float(),
                               rtol=0, atol=2e-6)


def test_integer_upscale_of_tiny_images_falls_back_and_still_mirrors():
    x = torch.from_numpy(_pattern(1, 2))  # narrower than the fast path's 2 px padding
    from sr_tile.imresize import _polyphase_ok

    assert not _polyphase_ok((1, 2), (4.0, 4.0), (4, 8))
    out = imresize(x, 4)
    assert out.shape == (4, 8)
    torch.testing.assert_close(out[0], out[3])  # a single row mirrors onto itself
