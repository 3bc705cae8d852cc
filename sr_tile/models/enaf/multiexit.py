"""The one interface of every ENAF backbone: :class:`MultiExitSR`.

A trunk cut into ``segments``, three heads (exit 1, exit 2, full) reading after ``attach``
segments, and a MATLAB-bicubic global skip. Path 0 is bicubic alone; a path runs ONLY its own
trunk prefix and its own head (the authors' CARN code ran the full network for every exit).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from sr_tile.flops import Convention, count_flops
from sr_tile.models.descriptor import ModelDescriptor, Routing
from sr_tile.models.layers import bicubic


def exits_descriptor(name: str, scale: int) -> ModelDescriptor:
    """Tiling facts shared by the ENAF backbones.

    ENAF routes 32x32 LR patches (its estimator and FLOPs table are per 32x32 patch). margin 2:
    the bicubic skip reads 2 LR px each side, so with it every path-0 tile is exact, and the
    outermost 1-2 px are where the zero padding of the 3x3 conv stacks errs most. overlap 8 >
    2*margin leaves a 4 px blend ramp; the nets' receptive fields are wider, so not exact.
    Run static (``--static``), they take 256 px tiles: the overlap is recomputed far less
    than on 32 px tiles (1.78x the image's pixels), and oneDNN runs FSRCNN ~2x faster per
    pixel on 256 px tiles than on a whole 640x400 image (cache).
    """
    return ModelDescriptor(
        name=name, scale=scale, margin=2, exact_tiling=False, default_tile=32,
        default_overlap=8, static_tile=256, routing=Routing.EXITS,
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
