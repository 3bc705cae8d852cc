"""Arbitrary-scale upsamplers that query a feature map at any output coordinate: LIIF, MetaSR
and LTE (facts in ``reference-implementations.md``), with one interface.

``forward(feat, lr, ys, xs, scale)``: ``feat`` (B, C, h, w) features of the LR tile ``lr``
(B, 3, h, w); ``ys`` (B, H') and ``xs`` (B, W') the tile-local LR coordinates (pixel centres at
integers) of the output rows and columns (``sr_tile.runner.grid_coords``: the tile's window of
the whole image's grid, so tiles agree); ``scale`` the upscaling factor (the cell). Returns
(B, 3, H', W').

Everything is written in LR-pixel units, which is what the reference code's normalised
coordinates reduce to once multiplied by the feature size (LIIF: ``rel_coord *= feat H``,
``rel_cell = cell * feat H``): a query's relative coordinate to a feature cell is
``2 * (u - c)`` and its cell ``2 / scale``, the same in a tile as in the whole image. Queries
are a grid (rows x columns), so neighbour indices, relative coordinates and ensemble areas are
computed per row and per column, and outputs are made in chunks of rows (bounded memory).

sr-tile's change: LIIF and MetaSR add MATLAB bicubic of the LR at the queries (their last layer
starts at zero: an untrained model is bicubic), as sr-tile's other families do; LTE keeps its
own bilinear skip. LIIF's first layer is linear in [unfolded feature, rel, cell], so its feature
part is applied once per LR cell instead of once per query (the same numbers, ~43 % fewer
multiply-adds at x4).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sr_tile.imresize import bicubic_grid
from sr_tile.models.layers.conv import zero_init_

UPSAMPLERS = ("liif", "metasr", "lte")
QUERY_CHUNK = 16384  # queries per pass (rows x columns), bounds the hidden activations


def _mlp(in_dim: int, hidden: Sequence[int], out_dim: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_dim, width), nn.ReLU(inplace=True)]
        in_dim = width
    layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


def _neighbours(u: torch.Tensor, length: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """LIIF's local ensemble along one axis: for coordinates ``u`` (B, n), the two cells whose
    centres bracket each (reference: shift by half a cell either way, take the nearest,
    clamped to the map) and each query's relative coordinate to it, ``2 * (u - c)``."""
    out = []
    for shift in (-0.5, 0.5):
        index = torch.round(u + shift + 1e-6).clamp(0, length - 1)  # the reference's eps
        out.append((index.long(), 2.0 * (u - index)))
    return out


def _chunks(rows: int, cols: int) -> list[slice]:
    step = max(1, QUERY_CHUNK // max(cols, 1))
    return [slice(r, min(r + step, rows)) for r in range(0, rows, step)]


def _ensemble(preds: list[torch.Tensor], rels: list[tuple[torch.Tensor, torch.Tensor]]
              ) -> torch.Tensor:
    """LIIF's area weights: each of the 4 neighbours (row lo/hi x column lo/hi, in that order)
    is weighted by the area of the rectangle between the query and the DIAGONALLY OPPOSITE
    neighbour. ``preds`` (B, 3, R, W'), ``rels`` the (rel_y (B, R), rel_x (B, W')) of each."""
    areas = [(ry[:, :, None] * rx[:, None, :]).abs() + 1e-9 for ry, rx in rels]
    total = sum(areas)
    opposite = [areas[3], areas[2], areas[1], areas[0]]
    return sum(p * (a / total)[:, None] for p, a in zip(preds, opposite))


class LIIF(nn.Module):
    """LIIF: 3x3 feature unfolding, 4-neighbour local ensemble, relative coordinate and cell
    as MLP inputs, hidden [256] * 4. Hidden layers get He init (the reference keeps PyTorch's
    default, which leaves ~29 % of the last hidden ReLUs dead at the start; a CPU run's rose
    to 98 % and collapsed, see ``dead_units``)."""

    def __init__(self, in_channels: int = 64, hidden: Sequence[int] = (256,) * 4) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.imnet = _mlp(in_channels * 9 + 4, hidden, 3)
        for layer in self.imnet[:-1]:
            if isinstance(layer, nn.Linear):  # He init: PyTorch's default left 29 % dead
                nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
                nn.init.zeros_(layer.bias)
        zero_init_(self.imnet[-1])

    def forward(self, feat: torch.Tensor, lr: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor,
                scale: float) -> torch.Tensor:
        b, c, h, w = feat.shape
        first = self.imnet[0]
        k = c * 9
        # the first layer's feature part, once per LR cell: (B, h, w, hidden)
        pre = F.conv2d(F.unfold(feat, 3, padding=1).view(b, k, h, w),
                       first.weight[:, :k, None, None], first.bias).permute(0, 2, 3, 1)
        w_pos = first.weight[:, k:]  # (hidden, 4): rel_y, rel_x, cell_y, cell_x
        cell = 2.0 / scale
        cell_term = (w_pos[:, 2] + w_pos[:, 3]) * cell
        rows, cols = _neighbours(ys, h), _neighbours(xs, w)
        out = torch.empty(b, 3, ys.shape[1], xs.shape[1], dtype=feat.dtype, device=feat.device)
        bi = torch.arange(b, device=feat.device)[:, None, None]
        for part in _chunks(ys.shape[1], xs.shape[1]):
            preds, rels = [], []
            for iy, ry in rows:
                for ix, rx in cols:
                    hid = pre[bi, iy[:, part, None], ix[:, None, :]]  # (B, R, W', hidden)
                    hid = (hid + ry[:, part, None, None] * w_pos[:, 0]
                           + rx[:, None, :, None] * w_pos[:, 1] + cell_term)
                    y = self.imnet[2:](torch.relu(hid))  # (B, R, W', 3)
                    preds.append(y.permute(0, 3, 1, 2))
                    rels.append((ry[:, part], rx))
            out[:, :, part] = _ensemble(preds, rels)
        return out + bicubic_grid(lr, ys, xs)

    @torch.no_grad()
    def dead_units(self, feat: torch.Tensor, scale: float) -> float:
        """A training diagnostic: the share of the MLP's last hidden ReLUs that are zero for
        every LR cell of ``feat`` (queried at the cell centres). Near 1, the MLP has collapsed
        to its bias: the output is bicubic plus a constant."""
        cells = F.unfold(feat, 3, padding=1).transpose(1, 2)
        place = feat.new_tensor([0.0, 0.0, 2.0 / scale, 2.0 / scale]).expand(*cells.shape[:2], 4)
        hidden = self.imnet[:-1](torch.cat([cells, place], dim=-1))
        return float((hidden.amax(dim=(0, 1)) <= 0).float().mean())

    def flops(self, cells: int, queries: int) -> int:
        """classsr FLOPs: the first layer's feature part per LR cell, the rest per query and
        neighbour."""
        first = self.imnet[0]
        rest = sum(2 * m.in_features * m.out_features for m in self.imnet[2:]
                   if isinstance(m, nn.Linear))
        return (cells * 2 * (first.in_features - 4) * first.out_features
                + queries * 4 * (rest + 2 * 4 * first.out_features))


class MetaSR(nn.Module):
    """Meta-SR's Meta-Upscale: an MLP maps (1/s, dy, dx) to a 3x3xCx3 filter applied to the
    nearest LR cell's features. Queries that share an offset share a filter: it is computed
    once per distinct (dy, dx) (16 at x4, 25 at x2.5) when there are few."""

    def __init__(self, in_channels: int = 64, hidden: int = 256) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.pos2weight = nn.Sequential(nn.Linear(3, hidden), nn.ReLU(inplace=True),
                                        nn.Linear(hidden, 9 * in_channels * 3))
        zero_init_(self.pos2weight[-1])
        self.last_filters = 0  # filters computed by the last call (for FLOPs)

    def forward(self, feat: torch.Tensor, lr: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor,
                scale: float) -> torch.Tensor:
        b, c, h, w = feat.shape
        unfolded = F.unfold(feat, 3, padding=1).view(b, c * 9, h, w)
        iy = torch.floor(ys + 0.5).clamp(0, h - 1).long()
        ix = torch.floor(xs + 0.5).clamp(0, w - 1).long()
        dy, dx = ys - iy, xs - ix
        # distinct offsets (to 1e-6) across the batch; each row / column gets its class
        uy, row_class = torch.unique(torch.round(dy * 1e6), return_inverse=True)
        ux, col_class = torch.unique(torch.round(dx * 1e6), return_inverse=True)
        inv = torch.tensor(1.0 / scale, dtype=feat.dtype, device=feat.device)
        grid = torch.stack(torch.meshgrid(uy / 1e6, ux / 1e6, indexing="ij"), dim=-1)
        pos = torch.cat([inv.expand(*grid.shape[:2], 1), grid.to(feat.dtype)], dim=-1)
        filters = self.pos2weight(pos).view(len(uy), len(ux), c * 9, 3)
        self.last_filters = len(uy) * len(ux)
        bi = torch.arange(b, device=feat.device)[:, None, None]
        out = torch.empty(b, 3, ys.shape[1], xs.shape[1], dtype=feat.dtype, device=feat.device)
        for part in _chunks(ys.shape[1], xs.shape[1]):
            f = unfolded.permute(0, 2, 3, 1)[bi, iy[:, part, None], ix[:, None, :]]  # B,R,W',9C
            wq = filters[row_class[:, part, None], col_class[:, None, :]]  # (B, R, W', 9C, 3)
            out[:, :, part] = torch.einsum("brwk,brwkt->btrw", f, wq)
        return out + bicubic_grid(lr, ys, xs)

    def flops(self, cells: int, queries: int) -> int:
        hidden = self.pos2weight[0].out_features
        per_filter = 2 * 3 * hidden + 2 * hidden * self.pos2weight[2].out_features
        return self.last_filters * per_filter + queries * 2 * 9 * self.in_channels * 3


class LTE(nn.Module):
    """LTE: amplitude and frequency 3x3 convs to 256, phase Linear(2, 128) on the cell, a
    cos/sin basis, an MLP [256] * 3, the local ensemble and a bilinear skip; the cell is
    clipped to the training range (``max_scale``) for larger scales."""

    def __init__(self, in_channels: int = 64, hidden_dim: int = 256,
                 mlp: Sequence[int] = (256,) * 3, max_scale: float = 4.0) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.max_scale = max_scale
        self.coef = nn.Conv2d(in_channels, hidden_dim, 3, padding=1)
        self.freq = nn.Conv2d(in_channels, hidden_dim, 3, padding=1)
        self.phase = nn.Linear(2, hidden_dim // 2, bias=False)
        self.imnet = _mlp(hidden_dim, mlp, 3)

    def forward(self, feat: torch.Tensor, lr: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor,
                scale: float) -> torch.Tensor:
        b, _, h, w = feat.shape
        coef = self.coef(feat).permute(0, 2, 3, 1)
        freq = self.freq(feat).permute(0, 2, 3, 1)
        cell = 2.0 / min(scale, self.max_scale)
        phase = self.phase(torch.full((2,), cell, dtype=feat.dtype, device=feat.device))
        rows, cols = _neighbours(ys, h), _neighbours(xs, w)
        bi = torch.arange(b, device=feat.device)[:, None, None]
        out = torch.empty(b, 3, ys.shape[1], xs.shape[1], dtype=feat.dtype, device=feat.device)
        for part in _chunks(ys.shape[1], xs.shape[1]):
            preds, rels = [], []
            for iy, ry in rows:
                for ix, rx in cols:
                    at = (bi, iy[:, part, None], ix[:, None, :])
                    f = freq[at].unflatten(-1, (-1, 2))  # (B, R, W', 128, (y, x))
                    arg = (f[..., 0] * ry[:, part, None, None] + f[..., 1] * rx[:, None, :, None]
                           + phase)
                    basis = torch.cat([torch.cos(math.pi * arg), torch.sin(math.pi * arg)], -1)
                    preds.append(self.imnet(coef[at] * basis).permute(0, 3, 1, 2))
                    rels.append((ry[:, part], rx))
            out[:, :, part] = _ensemble(preds, rels)
        return out + _bilinear(lr, ys, xs)

    def flops(self, cells: int, queries: int) -> int:
        convs = 2 * (2 * self.in_channels * 9 * self.coef.out_channels) * cells
        mlp = sum(2 * m.in_features * m.out_features for m in self.imnet
                  if isinstance(m, nn.Linear))
        return convs + queries * 4 * (mlp + 2 * self.coef.out_channels)


def _bilinear(x: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of ``x`` at rows ``ys`` and columns ``xs`` (LR pixel units), clamped at
    the borders (``grid_sample`` with border padding, align_corners False)."""
    h, w = x.shape[-2:]

    def weights(u: torch.Tensor, n: int) -> torch.Tensor:  # (B, n_out, n) interpolation rows
        u = u.clamp(0, n - 1)
        lo = torch.floor(u).clamp(max=n - 1)
        frac = u - lo
        hi = (lo + 1).clamp(max=n - 1)
        m = torch.zeros(*u.shape, n, dtype=x.dtype, device=x.device)
        m.scatter_add_(-1, lo.long()[..., None], (1 - frac)[..., None].to(x.dtype))
        m.scatter_add_(-1, hi.long()[..., None], frac[..., None].to(x.dtype))
        return m

    return weights(ys, h)[:, None] @ x @ weights(xs, w)[:, None].transpose(-1, -2)


def build_upsampler(kind: str, in_channels: int, max_scale: float = 4.0) -> nn.Module:
    if kind == "liif":
        return LIIF(in_channels)
    if kind == "metasr":
        return MetaSR(in_channels)
    if kind == "lte":
        return LTE(in_channels, max_scale=max_scale)
    raise ValueError(f"unknown upsampler {kind!r}; choose {', '.join(UPSAMPLERS)}")
