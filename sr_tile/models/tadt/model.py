"""TADT (Task-Aware Dynamic Transformer): a multi-scale transformer feature extractor whose
attention branches a controller switches on per image and scale, read by an arbitrary-scale
upsampler (LIIF, MetaSR or LTE).

Extractor (paper sec. 3.2-3.3): ``conv_first`` 3x3 3->C; N MSTGs, each two MSTBs and a 3x3
conv with a residual; ``conv_after`` 3x3 plus the shallow feature; ``conv_out`` 3x3 C->64 (the
upsamplers' input, as LIIF's). An MSTB splits LayerNorm(x) into 4 channel groups: three local
window self-attention branches (windows 4, 8, 16) and a global one (window m, keys and values
max-pooled to d x d); the branch outputs are concatenated, projected by the **slice-able
projection** (only the columns of branches that ran), added to x, and an MLP follows.

TARC (sec. 3.3, Eq. 3-4): an image branch (two 3x3 convs, average pool, linear) gives
e in R^{4N}, a scale branch (three linear layers on s) gives beta > 0 (softplus),
p = min(beta * 4N * sigmoid(e) / sum(sigmoid(e)), 1). Branch j of MSTG i (both its MSTBs) runs
when r = 1: training draws r ~ Bernoulli(p) with a straight-through estimator, inference takes
r = [p > 0.5], once per image from the whole LR image and the scale, so every tile of an image
runs the same branches. Bypassed branches are not computed at all at inference; in training
they are multiplied by r (per image), so that the loss reaches p.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sr_tile.models.descriptor import ModelDescriptor, Routing
from sr_tile.models.layers.implicit import UPSAMPLERS, build_upsampler

TRAIN_SCALES = (1.0, 4.0)  # s ~ U(1, 4) in training: larger scales are out of distribution


@dataclass(frozen=True)
class TADTConfig:
    """``tadt`` is the paper's (N = 8, C = 224, windows 4/8/16, global 48); ``pooled`` (d, the
    global branch's pooled key side) and the heads are not in the paper."""

    scale: float = 4.0
    channels: int = 224
    groups: int = 8
    local_windows: tuple[int, int, int] = (4, 8, 16)
    global_window: int = 48
    pooled: int = 12
    head_dim: int = 28
    mlp_ratio: float = 2.0
    out_channels: int = 64
    upsampler: str = "liif"
    tarc_width: int = 32

    def __post_init__(self) -> None:
        if self.channels % 4:
            raise ValueError(f"channels {self.channels} must split into 4 branches")
        if self.global_window % self.pooled:
            raise ValueError(f"pooled {self.pooled} must divide global_window")
        if self.upsampler not in UPSAMPLERS:
            raise ValueError(f"unknown upsampler {self.upsampler!r}; choose "
                             f"{', '.join(UPSAMPLERS)}")

    @property
    def size_multiple(self) -> int:
        return math.lcm(*self.local_windows, self.global_window)

    @property
    def branches(self) -> int:
        return 4 * self.groups


class WindowBranch(nn.Module):
    """One attention branch on a quarter of the channels: self-attention inside m x m windows;
    with ``pooled`` d, keys and values are max-pooled to d x d per window (the global branch)."""

    def __init__(self, dim: int, window: int, head_dim: int, pooled: int | None = None) -> None:
        super().__init__()
        self.window, self.pooled = window, pooled
        self.heads = max(1, dim // head_dim)
        self.qkv = nn.Linear(dim, 3 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, dim) -> (B, H, W, dim) attention outputs (before the projection)."""
        b, h, w, d = x.shape
        m = self.window
        win = x.view(b, h // m, m, w // m, m, d).transpose(2, 3).reshape(-1, m, m, d)
        q, k, v = self.qkv(win).chunk(3, dim=-1)  # (n, m, m, d) each
        if self.pooled is not None:
            r = m // self.pooled
            k, v = (F.max_pool2d(t.permute(0, 3, 1, 2), r).permute(0, 2, 3, 1) for t in (k, v))
        split = lambda t: t.reshape(t.shape[0], -1, self.heads, d // self.heads).transpose(1, 2)
        out = F.scaled_dot_product_attention(split(q), split(k), split(v))  # (n, heads, m*m, hd)
        out = out.transpose(1, 2).reshape(-1, m, m, d)
        return out.view(b, h // m, w // m, m, m, d).transpose(2, 3).reshape(b, h, w, d)


class MSTB(nn.Module):
    """Multi-Scale Transformer Block (see the module docstring)."""

    def __init__(self, cfg: TADTConfig) -> None:
        super().__init__()
        c, q = cfg.channels, cfg.channels // 4
        self.quarter = q
        self.norm1 = nn.LayerNorm(c)
        self.branches = nn.ModuleList(
            [WindowBranch(q, m, cfg.head_dim) for m in cfg.local_windows]
            + [WindowBranch(q, cfg.global_window, cfg.head_dim, cfg.pooled)])
        self.proj = nn.Linear(c, c)
        self.norm2 = nn.LayerNorm(c)
        hidden = int(round(c * cfg.mlp_ratio))
        self.mlp = nn.Sequential(nn.Linear(c, hidden), nn.GELU(), nn.Linear(hidden, c))

    def forward(self, x: torch.Tensor, route: torch.Tensor | list[bool]) -> torch.Tensor:
        """``route``: 4 bools (inference: bypassed branches are skipped, and so are their
        columns of the projection), or (B, 4) floats in {0, 1} carrying gradient (training:
        every branch runs, scaled by its route)."""
        parts = self.norm1(x).split(self.quarter, dim=-1)
        if isinstance(route, torch.Tensor):
            out = torch.cat([branch(p) * route[:, j, None, None, None]
                             for j, (branch, p) in enumerate(zip(self.branches, parts))], -1)
            x = x + self.proj(out)
        else:
            on = [j for j in range(4) if route[j]]
            if on:
                out = torch.cat([self.branches[j](parts[j]) for j in on], -1)
                cols = torch.cat([torch.arange(j * self.quarter, (j + 1) * self.quarter)
                                  for j in on]).to(x.device)
                x = x + F.linear(out, self.proj.weight[:, cols], self.proj.bias)
            else:
                x = x + self.proj.bias
        return x + self.mlp(self.norm2(x))


class MSTG(nn.Module):
    """Two MSTBs sharing one route, a 3x3 conv, and a residual."""

    def __init__(self, cfg: TADTConfig) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([MSTB(cfg), MSTB(cfg)])
        self.conv = nn.Conv2d(cfg.channels, cfg.channels, 3, padding=1)

    def forward(self, x: torch.Tensor, route: torch.Tensor | list[bool]) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        t = x.permute(0, 2, 3, 1)
        for block in self.blocks:
            t = block(t, route)
        return x + self.conv(t.permute(0, 3, 1, 2))


class TARC(nn.Module):
    """Task-Aware Routing Controller: p (B, 4N) and beta (B,) from LR images and scales."""

    def __init__(self, branches: int, width: int) -> None:
        super().__init__()
        self.image = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(inplace=True),
                                   nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True))
        self.to_e = nn.Linear(width, branches)
        self.scale_branch = nn.Sequential(nn.Linear(1, 32), nn.ReLU(inplace=True),
                                          nn.Linear(32, 32), nn.ReLU(inplace=True),
                                          nn.Linear(32, 1))
        nn.init.zeros_(self.to_e.weight)
        nn.init.zeros_(self.to_e.bias)
        nn.init.zeros_(self.scale_branch[-1].weight)
        nn.init.constant_(self.scale_branch[-1].bias, math.log(math.e - 1.0))  # beta = 1: all on

    def forward(self, lr: torch.Tensor, scale: torch.Tensor, *,
                one_image: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """``one_image``: ``lr`` holds crops of one image, pooled together into one p."""
        pooled = self.image(lr).mean(dim=(2, 3))
        e = self.to_e(pooled.mean(dim=0, keepdim=True) if one_image else pooled)
        beta = F.softplus(self.scale_branch(scale.to(lr.dtype).view(-1, 1)))[:, 0]
        sig = torch.sigmoid(e)
        p = torch.clamp(beta[:, None] * e.shape[1] * sig / sig.sum(dim=1, keepdim=True), max=1.0)
        return p, beta

    def flops(self, pixels: int) -> int:
        width = self.to_e.in_features
        return pixels * (2 * 3 * 9 * width + 2 * width * 9 * width)


def sample_routes(p: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Eq. 4: r ~ Bernoulli(p) forward, dL/dr passed to p backward (straight-through)."""
    r = torch.bernoulli(p.detach(), generator=generator)
    return p + (r - p).detach()


class TADT(nn.Module):
    """Extractor + TARC + upsampler. ``forward(x, coords, route)``: ``route`` (4N,) bools for
    the image, or None for every branch on (the baseline network, ``--static``)."""

    #: why ``sr-tile export`` refuses it (``sr_tile.deploy.onnx``)
    onnx_unsupported = ("its implicit upsampler samples each tile's grid of a non-integer "
                        "scale; exporting the encoder and branch graphs is not done yet")

    def __init__(self, cfg: TADTConfig, *, name: str = "tadt") -> None:
        super().__init__()
        self.config = cfg
        self.scale = cfg.scale
        c = cfg.channels
        self.conv_first = nn.Conv2d(3, c, 3, padding=1)
        self.groups = nn.ModuleList(MSTG(cfg) for _ in range(cfg.groups))
        self.conv_after = nn.Conv2d(c, c, 3, padding=1)
        self.conv_out = nn.Conv2d(c, cfg.out_channels, 3, padding=1)
        self.tarc = TARC(cfg.branches, cfg.tarc_width)
        self.upsampler = build_upsampler(cfg.upsampler, cfg.out_channels, TRAIN_SCALES[1])
        m = cfg.size_multiple
        self.descriptor = ModelDescriptor(
            # 256 px tiles: the upsampler's queries over the overlaps are most of the
            # redundant work (1.66-1.95x the output at 128 px, 1.34-1.51x at 256 fitted to
            # the image); a 400x640 LR at x2 ran in 57 s instead of 119 s (1 thread,
            # 715 MB peak RSS instead of 750)
            name=name, scale=cfg.scale, size_multiple=m, margin=8, exact_tiling=False,
            default_tile=-(-256 // m) * m, default_overlap=32,
            routing=Routing.BRANCHES, trained_scales=TRAIN_SCALES,
            flops_note="classsr: 2x MACs of conv/linear layers and attention matmuls; "
                       f"{cfg.upsampler} per output pixel; routed rows include TARC")

    @property
    def runner_cls(self) -> type:
        from sr_tile.models.tadt.runner import BranchRunner

        return BranchRunner

    def extract(self, x: torch.Tensor, route: torch.Tensor | None) -> torch.Tensor:
        """(B, 3, h, w) -> (B, 64, h, w); ``route`` (4N,) bools, or (B, 4N) STE values, or
        None (all on)."""
        m = self.config.size_multiple
        if x.shape[-2] % m or x.shape[-1] % m:
            raise ValueError(f"{self.descriptor.name} needs sides that are multiples of {m}, "
                             f"got {tuple(x.shape[-2:])}")
        shallow = self.conv_first(x)
        feat = shallow
        for i, group in enumerate(self.groups):
            if route is None:
                sub: torch.Tensor | list[bool] = [True] * 4
            elif route.dim() == 2:
                sub = route[:, 4 * i:4 * i + 4]
            else:
                sub = [bool(v) for v in route[4 * i:4 * i + 4]]
            feat = group(feat, sub)
        return self.conv_out(self.conv_after(feat) + shallow)

    def forward(self, x: torch.Tensor, coords: tuple[torch.Tensor, torch.Tensor] | None = None,
                route: torch.Tensor | None = None) -> torch.Tensor:
        ys, xs = output_grid(x, self.scale) if coords is None else coords
        ys, xs = ys.to(x.dtype), xs.to(x.dtype)  # tile-local: small, float32 is exact enough
        return self.upsampler(self.extract(x, route), x, ys, xs, float(self.scale))

    def route(self, lr: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Inference routing of one image, given whole (1, 3, h, w) or as crops (n, 3, c, c):
        (4N,) bools [p > 0.5] and p. Scales above the training range route as its top
        (TARC's scale branch has never seen them; harder tasks should not get fewer branches)."""
        s = min(scale, TRAIN_SCALES[1])
        p, _ = self.tarc(lr, torch.tensor([s], device=lr.device), one_image=True)
        return p[0] > 0.5, p[0]

    # ------------------------------------------------------------------ FLOPs (classsr)
    def mstb_flops(self, tokens: int, on: list[bool]) -> int:
        cfg = self.config
        c, q = cfg.channels, cfg.channels // 4
        total = tokens * (2 * c * int(round(c * cfg.mlp_ratio)) * 2)  # MLP
        active = [j for j in range(4) if on[j]]
        total += tokens * 2 * (q * len(active)) * c  # slice-able projection
        for j in active:
            m = (cfg.local_windows[j] if j < 3 else cfg.global_window)
            keys = m * m if j < 3 else cfg.pooled ** 2
            total += tokens * (2 * q * 3 * q + 2 * 2 * keys * q)
        return total

    def extractor_flops(self, batch: int, h: int, w: int, route: torch.Tensor | None) -> int:
        cfg = self.config
        c, px = cfg.channels, batch * h * w
        on = [True] * cfg.branches if route is None else [bool(v) for v in route]
        convs = px * 2 * 9 * (3 * c + cfg.groups * c * c + c * c + c * cfg.out_channels)
        return convs + sum(2 * self.mstb_flops(px, on[4 * i:4 * i + 4])
                           for i in range(cfg.groups))

    def tile_flops(self, height: int, width: int) -> int:
        """The static network (every branch on) on one tile upscaled alone: what ``flops``
        counts after a pass, without the pass (TADT cannot run on the meta device, so a
        counted static run cost a real forward per tile shape)."""
        out = math.floor(height * self.scale + 0.5) * math.floor(width * self.scale + 0.5)
        return (self.extractor_flops(1, height, width, None)
                + self.upsampler_flops(height * width, out))

    def flops(self, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> int:
        """The ``sr_tile.flops`` protocol: every branch on, plus the upsampler's queries."""
        b, _, h, w = inputs[0].shape
        return (self.extractor_flops(b, h, w, None)
                + self.upsampler_flops(b * h * w, b * output.shape[-2] * output.shape[-1]))

    def upsampler_flops(self, cells: int, queries: int) -> int:
        return self.upsampler.flops(cells, queries)


def output_grid(x: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The LR coordinates (centres at integers) of the output rows and columns of ``x`` upscaled
    alone by ``scale`` (round half up): (k + 0.5) * in / out - 0.5."""
    def axis(n: int) -> torch.Tensor:
        out = int(math.floor(n * scale + 0.5))
        k = torch.arange(out, dtype=torch.float64)
        return ((k + 0.5) * n / out - 0.5).to(x.dtype).to(x.device).expand(x.shape[0], -1)

    return axis(x.shape[-2]), axis(x.shape[-1])
