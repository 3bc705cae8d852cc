"""IET's individualized attention (IEA): every token attends to its own candidates, listed in
an index matrix I (N x k, -1 = none), built by DLSG, pruned by top-k and expanded by two hops.

The authors' sparse products are a CUDA kernel without a CPU path. Here they are batched
gathers in PyTorch, on any device, with autograd:

* ``qmk``: out[n, j] = q[n] . K[I[n, j]]  (-inf where I is -1);
* ``amv``: out[n] = sum_j A[n, j] V[I[n, j]]  (entries where I is -1 contribute nothing).

I is shared by the heads; each head's rows are gathered into their own block, so that the
products are batched matrix products without copies. Tokens are processed in chunks so that the gathered rows (tokens x k x channels) stay under
``GATHER_BYTES``: the peak memory of a layer is that plus its N x k x heads attention map.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

GATHER_BYTES = 64 << 20  # bound of one chunk's gathered candidate rows


def _chunk(n: int, k: int, channels: int, itemsize: int) -> int:
    return max(1, min(n, GATHER_BYTES // max(1, k * channels * itemsize)))


def _gathered(values: torch.Tensor, index: torch.Tensor):
    """Chunks of tokens and their candidates' rows, per head: yields (token slice,
    (B, H, n, k, d)), laid out so that the products are plain batched matrix products. With
    the heads inside each row, einsum copied every chunk to permute it: a 64 px tile's
    first-layer gathers (889 candidates, no gradients) took 2.01 s (qmk) and 1.64 s (amv),
    1.06 s and 0.75 s this way."""
    b, n, h, d = values.shape
    flat = values.permute(0, 2, 1, 3).reshape(b * h * n, d)
    base = (torch.arange(b * h, device=values.device) * n).view(b, h, 1, 1)
    step = _chunk(n, index.shape[-1], h * d, values.element_size())
    for s in range(0, n, step):
        part = slice(s, s + step)
        ids = index[:, None, part].clamp(min=0) + base  # (B, H, n, k)
        yield part, flat.index_select(0, ids.reshape(-1)).view(*ids.shape, d)


def qmk(q: torch.Tensor, k: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(B, N, H, d) queries, (B, N, H, d) keys, (B, N, k) candidates -> (B, H, N, k) scores;
    -inf where the index is -1."""
    queries = q.transpose(1, 2)[..., None]  # (B, H, N, d, 1)
    scores = torch.cat([(rows @ queries[:, :, part])[..., 0]
                        for part, rows in _gathered(k, index)], dim=2)
    return scores.masked_fill(~(index >= 0)[:, None], float("-inf"))


def amv(attn: torch.Tensor, v: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(B, H, N, k) weights, (B, N, H, d) values, (B, N, k) candidates -> (B, N, H, d)."""
    weights = attn.masked_fill(~(index >= 0)[:, None], 0.0)[..., None, :]  # (B, H, N, 1, k)
    out = torch.cat([(weights[:, :, part] @ rows)[..., 0, :]
                     for part, rows in _gathered(v, index)], dim=2)  # (B, H, N, d)
    return out.transpose(1, 2)


def dlsg_offsets(dense: int = 8, sparse: int = 12, dilation: int = 3
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """DLSG's candidate offsets (k, 2) as (dy, dx): the dense (2*dense+1)^2 window, then one
    token per ``dilation`` x ``dilation`` patch of a (2*sparse+1)^2 grid of patches around
    the token (the patch centres), without the ones the dense window already has. The public
    code's default (8, 12, 3) is a 17x17 window plus a 25x25 grid at dilation 3: 889
    distinct offsets (its 914 count the 25 shared ones twice). The dense window comes first,
    the token itself first of all.

    Also each offset's id in a position-bias table of (2*dense+1)^2 + (2*sparse+1)^2 entries:
    a dense offset by (dy, dx), a sparse one by its patch's place in the grid, so that a bias
    learnt at one dilation (the paper trains with 2) applies at another (it infers with 3)."""
    side, grid_side = 2 * dense + 1, 2 * sparse + 1
    r = torch.arange(-dense, dense + 1)
    near = torch.stack(torch.meshgrid(r, r, indexing="ij"), -1).reshape(-1, 2)
    near = torch.cat([torch.zeros(1, 2, dtype=torch.long), near[(near != 0).any(dim=1)]])
    g = torch.arange(-sparse, sparse + 1)
    cells = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    far_mask = (cells * dilation).abs().gt(dense).any(dim=1)
    cells = cells[far_mask]
    offsets = torch.cat([near, cells * dilation])
    ids = torch.cat([(near[:, 0] + dense) * side + near[:, 1] + dense,
                     side * side + (cells[:, 0] + sparse) * grid_side + cells[:, 1] + sparse])
    return offsets, ids


def bias_table_size(dense: int, sparse: int) -> int:
    return (2 * dense + 1) ** 2 + (2 * sparse + 1) ** 2


def dlsg_index(height: int, width: int, offsets: torch.Tensor,
               device: torch.device | None = None) -> torch.Tensor:
    """(N, k) candidates of every token of a height x width tile (row-major ids), -1 where an
    offset falls outside the tile: candidates are built per tile, never across tiles."""
    yy, xx = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    y = yy.reshape(-1, 1) + offsets[:, 0]
    x = xx.reshape(-1, 1) + offsets[:, 1]
    inside = (y >= 0) & (y < height) & (x >= 0) & (x < width)
    return torch.where(inside, y * width + x, torch.full_like(y, -1)).to(device)


def sparsify(attn: torch.Tensor, index: torch.Tensor, keep: int
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eq. 4: each token keeps its ``keep`` candidates of highest attention (the heads'
    mean; -1 entries rank last). Returns the kept weights (B, H, N, keep), indices (B, N, keep)
    and positions in the input columns (B, N, keep), best first."""
    keep = min(keep, index.shape[-1])
    score = attn.mean(dim=1).masked_fill(index < 0, float("-inf"))
    cols = score.topk(keep, dim=-1).indices
    kept = attn.gather(3, cols[:, None].expand(-1, attn.shape[1], -1, -1))
    return kept, index.gather(2, cols), cols


def prune(attn: torch.Tensor, index: torch.Tensor, keep: int) -> torch.Tensor:
    """``sparsify`` that keeps the layout: the columns outside each token's top ``keep``
    become -1 (the first group's offset layout stays aligned with its offsets)."""
    score = attn.mean(dim=1).masked_fill(index < 0, float("-inf"))
    cols = score.topk(min(keep, index.shape[-1]), dim=-1).indices
    kept = torch.zeros_like(index, dtype=torch.bool).scatter_(-1, cols, True)
    return index.masked_fill(~kept | (index < 0), -1)


def most_similar(attn: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(B, N) each token's candidate of highest attention (heads' mean) other than itself; the
    token itself when it has none."""
    tokens = torch.arange(index.shape[1], device=index.device)[None, :, None]
    score = attn.mean(dim=1).masked_fill((index < 0) | (index == tokens), float("-inf"))
    best = score.argmax(dim=-1, keepdim=True)
    pick = index.gather(-1, best)[..., 0]
    found = torch.isfinite(score.gather(-1, best)[..., 0])
    return torch.where(found, pick, tokens[..., 0].expand_as(pick))


def expand(attn: torch.Tensor, index: torch.Tensor, k1: int, k2: int, width: int
           ) -> torch.Tensor:
    """Eq. 5-8: the candidates of the next layer: a token's own (``index``, best first) and
    the top-``k2`` candidates of each of its top-``k1`` candidates (two-hop), without
    duplicates, in that order, padded with -1 or cut to ``width`` columns."""
    b, n, k = index.shape
    score = attn.mean(dim=1).masked_fill(index < 0, float("-inf"))  # (B, N, k)
    order = score.argsort(dim=-1, descending=True)
    ranked = index.gather(2, order)  # best first, -1 last
    hop1 = ranked[..., :min(k1, k)]  # (B, N, k1)
    top2 = ranked[..., :min(k2, k)]  # each token's own top k2
    batch = torch.arange(b, device=index.device)[:, None, None]
    hop2 = torch.where(hop1[..., None] >= 0, top2[batch, hop1.clamp(min=0)],
                       torch.full_like(top2[batch, hop1.clamp(min=0)], -1))
    merged = torch.cat([ranked, hop2.reshape(b, n, -1)], dim=-1)  # own first
    return dedup(merged, width)


def dedup(index: torch.Tensor, width: int) -> torch.Tensor:
    """Keep the first occurrence of every id per row (order kept), drop -1, pad with -1 or
    cut to ``width`` columns."""
    b, n, k = index.shape
    big = index.masked_fill(index < 0, torch.iinfo(index.dtype).max)
    srt, perm = big.sort(dim=-1, stable=True)
    first = torch.ones_like(srt, dtype=torch.bool)
    first[..., 1:] = srt[..., 1:] != srt[..., :-1]
    keep = torch.zeros_like(first).scatter(-1, perm, first) & (index >= 0)
    # stable compaction: kept entries first in their original order
    rank = torch.where(keep, torch.arange(k, device=index.device).expand_as(index),
                       torch.full_like(index, k + 1))
    order = rank.argsort(dim=-1, stable=True)
    out = torch.where(keep.gather(-1, order), index.gather(-1, order),
                      torch.full_like(index, -1))
    if k < width:
        out = torch.cat([out, out.new_full((b, n, width - k), -1)], dim=-1)
    return out[..., :width]


# ---------------------------------------------------------------- the first group's fast path
# While the candidates are DLSG offsets (the first group, before any expansion), the products
# need no gather from the token list. The offsets are split into the ones on DLSG's dilation
# lattice (both coordinates multiples of d: the sparse grid, and the window's points on it) and
# the rest of the dense window. A lattice's offsets only reach tokens of the query's own phase
# (y mod d, x mod d), so each phase is its own map, d times smaller each way, where the
# offsets / d form a window of reach r. That map is cut into BLOCK x BLOCK blocks of queries;
# a block's keys within r form a (BLOCK + 2r)^2 region (``F.unfold``), one matrix product
# gives every query of the block against every key of its region, and each query's offsets
# are picked from it by a fixed table. Per query, 1600 region keys are computed for the 889
# offsets (at d = 3: 32^2 on the lattice, 24^2 for the window's rest; FLOPs count them all),
# and pruned offsets are computed and masked. Blocks are taken in bands of block rows, so
# that a band's region scores stay under ``BAND_BYTES``.
#
# Measured on this CPU, 1 thread, against the previous path (a loop of one product per offset
# with a shifted view of the keys, whose backward allocated a zero map per offset): forward
# and backward of a 32 px crop's first layer at d = 2, batch 2, qmk 0.75 -> 0.20 s and amv
# 4.22 -> 0.20 s; a 64 px tile's first layer at d = 3 without gradients, 0.27 -> 0.21 s and
# 0.36 -> 0.24 s.

BLOCK = 8
BAND_BYTES = 64 << 20


class _Blocks:
    """The block layout of a height x width map for window ``offsets``: ``table``
    (BLOCK^2, K) is each offset's place in a block's region, for each query of the block."""

    def __init__(self, offsets: torch.Tensor, height: int, width: int, planes: int) -> None:
        self.r = int(offsets.abs().max())
        self.side = BLOCK + 2 * self.r
        self.rows, self.cols = -(-height // BLOCK), -(-width // BLOCK)
        self.height, self.width = height, width
        i = torch.arange(BLOCK * BLOCK, device=offsets.device)
        self.table = ((i[:, None] // BLOCK + self.r + offsets[:, 0]) * self.side
                      + i[:, None] % BLOCK + self.r + offsets[:, 1])
        per_row = planes * self.cols * BLOCK * BLOCK * self.side ** 2 * 4
        self.band = max(1, min(self.rows, BAND_BYTES // per_row))

    def maps(self, x: torch.Tensor, reach: int) -> torch.Tensor:
        """(B, height, width, H, d) -> (B * H, d, rows * BLOCK + 2 reach,
        cols * BLOCK + 2 reach) zero-padded maps."""
        b, _, _, h, d = x.shape
        grid = x.permute(0, 3, 4, 1, 2).reshape(b * h, d, self.height, self.width)
        return F.pad(grid, (reach, self.cols * BLOCK - self.width + reach,
                            reach, self.rows * BLOCK - self.height + reach))

    def bands(self):
        for top in range(0, self.rows, self.band):
            yield top, min(top + self.band, self.rows)

    def unfold(self, grid: torch.Tensor, top: int, stop: int, side: int) -> torch.Tensor:
        """The blocks of block rows [top, stop) of a ``maps`` grid (reach (side - BLOCK) / 2),
        each with its side x side region: (B * H, blocks, side^2, d)."""
        band = grid[:, :, top * BLOCK:stop * BLOCK + side - BLOCK]
        cols = F.unfold(band, side, stride=BLOCK)
        return cols.view(grid.shape[0], grid.shape[1], side * side, -1).permute(0, 3, 2, 1)

    def to_map(self, blocks: torch.Tensor, batch: int) -> torch.Tensor:
        """(B * H, rows * cols, BLOCK^2, C) -> (B, H, height, width, C)."""
        bh, _, _, c = blocks.shape
        grid = blocks.view(batch, bh // batch, self.rows, self.cols, BLOCK, BLOCK, c)
        grid = grid.permute(0, 1, 2, 4, 3, 5, 6).reshape(
            batch, bh // batch, self.rows * BLOCK, self.cols * BLOCK, c)
        return grid[:, :, :self.height, :self.width]

    def from_map(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, height, width, C) -> (B * H, rows * cols, BLOCK^2, C), zero where the
        blocks pass the map's edge."""
        b, h, _, _, c = x.shape
        grid = F.pad(x, (0, 0, 0, self.cols * BLOCK - self.width,
                         0, self.rows * BLOCK - self.height))
        grid = grid.reshape(b, h, self.rows, BLOCK, self.cols, BLOCK, c).permute(
            0, 1, 2, 4, 3, 5, 6)
        return grid.reshape(b * h, self.rows * self.cols, BLOCK * BLOCK, c)


def _lattices(offsets: torch.Tensor):
    """Yields (columns, step, offsets / step): the offsets on DLSG's dilation lattice (its
    step: what the offsets at the reach have in common), then the rest (step 1)."""
    reach = offsets.abs().amax(dim=1)
    step = math.gcd(*offsets[reach == reach.max()].abs().flatten().tolist()) or 1
    on = (offsets % step == 0).all(dim=1)
    for cols, s in ((on.nonzero()[:, 0], step), ((~on).nonzero()[:, 0], 1)):
        if len(cols):
            yield cols, s, offsets[cols] // s


def _phases(height: int, width: int, step: int):
    """The phases of a step-lattice: (rows, cols) slices of the token map."""
    for py in range(min(step, height)):
        for px in range(min(step, width)):
            yield slice(py, None, step), slice(px, None, step)


def computed_per_query(offsets: torch.Tensor) -> int:
    """Keys each query is multiplied with by the block path, over all its lattices."""
    return sum((BLOCK + 2 * int(sub.abs().max())) ** 2 for _, _, sub in _lattices(offsets))


def qmk_offsets(q: torch.Tensor, k: torch.Tensor, offsets: torch.Tensor, height: int,
                width: int, valid: torch.Tensor) -> torch.Tensor:
    """``qmk`` for candidates at fixed ``offsets`` (K, 2) of every token of a height x width
    tile: (B, H, N, K) scores, -inf where ``valid`` (B, N, K) is False."""
    b, n, h, d = q.shape
    qmap, kmap = q.view(b, height, width, h, d), k.view(b, height, width, h, d)
    scores = q.new_empty(b, h, height, width, len(offsets))
    for cols, step, sub in _lattices(offsets):
        for ys, xs in _phases(height, width, step):
            qs, ks = qmap[:, ys, xs], kmap[:, ys, xs]
            lay = _Blocks(sub, qs.shape[1], qs.shape[2], b * h)
            queries, keys = lay.maps(qs, 0), lay.maps(ks, lay.r)
            parts = []
            for top, stop in lay.bands():
                region = (lay.unfold(queries, top, stop, BLOCK)
                          @ lay.unfold(keys, top, stop, lay.side).transpose(-1, -2))
                parts.append(region.gather(-1, lay.table.expand(*region.shape[:2], -1, -1)))
            scores[:, :, ys, xs, cols] = lay.to_map(torch.cat(parts, dim=1), b)
    scores = scores.view(b, h, n, -1)
    return scores.masked_fill(~valid[:, None], float("-inf"))


def amv_offsets(attn: torch.Tensor, v: torch.Tensor, offsets: torch.Tensor, height: int,
                width: int, valid: torch.Tensor) -> torch.Tensor:
    """``amv`` for candidates at fixed ``offsets``: (B, H, N, K) weights -> (B, N, H, d)."""
    b, n, h, d = v.shape
    weights = attn.masked_fill(~valid[:, None], 0.0).view(b, h, height, width, -1)
    vmap = v.view(b, height, width, h, d)
    out = v.new_zeros(b, h, height, width, d)
    for cols, step, sub in _lattices(offsets):
        for ys, xs in _phases(height, width, step):
            vs = vmap[:, ys, xs]
            lay = _Blocks(sub, vs.shape[1], vs.shape[2], b * h)
            part_weights = lay.from_map(weights[:, :, ys, xs][..., cols])
            values = lay.maps(vs, lay.r)
            parts = []
            for top, stop in lay.bands():
                w = part_weights[:, top * lay.cols:stop * lay.cols]
                region = w.new_zeros(*w.shape[:3], lay.side ** 2).scatter(
                    -1, lay.table.expand(*w.shape[:2], -1, -1), w)
                parts.append(region @ lay.unfold(values, top, stop, lay.side))
            out[:, :, ys, xs] += lay.to_map(torch.cat(parts, dim=1), b)
    return out.view(b, h, n, d).transpose(1, 2)
