"""Seam-free, streaming tiled inference, at any scale.

An LR image is cut into overlapping tiles on a fixed grid; each tile's output is
weighted by a smooth window and summed; the sum is divided by the summed weights.

Geometry. The output is ``round_half_up(s * W) x round_half_up(s * H)`` and its pixel grid
spans the input exactly: the effective scale of an axis is output length / input length
(MATLAB's ``imresize`` given an output size; LIIF's normalised coordinates). A tile covering
LR pixels ``[y0, y0 + t)`` owns the output pixels whose centres fall in that span, a
rectangle on the global output grid (:class:`TileWindow`), and its blend window is computed
there too, so non-integer scales make no seams from rounding. At an integer scale all of
this reduces exactly to ``y0 * s`` and the same arithmetic as before (bit-identical).

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

BAND_ROWS = 256  # output rows normalised and converted at a time


def output_length(length: int, scale: float) -> int:
    """round_half_up(scale * length), after rounding away float noise (2.3 * 10 = 23)."""
    return int(math.floor(round(scale * length, 9) + 0.5))


@dataclass(frozen=True)
class TilePlan:
    """The tile grid along one axis: LR tiles and their spans on the output grid."""

    length: int  # image length along this axis
    tile: int  # tile length actually used (<= length unless padded for size_multiple)
    starts: tuple[int, ...]
    margin: int
    ramp: int
    out_length: int  # output length along this axis

    @property
    def count(self) -> int:
        return len(self.starts)

    @property
    def scale(self) -> float:
        """The effective scale of this axis: output length / input length."""
        return self.out_length / self.length

    def out_start(self, y: int) -> int:
        """The first output pixel whose centre lies at or after LR position ``y``:
        ceil(y * s - 1/2), in integers (``y * s`` exactly at an integer scale)."""
        a, b = 2 * y * self.out_length - self.length, 2 * self.length
        return -(-a // b)

    def out_span(self, index: int) -> tuple[int, int]:
        """[start, stop) of tile ``index`` on the output grid."""
        y0 = self.starts[index]
        return self.out_start(y0), self.out_start(y0 + self.tile)

    @property
    def out_tile(self) -> int:
        """The longest output span of a tile (at a non-integer scale spans differ by one)."""
        return max(stop - start for start, stop in map(self.out_span, range(self.count)))


def plan_axis(length: int, tile: int, overlap: int, margin: int,
              out_length: int | None = None, *, fit: bool = False,
              size_multiple: int = 1) -> TilePlan:
    """Tile starts covering [0, length): stride ``tile - overlap``; the last tile is
    shifted left so it ends at the border (all tiles keep the same size). ``out_length``
    defaults to ``length`` (scale 1).

    ``fit``: first shrink the tile to the smallest side (a multiple of ``size_multiple``)
    that covers the axis with as many tiles, so that neighbours overlap by about
    ``overlap`` instead of the last tile re-running most of its neighbour (256 px tiles on
    640 px: 219 px, 1.03x the pixels instead of 1.2x)."""
    out_length = length if out_length is None else out_length
    if length <= tile:
        return TilePlan(length, length, (0,), margin, max(overlap - 2 * margin, 1), out_length)
    if fit:
        count = -(-(length - overlap) // (tile - overlap))
        fitted = -(-(length - overlap) // count) + overlap
        tile = min(tile, -(-fitted // size_multiple) * size_multiple)
    stride = tile - overlap
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return TilePlan(length, tile, tuple(starts), margin, overlap - 2 * margin, out_length)


def _edge_ramp(t: np.ndarray, lo: float, width: float) -> np.ndarray:
    """Weights of output pixels at distances ``t`` (output px) from an interior edge."""
    x = np.clip((t - lo) / width, 0.0, 1.0)
    w = np.sin(0.5 * math.pi * x) ** 2
    w[t < lo] = 0.0
    return w


def tile_weights(plan: TilePlan, index: int) -> np.ndarray:
    """1-D weight window of tile ``index`` over its span of the output grid: 0 over the
    margin next to a neighbour, a raised cosine over the ramp, 1 elsewhere."""
    start, stop = plan.out_span(index)
    s = plan.scale
    centres = np.arange(start, stop, dtype=np.float64) + 0.5
    lo, width = plan.margin * s, plan.ramp * s
    w = np.ones(stop - start, dtype=np.float64)
    if index > 0:  # left/top neighbour
        w *= _edge_ramp(centres - plan.starts[index] * s, lo, width)
    if index < plan.count - 1:  # right/bottom neighbour
        w *= _edge_ramp((plan.starts[index] + plan.tile) * s - centres, lo, width)
    return w


def weight_sum(plan: TilePlan) -> np.ndarray:
    """Summed weights of all tiles along the axis, over the output grid."""
    total = np.zeros(plan.out_length, dtype=np.float64)
    for i in range(plan.count):
        start, stop = plan.out_span(i)
        total[start:stop] += tile_weights(plan, i)
    if total.min() <= 0:
        raise AssertionError("tile grid leaves pixels without weight")  # a bug, never input
    return total


@dataclass(frozen=True)
class TileWindow:
    """Where one tile of a batch lies: its id (row-major), grid position, LR origin, and its
    rectangle on the global output grid, with the effective scale of each axis."""

    index: int
    row: int
    col: int
    y0: int
    x0: int
    out_y0: int
    out_x0: int
    out_h: int
    out_w: int
    scale_y: float
    scale_x: float


TileFn = Callable[[torch.Tensor, list[TileWindow]], torch.Tensor]
#: ``tiler(image, fn, *, scale, config, on_tiles)``: output bands top to bottom
#: (:func:`tiled_upscale`, or a cluster's).
Tiler = Callable[..., Iterator[np.ndarray]]


@dataclass(frozen=True)
class TileConfig:
    """User-facing tiling options, already resolved against a model descriptor."""

    tile: int
    overlap: int
    margin: int
    size_multiple: int = 1
    batch_size: int = 4
    fit: bool = False  # shrink tiles to fit the image evenly (``plan_axis``); not for routing

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
        fit: bool = False,
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
        return cls(tile, overlap, margin, size_multiple, batch_size, fit)

    def plans(self, height: int, width: int, scale: float = 1.0) -> tuple[TilePlan, TilePlan]:
        return tuple(plan_axis(n, self.tile, self.overlap, self.margin, output_length(n, scale),
                               fit=self.fit, size_multiple=self.size_multiple)
                     for n in (height, width))  # type: ignore[return-value]

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
    image: np.ndarray, config: TileConfig, scale: float = 1.0, rows: range | None = None,
) -> Iterator[tuple[list[TileWindow], torch.Tensor]]:
    """Batches of ``batch_size`` tiles in row-major order, running on across tile rows:
    (each tile's window, float batch). ``rows``: only these tile rows (a band of them).

    Every consumer (the tiler, a router's pre-pass, a route map) numbers tiles in this
    one order.
    """
    py, px = config.plans(image.shape[0], image.shape[1], scale)
    rows = range(py.count) if rows is None else rows
    where: list[TileWindow] = []
    tiles: list[torch.Tensor] = []
    for i in rows:
        y0 = py.starts[i]
        band = to_float(image[y0 : y0 + py.tile])  # one conversion per tile row
        oy0, oy1 = py.out_span(i)
        for j, x0 in enumerate(px.starts):
            ox0, ox1 = px.out_span(j)
            where.append(TileWindow(i * px.count + j, i, j, y0, x0, oy0, ox0, oy1 - oy0,
                                    ox1 - ox0, py.scale, px.scale))
            tiles.append(band[:, :, x0 : x0 + px.tile])
            if len(tiles) == config.batch_size or (i, j) == (rows[-1], px.count - 1):
                yield where, _pad_to_multiple(torch.stack(tiles), config.size_multiple)
                where, tiles = [], []


class Blender:
    """Tile outputs weighted and summed on the global output grid; rows leave normalised,
    top to bottom, once final.

    Only the output rows from ``top`` down to the lowest tile added so far are held, in
    float. Sums are added in tile-row order, so a band of tile rows summed elsewhere
    (:func:`band_sums`) and added here with :meth:`add_rows` gives the same values as its
    tiles added here one by one, wherever no output row is covered by more than two tile
    rows (overlap below half the tile: every default)."""

    def __init__(self, py: TilePlan, px: TilePlan, channels: int, dtype: np.dtype,
                 top: int = 0) -> None:
        self.dtype = np.dtype(dtype)
        self.wx = [torch.from_numpy(tile_weights(px, j)).float() for j in range(px.count)]
        self.wy = [torch.from_numpy(tile_weights(py, i)).float()[None, :, None]
                   for i in range(py.count)]
        self.norm_x = torch.from_numpy(1.0 / weight_sum(px)).float()
        self.norm_y = torch.from_numpy(1.0 / weight_sum(py)).float()
        self.acc = torch.zeros(channels, py.out_tile, px.out_length)  # grows to what is held
        self.top = top  # output row of acc[:, 0]

    def reach(self, stop: int) -> None:
        """Hold output rows up to ``stop``."""
        need = stop - self.top
        if need > self.acc.shape[1]:
            self.acc = torch.cat([self.acc, self.acc.new_zeros(
                self.acc.shape[0], need - self.acc.shape[1], self.acc.shape[2])], 1)

    def add_tiles(self, out: torch.Tensor, where: list[TileWindow]) -> None:
        """A batch's outputs (N, C, h', w'), each cut to its window and weighted."""
        self.reach(where[-1].out_y0 + where[-1].out_h)
        for k, win in enumerate(where):
            y0 = win.out_y0 - self.top
            self.acc[:, y0 : y0 + win.out_h, win.out_x0 : win.out_x0 + win.out_w] += (
                out[k, :, : win.out_h, : win.out_w] * self.wy[win.row] * self.wx[win.col])

    def add_rows(self, top: int, block: np.ndarray) -> None:
        """Weighted sums (C, rows, W') of output rows from ``top`` (a band's)."""
        self.reach(top + block.shape[1])
        held = self.acc[:, top - self.top : top - self.top + block.shape[1]].numpy()
        np.add(held, block, out=held)

    def flush(self, upto: int) -> Iterator[np.ndarray]:
        """Normalise and emit the final rows [top, upto) in chunks of ``BAND_ROWS``."""
        done = upto - self.top
        for r in range(0, done, BAND_ROWS):
            r1 = min(r + BAND_ROWS, done)
            band = (self.acc[:, r:r1] * self.norm_y[self.top + r : self.top + r1, None]
                    * self.norm_x)
            yield _from_float(band, self.dtype)
        keep = self.acc.shape[1] - done
        self.acc[:, :keep] = self.acc[:, done:].clone()
        self.acc[:, keep:] = 0
        self.top = upto


def tiled_upscale(
    image: np.ndarray,
    fn: TileFn,
    *,
    scale: float,
    config: TileConfig,
    out_dtype: np.dtype | None = None,
    on_tiles: Callable[[int], None] | None = None,
) -> Iterator[np.ndarray]:
    """Upscale ``image`` (H, W, C) tile by tile; yield output bands top to bottom.

    ``fn(batch, windows)`` maps a float batch (N, C, h, w) in [0, 1] to (N, C, h', w') with
    h', w' at least each tile's ``out_h``, ``out_w`` (a fixed-scale network returns
    h*s x w*s; extra rows and columns are cut). Bands are (rows, W', C) arrays of
    ``out_dtype`` (default: the input's), W' = round_half_up(scale * W).
    ``on_tiles(n)`` is called after each batch with the number of tiles done in it.
    """
    height, width, channels = image.shape
    py, px = config.plans(height, width, scale)
    blender = Blender(py, px, channels, out_dtype or image.dtype)
    for where, batch in tile_batches(image, config, scale):
        if where[0].out_y0 != blender.top:  # rows above this tile row are final
            yield from blender.flush(where[0].out_y0)
        blender.add_tiles(fn(batch, where).float().cpu(), where)
        if on_tiles is not None:
            on_tiles(len(where))
    yield from blender.flush(py.out_length)


def band_sums(image: np.ndarray, fn: TileFn, *, scale: float, config: TileConfig,
              rows: range) -> tuple[int, np.ndarray]:
    """The tile rows ``rows`` of ``image`` run and summed, weighted but not normalised:
    (first output row, (C, rows', W') float32), for a :class:`Blender` elsewhere to add
    (``sr_tile.cluster``: one huge image across workers)."""
    py, px = config.plans(image.shape[0], image.shape[1], scale)
    top, stop = py.out_span(rows[0])[0], py.out_span(rows[-1])[1]
    blender = Blender(py, px, image.shape[2], np.float32, top=top)
    for where, batch in tile_batches(image, config, scale, rows):
        blender.add_tiles(fn(batch, where).float().cpu(), where)
    blender.reach(stop)
    return top, blender.acc[:, : stop - top].numpy()
