"""AdaFormer: shapes, halting for real (gathered = masked), what a halted window costs,
L_USL by hand, training (loss falls, resume, export), and the runner's reports and map."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sr_tile.errors import UsageError
from sr_tile.models.adaformer import AdaFormer, training
from sr_tile.models.adaformer.model import PrototypeAttention, WindowAttention
from sr_tile.models.checkpoint import save_weights
from sr_tile.models.registry import create_model
from sr_tile.routing import RoutingOptions
from sr_tile.train import TrainingInterrupted, run_training
from sr_tile.train.config import from_dict
from sr_tile.upscale import UpscaleOptions, Upscaler
from tests.conftest import image_folders

NAME = "adaformer-light"


pytestmark = pytest.mark.usefixtures("one_thread")


def _model(scale: int = 4, bias: float = -1.0) -> AdaFormer:
    """An untrained light model with perturbed weights (so that every part matters) and a
    confidence estimator whose map varies over the image; ``bias`` sets how early it halts."""
    torch.manual_seed(0)
    model = create_model(NAME, scale=scale, weights=False)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
        model.estimator.conv2.weight.normal_(0.0, 0.5)
        model.estimator.conv2.bias.fill_(bias)
    return model


@pytest.fixture(scope="module")
def photo() -> torch.Tensor:
    from skimage import data

    crop = data.astronaut()[100:140, 180:228]  # 40 x 48: 5 x 6 windows
    return torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1)[None].float() / 255


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_three_forwards_have_the_output_shape(scale, photo):
    model = _model(scale)
    x = torch.cat([photo, photo.flip(-1)])
    with torch.no_grad():
        dense = model(x)
        masked, confidences = model.forward_masked(x)
        halting, trace = model.forward_halting(x)
    for out in (dense, masked, halting):
        assert out.shape == (2, 3, 40 * scale, 48 * scale)
    assert len(confidences) == len(model.blocks) and confidences[0].shape == (2, 40, 48)
    assert trace.depth.shape == (2, 40, 48) and int(trace.depth.max()) <= len(model.blocks)
    assert model.descriptor.size_multiple == 8 and model.descriptor.default_tile % 8 == 0
    with pytest.raises(ValueError, match="multiples of 8"):
        model(torch.zeros(1, 3, 20, 24))


def test_gathered_halting_equals_masked_halting(photo):
    """Windows and tokens halt part of the way (some, not all), and the gathered forward
    gives the masked one's output."""
    partial = False
    for bias in (-2.0, -1.0, 0.0):
        model = _model(bias=bias)
        with torch.no_grad():
            masked, _ = model.forward_masked(photo)
            halting, trace = model.forward_halting(photo)
        assert (halting - masked).abs().max() <= 1e-5
        partial |= any(0 < a < trace.windows for a in trace.active_windows) and any(
            0 < a < trace.tokens for a in trace.active_tokens)
        assert trace.active_tokens == sorted(trace.active_tokens, reverse=True)  # R only grows
    assert partial


def _count_calls(model: AdaFormer) -> dict[str, list[int]]:
    """Windows given to the local branch and tokens to the global branch, per call."""
    seen: dict[str, list[int]] = {"windows": [], "tokens": []}
    for module in model.modules():
        if isinstance(module, WindowAttention):
            module.register_forward_hook(lambda m, a, o: seen["windows"].append(a[0].shape[0]))
        if isinstance(module, PrototypeAttention):
            module.register_forward_hook(lambda m, a, o: seen["tokens"].append(a[0].shape[1]))
    return seen


def test_halted_windows_and_tokens_cost_no_attention(photo):
    model = _model(bias=-2.0)
    seen = _count_calls(model)
    with torch.no_grad():
        _, trace = model.forward_halting(photo)
    ran = [(w, t) for w, t in zip(trace.active_windows, trace.active_tokens) if t]
    assert seen["windows"] == [w for w, _ in ran if w]  # one call per TSAB, active windows only
    assert seen["tokens"] == [t for _, t in ran]
    assert sum(seen["windows"]) < len(model.blocks) * trace.windows
    attention = sum(model.tsab_flops(w, t, 1) for w, t in ran)
    estimator = sum(model.estimator_flops(px, n) for px, n in zip(trace.estimator_px,
                                                                  trace.estimator_tokens))
    assert model.halting_flops(trace, 1) == model.conv_flops(40 * 48) + estimator + attention
    assert model.halting_flops(trace, 1) < model.dense_flops(1, 40, 48)

    everything = _model(bias=10.0)  # confidence ~1: every token halts before TSAB 1
    seen = _count_calls(everything)
    with torch.no_grad():
        _, trace = everything.forward_halting(photo)
    assert seen == {"windows": [], "tokens": []} and trace.active_tokens == [0] * 6
    assert everything.halting_flops(trace, 1) == (everything.conv_flops(40 * 48)
                                                  + everything.estimator_flops(1920, 1920))


def test_usl_matches_a_hand_computation():
    """Eq. 17 with constant confidence maps (bilinear upsampling keeps them constant): each
    TSAB adds C * e - log(C + 1e-8), e the mean |HR - SR| over RGB in 8-bit levels."""
    hr = torch.zeros(1, 3, 8, 8)
    sr = torch.zeros(1, 3, 8, 8)
    sr[:, 0] = 6 / 255  # e = (6 + 0 + 0) / 3 = 2 levels everywhere
    confidences = [torch.full((1, 2, 2), 0.5), torch.full((1, 2, 2), 0.9)]
    want = sum(c * 2.0 - math.log(c + 1e-8) for c in (0.5, 0.9))
    assert training.usl_loss(confidences, sr, hr).item() == pytest.approx(want, rel=1e-5)
    # its minimum over C is min(1, 1/e): here C = 0.5
    c = torch.linspace(0.05, 0.95, 19)
    values = [training.usl_loss([torch.full((1, 2, 2), float(v))], sr, hr).item() for v in c]
    assert float(c[int(np.argmin(values))]) == pytest.approx(0.5)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    return image_folders(tmp_path_factory.mktemp("ada-images"), 192)


def _config(folders, run_dir: Path, steps: int = 6):
    return from_dict({
        "model": NAME, "scale": 4, "seed": 1, "run_dir": str(run_dir), "device": "cpu",
        "data": {"train_dir": str(folders["train"]), "val_dir": str(folders["val"]),
                 "cache_dir": str(folders["root"] / "cache"), "lr_patch": 16,
                 "val_patch": 16, "val_crops": 1},
        "phases": {"train": {"steps": steps, "lr": 5e-4, "batch_size": 4, "val_every": 4,
                             "ckpt_every": 2, "log_every": 2, "dense_share": 0.25}},
    })


@pytest.fixture(scope="module")
def trained(folders, tmp_path_factory):
    return run_training(_config(folders, tmp_path_factory.mktemp("ada") / "run"),
                        command="sr-tile train adaformer (test)")


def test_training_lowers_the_loss(folders, tmp_path):
    from sr_tile.train import engine
    from sr_tile.train.data import PatchSampler, load_pairs, step_generator
    from sr_tile.train.state import RunDir

    task = training.AdaFormerTask()
    phase = _config(folders, tmp_path / "run", steps=30).phases.train
    pairs = load_pairs(folders["train"], scale=4, cache_dir=folders["root"] / "cache",
                       label="train")[0]
    sampler = PatchSampler(pairs, scale=4, lr_patch=16)
    lr, hr = sampler.batch(8, step_generator(9, 0, 0))
    torch.manual_seed(0)
    model = create_model(NAME, weights=False)

    def loss() -> float:  # step 1: a masked step, L1 + L_USL
        with torch.no_grad():
            return task.loss(model, "train", phase, None, lambda: (lr, hr), 1,
                             torch.Generator(), torch.device("cpu")).item()

    before = loss()
    engine.train_phase(task, model, "train", phase, sampler=sampler, run=RunDir(tmp_path),
                       seed=0, device=torch.device("cpu"))
    assert loss() < 0.9 * before


def test_halting_phase_trains_the_estimator_alone(folders, trained, tmp_path):
    """Phase ``halting``: L_USL with masked halting lowers, and no weight outside the
    confidence estimator moves."""
    from sr_tile.train import engine
    from sr_tile.train.data import PatchSampler, load_pairs, step_generator
    from sr_tile.train.state import RunDir

    task = training.AdaFormerTask()
    phase = training.AdaFormerPhaseConfig(steps=20, lr=1e-2, batch_size=4, eps_min=0.05,
                                          eps_max=0.05)
    pairs = load_pairs(folders["train"], scale=4, cache_dir=folders["root"] / "cache",
                       label="train")[0]
    sampler = PatchSampler(pairs, scale=4, lr_patch=16)
    lr, hr = sampler.batch(8, step_generator(9, 0, 0))
    model = create_model(NAME, weights=trained.export_path)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def loss() -> float:
        with torch.no_grad():
            return task.loss(model, "halting", phase, None, lambda: (lr, hr), 0,
                             torch.Generator(), torch.device("cpu")).item()

    start = loss()
    engine.train_phase(task, model, "halting", phase, sampler=sampler, run=RunDir(tmp_path),
                       seed=0, device=torch.device("cpu"))
    assert loss() < start
    moved = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert moved and all(k.startswith("estimator.") for k in moved), moved


def test_training_exports_weights_that_load(trained):
    assert set(trained.val["psnr_y"]) == {"dense", "halting", "no_tsab"}
    assert len(trained.val["halted"]) == 6
    loaded = create_model(NAME, weights=trained.export_path)
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x), trained.model.eval()(x))
        # depth: the first TSABs only (the val's "no_tsab" runs none)
        assert torch.equal(loaded(x, depth=len(loaded.blocks)), loaded(x))
        assert not torch.allclose(loaded(x, depth=0), loaded(x))


def test_resume_after_interrupt_equals_uninterrupted(folders, trained, tmp_path):
    cfg = _config(folders, tmp_path / "run")

    def interrupt(info) -> None:
        if info.step == 3:
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted):
        run_training(cfg, callbacks=[interrupt])
    resumed = run_training(cfg, resume=True)
    want, got = trained.model.state_dict(), resumed.model.state_dict()
    for key in want:
        assert torch.allclose(got[key], want[key], atol=1e-6, rtol=0), key
    assert resumed.val == trained.val


def test_dense_steps_follow_the_share():
    phase = training.AdaFormerPhaseConfig(steps=8, dense_share=0.25)
    assert [phase.dense_step(s) for s in range(8)] == [True, False, False, False] * 2
    assert not any(training.AdaFormerPhaseConfig(steps=8).dense_step(s) for s in range(8))


def test_upscale_reports_halting_and_draws_the_map(tmp_path, small_png):
    weights = save_weights(_model(bias=-1.5), tmp_path / "w.safetensors", name=NAME, scale=4)
    up = Upscaler(UpscaleOptions(scale=4, model=NAME, weights=str(weights)))
    report = up.upscale_file(small_png, tmp_path / "out.png", route_map=tmp_path / "map.png")
    extras = report.extras
    assert len(extras["halted_tokens"]) == 6 and extras["eps"] == 0.05
    assert all(0.0 <= v <= 1.0 for v in extras["halted_tokens"] + extras["halted_windows"])
    assert extras["halted_tokens"] == sorted(extras["halted_tokens"])
    assert 0 < report.flops < report.flops_static
    picture = np.asarray(Image.open(tmp_path / "map.png"))
    assert picture.shape[0] > 40 and picture.shape[1] >= 48  # the LR image plus a legend
    depth = up.runner.route_map().labels
    assert depth.shape == (40, 48) and depth.max() <= 6 and len(np.unique(depth)) > 1

    static = Upscaler(UpscaleOptions(scale=4, model=NAME, weights=str(weights), static=True))
    dense = static.upscale_file(small_png, tmp_path / "dense.png")
    assert dense.flops == dense.flops_static == report.flops_static
    with pytest.raises(UsageError, match="--preset"):
        Upscaler(UpscaleOptions(scale=4, model=NAME, weights=str(weights),
                                routing=RoutingOptions(eta=1.0)))


def test_cli_halting_map_and_bad_option(tmp_path, small_png):
    from typer.testing import CliRunner

    from sr_tile.cli import app

    weights = save_weights(_model(), tmp_path / "w.safetensors", name=NAME, scale=4)
    result = CliRunner().invoke(app, [
        "upscale", str(small_png), "-m", NAME, "--weights", str(weights), "-o",
        str(tmp_path / "o.png"), "--halting-map", str(tmp_path / "h.png"), "--json",
        str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    assert "halted" in result.output and (tmp_path / "h.png").is_file()
    rows = json.loads((tmp_path / "r.json").read_text())
    row = rows["images"][0] if isinstance(rows, dict) else rows[0]
    assert len(row["halted_tokens"]) == 6
    bad = CliRunner().invoke(app, ["upscale", str(small_png), "-m", NAME, "--weights",
                                   str(weights), "-o", str(tmp_path / "p.png"), "--gamma", "1"])
    assert bad.exit_code == 2 and "--preset" in bad.output and "Traceback" not in bad.output


def test_presets_are_calibrated_on_training_images_and_read_back(folders, trained, tmp_path):
    import shutil

    from sr_tile.models.adaformer.calibrate import calibrate
    from sr_tile.train.calibration import write_presets

    weights = shutil.copy(trained.export_path, tmp_path / "w.safetensors")
    result = calibrate(NAME, weights, folders["train"], grid=(0.02, 0.5),
                       thresholds={"L": 0.0, "M": 0.05, "S": 100.0})
    assert [row["eps"] for row in result["table"]] == [0.02, 0.5]
    assert all(math.isfinite(row["loss_db"]) and row["flops_pct"] > 0
               for row in result["table"])
    chosen = next(r for r in result["table"] if r["eps"] == result["presets"]["S"]["eps"])
    assert chosen["flops_pct"] == min(r["flops_pct"] for r in result["table"])  # the cheapest
    result["presets"]["S"] = {"eps": 0.5}
    write_presets(weights, result)
    model = create_model(NAME, weights=weights)
    assert model.presets == {k.upper(): v for k, v in result["presets"].items()}
    up = Upscaler(UpscaleOptions(scale=4, model=NAME, weights=str(weights),
                                 routing=RoutingOptions(preset="S")))
    assert up.runner.eps == 0.5


def test_shipped_weights_say_how_they_were_made_and_beat_bicubic(astronaut):
    """The shipped adaformer-light x4: trained by ``sr-tile train adaformer`` (command,
    hardware, steps and presets in the file), better than bicubic on a real photo, dense
    and halting alike."""
    from sr_tile.imresize import imresize_np
    from sr_tile.metrics import psnr_y
    from sr_tile.models.checkpoint import read_metadata
    from sr_tile.models.registry import shipped_weights

    path = shipped_weights("adaformer-light", 4)
    assert path is not None, "adaformer-light: no shipped x4 weights"
    meta = read_metadata(path)
    assert meta["command"].startswith("sr-tile train adaformer") and meta["hardware"]
    assert meta["iterations"]["train"] > 0 and set(meta["presets"]) == {"L", "M", "S"}
    hr = np.ascontiguousarray(astronaut[32:288, 160:416])
    lr = imresize_np(hr, 1 / 4)
    base = psnr_y(Upscaler(UpscaleOptions(model="bicubic", scale=4)).upscale_whole(lr), hr, 4)
    for static in (True, False):
        up = Upscaler(UpscaleOptions(model="adaformer-light", scale=4, static=static))
        assert psnr_y(up.upscale_whole(lr), hr, 4) > base + 0.1, static
