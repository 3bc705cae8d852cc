"""IET: individualized exploratory transformer (conv, 8 groups of IEA layers with SF-FFNs,
conv, pixel-shuffle upsampler over a bicubic skip).

A group (the paper's block) is ``layers`` IEA layers, a 3x3 conv and a residual. Each layer:
``x + proj(IEA(LN x))`` then ``x + SF-FFN(LN x)``. Candidates flow from layer to layer: the
first group starts from DLSG (``attention.dlsg_index``) with a relative position bias per
offset; every layer keeps its ``keep`` best (sparsification, Eq. 4) and attends with the kept
weights (not renormalised, as Eq. 3 reads); the last layer of the first groups adds two-hop
neighbours (expansion, Eq. 5-8, the paper's k1 = [22, 20, 14, 12], k2 = [12, 11, 9, 8]); after
the first group, LePE (a depthwise 3x3 conv of V) replaces the position bias.

SF-FFN (our reading of Fig. 5): each token is paired with its most similar candidate (the
best-ranked one of the next layer's list that is not itself); ``fc1(x) + head-wise
linear(x_sim)``, a depthwise 3x3 conv added, GELU, ``fc2``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sr_tile.models.descriptor import ModelDescriptor, Routing
from sr_tile.models.iet import attention as iea
from sr_tile.models.layers import bicubic, zero_init_

SCALES = (2, 3, 4)


@dataclass(frozen=True)
class IETConfig:
    """``iet-light`` (dim 54, 8 x 3, 3 heads) by default. ``keep[g]``: candidates each layer
    of group g keeps (one number per layer); ``width[g]``: the candidate list after group g's
    expansion (-1 padded); ``dilation``: DLSG's d (the paper trains with 2, infers with 3)."""

    scale: int = 4
    dim: int = 54
    groups: int = 8
    layers: int = 3
    heads: int = 3
    mlp_ratio: float = 2.0
    dense: int = 8
    sparse: int = 12
    dilation: int = 3
    keep: tuple[tuple[int, ...], ...] = ((256, 128, 64), (128, 96, 64), (128, 96, 64),
                                         (96, 64, 48), (64, 48, 48), (48, 48, 48),
                                         (48, 48, 48), (48, 48, 48))
    k1: tuple[int, ...] = (22, 20, 14, 12)
    k2: tuple[int, ...] = (12, 11, 9, 8)
    width: tuple[int, ...] = (320, 256, 192, 160)

    def __post_init__(self) -> None:
        if self.scale not in SCALES:
            raise ValueError(f"iet supports scales {SCALES}, not x{self.scale}")
        if len(self.keep) != self.groups or any(len(k) != self.layers for k in self.keep):
            raise ValueError("keep needs one tuple of per-layer counts per group")
        if not len(self.k1) == len(self.k2) == len(self.width) <= self.groups:
            raise ValueError("k1, k2 and width need one entry per expanding group")

    @property
    def reach(self) -> int:
        """How far (LR px) DLSG reaches from a token: the minimum useful tile overlap."""
        return max(self.dense, self.sparse * self.dilation)


@dataclass
class Candidates:
    """Every token's candidates (B, N, k), -1 = none. ``dense``: the columns are the model's
    DLSG offsets in order (the first group, before expansion), so the products take the
    block path (``attention.qmk_offsets``) and a position bias per offset applies."""

    index: torch.Tensor
    dense: bool = False


class IEALayer(nn.Module):
    """One IEA layer and its SF-FFN; ``bias_offsets``: the size of the first group's position
    bias table (None: LePE, the later groups)."""

    def __init__(self, cfg: IETConfig, *, bias_offsets: int | None) -> None:
        super().__init__()
        self.heads = cfg.heads
        self.norm1 = nn.LayerNorm(cfg.dim)
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim)
        self.proj = nn.Linear(cfg.dim, cfg.dim)
        self.bias = (nn.Parameter(torch.zeros(cfg.heads, bias_offsets))
                     if bias_offsets else None)
        self.lepe = (None if bias_offsets else
                     nn.Conv2d(cfg.dim, cfg.dim, 3, padding=1, groups=cfg.dim))
        self.norm2 = nn.LayerNorm(cfg.dim)
        hidden = int(round(cfg.dim * cfg.mlp_ratio))
        self.fc1 = nn.Linear(cfg.dim, hidden)
        self.fc_sim = nn.Conv1d(cfg.dim, hidden, 1, groups=cfg.heads)  # head-wise
        self.dw = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.fc2 = nn.Linear(hidden, cfg.dim)

    def forward(self, x: torch.Tensor, hw: tuple[int, int], cand: Candidates, keep: int,
                expansion: tuple[int, int, int] | None, offsets: torch.Tensor,
                bias_ids: torch.Tensor) -> tuple[torch.Tensor, Candidates]:
        """``x`` (B, N, C) tokens of (h, w) tiles -> updated tokens and the next candidates."""
        b, n, c = x.shape
        h, w = hw
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, -1).unbind(2)
        q = q / math.sqrt(q.shape[-1])  # here, not on the N x k scores (a pass there and back)
        if cand.dense:
            scores = iea.qmk_offsets(q, k, offsets, h, w, cand.index >= 0)
            scores = scores + self.bias[None, :, None, bias_ids]
            attn = scores.softmax(dim=-1)
            index = iea.prune(attn, cand.index, keep)
            out = iea.amv_offsets(attn, v, offsets, h, w, index >= 0)
            nxt = Candidates(index, dense=True)
        else:
            attn = iea.qmk(q, k, iea.Pattern(cand.index, self.heads)).softmax(dim=-1)
            attn, index, _ = iea.sparsify(attn, cand.index, keep)
            out = iea.amv(attn, v, iea.Pattern(index, self.heads))
            nxt = Candidates(index)
        out = out.reshape(b, n, c)
        if self.lepe is not None:
            vmap = v.reshape(b, h, w, c).permute(0, 3, 1, 2)
            out = out + self.lepe(vmap).permute(0, 2, 3, 1).reshape(b, n, c)
        x = x + self.proj(out)
        best = iea.most_similar(attn, nxt.index)
        if expansion is not None:
            k1, k2, width = expansion
            if nxt.dense:
                _, index, _ = iea.sparsify(attn, nxt.index, keep)
            nxt = Candidates(iea.expand(index, k1, k2, width))
        return x + self._ffn(self.norm2(x), hw, best), nxt

    def _ffn(self, x: torch.Tensor, hw: tuple[int, int], best: torch.Tensor) -> torch.Tensor:
        """SF-FFN: each token fused with its most similar candidate ``best`` (B, N)."""
        b, n, _ = x.shape
        sim = x[torch.arange(b, device=x.device)[:, None], best]
        y = self.fc1(x) + self.fc_sim(sim.transpose(1, 2)).transpose(1, 2)
        h, w = hw
        ymap = y.reshape(b, h, w, -1).permute(0, 3, 1, 2)
        y = y + self.dw(ymap).permute(0, 2, 3, 1).reshape(b, n, -1)
        return self.fc2(F.gelu(y))


class IETGroup(nn.Module):
    def __init__(self, cfg: IETConfig, g: int, offsets: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(IEALayer(cfg, bias_offsets=offsets if g == 0 else None)
                                    for _ in range(cfg.layers))
        self.conv = nn.Conv2d(cfg.dim, cfg.dim, 3, padding=1)


class IET(nn.Module):
    """IET; ``forward(x)`` (B, 3, h, w) -> (B, 3, s h, s w). Candidates are built per tile."""

    #: why ``sr-tile export`` refuses it (``sr_tile.deploy.onnx``)
    onnx_unsupported = ("its candidate sets are data-dependent (top-k pruning, two-hop "
                        "expansion) and its products sparse CSR kernels, not exported yet")

    def __init__(self, cfg: IETConfig, *, name: str = "iet-light") -> None:
        super().__init__()
        self.config = cfg
        self.scale = cfg.scale
        offsets, bias_ids = iea.dlsg_offsets(cfg.dense, cfg.sparse, cfg.dilation)
        self.register_buffer("offsets", offsets, persistent=False)
        self.register_buffer("bias_ids", bias_ids, persistent=False)
        self.conv_first = nn.Conv2d(3, cfg.dim, 3, padding=1)
        table = iea.bias_table_size(cfg.dense, cfg.sparse)
        self.groups = nn.ModuleList(IETGroup(cfg, g, table) for g in range(cfg.groups))
        self.conv_after = nn.Conv2d(cfg.dim, cfg.dim, 3, padding=1)
        self.upsample = zero_init_(nn.Conv2d(cfg.dim, 3 * cfg.scale ** 2, 3, padding=1))
        self.shuffle = nn.PixelShuffle(cfg.scale)
        self.descriptor = ModelDescriptor(
            # the overlap covers DLSG's reach (36 px at d = 3), so that a token an owned
            # output depends on finds its first-layer candidates inside the tile. 128 px
            # tiles: iet-light's peak RSS was 1.6 GB on one, 3.0 GB on a 192 px one (the
            # first group's N x 889 maps), and 1.2 against 1.5 ms per LR px (1 thread); so
            # one such tile per forward pass (the memory grows with the batch)
            name=name, scale=cfg.scale, margin=16, exact_tiling=False, default_tile=128,
            default_overlap=cfg.reach + 4, routing=Routing.NONE, batch_pixels=128 * 128,
            flops_note="classsr: 2x MACs of conv/linear layers and of the candidate products "
                       "(every candidate computed counts, -1 padding too)")

    def set_dilation(self, dilation: int) -> None:
        """DLSG's d at inference (the offsets change, the weights do not)."""
        offsets, ids = iea.dlsg_offsets(self.config.dense, self.config.sparse, dilation)
        self.offsets, self.bias_ids = offsets.to(self.offsets.device), ids.to(self.offsets.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        b, _, h, w = x.shape
        feat = self.conv_first(x)
        cand = Candidates(iea.dlsg_index(h, w, self.offsets, x.device)[None].expand(b, -1, -1),
                          dense=True)
        t = feat
        for g, group in enumerate(self.groups):
            tokens = t.flatten(2).transpose(1, 2)
            for j, layer in enumerate(group.layers):
                last = j == cfg.layers - 1 and g < len(cfg.k1)
                expansion = (cfg.k1[g], cfg.k2[g], cfg.width[g]) if last else None
                tokens, cand = layer(tokens, (h, w), cand, cfg.keep[g][j], expansion,
                                     self.offsets, self.bias_ids)
            t = t + group.conv(tokens.transpose(1, 2).reshape(b, cfg.dim, h, w))
        feat = feat + self.conv_after(t)
        return self.shuffle(self.upsample(feat)) + bicubic(x, cfg.scale)

    # ------------------------------------------------------------------ FLOPs (classsr)
    def candidate_counts(self) -> list[tuple[int, int]]:
        """Per layer in order, (candidates scored, candidates weighted) per token as computed:
        the first group's block path multiplies every query by its blocks' whole regions of
        keys, for both products (``attention.computed_per_query``)."""
        cfg = self.config
        region = iea.computed_per_query(self.offsets)
        counts, incoming = [], len(self.offsets)
        for g in range(cfg.groups):
            for j in range(cfg.layers):
                keep = min(cfg.keep[g][j], incoming)
                counts.append((region, region) if g == 0 else (incoming, keep))
                incoming = keep
                if j == cfg.layers - 1 and g < len(cfg.k1):
                    incoming = cfg.width[g]
        return counts

    def flops(self, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> int:
        """The ``sr_tile.flops`` protocol (see :meth:`tile_flops`)."""
        b, _, h, w = inputs[0].shape
        return b * self.tile_flops(h, w)

    def tile_flops(self, height: int, width: int) -> int:
        """classsr FLOPs of one tile, counted from the config (the runner uses this instead of
        a counting pass, which IET's data-dependent candidates would make a real forward):
        convs, linears and the candidate products (qmk and amv over every candidate computed,
        padding included: the gathers and the block products compute them)."""
        cfg = self.config
        n, c = height * width, cfg.dim
        hidden = int(round(c * cfg.mlp_ratio))
        per_layer = (2 * c * 3 * c + 2 * c * c + 2 * c * hidden + 2 * (c // cfg.heads) * hidden
                     + 2 * 9 * hidden + 2 * hidden * c)
        total = cfg.groups * cfg.layers * per_layer * n
        total += sum(2 * c * (scored + kept) for scored, kept in self.candidate_counts()) * n
        total += (cfg.groups - 1) * cfg.layers * 2 * 9 * c * n  # LePE
        total += n * 2 * 9 * (3 * c + cfg.groups * c * c + c * c + c * 3 * cfg.scale ** 2)
        return total
