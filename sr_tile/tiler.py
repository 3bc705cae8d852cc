"""Seam-free, streaming tiled inference.

An LR image is cut into overlapping tiles on a fixed grid; each tile's output is
weighted by a smooth window and summed; the sum is divided by the summed weights.

Windows. Along each axis a tile's weight is 1 in its interior. At an edge shared
with a neighbour it is 0 over the first ``margin`` LR pixels (output there is
not trusted: the network saw padding instead of the neighbour's pixels), then
rises as a raised cosine over ``ramp = overlap - 2 * margin`` pixels. At an
image border the weight stays 1: there whole-image inference sees the same
border. So when ``margin`` covers a network's receptive field, every output
pixel is a convex combination of exact values: tiled output equals whole-image
output up to float rounding, whatever the tile size.

Weights are separable and the tiles form a full product grid, so the summed
weight map is the outer product of two 1-D sums: it is never stored in 2-D.

Streaming. Tiles are processed in row-major batches, which run on from one tile
row into the next (small tiles on a narrow image would otherwise make small
batches). Before a batch, every output row above its first tile row's start is
final and is yielded as a band; only the output rows of the tile rows one batch
touches are ever held in float.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from sr_tile.errors import UsageError

TileFn = Callable[[torch.Tensor], torch.Tensor]
BAND_ROWS = 256  # output rows normalised and converted at a time


@dataclass(frozen=True)
class TilePlan:
    """The tile grid along one axis, in LR pixels."""

    length: int  # image length along this axis
    tile: int  # tile length actually used (<= length unless padded for size_multiple)
    starts: tuple[int, ...]
    margin: int
    ramp: int

    @property
    def count(self) -> int:
        return len(self.starts)


def plan_axis(length: int, tile: int, overlap: int, margin: int) -> TilePlan:
    """Tile starts covering [0, length): stride ``tile - overlap``; the last tile is
    shifted left so it ends at the border (all tiles keep the same size)."""
    if length <= tile:
        return TilePlan(length, length, (0,), margin, max(overlap - 2 * margin, 1))
    stride = tile - overlap
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return TilePlan(length, tile, tuple(starts), margin, overlap - 2 * margin)


def edge_ramp(n: int, margin: int, ramp: int, scale: int) -> np.ndarray:
    """Weights of the first ``n`` output pixels next to an interior edge."""
    t = np.arange(n, dtype=np.float64) + 0.5  # pixel centres, output pixels
    lo, width = margin * scale, ramp * scale
    x = np.clip((t - lo) / width, 0.0, 1.0)
    w = np.sin(0.5 * math.pi * x) ** 2
    w[t < lo] = 0.0
    return w


def tile_weights(plan: TilePlan, index: int, scale: int) -> np.ndarray:
    """1-D output-resolution weight window of tile ``index`` of ``plan``."""
    n = plan.tile * scale
    w = np.ones(n, dtype=np.float64)
    k = min((plan.margin + plan.ramp) * scale, n)
    ramp = edge_ramp(k, plan.margin, plan.ramp, scale)
    if index > 0:  # left/top neighbour
        w[:k] *= ramp
    if index < plan.count - 1:  # right/bottom neighbour
        w[n - k :] *= ramp[::-1]
    return w


def weight_sum(plan: TilePlan, scale: int) -> np.ndarray:
    """Summed weights of all tiles along the axis, at output resolution."""
    total = np.zeros(plan.length * scale, dtype=np.float64)
    for i, s in enumerate(plan.starts):
        total[s * scale : (s + plan.tile) * scale] += tile_weights(plan, i, scale)
    if total.min() <= 0:
        raise AssertionError("tile grid leaves pixels without weight")  # a bug, never input
    return total


@dataclass(frozen=True)
class TileConfig:
    """User-facing tiling options, already resolved against a model descriptor."""

    tile: int
    overlap: int
    margin: int
    size_multiple: int = 1
    batch_size: int = 4

    @classmethod
    def resolve(
        cls,
        *,
        tile: int | None,
        overlap: int | None,
        margin: int,
        default_tile: int,
        default_overlap: int,
        size_multiple: int = 1,
        batch_size: int = 4,
    ) -> TileConfig:
        """Fill defaults and check that the grid can be seam-free."""
        tile = default_tile if tile is None else tile
        overlap = default_overlap if overlap is None else overlap
        if tile <= 0 or overlap < 0 or batch_size <= 0:
            raise UsageError("--tile and --batch-size must be positive, --overlap >= 0")
        tile = -(-tile // size_multiple) * size_multiple
        if overlap <= 2 * margin:
            raise UsageError(
                f"--overlap {overlap} is too small: this model needs more than {2 * margin} "
                f"(its outputs within {margin} px of a tile edge are discarded)"
            )
        if overlap >= tile:
            raise UsageError(f"--overlap {overlap} must be smaller than --tile {tile}")
        return cls(tile, overlap, margin, size_multiple, batch_size)

    def plans(self, height: int, width: int) -> tuple[TilePlan, TilePlan]:
        return (
            plan_axis(height, self.tile, self.overlap, self.margin),
            plan_axis(width, self.tile, self.overlap, self.margin),
        )

    def count(self, height: int, width: int) -> int:
        py, px = self.plans(height, width)
        return py.count * px.count

    def tile_shape(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) of the tiles a model sees for this image (padded to ``size_multiple``)."""
        py, px = self.plans(height, width)
        m = self.size_multiple
        return -(-py.tile // m) * m, -(-px.tile // m) * m


def to_float(block: np.ndarray) -> torch.Tensor:
    """(h, w, C) integer or float block -> (C, h, w) float32 in [0, 1]."""
    t = torch.from_numpy(np.ascontiguousarray(block))
    if block.dtype == np.uint8:
        t = t.float().div_(255.0)
    elif block.dtype == np.uint16:
        t = t.float().div_(65535.0)
    else:
        t = t.float()
    return t.permute(2, 0, 1)


def _from_float(band: torch.Tensor, dtype: np.dtype) -> np.ndarray:
    """(C, h, w) float band -> (h, w, C) array of ``dtype``, rounded and clipped."""
    if dtype == np.uint8 or dtype == np.uint16:
        peak = 255.0 if dtype == np.uint8 else 65535.0
        band = band.clamp(0.0, 1.0).mul_(peak).round_()
        out = band.to(torch.int32).permute(1, 2, 0).numpy().astype(dtype)
    else:
        out = band.permute(1, 2, 0).numpy().astype(dtype)
    return np.ascontiguousarray(out)


def _pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Reflect-pad (N, C, h, w) on the bottom/right up to a multiple of ``multiple``."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        mode = "reflect" if ph < h and pw < w else "replicate"
        x = torch.nn.functional.pad(x, (0, pw, 0, ph), mode=mode)
    return x


def tile_batches(
    image: np.ndarray, config: TileConfig
) -> Iterator[tuple[list[tuple[int, int]], torch.Tensor]]:
    """Batches of ``batch_size`` tiles in row-major order, running on across tile rows:
    ((tile row, tile column) of each tile, float batch).

    Every consumer (the tiler, a router's pre-pass, an exit map) walks tiles in
    this one order.
    """
    py, px = config.plans(image.shape[0], image.shape[1])
    where: list[tuple[int, int]] = []
    tiles: list[torch.Tensor] = []
    for i, y0 in enumerate(py.starts):
        band = to_float(image[y0 : y0 + py.tile])  # one conversion per tile row
        for j, x0 in enumerate(px.starts):
            where.append((i, j))
            tiles.append(band[:, :, x0 : x0 + px.tile])
            if len(tiles) == config.batch_size or (i, j) == (py.count - 1, px.count - 1):
                yield where, _pad_to_multiple(torch.stack(tiles), config.size_multiple)
                where, tiles = [], []


def tiled_upscale(
    image: np.ndarray,
    fn: TileFn,
    *,
    scale: int,
    config: TileConfig,
    out_dtype: np.dtype | None = None,
    on_tiles: Callable[[int], None] | None = None,
) -> Iterator[np.ndarray]:
    """Upscale ``image`` (H, W, C) tile by tile; yield output bands top to bottom.

    ``fn`` maps a float batch (N, C, h, w) in [0, 1] to (N, C, h*scale, w*scale).
    Bands are (rows, W*scale, C) arrays of ``out_dtype`` (default: the input's).
    ``on_tiles(n)`` is called after each batch with the number of tiles done in it.
    """
    height, width, channels = image.shape
    dtype = np.dtype(out_dtype or image.dtype)
    py, px = config.plans(height, width)
    s = scale
    wx = [torch.from_numpy(tile_weights(px, j, s)).float() for j in range(px.count)]
    wy = [torch.from_numpy(tile_weights(py, i, s)).float()[None, :, None] for i in range(py.count)]
    norm_x = torch.from_numpy(1.0 / weight_sum(px, s)).float()
    norm_y = torch.from_numpy(1.0 / weight_sum(py, s)).float()
    rows, cols_out = py.tile * s, px.tile * s
    acc = torch.zeros(channels, rows, width * s)  # grows to the rows one batch touches
    acc_top = 0  # output row of acc[:, 0]: the first row of the oldest unfinished tile row

    def flush(upto: int) -> Iterator[np.ndarray]:
        """Normalise and emit the final rows [acc_top, upto) in small chunks."""
        nonlocal acc_top
        done = upto - acc_top
        for r in range(0, done, BAND_ROWS):
            r1 = min(r + BAND_ROWS, done)
            band = acc[:, r:r1] * norm_y[acc_top + r : acc_top + r1, None] * norm_x
            yield _from_float(band, dtype)
        keep = acc.shape[1] - done
        acc[:, :keep] = acc[:, done:].clone()
        acc[:, keep:] = 0
        acc_top = upto

    for where, batch in tile_batches(image, config):
        first, last = where[0][0], where[-1][0]
        if py.starts[first] * s != acc_top:  # rows above this tile row are final
            yield from flush(py.starts[first] * s)
        need = py.starts[last] * s + rows - acc_top
        if need > acc.shape[1]:
            acc = torch.cat([acc, acc.new_zeros(channels, need - acc.shape[1], width * s)], 1)
        out = fn(batch)[..., :rows, :cols_out].float().cpu()
        for k, (i, j) in enumerate(where):
            y0, x0 = py.starts[i] * s - acc_top, px.starts[j] * s
            acc[:, y0 : y0 + rows, x0 : x0 + cols_out] += out[k] * wy[i] * wx[j]
        if on_tiles is not None:
            on_tiles(len(where))
    yield from flush(height * s)
