"""A picture of the path each tile took, over the image (ENAF's Fig. 1).

Drawn at LR resolution (or smaller for huge inputs): a dimmed grayscale copy of
the image tinted by each tile's path, tile borders, and a legend with the share
of tiles per path.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from sr_tile.io import ImageMeta, write_image
from sr_tile.tiler import TileConfig

COLORS = ((70, 130, 230), (60, 190, 90), (240, 190, 40), (220, 60, 60))  # cheap -> costly
MAX_SIDE = 4096


def _gray8(pixels: np.ndarray) -> np.ndarray:
    color = pixels[..., : 1 if pixels.shape[2] in (1, 2) else 3].astype(np.float32)
    if pixels.dtype == np.uint16:
        color /= 257.0
    elif pixels.dtype != np.uint8:
        color *= 255.0
    gray = color.mean(axis=2) if color.shape[2] == 3 else color[..., 0]
    return np.clip(gray, 0, 255).astype(np.uint8)


def render_exit_map(pixels: np.ndarray, tiling: TileConfig, paths: Sequence[int],
                    names: Sequence[str]) -> np.ndarray:
    """RGB uint8 map; ``paths`` in the tiler's row-major tile order."""
    height, width = pixels.shape[:2]
    py, px = tiling.plans(height, width)
    if len(paths) != py.count * px.count:
        raise ValueError(f"{len(paths)} paths for {py.count * px.count} tiles")
    step = max(1, -(-max(height, width) // MAX_SIDE))
    gray = _gray8(pixels)[::step, ::step].astype(np.float32)
    tint = np.zeros(gray.shape + (3,), np.float32)
    # Paint tiles in order, each over its stride cell, so overlaps split evenly.
    half = tiling.overlap // 2
    for k, path in enumerate(paths):
        i, j = divmod(k, px.count)
        y0 = 0 if i == 0 else py.starts[i] + half
        x0 = 0 if j == 0 else px.starts[j] + half
        y1 = height if i == py.count - 1 else py.starts[i + 1] + half
        x1 = width if j == px.count - 1 else px.starts[j + 1] + half
        tint[y0 // step : -(-y1 // step), x0 // step : -(-x1 // step)] = COLORS[path]
    rgb = 0.45 * gray[..., None] + 0.55 * tint
    image = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for y in py.starts[1:]:
        draw.line([(0, (y + half) // step), (image.width, (y + half) // step)], (0, 0, 0))
    for x in px.starts[1:]:
        draw.line([((x + half) // step, 0), ((x + half) // step, image.height)], (0, 0, 0))
    legend = Image.new("RGB", (image.width, 22), (255, 255, 255))
    ld = ImageDraw.Draw(legend)
    x = 4
    for j, name in enumerate(names):
        share = 100.0 * sum(p == j for p in paths) / len(paths)
        ld.rectangle([x, 5, x + 12, 17], fill=COLORS[j])
        label = f"{name} {share:.0f}%"
        ld.text((x + 16, 5), label, fill=(0, 0, 0))
        x += 24 + int(ld.textlength(label))
    out = Image.new("RGB", (image.width, image.height + legend.height), (255, 255, 255))
    out.paste(image, (0, 0))
    out.paste(legend, (0, image.height))
    return np.asarray(out)


def write_exit_map(path: str | Path, pixels: np.ndarray, tiling: TileConfig,
                   paths: Sequence[int], names: Sequence[str], *, overwrite: bool) -> Path:
    """Render and write atomically as PNG (same rules as any output)."""
    rgb = render_exit_map(pixels, tiling, paths, names)
    return write_image(Path(path), [rgb], width=rgb.shape[1], height=rgb.shape[0], channels=3,
                       dtype=np.uint8, meta=ImageMeta(format="PNG"), fmt="PNG",
                       overwrite=overwrite)
