"""A picture of where a routed model spent its work (``--route-map``, alias ``--exit-map`` and
``--halting-map``): ENAF's path per tile (its Fig. 1), AdaFormer's halting depth per token
(its Fig. 1/6).

A runner gives a :class:`RouteMap`: one small integer per LR pixel and the names of the
values, cheapest first. It is drawn at LR resolution (or smaller for huge inputs) as a dimmed
grayscale copy of the image tinted by the value, with the borders between values and a legend
with each value's share of the pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from sr_tile.io import ImageMeta, write_image
from sr_tile.tiler import TileConfig, TilePlan

# cheap -> costly: blue, green, yellow, red for four values; more are interpolated
_STOPS = np.array([(70, 130, 230), (60, 190, 90), (240, 190, 40), (220, 60, 60)], np.float32)
MAX_SIDE = 4096


@dataclass(frozen=True)
class RouteMap:
    """``labels`` (H, W) uint8 at LR, each in ``range(len(names))``; ``title`` says what the
    values are."""

    labels: np.ndarray
    names: tuple[str, ...]
    title: str = ""


def colors(n: int) -> np.ndarray:
    """(n, 3) float RGB from cheap to costly."""
    if n <= len(_STOPS):
        return _STOPS[:n] if n > 1 else _STOPS[:1]
    t = np.linspace(0, len(_STOPS) - 1, n)
    lo = np.floor(t).astype(int).clip(0, len(_STOPS) - 2)
    return _STOPS[lo] + (t - lo)[:, None] * (_STOPS[lo + 1] - _STOPS[lo])


def owned_span(plan: TilePlan, index: int, overlap: int) -> tuple[int, int]:
    """The LR span that tile ``index`` of ``plan`` owns in a picture: up to the middle of its
    overlap with each neighbour, so that overlaps split evenly."""
    half = overlap // 2
    start = 0 if index == 0 else plan.starts[index] + half
    end = plan.length if index == plan.count - 1 else plan.starts[index + 1] + half
    return start, end


def paint_tiles(tiling: TileConfig, height: int, width: int,
                values: Sequence[int]) -> np.ndarray:
    """(H, W) uint8: each tile's value (row-major, the tiler's order) over the span it owns."""
    py, px = tiling.plans(height, width)
    if len(values) != py.count * px.count:
        raise ValueError(f"{len(values)} values for {py.count * px.count} tiles")
    out = np.zeros((height, width), np.uint8)
    for k, value in enumerate(values):
        i, j = divmod(k, px.count)
        y0, y1 = owned_span(py, i, tiling.overlap)
        x0, x1 = owned_span(px, j, tiling.overlap)
        out[y0:y1, x0:x1] = value
    return out


def _gray8(pixels: np.ndarray) -> np.ndarray:
    color = pixels[..., : 1 if pixels.shape[2] in (1, 2) else 3].astype(np.float32)
    if pixels.dtype == np.uint16:
        color /= 257.0
    elif pixels.dtype != np.uint8:
        color *= 255.0
    gray = color.mean(axis=2) if color.shape[2] == 3 else color[..., 0]
    return np.clip(gray, 0, 255).astype(np.uint8)


def render_route_map(pixels: np.ndarray, route: RouteMap) -> np.ndarray:
    """RGB uint8 picture of ``route`` over the image ``pixels`` (H, W, C)."""
    labels = route.labels
    if labels.shape != pixels.shape[:2]:
        raise ValueError(f"route map {labels.shape} for an image of {pixels.shape[:2]}")
    step = max(1, -(-max(labels.shape) // MAX_SIDE))
    gray = _gray8(pixels)[::step, ::step].astype(np.float32)
    small = labels[::step, ::step]
    palette = colors(len(route.names))
    rgb = 0.45 * gray[..., None] + 0.55 * palette[small]
    border = np.zeros(small.shape, bool)  # where the value changes: dark lines
    border[1:] |= small[1:] != small[:-1]
    border[:, 1:] |= small[:, 1:] != small[:, :-1]
    rgb[border] = 0.0
    image = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
    texts = [f"{name} {100.0 * float((labels == j).mean()):.0f}%"
             for j, name in enumerate(route.names)]
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    widths = [24 + int(measure.textlength(t)) for t in texts]
    width = max(image.width, 4 + max(widths))
    places, x, y = [], 4, 0  # each entry's corner, wrapped into rows of the picture's width
    for w in widths:
        if x > 4 and x + w > width:
            x, y = 4, y + 22
        places.append((x, y))
        x += w
    legend = Image.new("RGB", (width, y + 22), (255, 255, 255))
    draw = ImageDraw.Draw(legend)
    for j, (text, (x, y)) in enumerate(zip(texts, places)):
        draw.rectangle([x, y + 5, x + 12, y + 17], fill=tuple(int(c) for c in palette[j]))
        draw.text((x + 16, y + 5), text, fill=(0, 0, 0))
    out = Image.new("RGB", (max(image.width, legend.width), image.height + legend.height),
                    (255, 255, 255))
    out.paste(image, (0, 0))
    out.paste(legend, (0, image.height))
    return np.asarray(out)


def write_route_map(path: str | Path, pixels: np.ndarray, route: RouteMap, *,
                    overwrite: bool) -> Path:
    """Render and write atomically as PNG (same rules as any output)."""
    rgb = render_route_map(pixels, route)
    return write_image(Path(path), [rgb], width=rgb.shape[1], height=rgb.shape[0], channels=3,
                       dtype=np.uint8, meta=ImageMeta(format="PNG"), fmt="PNG",
                       overwrite=overwrite)
