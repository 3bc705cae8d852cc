"""Batches of jobs: the per-file policy, and pipelined images (decode, compute, encode at once)."""

from __future__ import annotations

import _thread
import threading

import numpy as np
import pytest
from PIL import Image

from sr_tile.batch import run_jobs
from sr_tile.paths import plan_run
from sr_tile.upscale import UpscaleOptions, Upscaler
from tests.conftest import listing


@pytest.fixture
def folder(tmp_path, astronaut):
    """Five real crops of different sizes, a broken file in the middle, a tiny one last."""
    src = tmp_path / "in"
    src.mkdir()
    for k, (y, x, h, w) in enumerate([(0, 0, 120, 160), (200, 100, 96, 64), (50, 300, 80, 100),
                                      (300, 250, 64, 150)]):
        Image.fromarray(astronaut[y:y + h, x:x + w]).save(src / f"{k}.png")
    (src / "2b.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 30)  # between 2 and 3
    Image.fromarray(astronaut[:12, :12]).save(src / "9.png")
    return src


def _batch(folder, out, in_flight, **hooks):
    plan = plan_run([str(folder)], scale=4, output_dir=str(out))
    up = Upscaler(UpscaleOptions(model="enaf-fsrcnn"))
    return plan, list(run_jobs(up, plan.jobs, in_flight=in_flight, **hooks))


@pytest.mark.parametrize("in_flight", [2, 3])
def test_pipelined_batch_equals_one_image_at_a_time(tmp_path, folder, in_flight):
    """Images in flight share the model one band at a time, keep their own books, and report
    in job order with their lines in job order; a bad file fails alone."""
    said: list[str] = []
    plan, alone = _batch(folder, tmp_path / "a", 1, on_error=lambda m, e: said.append(m))
    plan, piped = _batch(folder, tmp_path / "b", in_flight,
                         on_error=lambda m, e: said.append(m))
    assert [r.status for r in piped] == ["ok", "ok", "ok", "failed", "ok", "ok"]
    assert len(said) == 2 and all("2b.png" in line for line in said)
    for one, other, job in zip(alone, piped, plan.jobs):
        assert (one.input, one.status, one.error) == (other.input, other.status, other.error)
        if one.status != "ok":
            continue
        assert (one.flops, one.flops_static, one.extras, one.tiles) == (
            other.flops, other.flops_static, other.extras, other.tiles)
        assert 0 < other.latency_s <= other.total_s
        a = np.asarray(Image.open(tmp_path / "a" / job.dst.name))
        b = np.asarray(Image.open(tmp_path / "b" / job.dst.name))
        assert np.array_equal(a, b)
    assert listing(tmp_path / "b") == listing(tmp_path / "a")  # no temp files left


def test_interrupted_batch_stops_its_jobs_and_leaves_no_partial_file(tmp_path, folder):
    """Ctrl-C while images are in flight: the running jobs stop before their next band, their
    temp files are removed, the finished ones are reported in order, and the interrupt is
    raised again."""
    started: list[str] = []
    fired = threading.Event()

    def on_start(index, job, total):
        started.append(job.src.name)
        if index == 3 and not fired.is_set():
            fired.set()
            _thread.interrupt_main()  # as Ctrl-C would, while the main thread waits on jobs

    reports = []
    plan = plan_run([str(folder)], scale=4, output_dir=str(tmp_path / "o"))
    up = Upscaler(UpscaleOptions(model="enaf-fsrcnn"))
    with pytest.raises(KeyboardInterrupt):
        for report in run_jobs(up, plan.jobs, in_flight=2, on_start=on_start):
            reports.append(report)
    assert fired.is_set() and "2.png" in started
    assert 1 <= len(reports) <= 4 and reports[0].status == "ok"
    for report in reports:  # the broken file may have failed meanwhile: it fails alone
        assert report.status in (("failed",) if "2b" in report.input else ("ok", "not run"))
    written = {p.name for p in (tmp_path / "o").iterdir()}
    assert all(name.endswith(".png") and not name.startswith(".") for name in written)
    ok = {plan.jobs[i].dst.name for i, r in enumerate(reports) if r.status == "ok"}
    assert ok <= written and len(written) <= 3  # 2.png's job was stopped mid-way or done


def test_cli_pipeline_option(tmp_path, folder):
    """``--pipeline 2`` from the command line: every good file written, the bad one failing
    alone, the JSON report in job order."""
    import json

    from typer.testing import CliRunner

    from sr_tile.cli import app

    result = CliRunner().invoke(app, ["upscale", str(folder), "-d", str(tmp_path / "o"),
                                      "--pipeline", "2", "--json", str(tmp_path / "r.json")])
    assert result.exit_code == 1, result.output  # the broken file
    images = json.loads((tmp_path / "r.json").read_text())["images"]
    assert [im["input"].rsplit("/", 1)[1] for im in images] == [
        "0.png", "1.png", "2.png", "2b.png", "3.png", "9.png"]
    assert [im["status"] for im in images] == ["ok", "ok", "ok", "failed", "ok", "ok"]
    assert len(list((tmp_path / "o").iterdir())) == 5
