"""ENAF's runner: the estimator and the blank vector pick a path for every patch (Eq. 9), or,
when the weights carry one, the texture router (``texture``) with the estimator's image gain.

The image is read once before its tiles run (``prepare``): the estimator's sub-tile PSNRs come
from one map of the whole image and every patch on the sub-tile grid combines its own from it;
the blank test sums each patch row's |Laplacian| once.

Two ways to run the chosen paths, by what the backbone can do:

- **Cells** (FSRCNN: ``MultiExitSR.runs_cells``). The patches are the 32x32 cells of one grid
  over the image, decided once per image; the tiler's tiles are large blocks. In a block each
  cell runs only its path, without padding, on its own window plus the path's halo
  (``CellPath``): the cell's output exactly as inside the whole image, with nothing recomputed
  or blended between cells; path-0 cells run nothing beyond the block's one bicubic skip.
- **Tiles** (CARN-M, SRResNet: residual blocks need padding). The patches are the tiler's
  32x32 tiles with 8 px of overlap, run grouped by path, the trunk shared and cut at each
  tile's depth, and blended.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from sr_tile.errors import ConfigError
from sr_tile.models.enaf import texture
from sr_tile.models.enaf.estimator import BLANK_THRESHOLD, combine_psnr, gray_u8, laplacian_abs
from sr_tile.models.enaf.model import ESTIMATOR_PART, EnafSR
from sr_tile.models.enaf.routing import eta_for_budget, fuse, psnr_losses, resolve
from sr_tile.models.layers import bicubic
from sr_tile.routemap import RouteMap, owned_span, paint_tiles
from sr_tile.routing import RoutingOptions
from sr_tile.runner import FLOPS_CONVENTION, TileRunner
from sr_tile.tiler import TileConfig, TilePlan, TileWindow, to_float

ESTIMATOR_BATCH = 256  # off-grid tiles per estimator pass (~2x faster per tile than 32)
ESTIMATOR_ROWS = 256  # LR rows per band of the whole-image estimator map (bounds its memory)
ESTIMATOR_BLOCK = 32  # block side a band is cut into for the estimator's batch
CELL = 32  # a routing cell's side: the patch ENAF's estimator and FLOPs table are made for
CELL_GRID = TileConfig(CELL, 0, 0)  # the cells of an image: one grid from its top-left corner
#: LR pixels of cell windows per pass (halos included): small passes keep the activations
#: in cache (FSRCNN ran ~2x faster per pixel in 16-64 windows of 46x46 than in one large tile)
CELL_PIXELS = 16384


class ExitRunner(TileRunner):
    """ENAF: the estimator and blank vector pick a path per cell or tile (Eq. 9), run by
    ``run_cells`` or ``backbone.forward_paths`` (see the module docstring). ``flops`` counts
    the work of the paths taken plus the estimator; ``flops_static`` the full network on
    every tile. Alpha with ``alpha="model"`` takes the full network.
    """

    PATH_NAMES = ("bicubic", "exit1", "exit2", "full")
    #: what a worker that runs tiles needs of ``prepare`` (the losses, not what made them)
    HANDOFF = ("_tiling", "_size", "_losses", "eta", "_grid", "_cell_paths")

    def __init__(self, model: EnafSR, *, device: torch.device, alpha: str,
                 routing: RoutingOptions | None = None) -> None:
        routing = routing or RoutingOptions()
        self.routing = routing
        self.eta, self.gamma = resolve(routing, model.presets)
        if routing.path is not None:
            self.eta = None
        super().__init__(model, device=device, alpha=alpha)
        #: route by cells in large tiles (see the module docstring), else by tiles
        self.cells = model.backbone.runs_cells
        if model.router is not None and not self.cells:
            raise ConfigError(f"{model.descriptor.name}: its weights' texture router is fitted "
                              "on cells, and this backbone routes by tiles")

    def reset(self) -> None:
        super().reset()
        self.paths: list[int] = []
        self._u = torch.empty(0, self.model.num_paths)  # every patch's estimate, row-major
        self._blank = torch.empty(0, dtype=torch.bool)
        self._stats = torch.empty(0, 2, dtype=torch.float64)  # texture statistics per patch
        self._losses = torch.empty(0, self.model.num_paths)  # what ``fuse`` reads, per patch
        self._tiling: TileConfig | None = None
        self._size = (0, 0)
        #: cells: each cell row's and column's LR span, and each cell's path, row-major
        self._grid: tuple[list, list] | None = None
        self._cell_paths: list[int] = []

    def prepare(self, image: np.ndarray, tiling: TileConfig) -> None:
        """Estimate every tile before the first batch runs; with a budget, then pick this
        image's eta. The estimator and the blank test read the whole image once, not tile by
        tile: overlapping tiles would read most pixels ~1.8 times (see ``_estimate``)."""
        self._tiling, self._size = tiling, image.shape[:2]
        if self.cells:
            py, px = CELL_GRID.plans(*self._size)
            self._grid = ([owned_span(py, i, 0) for i in range(py.count)],
                          [owned_span(px, j, 0) for j in range(px.count)])
            height, width = py.tile, px.tile
        else:
            py, px = tiling.plans(*self._size)
            height, width = tiling.tile_shape(*self._size)
        for convention in ("executed", FLOPS_CONVENTION):  # first counts here, untimed
            self.model.costs(height, width, convention)
        if self.routing.path is not None:
            self._cell_paths = [self.routing.path] * (py.count * px.count)
            return
        self.model.estimator_flops(height, width)
        self.model.estimator_flops(ESTIMATOR_BLOCK, ESTIMATOR_BLOCK)
        start = time.perf_counter()
        color = image[..., : 1 if image.shape[2] in (1, 2) else 3]
        with torch.inference_mode():
            self._u = self._estimate(color, py, px)
            self._blank = (self._blank_flags(color, py, px) if self.gamma != 0
                           else torch.zeros(py.count * px.count, dtype=torch.bool))
            if self.model.router is not None:
                self._stats = texture.patch_statistics(color, *self._grid)
                self.flops += texture.FLOPS_PER_PIXEL * self._size[0] * self._size[1]
        self._losses = self.path_losses(self.gamma)
        if self.routing.budget is not None:
            backbone = self.model.backbone
            full = backbone.path_flops(height, width)[-1]
            measure = self.model.costs(height, width, FLOPS_CONVENTION)
            if self.cells:  # a cell alone pays its halo: a bound on what its run costs
                measure = torch.tensor([0.0] + [
                    backbone.cell_path(p).window_flops(height, width) / full
                    for p in range(1, self.model.num_paths)], dtype=torch.float64)
            self.eta = eta_for_budget(
                self._losses, self.model.costs(height, width), budget=self.routing.budget,
                overhead=self.flops / (len(self._u) * full), measure=measure)
        if self.cells:
            self._cell_paths = fuse(self._losses, self.model.costs(height, width),
                                    eta=self.eta).tolist()
        self.seconds += time.perf_counter() - start

    def _estimate(self, color: np.ndarray, py: TilePlan, px: TilePlan) -> torch.Tensor:
        """(tiles, P) the estimator's PSNRs of every tile, row-major; counts its FLOPs.

        Tiles on the sub-tile grid (start and size multiples of ``ESTIMATOR_PART``; all but
        the last row and column for the default 32/8 tiling) combine their sub-tiles' PSNRs
        from one map of the whole image: for a context-free estimator the same numbers as
        reading each tile (to float rounding, tested), at ~1/1.8 of the cost. The other tiles
        are read one by one.
        """
        part, paths = ESTIMATOR_PART, self.model.num_paths
        u = torch.empty(py.count, px.count, paths)
        grid_y = [i for i, y in enumerate(py.starts) if y % part == 0 and py.tile % part == 0]
        grid_x = [j for j, x in enumerate(px.starts) if x % part == 0 and px.tile % part == 0]
        if grid_y and grid_x:
            umap = self._psnr_map(color, part)  # (P, H // part, W // part)
            ry = torch.tensor([py.starts[i] // part for i in grid_y])[:, None] + torch.arange(
                py.tile // part)
            rx = torch.tensor([px.starts[j] // part for j in grid_x])[:, None] + torch.arange(
                px.tile // part)
            blocks = umap[:, ry[:, None, :, None], rx[None, :, None, :]]  # (P, ny, nx, ky, kx)
            u[torch.tensor(grid_y)[:, None], torch.tensor(grid_x)[None, :]] = combine_psnr(
                blocks.flatten(3), dim=3).permute(1, 2, 0)
        on_y, on_x = set(grid_y), set(grid_x)
        rest = [(i, j) for i in range(py.count) for j in range(px.count)
                if i not in on_y or j not in on_x]
        for k in range(0, len(rest), ESTIMATOR_BATCH):
            where = rest[k:k + ESTIMATOR_BATCH]
            x = torch.stack([to_float(color[py.starts[i]:py.starts[i] + py.tile,
                                            px.starts[j]:px.starts[j] + px.tile])
                             for i, j in where])
            x = self.to_device(x.expand(-1, 3, -1, -1))
            self.flops += self.model.estimator_flops(py.tile, px.tile) * len(where)
            u[tuple(torch.tensor(where).T)] = self.model.predict_psnr(x).float().cpu()
        return u.reshape(-1, paths)

    def _psnr_map(self, color: np.ndarray, part: int) -> torch.Tensor:
        """(P, H // part, W // part) the estimator's PSNR of every sub-tile of the image on
        the grid from its top-left corner, in bands of ``ESTIMATOR_ROWS`` rows.

        A band is cut into non-overlapping ``b x b`` blocks (zero-padded at the right and
        bottom) and run as one batch: torch runs a one-image band's 1x1 convolutions on a slow
        path. A context-free estimator reads each sub-tile alone, so the blocks change no
        value; with context layers each block is read as the 32x32 patches it was trained on.
        """
        height, width = (n // part * part for n in color.shape[:2])
        b = ESTIMATOR_BLOCK
        maps = []
        for top in range(0, height, ESTIMATOR_ROWS):
            band = to_float(color[top:min(top + ESTIMATOR_ROWS, height), :width])
            h, w = band.shape[-2:]
            band = F.pad(band.expand(3, -1, -1), (0, -w % b, 0, -h % b))
            ny, nx = band.shape[1] // b, band.shape[2] // b
            blocks = band.reshape(3, ny, b, nx, b).permute(1, 3, 0, 2, 4).reshape(-1, 3, b, b)
            self.flops += self.model.estimator_flops(b, b) * len(blocks)
            u = self.model.estimator.psnr_map(self.to_device(blocks), part).float().cpu()
            k = b // part
            u = u.reshape(ny, nx, -1, k, k).permute(2, 0, 3, 1, 4).reshape(-1, ny * k, nx * k)
            maps.append(u[:, : h // part, : w // part])
        return torch.cat(maps, dim=1)

    @staticmethod
    def _blank_flags(color: np.ndarray, py: TilePlan, px: TilePlan) -> torch.Tensor:
        """(tiles,) ENAF's blank test of every tile (``is_blank``), row-major: per tile row, the
        |Laplacian| of the band once, then each tile's sum from column prefix sums (exact:
        integers in float64)."""
        if py.tile < 3 or px.tile < 3:  # no valid Laplacian: no tile is called blank
            return torch.zeros(py.count * px.count, dtype=torch.bool)
        x0 = torch.tensor(px.starts)
        flags = []
        for y0 in py.starts:
            band = to_float(color[y0:y0 + py.tile]).expand(3, -1, -1)[None]
            columns = laplacian_abs(gray_u8(band))[0].sum(dim=0, dtype=torch.float64)
            prefix = torch.cat([columns.new_zeros(1), columns.cumsum(0)])
            sums = prefix[x0 + px.tile - 2] - prefix[x0]
            flags.append(sums / ((py.tile - 2) * (px.tile - 2)) <= BLANK_THRESHOLD)
        return torch.cat(flags)

    def path_losses(self, gamma: float) -> torch.Tensor:
        """(patches, P) what ``fuse`` weighs against the paths' costs: the texture router's
        losses when the weights carry one (``texture``), else Eq. 9's (``psnr_losses``)."""
        router = self.model.router
        if router is None:
            return psnr_losses(self._u, self._blank, gamma)
        return texture.losses(router["coef"], self._stats, texture.image_gain_db(self._u))

    def take_losses(self, indices: list[int]) -> torch.Tensor:
        """The losses of the tiles ``indices`` (row-major ids)."""
        return self._losses[torch.tensor(indices, dtype=torch.long)]

    def record_paths(self, windows: list[TileWindow], chosen: list[int]) -> None:
        """Keep the path of each tile under its id (batches may come in any order)."""
        for window, path in zip(windows, chosen):
            if window.index >= len(self.paths):
                self.paths += [-1] * (window.index + 1 - len(self.paths))
            self.paths[window.index] = path

    def run_rgb(self, x: torch.Tensor, windows: list[TileWindow], *,
                routed: bool) -> torch.Tensor:
        costs = self.model.backbone.path_flops(*x.shape[-2:])
        self.flops_static += costs[-1] * x.shape[0]
        if not routed:
            self.flops += costs[-1] * x.shape[0]
            return self.model(x)
        if self.cells:
            pieces = self.cell_pieces(x, windows)
            self.paths = self._cell_paths
            return self.run_cells(x, windows, self.cell_runs(
                pieces, [self._cell_paths[p.cell] for p in pieces]))
        if self.routing.path is not None:  # a fixed exit: no estimator runs, none is counted
            paths = torch.full((x.shape[0],), self.routing.path, dtype=torch.long)
        else:
            paths = fuse(self.take_losses([w.index for w in windows]),  # from prepare()
                         self.model.costs(*x.shape[-2:]), eta=self.eta)
        chosen = paths.tolist()
        self.record_paths(windows, chosen)
        self.flops += sum(costs[p] for p in chosen)
        return self.model.backbone.forward_paths(x, paths)

    def cell_pieces(self, x: torch.Tensor, windows: list[TileWindow]) -> list[CellPiece]:
        """Where the cells of the image's grid lie in each tile of the batch: every tile is cut
        along the cells' spans (a cell at a tile's edge gives a smaller piece)."""
        rows, cols = self._grid
        h, w = x.shape[-2:]
        pieces = []
        for b, win in enumerate(windows):
            ys = _cut(rows, win.y0, win.y0 + h)
            xs = _cut(cols, win.x0, win.x0 + w)
            pieces += [CellPiece(b, y - win.y0, x - win.x0, ph, pw, i * len(cols) + j)
                       for i, y, ph in ys for j, x, pw in xs]
        return pieces

    def cell_runs(self, pieces: list[CellPiece], paths: list[int]) -> dict[
            tuple[int, int, int], list[CellPiece]]:
        """The network work of ``paths[k]`` on ``pieces[k]``: neighbouring pieces of a row on
        one path merged into one (fewer halos, larger convs), grouped by path and size;
        path 0 needs none."""
        runs: list[tuple[int, CellPiece]] = []
        for piece, path in zip(pieces, paths):
            if path == 0:
                continue
            last = runs[-1][1] if runs and runs[-1][0] == path else None
            if last and (last.b, last.y, last.x + last.w) == (piece.b, piece.y, piece.x):
                runs[-1] = (path, replace(last, w=last.w + piece.w))
            else:
                runs.append((path, piece))
        groups: dict[tuple[int, int, int], list[CellPiece]] = {}
        for path, piece in runs:
            groups.setdefault((path, piece.h, piece.w), []).append(piece)
        return groups

    def runs_flops(self, groups: dict[tuple[int, int, int], list[CellPiece]]) -> int:
        """classsr FLOPs of ``cell_runs``' work: each path's ``CellPath`` on its windows."""
        return sum(self.model.backbone.cell_path(path).window_flops(h, w) * len(group)
                   for (path, h, w), group in groups.items())

    def run_cells(self, x: torch.Tensor, windows: list[TileWindow],
                  groups: dict[tuple[int, int, int], list[CellPiece]]) -> torch.Tensor:
        """The batch's output: the bicubic skip of each tile once, plus each path's
        ``CellPath`` on its runs' windows (zeros beyond the tile: the tiler discards a margin
        that covers every halo; what lies beyond the image is zeroed after every layer, see
        ``CellPath``); counts the FLOPs."""
        backbone, s = self.model.backbone, int(self.scale)
        out = bicubic(x, s)
        pad = max((max(backbone.cell_path(p).halo) for p, _, _ in groups), default=0)
        padded = F.pad(x, (pad,) * 4)
        height, width = self._size
        for (path, h, w), group in groups.items():
            lo, hi = backbone.cell_path(path).halo
            per_pass = max(1, CELL_PIXELS // ((h + lo + hi) * (w + lo + hi)))
            for k in range(0, len(group), per_pass):
                chunk = group[k:k + per_pass]
                win = torch.stack([padded[p.b, :, pad + p.y - lo:pad + p.y + h + hi,
                                          pad + p.x - lo:pad + p.x + w + hi] for p in chunk])
                outside = []  # window pixels beyond the image: top, bottom, left, right
                for p in chunk:
                    y0, x0 = windows[p.b].y0 + p.y - lo, windows[p.b].x0 + p.x - lo
                    outside.append((max(0, -y0), max(0, y0 + h + lo + hi - height),
                                    max(0, -x0), max(0, x0 + w + lo + hi - width)))
                y = backbone.run_cells(path, self.to_device(win), outside)
                for p, yp in zip(chunk, y):
                    out[p.b, :, p.y * s:(p.y + h) * s, p.x * s:(p.x + w) * s] += yp
        self.flops += self.runs_flops(groups)
        return out

    def books(self) -> dict[str, Any]:
        return {**super().books(), "paths": {i: p for i, p in enumerate(self.paths) if p >= 0}}

    def add_books(self, books: dict[str, Any]) -> None:
        super().add_books(books)
        for index, path in books["paths"].items():
            if index >= len(self.paths):
                self.paths += [-1] * (index + 1 - len(self.paths))
            self.paths[index] = path

    def exit_shares(self) -> dict[str, float]:
        n = max(len(self.paths), 1)
        return {name: self.paths.count(j) / n for j, name in enumerate(self.PATH_NAMES)}

    def route_map(self) -> RouteMap:
        if self._tiling is None:
            raise RuntimeError("no image has run yet")
        grid = CELL_GRID if self.cells else self._tiling
        return RouteMap(paint_tiles(grid, *self._size, self.paths), self.PATH_NAMES,
                        "the path each patch took")

    def extras(self) -> dict[str, Any]:
        return {"eta": self.eta, "gamma": self.gamma, "exits": self.exit_shares()}

    @staticmethod
    def describe(extras: dict[str, Any]) -> str:
        exits = extras.get("exits")
        return "exits " + "/".join(f"{100 * v:.0f}" for v in exits.values()) if exits else ""


@dataclass(frozen=True)
class CellPiece:
    """A cell's part of one tile of a batch: tile ``b``, tile-local LR origin and size, and
    the cell's row-major index on the image's grid."""

    b: int
    y: int
    x: int
    h: int
    w: int
    cell: int


def _cut(spans: list[tuple[int, int]], start: int, stop: int) -> list[tuple[int, int, int]]:
    """(cell index, start, length) of each cell span's part inside [start, stop)."""
    return [(i, max(a, start), min(b, stop) - max(a, start))
            for i, (a, b) in enumerate(spans) if a < stop and b > start]
