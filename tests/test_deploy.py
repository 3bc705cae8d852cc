"""Deployment: ONNX export and ONNX Runtime parity for every shipped model, community models
through spandrel, reduced precision with its fallback, TTA, and the out-of-memory fallback."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from sr_tile.cli import app
from sr_tile.deploy.onnx import FORMAT, OPSET, export_onnx, onnx_model
from sr_tile.models import MODELS, create_model
from sr_tile.models.checkpoint import save_weights
from sr_tile.models.registry import shipped_weights
from sr_tile.runner import PRECISION_FLOOR_DB
from sr_tile.upscale import UpscaleOptions, Upscaler

pytestmark = pytest.mark.usefixtures("one_thread")
cli = CliRunner()

SHIPPED = [(name, scale) for name, entry in MODELS.items() for scale in entry.weights
           if shipped_weights(name, scale) is not None
           and not hasattr(create_model(name, scale=scale or 4, weights=False),  # 0: any
                           "onnx_unsupported")]  # refused with one line (tested below)


def run(*args) -> object:
    return cli.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[tuple[str, int], Path]:
    """Every shipped model exported once for the module."""
    root = tmp_path_factory.mktemp("onnx")
    return {(name, scale): export_onnx(name, scale=scale, out_dir=root)
            for name, scale in SHIPPED}


@pytest.fixture(scope="module")
def photo(astronaut) -> np.ndarray:
    """A 100x132 LR crop of a real photo: flat sky, a face, fabric."""
    return np.ascontiguousarray(astronaut[20:120, 150:282])


def test_every_shipped_model_exports_with_dynamic_axes_and_metadata(exports):
    assert SHIPPED, "no shipped weights found"
    for (name, scale), folder in exports.items():
        files = sorted(folder.glob("*.onnx"))
        assert files and not list(folder.glob("*.data")), "self-contained files only"
        for path in files:
            proto = onnx.load(str(path))
            meta = {p.key: p.value for p in proto.metadata_props}
            assert meta["sr_tile.format"] == FORMAT and meta["sr_tile.model"] == name
            assert meta["sr_tile.scale"] == str(scale) and meta["sr_tile.part"] == path.stem
            assert sorted(json.loads(meta["sr_tile.parts"])) == sorted(p.stem for p in files)
            assert json.loads(meta["sr_tile.flops_per_tile"])["flops"] > 0
            assert proto.opset_import[0].version == OPSET
            dims = proto.graph.input[0].type.tensor_type.shape.dim
            assert all(dims[axis].dim_param for axis in (0, 2, 3)), path
        presets = json.loads(meta["sr_tile.presets"])
        model = create_model(name, scale=scale)
        assert presets == model.presets and "M" in presets
        assert json.loads(meta["sr_tile.router"]) == getattr(model, "router", None)


@pytest.mark.parametrize("tile", [32, 48])
def test_onnxruntime_matches_torch_on_a_photo(exports, photo, tile):
    """Every shipped model: ONNX Runtime's output within 1/255 of torch's, and ENAF's
    router picking the same path for at least 99 % of the tiles, at two tile sizes."""
    for (name, scale), folder in exports.items():
        ort = Upscaler(UpscaleOptions(scale=scale, model=name, tile=tile,
                                      backend="onnxruntime", weights=str(folder)))
        dense = any("runs dense" in note for note in ort.notes)  # AdaFormer's halting: no graph
        ref = Upscaler(UpscaleOptions(scale=scale, model=name, tile=tile, static=dense))
        a = ref.upscale_whole(photo).astype(int)
        b = ort.upscale_whole(photo).astype(int)
        assert np.abs(a - b).max() <= 1, (name, scale, tile)
        if hasattr(ref.runner, "paths"):  # a router that runs on ONNX Runtime picks the same
            paths_a, paths_b = ref.runner.paths, ort.runner.paths
            same = np.mean(np.array(paths_a) == np.array(paths_b))
            h, w = photo.shape[:2]  # a path per cell (32 px, of the image), else per tile
            assert len(paths_a) == (-(-h // 32) * -(-w // 32) if ref.runner.cells
                                    else ort.tile_count(w, h))
            assert same >= 0.99, (name, scale, tile)
        assert ort.runner.flops == ref.runner.flops  # the books are the same for both


def test_export_then_upscale_with_onnxruntime_from_the_cli(tmp_path, small_png, monkeypatch):
    monkeypatch.setenv("SR_TILE_CACHE", str(tmp_path / "cache"))
    result = run("export", "enaf-fsrcnn", "--format", "onnx", "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    folder = tmp_path / "out" / "enaf-fsrcnn-x4"
    assert (folder / "estimator.onnx").is_file() and (folder / "backbone.heads.2.onnx").is_file()
    again = run("export", "enaf-fsrcnn", "-o", tmp_path / "out")
    assert again.exit_code == 1 and "exists" in again.output
    out = tmp_path / "x4.png"
    result = run("upscale", small_png, "--scale", "4", "--backend", "onnxruntime",
                 "--weights", folder, "-o", out, "--json", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    assert "onnxruntime: running on CPU" in result.output
    with Image.open(out) as im:
        assert im.size == (48 * 4, 40 * 4)
    # no --weights: exported once into the cache, then reused
    result = run("upscale", small_png, "--backend", "onnxruntime", "-o", tmp_path / "c.png")
    assert result.exit_code == 0 and "exported enaf-fsrcnn x4 to ONNX once" in result.output
    result = run("upscale", small_png, "--backend", "onnxruntime", "-o", tmp_path / "d.png")
    assert result.exit_code == 0 and "exported" not in result.output
    assert np.array_equal(np.asarray(Image.open(tmp_path / "c.png")),
                          np.asarray(Image.open(tmp_path / "d.png")))


def test_bad_backend_options_and_files_are_one_line(tmp_path, small_png, exports):
    result = run("upscale", small_png, "--backend", "tflite", "-o", tmp_path / "o.png")
    assert result.exit_code == 2 and "--backend must be one of" in result.output
    other = exports[("enaf-fsrcnn", 4)]
    result = run("upscale", small_png, "-s", "4", "-m", "enaf-carn", "--backend", "onnxruntime",
                 "--weights", other, "-o", tmp_path / "o.png")
    assert result.exit_code == 1 and "not enaf-carn x4" in result.output
    broken = tmp_path / "broken" / "enaf-fsrcnn-x4"
    broken.mkdir(parents=True)
    for path in other.glob("*.onnx"):
        (broken / path.name).write_bytes(path.read_bytes()[: 200])
    result = run("upscale", small_png, "--backend", "onnxruntime", "--weights", broken,
                 "-o", tmp_path / "o.png")
    assert result.exit_code == 1 and "not a readable ONNX model" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "o.png").exists()
    result = run("upscale", small_png, "--backend", "onnxruntime", "--precision", "bf16",
                 "-o", tmp_path / "o.png")
    assert result.exit_code == 2 and "runs on --backend torch" in result.output
    result = run("export", "bicubic", "-o", tmp_path / "x")
    assert result.exit_code == 1 and "no network to export" in result.output
    for name, words in (("tadt-light", "implicit upsampler"), ("iet-light", "sparse CSR kernels")):
        result = run("export", name, "-o", tmp_path / "x")
        assert result.exit_code == 1 and result.output.count("\n") == 1 and words in result.output


def test_bicubic_runs_as_it_is_on_the_onnxruntime_backend(photo):
    a = Upscaler(UpscaleOptions(model="bicubic", scale=2)).upscale_whole(photo)
    b = Upscaler(UpscaleOptions(model="bicubic", scale=2, backend="onnxruntime"))
    assert np.array_equal(a, b.upscale_whole(photo))


def test_adaformer_exports_dense_with_window_shapes_from_the_input(tmp_path):
    """AdaFormer's halting has no static graph: it exports dense (without the bicubic skip,
    whose weights depend on the tile) and runs as a static model; the graph takes any tile
    that is a multiple of the window."""
    torch.manual_seed(0)
    model = create_model("adaformer-light", scale=4, weights=False)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))  # no zero-initialised layer hides a branch
    weights = save_weights(model, tmp_path / "w.safetensors", name="adaformer-light", scale=4)
    folder = export_onnx("adaformer-light", scale=4, out_dir=tmp_path, weights=weights)
    loaded = onnx_model("adaformer-light", scale=4, weights=folder, device=torch.device("cpu"))
    assert any("runs dense" in note for note in loaded.notes)
    assert loaded.model.descriptor.routing.value == "none"
    for shape in ((1, 3, 96, 96), (2, 3, 64, 128)):
        x = torch.rand(shape)
        with torch.no_grad():
            assert (loaded.model(x) - model(x)).abs().max() < 1e-3


# --- community models (spandrel) ----------------------------------------------------------


def _compact(tmp_path: Path, suffix: str) -> tuple[Path, torch.nn.Module]:
    from sr_tile.models.community import _spandrel

    _spandrel()
    from spandrel.architectures.Compact.__arch.SRVGG import SRVGGNetCompact

    torch.manual_seed(1)
    net = SRVGGNetCompact(num_in_ch=3, num_out_ch=3, num_feat=16, num_conv=4, upscale=2).eval()
    path = tmp_path / f"compact_x2{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(net.state_dict(), path)
    else:
        torch.save(net.state_dict(), path)
    return path, net


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_a_community_model_file_gets_tiling_and_reports(tmp_path, photo, suffix):
    path, net = _compact(tmp_path, suffix)
    src = tmp_path / "in.png"
    Image.fromarray(photo).save(src)
    result = run("upscale", src, "-m", path, "-s", "2", "--tile", "48", "-o", tmp_path / "o.png",
                 "--json", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r.json").read_text())["images"][0]
    assert report["model"] == path.name and report["flops"] > 0
    with torch.no_grad():
        whole = net(torch.from_numpy(photo).permute(2, 0, 1)[None].float() / 255)
    expect = (whole[0].permute(1, 2, 0).clamp(0, 1) * 255).round().numpy()
    got = np.asarray(Image.open(tmp_path / "o.png")).astype(float)
    assert got.shape == expect.shape and np.abs(got - expect).max() <= 1  # seam-free tiles


def test_bad_community_model_files_are_one_line(tmp_path, small_png):
    path, _ = _compact(tmp_path, ".pth")
    result = run("upscale", small_png, "-m", path, "-o", tmp_path / "o.png")  # x4 asked
    assert result.exit_code == 2 and "supports x2, not x4" in result.output
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(path.read_bytes()[:300])
    unknown = tmp_path / "unknown.safetensors"
    from safetensors.torch import save_file

    save_file({"encoder.weight": torch.zeros(4, 4)}, unknown)
    for bad, words in ((corrupt, "not a readable model file"),
                       (unknown, "not an architecture spandrel knows"),
                       (tmp_path / "missing.pth", "no such model file")):
        result = run("upscale", small_png, "-m", bad, "-s", "2", "-o", tmp_path / "o.png")
        assert result.exit_code == 1 and words in result.output, result.output
        assert "Traceback" not in result.output and not (tmp_path / "o.png").exists()


# --- precision, TTA, out of memory ---------------------------------------------------------


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(float) - b.astype(float)) ** 2)
    return math.inf if mse == 0 else 10 * math.log10(255 ** 2 / mse)


def test_bf16_is_close_to_fp32_and_a_broken_precision_falls_back(photo, monkeypatch):
    fp32 = Upscaler(UpscaleOptions(model="enaf-fsrcnn", static=True)).upscale_whole(photo)
    bf16 = Upscaler(UpscaleOptions(model="enaf-fsrcnn", static=True, precision="bf16"))
    assert psnr(bf16.upscale_whole(photo), fp32) > 40
    assert bf16.runner.inference.precision == "bf16"
    # a model whose reduced precision breaks (simulated): NaN under autocast
    broken = Upscaler(UpscaleOptions(model="enaf-fsrcnn", static=True, precision="bf16"))
    forward = type(broken.model).forward

    def nan_under_autocast(self, x):
        y = forward(self, x)
        return y * float("nan") if torch.is_autocast_enabled("cpu") else y

    monkeypatch.setattr(type(broken.model), "forward", nan_under_autocast)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = broken.upscale_whole(photo)
    said = [str(w.message) for w in caught if "--precision bf16" in str(w.message)]
    assert len(said) == 1 and "not finite" in said[0] and "fp32" in said[0]
    assert broken.runner.inference.precision == "fp32" and np.array_equal(out, fp32)
    assert PRECISION_FLOOR_DB >= 30


def test_tta_averages_the_eight_transforms_and_counts_eight_times(photo):
    crop = np.ascontiguousarray(photo[:64, :64])
    plain = Upscaler(UpscaleOptions(model="enaf-fsrcnn", static=True, tile=64))
    tta = Upscaler(UpscaleOptions(model="enaf-fsrcnn", static=True, tile=64, tta=True))
    base, got = plain.upscale_whole(crop), tta.upscale_whole(crop)
    assert tta.runner.flops == 8 * plain.runner.flops
    x = torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 255
    outs = []
    with torch.no_grad():
        for k in range(8):
            t = torch.rot90(x.flip(-1) if k & 4 else x, k % 4, dims=(-2, -1))
            y = torch.rot90(plain.model(t), -(k % 4), dims=(-2, -1))
            outs.append(y.flip(-1) if k & 4 else y)
    expect = (torch.stack(outs).mean(0)[0].permute(1, 2, 0).clamp(0, 1) * 255).round().numpy()
    assert np.abs(got.astype(float) - expect).max() <= 1
    assert not np.array_equal(got, base)


def test_out_of_memory_halves_the_batch_then_the_tile(photo, monkeypatch):
    """Simulated: passes of more than 2 tiles, or of tiles over 40 px, run out of memory. The
    batch is halved (and kept halved), a lone tile is run in halves, nothing stale is reused."""
    opts = UpscaleOptions(model="enaf-fsrcnn", static=True, tile=64, batch_size=8)
    ref = Upscaler(opts).upscale_whole(photo)
    up = Upscaler(opts)
    run_rgb = type(up.runner).run_rgb
    booked = []

    def limited(self, x, windows, *, routed):
        if x.shape[0] > 2 or max(x.shape[-2:]) > 40:
            self.flops += 1  # a failed pass may have booked work: it must be undone
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        booked.append(self.tile_flops(*x.shape[-2:]) * x.shape[0])
        return run_rgb(self, x, windows, routed=routed)

    monkeypatch.setattr(type(up.runner), "run_rgb", limited)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = up.upscale_whole(photo)
    said = " ".join(str(w.message) for w in caught)
    assert "6 tiles: batches of 3" in said and "batches of 1" in said and "in halves" in said
    assert up.runner.max_batch == 1 and psnr(out, ref) > 45
    assert up.runner.flops == sum(booked)


def test_bench_runs_each_variant_side_by_side(tmp_path, astronaut, monkeypatch):
    """``sr-tile bench --backend torch,onnxruntime --precision fp32,bf16 --tta``: every model
    row once per variant, the plain run first; ONNX Runtime's rows equal torch's in quality."""
    from sr_tile.bench.run import BenchOptions, Variant, plan_rows, variants_for

    variants = variants_for(["torch", "onnxruntime"], ["fp32", "bf16"], True)
    assert variants == (Variant(), Variant(precision="bf16"), Variant("onnxruntime"),
                        Variant(tta=True))
    labels = [s.label for s in plan_rows(["enaf-fsrcnn"], BenchOptions(variants=variants))]
    assert labels[:4] == ["bicubic", "enaf-fsrcnn static", "enaf-fsrcnn static best",
                          "enaf-fsrcnn M"]
    assert "enaf-fsrcnn M [onnxruntime]" in labels and "enaf-fsrcnn static [bf16]" in labels
    monkeypatch.setenv("SR_TILE_CACHE", str(tmp_path / "cache"))  # the export made on first use
    data = tmp_path / "data"
    data.mkdir()
    Image.fromarray(astronaut[:128, 128:256]).save(data / "crop.png")
    result = run("bench", data, "-m", "enaf-fsrcnn", "--backend", "torch,onnxruntime",
                 "--repeat", "1", "--json", tmp_path / "b.json", "--no-warmup")
    assert result.exit_code == 0, result.output
    rows = {r["label"]: r for r in json.loads((tmp_path / "b.json").read_text())["models"]}
    torch_row, ort_row = rows["enaf-fsrcnn M"], rows["enaf-fsrcnn M [onnxruntime]"]
    assert abs(torch_row["mean"]["psnr_y"] - ort_row["mean"]["psnr_y"]) < 0.01
    assert torch_row["mean"]["flops"] == ort_row["mean"]["flops"]
    assert (ort_row["backend"], torch_row["backend"]) == ("onnxruntime", "torch")
