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
                 ) -> torch.Tensor:
    """DLSG's candidate offsets (k, 2) as (dy, dx): the dense (2*dense+1)^2 window, then one
    token per ``dilation`` x ``dilation`` patch of a (2*sparse+1)^2 grid of patches around
    the token (the patch centres), without the ones the dense window already has. The public
    code's default (8, 12, 3) is a 17x17 window plus a 25x25 grid at dilation 3: 889
    distinct offsets (its 914 count the 25 shared ones twice). The dense window comes first,
    the token itself first of all."""
    r = torch.arange(-dense, dense + 1)
    near = torch.stack(torch.meshgrid(r, r, indexing="ij"), -1).reshape(-1, 2)
    near = torch.cat([torch.zeros(1, 2, dtype=torch.long),
                      near[(near != 0).any(dim=1)]])
    g = torch.arange(-sparse, sparse + 1) * dilation
    far = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    far = far[(far.abs() > dense).any(dim=1)]
    return torch.cat([near, far])


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
