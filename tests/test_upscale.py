"""The library pipeline end to end: modes survive, tiles vanish, alpha is right."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from sr_tile.imresize import imresize
from sr_tile.io import read_image
from sr_tile.models import MODELS, create_model
from sr_tile.routing import RoutingOptions
from sr_tile.upscale import UpscaleOptions, Upscaler


def upscale_to_array(pixels: np.ndarray, **kw) -> np.ndarray:
    up = Upscaler(UpscaleOptions(**kw))
    return np.concatenate(list(up.upscale_array(pixels)))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_registry_models_build_and_describe_themselves(name):
    entry = MODELS[name]
    for scale in entry.scales:
        model = create_model(name, scale=scale, weights=False)
        d = model.descriptor
        assert d.name == name and d.scale == scale
        assert d.default_overlap > 2 * d.margin
        h, w = (-(-n // d.size_multiple) * d.size_multiple for n in (16, 24))
        x = torch.rand(1, 3, h, w)
        with torch.no_grad():
            assert model(x).shape == (1, 3, h * scale, w * scale)


@pytest.mark.parametrize("tile", [16, 37, 64, 1000])
def test_bicubic_tiled_equals_whole_image_imresize(astronaut, tile):
    pixels = astronaut[:90, :70].astype(np.float32) / 255
    out = upscale_to_array(pixels, model="bicubic", scale=4, tile=tile, overlap=8)
    whole = imresize(torch.from_numpy(pixels).permute(2, 0, 1)[None], 4, antialias=False)
    assert np.abs(out - whole[0].permute(1, 2, 0).numpy()).max() < 1e-4


def test_rgba_16bit_alpha_is_upscaled_and_kept(tmp_path, astronaut):
    rgb = astronaut[:32, :40].astype(np.uint16) * 257
    yy, xx = np.mgrid[:32, :40]
    alpha = ((xx * 1600 + yy * 300) % 65536).astype(np.uint16)
    src = tmp_path / "rgba16.tif"
    tifffile.imwrite(src, np.dstack([rgb, alpha]), photometric="rgb", extrasamples=["unassalpha"])
    dst = tmp_path / "out.tif"
    Upscaler(UpscaleOptions(scale=2, model="bicubic")).upscale_file(src, dst)
    out = read_image(dst).pixels
    assert out.dtype == np.uint16 and out.shape == (64, 80, 4)
    expected = imresize(torch.from_numpy(alpha / 65535.0)[None, None], 2, antialias=False)
    expected = (expected.clamp(0, 1) * 65535).round().numpy()[0, 0]
    assert np.abs(out[..., 3].astype(float) - expected).max() <= 1


def test_constant_alpha_passes_through_without_work(tmp_path, astronaut):
    src = tmp_path / "rgba.png"
    rgba = np.dstack([astronaut[:20, :20], np.full((20, 20), 200, np.uint8)])
    Image.fromarray(rgba).save(src)
    up = Upscaler(UpscaleOptions(scale=2, model="bicubic"))
    calls = []

    class Spy:
        def __init__(self, real):
            self.real = real

        def __getattr__(self, name):
            return getattr(self.real, name)

        def __call__(self, batch, windows):
            calls.append(batch.shape[1])
            return self.real(batch, windows)

    up.runner = Spy(up.runner)
    out = np.concatenate(list(up.upscale_array(read_image(src).pixels)))
    assert calls and set(calls) == {3}  # only colour went through the model
    assert (out[..., 3] == 200).all() and out.shape == (40, 40, 4)


@pytest.mark.parametrize(
    "mode,make",
    [
        ("L", lambda a: Image.fromarray(a[..., 1])),
        ("I;16", lambda a: Image.fromarray(a[..., 1].astype(np.uint16) * 257)),
        ("P", lambda a: Image.fromarray(a).quantize(64)),
        ("RGBA", lambda a: Image.fromarray(np.dstack([a, a[..., 0]]))),
    ],
)
def test_modes_survive_the_whole_pipeline(tmp_path, astronaut, mode, make):
    src = tmp_path / f"in_{mode.replace(';', '')}.png"
    make(astronaut[:24, :30]).save(src)
    dst = tmp_path / "out.png"
    report = Upscaler(UpscaleOptions(scale=2, model="bicubic")).upscale_file(src, dst)
    a, b = read_image(src).pixels, read_image(dst).pixels
    assert b.shape == (48, 60, a.shape[2]) and b.dtype == a.dtype
    assert report.out_width == 60 and report.out_height == 48
    # bicubic keeps the mean colour of a photo
    assert abs(float(a.mean()) - float(b.mean())) < 0.02 * float(np.iinfo(a.dtype).max)


def test_tune_allocator_applies_on_glibc_only():
    import platform

    from sr_tile import tune_allocator

    glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert tune_allocator() is glibc
    assert tune_allocator(keep_mib=64) is glibc  # idempotent


@pytest.mark.parametrize("route", [True, False])
def test_flops_are_counted_before_the_timed_batches(monkeypatch, astronaut, route):
    """latency_s is model compute: a first-time FLOPs count (~1 s in a fresh process) must
    happen in prepare(), never inside the timed batches, and the counts must stay right."""
    import sr_tile.flops
    import sr_tile.models.enaf.model
    import sr_tile.models.enaf.multiexit

    up = Upscaler(UpscaleOptions(model="enaf-fsrcnn", static=not route, tile=32))
    runner_type = type(up.runner)
    timed = [False]
    counted_while_timed = []
    real_call, real_count = runner_type.__call__, sr_tile.flops.count_flops

    def call(self, batch, windows):
        timed[0] = True
        try:
            return real_call(self, batch, windows)
        finally:
            timed[0] = False

    def count(*args, **kwargs):
        counted_while_timed.append(timed[0])
        return real_count(*args, **kwargs)

    monkeypatch.setattr(runner_type, "__call__", call)
    for module in (sr_tile.flops, sr_tile.models.enaf.model, sr_tile.models.enaf.multiexit):
        monkeypatch.setattr(module, "count_flops", count)
    sr_tile.flops.clear_flops_cache()
    picture = astronaut[:100, :130]
    up.upscale_whole(picture)
    assert counted_while_timed and not any(counted_while_timed)
    tiles = up.tiling.count(100, 130)
    assert up.runner.flops_static == tiles * up.model.backbone.path_flops(32, 32)[-1]


def _fresh_process(code: str) -> str:
    """Run ``code`` in a new Python process (nothing imported yet); its stderr."""
    import subprocess

    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stderr


def test_lean_start_up_imports_no_torch():
    """`sr-tile --help`, `sr-tile models` and `sr-tile upscale --help` parse and print
    without importing torch, training or bench code."""
    code = ("import sys\nfrom sr_tile.cli import run\n"
            "for args in (['--help'], ['models'], ['upscale', '--help']):\n"
            "    assert run(args) == 0, args\n"
            "heavy = [m for m in sys.modules if m == 'torch' or m.startswith(('sr_tile.train', "
            "'sr_tile.bench.', 'sr_tile.upscale'))]\n"
            "print('HEAVY', heavy, file=sys.stderr)\n")
    said = _fresh_process(code)
    assert "HEAVY []" in said, said[-500:]


def test_first_image_of_a_process_pays_no_flops_counter_imports(tmp_path, astronaut):
    """The default model's routed run counts its FLOPs without torch's dynamo machinery
    (~2 s of imports on a process's first meta-device or FlopCounterMode count)."""
    Image.fromarray(astronaut[:64, :80]).save(tmp_path / "in.png")
    code = ("import sys\nfrom sr_tile import Upscaler\n"
            f"r = Upscaler().upscale_file({str(tmp_path / 'in.png')!r}, "
            f"{str(tmp_path / 'out.png')!r})\n"
            "print('FLOPS', r.flops > 0, r.flops_static > 0, "
            "[m for m in sys.modules if m.startswith('torch._dynamo')][:3], file=sys.stderr)\n")
    said = _fresh_process(code)
    assert "FLOPS True True []" in said, said[-500:]


def test_static_runs_take_the_models_large_tiles_fitted_to_the_image():
    """--static runs a routed model on its static tiles (256, shrunk to fit the image); a
    router by tiles keeps its 32 px decision grid, one by cells fits its large tiles (its grid
    is the image's), so does a model routed once per image (TADT), and a --tile given is kept
    as given."""
    static = Upscaler(UpscaleOptions(model="enaf-fsrcnn", static=True)).tiling
    cells = Upscaler(UpscaleOptions(model="enaf-fsrcnn")).tiling
    tiles = Upscaler(UpscaleOptions(model="enaf-carn")).tiling
    chosen = Upscaler(UpscaleOptions(model="enaf-fsrcnn", static=True, tile=100)).tiling
    assert (static.tile, static.overlap, static.margin, static.fit) == (256, 8, 2, True)
    assert static.tile_shape(400, 640) == (204, 219)  # 2 x 3 tiles, 1.05x the pixels
    assert (cells.tile, cells.fit) == (512, True) and cells.tile_shape(400, 640) == (400, 332)
    assert (tiles.tile, tiles.fit) == (32, False) and tiles.tile_shape(400, 640) == (32, 32)
    assert (chosen.tile, chosen.fit) == (100, False) and chosen.tile_shape(400, 640) == (100, 100)
    per_image = Upscaler(UpscaleOptions(model="tadt-light", scale=2.5)).tiling
    assert (per_image.tile, per_image.fit) == (256, True)
    assert per_image.tile_shape(400, 640) == (224, 256)  # 224 rows: 2 tiles fit 400


def test_static_runs_a_routed_model_as_its_full_network(astronaut):
    """--static: ENAF's best quality, every tile through the full network, no router."""
    picture = np.ascontiguousarray(astronaut[:64, :96])
    static = Upscaler(UpscaleOptions(model="enaf-fsrcnn", static=True))
    assert not static.routed and static.runner.extras() == {}
    out = static.upscale_whole(picture)
    assert static.runner.flops == static.runner.flops_static > 0
    full = static.model.backbone
    with torch.inference_mode():
        x = torch.from_numpy(picture).permute(2, 0, 1)[None].float() / 255
        whole = full(x)[0].permute(1, 2, 0).clamp(0, 1).mul(255).round().byte().numpy()
    assert np.abs(out.astype(int) - whole.astype(int)).max() <= 2  # tiled, not exact (margin)
    # S: on this crop of hair and face, M sends every cell to the full network
    routed = Upscaler(UpscaleOptions(model="enaf-fsrcnn", routing=RoutingOptions(preset="S")))
    routed.upscale_whole(picture)
    assert routed.routed and routed.runner.flops < routed.runner.flops_static
    assert set(routed.runner.extras()) == {"eta", "gamma", "exits"}


def test_a_routed_model_without_a_runner_cannot_be_built():
    from torch import nn

    from sr_tile.models.descriptor import ModelDescriptor, Routing
    from sr_tile.runner import TileRunner, make_runner, runner_class

    class Halting(nn.Module):
        descriptor = ModelDescriptor(name="halting", scale=2, routing=Routing.TOKENS)

    with pytest.raises(TypeError, match="names no runner_cls"):
        runner_class(Halting())
    Halting.runner_cls = TileRunner
    assert runner_class(Halting()) is TileRunner
    Halting.runner_cls = None
    with pytest.raises(TypeError):
        make_runner(Halting(), device=torch.device("cpu"), alpha="bicubic",
                    routing=RoutingOptions())
