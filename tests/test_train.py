"""Training pipeline (CPU, tiny images): config, data, phases, checkpoints, resume, export, CLI."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import typer
import yaml
from PIL import Image
from typer.testing import CliRunner

from sr_tile.errors import ConfigError
from sr_tile.imresize import imresize_np
from sr_tile.metrics import psnr_y
from sr_tile.models.checkpoint import read_metadata
from sr_tile.models.layers import bicubic
from sr_tile.models.registry import MODELS, create_model
from sr_tile.train import (TrainingInterrupted, default_config, families, load_config,
                           run_training)
from sr_tile.train import data as train_data
from sr_tile.models.enaf import training as enaf_train
from sr_tile.train import engine
from sr_tile.io import atomic
from sr_tile.train.config import dump_config, from_dict, resume_conflicts
from sr_tile.train.data import PatchSampler, load_pairs, make_val_set, step_generator
from sr_tile.train.state import RunDir, load_checkpoint, save_checkpoint

TASK = enaf_train.EnafTask()
PHASES = TASK.phases

SCALE = 4


# ----------------------------------------------------------------------------- fixtures


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny HR folders made of real photos; one train image is not a multiple of 4."""
    from skimage import data

    root = tmp_path_factory.mktemp("images")
    train, val = root / "train", root / "val"
    train.mkdir()
    val.mkdir()
    Image.fromarray(data.astronaut()[:192, 100:292]).save(train / "astronaut.png")
    Image.fromarray(data.chelsea()[:161, :226]).save(train / "chelsea.png")
    Image.fromarray(data.coffee()[100:300, 200:400]).save(train / "coffee.jpg", quality=95)
    (train / "notes.txt").write_text("not an image")
    Image.fromarray(data.astronaut()[256:384, 256:384]).save(val / "astronaut-val.png")
    return {"root": root, "train": train, "val": val}


def tiny_config(folders: dict[str, Path], run_dir: Path, **phases: dict[str, Any]) -> Any:
    """A tiny run: 16 px LR patches, batch 4, a few steps per phase."""
    base = {"steps": 6, "lr": 2e-3, "batch_size": 4, "val_every": 4, "ckpt_every": 2,
            "log_every": 2}
    raw = {
        "model": "enaf-fsrcnn", "scale": SCALE, "seed": 3, "run_dir": str(run_dir),
        "device": "cpu",
        "data": {"train_dir": str(folders["train"]), "val_dir": str(folders["val"]),
                 "cache_dir": str(folders["root"] / "cache"), "lr_patch": 16,
                 "val_patch": 16, "val_crops": 5},
        "phases": {p: {**base, **phases.get(p, {})} for p in PHASES},
    }
    return from_dict(raw)


@pytest.fixture(scope="module")
def pairs(folders: dict[str, Path]) -> list[train_data.ImagePair]:
    return load_pairs(folders["train"], scale=SCALE, cache_dir=folders["root"] / "cache",
                      label="train")[0]


@pytest.fixture(scope="module")
def val_set(folders: dict[str, Path]) -> train_data.ValSet:
    val_pairs = load_pairs(folders["val"], scale=SCALE, cache_dir=None, label="val")[0]
    return make_val_set(val_pairs, scale=SCALE, val_patch=16, val_crops=5)


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize("backbone", ["fsrcnn", "carn", "srresnet"])
def test_packaged_configs_load(backbone: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = load_config(default_config("enaf", backbone))
    assert cfg.model == f"enaf-{backbone}" and cfg.scale == 4
    assert cfg.data.lr_patch == 32 and cfg.data.augment
    assert Path(cfg.data.train_dir) == (tmp_path / "../shared/data/train").resolve()
    assert Path(cfg.run_dir).is_absolute()
    for name in PHASES:
        phase = cfg.phases.get(name)
        assert phase.steps > 0 and phase.lr_min == 1e-8
    assert cfg.phases.backbone.batch_size >= 16
    # The resolved config round-trips through YAML.
    saved = tmp_path / "config.yaml"
    saved.write_text(dump_config(cfg))
    assert load_config(saved) == cfg


def test_every_config_file_in_the_package_loads(tmp_path: Path, monkeypatch) -> None:
    """Extra configs (e.g. the CPU-sized SRResNet one the shipped weights came from) too.

    Every phase must have steps unless its phases class gives it a default, i.e. makes it
    optional (AdaFormer's estimator-only ``halting`` phase defaults to 0 steps)."""
    import dataclasses

    monkeypatch.chdir(tmp_path)
    files = sorted(default_config("enaf", "fsrcnn").parent.glob("*.yaml"))
    assert len(files) >= 4
    for path in files:
        cfg = load_config(path)
        task = families()[MODELS[cfg.model].family]
        optional = {f.name for f in dataclasses.fields(cfg.phases)
                    if f.default is not dataclasses.MISSING}
        assert all(cfg.phases.get(n).steps > 0 for n in task.phases if n not in optional), \
            path.name


def test_overrides_and_cli_values(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = load_config(default_config("enaf", "fsrcnn"),
                      ["phases.backbone.steps=7", "data.val_dir=null", "phases.exits.lr=1e-4",
                       "data.train_dir=elsewhere"],
                      values={"run_dir": "my run", "device": "cpu"})
    assert cfg.phases.backbone.steps == 7
    assert cfg.data.val_dir is None
    assert cfg.phases.exits.lr == 1e-4
    assert cfg.data.train_dir == str(tmp_path / "elsewhere")
    assert cfg.run_dir == str(tmp_path / "my run") and cfg.device == "cpu"


@pytest.mark.parametrize("override, key", [
    ("epochs=3", "epochs"),
    ("phases.backbone.warmup=10", "phases.backbone.warmup"),
    ("phases.finetune.steps=10", "phases.finetune"),
    ("data.shuffle=true", "data.shuffle"),
    ("phases.backbone.steps=many", "phases.backbone.steps"),
    ("phases.backbone.steps=1.5", "phases.backbone.steps"),
    ("phases.backbone.lr=-0.001", "phases.backbone.lr"),
    ("phases.backbone.lr=0", "phases.backbone.lr"),
    ("phases.exits.batch_size=0", "phases.exits.batch_size"),
    ("phases.exits.lr_min=1", "phases.exits.lr_min"),
    ("phases.estimator.val_every=0", "phases.estimator.val_every"),
    ("data.lr_patch=true", "data.lr_patch"),
    ("data.val_crops=3", "data.val_crops"),
    ("data.train_dir=null", "data.train_dir"),
    ("data=3", "data"),
    ("scale=3.0", "scale"),
    ("scale=8", "scale"),
    ("model=bicubic", "model"),
    ("model=enaf-nope", "model"),
    ("device=tpu", "device"),
    ("seed=-1", "seed"),
    ("full_head_init=ones", "full_head_init"),
])
def test_config_rejects_bad_keys_and_values(override: str, key: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(default_config("enaf", "fsrcnn"), [override], base=tmp_path)
    assert f"{key}:" in str(info.value)


def test_config_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)
    bad.write_text("model: enaf-fsrcnn\n")
    with pytest.raises(ConfigError, match="data: missing"):
        load_config(bad)
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(default_config("enaf", "fsrcnn"), ["phases.backbone.steps"])


def test_missing_or_empty_data_folder_is_a_clear_error(folders, tmp_path: Path) -> None:
    cfg = tiny_config(folders, tmp_path / "run")
    missing = dataclasses.replace(cfg, data=dataclasses.replace(
        cfg.data, train_dir=str(tmp_path / "nope")))
    with pytest.raises(ConfigError, match=r"data.train_dir: folder .*nope.* does not exist"):
        run_training(missing)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    empty = dataclasses.replace(cfg, data=dataclasses.replace(
        cfg.data, val_dir=str(tmp_path / "empty")))
    with pytest.raises(ConfigError, match=r"data.val_dir: folder .*empty.* has no images"):
        run_training(empty)
    assert not (tmp_path / "run").exists()  # refused before any work


# ----------------------------------------------------------------------------- data


def test_lr_is_whole_image_matlab_bicubic_and_cached(folders, tmp_path: Path,
                                                     monkeypatch) -> None:
    cache = tmp_path / "cache"
    first, stats1 = load_pairs(folders["train"], scale=SCALE, cache_dir=cache, label="t")
    assert stats1.lr_computed == 3 and stats1.lr_cached == 0
    assert [p.name for p in first] == ["astronaut.png", "chelsea.png", "coffee.jpg"]
    chelsea = first[1]
    assert chelsea.hr.shape == (160, 224, 3)  # mod-cropped from 161 x 226
    assert chelsea.lr.shape == (40, 56, 3) and chelsea.lr.dtype == np.uint8
    np.testing.assert_array_equal(chelsea.lr, imresize_np(chelsea.hr, 1 / SCALE))
    files = sorted(cache.glob("*.npy"))
    assert len(files) == 3
    mtimes = [f.stat().st_mtime_ns for f in files]

    def boom(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("LR recomputed although it is cached")

    monkeypatch.setattr(train_data, "imresize_np", boom)
    second, stats2 = load_pairs(folders["train"], scale=SCALE, cache_dir=cache, label="t")
    assert stats2.lr_computed == 0 and stats2.lr_cached == 3
    assert all(p.from_cache for p in second)
    assert [f.stat().st_mtime_ns for f in sorted(cache.glob("*.npy"))] == mtimes
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a.lr, b.lr)
    assert not list(cache.glob("*.tmp"))


def test_sampler_is_seeded_aligned_and_augmented(pairs) -> None:
    sampler = PatchSampler(pairs, scale=SCALE, lr_patch=16, augment=True)
    lr1, hr1 = sampler.batch(32, step_generator(3, 0, 17))
    lr2, hr2 = sampler.batch(32, step_generator(3, 0, 17))
    lr3, _ = sampler.batch(32, step_generator(3, 0, 18))
    assert lr1.shape == (32, 3, 16, 16) and hr1.shape == (32, 3, 64, 64)
    assert lr1.dtype == torch.float32 and 0 <= float(lr1.min()) and float(hr1.max()) <= 1
    assert torch.equal(lr1, lr2) and torch.equal(hr1, hr2)
    assert not torch.equal(lr1, lr3)
    # LR and HR crops are aligned: downscaling the HR crop gives the LR crop away from its
    # borders (the LR came from the whole image, so only the crop borders may differ).
    for lr, hr in zip(lr1, hr1):
        hr8 = (hr.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        lr8 = (lr.permute(1, 2, 0).numpy() * 255).round().astype(np.int16)
        down = imresize_np(hr8, 1 / SCALE).astype(np.int16)
        assert np.abs(down[3:-3, 3:-3] - lr8[3:-3, 3:-3]).max() <= 1


def test_val_set_crops(val_set) -> None:
    assert len(val_set) == 5  # centre + 4 corners of the one val image
    assert val_set.lr.shape == (5, 3, 16, 16) and val_set.hr.shape == (5, 3, 64, 64)
    assert val_set.lr.dtype == torch.uint8
    assert "centre + 4 corners" in val_set.protocol


def test_patch_psnr_matches_metrics(pairs) -> None:
    sampler = PatchSampler(pairs, scale=SCALE, lr_patch=16)
    lr, hr = sampler.batch(4, step_generator(0, 0, 0))
    sr = bicubic(lr, SCALE)
    got = enaf_train.patch_psnr_y(sr, hr, SCALE)
    for i in range(4):
        ref = psnr_y(sr[i].clamp(0, 1).permute(1, 2, 0).double().numpy() * 255,
                     hr[i].permute(1, 2, 0).double().numpy() * 255, crop_border=SCALE)
        assert abs(float(got[i]) - min(ref, enaf_train.PSNR_CAP)) < 1e-3
    flat = torch.full((1, 3, 64, 64), 0.5)
    assert float(enaf_train.patch_psnr_y(flat, flat, SCALE)) == pytest.approx(enaf_train.PSNR_CAP)
    # per block: each 32x32 square's own PSNR, the patch border still left out
    blocks = enaf_train.patch_psnr_y(sr, hr, SCALE, block=32)
    assert blocks.shape == (4, 2, 2)
    for i, j in ((0, 0), (0, 1), (1, 1)):
        rows, cols = slice(32 * i, 32 * i + 32), slice(32 * j, 32 * j + 32)
        inner = [slice(SCALE if k == 0 else 0, 32 - SCALE if k == 1 else 32) for k in (i, j)]
        ref = enaf_train.patch_psnr_y(sr[:, :, rows, cols][:, :, inner[0], inner[1]],
                                hr[:, :, rows, cols][:, :, inner[0], inner[1]], 0)
        assert torch.allclose(blocks[:, i, j], ref, atol=1e-4)


def test_presets_take_the_cheapest_setting_within_their_loss_or_say_none_is() -> None:
    from sr_tile.train.calibration import pick_presets, unmet_caption

    table = [{"eps": 0.5, "loss_db": 0.2, "flops_pct": 50.0},
             {"eps": 0.1, "loss_db": 0.04, "flops_pct": 70.0},
             {"eps": 0.01, "loss_db": 0.03, "flops_pct": 90.0}]
    limits = {"L": 0.02, "M": 0.05, "S": 0.3}
    presets = pick_presets(table, ("eps",), limits)
    assert presets == {"L": {"eps": 0.01}, "M": {"eps": 0.1}, "S": {"eps": 0.5}}
    assert unmet_caption({"table": table, "thresholds_db": limits}) == (
        "no setting within L's 0.02 dB: it takes the most accurate one")
    assert unmet_caption({"table": table[1:], "thresholds_db": {"M": 0.05}}) is None


def test_cosine_lr() -> None:
    assert engine.cosine_lr(0, 100, 1e-3, 1e-8) == pytest.approx(1e-3)
    assert engine.cosine_lr(50, 100, 1e-3, 1e-8) == pytest.approx(0.5e-3, rel=1e-4)
    assert engine.cosine_lr(100, 100, 1e-3, 1e-8) == pytest.approx(1e-8)
    assert engine.cosine_lr(10, 100, 1e-9, 1e-8) == pytest.approx(1e-9)  # below lr_min: flat


# ----------------------------------------------------------------------------- phases


def _fixed_batch(pairs, n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    return PatchSampler(pairs, scale=SCALE, lr_patch=16).batch(n, step_generator(99, 9, 9))


def _loss(model, phase: str, batch) -> float:
    with torch.no_grad():
        return float(enaf_train._phase_loss(model, phase, *batch, trunk_trains=False))


def _params(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _perturb_heads(model) -> None:
    """Give the zero-initialised last layers random weights: every path starts worse than
    bicubic, so that a few dozen steps have a clear loss to lower (an untrained residual
    FSRCNN gains well under 1% of L1 over bicubic in that time)."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.backbone.heads.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)


def test_each_phase_lowers_its_loss_and_freezes_the_rest(folders, pairs, tmp_path) -> None:
    cfg = tiny_config(folders, tmp_path / "run",
                      backbone={"steps": 60, "lr": 2e-3, "batch_size": 8},
                      exits={"steps": 60, "lr": 2e-3, "batch_size": 8},
                      estimator={"steps": 300, "lr": 1e-3, "batch_size": 8})
    torch.manual_seed(0)
    model = create_model("enaf-fsrcnn", scale=SCALE, weights=False)
    _perturb_heads(model)
    sampler = PatchSampler(pairs, scale=SCALE, lr_patch=16)
    run = RunDir(tmp_path / "run")
    batch = _fixed_batch(pairs)
    bb = model.backbone

    def train(phase: str) -> engine.PhaseResult:
        result = engine.train_phase(TASK, model, phase, cfg.phases.get(phase), sampler=sampler,
                                  run=run, seed=cfg.seed, device=torch.device("cpu"))
        assert len(result.losses) == cfg.phases.get(phase).steps
        first, last = np.mean(result.losses[:20]), np.mean(result.losses[-20:])
        assert last < 0.95 * first, (phase, first, last)
        return result

    before = _loss(model, "backbone", batch)
    exits_before, estimator_before = _params(bb.heads[:2]), _params(model.estimator)
    train("backbone")
    assert _loss(model, "backbone", batch) < 0.8 * before
    assert all(torch.equal(v, _params(bb.heads[:2])[k]) for k, v in exits_before.items())
    assert all(torch.equal(v, _params(model.estimator)[k]) for k, v in estimator_before.items())

    before = _loss(model, "exits", batch)
    trunk_before, full_before = _params(bb.segments), _params(bb.heads[2])
    train("exits")
    assert _loss(model, "exits", batch) < 0.85 * before
    assert all(torch.equal(v, _params(bb.segments)[k]) for k, v in trunk_before.items())
    assert all(torch.equal(v, _params(bb.heads[2])[k]) for k, v in full_before.items())

    backbone_before = _params(bb)
    enaf_train._init_estimator(model, sampler, 8, seed=cfg.seed, device=torch.device("cpu"))
    before = _loss(model, "estimator", batch)  # the mean predictor the phase starts from
    train("estimator")
    assert _loss(model, "estimator", batch) < 0.85 * before
    assert all(torch.equal(v, _params(bb)[k]) for k, v in backbone_before.items())


def test_l2_warmup_uses_mse_for_its_first_steps_then_l1(folders, pairs, tmp_path) -> None:
    torch.manual_seed(0)
    model = create_model("enaf-fsrcnn", scale=SCALE, weights=False)
    _perturb_heads(model)
    lr, hr = _fixed_batch(pairs)
    with torch.no_grad():
        sr = model.backbone.forward_path(lr, 3)
        assert float(enaf_train._phase_loss(model, "backbone", lr, hr, False, l2=True)) == \
            pytest.approx(float(F.mse_loss(sr, hr)), rel=1e-5)
        assert float(enaf_train._phase_loss(model, "backbone", lr, hr, False)) == \
            pytest.approx(float(F.l1_loss(sr, hr)), rel=1e-5)
    cfg = tiny_config(folders, tmp_path / "run", backbone={"steps": 4, "l2_warmup": 2})
    result = engine.train_phase(TASK, model, "backbone", cfg.phases.backbone,
                              sampler=PatchSampler(pairs, scale=SCALE, lr_patch=16),
                              run=RunDir(tmp_path / "run"), seed=0, device=torch.device("cpu"))
    # MSE of [0, 1] residuals is far below their L1: the switch shows in the losses
    assert max(result.losses[:2]) < 0.5 * min(result.losses[2:])
    # and Adam restarted at the switch: its moments count the 2 L1 steps only
    steps = load_checkpoint(RunDir(tmp_path / "run").last).optimizer["state"]
    assert {int(v["step"]) for v in steps.values()} == {2}
    with pytest.raises(ConfigError, match="l2_warmup"):
        tiny_config(folders, tmp_path / "x", backbone={"l2_warmup": -1})


def test_label_pool_is_resumable_and_relabels_for_another_backbone(pairs, tmp_path) -> None:
    torch.manual_seed(0)
    model = create_model("enaf-fsrcnn", scale=SCALE, weights=False)
    _perturb_heads(model)  # zero-initialised heads would make every path bicubic
    sampler = PatchSampler(pairs, scale=SCALE, lr_patch=16)
    cpu, path, size = torch.device("cpu"), tmp_path / "pool.safetensors", 300
    whole = enaf_train.label_pool(model, sampler, size, seed=5, device=cpu)
    assert whole.lr.shape == (size, 3, 16, 16) and whole.lr.dtype == torch.uint8
    assert whole.targets.shape == (size, model.num_paths, 2, 2)  # per 8x8 sub-tile
    # the stored uint8 patches are the ones labelled: relabelling them gives the same targets
    lr, hr = sampler.batch(enaf_train._POOL_CHUNK, enaf_train.step_generator(
        5, PHASES.index("estimator"), enaf_train._POOL_STEP0), cpu)  # the first chunk's patches
    assert torch.equal(whole.lr[:8], lr[:8].mul(255).round().to(torch.uint8))
    assert torch.allclose(whole.targets[:8], enaf_train.path_psnr_targets(model.backbone, lr[:8],
                                                                    hr[:8], part=8))

    stop = engine.StopFlag(requested="SIGTERM")  # stops after the first chunk is saved
    with pytest.raises(KeyboardInterrupt):
        enaf_train.label_pool(model, sampler, size, seed=5, device=cpu, path=path, stop=stop)
    calls: list[int] = []
    resumed = enaf_train.label_pool(model, sampler, size, seed=5, device=cpu, path=path,
                              on_progress=lambda done, total: calls.append(done))
    assert calls == [size]  # only the second chunk was labelled
    assert torch.equal(resumed.lr, whole.lr) and torch.equal(resumed.targets, whole.targets)

    with torch.no_grad():  # another backbone: the saved labels are not its, all are redone
        for param in model.backbone.heads.parameters():
            param.mul_(2.0)
    calls.clear()
    relabelled = enaf_train.label_pool(model, sampler, size, seed=5, device=cpu, path=path,
                                 on_progress=lambda done, total: calls.append(done))
    assert calls == [256, size] and not torch.equal(relabelled.targets, whole.targets)


def test_pool_flips_are_the_samplers_flips() -> None:
    hwc = np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3)
    nchw = torch.from_numpy(hwc).permute(2, 0, 1)[None]
    outs = [enaf_train._dihedral(nchw, code) for code in range(8)]
    for code, out in enumerate(outs):
        expected = torch.from_numpy(train_data._augment(hwc, code).copy()).permute(2, 0, 1)
        assert torch.equal(out[0], expected)
    assert len({o.numpy().tobytes() + bytes(o.shape) for o in outs}) == 8


def test_pool_batches_flip_sub_tile_targets_with_their_patch() -> None:
    lr = torch.randint(0, 256, (40, 3, 16, 16), dtype=torch.uint8)
    of = lambda x: F.avg_pool2d(x[:, :1].float(), 8)  # a target map read off the patch
    pool = enaf_train.LabelPool(lr=lr, targets=of(lr).expand(-1, 4, -1, -1).contiguous())
    gen = torch.Generator().manual_seed(0)
    for _ in range(12):  # 8 flip codes: a wrongly flipped map shows up in some of them
        x, targets = pool.batch(6, gen, torch.device("cpu"))
        assert torch.allclose(targets, of(x * 255.0).expand(-1, 4, -1, -1), atol=1e-4)


def test_sub_tile_targets_teach_the_estimator_where_the_detail_is() -> None:
    """Flat patches with noise in one 8x8 sub-tile, labelled low there only: trained on such
    maps (flipped with their patches), the estimator's map puts the low PSNR where the noise is.
    """
    torch.manual_seed(0)
    model = create_model("enaf-fsrcnn", scale=SCALE, weights=False)
    gen, cpu = torch.Generator().manual_seed(0), torch.device("cpu")

    def patches(n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        lr = torch.full((n, 3, 16, 16), 128, dtype=torch.uint8)
        where = torch.randint(0, 4, (n,), generator=gen)
        targets = torch.full((n, 4, 2, 2), 50.0)
        for k, (i, j) in enumerate(divmod(int(w), 2) for w in where):
            lr[k, :, 8 * i:8 * i + 8, 8 * j:8 * j + 8] = torch.randint(
                0, 256, (3, 8, 8), generator=gen, dtype=torch.uint8)
            targets[k, :, i, j] = torch.tensor([25.0, 27.0, 28.0, 29.0])
        return lr, targets, where

    lr, targets, _ = patches(256)
    pool = enaf_train.LabelPool(lr=lr, targets=targets)
    optimizer = torch.optim.Adam(model.estimator.parameters(), lr=1e-3)
    for _ in range(200):
        loss = enaf_train._estimator_loss(model, *pool.batch(32, gen, cpu))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    held_out, _, where = patches(64)
    with torch.no_grad():
        u = model.estimator.psnr_map(held_out.float() / 255.0, 8)  # (N, paths, 2, 2)
    assert float((u[:, 0].flatten(1).argmin(1) == where).float().mean()) > 0.9
    gains = (u[:, 1:] - u[:, :1]).flatten(2)  # the noisy sub-tile gains most from a network
    assert float((gains[:, -1].argmax(1) == where).float().mean()) > 0.9


def test_tile_loss_adds_the_l1_of_the_combined_gains() -> None:
    """``tile_loss`` w adds w x the L1 of the gains of each patch's PSNRs combined by hand: the
    PSNR of its sub-tiles' mean MSE, -10 log10(mean(10^(-u/10)))."""
    torch.manual_seed(0)
    model = create_model("enaf-fsrcnn", scale=SCALE, weights=False)
    lr = torch.rand(3, 3, 16, 16)
    targets = 30.0 + 10.0 * torch.rand(3, 4, 2, 2)

    def by_hand(u: torch.Tensor) -> torch.Tensor:  # (N, paths, 2, 2) -> gains of the patch
        psnr = -10.0 * torch.log10(torch.pow(10.0, -u.double() / 10.0).mean(dim=(2, 3)))
        return torch.cat([psnr[:, :1], psnr[:, 1:] - psnr[:, :1]], dim=1)

    with torch.no_grad():
        pred = model.estimator.psnr_map(lr, 8)
        plain = enaf_train._estimator_loss(model, lr, targets)
        both = enaf_train._estimator_loss(model, lr, targets, tile_loss=0.5)
    expected = 0.5 * (by_hand(pred) - by_hand(targets)).abs().mean()
    assert float(expected) > 0.01
    assert float(both - plain) == pytest.approx(float(expected), rel=1e-4)


def test_estimator_phase_on_a_label_pool_learns_without_running_the_backbone(
        folders, pairs, tmp_path, monkeypatch) -> None:
    cfg = tiny_config(folders, tmp_path / "run",
                      estimator={"steps": 300, "lr": 1e-3, "batch_size": 8, "label_pool": 64,
                                 "context": 2})
    torch.manual_seed(0)
    model = create_model("enaf-fsrcnn", scale=SCALE, weights=False)
    labelled: list[int] = []
    real_targets = enaf_train.path_psnr_targets

    def counting(backbone, lr, hr, part=None):
        labelled.append(lr.shape[0])
        return real_targets(backbone, lr, hr, part)

    monkeypatch.setattr(enaf_train, "path_psnr_targets", counting)
    result = engine.train_phase(TASK, model, "estimator", cfg.phases.estimator,
                              sampler=PatchSampler(pairs, scale=SCALE, lr_patch=16),
                              run=RunDir(tmp_path / "run"), seed=cfg.seed,
                              device=torch.device("cpu"))
    assert sum(labelled) == 64  # each pooled patch labelled once, for 300 steps of 8
    assert (tmp_path / "run" / "checkpoints" / "label-pool.safetensors").exists()
    assert np.mean(result.losses[-20:]) < 0.9 * np.mean(result.losses[:20])
    # the phase gave the estimator its two context layers, and trained them
    assert len(model.estimator.context) == 2
    assert all(float(conv.weight.detach().abs().max()) > 0 for conv in model.estimator.context)
    for key in ("label_pool=64", "context=1", "tile_loss=1"):
        with pytest.raises(ConfigError, match=f"phases.backbone.{key.split('=')[0]}"):
            load_config(default_config("enaf", "fsrcnn"), [f"phases.backbone.{key}"],
                        base=tmp_path)


def test_exits_phase_with_frozen_lr_trains_the_trunk_slowly(folders, pairs, tmp_path) -> None:
    cfg = tiny_config(folders, tmp_path / "run",
                      exits={"steps": 3, "frozen_lr": 1e-8, "batch_size": 2})
    torch.manual_seed(0)
    model = create_model("enaf-fsrcnn", scale=SCALE, weights=False)
    trunk = _params(model.backbone.segments)
    engine.train_phase(TASK, model, "exits", cfg.phases.exits,
                     sampler=PatchSampler(pairs, scale=SCALE, lr_patch=16),
                     run=RunDir(tmp_path / "run"), seed=0, device=torch.device("cpu"))
    deltas = [float((v - _params(model.backbone.segments)[k]).abs().max())
              for k, v in trunk.items()]
    assert 0 < max(deltas) < 1e-6


# ----------------------------------------------------------------------------- checkpoints


def test_checkpoint_round_trip_and_never_half_written(tmp_path: Path, monkeypatch) -> None:
    torch.manual_seed(0)
    model = create_model("enaf-fsrcnn", scale=SCALE, weights=False)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.rand(1, 3, 8, 8)).sum().backward()
    optimizer.step()
    path = tmp_path / "ckpt" / "last.safetensors"
    save_checkpoint(path, model=model, optimizer=optimizer, phase="backbone", step=2, total=9,
                    done=False, history={"x": 1})
    ckpt = load_checkpoint(path)
    assert (ckpt.phase, ckpt.step, ckpt.total, ckpt.done, ckpt.history) == (
        "backbone", 2, 9, False, {"x": 1})
    for k, v in model.state_dict().items():
        assert torch.equal(ckpt.model[k], v)
    fresh = torch.optim.Adam(model.parameters(), lr=1e-3)
    fresh.load_state_dict(ckpt.optimizer)
    assert optimizer.state and len(fresh.state) == len(optimizer.state)
    for p, saved in optimizer.state.items():
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(fresh.state[p][key], saved[key])
    assert json.loads(path.with_suffix(".json").read_text())["step"] == 2

    def half_then_crash(tmp: Path, path: Path, label: str, overwrite: bool) -> None:
        with open(tmp, "r+b") as fh:  # a torn write, then the process "dies"
            fh.truncate(100)
        raise KeyboardInterrupt

    monkeypatch.setattr(atomic, "_publish", half_then_crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, model=model, optimizer=optimizer, phase="backbone", step=4,
                        total=9, done=False, history={})
    assert load_checkpoint(path).step == 2  # the previous checkpoint is intact
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.json", "last.safetensors"]


def _final_state(result) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in result.model.state_dict().items()}


@pytest.fixture(scope="module")
def uninterrupted(folders, tmp_path_factory) -> Any:
    run_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    return run_training(tiny_config(folders, run_dir), command="sr-tile train enaf (test)")


@pytest.mark.parametrize("phase, step", [("backbone", 3), ("exits", 4), ("estimator", 1)])
def test_resume_after_interrupt_equals_uninterrupted(folders, uninterrupted, tmp_path,
                                                     phase: str, step: int) -> None:
    cfg = tiny_config(folders, tmp_path / "run")

    def interrupt(info: engine.StepInfo) -> None:
        if (info.phase, info.step) == (phase, step):
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted) as info:
        run_training(cfg, callbacks=[interrupt])
    assert (info.value.phase, info.value.step) == (phase, step)
    ckpt = load_checkpoint(RunDir(tmp_path / "run").last)
    assert (ckpt.phase, ckpt.step, ckpt.done) == (phase, step, False)
    assert not cfg.export_path.exists()

    with pytest.raises(ConfigError, match="--resume"):
        run_training(cfg)  # a run folder with a checkpoint is not silently restarted
    resumed = run_training(cfg, resume=True)
    assert resumed.phases_run == list(PHASES[PHASES.index(phase):])
    want = _final_state(uninterrupted)
    got = _final_state(resumed)
    assert want.keys() == got.keys()
    for key in want:
        assert torch.allclose(got[key], want[key], atol=1e-6, rtol=0), key
    assert resumed.val == uninterrupted.val
    events = [json.loads(line)["event"] for line in (tmp_path / "run" / "log.jsonl").open()]
    assert "interrupted" in events and events[-1] == "export"


def test_resume_checks(folders, uninterrupted, tmp_path) -> None:
    cfg = tiny_config(folders, tmp_path / "run")
    with pytest.raises(ConfigError, match="has no checkpoint"):
        run_training(cfg, resume=True)
    done = tiny_config(folders, uninterrupted.run_dir)
    changed = dataclasses.replace(done, seed=4)
    with pytest.raises(ConfigError, match="seed"):
        run_training(changed, resume=True)
    # A setting newer than the run (missing from its saved config) counts at its default.
    saved = yaml.safe_load((Path(done.run_dir) / "config.yaml").read_text())
    del saved["phases"]["exits"]["grad_clip"]
    assert resume_conflicts(saved, done) == []
    assert resume_conflicts(saved, dataclasses.replace(
        done, phases=dataclasses.replace(done.phases, exits=dataclasses.replace(
            done.phases.exits, grad_clip=1.0)))) == ["phases.exits.grad_clip"]
    # Everything is done: resuming only re-exports.
    again = run_training(dataclasses.replace(done, export=str(tmp_path / "re.safetensors")),
                         resume=True)
    assert again.phases_run == []
    assert read_metadata(again.export_path)["iterations"] == {p: 6 for p in PHASES}


def test_export_loads_with_create_model(uninterrupted) -> None:
    path = uninterrupted.export_path
    assert path == Path(uninterrupted.run_dir) / "enaf-fsrcnn-x4.safetensors"
    meta = read_metadata(path)
    assert meta["model"] == "enaf-fsrcnn" and meta["scale"] == "4"
    assert meta["iterations"] == {"backbone": 6, "exits": 6, "estimator": 6}
    assert meta["phases_done"] == list(PHASES)
    assert set(meta["val_psnr_y"]) == {"bicubic", "exit1", "exit2", "full"}
    assert "estimator_mae" in meta["val"]
    assert meta["hardware"].startswith("CPU ")
    assert meta["command"] == "sr-tile train enaf (test)"
    assert meta["config"]["phases"]["backbone"]["steps"] == 6
    assert meta["data"]["train"]["images"] == 3 and "protocol" in meta["data"]["val"]
    loaded = create_model("enaf-fsrcnn", scale=4, weights=path)
    trained = uninterrupted.model.eval()
    x = torch.rand(2, 3, 20, 24, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded(x), trained(x))
        for p in range(4):
            assert torch.equal(loaded.backbone.forward_path(x, p),
                               trained.backbone.forward_path(x, p))
        assert torch.equal(loaded.estimator(x), trained.estimator(x))
    saved = yaml.safe_load((Path(uninterrupted.run_dir) / "config.yaml").read_text())
    assert saved["phases"]["exits"]["steps"] == 6


def test_small_full_head_init_and_init_provenance(folders, uninterrupted, tmp_path) -> None:
    none = {"steps": 0}
    cfg = dataclasses.replace(tiny_config(folders, tmp_path / "a", backbone={"steps": 1},
                                          exits=none, estimator=none), full_head_init="small")
    heads = run_training(cfg).model.backbone.heads
    assert heads[-1].output_layer.weight.abs().sum() > 0  # the full head learns from step 1
    assert all(h.output_layer.weight.abs().sum() == 0 for h in heads[:-1])  # exits: bicubic
    # a run that starts from other weights records how those were trained
    cfg = dataclasses.replace(tiny_config(folders, tmp_path / "b", backbone=none, exits=none),
                              init=str(uninterrupted.export_path))
    meta = read_metadata(run_training(cfg, command="second").export_path)
    assert meta["command"] == "second"
    assert meta["init"]["command"] == "sr-tile train enaf (test)"
    assert meta["init"]["iterations"] == {"backbone": 6, "exits": 6, "estimator": 6}


# ----------------------------------------------------------------------------- CLI


def _cli() -> typer.Typer:
    from sr_tile.cli.train import train

    app = typer.Typer()
    app.command("train")(train)

    @app.callback()
    def _root() -> None:
        pass

    return app


def test_cli_runs_one_phase(folders, tmp_path: Path) -> None:
    assert "enaf" in families()
    sets = ["--set", f"data.train_dir={folders['train']}", "--set",
            f"data.val_dir={folders['val']}", "--set", f"data.cache_dir={folders['root']}/cache",
            "--set", "data.lr_patch=16", "--set", "data.val_patch=16",
            "--set", "phases.backbone.batch_size=4", "--set", "phases.backbone.steps=8"]
    export = tmp_path / "out" / "w.safetensors"
    result = CliRunner().invoke(_cli(), [
        "train", "enaf", "--backbone", "fsrcnn", "--phase", "backbone", "--run-dir",
        str(tmp_path / "run"), "--device", "cpu", "--steps-scale", "0.5", "--export",
        str(export), *sets])
    assert result.exit_code == 0, result.output
    assert "backbone" in result.output and str(export) in result.output
    meta = read_metadata(export)
    assert meta["iterations"] == {"backbone": 4, "exits": 0, "estimator": 0}
    assert meta["command"].startswith("sr-tile train enaf --backbone fsrcnn --phase backbone")
    create_model("enaf-fsrcnn", scale=4, weights=export)

    calibrated = CliRunner().invoke(_cli(), [
        "train", "enaf", "--backbone", "fsrcnn", "--phase", "calibrate", "--export", str(export),
        *sets])
    assert calibrated.exit_code == 0, calibrated.output
    assert "calibration image 1/" in calibrated.output and "preset" in calibrated.output
    assert set(read_metadata(export)["presets"]) == {"L", "M", "S"}

    again = CliRunner().invoke(_cli(), [
        "train", "enaf", "--backbone", "fsrcnn", "--run-dir", str(tmp_path / "run"),
        "--device", "cpu", "--steps-scale", "0.5", *sets])
    assert again.exit_code == 1 and "--resume" in again.output


@pytest.mark.parametrize("args, message", [
    (["train", "enaf", "--backbone", "fsrcnn", "--set", "phases.backbone.lr=-1"],
     "phases.backbone.lr: must be > 0"),
    (["train", "enaf", "--backbone", "vgg"], "unknown enaf backbone 'vgg'"),
    (["train", "gan", "--backbone", "fsrcnn"], "unknown model family 'gan'"),
    (["train", "enaf", "-b", "fsrcnn", "--config", "x.yaml"], "not both"),
    (["train", "enaf", "-b", "fsrcnn", "--phase", "warmup"], "--phase must be"),
    (["train", "tadt", "--set", "phases.baseline.hard_pool=0"],
     "phases.baseline.hard_pool: must be >= 1"),
])
def test_cli_errors_are_one_red_line(args: list[str], message: str, tmp_path: Path,
                                     monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(_cli(), args)
    assert result.exit_code == (2 if "unknown" in message else 1)  # a bad option value: 2
    assert message in result.output and "Traceback" not in result.output


def test_family_table_points_at_packaged_configs() -> None:
    """Trainable families come from the registry rows that name a task."""
    assert set(families()) == {"enaf", "adaformer", "tadt", "iet"}
    for name, task in families().items():
        assert task.name == name and task.phases == task.phases_config.names()
        for backbone in task.configs:
            assert default_config(name, backbone).is_file()


def test_sigterm_checkpoints_at_a_step_boundary(folders, tmp_path) -> None:
    import os
    import signal

    cfg = tiny_config(folders, tmp_path / "run")
    before = signal.getsignal(signal.SIGTERM)

    def terminate(info: engine.StepInfo) -> None:
        if (info.phase, info.step) == ("backbone", 3):
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(TrainingInterrupted) as info:
        run_training(cfg, callbacks=[terminate])
    assert (info.value.phase, info.value.step) == ("backbone", 3)
    assert load_checkpoint(RunDir(tmp_path / "run").last).step == 3
    assert signal.getsignal(signal.SIGTERM) is before


def test_cli_interrupted_says_how_to_resume(tmp_path: Path, monkeypatch) -> None:
    def interrupted(*args: Any, **kwargs: Any) -> None:
        raise TrainingInterrupted("exits", 7, 10, tmp_path / "last.safetensors")

    monkeypatch.chdir(tmp_path)
    import sr_tile.train

    monkeypatch.setattr(sr_tile.train, "run_training", interrupted)
    result = CliRunner().invoke(_cli(), ["train", "enaf", "-b", "fsrcnn"])
    assert result.exit_code == 130
    assert "exits step 7/10" in result.output and "--resume" in result.output


def test_cli_train_stopped_by_sigterm_says_so_once_and_exits_143(folders, tmp_path) -> None:
    """The train command's own line is the only one, with the signal's exit code."""
    import signal
    import subprocess
    import sys
    import time

    config = tmp_path / "c.yaml"
    raw = yaml.safe_load(dump_config(tiny_config(folders, tmp_path / "run",
                                                 backbone={"steps": 100000})))
    config.write_text(yaml.safe_dump(raw))
    exe = Path(sys.executable).with_name("sr-tile")
    proc = subprocess.Popen([exe, "train", "enaf", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = tmp_path / "run" / "log.jsonl"
    deadline = time.monotonic() + 120
    while not (log.exists() and '"train"' in log.read_text()):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    lines = [line for line in stderr.splitlines() if "interrupted" in line]
    assert len(lines) == 1 and "--resume" in stderr and "Traceback" not in stderr
