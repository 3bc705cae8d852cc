"""A hostile user's files and flags: nothing of theirs is lost, no bad file stops a batch,
every problem is one clean line (issue: hardening).

Signals, start-up, stdout and the big mixed batch run the installed ``sr-tile`` in a real
process, with a timeout, so that a hang fails the test instead of stalling the suite.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from typer.testing import CliRunner

from sr_tile.cli import app
from sr_tile.errors import ImageReadError
from sr_tile.io import read_image
from sr_tile.io.atomic import TEMP_MARKER, remove_stale_temps
from sr_tile.io.tiff_read import count_images
from sr_tile.paths import plan_run
from tests import badfiles
from tests.conftest import listing

EXE = str(Path(sys.executable).with_name("sr-tile"))
BICUBIC = ("-m", "bicubic", "-s", "2")


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every regular file's bytes (links and FIFOs left out)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*")
            if p.is_file() and not p.is_symlink()}


def save(path: Path, pixels: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(badfiles.photo() if pixels is None else pixels).save(path)
    return path


def temps(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if TEMP_MARKER in p.name]


# --------------------------------------------------------------------------- data loss


def test_json_never_replaces_an_existing_file(tmp_path):
    src, other = save(tmp_path / "photo.png"), save(tmp_path / "other.jpg")
    before = snapshot(tmp_path)
    for report, overwrite in ((src, ["--overwrite"]), (other, []), (tmp_path / "out.png", [])):
        result = run("upscale", src, *BICUBIC, "-o", tmp_path / "out.png", "--json", report,
                     *overwrite)
        assert result.exit_code == 1, result.output
        (line,) = lines(result.stderr)
        assert str(report) in line and "Traceback" not in result.output
        assert snapshot(tmp_path) == before  # refused before any work: nothing written
    assert "input of this run" in run("upscale", src, *BICUBIC, "-o", tmp_path / "o.png",
                                      "--json", src, "--overwrite").stderr


def test_exit_map_never_replaces_the_input(tmp_path):
    src = save(tmp_path / "photo.png", badfiles.photo(40, 48))
    before = snapshot(tmp_path)
    result = run("upscale", src, "-o", tmp_path / "o.png", "--exit-map", src, "--overwrite")
    assert result.exit_code == 1
    assert "is an input of this run" in result.stderr and str(src) in result.stderr
    assert snapshot(tmp_path) == before


def test_an_output_that_is_another_input_is_refused(tmp_path):
    """``upscale dir -d dir -f png --overwrite`` with photo.jpg and photo.png used to replace
    the input photo.png."""
    folder = tmp_path / "dir"
    save(folder / "photo.png")
    Image.fromarray(badfiles.photo()).save(folder / "photo.jpg")
    before = snapshot(tmp_path)
    result = run("upscale", folder, "-d", folder, "-f", "png", *BICUBIC, "--overwrite",
                 "--json", tmp_path / "r.json")
    assert result.exit_code == 1
    assert sum("is an input of this run" in line for line in lines(result.stderr)) == 2
    after = snapshot(tmp_path)
    assert {k: after[k] for k in before} == before
    statuses = [i["status"] for i in json.loads((tmp_path / "r.json").read_text())["images"]]
    assert statuses == ["failed", "failed"]


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_two_inputs_one_output_are_both_refused_naming_each_other(tmp_path, overwrite):
    save(tmp_path / "y.png")
    Image.fromarray(badfiles.photo()).save(tmp_path / "y.jpg")
    for name in ("a", "b"):
        save(tmp_path / name / "x.png")
    result = run("upscale", tmp_path / "y.jpg", tmp_path / "y.png", str(tmp_path / "*" / "x.png"),
                 "-d", tmp_path / "out", "-f", "png", *BICUBIC, *overwrite)
    assert result.exit_code == 1
    errors = lines(result.stderr)
    assert len(errors) == 4 and all("would be written by this input and by" in e for e in errors)
    assert str(tmp_path / "y.jpg") in errors[1] and str(tmp_path / "y.png") in errors[0]
    assert "0 written, 4 failed" in result.stdout
    assert not (tmp_path / "out").exists()


def test_non_regular_files_are_never_replaced(tmp_path):
    src = save(tmp_path / "photo.png")
    fifo = badfiles.make_fifo(tmp_path / "fifo.png")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "sock.png"))
    try:
        for target in (fifo, tmp_path / "sock.png"):
            result = run("upscale", src, *BICUBIC, "-o", target, "--overwrite")
            assert result.exit_code == 1
            (line,) = lines(result.stderr)
            assert str(target) in line and "only writes regular files" in line
            assert not target.is_file() and target.exists()
        result = run("upscale", src, *BICUBIC, "-o", tmp_path / "o.png", "--json", fifo,
                     "--overwrite")
        assert result.exit_code == 1 and "a FIFO" in result.stderr
        assert not (tmp_path / "o.png").exists()
    finally:
        sock.close()


def test_symlinks_are_resolved_and_each_real_file_read_once(tmp_path):
    """A file link to another input used to make the real file's output disappear; linked
    folders were skipped without a word."""
    tree = tmp_path / "in"
    save(tree / "real.png")
    (tree / "a_link.png").symlink_to("real.png")  # sorts before the real file
    save(tmp_path / "elsewhere" / "far.png")
    (tree / "far_link.png").symlink_to(tmp_path / "elsewhere" / "far.png")
    (tree / "linked_dir").symlink_to(tmp_path / "elsewhere")
    (tree / "sub").mkdir()
    (tree / "sub" / "loop").symlink_to(tree)
    (tree / "broken.png").symlink_to("nowhere.png")
    before = snapshot(tmp_path)

    result = run("upscale", tree, "-r", "-d", tmp_path / "out", *BICUBIC)
    assert result.exit_code == 0, result.output
    assert listing(tmp_path / "out") == {"real.png", "far_link.png"}
    notes = lines(result.stderr)
    assert all(n.startswith("warning:") for n in notes) and len(notes) == 4
    assert any("a_link.png" in n and "already an input" in n for n in notes)
    assert any("linked_dir" in n and "--follow-links" in n for n in notes)
    assert any("broken.png" in n and "broken link" in n for n in notes)

    result = run("upscale", tree, "-r", "--follow-links", "-d", tmp_path / "out2", *BICUBIC)
    assert result.exit_code == 0, result.output
    # far.png is read once, under its name inside the followed folder rather than the link's
    assert listing(tmp_path / "out2") == {"real.png", "linked_dir/far.png"}
    notes = lines(result.stderr)
    assert any("far_link.png" in n and "already an input" in n for n in notes)
    assert any("loop" in n and "already searched" in n for n in notes)
    after = snapshot(tmp_path)
    assert {k: after[k] for k in before} == before


# --------------------------------------------------------------------- batch stopped or hung


def test_damaged_tiffs_fail_alone_and_the_batch_goes_on(tmp_path):
    """tifffile raised ZeroDivisionError / TypeError on these (fuzzed IFD entries) and the
    batch aborted with no summary and no JSON; the looping IFD chain hung it."""
    folder = tmp_path / "in"
    folder.mkdir()
    bad = {name: blob for name, blob in badfiles.bad_files().items()
           if name in ("tiff_tile_length_0.tif", "tiff_tile_width_0.tif",
                       "tiff_tile_length_pair.tif", "tiff_image_length_pair.tif")}
    for name, blob in bad.items():
        (folder / name).write_bytes(blob)
    (folder / "tiff_x_loop.tif").write_bytes(badfiles.looping_tiff())
    for name in ("a_good.png", "z_good.png"):
        save(folder / name)
    proc = subprocess.run([EXE, "upscale", folder, "-d", tmp_path / "out", *BICUBIC,
                           "--json", tmp_path / "r.json"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 1
    assert listing(tmp_path / "out") == {"a_good.png", "tiff_x_loop.tif", "z_good.png"}
    errors = lines(proc.stderr)
    assert len(errors) == 4 and "Traceback" not in proc.stderr
    for name in bad:
        assert sum(name in e and "corrupt" in e for e in errors) == 1
    assert "3 written, 4 failed" in proc.stdout
    assert json.loads((tmp_path / "r.json").read_text())["summary"]["failed"] == 4


def test_looping_ifd_chain_is_counted_without_hanging(tmp_path):
    path = tmp_path / "loop.tif"
    path.write_bytes(badfiles.looping_tiff())
    with open(path, "rb") as fh:
        assert count_images(fh) == 1  # the empty IFDs are no images; the cycle ends the walk
    assert read_image(path).pixels.shape == (8, 8, 1)
    path.write_bytes(badfiles.multipage_tiff())
    with open(path, "rb") as fh:
        assert count_images(fh) == 3


@pytest.mark.parametrize("name", ["png_bomb.png", "gif_bomb.gif", "bmp_bomb.bmp",
                                  "tiff_bomb.tif", "jpeg_bomb.jpg"])
def test_header_sizes_are_checked_against_the_data(tmp_path, name):
    """A 69-byte PNG that claims 30000x30000 made Pillow allocate ~1 GB before failing."""
    path = tmp_path / name
    path.write_bytes(badfiles.bad_files()[name])
    assert path.stat().st_size < 3000
    with pytest.raises(ImageReadError) as exc:
        read_image(path)
    assert str(exc.value).startswith(str(path)) and "claims 30000x30000" in str(exc.value)


@pytest.mark.parametrize("fmt, kwargs, limit", [
    ("PNG", {"compress_level": 9}, 60_000), ("JPEG", {"quality": 50}, 250_000),
    ("JPEG", {"quality": 50, "progressive": True}, 250_000), ("WEBP", {"lossless": True}, 2_000),
    ("GIF", {}, 20_000)])
def test_real_highly_compressible_pictures_are_not_refused(tmp_path, fmt, kwargs, limit):
    """The ratio bounds are the codecs' worst cases: flat 4000x3000 pictures (a few kB)
    still read."""
    path = tmp_path / f"flat.{fmt.lower()}"
    Image.new("RGB", (4000, 3000), (200, 120, 40)).save(path, format=fmt, **kwargs)
    assert path.stat().st_size < limit
    assert read_image(path).pixels.shape[:2] == (3000, 4000)


def test_fifo_and_device_inputs_fail_at_once(tmp_path):
    fifo = badfiles.make_fifo(tmp_path / "in.png")
    for path in (fifo, Path("/dev/zero")):
        with pytest.raises(ImageReadError, match="not an image file"):
            read_image(path)


# ----------------------------------------------------------------------- signals


def _start(args: list, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([EXE, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_stop_signal_mid_write_leaves_no_temp_file(tmp_path, sig):
    small = save(tmp_path / "in" / "a_small.png")
    rng = np.random.default_rng(0)
    save(tmp_path / "in" / "b_big.png", rng.integers(0, 256, (1024, 1024, 3), dtype=np.uint8))
    out = tmp_path / "out"
    proc = _start(["upscale", tmp_path / "in", "-d", out, "-m", "bicubic", "-s", "4",
                   "--json", tmp_path / "r.json"])
    deadline = time.monotonic() + 120
    # images are pipelined: wait until the small one is written and the big one is writing
    while not (any(".b_big.png" in p.name for p in temps(tmp_path))
               and (out / "a_small.png").exists()):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.02)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig
    assert lines(stderr) == [f"error: interrupted ({sig.name}); no partial output was "
                             "left behind"]
    assert temps(tmp_path) == [] and listing(out) == {"a_small.png"}
    report = json.loads((tmp_path / "r.json").read_text())
    assert [i["status"] for i in report["images"]] == ["ok", "not run"]
    assert report["images"][0]["input"] == str(small)
    assert report["stopped"]["exit_code"] == 128 + sig


def test_ctrl_c_during_start_up_is_one_line(tmp_path):
    """Ctrl-C while the program imports and builds its command line (it used to print a
    traceback for the first two seconds): one line and 130, or a clean finish if it was
    already done."""
    src = save(tmp_path / "photo.png")
    interrupted = 0
    for delay in (0.1, 0.2, 0.3, 0.4, 0.6):
        proc = _start(["upscale", src, *BICUBIC, "-o", tmp_path / "o.png", "--overwrite"])
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
        assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, (delay, stderr)
        if proc.returncode == 0:
            assert stderr == ""
            continue
        assert proc.returncode == 130, (delay, proc.returncode, stderr)
        (line,) = lines(stderr)
        assert line.startswith("error: interrupted")
        interrupted += 1
    assert interrupted >= 2
    assert temps(tmp_path) == []


def test_stale_temp_files_are_removed_when_the_output_is_written_again(tmp_path):
    src = save(tmp_path / "photo.png")
    out = tmp_path / "out.png"
    dead = subprocess.Popen(["true"])  # a pid that no process has any more
    dead.wait()
    stale = [tmp_path / f".out.png{TEMP_MARKER}{dead.pid}-0a1b2c3d.tmp",
             tmp_path / f".out.png{TEMP_MARKER}deadbeef.tmp"]  # the naming before pids
    live = tmp_path / f".out.png{TEMP_MARKER}{os.getppid()}-11111111.tmp"  # a live process
    fresh = tmp_path / f".out.png{TEMP_MARKER}{dead.pid}-22222222.tmp"  # newer than the run
    other = tmp_path / f".photo.png{TEMP_MARKER}{dead.pid}-33333333.tmp"  # another output
    hour_ago = time.time() - 3600
    for path in (*stale, live, other):
        path.write_bytes(b"partial")
        os.utime(path, (hour_ago, hour_ago))
    fresh.write_bytes(b"partial")
    result = run("upscale", src, *BICUBIC, "-o", out)
    assert result.exit_code == 0, result.output
    assert not any(p.exists() for p in stale)
    assert live.exists() and fresh.exists() and other.exists()
    assert remove_stale_temps(out) == []


# ----------------------------------------------------------------- messages


def test_library_warnings_become_one_line_per_file(tmp_path):
    jpeg = tmp_path / "exif.jpg"
    jpeg.write_bytes(badfiles.corrupt_exif_jpeg())
    tif = tmp_path / "badtag.tif"
    tif.write_bytes(badfiles.with_tag(badfiles.tiff(resolution=(72, 72)), 282, value=1 << 28))
    proc = subprocess.run([EXE, "upscale", jpeg, tif, "-d", tmp_path / "out", *BICUBIC],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    said = lines(proc.stderr)
    assert len(said) == 2 and all(s.startswith("warning:") for s in said), said
    assert "exif.jpg" in said[0] and "Corrupt EXIF" in said[0]
    assert "badtag.tif" in said[1] and "invalid value offset" in said[1]
    assert "UserWarning" not in proc.stderr and ".py:" not in proc.stderr


def test_untrusted_text_is_escaped(tmp_path):
    name = tmp_path / "bad\x1b[31mname.png"
    name.write_bytes(b"\x1b]0;title\x07 not an image")
    pixels = Image.fromarray(badfiles.photo())
    icc = b"\x00" * 16 + b"\x1b[2J" + b"\x1b]0;pwned\x07" * 8
    pixels.save(tmp_path / "icc.png", icc_profile=icc)
    result = run("upscale", name, tmp_path / "icc.png", "-d", tmp_path / "out", *BICUBIC)
    assert result.exit_code == 1
    assert "\x1b" not in result.output and "\x07" not in result.output
    said = lines(result.stderr)
    assert any("bad\\x1b[31mname.png" in s and s.startswith("error:") for s in said)
    assert any("ICC" in s and "\\x1b[2J" in s for s in said)


def test_nan_and_inf_are_replaced_with_a_warning(tmp_path):
    src = tmp_path / "nan.tif"
    src.write_bytes(badfiles.nan_tiff())
    result = run("upscale", src, *BICUBIC, "-o", tmp_path / "o.tif")
    assert result.exit_code == 0, result.output
    (line,) = lines(result.stderr)
    assert "nan.tif" in line and "1 NaN and 1 infinite" in line
    out = tifffile.imread(tmp_path / "o.tif")
    assert out.dtype == np.float32 and np.isfinite(out).all()


@pytest.mark.parametrize("name, make", [
    ("anim.gif", badfiles.animated_gif), ("pages.tif", badfiles.multipage_tiff)])
def test_multi_frame_inputs_say_only_the_first_frame_is_used(tmp_path, name, make):
    src = tmp_path / name
    src.write_bytes(make())
    result = run("upscale", src, *BICUBIC, "-d", tmp_path / "out")
    assert result.exit_code == 0, result.output
    (line,) = lines(result.stderr)
    assert name in line and "only the first is upscaled" in line


def test_animated_png_warns_with_its_frame_count(tmp_path):
    frames = [Image.fromarray(badfiles.photo()), Image.fromarray(badfiles.photo()[::-1].copy())]
    frames[0].save(tmp_path / "a.png", save_all=True, append_images=frames[1:])
    assert read_image(tmp_path / "a.png").warnings == (
        f"{tmp_path / 'a.png'}: animated PNG with 2 frames; only the first is upscaled",)


def test_output_names_we_cannot_write_are_usage_errors(tmp_path):
    src = save(tmp_path / "photo.png")
    before = snapshot(tmp_path)
    for target in ("x.gif", "x.tga", "x.ppm", "dir/"):
        result = run("upscale", src, *BICUBIC, "-o", f"{tmp_path}/{target}")
        assert result.exit_code == 2
        (line,) = lines(result.stderr)
        assert target.rstrip("/") in line
    assert snapshot(tmp_path) == before and not (tmp_path / "dir").exists()


def test_report_failures_are_one_line_naming_the_report(tmp_path, monkeypatch):
    src = save(tmp_path / "photo.png")
    (tmp_path / "taken").mkdir()
    result = run("upscale", src, *BICUBIC, "-o", tmp_path / "o.png", "--json", tmp_path / "taken")
    assert result.exit_code == 1 and lines(result.stderr) == [
        f"error: {tmp_path / 'taken'}: is a directory; sr-tile only writes regular files"]
    assert not (tmp_path / "o.png").exists()

    from sr_tile.io import atomic  # a full disk while the report is written (simulated)

    real_fsync = atomic.os.fsync

    def fsync(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".tmp") and ".r.json" in \
                os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(28, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    result = run("upscale", src, *BICUBIC, "-o", tmp_path / "o.png", "--json", tmp_path / "r.json")
    assert result.exit_code == 1
    (line,) = lines(result.stderr)
    assert str(tmp_path / "r.json") in line and "No space left on device" in line
    assert (tmp_path / "o.png").is_file() and temps(tmp_path) == []


def test_stdout_on_a_full_device_is_one_line_and_the_report_still_written(tmp_path):
    src = save(tmp_path / "photo.png")
    with open("/dev/full", "w") as full:
        proc = subprocess.run([EXE, "upscale", src, *BICUBIC, "-o", tmp_path / "o.png",
                               "--json", tmp_path / "r.json"], stdout=full,
                              stderr=subprocess.PIPE, text=True, timeout=120)
    assert proc.returncode == 1
    assert lines(proc.stderr) == ["error: cannot write to standard output (No space left on "
                                  "device)"]
    assert json.loads((tmp_path / "r.json").read_text())["summary"]["ok"] == 1


def test_usage_errors_from_the_console_script_are_one_line_exit_2(tmp_path):
    src = save(tmp_path / "photo.png")
    for args in (["--scale", "abc"], ["--max-pixels", "0"], ["--no-such-flag"]):
        proc = subprocess.run([EXE, "upscale", src, *args], capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 2, (args, proc.stderr)
        (line,) = lines(proc.stderr)
        assert line.startswith("error:") and "Traceback" not in proc.stderr


def test_report_written_when_a_global_error_stops_the_run(tmp_path):
    src = save(tmp_path / "photo.png")
    (tmp_path / "w.safetensors").write_bytes(b"not weights")
    result = run("upscale", src, "-m", "enaf-fsrcnn", "--weights", tmp_path / "w.safetensors",
                 "-o", tmp_path / "o.png", "--json", tmp_path / "r.json")
    assert result.exit_code == 1
    (line,) = lines(result.stderr)
    assert "w.safetensors" in line
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["stopped"]["reason"] == line.removeprefix("error: ")
    assert [i["status"] for i in report["images"]] == ["not run"]


def test_planner_decides_every_path_before_any_work(tmp_path):
    src = save(tmp_path / "a.png")
    plan = plan_run([str(src)], scale=2, output_dir=str(tmp_path / "o"),
                    report=tmp_path / "r.json", route_map=tmp_path / "maps")
    (job,) = plan.jobs
    assert job.dst == tmp_path / "o" / "a.png" and job.refused is None
    assert job.route_map == tmp_path / "maps" / "a_route.png"
    assert listing(tmp_path) == {"a.png"}  # planning writes nothing


# ---------------------------------------------------------- the hostile batch, all at once


def test_a_batch_of_bad_and_odd_files(tmp_path):
    """30+ damaged, bomb, odd and non-regular files among good ones: exit 1, one line per
    bad file, no traceback, every good output written, no input changed, no temp left."""
    folder = tmp_path / "in"
    folder.mkdir()
    bad = badfiles.bad_files()
    for name, blob in bad.items():
        (folder / name).write_bytes(blob)
    odd = badfiles.odd_files()
    for name, (blob, _) in odd.items():
        (folder / name).write_bytes(blob)
    goods = {"good_1.png": "PNG", "good_2.jpg": "JPEG", "good_3.webp": "WEBP",
             "good_4.bmp": "BMP"}
    for name, fmt in goods.items():
        (folder / name).write_bytes(badfiles.encoded(fmt))
    badfiles.make_fifo(folder / "fifo.png")
    (folder / "link_to_good.png").symlink_to("good_1.png")
    (folder / "dangling.png").symlink_to("gone.png")
    assert len(bad) + 3 >= 30
    before = snapshot(folder)

    proc = subprocess.run([EXE, "upscale", folder, "-d", tmp_path / "out", *BICUBIC,
                           "--json", tmp_path / "r.json"], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and "\x1b" not in proc.stderr
    said = lines(proc.stderr)
    for name in [*bad, "fifo.png"]:
        shown = name.replace("\x1b", "\\x1b")
        mine = [s for s in said if f"/{shown}:" in s]
        assert len(mine) == 1 and mine[0].startswith("error:"), (name, mine)
    for name, (_, words) in odd.items():
        mine = [s for s in said if f"/{name}:" in s]
        assert len(mine) == (1 if words else 0) and all(words in s for s in mine), (name, mine)
    for name in ("link_to_good.png", "dangling.png"):
        assert sum(f"/{name}:" in s and s.startswith("warning:") for s in said) == 1
    assert len(said) == len(bad) + 1 + sum(1 for _, w in odd.values() if w) + 2
    written = listing(tmp_path / "out")
    assert {Path(n).stem for n in written} == {Path(n).stem for n in [*goods, *odd]}
    assert snapshot(folder) == before
    assert temps(tmp_path) == []
    summary = json.loads((tmp_path / "r.json").read_text())["summary"]
    assert summary == {"ok": len(goods) + len(odd), "failed": len(bad) + 1, "skipped": 0,
                       "not_run": 0}


def test_over_long_paths_are_one_line_naming_them(tmp_path):
    src = save(tmp_path / "photo.png")
    long_out = tmp_path / ("o" * 300 + ".png")
    result = run("upscale", src, *BICUBIC, "-o", long_out)
    assert result.exit_code == 1
    (line,) = lines(result.stderr)
    assert str(long_out) in line and "File name too long" in line
    long_in = tmp_path / ("i" * 300 + ".png")
    result = run("upscale", long_in, *BICUBIC, "-d", tmp_path / "out")
    assert result.exit_code == 1 and "internal error" not in result.stderr
    (line,) = lines(result.stderr)
    assert str(long_in.name[:50]) in line


def test_a_report_in_a_read_only_folder_is_one_line(tmp_path, monkeypatch):
    """As root nothing is read-only, so the refusal is simulated where the file is created."""
    import builtins

    src = save(tmp_path / "photo.png")
    locked = tmp_path / "locked"
    locked.mkdir()
    real_open = builtins.open

    def deny(file, mode="r", *args, **kwargs):
        if str(file).startswith(str(locked)) and "x" in mode:
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", deny)
    result = run("upscale", src, *BICUBIC, "-o", tmp_path / "o.png", "--json", locked / "r.json")
    assert result.exit_code == 1
    (line,) = lines(result.stderr)
    assert str(locked / "r.json") in line and "Permission denied" in line
    assert (tmp_path / "o.png").is_file() and temps(tmp_path) == []
