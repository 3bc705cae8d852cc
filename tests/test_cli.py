"""The command line: exit codes, one-line errors, batches, reports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from sr_tile import __version__
from sr_tile.cli import app
from tests.conftest import listing

runner = CliRunner()

REPORT_FIELDS = {
    "input", "output", "width", "height", "out_width", "out_height", "scale", "model",
    "latency_s", "total_s", "flops", "flops_static",
}


def run(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def test_upscale_writes_output_and_json(tmp_path, small_png):
    out = tmp_path / "out.png"
    report = tmp_path / "r.json"
    result = run("upscale", small_png, "--scale", "4", "-o", out, "--model", "bicubic",
                 "--json", report)
    assert result.exit_code == 0, result.output
    with Image.open(out) as im:
        assert im.size == (48 * 4, 40 * 4)
    data = json.loads(report.read_text())
    (image,) = data["images"]
    assert REPORT_FIELDS <= set(image)
    assert image["out_width"] == 192 and image["out_height"] == 160 and image["scale"] == 4
    assert image["model"] == "bicubic" and image["flops"] > 0
    assert image["flops"] == image["flops_static"] and image["flops_pct"] == 100.0
    assert data["flops_convention"] == "classsr"
    assert "100.0%" in result.stdout and "1 written, 0 failed" in result.stdout


def test_default_output_name_keeps_format(tmp_path, astronaut):
    src = tmp_path / "photo.jpg"
    Image.fromarray(astronaut[:32, :32]).save(src, quality=95)
    result = run("upscale", src, "--scale", "2", "-m", "bicubic")
    assert result.exit_code == 0, result.output
    with Image.open(tmp_path / "photo_x2.jpg") as im:
        assert im.format == "JPEG" and im.size == (64, 64)


def test_format_option_changes_format_and_suffix(tmp_path, small_png):
    result = run("upscale", small_png, "--scale", "2", "-m", "bicubic", "--format", "tiff", "-d", tmp_path / "o")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "o" / "small.tif").is_file()


BAD_FILES = {
    "corrupt.png": b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + b"garbage" * 20,
    "empty.png": b"",
    "notes.png": b"this is a text file, not an image\n" * 10,
}


@pytest.mark.parametrize("name", [*BAD_FILES, "truncated.png"])
def test_bad_input_is_one_line_exit_1_and_no_output(tmp_path, small_png, name):
    bad = tmp_path / "in" / name
    bad.parent.mkdir()
    if name == "truncated.png":
        bad.write_bytes(small_png.read_bytes()[:300])
    else:
        bad.write_bytes(BAD_FILES[name])
    before = listing(tmp_path)
    result = run("upscale", bad, "--scale", "2", "-m", "bicubic", "-d", tmp_path / "out")
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error:") and name in errors[0]
    assert "Traceback" not in result.output
    assert listing(tmp_path) == before  # nothing written, no temp file left


def test_batch_goes_on_after_a_bad_file(tmp_path, astronaut):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(astronaut[:24, :24]).save(folder / "a.png")
    (folder / "b.png").write_bytes(b"not an image")
    Image.fromarray(astronaut[24:48, :24]).save(folder / "sub" / "c.png")
    result = run("upscale", folder, "--recursive", "--scale", "2", "-m", "bicubic", "-d", tmp_path / "out",
                 "--json", tmp_path / "r.json")
    assert result.exit_code == 1
    assert (tmp_path / "out" / "a.png").is_file()
    assert (tmp_path / "out" / "sub" / "c.png").is_file()
    assert not (tmp_path / "out" / "b.png").exists()
    assert "2 written, 1 failed" in result.stdout
    statuses = {Path(i["input"]).name: i["status"] for i in
                json.loads((tmp_path / "r.json").read_text())["images"]}
    assert statuses == {"a.png": "ok", "b.png": "failed", "c.png": "ok"}


def test_quoted_glob_and_missing_file(tmp_path, astronaut):
    for name in ("x1.png", "x2.png"):
        Image.fromarray(astronaut[:16, :16]).save(tmp_path / name)
    result = run("upscale", str(tmp_path / "x*.png"), str(tmp_path / "missing.png"),
                 "--scale", "2", "-m", "bicubic", "-d", tmp_path / "out")
    assert result.exit_code == 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["x1.png", "x2.png"]
    assert "missing.png" in result.stderr


def test_existing_output_needs_overwrite_and_input_is_never_overwritten(tmp_path, small_png):
    out = tmp_path / "out.png"
    out.write_bytes(b"keep me")
    result = run("upscale", small_png, "--scale", "2", "-m", "bicubic", "-o", out)
    assert result.exit_code == 1 and "--overwrite" in result.stderr
    assert out.read_bytes() == b"keep me"
    assert run("upscale", small_png, "--scale", "2", "-m", "bicubic", "-o", out, "--skip-existing").exit_code == 0
    assert out.read_bytes() == b"keep me"
    assert run("upscale", small_png, "--scale", "2", "-m", "bicubic", "-o", out, "--overwrite").exit_code == 0
    assert out.read_bytes() != b"keep me"

    original = small_png.read_bytes()
    result = run("upscale", small_png, "--scale", "2", "-m", "bicubic", "-o", small_png, "--overwrite")
    assert result.exit_code == 1 and "input" in result.stderr
    assert small_png.read_bytes() == original


def test_domain_and_usage_errors(tmp_path, small_png):
    """Bad option values are usage errors: one line naming the option, exit 2, nothing
    written; a bad file is exit 1."""
    before = listing(tmp_path)
    for args, words in [
        (("--model", "nope"), "unknown model"),
        (("--overlap", "1"), "--overlap"),
        (("--max-pixels", "0"), "--max-pixels"),
        (("--tile", "0"), "--tile"),
        (("--quality", "101"), "quality"),
        (("--format", "gif"), "unknown output format"),
        (("--alpha", "x"), "--alpha"),
        (("--preset", "Q"), "--preset"),
        (("-o", tmp_path / "x.gif"), "cannot write .gif"),
        (("-o", tmp_path / "x.jpg", "-f", "png"), "names a JPEG file"),
        (("-o", f"{tmp_path}/sub/"), "names a folder"),
        (("-m", "bicubic", "--exit-map", tmp_path / "m.png", "-o", tmp_path / "y.png"),
         "routed models"),
    ]:
        result = run("upscale", small_png, *args)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.exit_code == 2, (args, result.output)
        assert len(lines) == 1 and words in lines[0], (args, lines)
    assert listing(tmp_path) == before
    assert run("upscale", small_png, "--no-such-flag").exit_code == 2
    assert run("upscale").exit_code == 2
    result = run("upscale", small_png, small_png.with_name("other.png"), "-o", tmp_path / "x.png")
    assert result.exit_code == 2 and "-o names one file" in result.stderr


def test_debug_shows_traceback_only_when_asked(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    quiet = run("upscale", bad, "-o", tmp_path / "o.png")
    loud = run("--debug", "upscale", bad, "-o", tmp_path / "o.png")
    assert quiet.exit_code == loud.exit_code == 1
    assert "Traceback" not in quiet.stderr
    assert "Traceback" in loud.stderr


def test_models_and_version(tmp_path):
    result = run("models", "--json", tmp_path / "m.json")
    assert result.exit_code == 0 and "bicubic" in result.stdout
    names = [m["name"] for m in json.loads((tmp_path / "m.json").read_text())["models"]]
    assert "bicubic" in names
    result = run("--version")
    assert result.exit_code == 0 and __version__ in result.stdout


def test_console_script_exit_codes(tmp_path, small_png):
    """The installed entry point, as a user runs it, in a real process."""
    exe = Path(sys.executable).with_name("sr-tile")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"")
    proc = subprocess.run([exe, "upscale", bad, "-m", "bicubic", "-o", tmp_path / "o.png"],
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0 and "empty" in proc.stderr
    proc = subprocess.run([exe, "upscale", small_png, "-s", "2", "-m", "bicubic", "-o", tmp_path / "ok.png"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "ok.png").is_file()


def test_routed_model_flags_exit_map_and_report(tmp_path, astronaut):
    """ENAF flags end to end (untrained weights made here: routing must still be honest)."""
    from sr_tile.models import create_model
    from sr_tile.models.checkpoint import save_weights

    weights = tmp_path / "w.safetensors"
    save_weights(create_model("enaf-fsrcnn", weights=False), weights, name="enaf-fsrcnn",
                 scale=4)
    src = tmp_path / "in.png"
    Image.fromarray(astronaut[:64, :80]).save(src)
    result = run("upscale", src, "-m", "enaf-fsrcnn", "--weights", weights, "--preset", "S",
                 "-o", tmp_path / "o.png", "--exit-map", tmp_path / "map.png",
                 "--json", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    (image,) = json.loads((tmp_path / "r.json").read_text())["images"]
    assert image["eta"] == 2.0 and set(image["exits"]) == {"bicubic", "exit1", "exit2", "full"}
    assert image["flops"] < image["flops_static"]
    assert (tmp_path / "map.png").is_file()
    result = run("upscale", src, "-m", "enaf-fsrcnn", "--weights", weights, "--static",
                 "-o", tmp_path / "s.png", "--json", tmp_path / "s.json")
    assert result.exit_code == 0, result.output
    (image,) = json.loads((tmp_path / "s.json").read_text())["images"]
    assert image["flops_pct"] == 100.0 and "exits" not in image and "eta" not in image
    result = run("upscale", src, "-m", "enaf-fsrcnn", "--weights", weights, "--eta", "1",
                 "--budget", "0.5", "-o", tmp_path / "p.png")
    assert result.exit_code == 2 and "at most one of" in result.stderr
    result = run("upscale", src, "-m", "enaf-carn", "--weights", weights, "-o", tmp_path / "q.png")
    assert result.exit_code == 1 and "not enaf-carn" in result.stderr


def test_default_model_uses_shipped_weights_with_no_flags(tmp_path, small_png):
    """`sr-tile upscale photo.png` on a fresh install: ENAF with the shipped weights."""
    from sr_tile.models.registry import DEFAULT_MODEL, shipped_weights

    assert shipped_weights(DEFAULT_MODEL, 4) is not None
    result = run("upscale", small_png, "--json", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    (image,) = json.loads((tmp_path / "r.json").read_text())["images"]
    assert image["model"] == DEFAULT_MODEL and image["scale"] == 4
    assert image["flops_static"] > 0 and image["exits"] is not None
    assert (small_png.parent / "small_x4.png").is_file()


def test_non_integer_scale_from_the_command_line(tmp_path, astronaut):
    src = tmp_path / "x.png"
    rgba = np.dstack([astronaut[:41, :57], np.linspace(0, 255, 41 * 57).reshape(41, 57)
                      .astype(np.uint8)])
    Image.fromarray(rgba).save(src)
    result = run("upscale", src, "--scale", "2.5", "--model", "bicubic", "--json",
                 tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    with Image.open(tmp_path / "x_x2.5.png") as im:
        assert im.size == (143, 103) and im.mode == "RGBA"  # round-half-up(2.5 * 57, 41)
    (image,) = json.loads((tmp_path / "r.json").read_text())["images"]
    assert image["scale"] == 2.5 and (image["out_width"], image["out_height"]) == (143, 103)
    result = run("upscale", src, "--scale", "2.5", "-o", tmp_path / "e.png")
    assert result.exit_code == 2 and "supports x2, x3, x4" in result.stderr
    for bad in ("1", "0.5", "nan", "100"):
        result = run("upscale", src, "--scale", bad, "-m", "bicubic", "-o", tmp_path / "b.png")
        assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, bad
