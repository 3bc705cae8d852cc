"""IET's individualized attention (IEA): every token attends to its own candidates, listed in
an index matrix I (N x k, -1 = none), built by DLSG, pruned by top-k and expanded by two hops.

The authors' sparse products are a CUDA kernel without a CPU path. Here they are batched
gathers in PyTorch, on any device, with autograd:

* ``qmk``: out[n, j] = q[n] . K[I[n, j]]  (-inf where I is -1);
* ``amv``: out[n] = sum_j A[n, j] V[I[n, j]]  (entries where I is -1 contribute nothing).

I is shared by the heads, so one gather of the candidates' rows serves them all. Tokens are
processed in chunks so that the gathered rows (tokens x k x channels) stay under
``GATHER_BYTES``: the peak memory of a layer is that plus its N x k x heads attention map.
"""

from __future__ import annotations

import torch

GATHER_BYTES = 64 << 20  # bound of one chunk's gathered candidate rows


def _chunk(n: int, k: int, channels: int, itemsize: int) -> int:
    return max(1, min(n, GATHER_BYTES // max(1, k * channels * itemsize)))


def _gathered(values: torch.Tensor, index: torch.Tensor):
    """Chunks of tokens and their candidates' rows: yields (token slice, (B, n, k, H, d))."""
    b, n, h, d = values.shape
    flat = values.reshape(b, n, h * d)
    safe = index.clamp(min=0)
    batch = torch.arange(b, device=values.device)[:, None, None]
    step = _chunk(n, index.shape[-1], h * d, values.element_size())
    for s in range(0, n, step):
        part = slice(s, s + step)
        yield part, flat[batch, safe[:, part]].view(b, -1, index.shape[-1], h, d)


def qmk(q: torch.Tensor, k: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(B, N, H, d) queries, (B, N, H, d) keys, (B, N, k) candidates -> (B, H, N, k) scores;
    -inf where the index is -1."""
    scores = torch.cat([torch.einsum("bnhd,bnkhd->bhnk", q[:, part], rows)
                        for part, rows in _gathered(k, index)], dim=2)
    return scores.masked_fill(~(index >= 0)[:, None], float("-inf"))


def amv(attn: torch.Tensor, v: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(B, H, N, k) weights, (B, N, H, d) values, (B, N, k) candidates -> (B, N, H, d)."""
    weights = attn.masked_fill(~(index >= 0)[:, None], 0.0)
    return torch.cat([torch.einsum("bhnk,bnkhd->bnhd", weights[:, :, part], rows)
                      for part, rows in _gathered(v, index)], dim=1)


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
# need no gather: for each offset, q times the key map shifted by it, summed over channels.
# Every offset is computed and the pruned ones masked, which on this CPU is still ~10x faster
# than gathering a quarter of them (memory traffic, not arithmetic, bounds the gathers).


def _shifted(values: torch.Tensor, height: int, width: int, reach: int) -> torch.Tensor:
    """(B, N, H, d) -> (B, h + 2r, w + 2r, H, d) zero-padded maps to slice shifts from."""
    b, _, h, d = values.shape
    grid = values.view(b, height, width, h, d)
    return torch.nn.functional.pad(grid, (0, 0, 0, 0, reach, reach, reach, reach))


def qmk_offsets(q: torch.Tensor, k: torch.Tensor, offsets: torch.Tensor, height: int,
                width: int, valid: torch.Tensor) -> torch.Tensor:
    """``qmk`` for candidates at fixed ``offsets`` (K, 2) of every token of a height x width
    tile: (B, H, N, K) scores, -inf where ``valid`` (B, N, K) is False. One product per offset
    with a shifted view of the keys (no copy); grouping offsets by row shift and gathering
    their columns instead was 2-3x slower here (the gather's copy again)."""
    b, n, h, d = q.shape
    r = int(offsets.abs().max())
    padded = _shifted(k, height, width, r)
    grid = q.view(b, height, width, h, d)
    cols = [(grid * padded[:, r + dy:r + dy + height, r + dx:r + dx + width]).sum(-1)
            for dy, dx in offsets.tolist()]
    scores = torch.stack(cols, dim=-1).view(b, n, h, -1).transpose(1, 2)
    return scores.masked_fill(~valid[:, None], float("-inf"))


def amv_offsets(attn: torch.Tensor, v: torch.Tensor, offsets: torch.Tensor, height: int,
                width: int, valid: torch.Tensor) -> torch.Tensor:
    """``amv`` for candidates at fixed ``offsets``: (B, H, N, K) weights -> (B, N, H, d)."""
    b, n, h, d = v.shape
    r = int(offsets.abs().max())
    padded = _shifted(v, height, width, r)
    weights = attn.masked_fill(~valid[:, None], 0.0).transpose(1, 2).reshape(
        b, height, width, h, -1)
    out = torch.zeros(b, height, width, h, d, dtype=v.dtype, device=v.device)
    for j, (dy, dx) in enumerate(offsets.tolist()):
        out = out + weights[..., j, None] * padded[:, r + dy:r + dy + height,
                                                   r + dx:r + dx + width]
    return out.view(b, n, h, d)
