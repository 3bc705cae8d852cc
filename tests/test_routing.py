"""ENAF fusion (Eq. 9), the FLOPs budget, and routed tiled inference."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from sr_tile.errors import ConfigError
from sr_tile.models import create_model
from sr_tile.models.checkpoint import save_weights
from sr_tile.models.enaf.routing import eta_for_budget, fuse, mean_cost, psnr_losses
from sr_tile.routing import RoutingOptions
from sr_tile.upscale import UpscaleOptions, Upscaler

COSTS = torch.tensor([0.0, 0.31, 0.67, 1.0])
#: a texture router (``sr_tile.models.enaf.texture``) whose losses vary over a photo
TEXTURE = {"kind": "texture", "coef": [[-1.0, 0.2, 0.1, 0.02], [-2.0, 0.2, 0.1, 0.01],
                                        [-3.0, 0.1, 0.1, 0.01]]}


def test_fusion_on_made_up_estimates():
    u = torch.tensor([[30.0, 31.0, 32.0, 33.0],   # texture: every path helps
                      [40.0, 40.1, 40.1, 40.2],   # smooth: gains too small to pay for
                      [35.0, 35.5, 35.6, 35.6]])  # only exit 1 is worth it at eta 1
    blank = torch.tensor([False, False, False])
    assert fuse(psnr_losses(u, blank, 1.0), COSTS, eta=0.0).tolist() == [3, 3, 2]
    assert fuse(psnr_losses(u, blank, 1.0), COSTS, eta=1.0).tolist() == [3, 0, 1]
    assert fuse(psnr_losses(u, blank, 1.0), COSTS, eta=100.0).tolist() == [0, 0, 0]
    # the blank vector sends a blank patch to bicubic unless the gain beats gamma
    blank = torch.tensor([True, True, True])
    assert fuse(psnr_losses(u, blank, 1.0), COSTS, eta=0.0).tolist() == [3, 0, 0]
    assert fuse(psnr_losses(u, blank, 0.0), COSTS, eta=0.0).tolist() == [3, 3, 2]


def test_mean_cost_falls_as_eta_rises():
    g = torch.Generator().manual_seed(0)
    u = 30 + torch.rand(500, 4, generator=g).cumsum(1)
    blank = torch.rand(500, generator=g) < 0.2
    losses = psnr_losses(u, blank, 1.0)
    costs = [mean_cost(losses, COSTS, eta=e) for e in np.linspace(0, 8, 40)]
    assert all(a >= b for a, b in zip(costs, costs[1:]))
    assert costs[0] > 0.9 and costs[-1] == 0.0


@pytest.mark.parametrize("budget", [0.3, 0.5, 0.8])
def test_budget_finds_smallest_eta_that_fits(budget):
    g = torch.Generator().manual_seed(1)
    u = 30 + torch.rand(400, 4, generator=g).cumsum(1)
    blank = torch.zeros(400, dtype=torch.bool)
    overhead = 0.016
    losses = psnr_losses(u, blank, 1.0)
    eta = eta_for_budget(losses, COSTS, budget=budget, overhead=overhead)
    assert mean_cost(losses, COSTS, eta=eta) + overhead <= budget
    assert mean_cost(losses, COSTS, eta=eta * 0.98) + overhead > budget


@pytest.mark.parametrize("budget", [0.35, 0.6])
def test_budget_in_reported_flops_while_routing_on_executed_costs(budget):
    executed = torch.tensor([0.0, 0.42, 0.84, 1.0])  # FSRCNN's torch-convention costs
    g = torch.Generator().manual_seed(2)
    u = 30 + torch.rand(400, 4, generator=g).cumsum(1)
    blank = torch.zeros(400, dtype=torch.bool)
    losses = psnr_losses(u, blank, 0.0)
    eta = eta_for_budget(losses, executed, budget=budget, measure=COSTS)
    assert mean_cost(losses, executed, eta=eta, measure=COSTS) <= budget
    assert mean_cost(losses, executed, eta=eta * 0.98, measure=COSTS) > budget
    with pytest.raises(ValueError, match="rise"):  # measures that rank paths apart
        eta_for_budget(losses, executed, budget=budget, measure=COSTS.flip(0))


def test_routing_costs_are_executed_flops_and_rise_with_depth():
    model = create_model("enaf-fsrcnn", scale=4, weights=False)
    executed, classsr = model.costs(32, 32), model.costs(32, 32, "classsr")
    assert executed[0] == classsr[0] == 0 and executed[-1] == classsr[-1] == 1
    assert bool((torch.diff(executed) > 0).all() and (torch.diff(classsr) > 0).all())
    # classsr counts the deconvs at HR: exit 2 looks a third cheaper than it runs
    assert classsr[2] == pytest.approx(315.2 / 467.9, abs=0.01)
    assert executed[2] > 0.8


def test_budget_errors_and_easy_budgets():
    u = torch.full((10, 4), 30.0)
    blank = torch.zeros(10, dtype=torch.bool)
    assert eta_for_budget(psnr_losses(u, blank, 1.0), COSTS, budget=1.0) == 0.0
    with pytest.raises(ConfigError):
        eta_for_budget(psnr_losses(u, blank, 1.0), COSTS, budget=0.01, overhead=0.016)


@pytest.mark.parametrize(
    "kw", [{"preset": "X"}, {"budget": 0.0}, {"budget": 1.5}, {"eta": -1.0},
           {"eta": 1.0, "preset": "L"}]
)
def test_routing_options_are_validated(kw):
    with pytest.raises(ConfigError):
        RoutingOptions(**kw)


@pytest.fixture
def varied_weights(tmp_path):
    """ENAF-FSRCNN with random heads and an estimator whose guesses vary per patch."""
    torch.manual_seed(0)
    model = create_model("enaf-fsrcnn", weights=False)
    with torch.no_grad():
        for head in model.backbone.heads:
            for p in head.parameters():
                p.normal_(0, 0.01)
        model.estimator.fc.weight.normal_(0, 0.3)
        model.estimator.fc.bias.copy_(torch.tensor([30.0, 0.6, 1.0, 1.2]))  # p0, gains
    path = tmp_path / "w.safetensors"
    save_weights(model, path, name="enaf-fsrcnn", scale=4)
    return path


@pytest.fixture
def by_tiles(monkeypatch):
    """ENAF-FSRCNN routed by 32 px tiles, as CARN-M and SRResNet are (not by cells)."""
    from sr_tile.models.enaf.multiexit import MultiExitSR

    monkeypatch.setattr(MultiExitSR, "runs_cells", property(lambda self: False))


def _cell_work(model, paths, rows, cols):
    """classsr FLOPs of ENAF's cells in one tile: each row's runs of one path, one window each."""
    total = 0
    for i, (y0, y1) in enumerate(rows):
        row = paths[i * len(cols):(i + 1) * len(cols)]
        j = 0
        while j < len(cols):
            k = j
            while k + 1 < len(cols) and row[k + 1] == row[j]:
                k += 1
            if row[j]:
                total += model.backbone.cell_path(row[j]).window_flops(
                    y1 - y0, cols[k][1] - cols[j][0])
            j = k + 1
    return total


# the cells of a 120x150 image: the last row and column end at the border and own what is left
CELL_ROWS = [(0, 32), (32, 64), (64, 88), (88, 120)]
CELL_COLS = [(0, 32), (32, 64), (64, 96), (96, 118), (118, 150)]


def _upscale(src, weights, tmp_path, **routing):
    up = Upscaler(UpscaleOptions(model="enaf-fsrcnn", weights=str(weights),
                                 routing=RoutingOptions(**routing)))
    report = up.upscale_file(src, tmp_path / f"out{len(list(tmp_path.iterdir()))}.png",
                             route_map=tmp_path / "map.png")
    return up, report


def test_routed_upscale_counts_what_ran(tmp_path, varied_weights, astronaut, by_tiles):
    src = tmp_path / "in.png"
    picture = astronaut[30:150, 150:300].copy()
    picture[:, :60] = 128  # a flat band: blank tiles, which the blank vector sends to bicubic
    Image.fromarray(picture).save(src)
    up, report = _upscale(src, varied_weights, tmp_path, eta=0.5)
    paths = up.runner.paths
    assert len(paths) == report.tiles and len(set(paths)) > 1  # routing really varied
    model = up.model
    costs = model.backbone.path_flops(32, 32)
    # the estimator reads the image once as a 120x144 map (rows, columns down to a multiple of
    # 8) in 4x5 blocks of 32x32 (zero-padded), and the 5 tiles of the last column (start 118,
    # off the 8 px grid) one by one: 25 tiles' worth instead of 30
    est = (4 * 5 + 5) * model.estimator_flops(32, 32)
    assert len(paths) == 30
    assert report.flops == sum(costs[p] for p in paths) + est
    assert report.flops_static == costs[3] * len(paths)
    assert sum(report.extras["exits"].values()) == pytest.approx(1.0)
    assert report.extras["exits"]["full"] == pytest.approx(paths.count(3) / len(paths))
    assert paths[0] == 0  # the top-left tile is flat
    with Image.open(tmp_path / "map.png") as im:
        assert im.width == 150 and im.height > 120


def test_cell_routing_counts_what_ran(tmp_path, varied_weights, astronaut):
    """By cells: one 120x150 tile holds all 20 cells of the image's grid; each row's runs of
    one path run as one window, and the FLOPs are theirs plus the estimator's."""
    src = tmp_path / "in.png"
    picture = astronaut[30:150, 150:300].copy()
    picture[:, :60] = 128
    Image.fromarray(picture).save(src)
    up, report = _upscale(src, varied_weights, tmp_path, eta=0.5)
    paths, model = up.runner.paths, up.model
    assert report.tiles == 1 and len(paths) == 20 and len(set(paths)) > 1
    # the estimator's map covers 120x144 in 4x5 blocks; the 4 cells of the last column (start
    # 118, off the 8 px grid) are read one by one
    est = (4 * 5 + 4) * model.estimator_flops(32, 32)
    assert report.flops == _cell_work(model, paths, CELL_ROWS, CELL_COLS) + est
    assert report.flops_static == model.backbone.path_flops(120, 150)[3]
    assert paths[0] == 0 and report.extras["exits"]["full"] == pytest.approx(paths.count(3) / 20)
    with Image.open(tmp_path / "map.png") as im:
        assert im.width == 150 and im.height > 120


@pytest.mark.parametrize("tile", [64, 100, 512])
@pytest.mark.parametrize("path", [None, 1, 3])
def test_cell_routing_does_not_depend_on_the_tiles(varied_weights, astronaut, tile, path):
    """Cells are the image's, and every tile's margin covers their halos: any tiling gives
    the image of one whole-image pass (float rounding aside), the same paths and FLOPs."""
    picture = astronaut[100:220, 150:300].copy()
    options = UpscaleOptions(model="enaf-fsrcnn", weights=str(varied_weights),
                             routing=RoutingOptions(eta=None if path else 0.5, path=path))
    whole = Upscaler(replace(options, tile=512))
    tiled = Upscaler(replace(options, tile=tile, overlap=24))
    a, b = whole.upscale_whole(picture), tiled.upscale_whole(picture)
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
    assert whole.runner.paths == tiled.runner.paths
    if tile == 512:
        assert whole.runner.flops == tiled.runner.flops


@pytest.mark.parametrize("tile", [32, 36])
@pytest.mark.parametrize("channels", [3, 1])
def test_whole_image_estimates_equal_tile_by_tile(varied_weights, astronaut, tile, channels,
                                                  by_tiles):
    """prepare() reads the image once (a sub-tile map + prefix sums of the Laplacian); every
    tile must get what the estimator and the blank test give on that tile alone: tiles on the
    8 px grid, the last row and column off it (117 x 150), and a tiling with no tile on it."""
    from sr_tile.tiler import tile_batches

    picture = astronaut[40:157, 150:300].copy()
    picture[:, :50] = 128  # blank tiles
    picture[:, 60:70] = 200  # and tiles near the threshold
    if channels == 1:
        picture = picture[..., :1]
    up = Upscaler(UpscaleOptions(model="enaf-fsrcnn", weights=str(varied_weights), tile=tile,
                                 routing=RoutingOptions(eta=0.5, gamma=1.0)))
    runner = up.runner
    runner.reset()
    runner.prepare(picture, up.tiling)
    u, blank = runner._u, runner._blank  # every tile's, row-major
    tiles = torch.cat([batch for _, batch in tile_batches(picture, up.tiling)])
    with torch.no_grad():
        want_u, want_blank = up.model.estimate(tiles.expand(-1, 3, -1, -1))
    torch.testing.assert_close(u, want_u, atol=1e-3, rtol=0)
    assert torch.equal(blank, want_blank) and 0 < int(blank.sum()) < len(blank)


@pytest.mark.parametrize("cells", [True, False, "texture"])
@pytest.mark.parametrize("budget", [0.25, 0.6])
def test_budget_is_met_per_image(tmp_path, varied_weights, astronaut, budget, cells, request):
    if not cells:
        request.getfixturevalue("by_tiles")
    if cells == "texture":  # the budget bisects the texture router's eta the same way
        from sr_tile.train.calibration import write_presets

        write_presets(varied_weights, {"presets": {"M": {"eta": 0.1, "gamma": 0.0}},
                                       "router": TEXTURE})
    src = tmp_path / "in.png"
    Image.fromarray(astronaut[200:320, 100:250]).save(src)
    _, report = _upscale(src, varied_weights, tmp_path, budget=budget)
    assert report.flops <= budget * report.flops_static
    assert report.flops > 0.5 * budget * report.flops_static  # not all-bicubic for no reason


def test_calibrated_presets_are_ordered_and_loaded(tmp_path, varied_weights, astronaut):
    from sr_tile.models.enaf.calibrate import calibrate, write_presets

    folder = tmp_path / "calib"
    folder.mkdir()
    for k, (y, x) in enumerate([(30, 150), (300, 100), (0, 0)]):
        Image.fromarray(astronaut[y : y + 96, x : x + 112]).save(folder / f"c{k}.png")
    result = calibrate("enaf-fsrcnn", varied_weights, folder, grid=(0.0, 0.5, 2.0, 50.0),
                       gammas=(0.0, 1.0), texture_router=False)
    presets = result["presets"]
    rows = {(r["gamma"], r["eta"]): r for r in result["table"]}
    assert len(rows) == 8
    chosen = {k: rows[(v["gamma"], v["eta"])] for k, v in presets.items()}
    # looser thresholds never cost more FLOPs
    assert chosen["L"]["flops_pct"] >= chosen["M"]["flops_pct"] >= chosen["S"]["flops_pct"]
    for name, limit in result["thresholds_db"].items():
        within = [r for r in rows.values() if r["loss_db"] <= limit]
        if within:
            assert chosen[name]["loss_db"] <= limit
            assert chosen[name]["flops_pct"] == min(r["flops_pct"] for r in within)
    write_presets(varied_weights, result)
    model = create_model("enaf-fsrcnn", weights=varied_weights)
    assert model.presets == presets


def test_texture_losses_are_image_db():
    """All patches on bicubic give up the whole predicted gain, in linearised image dB; the
    full network costs nothing; a patch with more texture costs more on every cheaper path."""
    from sr_tile.models.enaf import texture

    stats = torch.tensor([[0.0, 0.0], [50.0, 30.0], [400.0, 200.0], [3000.0, 900.0]],
                         dtype=torch.float64)
    losses = texture.losses(TEXTURE["coef"], stats, gain_db=1.5)
    assert losses.shape == (4, 4) and bool((losses[:, -1] == 0).all())
    everything = texture.DB * math.expm1(1.5 / texture.DB)
    assert float(losses[:, 0].mean()) == pytest.approx(everything)
    assert bool((torch.diff(losses[:, :3], dim=0) >= 0).all())
    assert bool((torch.diff(losses[:, 0]) > 0).all())
    assert texture.image_gain_db(torch.tensor([[30.0, 31.0, 31.0, 32.0]] * 3)) == \
        pytest.approx(2.0)


def test_patch_statistics_do_not_depend_on_bands_or_channels(astronaut):
    from sr_tile.models.enaf.estimator import gray_u8, laplacian_abs
    from sr_tile.models.enaf.texture import patch_statistics

    picture = astronaut[40:157, 150:300]
    rows = [(0, 32), (32, 64), (64, 96), (96, 117)]
    cols = [(0, 32), (32, 64), (64, 96), (96, 128), (128, 150)]
    whole = patch_statistics(picture, rows, cols, band=1000)
    assert torch.equal(patch_statistics(picture, rows, cols, band=7), whole)
    gray = gray_u8(torch.from_numpy(picture).permute(2, 0, 1)[None].float() / 255).double()[0]
    lap = torch.zeros_like(gray)
    lap[1:-1, 1:-1] = laplacian_abs(gray[None])[0] ** 2
    dy = (gray[33:65, 32:64] - gray[32:64, 32:64]) ** 2
    dx = (gray[32:64, 33:65] - gray[32:64, 32:64]) ** 2
    assert float(whole[6, 0]) == pytest.approx(float(lap[32:64, 32:64].mean()))
    assert float(whole[6, 1]) == pytest.approx(float((dy + dx).mean()))
    one = gray.numpy().astype(np.uint8)[..., None]  # a gray image reads as its own gray
    assert torch.equal(patch_statistics(one, rows, cols),
                       patch_statistics(np.repeat(one, 3, axis=2), rows, cols))


def test_texture_router_is_fitted_calibrated_and_routes(tmp_path, varied_weights, astronaut):
    """The calibration of a backbone that routes by cells fits the texture router on the
    training images, sweeps its eta (gamma 0), and the weights carry both; a routed run then
    takes the paths of its losses."""
    from sr_tile.models.enaf import texture
    from sr_tile.models.enaf.calibrate import calibrate, write_presets
    from sr_tile.models.enaf.routing import fuse

    folder = tmp_path / "calib"
    folder.mkdir()
    for k, (y, x) in enumerate([(30, 150), (300, 100), (0, 0)]):
        Image.fromarray(astronaut[y : y + 96, x : x + 112]).save(folder / f"c{k}.png")
    result = calibrate("enaf-fsrcnn", varied_weights, folder, grid=(0.0, 0.05, 0.5, 50.0))
    router = result["router"]
    assert router["kind"] == "texture" and sorted(router["fitted_on"]) == ["c0", "c1", "c2"]
    assert len(router["coef"]) == 3 and all(len(row) == 4 for row in router["coef"])
    assert [(r["gamma"], r["eta"]) for r in result["table"]] == [
        (0.0, 0.0), (0.0, 0.05), (0.0, 0.5), (0.0, 50.0)]
    assert result["table"][-1]["exits"]["bicubic"] == 1.0
    write_presets(varied_weights, result)
    up = Upscaler(UpscaleOptions(model="enaf-fsrcnn", weights=str(varied_weights),
                                 routing=RoutingOptions(eta=0.05)))
    assert up.model.router == router and up.model.presets == result["presets"]
    picture = astronaut[30:150, 150:300]
    up.upscale_whole(picture)
    runner = up.runner
    stats = texture.patch_statistics(picture, *runner._grid)
    want = fuse(texture.losses(router["coef"], stats, texture.image_gain_db(runner._u)),
                up.model.costs(32, 32), eta=0.05)
    assert runner.paths == want.tolist()


def test_cell_sums_split_the_psnr_pixels_by_cell():
    """The fit reads each cell's share of the pixels ``psnr_y`` averages (HR, ``scale`` px
    cropped at each border): every pixel once, in the cell above it."""
    from sr_tile.models.enaf.calibrate import _cell_pixels, _cell_sums

    rows, cols, scale = [(0, 32), (32, 50)], [(0, 32), (32, 64), (64, 70)], 4
    error = np.random.default_rng(0).random((50 * scale - 2 * scale, 70 * scale - 2 * scale))
    sums = _cell_sums(error, rows, cols, scale).numpy()
    assert sums.sum() == pytest.approx(error.sum())
    assert sums[4] == pytest.approx(error[128 - 4:, 128 - 4:256 - 4].sum())  # row 1, column 1
    pixels = _cell_pixels(rows, cols, scale, error.shape).numpy()
    assert pixels.sum() == error.size and pixels[0] == (128 - 4) ** 2


def test_each_image_is_calibrated_with_a_router_fitted_without_it():
    from sr_tile.models.enaf.calibrate import cross_fitted

    g = torch.Generator().manual_seed(0)
    measured = [(torch.rand(20, 2, generator=g, dtype=torch.float64) * 100,
                 torch.rand(20, 3, generator=g, dtype=torch.float64)) for _ in range(5)]
    names = ["a", "b", "c", "d", "e"]
    routers = cross_fitted(measured, names)
    for name, router in zip(names, routers):
        assert name not in router["fitted_on"] and len(router["fitted_on"]) >= 2
    assert cross_fitted(measured[:1], names[:1])[0]["fitted_on"] == ["a"]  # no other half


def test_presets_without_a_router_drop_the_one_a_file_had(varied_weights):
    """A router belongs to the presets calibrated with it: Eq. 9 presets written over a
    texture router's leave none behind (and the router is stored once)."""
    from sr_tile.models.checkpoint import read_metadata
    from sr_tile.train.calibration import write_presets

    write_presets(varied_weights, {"presets": {"M": {"eta": 0.1, "gamma": 0.0}},
                                   "router": TEXTURE})
    assert create_model("enaf-fsrcnn", weights=varied_weights).router == TEXTURE
    assert "router" not in read_metadata(varied_weights)["calibration"]
    write_presets(varied_weights, {"presets": {"M": {"eta": 0.5, "gamma": 1.0}}})
    assert create_model("enaf-fsrcnn", weights=varied_weights).router is None


def test_a_bad_router_in_a_weights_file_is_a_config_error(varied_weights):
    from sr_tile.train.calibration import write_presets

    write_presets(varied_weights, {"presets": {"M": {"eta": 0.1, "gamma": 0.0}},
                                   "router": {"kind": "texture", "coef": [[1.0]]}})
    with pytest.raises(ConfigError, match="router"):
        create_model("enaf-fsrcnn", weights=varied_weights)


@pytest.mark.parametrize("cells", [True, False, "texture"])
def test_sweep_replay_equals_routed_runs(varied_weights, astronaut, cells, request):
    """Calibration replays recorded path outputs: each setting must give the routed run's image,
    paths and FLOPs exactly, and the record pass the full network's image as the router runs
    it (by tiles: the static network on the same tiles; by cells: every cell's full path)."""
    from sr_tile.models.enaf.calibrate import SweepRunner

    if not cells:
        request.getfixturevalue("by_tiles")
    picture = astronaut[30:150, 150:300].copy()
    picture[:, :60] = 128  # blank tiles, so gamma matters
    options = UpscaleOptions(model="enaf-fsrcnn", weights=str(varied_weights),
                             tile=None if cells else 32)
    sweep = Upscaler(options)
    router = TEXTURE if cells == "texture" else None
    sweep.model.router = router
    runner = sweep.runner = SweepRunner(sweep.model, device=sweep.device)
    full = Upscaler(replace(options, routing=RoutingOptions(path=3)) if cells
                    else replace(options, static=True)).upscale_whole(picture)
    assert np.array_equal(sweep.upscale_whole(picture), full)
    mixed = False  # some setting must route tiles different ways, or the test proves little
    for eta, gamma in [(0.0, 0.0), (0.5, 1.0), (2.0, 0.0), (50.0, 1.0)]:
        runner.setting = (eta, gamma)
        replayed = sweep.upscale_whole(picture)
        routed = Upscaler(replace(options, routing=RoutingOptions(eta=eta, gamma=gamma)))
        routed.model.router = router
        assert np.array_equal(replayed, routed.upscale_whole(picture))
        assert runner.paths == routed.runner.paths
        assert runner.flops == routed.runner.flops
        assert runner.flops_static == routed.runner.flops_static
        mixed |= len(set(runner.paths)) > 1
    assert mixed


@pytest.mark.parametrize("cells", [True, False])
@pytest.mark.parametrize("path", [1, 2])
def test_forced_exit_runs_that_exit_only_and_no_estimator(tmp_path, varied_weights, astronaut,
                                                          path, cells, request):
    if not cells:
        request.getfixturevalue("by_tiles")
    src = tmp_path / "in.png"
    Image.fromarray(astronaut[30:150, 150:300]).save(src)
    up, report = _upscale(src, varied_weights, tmp_path, path=path)
    assert set(up.runner.paths) == {path}
    if cells:  # one window per cell row, no estimator FLOPs
        assert report.flops == _cell_work(up.model, up.runner.paths, CELL_ROWS, CELL_COLS)
    else:
        assert report.flops == up.model.backbone.path_flops(32, 32)[path] * report.tiles
    assert report.extras["exits"][("bicubic", "exit1", "exit2", "full")[path]] == 1.0


def test_bench_plans_exit_rows():
    from sr_tile.bench import BenchOptions, plan_rows

    rows = plan_rows(["enaf-fsrcnn"], BenchOptions(exit_rows=True))
    exits = [r for r in rows if r.kind == "exit"]
    assert [r.routing.path for r in exits] == [1, 2]
    assert all(r.baseline == "enaf-fsrcnn static" and r.preset is None for r in exits)
