"""IET's individualized attention (IEA): every token attends to its own candidates, listed in
an index matrix I (N x k, -1 = none), built by DLSG, pruned by top-k and expanded by two hops.

The authors' sparse products are a CUDA kernel without a CPU path. Here they are torch's sparse
CSR kernels, on any device, with autograd (``Pattern``, ``_QmK``, ``_AmV``):

* ``qmk``: out[n, j] = q[n] . K[I[n, j]]  (-inf where I is -1), a sampled dense-dense product;
* ``amv``: out[n] = sum_j A[n, j] V[I[n, j]]  (entries where I is -1 contribute nothing), a
  sparse-dense product.

Nothing of size N x k x channels is made: a layer holds its N x k x heads attention values.
Measured on this CPU, 1 thread, B * H * N = 12,288 rows, k = 160, d = 18, against batched
gathers of the candidates' rows and batched matrix products: qmk 0.18 -> 0.012 s, amv 0.13 ->
0.008 s, the backward's scatter (A^T x) 0.23 -> 0.07 s; a batch-4 iet-light training step
(32 px crops, d = 2) 15.5-24.9 -> 6.5-6.8 s, peak RSS 5.3 -> ~2 GB.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F


def _csr(crow: torch.Tensor, cols: torch.Tensor, values: torch.Tensor,
         size: tuple[int, int]) -> torch.Tensor:
    with warnings.catch_warnings():  # torch calls its CSR support beta, once per process
        warnings.simplefilter("ignore")
        return torch.sparse_csr_tensor(crow, cols, values, size, check_invariants=False)


class Pattern:
    """An index matrix I (B, N, k) as the sparse matrix of the products, in CSR with every
    row's columns sorted and distinct, as torch's sparse kernels require (IET's candidates are
    distinct ids). One block per image on the diagonal, shared by the heads (each head has its
    own values); a block is N x (N + k): its columns are the tokens, then k placeholders, where
    a row's j-th entry goes when I[n, j] is -1 (its value is 0, its score -inf), so that every
    row has k entries. Values move between the index's own column order (B, H, N, k) and the
    CSR's (H, nnz) with ``values`` and ``dense``; token rows are (H, B * N, d)."""

    def __init__(self, index: torch.Tensor, heads: int) -> None:
        b, n, k = index.shape
        dev = index.device
        self.n, self.span = n, n + k
        self.shape = (b, heads, n, k)
        self.missing = (index < 0)[:, None]
        ids, order = torch.where(index < 0, n + torch.arange(k, device=dev), index).sort(dim=-1)
        self.order = order[:, None].expand(self.shape)
        self.cols = (ids + torch.arange(b, device=dev).view(b, 1, 1) * self.span).flatten()
        self.crow = torch.arange(0, b * n * k + 1, k, device=dev)
        self.size = (b * n, b * self.span)
        self._transpose: tuple[torch.Tensor, ...] | None = None

    def values(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, N, k) in the index's column order -> the CSR's (H, nnz) (0 where I is -1)."""
        x = x.masked_fill(self.missing, 0.0).gather(-1, self.order)
        return x.transpose(0, 1).reshape(self.shape[1], -1)

    def dense(self, values: torch.Tensor, fill: float) -> torch.Tensor:
        """The CSR's (H, nnz) -> (B, H, N, k) in the index's column order, ``fill`` where I is
        -1."""
        b, h, n, k = self.shape
        out = torch.empty(self.shape, dtype=values.dtype, device=values.device)
        out.scatter_(-1, self.order, values.view(h, b, n, k).transpose(0, 1))
        return out.masked_fill_(self.missing, fill)

    def matrix(self, values: torch.Tensor) -> torch.Tensor:
        return _csr(self.crow, self.cols, values, self.size)

    def transposed(self, values: torch.Tensor) -> torch.Tensor:
        """The transpose (for the backward): each candidate's row lists the tokens that have
        it (a stable sort of the columns keeps them sorted)."""
        if self._transpose is None:
            perm = self.cols.int().argsort(stable=True)  # 32-bit keys sort 2-3x faster here
            counts = torch.bincount(self.cols, minlength=self.size[1])
            self._transpose = perm, perm // self.shape[3], F.pad(counts.cumsum(0), (1, 0))
        perm, cols, crow = self._transpose
        return _csr(crow, cols, values[perm], self.size[::-1])

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """(B * N, d) token rows -> the (B * (N + k), d) rows of the matrix's columns (zero
        rows for the placeholders)."""
        d = x.shape[-1]
        return F.pad(x.view(-1, self.n, d), (0, 0, 0, self.span - self.n)).view(-1, d)

    def unpad(self, x: torch.Tensor) -> torch.Tensor:
        d = x.shape[-1]
        return x.view(-1, self.span, d)[:, :self.n].reshape(-1, d)

    def sampled(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(H, B * N, d) x (H, B * N, d) -> the CSR's (H, nnz): a[n] . b[m] at each entry."""
        pattern = self.matrix(a.new_zeros(self.cols.numel()))
        return torch.stack([torch.sparse.sampled_addmm(pattern, ah, self.pad(bh).t(),
                                                       beta=0.0).values()
                            for ah, bh in zip(a, b)])

    def product(self, values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """(H, nnz) x (H, B * N, d) -> (H, B * N, d): the matrix times the tokens' rows."""
        return torch.stack([self.matrix(v) @ self.pad(xh) for v, xh in zip(values, x)])

    def product_t(self, values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The transpose times rows: (H, nnz) x (H, B * N, d) -> (H, B * N, d)."""
        return torch.stack([self.unpad(self.transposed(v) @ xh) for v, xh in zip(values, x)])


class _QmK(torch.autograd.Function):
    """scores = q[n] . k[I[n, j]] as a sampled dense-dense product; its backward is two sparse
    products (dq = G k, dk = G^T q)."""

    @staticmethod
    def forward(ctx, q, k, pattern):
        ctx.save_for_backward(q, k)
        ctx.pattern = pattern
        return pattern.dense(pattern.sampled(q, k), float("-inf"))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        q, k = ctx.saved_tensors
        pattern = ctx.pattern
        g = pattern.values(grad)
        dq = pattern.product(g, k) if ctx.needs_input_grad[0] else None
        dk = pattern.product_t(g, q) if ctx.needs_input_grad[1] else None
        return dq, dk, None


class _AmV(torch.autograd.Function):
    """out[n] = sum_j A[n, j] v[I[n, j]] as a sparse product; backward: dA sampled from
    grad v^T, dv = A^T grad."""

    @staticmethod
    def forward(ctx, weights, v, pattern):
        a = pattern.values(weights)
        ctx.save_for_backward(a, v)
        ctx.pattern = pattern
        return pattern.product(a, v)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        a, v = ctx.saved_tensors
        pattern = ctx.pattern
        dw = pattern.dense(pattern.sampled(grad, v), 0.0) if ctx.needs_input_grad[0] else None
        dv = pattern.product_t(a, grad) if ctx.needs_input_grad[1] else None
        return dw, dv, None


def _rows(x: torch.Tensor) -> torch.Tensor:
    """(B, N, H, d) -> (H, B * N, d), the products' row layout."""
    b, n, h, d = x.shape
    return x.permute(2, 0, 1, 3).reshape(h, b * n, d)


def qmk(q: torch.Tensor, k: torch.Tensor, pattern: Pattern) -> torch.Tensor:
    """(B, N, H, d) queries and keys, the candidates' ``Pattern`` -> (B, H, N, k) scores,
    -inf where the index is -1."""
    return _QmK.apply(_rows(q), _rows(k), pattern)


def amv(attn: torch.Tensor, v: torch.Tensor, pattern: Pattern) -> torch.Tensor:
    """(B, H, N, k) weights, (B, N, H, d) values, the candidates' ``Pattern`` -> (B, N, H, d);
    entries where the index is -1 contribute nothing."""
    b, n, h, d = v.shape
    return _AmV.apply(attn, _rows(v), pattern).view(h, b, n, d).permute(1, 2, 0, 3)


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
    # unsorted: the set is all that counts here (a sorted top-256 of 889 took ~1.8x as long)
    cols = score.topk(min(keep, index.shape[-1]), dim=-1, sorted=False).indices
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


def expand(index: torch.Tensor, k1: int, k2: int, width: int) -> torch.Tensor:
    """Eq. 5-8: the candidates of the next layer: a token's own (``index``, best first, -1
    last: as ``sparsify`` returns them) and the top-``k2`` candidates of each of its
    top-``k1`` candidates (two-hop), without duplicates, in that order, padded with -1 or cut
    to ``width`` columns."""
    b, n, k = index.shape
    hop1 = index[..., :min(k1, k)]  # (B, N, k1)
    top2 = index[..., :min(k2, k)]  # each token's own top k2
    batch = torch.arange(b, device=index.device)[:, None, None]
    hop2 = top2[batch, hop1.clamp(min=0)].masked_fill(hop1[..., None] < 0, -1)
    return dedup(torch.cat([index, hop2.reshape(b, n, -1)], dim=-1), width)  # own first


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


def _pieces(offsets: torch.Tensor, height: int, width: int) -> list[tuple]:
    """The block path's pieces, one per lattice and phase: (columns, offsets / step, rows,
    cols of the map). Together they cover every (token, offset) entry once."""
    return [(cols, sub, ys, xs) for cols, step, sub in _lattices(offsets)
            for ys, xs in _phases(height, width, step)]


def _join(shape: tuple[int, ...], pieces: list[tuple], parts) -> torch.Tensor:
    out = parts[0].new_empty(shape)
    for (cols, _, ys, xs), part in zip(pieces, parts):
        out[:, :, ys, xs, cols] = part
    return out


class _Join(torch.autograd.Function):
    """The pieces' (B, H, h_i, w_i, K_i) results -> their (B, H, height, width, K) map; the
    backward reads each piece's part of the gradient (autograd's slice assignments cloned the
    whole map's gradient once per piece)."""

    @staticmethod
    def forward(ctx, shape, pieces, *parts):
        ctx.pieces = pieces
        return _join(shape, pieces, parts)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        return (None, None, *(grad[:, :, ys, xs][..., cols] for cols, _, ys, xs in ctx.pieces))


class _Split(torch.autograd.Function):
    """The adjoint of ``_Join``: a (B, H, height, width, K) map -> its pieces' parts."""

    @staticmethod
    def forward(ctx, x, pieces):
        ctx.pieces, ctx.shape = pieces, x.shape
        return tuple(x[:, :, ys, xs][..., cols] for cols, _, ys, xs in pieces)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grads):
        return _join(ctx.shape, ctx.pieces, grads), None


def qmk_offsets(q: torch.Tensor, k: torch.Tensor, offsets: torch.Tensor, height: int,
                width: int, valid: torch.Tensor) -> torch.Tensor:
    """``qmk`` for candidates at fixed ``offsets`` (K, 2) of every token of a height x width
    tile: (B, H, N, K) scores, -inf where ``valid`` (B, N, K) is False."""
    b, n, h, d = q.shape
    qmap, kmap = q.view(b, height, width, h, d), k.view(b, height, width, h, d)
    pieces = _pieces(offsets, height, width)
    joined = []
    for cols, sub, ys, xs in pieces:
        qs, ks = qmap[:, ys, xs], kmap[:, ys, xs]
        lay = _Blocks(sub, qs.shape[1], qs.shape[2], b * h)
        queries, keys = lay.maps(qs, 0), lay.maps(ks, lay.r)
        parts = []
        for top, stop in lay.bands():
            region = (lay.unfold(queries, top, stop, BLOCK)
                      @ lay.unfold(keys, top, stop, lay.side).transpose(-1, -2))
            parts.append(region.gather(-1, lay.table.expand(*region.shape[:2], -1, -1)))
        joined.append(lay.to_map(torch.cat(parts, dim=1), b))
    scores = _Join.apply((b, h, height, width, len(offsets)), pieces, *joined)
    # an added -inf mask: the add's backward passes the gradient on without a pass over it
    mask = torch.zeros(valid.shape, dtype=scores.dtype, device=scores.device)
    return scores.view(b, h, n, -1) + mask.masked_fill_(~valid, float("-inf"))[:, None]


def amv_offsets(attn: torch.Tensor, v: torch.Tensor, offsets: torch.Tensor, height: int,
                width: int, valid: torch.Tensor) -> torch.Tensor:
    """``amv`` for candidates at fixed ``offsets``: (B, H, N, K) weights -> (B, N, H, d)."""
    b, n, h, d = v.shape
    pieces = _pieces(offsets, height, width)
    weights = attn.masked_fill(~valid[:, None], 0.0).view(b, h, height, width, -1)
    vmap = v.view(b, height, width, h, d)
    out = v.new_zeros(b, h, height, width, d)
    for (cols, sub, ys, xs), piece in zip(pieces, _Split.apply(weights, pieces)):
        vs = vmap[:, ys, xs]
        lay = _Blocks(sub, vs.shape[1], vs.shape[2], b * h)
        part_weights = lay.from_map(piece)
        values = lay.maps(vs, lay.r)
        parts = []
        for top, stop in lay.bands():
            w = part_weights[:, top * lay.cols:stop * lay.cols]
            region = w.new_zeros(*w.shape[:3], lay.side ** 2).scatter(
                -1, lay.table.expand(*w.shape[:2], -1, -1), w)
            parts.append(region @ lay.unfold(values, top, stop, lay.side))
        out[:, :, ys, xs] += lay.to_map(torch.cat(parts, dim=1), b)
    return out.view(b, h, n, d).transpose(1, 2)
