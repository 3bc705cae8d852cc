"""AdaFormer (AAAI-24): a conv encoder, L texture-relevant sparse attention blocks (TSAB) that
halt tokens and windows, a conv decoder and a pixel-shuffle upsampler.

Layout (paper sec. "Network Architecture"; public code per ``reference-implementations.md``):
``conv_first`` 3x3 3->C, ``encoder`` (residual blocks), AdaM = ``embed`` 1x1 C->D, L TSABs,
``unembed`` 1x1 D->C added to the encoder's output (a skip around AdaM, as SwinIR's body
has), ``decoder`` (residual blocks), ``upsample`` 3x3 C->3s^2 + PixelShuffle(s),
plus a MATLAB-bicubic global skip (not in the paper; as for sr-tile's ENAF backbones, the net
learns only the residual and an untrained model returns bicubic: residual learning is what
makes CPU-sized training budgets reach the quality bars).

A TSAB (pre-norm, residual):  ``x + proj(local(LN x) + global(LN x))``, then ``+ MLP(LN x)``:

* local: multi-head self-attention in non-overlapping S x S windows with a relative position
  bias (SwinIR's, no shift);
* global: M learned prototypes attend to the tokens (Eq. 10-11), then the tokens attend to the
  updated prototypes (Eq. 12-13).

**Halting** (Eq. 15-24). Before TSAB l the shared confidence estimator (3x3 conv D->E, Tanh,
3x3 conv E->1, Sigmoid) reads the tokens, and the halting score R accumulates its map C. With
threshold ``1 - eps``:

* a token with R >= 1 - eps is halted: from then on it keeps its value (no attention output,
  no MLP) and it is no key or value of the global branch; its R stops growing, so its
  confidence is never needed again and inference reads the estimator only around windows that
  still hold an active token;
* a window whose mean R >= 1 - eps is halted: its local attention is not computed, and the
  active tokens in it get no local term (they still take the global branch and the MLP).

R only grows, so a halted token or window stays halted. Training masks (``forward_masked``);
inference gathers the active windows and tokens, computes only those and scatters them back
(``forward_halting``); both give the same output (tested to 1e-5).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from sr_tile.models.descriptor import ModelDescriptor, Routing
from sr_tile.models.layers import ResidualBlock, bicubic, zero_init_

SCALES = (2, 3, 4)
#: eps_h per preset (``--preset``): M is the paper's 0.05, L halts later, S earlier. Weights
#: may carry their own (``presets`` in their metadata, read by ``create_model``).
DEFAULT_PRESETS: dict[str, dict[str, float]] = {
    "L": {"eps": 0.02}, "M": {"eps": 0.05}, "S": {"eps": 0.15},
}


@dataclass(frozen=True)
class AdaFormerConfig:
    """The architecture's knobs; the defaults are the paper's (C = D = 64, 8 + 8 residual
    blocks, 6 TSABs, 4 heads, 8x8 windows, 16 prototypes, MLP ratio 2, eps_h 0.05)."""

    scale: int = 4
    channels: int = 64
    dim: int = 64
    encoder_blocks: int = 8
    decoder_blocks: int = 8
    blocks: int = 6
    heads: int = 4
    window: int = 8
    prototypes: int = 16
    mlp_ratio: float = 2.0
    estimator_width: int = 32
    eps: float = 0.05

    def __post_init__(self) -> None:
        if self.scale not in SCALES:
            raise ValueError(f"adaformer supports scales {SCALES}, not x{self.scale}")
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} must be a multiple of heads {self.heads}")
        if not 0.0 < self.eps < 1.0:
            raise ValueError(f"eps must be in (0, 1), got {self.eps}")

    @property
    def hidden(self) -> int:
        return int(round(self.dim * self.mlp_ratio))


class WindowAttention(nn.Module):
    """Multi-head self-attention inside S x S windows, with a relative position bias."""

    def __init__(self, dim: int, heads: int, window: int) -> None:
        super().__init__()
        self.heads, self.window = heads, window
        self.qkv = nn.Linear(dim, 3 * dim)
        self.bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        nn.init.trunc_normal_(self.bias_table, std=0.02)
        coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window),
                                            indexing="ij")).flatten(1)  # (2, S*S)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
        self.register_buffer("bias_index", rel[..., 0] * (2 * window - 1) + rel[..., 1],
                             persistent=False)

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        """(n, S*S, D) windows -> (n, S*S, D) attention outputs (before the projection)."""
        n, t, d = windows.shape
        q, k, v = self.qkv(windows).view(n, t, 3, self.heads, d // self.heads).permute(
            2, 0, 3, 1, 4)
        bias = self.bias_table[self.bias_index].permute(2, 0, 1)[None]  # (1, heads, t, t)
        # a 4-D bias keeps SDPA on its fused CPU kernel: 3.2x faster than a 3-D one (math path
        # and mask checks) and 2.1x faster than written out, on 576 windows at 2 threads
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        return out.transpose(1, 2).reshape(n, t, d)


class PrototypeAttention(nn.Module):
    """The global branch: prototypes P (M x D, initialised to 1) gather from the tokens
    (Eq. 10-11), then the tokens read the gathered prototypes (Eq. 12-13)."""

    def __init__(self, dim: int, heads: int, prototypes: int) -> None:
        super().__init__()
        self.heads = heads
        self.prototypes = nn.Parameter(torch.ones(prototypes, dim))
        self.q_p = nn.Linear(dim, dim)
        self.kv_g = nn.Linear(dim, 2 * dim)
        self.q_g = nn.Linear(dim, dim)
        self.kv_p = nn.Linear(dim, 2 * dim)

    def _split(self, x: torch.Tensor) -> torch.Tensor:  # (..., n, D) -> (..., heads, n, hd)
        return x.unflatten(-1, (self.heads, -1)).transpose(-3, -2)

    def _merge(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(-3, -2).flatten(-2)

    def forward(self, tokens: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """(B, N, D) tokens -> (B, N, D). ``keep`` (B, N) bool: only those tokens are keys and
        values of the prototypes (an image with none gets zeros)."""
        k, v = self._split(self.kv_g(tokens)).chunk(2, dim=-1)  # (B, h, N, hd) each
        q = self._split(self.q_p(self.prototypes))[None].expand(tokens.shape[0], -1, -1, -1)
        mask = None
        if keep is not None:  # an image whose every token halted keeps them all as keys
            # (no all-masked softmax, whose NaNs would reach the gradients); its outputs
            # are discarded anyway
            mask = (keep | ~keep.any(dim=1, keepdim=True))[:, None, None, :]
        gathered = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, h, M, hd)
        kp, vp = self._split(self.kv_p(self._merge(gathered))).chunk(2, dim=-1)
        out = F.scaled_dot_product_attention(self._split(self.q_g(tokens)), kp, vp)
        return self._merge(out)


class TSAB(nn.Module):
    """Texture-relevant sparse attention block (see the module docstring)."""

    def __init__(self, cfg: AdaFormerConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.dim)
        self.local = WindowAttention(cfg.dim, cfg.heads, cfg.window)
        self.glob = PrototypeAttention(cfg.dim, cfg.heads, cfg.prototypes)
        self.proj = nn.Linear(cfg.dim, cfg.dim)
        self.norm2 = nn.LayerNorm(cfg.dim)
        self.mlp = nn.Sequential(nn.Linear(cfg.dim, cfg.hidden), nn.GELU(),
                                 nn.Linear(cfg.hidden, cfg.dim))

    def update(self, x: torch.Tensor, mixed: torch.Tensor) -> torch.Tensor:
        """The residual updates of tokens ``x`` (n, D) whose branch sum is ``mixed``."""
        x = x + self.proj(mixed)
        return x + self.mlp(self.norm2(x))


class ConfidenceEstimator(nn.Module):
    """Eq. 15: Sigmoid(Conv3x3(Tanh(Conv3x3(T)))), one module shared by every TSAB."""

    def __init__(self, dim: int, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(dim, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 1, 3, padding=1)
        nn.init.constant_(self.conv2.bias, -3.0)  # C ~ 0.05: an untrained model halts nothing

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, H, W, D) -> (B, H, W) confidence in (0, 1)."""
        x = tokens.permute(0, 3, 1, 2)
        return torch.sigmoid(self.conv2(torch.tanh(self.conv1(x))))[:, 0]

    def windows(self, tokens: torch.Tensor, wins: torch.Tensor, s: int) -> torch.Tensor:
        """The confidence of the tokens of windows ``wins`` (ids row-major over (B, H/s, W/s))
        only: (n, s, s), equal to ``forward(tokens)`` there. Each window is read with a 2-token
        halo (zeros beyond the tile, as the dense convs pad), and ``conv1``'s outputs outside
        the tile are zeroed as ``conv2``'s padding does."""
        b, h, w, _ = tokens.shape
        nwx = w // s
        img, rest = wins // ((h // s) * nwx), wins % ((h // s) * nwx)
        top, left = (rest // nwx) * s, (rest % nwx) * s  # in the unpadded map
        padded = F.pad(tokens, (0, 0, 2, 2, 2, 2))
        span = torch.arange(s + 4, device=tokens.device)
        rows, cols = top[:, None] + span, left[:, None] + span  # padded coordinates
        patches = padded[img[:, None, None], rows[:, :, None], cols[:, None, :]]  # (n,s+4,s+4,D)
        mid = torch.tanh(F.conv2d(patches.permute(0, 3, 1, 2), self.conv1.weight,
                                  self.conv1.bias))  # (n, E, s+2, s+2) at rows top-1..top+s
        inside_r = ((rows[:, 1:-1] - 2 >= 0) & (rows[:, 1:-1] - 2 < h)).to(mid.dtype)
        inside_c = ((cols[:, 1:-1] - 2 >= 0) & (cols[:, 1:-1] - 2 < w)).to(mid.dtype)
        mid = mid * (inside_r[:, :, None] * inside_c[:, None, :])[:, None]
        return torch.sigmoid(F.conv2d(mid, self.conv2.weight, self.conv2.bias))[:, 0]


@dataclass
class HaltingTrace:
    """What one halting forward pass did, for the reports: per TSAB the tokens and windows
    that ran, and per token how many TSABs it went through (0..L)."""

    tokens: int  # tokens per TSAB (B*H*W)
    windows: int  # windows per TSAB
    active_tokens: list[int] = field(default_factory=list)
    active_windows: list[int] = field(default_factory=list)
    estimator_px: list[int] = field(default_factory=list)  # per TSAB: conv1 outputs computed
    estimator_tokens: list[int] = field(default_factory=list)  # per TSAB: confidences computed
    depth: torch.Tensor | None = None  # (B, H, W) TSABs each token went through

    def token_sparsity(self) -> list[float]:
        return [1.0 - a / self.tokens for a in self.active_tokens]


class Residual(nn.Module):
    """A model's dense forward without its bicubic skip (what ONNX export traces)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x, skip=False)


class AdaFormer(nn.Module):
    """AdaFormer; ``forward`` is the dense network (no halting, ``--static``)."""

    def __init__(self, cfg: AdaFormerConfig, *, name: str = "adaformer") -> None:
        super().__init__()
        self.config = cfg
        self.scale = cfg.scale
        self.eps = cfg.eps
        self.presets = {k: dict(v) for k, v in DEFAULT_PRESETS.items()}
        c, d = cfg.channels, cfg.dim
        self.conv_first = nn.Conv2d(3, c, 3, padding=1)
        self.encoder = nn.Sequential(*(ResidualBlock(c) for _ in range(cfg.encoder_blocks)))
        self.embed = nn.Conv2d(c, d, 1)
        self.blocks = nn.ModuleList(TSAB(cfg) for _ in range(cfg.blocks))
        self.estimator = ConfidenceEstimator(d, cfg.estimator_width)
        self.unembed = nn.Conv2d(d, c, 1)
        self.decoder = nn.Sequential(*(ResidualBlock(c) for _ in range(cfg.decoder_blocks)))
        self.upsample = zero_init_(nn.Conv2d(c, 3 * cfg.scale ** 2, 3, padding=1))
        self.shuffle = nn.PixelShuffle(cfg.scale)
        self.descriptor = ModelDescriptor(
            name=name, scale=cfg.scale, size_multiple=cfg.window, margin=4,
            exact_tiling=False, default_tile=96, default_overlap=16, routing=Routing.TOKENS,
            flops_note="classsr: 2x MACs of conv/linear layers and of the attention matmuls; "
                       "halting rows count only the windows and tokens computed, and the "
                       "confidence estimator")

    @property
    def runner_cls(self) -> type:
        from sr_tile.models.adaformer.runner import HaltingRunner

        return HaltingRunner

    # ------------------------------------------------------------------ the three forwards
    def _encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) -> the encoder's features (B, C, H, W) and tokens (B, H, W, D)."""
        feats = self.encoder(self.conv_first(x))
        return feats, self.embed(feats).permute(0, 2, 3, 1)

    def _decode(self, x: torch.Tensor, feats: torch.Tensor, tokens: torch.Tensor, *,
                skip: bool = True) -> torch.Tensor:
        feats = feats + self.unembed(tokens.permute(0, 3, 1, 2))
        out = self.shuffle(self.upsample(self.decoder(feats)))
        return out + bicubic(x, self.scale) if skip else out

    def _check(self, x: torch.Tensor) -> None:
        s = self.config.window
        if x.shape[-2] % s or x.shape[-1] % s:
            raise ValueError(f"adaformer needs tile sides that are multiples of {s}, "
                             f"got {tuple(x.shape[-2:])}")

    def onnx_parts(self) -> list:
        """ONNX export (``sr_tile.deploy.onnx``): the dense network, one graph. Halting
        gathers a different set of tokens per tile, which no static graph holds, so ONNX
        Runtime runs AdaFormer dense (``--static``'s numbers)."""
        from sr_tile.deploy.onnx import ExportPart

        side = 4 * self.descriptor.size_multiple
        return [ExportPart("model", Residual(self), torch.rand(2, 3, side, side), skip=True)]

    def forward(self, x: torch.Tensor, *, skip: bool = True, depth: int | None = None
                ) -> torch.Tensor:
        """The dense network: every token through every TSAB (``skip=False``: without the
        bicubic global skip; ``depth``: through the first ``depth`` TSABs only, 0 for none,
        which says how much the TSABs add)."""
        self._check(x)
        feats, tokens = self._encode(x)
        b, h, w, d = tokens.shape
        for block in self.blocks[:depth]:
            y = block.norm1(tokens)
            mixed = (window_merge(block.local(window_split(y, self.config.window)), b, h, w)
                     + block.glob(y.reshape(b, h * w, d)).view(b, h, w, d))
            tokens = block.update(tokens, mixed)
        return self._decode(x, feats, tokens, skip=skip)

    def forward_masked(self, x: torch.Tensor, eps: float | None = None
                       ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Halting by masks (training): every token is computed, halted ones are discarded.
        Returns the output and the confidence map (B, H, W) read before each TSAB."""
        self._check(x)
        threshold = 1.0 - (self.eps if eps is None else eps)
        s = self.config.window
        feats, tokens = self._encode(x)
        b, h, w, d = tokens.shape
        score = tokens.new_zeros(b, h, w)
        confidences = []
        for block in self.blocks:
            conf = self.estimator(tokens.detach())  # L_USL trains the estimator alone
            confidences.append(conf)
            score = torch.where(score >= threshold, score, score + conf.detach())
            halted = score >= threshold  # (B, H, W)
            win_halted = _window_mean(score, s) >= threshold  # (B, H/s, W/s)
            y = block.norm1(tokens)
            local = window_merge(block.local(window_split(y, s)), b, h, w)
            local = local * ~_window_expand(win_halted, s)[..., None]
            glob = block.glob(y.reshape(b, h * w, d), keep=~halted.reshape(b, h * w))
            new = block.update(tokens, local + glob.view(b, h, w, d))
            tokens = torch.where(halted[..., None], tokens, new)
        return self._decode(x, feats, tokens), confidences

    @torch.no_grad()
    def forward_halting(self, x: torch.Tensor, eps: float | None = None
                        ) -> tuple[torch.Tensor, HaltingTrace]:
        """Halting for real (inference): only active windows and tokens are gathered,
        computed and scattered back. Same output as ``forward_masked``."""
        self._check(x)
        threshold = 1.0 - (self.eps if eps is None else eps)
        s = self.config.window
        feats, tokens = self._encode(x)
        b, h, w, d = tokens.shape
        nwy, nwx = h // s, w // s
        trace = HaltingTrace(tokens=b * h * w, windows=b * nwy * nwx)
        score = tokens.new_zeros(b, h, w)
        depth = torch.zeros(b, h, w, dtype=torch.uint8)
        flat = tokens.reshape(b * h * w, d).clone()  # the tokens, updated in place
        # token id (row-major) -> its window and its slot there, and the window-major order
        ids = torch.arange(b * h * w).view(b, nwy, s, nwx, s)
        win_of = torch.arange(b * nwy * nwx).view(b, nwy, 1, nwx, 1).expand_as(ids).reshape(-1)
        slot_of = (torch.arange(s)[:, None] * s + torch.arange(s)).view(1, 1, s, 1, s)
        slot_of = slot_of.expand_as(ids).reshape(-1)
        token_order = ids.permute(0, 1, 3, 2, 4).reshape(-1)
        device = x.device
        win_of, slot_of, token_order = win_of.to(device), slot_of.to(device), token_order.to(device)
        per_window = (s + 2) ** 2  # conv1 outputs a windowed read computes
        for block in self.blocks:
            active = (score < threshold).reshape(-1)
            needed = torch.nonzero(_window_any(active.view(b, h, w), s).reshape(-1)).flatten()
            if needed.numel() * per_window < b * h * w:  # read only around active tokens
                conf = torch.zeros_like(score)
                conf.view(-1)[token_order.view(-1, s * s)[needed]] = self.estimator.windows(
                    flat.view(b, h, w, d), needed, s).reshape(-1, s * s)
                trace.estimator_px.append(int(needed.numel()) * per_window)
                trace.estimator_tokens.append(int(needed.numel()) * s * s)
            else:
                conf = self.estimator(flat.view(b, h, w, d))
                trace.estimator_px.append(b * h * w)
                trace.estimator_tokens.append(b * h * w)
            score = torch.where(score >= threshold, score, score + conf)
            active = (score < threshold).reshape(-1)
            act = torch.nonzero(active).flatten()
            trace.active_tokens.append(int(act.numel()))
            if act.numel() == 0:
                trace.active_windows.append(0)
                break  # every later block would halt everything too: R only grows
            depth.view(-1)[act.cpu()] += 1
            win_active = (_window_mean(score, s) < threshold).reshape(-1)
            wins = torch.nonzero(win_active).flatten()
            trace.active_windows.append(int(wins.numel()))
            y = block.norm1(flat)  # norms cost no FLOPs under classsr; the cheap part
            mixed = torch.zeros(act.numel(), d, dtype=flat.dtype, device=device)
            if wins.numel():
                rows = token_order.view(-1, s * s)[wins]  # (n, S*S) token ids
                out = block.local(y[rows])  # (n, S*S, D)
                rank = torch.full((b * nwy * nwx,), -1, dtype=torch.long, device=device)
                rank[wins] = torch.arange(wins.numel(), device=device)
                r = rank[win_of[act]]
                inside = r >= 0
                mixed[inside] = out[r[inside], slot_of[act[inside]]]
            image_of = act // (h * w)
            for k in range(b):
                sel = torch.nonzero(image_of == k).flatten()
                if sel.numel():
                    mixed[sel] += block.glob(y[act[sel]][None])[0]
            flat[act] = block.update(flat[act], mixed)
        missing = len(self.blocks) - len(trace.active_tokens)
        trace.active_tokens += [0] * missing
        trace.active_windows += [0] * missing
        trace.estimator_px += [0] * missing
        trace.estimator_tokens += [0] * missing
        trace.depth = depth
        return self._decode(x, feats, flat.view(b, h, w, d)), trace

    # ------------------------------------------------------------------ FLOPs (classsr)
    def conv_flops(self, pixels: int) -> int:
        """FLOPs of every convolution outside the TSABs and the estimator, per image of
        ``pixels`` LR px."""
        cfg = self.config
        c, d, s2 = cfg.channels, cfg.dim, cfg.scale ** 2
        per_px = (2 * 3 * 9 * c + (cfg.encoder_blocks + cfg.decoder_blocks) * 2 * (2 * c * 9 * c)
                  + 2 * c * d + 2 * d * c + 2 * c * 9 * 3 * s2)
        return per_px * pixels

    def estimator_flops(self, conv1_px: int, tokens: int) -> int:
        """The confidence estimator computing ``conv1_px`` outputs of its first conv and the
        confidence of ``tokens`` tokens."""
        e, d = self.config.estimator_width, self.config.dim
        return conv1_px * 2 * d * 9 * e + tokens * 2 * e * 9

    def tsab_flops(self, windows: int, tokens: int, images: int) -> int:
        """One TSAB on ``windows`` active windows and ``tokens`` active tokens over
        ``images`` images (each with at least one active token)."""
        cfg = self.config
        d, t, m = cfg.dim, cfg.window ** 2, cfg.prototypes
        local = windows * (t * 2 * d * 3 * d + 2 * 2 * t * t * d)
        glob = (tokens * (2 * d * 2 * d + 2 * d * d + 2 * 2 * m * d + 2 * 2 * m * d)
                + images * (2 * m * d * d + 2 * m * d * 2 * d))
        rest = tokens * (2 * d * d + 2 * 2 * d * cfg.hidden)
        return local + glob + rest

    def dense_flops(self, batch: int, height: int, width: int) -> int:
        """The dense network on ``batch`` tiles of ``height x width`` LR px."""
        tokens = batch * height * width
        windows = tokens // self.config.window ** 2
        return (self.conv_flops(tokens)
                + len(self.blocks) * self.tsab_flops(windows, tokens, batch))

    def halting_flops(self, trace: HaltingTrace, batch: int) -> int:
        """What ``forward_halting`` computed: the convs, the estimator maps, and each TSAB's
        active windows and tokens (the prototype terms for every image, an upper bound)."""
        estimator = sum(self.estimator_flops(px, n) for px, n in zip(trace.estimator_px,
                                                                      trace.estimator_tokens))
        return (self.conv_flops(trace.tokens) + estimator + sum(
            self.tsab_flops(wn, tn, batch) for wn, tn in zip(trace.active_windows,
                                                             trace.active_tokens) if tn))

    def flops(self, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> int:
        """The ``sr_tile.flops`` protocol: the dense network's classsr FLOPs."""
        b, _, h, w = inputs[0].shape
        return self.dense_flops(b, h, w)


def window_split(x: torch.Tensor, s: int) -> torch.Tensor:
    """(B, H, W, D) -> (B * H/s * W/s, s*s, D), windows row-major per image."""
    b, h, w, d = x.shape
    return x.view(b, h // s, s, w // s, s, d).transpose(2, 3).reshape(-1, s * s, d)


def window_merge(windows: torch.Tensor, b: int, h: int, w: int) -> torch.Tensor:
    """The inverse of :func:`window_split`."""
    s = math.isqrt(windows.shape[1])
    d = windows.shape[-1]
    return windows.view(b, h // s, w // s, s, s, d).transpose(2, 3).reshape(b, h, w, d)


def _window_mean(score: torch.Tensor, s: int) -> torch.Tensor:
    """(B, H, W) -> (B, H/s, W/s) the mean of each window."""
    return F.avg_pool2d(score[:, None], s)[:, 0]


def _window_any(flags: torch.Tensor, s: int) -> torch.Tensor:
    """(B, H, W) bool -> (B, H/s, W/s): whether any token of each window is set."""
    return F.max_pool2d(flags[:, None].to(torch.float32), s)[:, 0] > 0


def _window_expand(flags: torch.Tensor, s: int) -> torch.Tensor:
    """(B, H/s, W/s) -> (B, H, W), each window's flag on its tokens."""
    return flags.repeat_interleave(s, dim=1).repeat_interleave(s, dim=2)
