"""Tiled inference equals whole-image inference and covers every pixel."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from sr_tile.errors import ConfigError
from sr_tile.tiler import TileConfig, plan_axis, tile_weights, tiled_upscale, weight_sum

SCALE = 2


def per_batch(net):
    """A network as the tiler's ``fn(batch, windows)`` (a fixed-scale net needs no windows)."""
    return lambda x, windows: net(x)


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
        bands = list(tiled_upscale(image, per_batch(net), scale=SCALE, config=config))
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
        bands = list(tiled_upscale(photo, per_batch(net), scale=SCALE, config=config,
                                   on_tiles=done.append))
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
    plan = plan_axis(length, tile, overlap, margin, length * 4)
    total = weight_sum(plan)
    assert total.shape == (length * 4,) and total.min() > 0
    w = tile_weights(plan, 1)
    assert w[: margin * 4].sum() == 0 and w[-margin * 4 or len(w) :].sum() == 0  # discarded
    if tile > 2 * overlap:
        assert w.max() == 1.0  # interior kept whole


@pytest.mark.parametrize("length,tile,multiple", [(640, 256, 1), (400, 256, 1), (100, 32, 1),
                                                  (1000, 256, 16), (257, 256, 1), (256, 256, 1)])
def test_fitted_tiles_cover_the_axis_with_as_many_tiles_and_less_overlap(length, tile, multiple):
    """``fit`` shrinks the tile so that neighbours overlap by about ``overlap``: the same
    number of tiles, never more pixels, and the grid stays valid for blending."""
    plain = plan_axis(length, tile, 8, 2)
    fitted = plan_axis(length, tile, 8, 2, fit=True, size_multiple=multiple)
    assert fitted.count == plain.count and fitted.tile <= plain.tile
    assert fitted.tile % multiple == 0 or fitted.tile == length
    assert fitted.starts[0] == 0 and fitted.starts[-1] + fitted.tile == length
    assert all(0 < b - a <= fitted.tile - 8 for a, b in zip(fitted.starts, fitted.starts[1:]))
    assert weight_sum(fitted).min() > 0
    if (length, tile) == (640, 256):
        assert fitted.tile == 219 and fitted.count * fitted.tile == 657  # 1.03x, not 1.2x


def test_integer_images_round_trip_dtype():
    image = (np.random.default_rng(1).random((40, 50, 3)) * 65535).astype(np.uint16)
    config = TileConfig.resolve(tile=16, overlap=8, margin=1, default_tile=16, default_overlap=8)
    up = nn.Upsample(scale_factor=2, mode="nearest")
    out = np.concatenate(list(tiled_upscale(image, per_batch(up), scale=2, config=config)))
    assert out.dtype == np.uint16
    assert np.array_equal(out, image.repeat(2, 0).repeat(2, 1))


def test_size_multiple_pads_small_images():
    seen = []

    def fn(x, windows):
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


@pytest.mark.parametrize("length,out_length", [(37, 93), (100, 230), (64, 160), (10, 37)])
def test_output_spans_tile_the_global_grid_exactly(length, out_length):
    """Every output pixel belongs to the spans of the tiles whose LR span holds its centre;
    the spans meet the ends of the output; integer scales give y0 * s."""
    plan = plan_axis(length, 16, 6, 1, out_length)
    spans = [plan.out_span(i) for i in range(plan.count)]
    assert spans[0][0] == 0 and spans[-1][1] == out_length
    covered = np.zeros(out_length, dtype=int)
    for (a, b), y0 in zip(spans, plan.starts):
        covered[a:b] += 1
        centres = (np.arange(a, b) + 0.5) * length / out_length
        assert (centres >= y0).all() and (centres < y0 + plan.tile).all()
    assert covered.min() >= 1 and weight_sum(plan).min() > 0
    whole = plan_axis(length, 16, 6, 1, length * 3)
    assert [whole.out_span(i)[0] for i in range(whole.count)] == [3 * y for y in whole.starts]


def test_non_integer_scale_bicubic_is_the_whole_image_resize_at_any_tile(tmp_path):
    """--scale 2.5 -m bicubic: round-half-up(2.5 W) x round-half-up(2.5 H), equal to a
    whole-image MATLAB resize to that size, whatever the tile size (no rounding seams)."""
    from skimage import data

    from sr_tile.imresize import imresize_np
    from sr_tile.upscale import UpscaleOptions, Upscaler

    photo = np.ascontiguousarray(data.astronaut()[:101, :147])  # odd sizes: 2.5 x is x.5
    want_h, want_w = int(np.floor(101 * 2.5 + 0.5)), int(np.floor(147 * 2.5 + 0.5))
    reference = imresize_np(photo.astype(np.float64), out_size=(want_h, want_w),
                            antialias=False)
    outs = []
    for tile in (24, 40, 256):
        up = Upscaler(UpscaleOptions(model="bicubic", scale=2.5, tile=tile))
        out = up.upscale_whole(photo)
        assert out.shape == (want_h, want_w, 3) and out.dtype == np.uint8
        assert np.abs(out.astype(float) - np.clip(reference, 0, 255)).max() <= 1.0
        outs.append(out.astype(int))
    assert max(np.abs(a - outs[0]).max() for a in outs[1:]) <= 1


def test_scale_checks(tmp_path):
    from sr_tile.errors import UsageError
    from sr_tile.models import get_entry

    bicubic, enaf = get_entry("bicubic"), get_entry("enaf-fsrcnn")
    assert bicubic.resolve_scale(2.5) == 2.5 and bicubic.resolve_scale(4.0) == 4
    assert isinstance(bicubic.resolve_scale(4.0), int) and enaf.resolve_scale(3.0) == 3
    for entry, scale, words in [(enaf, 2.5, "supports x2, x3, x4"), (bicubic, 1.0, "greater"),
                                (bicubic, float("nan"), "greater"), (bicubic, 0.5, "greater"),
                                (bicubic, 100.0, "limit")]:
        with pytest.raises(UsageError, match=words):
            entry.resolve_scale(scale)
