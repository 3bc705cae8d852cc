"""ENAF fusion (Eq. 9), the FLOPs budget, and routed tiled inference."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from sr_tile.errors import ConfigError
from sr_tile.models import create_model
from sr_tile.models.checkpoint import save_weights
from sr_tile.models.enaf.routing import eta_for_budget, fuse, mean_cost
from sr_tile.routing import RoutingOptions
from sr_tile.upscale import UpscaleOptions, Upscaler

COSTS = torch.tensor([0.0, 0.31, 0.67, 1.0])


def test_fusion_on_made_up_estimates():
    u = torch.tensor([[30.0, 31.0, 32.0, 33.0],   # texture: every path helps
                      [40.0, 40.1, 40.1, 40.2],   # smooth: gains too small to pay for
                      [35.0, 35.5, 35.6, 35.6]])  # only exit 1 is worth it at eta 1
    blank = torch.tensor([False, False, False])
    assert fuse(u, blank, COSTS, eta=0.0, gamma=1.0).tolist() == [3, 3, 2]
    assert fuse(u, blank, COSTS, eta=1.0, gamma=1.0).tolist() == [3, 0, 1]
    assert fuse(u, blank, COSTS, eta=100.0, gamma=1.0).tolist() == [0, 0, 0]
    # the blank vector sends a blank patch to bicubic unless the gain beats gamma
    blank = torch.tensor([True, True, True])
    assert fuse(u, blank, COSTS, eta=0.0, gamma=1.0).tolist() == [3, 0, 0]
    assert fuse(u, blank, COSTS, eta=0.0, gamma=0.0).tolist() == [3, 3, 2]


def test_mean_cost_falls_as_eta_rises():
    g = torch.Generator().manual_seed(0)
    u = 30 + torch.rand(500, 4, generator=g).cumsum(1)
    blank = torch.rand(500, generator=g) < 0.2
    costs = [mean_cost(u, blank, COSTS, eta=e, gamma=1.0) for e in np.linspace(0, 8, 40)]
    assert all(a >= b for a, b in zip(costs, costs[1:]))
    assert costs[0] > 0.9 and costs[-1] == 0.0


@pytest.mark.parametrize("budget", [0.3, 0.5, 0.8])
def test_budget_finds_smallest_eta_that_fits(budget):
    g = torch.Generator().manual_seed(1)
    u = 30 + torch.rand(400, 4, generator=g).cumsum(1)
    blank = torch.zeros(400, dtype=torch.bool)
    overhead = 0.016
    eta = eta_for_budget(u, blank, COSTS, gamma=1.0, budget=budget, overhead=overhead)
    assert mean_cost(u, blank, COSTS, eta=eta, gamma=1.0) + overhead <= budget
    assert mean_cost(u, blank, COSTS, eta=eta * 0.98, gamma=1.0) + overhead > budget


@pytest.mark.parametrize("budget", [0.35, 0.6])
def test_budget_in_reported_flops_while_routing_on_executed_costs(budget):
    executed = torch.tensor([0.0, 0.42, 0.84, 1.0])  # FSRCNN's torch-convention costs
    g = torch.Generator().manual_seed(2)
    u = 30 + torch.rand(400, 4, generator=g).cumsum(1)
    blank = torch.zeros(400, dtype=torch.bool)
    eta = eta_for_budget(u, blank, executed, gamma=0.0, budget=budget, measure=COSTS)
    assert mean_cost(u, blank, executed, eta=eta, gamma=0.0, measure=COSTS) <= budget
    assert mean_cost(u, blank, executed, eta=eta * 0.98, gamma=0.0, measure=COSTS) > budget
    with pytest.raises(ValueError, match="rise"):  # measures that rank paths apart
        eta_for_budget(u, blank, executed, gamma=0.0, budget=budget, measure=COSTS.flip(0))


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
    assert eta_for_budget(u, blank, COSTS, gamma=1.0, budget=1.0) == 0.0
    with pytest.raises(ConfigError):
        eta_for_budget(u, blank, COSTS, gamma=1.0, budget=0.01, overhead=0.016)


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
    u, blank = runner.take_estimates(list(range(up.tiling.count(*picture.shape[:2]))))
    tiles = torch.cat([batch for _, batch in tile_batches(picture, up.tiling)])
    with torch.no_grad():
        want_u, want_blank = up.model.estimate(tiles.expand(-1, 3, -1, -1))
    torch.testing.assert_close(u, want_u, atol=1e-3, rtol=0)
    assert torch.equal(blank, want_blank) and 0 < int(blank.sum()) < len(blank)


@pytest.mark.parametrize("cells", [True, False])
@pytest.mark.parametrize("budget", [0.25, 0.6])
def test_budget_is_met_per_image(tmp_path, varied_weights, astronaut, budget, cells, request):
    if not cells:
        request.getfixturevalue("by_tiles")
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
                       gammas=(0.0, 1.0))
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


@pytest.mark.parametrize("cells", [True, False])
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
    runner = sweep.runner = SweepRunner(sweep.model, device=sweep.device)
    full = Upscaler(replace(options, routing=RoutingOptions(path=3)) if cells
                    else replace(options, static=True)).upscale_whole(picture)
    assert np.array_equal(sweep.upscale_whole(picture), full)
    mixed = False  # some setting must route tiles different ways, or the test proves little
    for eta, gamma in [(0.0, 0.0), (0.5, 1.0), (2.0, 0.0), (50.0, 1.0)]:
        runner.setting = (eta, gamma)
        replayed = sweep.upscale_whole(picture)
        routed = Upscaler(replace(options, routing=RoutingOptions(eta=eta, gamma=gamma)))
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
