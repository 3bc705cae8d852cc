"""A new family is its own code plus a registry row (tests/tiny_families.py): registered here,
each works through ``upscale``, ``bench``, ``train`` and the conformance suite with no edit
elsewhere."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from sr_tile.cli import app
from sr_tile.models import MODELS, create_model
from sr_tile.models.checkpoint import save_weights
from tests import test_conformance as conformance
from tests.tiny_families import ROWS


@pytest.fixture
def tiny(monkeypatch, tmp_path):
    """Both rows registered, with trained-looking weights saved as any family's are."""
    weights = {}
    for row in ROWS:
        monkeypatch.setitem(MODELS, row.name, row)
        torch.manual_seed(0)
        model = create_model(row.name, scale=2, weights=False)
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(0.1)
        weights[row.name] = save_weights(model, tmp_path / f"{row.name}.safetensors",
                                         name=row.name, scale=2)
    return weights


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.mark.parametrize("name", [row.name for row in ROWS])
def test_a_family_from_outside_works_through_upscale(tiny, tmp_path, astronaut, name):
    src = tmp_path / "photo.png"
    picture = astronaut[:64, :96].copy()
    picture[:, :40] = 128  # flat tiles for the routed family to skip
    Image.fromarray(picture).save(src)
    result = run("upscale", src, "-m", name, "-s", "2", "--weights", tiny[name],
                 "-o", tmp_path / "o.png", "--json", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    with Image.open(tmp_path / "o.png") as im:
        assert im.size == (192, 128)
    (image,) = json.loads((tmp_path / "r.json").read_text())["images"]
    assert image["model"] == name
    if name == "tiny-routed":  # its runner's fields reach the report and the console
        assert 0 < image["skipped"] < 1 and image["flops"] < image["flops_static"]
        assert "skip " in result.stdout
        result = run("upscale", src, "-m", name, "-s", "2", "--weights", tiny[name],
                     "--static", "-o", tmp_path / "s.png", "--json", tmp_path / "s.json")
        (image,) = json.loads((tmp_path / "s.json").read_text())["images"]
        assert image["flops"] == image["flops_static"] and "skipped" not in image
    else:
        assert image["flops"] == image["flops_static"]


def test_families_from_outside_work_through_bench(tiny, tmp_path, astronaut, monkeypatch):
    monkeypatch.setenv("SR_TILE_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "set"
    folder.mkdir()
    for k, (y, x) in enumerate([(100, 180), (20, 30)]):
        Image.fromarray(astronaut[y:y + 48, x:x + 64]).save(folder / f"{k}.png")
    result = run("bench", folder, "-s", "2", "-m", "bicubic", "-m", "tiny-static",
                 "-m", "tiny-routed", "--weights", f"tiny-static={tiny['tiny-static']}",
                 "--weights", f"tiny-routed={tiny['tiny-routed']}", "--repeat", "1",
                 "--json", tmp_path / "b.json")
    assert result.exit_code == 0, result.output
    rows = {row["label"]: row
            for row in json.loads((tmp_path / "b.json").read_text())["models"]}
    # no static_tile of its own: no "static best" row, its routed row reads against "static"
    assert set(rows) == {"bicubic", "tiny-static", "tiny-routed static", "tiny-routed M"}
    for row in rows.values():
        assert np.isfinite(row["mean"]["psnr_y"]) and row["mean"]["flops"] > 0
    routed = rows["tiny-routed M"]  # its runner's field, averaged by bench without knowing it
    assert 0 <= routed["mean"]["skipped"] <= 1
    assert routed["mean"]["flops_vs_best"] == pytest.approx(routed["mean"]["flops_pct"] / 100)
    assert all("skipped" in im for im in routed["images"])
    assert "skip " in result.stdout


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.name)
def test_families_from_outside_pass_the_conformance_suite(tiny, tmp_path, row):
    from skimage import data

    picture = np.ascontiguousarray(data.astronaut()[180:227, 200:261])
    for scale in row.scales:
        conformance.test_row_builds_and_its_descriptor_agrees(row.name, scale)
        conformance.test_forward_shape_flops_and_tiled_equals_whole(row.name, scale, picture)
        conformance.test_weights_survive_save_and_load(row.name, scale, tmp_path)


def test_a_family_from_outside_trains_on_the_shared_engine(tiny, tmp_path, astronaut):
    import yaml

    from sr_tile.models.checkpoint import read_metadata

    train, val = tmp_path / "train", tmp_path / "val"
    for folder, crops in ((train, [(0, 0), (200, 150)]), (val, [(300, 300)])):
        folder.mkdir()
        for k, (y, x) in enumerate(crops):
            Image.fromarray(astronaut[y:y + 96, x:x + 96]).save(folder / f"{k}.png")
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({
        "model": "tiny-static", "scale": 2, "run_dir": str(tmp_path / "run"), "device": "cpu",
        "data": {"train_dir": str(train), "val_dir": str(val), "cache_dir": str(tmp_path / "c"),
                 "lr_patch": 16, "val_patch": 16, "val_crops": 1},
        "phases": {"main": {"steps": 4, "batch_size": 2, "val_every": 2, "ckpt_every": 2,
                            "log_every": 2}},
    }))
    result = run("train", "tiny", "--config", config)
    assert result.exit_code == 0, result.output
    weights = tmp_path / "run" / "tiny-static-x2.safetensors"
    meta = read_metadata(weights)
    assert meta["iterations"] == {"main": 4} and meta["phases_done"] == ["main"]
    assert "PSNR-Y" in result.output and meta["val"]["psnr_y"] > 20
    create_model("tiny-static", scale=2, weights=weights)
    result = run("train", "tiny", "--config", config, "--resume")
    assert result.exit_code == 0, result.output  # nothing left to do: the run is complete
    bad = run("train", "tiny", "--config", config, "--set", "phases.main.label_pool=8")
    assert bad.exit_code == 1 and "phases.main.label_pool: unknown key" in bad.output
