"""Every registry row, one contract (timm-style): a new family passes by adding its row.

For each model at each scale it supports (its integer scales, and one non-integer scale
when it has a continuous range): it builds untrained, its descriptor agrees with its row,
a forward pass has the right shape, tiled equals whole where the descriptor says tiling is
exact, FLOPs are counted (and the runner's books add up), and its weights survive a save
and load.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sr_tile.models import MODELS, Routing, create_model
from sr_tile.models.checkpoint import save_weights
from sr_tile.routing import RoutingOptions
from sr_tile.runner import TileRunner, make_runner, runner_class
from sr_tile.tiler import TileConfig, output_length, tiled_upscale


def _cases() -> list[tuple[str, float]]:
    cases = []
    for name, entry in MODELS.items():
        cases += [(name, s) for s in entry.scales]
        if entry.scale_range is not None:
            low, high = entry.scale_range
            cases.append((name, round(min(low + 1.3, high), 2)))
    return cases


CASES = _cases()
IDS = [f"{name}-x{scale:g}" for name, scale in CASES]


@pytest.fixture(scope="module")
def picture() -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(data.astronaut()[180:227, 200:261])  # 47 x 61, odd sizes


@pytest.mark.parametrize("name, scale", CASES, ids=IDS)
def test_row_builds_and_its_descriptor_agrees(name, scale):
    entry = MODELS[name]
    model = create_model(name, scale=scale, weights=False)
    d = model.descriptor
    assert d.name == name and d.scale == scale and not model.training
    assert d.routing.value == entry.routing
    assert d.default_overlap > 2 * d.margin and d.default_tile > d.default_overlap
    assert d.size_multiple >= 1 and d.default_tile % d.size_multiple == 0
    assert issubclass(runner_class(model), TileRunner)
    if d.routing != Routing.NONE:
        assert runner_class(model) is not TileRunner  # a routed model brings its runner


@pytest.mark.parametrize("name, scale", CASES, ids=IDS)
def test_forward_shape_flops_and_tiled_equals_whole(name, scale, picture):
    model = create_model(name, scale=scale, weights=False)
    d = model.descriptor
    h, w = picture.shape[:2]
    out_h, out_w = output_length(h, scale), output_length(w, scale)
    runner = make_runner(model, device=torch.device("cpu"), alpha="bicubic",
                         routing=RoutingOptions())
    tile = max(d.size_multiple, 24 // d.size_multiple * d.size_multiple)
    config = TileConfig.resolve(tile=tile + 2 * d.default_overlap, overlap=d.default_overlap,
                                margin=d.margin, default_tile=d.default_tile,
                                default_overlap=d.default_overlap, size_multiple=d.size_multiple,
                                batch_size=4)
    runner.reset()
    runner.prepare(picture, config)
    with torch.inference_mode():
        tiled = np.concatenate(list(tiled_upscale(picture, runner, scale=scale, config=config)))
    assert tiled.shape == (out_h, out_w, 3) and tiled.dtype == np.uint8
    # a router costs extra (AdaFormer-light untrained, halting nothing: +22 % of estimator)
    assert runner.flops_static > 0 and 0 < runner.flops <= runner.flops_static * 1.5
    assert runner.seconds > 0
    if float(scale).is_integer():
        m = d.size_multiple  # the network itself takes sides that are multiples of it
        pad = ((0, -h % m), (0, -w % m), (0, 0))  # as the tiler pads: mirrored
        padded = np.pad(picture, pad, mode="symmetric") if m > 1 else picture
        x = torch.from_numpy(padded).permute(2, 0, 1)[None] / 255.
        with torch.inference_mode():
            y = model(x)
        assert tuple(y.shape) == (1, 3, *(output_length(n, scale) for n in x.shape[-2:]))
        if d.exact_tiling:
            whole = y[0].clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy()
            assert np.abs(tiled[: whole.shape[0], : whole.shape[1]].astype(int)
                          - whole.astype(int)).max() <= 1


@pytest.mark.parametrize("name, scale", CASES, ids=IDS)
def test_weights_survive_save_and_load(name, scale, tmp_path):
    torch.manual_seed(0)
    model = create_model(name, scale=scale, weights=False)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    path = save_weights(model, tmp_path / "w.safetensors", name=name, scale=scale)
    loaded = create_model(name, scale=scale, weights=path)
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
