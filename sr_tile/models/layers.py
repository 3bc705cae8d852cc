"""Building blocks shared by the ENAF multi-exit backbones, and the ENAF routing helpers.

* :class:`MultiExitSR` - the one interface of every multi-exit model: a trunk cut into
  ``segments``, three heads (exit 1, exit 2, full) reading after ``attach`` segments, and a
  MATLAB-bicubic global skip. Path 0 is bicubic alone; a path runs ONLY its own trunk prefix
  and its own head (the authors' CARN code ran the full network for every exit).
* :class:`ConvAct`, :class:`ResidualBlock`, :class:`UpsampleHead`, :class:`DeconvHead`.
* :class:`PSNREstimator` (ClassSR's classifier shape as a per-path PSNR regressor) and
  :func:`blank_score` / :func:`is_blank` (ENAF's blank vector, Eq. 8).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sr_tile.flops import Convention, count_flops
from sr_tile.imresize import imresize
from sr_tile.models.descriptor import ModelDescriptor, Routing
from sr_tile.ops import PixelShuffle, pixel_shuffle

__all__ = [
    "BLANK_THRESHOLD", "ConvAct", "DeconvHead", "MultiExitSR", "PSNREstimator", "ResidualBlock",
    "SubPixelConvTranspose2d", "UpsampleHead", "bicubic", "blank_score", "combine_psnr",
    "exits_descriptor", "gray_u8", "is_blank", "laplacian_abs", "make_act", "small_init_",
    "upsample_factors", "zero_init_",
]

BLANK_THRESHOLD = 10.0  # ENAF's epsilon: a patch is blank when its score is <= this


def bicubic(x: torch.Tensor, scale: int) -> torch.Tensor:
    """The global skip and path 0: MATLAB bicubic upscaling (no antialiasing when enlarging)."""
    return imresize(x, scale, antialias=False)


def make_act(kind: str, channels: int = 1) -> nn.Module:
    """``relu``, ``lrelu`` (slope 0.1, as FSRCNN exits / MSRResNet / ClassSR) or ``prelu``."""
    if kind == "relu":
        return nn.ReLU(inplace=True)
    if kind == "lrelu":
        return nn.LeakyReLU(0.1, inplace=True)
    if kind == "prelu":
        return nn.PReLU(channels)
    raise ValueError(f"unknown activation {kind!r}; use relu, lrelu or prelu")


def zero_init_(layer: nn.Module) -> nn.Module:
    """Zero a head's last layer so that an untrained path outputs exactly bicubic(x)."""
    for p in layer.parameters(recurse=False):
        nn.init.zeros_(p)
    return layer


def small_init_(layer: nn.Module, gain: float = 0.1) -> nn.Module:
    """Kaiming-normal weights scaled by ``gain``, zero bias (BasicSR's MSRResNet head init).

    An alternative to :func:`zero_init_` for a full head trained from scratch: with a zero
    last layer the trunk gets no gradient until that layer grows. (It did not by itself stop
    an L1 run from idling at bicubic quality; ``l2_warmup`` did, see ``PhaseConfig``.)
    """
    nn.init.kaiming_normal_(layer.weight)
    with torch.no_grad():
        layer.weight.mul_(gain)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer


def upsample_factors(scale: int) -> tuple[int, ...]:
    """Pixel-shuffle stages: log2(scale) x2 stages for powers of two, one x3 stage for 3."""
    if scale == 3:
        return (3,)
    if scale >= 2 and scale & (scale - 1) == 0:
        return (2,) * int(math.log2(scale))
    raise ValueError(f"pixel-shuffle upsampling supports x3 and powers of two, not x{scale}")


class ConvAct(nn.Sequential):
    """``conv`` (same padding) followed by ``act`` (omitted when ``act`` is None)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *,
                 act: str | None = None, groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2,
                              groups=groups)
        if act is not None:
            self.act = make_act(act, out_channels)


class ResidualBlock(nn.Module):
    """EDSR/MSRResNet block without BN: ``x + conv2(relu(conv1(x)))``.

    Kaiming init scaled by ``init_scale`` (BasicSR's 0.1) keeps a deep stack near identity.
    """

    def __init__(self, channels: int, *, init_scale: float = 0.1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.act = nn.ReLU(inplace=True)
        for conv in (self.conv1, self.conv2):
            nn.init.kaiming_normal_(conv.weight)
            conv.weight.data.mul_(init_scale)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.act(self.conv1(x)))


class UpsampleHead(nn.Module):
    """Pixel-shuffle head: per stage ``upconv`` (3x3, to width*r^2) -> PixelShuffle(r) -> act,
    then an optional ``conv_hr`` (3x3 + act) and ``conv_last`` (3x3 to ``out_channels``, zeroed).

    ``widths[i]`` is the channel count after stage i's shuffle, so one class covers the full
    CARN-M / MSRResNet upsamplers and their lighter exit heads.
    """

    def __init__(self, *, in_channels: int, widths: Sequence[int], factors: Sequence[int],
                 act: str, groups: int = 1, hr_conv: bool = False, out_channels: int = 3) -> None:
        super().__init__()
        if len(widths) != len(factors):
            raise ValueError(f"one width per stage: widths {tuple(widths)}, factors {factors}")
        if act == "prelu":
            raise ValueError("UpsampleHead reuses one stateless activation; use relu or lrelu")
        self.upconv = nn.ModuleList()
        self.shuffle = nn.ModuleList()
        cin = in_channels
        for width, r in zip(widths, factors):
            self.upconv.append(nn.Conv2d(cin, width * r * r, 3, padding=1, groups=groups))
            self.shuffle.append(PixelShuffle(r))
            cin = width
        self.act = make_act(act)
        self.conv_hr = nn.Conv2d(cin, cin, 3, padding=1) if hr_conv else None
        self.conv_last = zero_init_(nn.Conv2d(cin, out_channels, 3, padding=1))

    @property
    def output_layer(self) -> nn.Module:
        return self.conv_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for upconv, shuffle in zip(self.upconv, self.shuffle):
            x = self.act(shuffle(upconv(x)))
        if self.conv_hr is not None:
            x = self.act(self.conv_hr(x))
        return self.conv_last(x)


class SubPixelConvTranspose2d(nn.ConvTranspose2d):
    """A stride-``s`` transposed conv computed as one LR conv to ``s*s`` phases + pixel shuffle.

    Same parameters, state dict and output as :class:`nn.ConvTranspose2d` (to float rounding;
    tested), 2.5-3x faster on CPU for FSRCNN's 9x9 stride-4 deconv, whose native kernel is slow.
    Output pixel ``s*q + r`` is ``sum_d W[s*d + r + p] * x[q - d]``, so phase ``r`` is a
    small correlation over ``d``; the phase weights are gathered from ``weight`` on every call
    (cheap, and differentiable, so training uses the same path). FLOPs hooks still see a
    ``ConvTranspose2d`` with the same output: ``classsr`` counts it at output resolution as
    before; ``torch`` counts the conv that actually runs. Needs ``K - 2p + output_padding = s``
    (output exactly ``s`` x the input), groups 1 and dilation 1.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, stride: int,
                 padding: int, output_padding: int) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                         output_padding=output_padding)
        s, k, p = stride, kernel_size, padding
        if k - 2 * p + output_padding != s:
            raise ValueError("SubPixelConvTranspose2d needs kernel - 2*padding + output_padding "
                             f"== stride, got {k}, {p}, {output_padding}, {s}")
        d_lo, d_hi = -((p + s - 1) // s), (k - 1 - p) // s  # taps d with 0 <= s*d + r + p < k
        taps = d_hi - d_lo + 1
        index = torch.full((s, s, taps, taps), k * k, dtype=torch.long)  # k*k: a zero slot
        for ry in range(s):
            for rx in range(s):
                for ty in range(taps):
                    for tx in range(taps):
                        # tap t reads x[q + t - d_hi], i.e. d = d_hi - t
                        ky, kx = s * (d_hi - ty) + ry + p, s * (d_hi - tx) + rx + p
                        if 0 <= ky < k and 0 <= kx < k:
                            index[ry, rx, ty, tx] = ky * k + kx
        self.register_buffer("phase_index", index.flatten(), persistent=False)
        self.taps, self.pad = taps, (d_hi, -d_lo, d_hi, -d_lo)

    def phase_weight(self) -> torch.Tensor:
        """(out * s * s, in, taps, taps): the LR conv's weight, phases in pixel-shuffle order."""
        cin, cout = self.weight.shape[:2]
        s, t = self.stride[0], self.taps
        flat = F.pad(self.weight.reshape(cin, cout, -1), (0, 1))  # append the zero slot
        w = flat.index_select(2, self.phase_index).reshape(cin, cout, s * s, t, t)
        return w.permute(1, 2, 0, 3, 4).reshape(cout * s * s, cin, t, t)

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        s = self.stride[0]
        bias = None if self.bias is None else self.bias.repeat_interleave(s * s)
        left, right = self.pad[:2]
        if left == right:  # the conv pads itself: no padded copy of the input (x2, x4)
            y = F.conv2d(x, self.phase_weight(), bias, padding=left)
        else:
            y = F.conv2d(F.pad(x, self.pad), self.phase_weight(), bias)
        return pixel_shuffle(y, s)


class DeconvHead(nn.Module):
    """FSRCNN-style head: ``conv`` (k x k) -> ``act`` -> ``deconv`` (9x9 transposed, stride =
    scale, zeroed). Output is exactly ``scale`` x the input size (padding 4, output_padding s-1)."""

    def __init__(self, *, in_channels: int, mid_channels: int, scale: int, kernel_size: int,
                 act: str, out_channels: int = 3, deconv_size: int = 9) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, mid_channels, kernel_size, padding=kernel_size // 2)
        self.act = make_act(act, mid_channels)
        self.deconv = zero_init_(SubPixelConvTranspose2d(
            mid_channels, out_channels, deconv_size, stride=scale, padding=deconv_size // 2,
            output_padding=scale - 1))

    @property
    def output_layer(self) -> nn.Module:
        return self.deconv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.deconv(self.act(self.conv(x)))


def exits_descriptor(name: str, scale: int) -> ModelDescriptor:
    """Tiling facts shared by the ENAF backbones.

    ENAF routes 32x32 LR patches (its estimator and FLOPs table are per 32x32 patch). margin 2:
    the bicubic skip reads 2 LR px each side, so with it every path-0 tile is exact, and the
    outermost 1-2 px are where the zero padding of the 3x3 conv stacks errs most. overlap 8 >
    2*margin leaves a 4 px blend ramp; the nets' receptive fields are wider, so not exact.
    """
    return ModelDescriptor(
        name=name, scale=scale, margin=2, exact_tiling=False, default_tile=32,
        default_overlap=8, routing=Routing.EXITS,
        flops_note="classsr: 2x MACs of conv/linear, transposed convs at output resolution; "
                   "path 0 (bicubic) counted as 0; the PSNR estimator is included in flops")


class _PathNet(nn.Module):
    """The modules of one path (prefix + head), only for counting its FLOPs."""

    def __init__(self, segments: Sequence[nn.Module], head: nn.Module) -> None:
        super().__init__()
        self.segments = nn.ModuleList(segments)
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for segment in self.segments:
            x = segment(x)
        return self.head(x)


class MultiExitSR(nn.Module):
    """A multi-exit SR network: path 0 bicubic, paths 1-2 early exits, path 3 the full net.

    Path p >= 1 computes ``heads[p-1](segments[:attach[p-1]](x)) + bicubic(x)`` and nothing
    else. ``attach`` must be non-decreasing and the full head must read after the last segment.
    """

    num_paths: int = 4

    def __init__(self, *, segments: Sequence[nn.Module], heads: Sequence[nn.Module],
                 attach: tuple[int, int, int], scale: int, descriptor: ModelDescriptor) -> None:
        super().__init__()
        self.segments = nn.ModuleList(segments)
        self.heads = nn.ModuleList(heads)
        attach = tuple(int(a) for a in attach)
        if len(self.heads) != self.num_paths - 1 or len(attach) != self.num_paths - 1:
            raise ValueError(f"need {self.num_paths - 1} heads and attach points")
        if not 1 <= attach[0] <= attach[1] <= attach[2] == len(self.segments):
            raise ValueError(f"attach {attach} must be non-decreasing in [1, {len(self.segments)}] "
                             "and end at the last segment")
        self.attach: tuple[int, int, int] = attach  # type: ignore[assignment]
        self.scale = scale
        self.descriptor = descriptor
        self._flops_cache: dict[tuple[str, int, int], tuple[int, int, int, int]] = {}

    def depth(self, path: int) -> int:
        """How many trunk segments ``path`` runs (0 for bicubic)."""
        if not 0 <= path < self.num_paths:
            raise ValueError(f"path must be in [0, {self.num_paths - 1}], got {path}")
        return 0 if path == 0 else self.attach[path - 1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The static backbone: path 3."""
        return self.forward_path(x, self.num_paths - 1)

    def forward_path(self, x: torch.Tensor, path: int) -> torch.Tensor:
        """Output of one path for the whole batch; runs only that path's prefix and head."""
        path = int(path)
        return self.path_outputs(x, (path,))[path]

    def path_outputs(self, x: torch.Tensor, paths: Sequence[int]) -> dict[int, torch.Tensor]:
        """Outputs of several paths for the whole batch: the trunk runs once, as deep as the
        deepest of them, and each head reads it where it is attached."""
        skip = bicubic(x, self.scale)
        outs = {0: skip} if 0 in paths else {}
        feats = x
        for k in range(1, max((self.depth(p) for p in paths), default=0) + 1):
            feats = self.segments[k - 1](feats)
            for p in paths:
                if p > 0 and self.attach[p - 1] == k:
                    outs[p] = self.heads[p - 1](feats) + skip
        return outs

    def forward_paths(self, x: torch.Tensor, paths: torch.Tensor) -> torch.Tensor:
        """Batched routed execution, ``paths[i]`` chosen for patch ``x[i]``.

        The trunk runs once per patch, segment by segment, on only the patches still needing
        it; each head runs on its own group as soon as its segment is done; path-0 patches run
        no network at all. Equal to stacking ``forward_path(x[i:i+1], paths[i])``.
        """
        paths = torch.as_tensor(paths).detach().to("cpu", torch.long)
        if paths.shape != (x.shape[0],):
            raise ValueError(f"paths must have shape ({x.shape[0]},), got {tuple(paths.shape)}")
        if paths.numel() and not bool(((paths >= 0) & (paths < self.num_paths)).all()):
            raise ValueError(f"paths must be in [0, {self.num_paths - 1}]")
        out = bicubic(x, self.scale)
        depth = torch.tensor((0, *self.attach))[paths]
        idx = torch.nonzero(depth > 0).flatten()  # patches in the trunk batch, CPU
        feats = x if idx.numel() == x.shape[0] else x[idx.to(x.device)]  # keeps channels-last
        for k, segment in enumerate(self.segments, start=1):
            if idx.numel() == 0:
                break
            feats = segment(feats)
            for h, head in enumerate(self.heads):
                sel = paths[idx] == h + 1
                if self.attach[h] != k or not bool(sel.any()):
                    continue
                every = bool(sel.all())  # no gather when the whole group takes this head
                y = head(feats if every else feats[sel.to(x.device)])
                # out holds the skip: add the head's residual in place, one pass over its rows
                out.index_add_(0, (idx if every else idx[sel]).to(x.device), y)
            keep = depth[idx] > k
            if not bool(keep.all()):
                idx, feats = idx[keep], feats[keep.to(x.device)]
        return out

    def path_flops(self, height: int, width: int,
                   convention: Convention = "classsr") -> tuple[int, int, int, int]:
        """FLOPs of each path for one ``height x width`` LR patch (path 0 = 0), cached."""
        key = (convention, int(height), int(width))
        if key not in self._flops_cache:
            costs = [0]
            for head, depth in zip(self.heads, self.attach):
                net = _PathNet(list(self.segments[:depth]), head)
                costs.append(count_flops(net, (1, 3, *key[1:]), convention))
            self._flops_cache[key] = tuple(costs)  # type: ignore[assignment]
        return self._flops_cache[key]


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
    """

    def __init__(self, *, num_paths: int = 4, in_channels: int = 3, width: int = 128,
                 feat: int = 32, init_psnr: float = 30.0) -> None:
        super().__init__()
        self.conv_first = nn.Conv2d(in_channels, width, 4, stride=4)
        self.act = nn.LeakyReLU(0.1, inplace=True)
        self.body = nn.Sequential(*(ConvAct(width, width, 1, act="lrelu") for _ in range(3)))
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

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, feat, h // 4, w // 4): every 4x4 cell's features, each cell read alone."""
        return self.conv_last(self.body(self.act(self.conv_first(x))))

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
