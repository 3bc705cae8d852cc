"""ENAF's texture router: which patches need the network, from their texture, in image dB.

Why (measured on val, issue 15): the image's PSNR is set by its total MSE, and the paper's
fusion (Eq. 9) compares paths by each patch's own PSNR. A 1 dB loss on a flat patch (MSE
~1) and on a textured one (MSE ~300) count alike there. And the PSNR estimator ranks patches
poorly: the correlation of its predicted gain of the full network over bicubic with the
true gain was -0.04 to 0.71 per val image, and with the true per-patch gains in its place
(its image-level gain kept) preset M's loss held on every val image at ~30 % of the FLOPs
instead of ~65 %. The squared Laplacian of the LR patch alone ranked the patches far better
(correlation with the true MSE gain 0.91-0.97 in log space).

So a patch's cost of taking path ``p`` is its predicted MSE gain of the full network over
``p``, as a share of the image's predicted MSE, in image dB: a fitted regression gives the
MSE gain of every path from two texture statistics of the patch, and the image's MSE on the
full network is bicubic's total predicted gain over ``10^(g/10) - 1``, where g is the full
network's gain over the whole image as the PSNR estimator predicts it (the ratio of its
mean MSEs: per patch the estimator is poor, over an image it is what it was trained for).
``fuse(losses, costs, eta)`` then picks ``argmin loss_p + eta * cost_p``: eta is image dB
per unit of mean cost. The regression is fitted by ``sr-tile train enaf --phase calibrate``
on the training images (every path's per-patch MSE against HR), and travels in the weights'
metadata (``router``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from sr_tile.errors import ConfigError
from sr_tile.models.enaf.estimator import gray_u8, laplacian_abs
from sr_tile.tiler import to_float

KIND = "texture"
FEATURES = ("1", "L", "G", "L^2")  # L = log1p(mean Laplacian^2), G = log1p(mean gradient^2)
DB = 10.0 / math.log(10.0)
#: what ``patch_statistics`` costs per LR pixel: gray (5), Laplacian and its square (7),
#: two differences, their squares and sum (5), the two patch sums (2)
FLOPS_PER_PIXEL = 19
MIN_GAIN_DB = 0.01  # the image gain the estimator may predict at least (a floor, not a cap)
#: the offset of the regression's log (per-pixel MSE, 8-bit Y units): most patches gain
#: 0.001-10. An offset of 1 (log1p) fitted the small gains as if linear, and a held-out photo
#: (Blinds) lost 0.15 dB at preset M; at 1e-4 it lost 0.022 dB
GAIN_EPS = 1e-4


def patch_statistics(color: np.ndarray, rows: Sequence[tuple[int, int]],
                     cols: Sequence[tuple[int, int]], band: int = 256) -> torch.Tensor:
    """(len(rows) * len(cols), 2) float64: the mean squared 3x3 Laplacian and the mean squared
    gradient (forward differences) of the uint8 gray image (``gray_u8``, the blank test's) on
    every patch, row-major; ``rows``/``cols`` the patches' [start, stop) spans, which tile
    the image. The Laplacian is zero on the image's outer ring and the last row's and
    column's differences are zero, so a patch reads the same in any band or tile. Read in
    bands of ``band`` rows (bounded memory)."""
    height, width = color.shape[:2]
    row_id = np.repeat(np.arange(len(rows)), [b - a for a, b in rows])
    col_id = np.repeat(np.arange(len(cols)), [b - a for a, b in cols])
    sums = np.zeros((2, len(rows) * len(cols)))
    for top in range(0, height, band):
        stop = min(top + band, height)
        lo, hi = max(top - 1, 0), min(stop + 1, height)  # one row of context each side
        gray = gray_u8(to_float(color[lo:hi]).expand(3, -1, -1)[None]).double()[0]
        lap = torch.zeros_like(gray)
        if gray.shape[0] >= 3 and width >= 3:
            lap[1:-1, 1:-1] = laplacian_abs(gray[None])[0] ** 2
        if lo == 0:
            lap[0] = 0.0  # the image's first row has no row above it
        if hi == height:
            lap[-1] = 0.0
        grad = torch.zeros_like(gray)
        grad[:-1] += (gray[1:] - gray[:-1]) ** 2
        grad[:, :-1] += (gray[:, 1:] - gray[:, :-1]) ** 2
        ids = (row_id[top:stop, None] * len(cols) + col_id[None, :]).ravel()
        for k, field in enumerate((lap, grad)):
            sums[k] += np.bincount(ids, weights=field[top - lo:stop - lo].numpy().ravel(),
                                   minlength=sums.shape[1])
    area = np.outer([b - a for a, b in rows], [b - a for a, b in cols]).ravel()
    return torch.from_numpy(sums / area).T.contiguous()


def checked(router: Any, num_paths: int) -> dict[str, Any]:
    """``router`` as read from a weights file, if it is a texture router for ``num_paths``
    paths; else ConfigError (a bad model file is bad input)."""
    try:
        coef = router["coef"]
        ok = (router.get("kind") == KIND and len(coef) == num_paths - 1
              and all(len(row) == len(FEATURES) and all(math.isfinite(v) for v in row)
                      for row in coef))
    except (TypeError, KeyError, AttributeError):
        ok = False
    if not ok:
        raise ConfigError(f"the weights' router is not a {KIND} router for {num_paths} paths "
                          f"({len(FEATURES)} coefficients per path below the full network)")
    return router


def design(stats: torch.Tensor) -> torch.Tensor:
    """(n, 2) statistics -> (n, len(FEATURES)) the regression's inputs."""
    lap, grad = torch.log1p(stats[:, 0]), torch.log1p(stats[:, 1])
    return torch.stack([torch.ones_like(lap), lap, grad, lap * lap], dim=1)


def fit(stats: torch.Tensor, gains: torch.Tensor) -> list[list[float]]:
    """Least squares of ``log(max(gain, 0) + GAIN_EPS)`` on ``design(stats)``, one row of
    coefficients per path below the full network. ``gains`` (n, P - 1): each patch's MSE
    (per pixel, 8-bit Y units) of path p less the full network's."""
    x = design(stats)
    y = torch.log(gains.double().clamp(min=0.0) + GAIN_EPS)
    return torch.linalg.lstsq(x, y).solution.T.tolist()


def predicted_gains(coef: Sequence[Sequence[float]], stats: torch.Tensor) -> torch.Tensor:
    """(n, P - 1) each patch's predicted MSE gain of the full network over every other path."""
    log_gain = design(stats) @ torch.tensor(coef, dtype=torch.float64).T
    return (torch.exp(log_gain) - GAIN_EPS).clamp(min=0.0)


def image_gain_db(u: torch.Tensor) -> float:
    """The full network's gain over bicubic on the whole image (dB), from the PSNR estimator's
    per-patch predictions ``u`` (n, P): the ratio of their mean MSEs, at least
    ``MIN_GAIN_DB``."""
    mse = torch.pow(10.0, -u.double() / 10.0)
    return max(DB * math.log(float(mse[:, 0].mean() / mse[:, -1].mean())), MIN_GAIN_DB)


def losses(coef: Sequence[Sequence[float]], stats: torch.Tensor, gain_db: float
           ) -> torch.Tensor:
    """(n, P): the image dB each patch gives up on each path (0 on the full network), times
    the number of patches, so that ``eta`` weighs it against a patch's cost (a share of the
    full network) as image dB against mean cost."""
    gains = predicted_gains(coef, stats)
    bicubic = float(gains[:, 0].sum())
    if bicubic <= 0.0:  # nothing to gain anywhere, by the regression: every path is free
        return torch.zeros(len(gains), len(coef) + 1, dtype=torch.float64)
    mse_full = bicubic / math.expm1(gain_db / DB)  # the image's MSE on the full network
    share = DB * gains * len(gains) / mse_full
    return torch.cat([share, share.new_zeros(len(gains), 1)], dim=1)
