"""Ray: a folder across workers, one huge image in bands, a worker killed mid-run, an
unreachable cluster. A real local Ray cluster (2 CPUs), started once for the module."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from sr_tile.batch import run_job
from sr_tile.cli import app
from sr_tile.cluster import Cluster, ClusterOptions
from sr_tile.errors import UsageError
from sr_tile.models.checkpoint import save_weights
from sr_tile.paths import plan_run
from sr_tile.upscale import UpscaleOptions, Upscaler
from tests.conftest import listing

ray = pytest.importorskip("ray")  # in the test extra; a plain install runs without it


@pytest.fixture(scope="module", autouse=True)
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture
def folder(tmp_path, astronaut):
    """Four real crops and a broken file."""
    src = tmp_path / "in"
    src.mkdir()
    for k, (y, x, h, w) in enumerate([(0, 0, 120, 160), (200, 100, 96, 64),
                                      (50, 300, 80, 100), (300, 250, 64, 150)]):
        Image.fromarray(astronaut[y:y + h, x:x + w]).save(src / f"{k}.png")
    (src / "2b.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 30)
    return src


def _cli(*args: str):
    return CliRunner().invoke(app, ["upscale", *args])


def test_folder_on_ray_equals_the_local_run(tmp_path, folder):
    """The default (routed) model on 2 workers: the same bytes, the same report rows in the
    same order, the bad file failing alone with the same exit code, no temp files."""
    runs = {}
    for name, extra in [("local", []), ("ray", ["--ray", "local:2", "--ray-workers", "2"])]:
        result = _cli(str(folder), "-d", str(tmp_path / name), "--json",
                      str(tmp_path / f"{name}.json"), *extra)
        assert result.exit_code == 1, result.output  # the broken file
        assert "2b.png" in result.output
        runs[name] = json.loads((tmp_path / f"{name}.json").read_text())["images"]
    keys = ("input", "status", "flops", "flops_static", "tiles", "extras")
    assert [[im.get(k) for k in keys] for im in runs["ray"]] == [
        [im.get(k) for k in keys] for im in runs["local"]]
    assert [im["status"] for im in runs["ray"]] == ["ok", "ok", "ok", "failed", "ok"]
    assert listing(tmp_path / "ray") == listing(tmp_path / "local")
    for name in listing(tmp_path / "local"):
        assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "local" / name).read_bytes()


def _bands_against_local(tmp_path, photo: np.ndarray, options: UpscaleOptions):
    """One image run locally and in bands of one tile row on 2 workers: (local, ray) reports
    and outputs, and the two upscalers."""
    src = tmp_path / "big.png"
    Image.fromarray(photo).save(src)
    out = {}
    for name in ("local", "ray"):
        plan = plan_run([str(src)], scale=options.scale, output=str(tmp_path / f"{name}.png"),
                        route_map=str(tmp_path / f"{name}-map.png"))
        up = Upscaler(options)
        if name == "local":
            report = run_job(up, plan.jobs[0])
        else:
            cluster = Cluster(up, ClusterOptions("local:2", workers=2, split_pixels=1000))
            report, = cluster.run_jobs(plan.jobs)
            assert up.tiler != cluster.bands  # the local tiler is back
        assert report.status == "ok", report.error
        out[name] = (report, np.asarray(Image.open(tmp_path / f"{name}.png")).astype(int),
                     np.asarray(Image.open(tmp_path / f"{name}-map.png")))
    return out["local"], out["ray"]


def test_huge_image_in_bands_equals_the_local_run(tmp_path, astronaut):
    """ENAF, routed: the driver's estimator decides, workers run bands of tile rows; the
    output is the local one (sums added in another order: within 1), and the FLOPs, exit
    shares and route map are the same."""
    options = UpscaleOptions(model="enaf-fsrcnn", tile=48)
    (local, a, map_a), (banded, b, map_b) = _bands_against_local(
        tmp_path, astronaut[:200, :232], options)
    assert a.shape == b.shape == (800, 928, 3)
    assert np.abs(a - b).max() <= 1
    assert (banded.flops, banded.flops_static, banded.tiles) == (
        local.flops, local.flops_static, local.tiles)
    assert banded.extras == local.extras
    assert np.array_equal(map_a, map_b)


def test_halting_transformer_in_bands_keeps_its_books(tmp_path, astronaut):
    """AdaFormer: halting planned on the driver, tokens and windows counted on the workers,
    the depth map painted from their rows."""
    from tests.test_adaformer import NAME, _model

    weights = save_weights(_model(bias=-1.5), tmp_path / "w.safetensors", name=NAME, scale=4)
    options = UpscaleOptions(model=NAME, weights=str(weights), tile=32)
    (local, a, map_a), (banded, b, map_b) = _bands_against_local(
        tmp_path, astronaut[100:164, 180:260], options)
    assert np.abs(a - b).max() <= 1
    assert banded.flops == pytest.approx(local.flops, rel=1e-9)
    assert banded.extras == local.extras
    assert np.array_equal(map_a, map_b)


def test_a_worker_killed_mid_run_is_restarted_and_loses_nothing(tmp_path, folder):
    """SIGKILL to a worker while the folder runs: Ray restarts it and retries its job;
    every good output is written whole, and no temp file stays."""
    plan = plan_run([str(folder)], scale=4, output_dir=str(tmp_path / "o"))
    cluster = Cluster(Upscaler(UpscaleOptions(model="enaf-fsrcnn")),
                      ClusterOptions("local:2", workers=2))
    victim = ray.get(cluster.workers[1].pid.remote())
    killed = []

    def on_start(index, job, total):
        if not killed:
            os.kill(victim, signal.SIGKILL)
            killed.append(index)

    reports = list(cluster.run_jobs(plan.jobs, on_start=on_start))
    assert killed
    assert [r.status for r in reports] == ["ok", "ok", "ok", "failed", "ok"]
    assert listing(tmp_path / "o") == {f"{k}.png" for k in range(4)}
    reference = Upscaler(UpscaleOptions(model="enaf-fsrcnn"))
    for k in range(4):
        want = reference.upscale_whole(np.array(Image.open(folder / f"{k}.png")))
        got = np.asarray(Image.open(tmp_path / "o" / f"{k}.png"))
        assert np.array_equal(got, want)


def test_bad_ray_options_are_one_line():
    with pytest.raises(UsageError, match="--ray-split-pixels"):
        ClusterOptions("local:2", split_pixels=0)
    with pytest.raises(UsageError, match="GPUs"):
        Cluster(Upscaler(UpscaleOptions(model="bicubic", scale=2)),
                ClusterOptions("auto", gpus_per_worker=1))


def test_unreachable_cluster_is_one_line_and_exit_1(tmp_path, small_png):
    """A fresh process (no Ray started): a dead address is refused at once, in one line."""
    result = subprocess.run(
        [sys.executable, "-m", "sr_tile", "upscale", str(small_png), "-o",
         str(tmp_path / "o.png"), "--ray", "127.0.0.1:1"],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "cannot reach a Ray cluster" in lines[0], result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "o.png").exists()
