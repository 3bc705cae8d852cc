"""ENAF's router parts: the PSNR estimator (ClassSR's classifier shape as a per-path PSNR
regressor) and the blank vector (Eq. 8)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from sr_tile.models.layers import ConvAct

BLANK_THRESHOLD = 10.0  # ENAF's epsilon: a patch is blank when its score is <= this
MAX_CONTEXT = 3  # context layers: at most one before each of the three 1x1 layers


class PSNREstimator(nn.Module):
    """ClassSR's classifier shape as a regressor: predicted PSNR (dB) of every path, (N, paths).

    conv 3->128 k4 s4, LeakyReLU(0.1), 3 x [1x1 128->128 + LeakyReLU(0.1)], 1x1 128->32,
    global average pool, Linear 32->num_paths. Per 32x32 patch (classsr): 786,432 + 3 x
    2,097,152 + 524,288 + 2*32*4 = 7,602,432 FLOPs on the whole patch; ENAF reads it by 8x8
    sub-tiles (``part=8``, ``EnafSR.predict_psnr``): the same convolutions, the linear layer
    16 times, 7,606,272.

    The linear layer's outputs are bicubic's PSNR ``p0`` and each path's GAIN over it, and
    ``forward`` returns ``[p0, p0 + g1, p0 + g2, ...]``. Fusion (Eq. 9) only compares paths
    of one patch, so it depends on the gains alone; a patch's absolute PSNR (20-60 dB, hard
    to predict) no longer drowns the 0-3 dB differences that decide its path. Training puts
    an L1 loss on ``p0`` and on the gains (of every sub-tile, for ENAF's ``part=8`` reading).
    ``fc.bias`` starts at ``[init_psnr, 0, ...]``.

    ``context`` (0 to ``MAX_CONTEXT``, not in ClassSR or ENAF): before each of the first ``context`` 1x1
    layers, a residual depthwise 3x3 convolution over the grid of 4x4 cells, so that a cell
    sees its neighbours (receptive field 4 + 8 * context LR px) for 2 * 9 * width FLOPs per
    cell each (~1.9 % of the estimator). Zero-initialised, they start as the context-free
    estimator. A weights file carries as many as it was trained with (``EnafSR.load_state_dict``).
    """

    def __init__(self, *, num_paths: int = 4, in_channels: int = 3, width: int = 128,
                 feat: int = 32, init_psnr: float = 30.0, context: int = 0) -> None:
        super().__init__()
        self.conv_first = nn.Conv2d(in_channels, width, 4, stride=4)
        self.act = nn.LeakyReLU(0.1, inplace=True)
        self.body = nn.Sequential(*(ConvAct(width, width, 1, act="lrelu") for _ in range(3)))
        self.context = nn.ModuleList()
        self.set_context(context)
        self.conv_last = nn.Conv2d(width, feat, 1)
        self.fc = nn.Linear(feat, num_paths)
        nn.init.zeros_(self.fc.bias)
        nn.init.constant_(self.fc.bias[:1], init_psnr)

    def forward(self, x: torch.Tensor, part: int | None = None) -> torch.Tensor:
        """(N, P) PSNR per path of (N, 3, h, w) patches in [0, 1].

        ``part`` (a multiple of 4 that divides h and w): read the patch as part x part
        sub-tiles and combine their PSNRs by their mean MSE (``combine_psnr``).
        """
        if part is None:
            return self.from_gains(self.fc(self.features(x).mean(dim=(2, 3))))
        return combine_psnr(self.psnr_map(x, part).flatten(2), dim=2)

    def set_context(self, n: int) -> None:
        """Keep the first ``n`` context layers, adding zero-initialised ones as needed."""
        if not 0 <= n <= MAX_CONTEXT:
            raise ValueError(f"context must be 0-{MAX_CONTEXT}, got {n}")
        width, param = self.conv_first.out_channels, self.conv_first.weight
        while len(self.context) > n:
            del self.context[-1]
        while len(self.context) < n:
            conv = nn.Conv2d(width, width, 3, padding=1, groups=width)
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)
            self.context.append(conv.to(device=param.device, dtype=param.dtype))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, feat, h // 4, w // 4): every 4x4 cell's features (each cell read alone when
        ``context`` is 0)."""
        h = self.act(self.conv_first(x))
        for i, layer in enumerate(self.body):
            if i < len(self.context):
                h = h + self.context[i](h)
            h = layer(h)
        return self.conv_last(h)

    def psnr_map(self, x: torch.Tensor, part: int) -> torch.Tensor:
        """(N, P, h // part, w // part): the PSNRs of each part x part sub-tile of ``x`` on a
        grid from its top-left corner. Every layer before the pool sees each 4x4 cell alone,
        so pooling the features over a sub-tile's cells equals running the estimator on that
        sub-tile alone: one map of a whole image serves every tile aligned to its grid.
        """
        cells = F.avg_pool2d(self.features(x), part // 4)  # (N, feat, h // part, w // part)
        u = self.from_gains(self.fc(cells.permute(0, 2, 3, 1)))  # (N, h', w', P)
        return u.permute(0, 3, 1, 2)

    @staticmethod
    def from_gains(y: torch.Tensor) -> torch.Tensor:
        """(..., P) ``[p0, g1, ...]`` -> PSNR per path ``[p0, p0 + g1, ...]``."""
        return torch.cat([y[..., :1], y[..., :1] + y[..., 1:]], dim=-1)

    @staticmethod
    def to_gains(u: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`from_gains`: PSNR per path -> ``[p0, g1, ...]``."""
        return torch.cat([u[..., :1], u[..., 1:] - u[..., :1]], dim=-1)


def combine_psnr(u: torch.Tensor, dim: int) -> torch.Tensor:
    """PSNR of the mean MSE of parts of equal size whose PSNRs (dB) lie along ``dim``."""
    k = 10.0 / math.log(10.0)
    return -k * (torch.logsumexp(-u / k, dim=dim) - math.log(u.shape[dim]))


def gray_u8(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, h, w) RGB in [0, 1] -> (N, h, w) gray as cv2/PIL make it from uint8: each channel
    ``round(255x)``, then ``0.299R + 0.587G + 0.114B`` rounded half up. Every value here is an
    integer below 2**24, so float32 is exact (the floor division by 1000 included)."""
    u8 = torch.round(x.detach().float().clamp(0.0, 1.0) * 255.0)
    return torch.floor((299.0 * u8[:, 0] + 587.0 * u8[:, 1] + 114.0 * u8[:, 2] + 500.0) / 1000.0)


def laplacian_abs(gray: torch.Tensor) -> torch.Tensor:
    """(N, h, w) -> (N, h-2, w-2): |valid 3x3 Laplacian [[0,1,0],[1,-4,1],[0,1,0]]|, exact on
    integer-valued input."""
    core = gray[:, 1:-1, 1:-1]
    return (gray[:, :-2, 1:-1] + gray[:, 2:, 1:-1] + gray[:, 1:-1, :-2] + gray[:, 1:-1, 2:]
            - 4.0 * core).abs()


def blank_score(x: torch.Tensor) -> torch.Tensor:
    """ENAF/ARM edge score of (N,3,h,w) RGB patches in [0,1] -> (N,) float32: the mean
    |Laplacian| of the patch's uint8 gray (``gray_u8``, ``laplacian_abs``), in exact arithmetic
    (~3x faster than a float64 conv)."""
    if x.dim() != 4 or x.shape[1] != 3 or x.shape[2] < 3 or x.shape[3] < 3:
        raise ValueError(f"expected (N,3,h,w) with h,w >= 3, got {tuple(x.shape)}")
    edges = laplacian_abs(gray_u8(x))
    return edges.sum(dim=(1, 2)) / edges[0].numel()


def is_blank(x: torch.Tensor, threshold: float = BLANK_THRESHOLD) -> torch.Tensor:
    """(N,) bool: ENAF's blank test, ``blank_score <= threshold``."""
    return blank_score(x) <= threshold
