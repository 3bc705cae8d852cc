"""``sr-tile bench`` and ``sr-tile data prepare-div8k``: datasets, LR cache, rows, JSON, CSV, plot."""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from sr_tile.bench.datasets import (
    LRCache,
    Sample,
    load_pair,
    mod_crop,
    resolve_dataset,
    to_rgb8,
)
from sr_tile.bench.div8k import prepare_div8k
from sr_tile.bench.run import BenchOptions, plan_rows
from sr_tile.cli.bench import bench, parse_sweep, parse_weights
from sr_tile.cli.data import data_app
from sr_tile.errors import ConfigError, ImageReadError
from sr_tile.imresize import imresize_np
from sr_tile.metrics import psnr_y
from sr_tile.models.checkpoint import save_weights
from sr_tile.models.registry import create_model
from sr_tile.upscale import Upscaler
from tests.conftest import listing

# The lead registers these on the real app; tests use a local one.
app = typer.Typer(pretty_exceptions_enable=False, add_completion=False)
app.command("bench")(bench)
app.add_typer(data_app, name="data")
runner = CliRunner()


def run(*args: object):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(autouse=True)
def _no_env(monkeypatch, tmp_path):
    monkeypatch.delenv("SR_TILE_DATA", raising=False)
    monkeypatch.setenv("SR_TILE_CACHE", str(tmp_path / "default-cache"))


def _save(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture
def hr_folder(tmp_path, astronaut) -> Path:
    """Two small HR photos (one with sides not a multiple of 4) and a 16-bit gray one."""
    folder = tmp_path / "set"
    _save(folder / "a.png", astronaut[100:148, 180:240])
    _save(folder / "b.png", astronaut[20:63, 30:81])  # 43x51: mod-crop to 40x48
    gray16 = (astronaut[200:240, 200:248, 1].astype(np.uint16) * 257)
    Image.fromarray(gray16).save(folder / "c.png")
    return folder


@pytest.fixture(scope="module")
def fsrcnn_weights(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("w") / "enaf-fsrcnn.safetensors"
    return save_weights(create_model("enaf-fsrcnn", weights=False), path, name="enaf-fsrcnn",
                        scale=4)


# ----------------------------------------------------------------------------- names, layouts


def test_folder_path_resolves_as_hr_folder(hr_folder):
    ds = resolve_dataset(str(hr_folder))
    assert ds.layout == "hr-folder" and [s.name for s in ds.samples] == ["a", "b", "c"]
    assert all(s.lr_path is None for s in ds.samples)


def test_name_resolves_under_data_root_and_env(tmp_path, hr_folder, monkeypatch):
    root = tmp_path / "data"
    root.mkdir()
    hr_folder.rename(root / "Test2K")
    ds = resolve_dataset("test2k", data_root=root)  # case-insensitive
    assert ds.name == "Test2K" and ds.root == root / "Test2K" and len(ds.samples) == 3
    monkeypatch.setenv("SR_TILE_DATA", str(root))
    assert resolve_dataset("Test2K").root == root / "Test2K"


def test_known_name_aliases(tmp_path, hr_folder):
    root = tmp_path / "data"
    root.mkdir()
    hr_folder.rename(root / "DIV2K_valid_HR")
    ds = resolve_dataset("DIV2K-val", data_root=root)
    assert ds.name == "DIV2K-val" and len(ds.samples) == 3


def test_missing_name_says_how_to_prepare(tmp_path):
    (tmp_path / "data").mkdir()
    with pytest.raises(ConfigError) as exc:
        resolve_dataset("Test8K", data_root=tmp_path / "data")
    msg = str(exc.value)
    assert "dataset 'Test8K' not found under" in msg and str(tmp_path / "data") in msg
    assert "--data-root" in msg and "SR_TILE_DATA" in msg
    assert "sr-tile data prepare-div8k DIV8K_HR DEST" in msg
    with pytest.raises(ConfigError, match="no data root is set.*SR_TILE_DATA"):
        resolve_dataset("Test4K")
    with pytest.raises(ConfigError, match="F2K.*HR/X4"):
        resolve_dataset("F2K", data_root=tmp_path / "data")


def test_missing_name_through_cli(tmp_path):
    result = run("bench", "Test8K", "--data-root", tmp_path)
    assert result.exit_code == 1
    assert "dataset 'Test8K' not found" in result.output and "prepare-div8k" in result.output


def test_bad_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no images found"):
        resolve_dataset(str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match="no such folder"):
        resolve_dataset(str(tmp_path / "nope"))
    (tmp_path / "layout" / "HR" / "X2").mkdir(parents=True)
    with pytest.raises(ConfigError, match="without HR/X4.*X2"):
        resolve_dataset(str(tmp_path / "layout"))


def test_classsr_layout_pairs_by_stem(tmp_path, astronaut):
    root = tmp_path / "Test2K"
    hr_a = astronaut[:64, :48]
    hr_b = astronaut[64:128, :48]
    _save(root / "HR" / "X4" / "1201.png", hr_a)
    _save(root / "HR" / "X4" / "1202.png", hr_b)
    _save(root / "HR" / "X4" / "1203.png", astronaut[128:192, :48])
    given_a = np.full((16, 12, 3), 7, np.uint8)  # not what bicubic makes: proves it is used
    _save(root / "LR" / "X4" / "1201.png", given_a)
    _save(root / "LR" / "X4" / "1202x4.png", imresize_np(hr_b, 1 / 4))  # BasicSR-style name
    ds = resolve_dataset(str(root))
    assert ds.layout == "classsr" and ds.given_lr == 2
    cache = LRCache(tmp_path / "cache")
    a, b, c = (load_pair(s, 4, cache) for s in ds.samples)
    assert a.lr_source == "given" and np.array_equal(a.lr, given_a)
    assert b.lr_source == "given" and np.array_equal(b.lr, imresize_np(hr_b, 1 / 4))
    assert c.lr_source == "made"  # an HR without LR gets one made
    bad = Sample("x", root / "HR" / "X4" / "1201.png", root / "LR" / "X4" / "1202x4.png")
    _save(bad.lr_path, np.zeros((15, 12, 3), np.uint8))
    with pytest.raises(ImageReadError, match="LR is 12x15.*needs 12x16"):
        load_pair(bad, 4, cache)


# ----------------------------------------------------------------------------- pixels, cache


def test_to_rgb8_and_mod_crop():
    gray16 = np.array([[[0], [65535]], [[257 * 10], [257 * 200 + 128]]], np.uint16)
    rgb = to_rgb8(gray16)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 2, 3)
    assert rgb[..., 0].tolist() == [[0, 255], [10, 200]] and (rgb[..., 0] == rgb[..., 2]).all()
    rgba = np.zeros((5, 7, 4), np.uint8)
    assert to_rgb8(rgba).shape == (5, 7, 3)
    assert mod_crop(np.zeros((43, 51, 3)), 4).shape == (40, 48, 3)


def test_lr_cache_made_then_reused_then_invalidated(tmp_path, hr_folder):
    ds = resolve_dataset(str(hr_folder))
    sample = ds.samples[1]  # b.png: 43x51
    before = listing(hr_folder)
    cache = LRCache(tmp_path / "cache")
    first = load_pair(sample, 4, cache)
    assert first.lr_source == "made" and first.hr.shape == (40, 48, 3)
    assert np.array_equal(first.lr, imresize_np(first.hr, 1 / 4))  # MATLAB bicubic of mod-crop
    entries = list((tmp_path / "cache" / "lr").glob("*.png"))
    assert len(entries) == 1 and entries[0].name.startswith("b-x4-")
    second = load_pair(sample, 4, LRCache(tmp_path / "cache"))
    assert second.lr_source == "cache" and np.array_equal(second.lr, first.lr)
    assert listing(hr_folder) == before  # nothing is ever written into the dataset
    # a changed HR (new mtime/size) is never served a stale LR
    _save(sample.hr_path, np.zeros((44, 52, 3), np.uint8))
    os.utime(sample.hr_path, ns=(1, 1))
    third = load_pair(sample, 4, LRCache(tmp_path / "cache"))
    assert third.lr_source == "made" and not third.lr.any()
    # other scales are other entries
    assert load_pair(sample, 2, LRCache(tmp_path / "cache")).lr_source == "made"


def test_lr_cache_disabled_or_unwritable_is_not_an_error(tmp_path, hr_folder):
    sample = resolve_dataset(str(hr_folder)).samples[0]
    assert load_pair(sample, 4, LRCache(None)).lr_source == "made"
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    cache = LRCache(blocker)
    assert load_pair(sample, 4, cache).lr_source == "made"
    assert cache.write_errors


# ----------------------------------------------------------------------------- rows


def test_rows_always_include_bicubic_and_static_backbones():
    opts = BenchOptions(sweep=(0.0, 2.0))
    rows = plan_rows(["enaf-fsrcnn", "enaf-fsrcnn"], opts)
    assert [(r.label, r.kind, r.route, r.baseline) for r in rows] == [
        ("bicubic", "bicubic", False, None),
        ("enaf-fsrcnn static", "static", False, "bicubic"),
        ("enaf-fsrcnn static best", "best", False, "bicubic"),
        ("enaf-fsrcnn M", "routed", True, "enaf-fsrcnn static"),
        ("enaf-fsrcnn eta=0", "sweep", True, "enaf-fsrcnn static"),
        ("enaf-fsrcnn eta=2", "sweep", True, "enaf-fsrcnn static"),
    ]
    assert rows[1].preset is None and rows[3].preset == "M" and rows[4].preset is None
    assert rows[4].repeat == 1
    assert {r.best for r in rows[3:]} == {"enaf-fsrcnn static best"}
    with pytest.raises(ConfigError, match="unknown model 'nope'"):
        plan_rows(["nope"], opts)


def test_option_parsing():
    assert parse_sweep("0, 0.5,1,1") == (0.0, 0.5, 1.0)
    assert parse_sweep("default")[0] == 0.0 and parse_sweep(None) == ()
    with pytest.raises(ConfigError, match="comma-separated"):
        parse_sweep("a,b")
    assert parse_weights(["enaf-fsrcnn=x.safetensors"]) == {"enaf-fsrcnn": "x.safetensors"}
    with pytest.raises(ConfigError, match="NAME=FILE"):
        parse_weights(["x.safetensors"])
    with pytest.raises(ConfigError, match="unknown model"):
        parse_weights(["fsrcnn=x.safetensors"])
    with pytest.raises(ConfigError, match="repeat"):
        BenchOptions(repeat=0)
    with pytest.raises(ConfigError, match="threads"):
        BenchOptions(threads=0)


# ----------------------------------------------------------------------------- end to end

IMAGE_KEYS = {"name", "psnr_y", "ssim_y", "flops", "flops_pct", "latency_s"}
MEAN_KEYS = {"psnr_y", "ssim_y", "flops", "flops_pct", "latency_s"}


def test_bench_json_shape_rows_and_csv(tmp_path, hr_folder, fsrcnn_weights):
    report, table = tmp_path / "r.json", tmp_path / "r.csv"
    result = run("bench", hr_folder, "--model", "enaf-fsrcnn",
                 "--weights", f"enaf-fsrcnn={fsrcnn_weights}", "--repeat", "2",
                 "--sweep", "0,4", "--threads", "1", "--cache-dir", tmp_path / "cache",
                 "--json", report, "--csv", table)
    assert result.exit_code == 0, result.output
    assert "bicubic" in result.stdout and "enaf-fsrcnn static" in result.stdout
    data = json.loads(report.read_text())
    assert data["dataset"] == "set" and data["scale"] == 4
    assert data["flops_convention"] == "classsr" and data["torch_threads"] == 1
    rows = {r["label"]: r for r in data["models"]}
    assert list(rows) == ["bicubic", "enaf-fsrcnn static", "enaf-fsrcnn static best",
                          "enaf-fsrcnn M", "enaf-fsrcnn eta=0", "enaf-fsrcnn eta=4"]
    for row in data["models"]:
        assert {"model", "preset", "mean", "images"} <= set(row)
        assert MEAN_KEYS <= set(row["mean"])
        assert [im["name"] for im in row["images"]] == ["a", "b", "c"]
        for im in row["images"]:
            assert IMAGE_KEYS <= set(im) and im["status"] == "ok"
            assert im["latency_s"] > 0 and im["flops"] > 0 and 0 < im["ssim_y"] <= 1
    bic, static, routed = rows["bicubic"], rows["enaf-fsrcnn static"], rows["enaf-fsrcnn M"]
    for row in (bic, static):
        assert row["preset"] is None and row["mean"]["flops_pct"] == 100.0
        assert all(im["flops_pct"] == 100.0 and im.get("exits") is None for im in row["images"])
    assert len(static["images"][0]["latency_runs_s"]) == 2
    assert routed["preset"] == "M" and routed["routed"] and routed["eta"] == 1.0
    assert rows["enaf-fsrcnn eta=4"]["eta"] == 4.0 and rows["enaf-fsrcnn eta=4"]["repeat"] == 1
    for s_im, r_im in zip(static["images"], routed["images"]):
        # a routed row is read against its own static backbone
        assert r_im["flops_static"] == s_im["flops"]
        assert set(r_im["exits"]) == {"bicubic", "exit1", "exit2", "full"}
        assert abs(sum(r_im["exits"].values()) - 1) < 1e-9
        assert r_im["flops_pct"] == pytest.approx(100 * r_im["flops"] / s_im["flops"])
    # ... and against the same weights at their best static tiling (256 px tiles: the image
    # in one tile, no overlap recomputed), by totals over the images
    best = rows["enaf-fsrcnn static best"]
    assert best["tile"] == 256 and static["tile"] == 512 and best["mean"]["flops_pct"] == 100.0
    assert best["mean"]["flops"] <= static["mean"]["flops"]
    assert routed["mean"]["flops_vs_best"] == pytest.approx(
        routed["mean"]["flops"] / best["mean"]["flops"])
    assert routed["mean"]["time_vs_best"] == pytest.approx(
        routed["mean"]["latency_s"] / best["mean"]["latency_s"])
    assert routed["mean"]["time_vs_static"] == pytest.approx(
        routed["mean"]["latency_s"] / static["mean"]["latency_s"])
    assert static["mean"]["time_vs_best"] is None  # static rows have no ratios of their own
    # bicubic PSNR through the bench equals bicubic up and down done by hand
    hr = to_rgb8(np.asarray(Image.open(hr_folder / "b.png").convert("RGB")))
    hr = mod_crop(hr, 4)
    sr = imresize_np(imresize_np(hr, 1 / 4), 4.0)
    assert bic["images"][1]["psnr_y"] == pytest.approx(psnr_y(sr, hr, 4), abs=0.05)
    # CSV: one line per row and image plus one mean line per row
    lines = list(csv.DictReader(io.StringIO(table.read_text())))
    assert len(lines) == 6 * (3 + 1)
    assert {ln["image"] for ln in lines} == {"a", "b", "c", "mean"}
    mean_routed = next(ln for ln in lines if ln["label"] == "enaf-fsrcnn M" and ln["image"] == "mean")
    assert float(mean_routed["flops_pct"]) == pytest.approx(routed["mean"]["flops_pct"])


def test_bench_repeats_go_round_the_rows(tmp_path, hr_folder, fsrcnn_weights, monkeypatch):
    """Side by side means interleaved: a slow spell of the machine must hit every row."""
    calls: list[int] = []
    real = Upscaler.upscale_whole

    def spy(up, lr):
        calls.append(id(up))
        return real(up, lr)

    monkeypatch.setattr(Upscaler, "upscale_whole", spy)
    result = run("bench", hr_folder, "-m", "enaf-fsrcnn", "--weights",
                 f"enaf-fsrcnn={fsrcnn_weights}", "--repeat", "3", "--no-warmup", "--limit", "1",
                 "--threads", "1", "--cache-dir", tmp_path / "cache")
    assert result.exit_code == 0, result.output
    rows = calls[:4]  # bicubic, static, static best, routed: one upscaler each
    assert len(set(rows)) == 4 and calls == rows * 3


def test_bench_unreadable_image_is_reported_and_the_rest_go_on(tmp_path, hr_folder):
    (hr_folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    report = tmp_path / "r.json"
    result = run("bench", hr_folder, "-m", "bicubic", "--repeat", "1", "--cache-dir",
                 tmp_path / "cache", "--json", report)
    assert result.exit_code == 1
    assert "broken.png" in result.output and "1 image(s) failed" in result.output
    (row,) = json.loads(report.read_text())["models"]
    by_name = {im["name"]: im for im in row["images"]}
    assert by_name["broken"]["status"] == "failed" and by_name["broken"]["error"]
    assert all(by_name[n]["status"] == "ok" for n in "abc")
    assert row["mean"]["n_images"] == 3 and row["mean"]["n_failed"] == 1


def test_bench_missing_weights_fails_before_any_work(tmp_path, hr_folder, monkeypatch):
    monkeypatch.setenv("SR_TILE_WEIGHTS", str(tmp_path / "no-weights"))
    result = run("bench", hr_folder, "--model", "enaf-fsrcnn", "--cache-dir", tmp_path / "c")
    assert result.exit_code == 1 and "no weights for enaf-fsrcnn x4" in result.output
    assert not (tmp_path / "c").exists()


def test_plot_written(tmp_path, hr_folder, fsrcnn_weights):
    pytest.importorskip("matplotlib")
    plot = tmp_path / "p.png"
    result = run("bench", hr_folder, "--model", "enaf-fsrcnn", "--limit", "1",
                 "--weights", f"enaf-fsrcnn={fsrcnn_weights}", "--repeat", "1",
                 "--sweep", "0,2", "--no-per-image", "--cache-dir", tmp_path / "cache",
                 "--plot", plot)
    assert result.exit_code == 0, result.output
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(plot) as im:
        assert im.size[0] > 600


def test_plot_without_matplotlib_is_a_clear_error(tmp_path, hr_folder, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    result = run("bench", hr_folder, "--plot", tmp_path / "p.png")
    assert result.exit_code == 1
    assert "--plot needs matplotlib" in result.output and "sr-tile[plot]" in result.output


# ----------------------------------------------------------------------------- prepare-div8k


@pytest.fixture
def fake_div8k(tmp_path, astronaut) -> Path:
    """DIV8K's naming (0001.png ... 1500.png), tiny images, sides not multiples of 16."""
    src = tmp_path / "DIV8K"
    crops = {"0001": (0, 0), "1201": (0, 0), "1202": (50, 60), "1203": (100, 20),
             "1301": (200, 100), "1401": (300, 200)}
    for name, (y, x) in crops.items():
        _save(src / f"{name}.png", astronaut[y : y + 98, x : x + 134])  # 134x98
    (src / "notes.txt").write_text("not an image")
    return src


def test_prepare_div8k_follows_the_classsr_protocol(tmp_path, fake_div8k, astronaut):
    dest = tmp_path / "bench"
    result = run("data", "prepare-div8k", fake_div8k, dest)
    assert result.exit_code == 0, result.output
    assert "Assumed" in result.output and "8-bit" in result.output
    assert "97 of 100" in result.output  # Test2K is incomplete, and it says so
    assert sorted(p.name for p in (dest / "Test2K" / "HR" / "X4").iterdir()) == [
        "1201.png", "1202.png", "1203.png"]
    assert not (dest / "Test2K" / "HR" / "X4" / "0001.png").exists()
    orig = astronaut[300:398, 200:334]  # 1401: Test8K HR = original, mod-cropped to 4
    hr8 = np.asarray(Image.open(dest / "Test8K" / "HR" / "X4" / "1401.png"))
    assert np.array_equal(hr8, orig[:96, :132])
    assert np.array_equal(np.asarray(Image.open(dest / "Test8K" / "LR" / "X4" / "1401.png")),
                          imresize_np(hr8, 1 / 4))
    orig = astronaut[200:298, 100:234]  # 1301: Test4K HR = original / 2
    hr4 = np.asarray(Image.open(dest / "Test4K" / "HR" / "X4" / "1301.png"))
    assert np.array_equal(hr4, mod_crop(imresize_np(orig[:98, :134], 1 / 2), 4))
    assert hr4.shape == (48, 64, 3)
    orig = astronaut[0:98, 0:134]  # 1201: Test2K HR = original / 4
    hr2 = np.asarray(Image.open(dest / "Test2K" / "HR" / "X4" / "1201.png"))
    assert np.array_equal(hr2, mod_crop(imresize_np(mod_crop(orig, 4), 1 / 4), 4))
    assert hr2.shape == (24, 32, 3)
    lr2 = np.asarray(Image.open(dest / "Test2K" / "LR" / "X4" / "1201.png"))
    assert lr2.shape == (6, 8, 3) and np.array_equal(lr2, imresize_np(hr2, 1 / 4))
    manifest = json.loads((dest / "Test2K" / "sr-tile-dataset.json").read_text())
    assert manifest["div8k_range"] == [1201, 1300] and manifest["assumptions"]
    # resumable: a second run keeps what is there
    again = prepare_div8k(fake_div8k, dest, sets=("Test8K",))
    assert again.sets[0].kept == ["1401.png"] and not again.sets[0].written
    # and the result benches by name, in the ClassSR layout with the given LR
    report = tmp_path / "r.json"
    result = run("bench", "Test2K", "--data-root", dest, "--repeat", "1",
                 "--cache-dir", tmp_path / "cache", "--json", report)
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    assert data["dataset"] == "Test2K" and data["layout"] == "classsr"
    assert [im["lr_source"] for im in data["models"][0]["images"]] == ["given"] * 3
    assert not (tmp_path / "cache").exists()  # given LR: nothing made, nothing cached


def test_prepare_div8k_without_the_needed_images(tmp_path, astronaut):
    src = tmp_path / "src"
    _save(src / "0001.png", astronaut[:16, :16])
    result = run("data", "prepare-div8k", src, tmp_path / "out")
    assert result.exit_code == 1 and "none of the DIV8K images needed" in result.output
    result = run("data", "prepare-div8k", src, tmp_path / "out", "--set", "Test16K")
    assert result.exit_code == 1 and "choose from Test2K, Test4K, Test8K" in result.output


def test_bench_at_a_non_integer_scale(tmp_path, hr_folder):
    """x2.5: each HR is cropped to multiples of 5 px (x3.7: 37 px), so that LR = HR / scale
    exactly, and the report says so; bicubic's PSNR equals a resize by hand of that LR back to
    the HR."""
    from sr_tile.bench.datasets import crop_note, lr_length, make_lr, mod_crop
    from sr_tile.tiler import output_length

    for scale, step in ((2.5, 5), (3.7, 37)):
        for n in range(40, 120):
            m = mod_crop(np.zeros((n, n + 3, 3), np.uint8), scale)
            assert m.shape[:2] == (n - n % step, (n + 3) - (n + 3) % step)
            assert all(output_length(lr_length(k, scale), scale) == k for k in m.shape[:2])
        assert f"multiples of {step} px" in crop_note(scale)
    assert mod_crop(np.zeros((43, 43)), 4).shape[0] == 40
    result = run("bench", hr_folder, "-m", "bicubic", "--scale", "2.5", "--repeat", "1",
                 "--json", tmp_path / "r.json", "--cache-dir", tmp_path / "c")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["scale"] == 2.5 and "multiples of 5 px" in report["hr_crop"]
    assert "multiples of 5 px" in " ".join(result.output.split())
    (row,) = report["models"]
    hr = mod_crop(to_rgb8(np.asarray(Image.open(hr_folder / "a.png").convert("RGB"))), 2.5)
    sr = imresize_np(make_lr(hr, 2.5), out_size=hr.shape[:2], antialias=False)
    assert row["images"][0]["psnr_y"] == pytest.approx(psnr_y(sr, hr, 3), abs=0.02)
    result = run("bench", hr_folder, "-m", "enaf-fsrcnn", "--scale", "2.5")
    assert result.exit_code == 2 and "supports x2, x3, x4" in result.output


def test_one_table_per_scale_and_bad_scales_before_any_work(tmp_path, hr_folder):
    result = run("bench", hr_folder, "-m", "bicubic", "-s", "2", "-s", "2.5", "--repeat", "1",
                 "--json", tmp_path / "r.json", "--cache-dir", tmp_path / "c")
    assert result.exit_code == 0, result.output
    assert "bench set x2:" in result.output and "bench set x2.5:" in result.output
    assert [json.loads((tmp_path / f"r-x{s}.json").read_text())["scale"] for s in ("2", "2.5")] \
        == [2, 2.5]
    assert not (tmp_path / "r.json").exists()
    for bad in ("0", "nan", "0.5", "1e6"):
        result = run("bench", hr_folder, "-m", "bicubic", "-s", "2", "-s", bad,
                     "--json", tmp_path / "bad.json")
        assert result.exit_code in (1, 2) and "Traceback" not in result.output
        assert "--scale" in result.output and "bench set" not in result.output
        assert not list(tmp_path.glob("bad*.json"))
