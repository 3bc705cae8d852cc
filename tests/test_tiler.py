"""Tiled inference equals whole-image inference and covers every pixel."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from sr_tile.errors import ConfigError
from sr_tile.tiler import TileConfig, plan_axis, tile_weights, tiled_upscale, weight_sum

SCALE = 2


def random_sr_net(seed: int = 0) -> nn.Module:
    """A random conv SR net with receptive-field radius 3 (three 3x3 convs) + pixel shuffle."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.Tanh(),
        nn.Conv2d(16, 3 * SCALE * SCALE, 3, padding=1),
        nn.PixelShuffle(SCALE),
    )
    return net.eval()


def whole(net: nn.Module, image: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(image).permute(2, 0, 1)[None]
    with torch.no_grad():
        return net(x)[0].permute(1, 2, 0).numpy()


def tiled(net: nn.Module, image: np.ndarray, tile: int, overlap: int, margin: int = 3, batch=3):
    config = TileConfig.resolve(
        tile=tile, overlap=overlap, margin=margin, default_tile=64, default_overlap=8,
        batch_size=batch,
    )
    with torch.no_grad():
        bands = list(tiled_upscale(image, net, scale=SCALE, config=config))
    return np.concatenate(bands, axis=0)


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    from skimage import data

    return (data.astronaut()[:150, :203].astype(np.float32) / 255.0).copy()


@pytest.mark.parametrize("tile,overlap", [(24, 8), (32, 10), (57, 12), (100, 7), (400, 8)])
def test_tiled_equals_whole_for_conv_net(photo, tile, overlap):
    net = random_sr_net()
    ref = whole(net, photo)
    out = tiled(net, photo, tile, overlap)
    assert out.shape == ref.shape == (300, 406, 3)
    assert np.abs(out - ref).max() < 1e-4


def test_output_does_not_depend_on_tile_size(photo):
    net = random_sr_net(seed=1)
    a = tiled(net, photo, 24, 8)
    b = tiled(net, photo, 71, 9)
    assert np.abs(a - b).max() < 1e-4


@pytest.mark.parametrize("batch", [1, 5, 13, 40, 1000])
def test_batches_running_across_tile_rows_change_nothing(photo, batch):
    """24/8 tiles on 203 px give 13 tiles per row: batches of 5 and 40 straddle rows, 13 fit
    one row each, 1000 is the whole image in one batch."""
    net = random_sr_net(seed=2)
    ref = whole(net, photo)
    done = []
    config = TileConfig.resolve(tile=24, overlap=8, margin=3, default_tile=64,
                                default_overlap=8, batch_size=batch)
    with torch.no_grad():
        bands = list(tiled_upscale(photo, net, scale=SCALE, config=config, on_tiles=done.append))
    assert sum(done) == config.count(*photo.shape[:2]) and max(done) <= batch
    assert sum(b.shape[0] for b in bands) == 300  # every output row exactly once, in order
    assert np.abs(np.concatenate(bands, axis=0) - ref).max() < 1e-4


def test_margin_too_small_for_receptive_field_is_not_exact(photo):
    """The test above could not pass by accident: with no margin, seams appear."""
    net = random_sr_net()
    out = tiled(net, photo, 24, 8, margin=0)
    assert np.abs(out - whole(net, photo)).max() > 1e-3


def test_tiny_image_smaller_than_tile():
    image = np.random.default_rng(0).random((5, 7, 3), dtype=np.float32)
    net = random_sr_net()
    out = tiled(net, image, 64, 8)
    assert out.shape == (10, 14, 3)
    assert np.abs(out - whole(net, image)).max() < 1e-4


@pytest.mark.parametrize("length,tile,overlap,margin", [(10, 4, 3, 1), (100, 32, 8, 3), (33, 32, 8, 0)])
def test_grid_covers_every_pixel_with_positive_weight(length, tile, overlap, margin):
    plan = plan_axis(length, tile, overlap, margin)
    assert plan.starts[0] == 0 and plan.starts[-1] + plan.tile == length
    assert all(b - a <= tile - overlap for a, b in zip(plan.starts, plan.starts[1:]))
    total = weight_sum(plan, 4)
    assert total.shape == (length * 4,) and total.min() > 0
    w = tile_weights(plan, 1, 4)
    assert w[: margin * 4].sum() == 0 and w[-margin * 4 or len(w) :].sum() == 0  # discarded
    if tile > 2 * overlap:
        assert w.max() == 1.0  # interior kept whole


def test_integer_images_round_trip_dtype():
    image = (np.random.default_rng(1).random((40, 50, 3)) * 65535).astype(np.uint16)
    config = TileConfig.resolve(tile=16, overlap=8, margin=1, default_tile=16, default_overlap=8)
    up = nn.Upsample(scale_factor=2, mode="nearest")
    out = np.concatenate(list(tiled_upscale(image, up, scale=2, config=config)))
    assert out.dtype == np.uint16
    assert np.array_equal(out, image.repeat(2, 0).repeat(2, 1))


def test_size_multiple_pads_small_images():
    seen = []

    def fn(x):
        seen.append(tuple(x.shape[-2:]))
        return nn.functional.interpolate(x, scale_factor=2, mode="nearest")

    image = np.random.default_rng(2).random((13, 19, 1), dtype=np.float32)
    config = TileConfig.resolve(
        tile=30, overlap=8, margin=1, default_tile=16, default_overlap=8, size_multiple=8
    )
    out = np.concatenate(list(tiled_upscale(image, fn, scale=2, config=config)))
    assert all(h % 8 == 0 and w % 8 == 0 for h, w in seen)
    assert np.array_equal(out, image.repeat(2, 0).repeat(2, 1))


@pytest.mark.parametrize(
    "tile,overlap,margin", [(32, 4, 2), (32, 32, 2), (0, 8, 0), (32, -1, 0)]
)
def test_bad_tiling_options_are_config_errors(tile, overlap, margin):
    with pytest.raises(ConfigError):
        TileConfig.resolve(
            tile=tile, overlap=overlap, margin=margin, default_tile=32, default_overlap=8
        )
