"""TADT: the straight-through estimator, the slice-able projection, what bypassed branches
cost, coordinates and cells by hand, the upsamplers' tile independence, and the runner."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from sr_tile.errors import UsageError
from sr_tile.models.layers import implicit
from sr_tile.models.registry import create_model
from sr_tile.models.tadt import build
from sr_tile.models.tadt.model import MSTB, WindowBranch, output_grid, sample_routes
from sr_tile.routing import RoutingOptions
from sr_tile.runner import make_runner
from sr_tile.tiler import TileConfig, tiled_upscale
from tests.conftest import image_folders

NAME = "tadt-light"


pytestmark = pytest.mark.usefixtures("one_thread")


def _model(upsampler: str = "liif", scale: float = 2.5):
    torch.manual_seed(0)
    model = build(variant=NAME, upsampler=upsampler, scale=scale).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model


def test_straight_through_estimator_passes_the_gradient_to_p():
    p = torch.tensor([0.2, 0.7, 0.9, 0.5], requires_grad=True)
    r = sample_routes(p, torch.Generator().manual_seed(0))
    assert set(r.detach().tolist()) <= {0.0, 1.0}  # forward: a Bernoulli draw
    weights = torch.tensor([1.0, -2.0, 3.0, 0.5])
    (r * weights).sum().backward()
    assert torch.equal(p.grad, weights)  # backward: dL/dr handed to p unchanged


def test_slice_able_projection_equals_the_full_one_with_bypassed_branches_zeroed():
    block = _model().groups[0].blocks[0]
    x = torch.rand(2, 32, 64, 64)
    for route in ([True, False, True, False], [False, False, False, True], [False] * 4):
        with torch.no_grad():
            sliced = block(x, route)
            masked = block(x, torch.tensor([route] * 2, dtype=torch.float32))
        assert (sliced - masked).abs().max() <= 1e-5


def test_bypassed_branches_cost_no_flops_and_do_not_run():
    model = _model()
    calls: list[int] = []
    for module in model.modules():
        if isinstance(module, WindowBranch):
            module.register_forward_hook(lambda m, a, o: calls.append(1))
    x = torch.rand(1, 3, 64, 64)
    route = torch.zeros(model.config.branches, dtype=torch.bool)
    route[::3] = True
    with torch.no_grad():
        model.extract(x, route)
    assert len(calls) == 2 * int(route.sum())  # two MSTBs per group share the route
    full = model.extractor_flops(1, 64, 64, None)
    none = model.extractor_flops(1, 64, 64, torch.zeros_like(route))
    part = model.extractor_flops(1, 64, 64, route)
    assert none < part < full
    block = model.groups[0].blocks[0]
    per_branch = [block_flops - model.mstb_flops(4096, [j != k for j in range(4)])
                  for k, block_flops in enumerate([model.mstb_flops(4096, [True] * 4)] * 4)]
    assert all(v > 0 for v in per_branch) and per_branch[2] > per_branch[0]  # 16x16 > 4x4
    assert isinstance(block, MSTB)


def test_static_tile_flops_equal_a_counted_pass():
    from sr_tile.flops import count_flops

    model = _model(scale=2.5)
    assert model.tile_flops(32, 64) == count_flops(model, (1, 3, 32, 64))


def test_coordinates_and_cells_by_hand():
    x = torch.zeros(1, 3, 4, 2)
    ys, xs = output_grid(x, 2.5)  # 4 -> 10 rows, 2 -> 5 columns (round half up)
    assert ys.shape == (1, 10) and xs.shape == (1, 5)
    assert ys[0, :3].tolist() == pytest.approx([-0.3, 0.1, 0.5])  # (k + .5) * 4/10 - .5
    assert xs[0].tolist() == pytest.approx([-0.3, 0.1, 0.5, 0.9, 1.3])
    # LIIF's ensemble: the cells whose centres bracket u, and 2 * (u - c), clamped at the edges
    (lo, rel_lo), (hi, rel_hi) = implicit._neighbours(torch.tensor([[-0.3, 0.1, 0.5, 1.3]]), 2)
    assert lo[0].tolist() == [0, 0, 0, 1] and hi[0].tolist() == [0, 1, 1, 1]
    assert rel_lo[0].tolist() == pytest.approx([-0.6, 0.2, 1.0, 0.6])
    assert rel_hi[0].tolist() == pytest.approx([-0.6, -1.8, -1.0, 0.6])


@pytest.mark.parametrize("upsampler", implicit.UPSAMPLERS)
def test_upsamplers_read_a_tile_as_the_whole_image(upsampler):
    """Queries given in global coordinates: a tile's features (with a 2-cell margin) give the
    whole map's values at the tile's interior queries, at x2.5."""
    torch.manual_seed(0)
    up = implicit.build_upsampler(upsampler, 8)
    with torch.no_grad():
        for p in up.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    feat, lr = torch.rand(1, 8, 20, 24), torch.rand(1, 3, 20, 24)
    ys, xs = output_grid(lr, 2.5)
    with torch.no_grad():
        whole = up(feat, lr, ys, xs, 2.5)
        y0, x0 = 6, 8  # a tile of rows 6..15, columns 8..19
        tile = up(feat[..., y0:16, x0:20], lr[..., y0:16, x0:20], ys - y0, xs - x0, 2.5)
    rows = (ys[0] >= y0 + 2) & (ys[0] <= 16 - 3)
    cols = (xs[0] >= x0 + 2) & (xs[0] <= 20 - 3)
    assert rows.sum() > 5 and cols.sum() > 5
    got = tile[:, :, rows][..., cols]
    want = whole[:, :, rows][..., cols]
    assert (got - want).abs().max() <= 1e-4


def test_routing_is_decided_once_per_image_and_reported(astronaut):
    model = _model()
    runner = make_runner(model, device=torch.device("cpu"), alpha="bicubic",
                         routing=RoutingOptions())
    picture = np.ascontiguousarray(astronaut[100:164, 180:276])
    config = TileConfig.resolve(tile=64, overlap=32, margin=8, default_tile=128,
                                default_overlap=32, size_multiple=32)
    runner.reset()
    runner.prepare(picture, config)
    with torch.inference_mode():
        out = np.concatenate(list(tiled_upscale(picture, runner, scale=2.5, config=config)))
    assert out.shape == (160, 240, 3)
    extras = runner.extras()
    assert extras["branches"] == 16 and len(extras["route"]) == 16
    assert 0 < runner.flops and runner.flops_static > 0
    with pytest.raises(UsageError, match="--static"):
        make_runner(model, device=torch.device("cpu"), alpha="bicubic",
                    routing=RoutingOptions(preset="M"))


def test_any_scale_builds_and_sizes_are_round_half_up():
    model = create_model(NAME, scale=7.3, weights=False)
    assert model.scale == 7.3
    x = torch.rand(1, 3, 32, 64)
    with torch.no_grad():
        y = model(x)
    assert y.shape[-2:] == (math.floor(32 * 7.3 + 0.5), math.floor(64 * 7.3 + 0.5))


def test_beta_penalty_counts_only_beta_above_the_scale_threshold():
    from sr_tile.models.tadt.training import beta_penalty

    beta = torch.tensor([0.5, 0.9], requires_grad=True)
    # threshold at x4: 0.25 + 0.25 * 2 = 0.75: only the second is penalised
    value = beta_penalty(beta, 4.0)
    assert value.item() == pytest.approx(0.9 / 2)
    value.backward()
    assert beta.grad.tolist() == [0.0, 0.5]


def test_penalty_thresholds_come_from_the_config(tmp_path: Path):
    from sr_tile.errors import ConfigError
    from sr_tile.models.tadt.training import beta_penalty
    from sr_tile.train import default_config
    from sr_tile.train.config import dump_config, load_config

    cfg = load_config(default_config("tadt", "light"), base=tmp_path)
    alphas = cfg.phases.tadt.alphas
    assert alphas == (0.0, 0.0625, 2.0) and cfg.phases.baseline.alphas == (0.25, 0.25, 0.5)
    # x2's threshold is 0.0625 * 2^2 = 0.25: 0.5 is penalised there, not at x4 (1.0)
    beta = torch.tensor([0.5])
    assert beta_penalty(beta, 2.0, alphas).item() == 0.5
    assert beta_penalty(beta, 4.0, alphas).item() == 0.0
    saved = tmp_path / "config.yaml"
    saved.write_text(dump_config(cfg))
    assert load_config(saved, base=tmp_path) == cfg
    for bad in ("[0.25, 0.25]", "[0.25, 0.25, x]", "0.25"):
        with pytest.raises(ConfigError, match="phases.tadt.alphas"):
            load_config(default_config("tadt", "light"), [f"phases.tadt.alphas={bad}"],
                        base=tmp_path)


def test_the_tadt_phase_starts_beta_on_the_threshold_and_trains_tarc_at_its_own_lr():
    import torch.nn.functional as F

    from sr_tile.models.tadt.training import TADTPhaseConfig, TADTTask, fit_beta_to_threshold

    model = build(variant=NAME)
    scales = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    assert torch.allclose(F.softplus(model.tarc.scale_branch(scales)), torch.ones(4, 1))
    assert fit_beta_to_threshold(model, (0.0, 0.0625, 2.0), (1.0, 4.0)) < 0.02
    with torch.no_grad():
        beta = F.softplus(model.tarc.scale_branch(scales))[:, 0]
    assert beta.tolist() == pytest.approx([0.0625, 0.25, 0.5625, 1.0], abs=0.02)

    config = TADTPhaseConfig(steps=1, lr=2e-4, tarc_lr=1e-3)
    tarc = {id(p) for p in model.tarc.parameters()}
    base, = TADTTask().param_groups(model, "baseline", config)
    assert not tarc & {id(p) for p in base["params"]}
    assert not any(p.requires_grad for p in model.tarc.parameters())
    rest, own = TADTTask().param_groups(model, "tadt", config)
    assert {id(p) for p in own["params"]} == tarc and own["base_lr"] == 1e-3
    assert rest["base_lr"] == 2e-4 and all(p.requires_grad for p in model.parameters())


def test_scales_above_training_route_as_its_top():
    model = _model()
    with torch.no_grad():
        model.tarc.scale_branch[-1].weight.normal_()  # beta now depends on the scale
        x = torch.rand(1, 3, 32, 32)
        assert torch.equal(model.route(x, 6.0)[1], model.route(x, 4.0)[1])
        assert not torch.equal(model.route(x, 3.0)[1], model.route(x, 4.0)[1])


def test_arbitrary_scale_batches_line_up_with_their_targets():
    from skimage import data

    from sr_tile.train.data import ImagePair, ScaleSampler

    hr = data.astronaut()
    sampler = ScaleSampler([ImagePair("a", hr, hr[::4, ::4], "x", False)], lr_patch=32,
                           queries=16, augment=False)
    b = sampler.batch(2, torch.Generator().manual_seed(3))
    assert b.lr.shape == (2, 3, 32, 32) and b.hr.shape == (2, 3, 16, 16)
    assert 1.0 <= b.scale <= 4.0 and torch.all(b.ys[:, 1:] > b.ys[:, :-1])
    # the LR is the crop's antialiased bicubic, so bicubic at the query coordinates comes
    # back close to the HR targets
    from sr_tile.imresize import bicubic_grid

    back = bicubic_grid(b.lr, b.ys, b.xs)
    assert (back - b.hr).abs().mean() < 0.06


def test_hard_pool_keeps_the_crops_bicubic_gets_most_wrong():
    """hard_pool k draws the same crops as a k-times-larger uniform batch (one generator) and
    keeps the n with the largest bicubic error, in draw order."""
    from skimage import data

    from sr_tile.imresize import bicubic_grid
    from sr_tile.train.data import ImagePair, ScaleSampler

    hr = data.astronaut()  # a smooth background and a detailed figure
    pairs = [ImagePair("a", hr, hr[::4, ::4], "x", False)]
    uniform = ScaleSampler(pairs, lr_patch=32, queries=16, scales=(3.0, 3.0))
    hard = ScaleSampler(pairs, lr_patch=32, queries=16, scales=(3.0, 3.0), hard_pool=4)
    every = uniform.batch(24, torch.Generator().manual_seed(5))
    kept = hard.batch(6, torch.Generator().manual_seed(5))
    err = (bicubic_grid(every.lr, every.ys, every.xs) - every.hr).square().mean(dim=(1, 2, 3))
    top = err.topk(6).indices.sort().values
    assert torch.equal(kept.lr, every.lr[top]) and torch.equal(kept.hr, every.hr[top])
    assert torch.equal(kept.ys, every.ys[top]) and torch.equal(kept.xs, every.xs[top])
    assert err[top].min() >= err.median()


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    return image_folders(tmp_path_factory.mktemp("tadt-images"), 256)


def test_both_phases_train_and_the_weights_load(folders, tmp_path):
    from sr_tile.train import run_training
    from sr_tile.train.config import from_dict

    phase = {"steps": 3, "lr": 5e-4, "batch_size": 2, "queries": 16, "val_every": 3,
             "ckpt_every": 3, "log_every": 1}
    cfg = from_dict({
        "model": NAME, "scale": 4, "seed": 0, "run_dir": str(tmp_path / "run"),
        "device": "cpu",
        "data": {"train_dir": str(folders["train"]), "val_dir": str(folders["val"]),
                 "cache_dir": str(folders["root"] / "cache"), "lr_patch": 32,
                 "val_patch": 32, "val_crops": 1},
        "phases": {"baseline": phase, "tadt": phase},
    })
    result = run_training(cfg)
    assert result.phases_run == ["baseline", "tadt"]
    tarc_before = create_model(NAME, weights=False).tarc.state_dict()
    tarc_after = result.model.tarc.state_dict()
    assert any(not torch.equal(tarc_before[k], tarc_after[k]) for k in tarc_before)
    assert set(result.val["psnr_y"]) == {"all", "routed"}
    loaded = create_model(NAME, scale=2.5, weights=result.export_path)
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        trained = result.model.eval()
        trained.scale = 2.5
        assert torch.equal(loaded(x), trained(x))


def test_scales_past_training_say_so_once(tmp_path, small_png):
    from typer.testing import CliRunner

    from sr_tile.cli import app
    from sr_tile.models.checkpoint import save_weights

    weights = save_weights(_model(scale=4), tmp_path / "w.safetensors", name=NAME, scale=4)
    for scale, noted in (("2.5", False), ("7.3", True)):
        result = CliRunner().invoke(app, ["upscale", str(small_png), "-m", NAME, "--weights",
                                          str(weights), "-s", scale, "-o",
                                          str(tmp_path / f"x{scale}.png")])
        assert result.exit_code == 0, result.output
        assert ("out of distribution" in result.output) == noted
    from PIL import Image

    with Image.open(tmp_path / "x7.3.png") as im:  # 48 x 40 in: round half up of 7.3x
        assert im.size == (350, 292)


def test_fig2_report_routes_each_image_at_each_scale_and_plots(tmp_path, astronaut):
    """``benchmarks/tadt_scales.py``: routes, FLOPs per LR pixel and the plot (untrained: every
    branch on, so 100 % of the all-branch extractor at each scale)."""
    import json
    import subprocess
    import sys

    from PIL import Image

    pytest.importorskip("matplotlib")
    folder = tmp_path / "hr"
    folder.mkdir()
    Image.fromarray(astronaut[:192, :256]).save(folder / "a.png")
    report, plot = tmp_path / "r.json", tmp_path / "f.png"
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "tadt_scales.py"
    done = subprocess.run([sys.executable, str(script), str(folder), "--untrained",
                           "--scales", "2,2.5", "--json", str(report), "--plot", str(plot)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    data = json.loads(report.read_text())
    assert data["scales"] == [2.0, 2.5] and [i["name"] for i in data["images"]] == ["a"]
    for row in data["images"][0]["by_scale"]:
        assert row["route"] == "1" * 16 and row["branches_on"] == 16
        assert row["extractor_flops_px"] == data["extractor_flops_px_all"]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_large_image_is_routed_from_crops_of_the_training_size():
    """Past ROUTE_VIEW_PIXELS TARC reads evenly spread native-resolution crops (corners
    included), and its e for the image is the mean of its e for each crop."""
    from sr_tile.models.tadt.runner import ROUTE_CROP, ROUTE_VIEW_PIXELS, route_view

    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    assert route_view(small).shape == (1, 3, 300, 400)
    large = rng.integers(0, 256, (700, 1000, 3), dtype=np.uint8)
    crops = route_view(large)
    n = crops.shape[0]
    assert crops.shape[1:] == (3, ROUTE_CROP, ROUTE_CROP) and 1 < n <= ROUTE_VIEW_PIXELS // 32**2
    assert torch.equal(crops[0], torch.from_numpy(large[:32, :32]).permute(2, 0, 1) / 255.0)
    assert torch.equal(crops[-1], torch.from_numpy(large[-32:, -32:]).permute(2, 0, 1) / 255.0)

    tarc = _model().tarc
    with torch.no_grad():
        tarc.to_e.weight.normal_()
        scale = torch.tensor([3.0])
        p_image, beta = tarc(crops, scale, one_image=True)
        e_each = tarc.to_e(tarc.image(crops).mean(dim=(2, 3)))
        sig = torch.sigmoid(e_each.mean(dim=0, keepdim=True))
        expected = torch.clamp(beta[:, None] * 16 * sig / sig.sum(), max=1.0)
    assert p_image.shape == (1, 16) and torch.allclose(p_image, expected, atol=1e-6)


def test_liif_dead_units_sees_a_collapsed_mlp():
    """The training diagnostic: 0 with every last hidden ReLU firing somewhere, 1 when the
    MLP has collapsed (all of them off), the state in which a run's output is bicubic plus a
    constant."""
    torch.manual_seed(0)
    liif = implicit.LIIF(in_channels=8)
    feat = torch.randn(1, 8, 12, 12)
    last_hidden = liif.imnet[-3]
    with torch.no_grad():
        last_hidden.weight.zero_()
        last_hidden.bias.fill_(0.5)
        assert liif.dead_units(feat, 4.0) == 0.0
        last_hidden.bias.fill_(-0.5)
        assert liif.dead_units(feat, 4.0) == 1.0
        last_hidden.bias[:64] = 0.5
        assert liif.dead_units(feat, 4.0) == pytest.approx(0.75)


def test_shipped_weights_say_how_they_were_made_beat_bicubic_and_route_by_scale(astronaut):
    """The shipped tadt-light: one file for every scale, trained by ``sr-tile train tadt``
    (both phases in its metadata), better than bicubic on a real photo at an integer and a
    fractional scale, routed and static alike, and TARC turns on fewer branches at x2 than at
    x4."""
    from sr_tile.bench.datasets import make_lr
    from sr_tile.metrics import psnr_y
    from sr_tile.models.checkpoint import read_metadata
    from sr_tile.models.registry import shipped_weights
    from sr_tile.models.tadt.runner import route_view
    from sr_tile.upscale import UpscaleOptions, Upscaler

    path = shipped_weights(NAME, 2.5)
    assert path is not None and path == shipped_weights(NAME, 4), "tadt-light: no shipped file"
    meta = read_metadata(path)
    assert meta["command"].startswith("sr-tile train tadt") and meta["hardware"]
    assert meta["iterations"]["baseline"] > 0 and meta["iterations"]["tadt"] > 0
    hr = np.ascontiguousarray(astronaut[40:280, 160:400])  # 240 px: divides by 2.5, 3 and 4
    for scale in (2.5, 4):
        lr = make_lr(hr, scale)
        base = psnr_y(Upscaler(UpscaleOptions(model="bicubic", scale=scale)).upscale_whole(lr),
                      hr, math.ceil(scale))
        for static in (True, False):
            up = Upscaler(UpscaleOptions(model=NAME, scale=scale, static=static))
            assert psnr_y(up.upscale_whole(lr), hr, math.ceil(scale)) > base + 0.1, (scale, static)
    model = create_model(NAME, scale=4)
    with torch.inference_mode():
        on = {s: int(model.route(route_view(make_lr(hr, s)), s)[0].sum()) for s in (2, 4)}
    assert on[2] < on[4], on
