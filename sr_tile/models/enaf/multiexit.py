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
from sr_tile.models.layers import SubPixelConvTranspose2d, bicubic


UNIT = 32  # the LR patch side path FLOPs are counted on (``MultiExitSR.path_flops``)


def exits_descriptor(name: str, scale: int, *, cell_halo: int | None = None) -> ModelDescriptor:
    """Tiling facts shared by the ENAF backbones.

    ENAF routes 32x32 LR patches (its estimator and FLOPs table are per 32x32 patch).

    A backbone that routes by tiles (``cell_halo`` None) takes 32 px tiles with 8 px of
    overlap. margin 2: the bicubic skip reads 2 LR px each side, so with it every path-0 tile
    is exact, and the outermost 1-2 px are where the zero padding of the 3x3 conv stacks errs
    most. overlap 8 > 2*margin leaves a 4 px blend ramp; the nets' receptive fields are
    wider, so not exact.

    A backbone that routes by cells (``MultiExitSR.cell_path``; ``cell_halo`` its largest
    halo) takes 512 px tiles whose margin covers every halo, so each cell's output is that
    of the whole image wherever the tile edges fall (``exact_tiling``).

    Run static (``--static``), they take 256 px tiles with a margin of 2 and 8 px of overlap:
    the overlap is recomputed far less than on 32 px tiles (1.78x the image's pixels), and
    oneDNN runs FSRCNN ~2x faster per pixel on 256 px tiles than on a whole 640x400 image
    (cache).
    """
    routing = dict(margin=2, default_tile=32, default_overlap=8) if cell_halo is None else dict(
        margin=cell_halo, default_tile=512, default_overlap=2 * cell_halo + 8,
        exact_tiling=True, static_overlap=8, static_margin=2)
    return ModelDescriptor(
        name=name, scale=scale, static_tile=256, routing=Routing.EXITS, **routing,
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


class CellPath(nn.Module):
    """Path ``p`` of a backbone run without padding (``MultiExitSR.cell_path``).

    Input: windows of an LR image with ``halo`` (lo, hi) context pixels on each side.
    Output: the head's residual of exactly the window's inside, ``scale`` x its size. After
    each step but the last, what lies outside the image is zeroed, as the whole network's
    zero padding does at every layer, so that cells at the image's border match it too
    (``forward``). Each step is a twin sharing the backbone's parameters; ``window_flops``
    counts what runs (classsr: every conv at the size it outputs, the deconv at output
    resolution). It is not a submodule of the backbone (its state dict would repeat the
    backbone's)."""

    def __init__(self, steps: Sequence[tuple[nn.Module, int, int]], scale: int) -> None:
        super().__init__()
        self.steps = nn.ModuleList(step for step, _, _ in steps)
        self.cuts = [(lo, hi) for _, lo, hi in steps]
        self.halo = (sum(lo for lo, _ in self.cuts), sum(hi for _, hi in self.cuts))
        self.scale = scale

    def forward(self, x: torch.Tensor,
                outside: Sequence[tuple[int, int, int, int]] | None = None) -> torch.Tensor:
        """Windows (N, 3, h, w) -> (N, 3, s * (h - lo - hi), s * (w - lo - hi)).

        What lies beyond the image is given either as ``outside``, each window's pixels
        beyond it at the top, bottom, left and right (those strips are zeroed in place), or
        as a 4th input channel, 1 inside the image (multiplied in: the form a traced ONNX
        graph takes)."""
        inside = x[:, 3:] if x.shape[1] == 4 else None
        x = x[:, :3]
        edges = [list(o) for o in outside or []]
        for step, (lo, hi) in zip(self.steps[:-1], self.cuts):
            x = step(x)
            if inside is not None:
                inside = inside[..., lo:inside.shape[-2] - hi, lo:inside.shape[-1] - hi]
                x = x * inside
            for i, edge in enumerate(edges):
                edge[:] = (max(0, v - c) for v, c in zip(edge, (lo, hi, lo, hi)))
                top, bottom, left, right = edge
                x[i, :, :top], x[i, :, x.shape[-2] - bottom:] = 0, 0  # [H - 0:] is empty
                x[i, :, :, :left], x[i, :, :, x.shape[-1] - right:] = 0, 0
        return self.steps[-1](x)

    def window_flops(self, height: int, width: int) -> int:
        """classsr FLOPs of one window whose inside is ``height x width`` LR px: what the
        hooks count (tested), without running anything."""
        lo, hi = self.halo
        h, w, total = height + lo + hi, width + lo + hi, 0
        for m in self.steps.modules():
            if isinstance(m, SubPixelConvTranspose2d):
                a, b = m.pad[:2]
                h, w = (h - a - b) * self.scale, (w - a - b) * self.scale
                total += 2 * m.in_channels * m.kernel_size[0] ** 2 * m.out_channels * h * w
            elif isinstance(m, nn.Conv2d):
                k = m.kernel_size[0]
                h, w = h - k + 1, w - k + 1
                total += 2 * m.in_channels // m.groups * k * k * m.out_channels * h * w
        return total

    def flops(self, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> int:
        """The ``sr_tile.flops`` protocol (classsr)."""
        lo, hi = self.halo
        return inputs[0].shape[0] * self.window_flops(inputs[0].shape[-2] - lo - hi,
                                                      inputs[0].shape[-1] - lo - hi)


class MultiExitSR(nn.Module):
    """A multi-exit SR network: path 0 bicubic, paths 1-2 early exits, path 3 the full net.

    Path p >= 1 computes ``heads[p-1](segments[:attach[p-1]](x)) + bicubic(x)`` and nothing
    else. ``attach`` must be non-decreasing and the full head must read after the last segment.
    """

    num_paths: int = 4

    def __init__(self, *, segments: Sequence[nn.Module], heads: Sequence[nn.Module],
                 attach: tuple[int, int, int], scale: int, name: str,
                 cells: bool = True) -> None:
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
        self._flops_cache: dict[str, tuple[int, int, int, int]] = {}
        self._cells: dict[int, CellPath | None] = {}  # path -> CellPath
        self._cell_runs: dict[int, nn.Module] = {}  # path -> what runs it (ONNX Runtime's)
        self.cells = cells  # route by cells where every path can (see ``runs_cells``)
        halo = (max(max(self.cell_path(p).halo) for p in range(1, self.num_paths))
                if self.runs_cells else None)
        self.descriptor = exits_descriptor(name, scale, cell_halo=halo)

    def cell_path(self, path: int) -> CellPath | None:
        """Path ``path`` (>= 1) as a :class:`CellPath`, or None when a layer of it cannot run
        without padding (a residual block: only FSRCNN's plain conv stacks can).

        Run on each routing cell's window with its halo, the trunk and head compute the cell's
        output exactly as they would inside the whole image (float rounding aside) and nothing
        else: no overlap to recompute or blend."""
        if path not in self._cells:
            segments = list(self.segments[:self.depth(path)])
            plain = all(isinstance(segment, nn.Sequential) for segment in segments)
            layers = [layer for segment in segments for layer in segment] if plain else []
            layers.append(self.heads[path - 1])
            if not (plain and all(hasattr(layer, "valid") for layer in layers)):
                self._cells[path] = None
            else:
                self._cells[path] = CellPath([step for layer in layers
                                              for step in layer.valid()], self.scale)
        return self._cells[path]

    def run_cells(self, path: int, windows: torch.Tensor,
                  outside: Sequence[tuple[int, int, int, int]]) -> torch.Tensor:
        """``cell_path(path)`` on a batch of windows with their pixels ``outside`` the image
        (see ``CellPath.forward``), or the module set in its place (an ONNX graph: it takes
        them as a 4th channel)."""
        if path not in self._cell_runs:
            return self._cells[path](windows, outside)
        n, _, h, w = windows.shape
        inside = windows.new_ones(n, 1, h, w)
        for i, (top, bottom, left, right) in enumerate(outside):
            inside[i, :, :top], inside[i, :, h - bottom:] = 0, 0  # [h - 0:] is empty
            inside[i, :, :, :left], inside[i, :, :, w - right:] = 0, 0
        return self._cell_runs[path](torch.cat([windows, inside], dim=1))

    def set_cell_path(self, path: int, module: nn.Module) -> None:
        """Run path ``path``'s cells with ``module`` (an ONNX Runtime part of its CellPath)."""
        self._cell_runs[path] = module

    @property
    def runs_cells(self) -> bool:
        """Whether it routes by cells: asked to (``cells``), and every path can
        (``cell_path``)."""
        return self.cells and all(self.cell_path(p) is not None
                                  for p in range(1, self.num_paths))

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
        """FLOPs of each path for one ``height x width`` LR patch (path 0 = 0).

        Every layer is a same-padded conv (or a transposed one at ``scale`` x), whose FLOPs
        are a whole number per LR pixel: counted once per convention on one ``UNIT`` patch
        and scaled, exactly (tested), so no patch size runs the counter again."""
        if convention not in self._flops_cache:
            costs = [0]
            for head, depth in zip(self.heads, self.attach):
                net = _PathNet(list(self.segments[:depth]), head)
                costs.append(count_flops(net, (1, 3, UNIT, UNIT), convention))
            self._flops_cache[convention] = tuple(costs)  # type: ignore[assignment]
        pixels = int(height) * int(width)
        return tuple(c * pixels // (UNIT * UNIT) for c in self._flops_cache[convention])
