"""ENAF multi-exit backbones, PSNR estimator and blank score (CPU, small inputs)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

from sr_tile.flops import count_flops
from sr_tile.imresize import imresize
from sr_tile.models import MODELS
from sr_tile.models.descriptor import Routing
from sr_tile.models.enaf.carn import build as build_carn
from sr_tile.models.enaf.estimator import BLANK_THRESHOLD, PSNREstimator, blank_score, is_blank
from sr_tile.models.enaf.fsrcnn import EnafFSRCNN, FSRCNNConfig
from sr_tile.models.enaf.fsrcnn import build as build_fsrcnn
from sr_tile.models.enaf.multiexit import MultiExitSR
from sr_tile.models.enaf.srresnet import SRResNetConfig
from sr_tile.models.enaf.srresnet import build as build_srresnet
from sr_tile.models.layers import SubPixelConvTranspose2d

PAPER_FLOPS = {  # per 32x32 LR patch at x4, classsr convention: exit 1, exit 2, full
    "fsrcnn": (146e6, 315e6, 468e6),
    "carn": (779e6, 869e6, 1162e6),
    "srresnet": (2.05e9, 3.66e9, 5.19e9),
}


def _fsrcnn_3seg(*, scale: int = 4) -> EnafFSRCNN:
    """Exits after map2 and map3: three trunk segments, attach (1, 2, 3)."""
    return EnafFSRCNN(config=FSRCNNConfig(scale=scale, exit_after=(2, 3)))


BUILDERS: dict[str, Callable[..., MultiExitSR]] = {
    "fsrcnn": build_fsrcnn, "carn": build_carn, "srresnet": build_srresnet,
    "fsrcnn-3seg": _fsrcnn_3seg,
}


def _trained_like(model: MultiExitSR, seed: int = 0) -> MultiExitSR:
    """Give the zero-initialised last layers random weights so that every head matters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    return model.eval()


def _allowed_modules(model: MultiExitSR, path: int) -> set[int]:
    if path == 0:
        return set()
    parts = [*model.segments[:model.depth(path)], model.heads[path - 1]]
    return {id(m) for part in parts for m in part.modules()}


def _record_calls(model: MultiExitSR) -> list[tuple[nn.Module, int]]:
    """Hook every submodule; each call appends (module, batch size of its first input)."""
    calls: list[tuple[nn.Module, int]] = []
    for module in model.modules():
        if module is not model:
            module.register_forward_hook(
                lambda m, inputs, _out: calls.append((m, int(inputs[0].shape[0]))))
    return calls


@pytest.mark.parametrize("name", sorted(PAPER_FLOPS))
def test_path_flops_match_paper(name: str) -> None:
    model = BUILDERS[name](scale=4)
    costs = model.path_flops(32, 32)
    assert len(costs) == model.num_paths == 4
    assert costs[0] == 0
    for got, paper in zip(costs[1:], PAPER_FLOPS[name]):
        assert abs(got / paper - 1) < 0.03, (name, got, paper)
    assert costs[0] < costs[1] < costs[2] < costs[3]
    # counted once on 32x32 and scaled: exact, since every layer is a same-padded conv
    assert model.path_flops(40, 24)[3] == count_flops(model, (1, 3, 40, 24))
    assert model.path_flops(64, 32)[3] == 2 * costs[3]


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_routing_costs_are_the_work_torch_sees(name: str) -> None:
    """Routing weighs paths by ``executed`` FLOPs: torch's own count for these convnets."""
    model = BUILDERS[name](scale=4)
    assert model.path_flops(32, 32, "executed") == model.path_flops(32, 32, "torch")


def test_path_flops_exact_arithmetic() -> None:
    """The sums written out in the module docstrings, to the FLOP."""
    assert build_fsrcnn().path_flops(32, 32) == (0, 143_572_992, 315_211_776, 467_877_888)
    assert build_carn().path_flops(32, 32) == (0, 772_669_440, 862_322_688, 1_154_875_392)
    assert build_srresnet().path_flops(32, 32) == (
        0, 2_056_126_464, 3_655_729_152, 5_193_990_144)
    assert _fsrcnn_3seg().path_flops(32, 32)[1] == 146_227_200


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_output_shapes(name: str, scale: int) -> None:
    model = _trained_like(BUILDERS[name](scale=scale))
    x = torch.rand(2, 3, 24, 20)
    with torch.no_grad():
        for path in range(4):
            assert model.forward_path(x, path).shape == (2, 3, 24 * scale, 20 * scale)
        assert model.forward_paths(x, torch.tensor([1, 3])).shape == (2, 3, 24 * scale, 20 * scale)
    assert model.scale == model.descriptor.scale == scale


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_exit_never_runs_deeper_layers(name: str) -> None:
    model = _trained_like(BUILDERS[name]())
    calls = _record_calls(model)
    x = torch.rand(1, 3, 12, 12)
    for path in range(4):
        calls.clear()
        with torch.no_grad():
            model.forward_path(x, path)
        fired = {id(m) for m, _ in calls}
        allowed = _allowed_modules(model, path)
        assert fired <= allowed, f"path {path} ran modules outside its prefix + head"
        if path == 0:
            assert calls == []
            continue
        convs = {id(m) for m in model.modules() if id(m) in allowed
                 and isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))}
        assert convs <= fired  # and the whole prefix + head did run
        segs = [i for i, s in enumerate(model.segments) if id(s) in fired]
        heads = [i for i, h in enumerate(model.heads) if id(h) in fired]
        assert segs == list(range(model.depth(path))) and heads == [path - 1]


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_forward_paths_runs_each_segment_on_exactly_its_patches(name: str) -> None:
    model = _trained_like(BUILDERS[name]())
    calls = _record_calls(model)
    paths = torch.tensor([0, 3, 1, 2, 2, 0, 1, 3, 3])
    with torch.no_grad():
        model.forward_paths(torch.rand(len(paths), 3, 12, 12), paths)
    depth = torch.tensor([model.depth(p) for p in range(4)])[paths]
    for k, segment in enumerate(model.segments):
        seen = [n for m, n in calls if m is segment]
        assert seen == [int((depth > k).sum())], (k, seen)
    for h, head in enumerate(model.heads):
        assert [n for m, n in calls if m is head] == [int((paths == h + 1).sum())]

    calls.clear()
    with torch.no_grad():
        out = model.forward_paths(torch.rand(3, 3, 12, 12), torch.zeros(3, dtype=torch.long))
    assert calls == [] and out.shape == (3, 3, 48, 48)

    calls.clear()
    with torch.no_grad():
        model.forward_paths(torch.rand(2, 3, 12, 12), torch.tensor([1, 1]))
    assert {id(m) for m, _ in calls} <= _allowed_modules(model, 1)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_forward_paths_equals_per_patch_forward_path(name: str) -> None:
    model = _trained_like(BUILDERS[name](), seed=1)
    gen = torch.Generator().manual_seed(2)
    paths = torch.cat([torch.arange(4), torch.randint(0, 4, (5,), generator=gen)])
    paths = paths[torch.randperm(len(paths), generator=gen)]
    x = torch.rand(len(paths), 3, 16, 12, generator=gen)
    with torch.no_grad():
        batched = model.forward_paths(x, paths)
        single = torch.cat([model.forward_path(x[i:i + 1], int(p)) for i, p in enumerate(paths)])
        # the heads really differ, so a mix-up of paths could not pass
        assert (model.forward_path(x, 1) - model.forward_path(x, 3)).abs().max() > 1e-3
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_forward_paths_keeps_a_channels_last_batch_channels_last(name: str) -> None:
    """The CPU runner feeds tiles channels-last (oneDNN's fast layout): the gathered trunk
    batches and head inputs stay in it, and the result equals the NCHW one."""
    model = _trained_like(BUILDERS[name](), seed=4)
    formats = []
    for module in [*model.segments, *model.heads]:
        module.register_forward_pre_hook(lambda m, args: formats.append(
            args[0].is_contiguous(memory_format=torch.channels_last)))
    paths = torch.tensor([0, 3, 1, 2, 2, 0, 1])
    x = torch.rand(len(paths), 3, 12, 12)
    with torch.no_grad():
        fast = model.forward_paths(x.contiguous(memory_format=torch.channels_last), paths)
        assert formats and all(formats)
        torch.testing.assert_close(fast, model.forward_paths(x, paths), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_forward_paths_backward_reaches_only_the_used_heads(name: str) -> None:
    model = _trained_like(BUILDERS[name]()).train()
    out = model.forward_paths(torch.rand(3, 3, 12, 12), torch.tensor([0, 3, 1]))
    out.square().mean().backward()
    grads = [any(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())
             for head in model.heads]
    assert grads == [True, False, True]
    assert all(p.grad is not None for p in model.segments.parameters())


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_untrained_model_is_bicubic_on_every_path(name: str) -> None:
    model = BUILDERS[name]().eval()
    x = torch.rand(2, 3, 14, 10)
    expected = imresize(x, 4, antialias=False)
    with torch.no_grad():
        for path in range(4):
            assert torch.equal(model.forward_path(x, path), expected), path
        assert torch.equal(model.forward_paths(x, torch.tensor([2, 1])), expected)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_forward_is_the_full_path(name: str) -> None:
    model = _trained_like(BUILDERS[name]())
    x = torch.rand(2, 3, 10, 10)
    with torch.no_grad():
        assert torch.equal(model(x), model.forward_path(x, 3))


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_descriptor(name: str) -> None:
    model = BUILDERS[name](scale=3)
    d = model.descriptor
    assert d.routing is Routing.EXITS and d.scale == 3 and d.default_overlap > 2 * d.margin
    if model.runs_cells:  # large tiles whose margin covers every cell's halo: exact
        halos = [model.cell_path(p).halo for p in (1, 2, 3)]
        assert d.default_tile == 512 and d.exact_tiling and d.margin == max(map(max, halos))
        assert d.static_tiling == (256, 8, 2)
    else:  # routing tiles
        assert d.default_tile == 32 and not d.exact_tiling and d.static_tiling == (256, 8, 2)
    assert model.runs_cells == name.startswith("fsrcnn")


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("path", [1, 2, 3])
def test_cell_path_is_the_path_inside_the_image(scale: int, path: int) -> None:
    """A path run without padding on a window plus its halo gives exactly that window of the
    path run on the whole image, inside it and at its border (the 4th channel marks what is
    outside), and its FLOPs are what the hooks count."""
    torch.manual_seed(0)
    model = build_fsrcnn(scale=scale).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # no zero-initialised head
        x = torch.rand(1, 3, 70, 90)
        whole = model.forward_path(x, path) - imresize(x, scale, antialias=False)
        net = model.cell_path(path)
        lo, hi = net.halo
        marked = F.pad(torch.cat([x, torch.ones(1, 1, 70, 90)], 1), (lo, hi, lo, hi))
        inner = net(marked[:, :, 20:52 + lo + hi, 30:54 + lo + hi])
        corner = net(marked[:, :, 70 - 30:70 + lo + hi, 0:24 + lo + hi])  # bottom-left
        # the same, told as the strips beyond the image (top, bottom, left, right)
        strips = net(marked[:, :3, 70 - 30:70 + lo + hi, 0:24 + lo + hi], [(0, hi, lo, 0)])
    torch.testing.assert_close(strips, corner, atol=1e-6, rtol=0)
    assert inner.shape == (1, 3, 32 * scale, 24 * scale)
    torch.testing.assert_close(inner, whole[..., 20 * scale:52 * scale, 30 * scale:54 * scale],
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(corner, whole[..., 40 * scale:, :24 * scale], atol=1e-5, rtol=0)
    # its own count is what the layer hooks count on its steps
    steps = nn.Sequential(*net.steps)
    assert net.window_flops(32, 24) == count_flops(steps, (1, 3, 32 + lo + hi, 24 + lo + hi))
    assert net.window_flops(32, 24) >= model.path_flops(32, 24)[path]  # the halo costs more
    assert "_cells" not in str(model.state_dict().keys())  # the twins add no weights


def test_bad_paths_and_configs_are_rejected() -> None:
    model = build_fsrcnn()
    x = torch.rand(2, 3, 8, 8)
    with pytest.raises(ValueError):
        model.forward_paths(x, torch.tensor([0, 4]))
    with pytest.raises(ValueError):
        model.forward_paths(x, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError):
        model.forward_path(x, -1)
    with pytest.raises(ValueError):
        FSRCNNConfig(exit_after=(3, 3))
    with pytest.raises(ValueError):
        SRResNetConfig(exit_after=(9, 17))
    with pytest.raises(ValueError):
        build_carn(scale=5)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_safetensors_round_trip(name: str, tmp_path: Path) -> None:
    model = _trained_like(BUILDERS[name](), seed=3)
    file = tmp_path / "w.safetensors"
    save_file(model.state_dict(), str(file))
    fresh = BUILDERS[name]().eval()
    fresh.load_state_dict(load_file(str(file)), strict=True)
    x = torch.rand(3, 3, 12, 12)
    with torch.no_grad():
        for path in range(4):
            assert torch.equal(fresh.forward_path(x, path), model.forward_path(x, path))
    assert all(k.startswith(("segments.", "heads.")) for k in model.state_dict())


def test_psnr_estimator_shape_init_and_flops() -> None:
    est = PSNREstimator().eval()
    with torch.no_grad():
        out = est(torch.rand(5, 3, 32, 32))
    assert out.shape == (5, 4)
    assert (out - 30.0).abs().max() < 3.0  # starts near a typical PSNR
    expected = (2 * 3 * 16 * 128 * 64      # conv 3->128 k4 s4: 8x8 outputs
                + 3 * 2 * 128 * 128 * 64   # three 1x1 128->128
                + 2 * 128 * 32 * 64        # 1x1 128->32
                + 2 * 32 * 4)              # Linear 32->4
    assert count_flops(est, (1, 3, 32, 32), "classsr") == expected == 7_602_432


def test_estimator_context_starts_as_identity_and_travels_with_the_file(tmp_path: Path) -> None:
    """Context layers start as the context-free estimator, cost 2 * 9 * 128 FLOPs per 4x4
    cell each, and a weights file decides how many the model has (files without any load
    as they were, with the old FLOPs)."""
    from sr_tile.models import create_model
    from sr_tile.models.checkpoint import save_weights

    torch.manual_seed(0)
    plain = PSNREstimator().eval()
    ctx = PSNREstimator(context=3).eval()
    ctx.load_state_dict(plain.state_dict(), strict=False)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ctx(x, 8), plain(x, 8))
        for conv in ctx.context:
            conv.weight.normal_(0, 0.1)
        assert not torch.allclose(ctx(x, 8), plain(x, 8))  # the layers are really used
    assert count_flops(ctx, (1, 3, 32, 32), "classsr") == 7_602_432 + 3 * 2 * 9 * 128 * 64

    model = create_model("enaf-fsrcnn", weights=False)
    model.estimator = ctx
    file = save_weights(model, tmp_path / "ctx.safetensors", name="enaf-fsrcnn", scale=4)
    loaded = create_model("enaf-fsrcnn", weights=file)
    assert len(loaded.estimator.context) == 3
    assert loaded.estimator_flops(32, 32) == 7_606_272 + 3 * 2 * 9 * 128 * 64
    with torch.no_grad():
        torch.testing.assert_close(loaded.predict_psnr(x), model.predict_psnr(x))
    old = save_weights(create_model("enaf-fsrcnn", weights=False),
                       tmp_path / "old.safetensors", name="enaf-fsrcnn", scale=4)
    loaded.load_state_dict(load_file(str(old)))  # a context-free file drops the layers
    assert len(loaded.estimator.context) == 0
    assert loaded.estimator_flops(32, 32) == 7_606_272


def _patch(img: np.ndarray, y: int, x: int, size: int = 32) -> torch.Tensor:
    crop = img[y:y + size, x:x + size]
    return torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1)[None].float() / 255


def test_blank_score_flat_and_checkerboard() -> None:
    flat = torch.full((2, 3, 16, 16), 0.37)
    assert torch.equal(blank_score(flat), torch.zeros(2))
    checker = ((torch.arange(16)[:, None] + torch.arange(16)[None, :]) % 2).float()
    score = blank_score(checker.expand(1, 3, 16, 16))
    assert score.shape == (1,) and float(score) == 4 * 255  # |+-4*255| everywhere


def test_blank_score_threshold_semantics() -> None:
    """A gray impulse v in a 10x10 patch: valid Laplacian sums to 8v over 64 px, score v/8."""
    def impulse(v: int) -> torch.Tensor:
        x = torch.zeros(1, 3, 10, 10)
        x[..., 4, 4] = v / 255
        return x

    assert float(blank_score(impulse(80))) == BLANK_THRESHOLD == 10.0
    assert bool(is_blank(impulse(80))) and not bool(is_blank(impulse(81)))
    both = torch.cat([impulse(80), impulse(88)])
    assert is_blank(both).tolist() == [True, False]


def test_blank_score_on_a_photo(astronaut: np.ndarray) -> None:
    background = _patch(astronaut, 20, 300)  # plain studio backdrop
    hair = _patch(astronaut, 20, 180)
    flag = _patch(astronaut, 150, 0)
    scores = blank_score(torch.cat([background, hair]))
    assert float(scores[0]) <= BLANK_THRESHOLD < float(scores[1])
    assert is_blank(torch.cat([background, hair])).tolist() == [True, False]
    assert float(blank_score(flag)) < float(scores[1])
    # independent reference: PIL's gray conversion and a numpy valid Laplacian
    for y, x in [(20, 300), (20, 180), (150, 0), (300, 60), (100, 200)]:
        gray = np.asarray(Image.fromarray(astronaut[y:y + 32, x:x + 32]).convert("L"), float)
        lap = (gray[:-2, 1:-1] + gray[2:, 1:-1] + gray[1:-1, :-2] + gray[1:-1, 2:]
               - 4 * gray[1:-1, 1:-1])
        assert abs(float(blank_score(_patch(astronaut, y, x))) - np.abs(lap).mean()) < 0.05


def test_blank_score_is_exact_integer_arithmetic() -> None:
    """Bit-equal to int64 numpy on random uint8 patches (gray rounded half up, exactly)."""
    rng = np.random.default_rng(3)
    u8 = rng.integers(0, 256, size=(64, 3, 12, 12))
    u8[:8, :, 5, 5] = (0, 0, 250)  # 114 * 250 + 500 = 29000: a gray exactly on a boundary
    gray = (299 * u8[:, 0] + 587 * u8[:, 1] + 114 * u8[:, 2] + 500) // 1000
    lap = (gray[:, :-2, 1:-1] + gray[:, 2:, 1:-1] + gray[:, 1:-1, :-2] + gray[:, 1:-1, 2:]
           - 4 * gray[:, 1:-1, 1:-1])
    want = np.abs(lap).sum(axis=(1, 2)) / 100
    got = blank_score(torch.from_numpy(u8).float() / 255)
    assert np.array_equal(got.numpy(), want.astype(np.float32))


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_subpixel_deconv_equals_conv_transpose_in_value_and_gradient(scale: int) -> None:
    torch.manual_seed(scale)
    fast = SubPixelConvTranspose2d(6, 3, 9, stride=scale, padding=4, output_padding=scale - 1)
    ref = nn.ConvTranspose2d(6, 3, 9, stride=scale, padding=4, output_padding=scale - 1)
    assert fast.state_dict().keys() == ref.state_dict().keys()  # shipped weights still load
    ref.load_state_dict(fast.state_dict())
    x = torch.randn(2, 6, 11, 7)
    y, y_ref = fast(x), ref(x)
    assert y.shape == y_ref.shape == (2, 3, 11 * scale, 7 * scale)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-5)
    g, g_ref = (torch.autograd.grad(out.square().sum(), (m.weight, m.bias))
                for out, m in ((y, fast), (y_ref, ref)))
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    # FLOPs are counted as for the transposed conv it replaces (classsr: at output resolution)
    assert count_flops(fast, (1, 6, 8, 8)) == count_flops(ref, (1, 6, 8, 8))


def test_subpixel_deconv_rejects_shapes_it_cannot_compute() -> None:
    with pytest.raises(ValueError, match="stride"):
        SubPixelConvTranspose2d(4, 3, 9, stride=4, padding=3, output_padding=3)


@pytest.mark.parametrize("shape, factor", [((2, 16, 5, 7), 4), ((1, 48, 3, 3), 4),
                                           ((2, 12, 4, 6), 2), ((1, 27, 2, 5), 3)])
def test_fast_pixel_shuffle_equals_torch(shape, factor) -> None:
    from sr_tile.ops import PixelShuffle, pixel_shuffle

    x = torch.randn(*shape, requires_grad=True)
    y = pixel_shuffle(x, factor)
    assert torch.equal(y, nn.functional.pixel_shuffle(x, factor))
    assert torch.equal(PixelShuffle(factor)(x), y)
    ramp = torch.arange(y.numel()).reshape(y.shape)  # a distinct weight per output pixel
    (g,) = torch.autograd.grad((y * ramp).sum(), x)
    (g_ref,) = torch.autograd.grad((nn.functional.pixel_shuffle(x, factor) * ramp).sum(), x)
    assert torch.equal(g, g_ref)
    with pytest.raises(ValueError, match="multiple"):
        pixel_shuffle(torch.zeros(1, 5, 2, 2), 2)


def test_estimator_predicts_bicubic_psnr_plus_gains() -> None:
    torch.manual_seed(0)
    est = PSNREstimator(init_psnr=33.0)
    x = torch.rand(5, 3, 32, 32)
    with torch.no_grad():
        u = est(x)
        torch.testing.assert_close(est.from_gains(est.to_gains(u)), u)
        assert est.fc.bias.tolist() == [33.0, 0.0, 0.0, 0.0]  # untrained: no path gains
        # fusion compares paths of one patch: bicubic's PSNR shifts every path alike
        est.fc.bias[0] += 7.0
        torch.testing.assert_close(est(x) - u, torch.full_like(u, 7.0))


def test_enaf_reads_a_patch_by_sub_tiles_combined_by_their_mean_mse() -> None:
    from sr_tile.models.enaf.estimator import combine_psnr
    from sr_tile.models.enaf.model import ESTIMATOR_PART, EnafSR

    torch.manual_seed(0)
    model = EnafSR(backbone=build_carn(scale=4)).eval()
    nn.init.normal_(model.estimator.fc.weight, std=5.0)  # parts that disagree
    x = torch.rand(3, 3, 32, 48)
    p = ESTIMATOR_PART
    with torch.no_grad():
        parts = torch.stack([model.estimator(x[:, :, i:i + p, j:j + p])
                             for i in range(0, 32, p) for j in range(0, 48, p)])
        mse = (10.0 ** (-parts / 10.0)).mean(0)
        torch.testing.assert_close(model.predict_psnr(x), -10.0 * torch.log10(mse))
        u, _ = model.estimate(x)
        torch.testing.assert_close(u, model.predict_psnr(x))
        # the worst part weighs most: the combination is at most the mean of the parts' PSNRs
        assert bool((model.predict_psnr(x) <= parts.mean(0) + 1e-4).all())
        # a size the parts do not divide: the whole patch, as in the paper
        odd = torch.rand(2, 3, 36, 36)
        torch.testing.assert_close(model.predict_psnr(odd), model.estimator(odd))
    assert combine_psnr(torch.tensor([[30.0, 30.0]]), dim=1).item() == pytest.approx(30.0)
    assert combine_psnr(torch.tensor([[20.0, 60.0]]), dim=1).item() == pytest.approx(
        -10 * np.log10(0.5 * (1e-2 + 1e-6)))
    # FLOPs: the same convolutions as on the whole patch, the linear layer once per part
    whole = count_flops(model.estimator, (1, 3, 32, 32))
    assert model.estimator_flops(32, 32) == whole + 15 * 2 * 32 * 4 == 7_606_272
    assert model.estimator_flops(36, 36) == count_flops(model.estimator, (1, 3, 36, 36))


SHIPPED = [(name, scale) for name, entry in MODELS.items() for scale in entry.weights
           if entry.family == "enaf"]


@pytest.mark.parametrize("name, scale", SHIPPED, ids=[f"{n}-x{s}" for n, s in SHIPPED])
def test_shipped_weights_load_say_how_they_were_made_and_beat_bicubic(name, scale, astronaut):
    from sr_tile.metrics import psnr_y
    from sr_tile.models.checkpoint import read_metadata
    from sr_tile.models.registry import create_model, shipped_weights

    path = shipped_weights(name, scale)
    assert path is not None, f"{name}: no shipped x{scale} weights"
    meta = read_metadata(path)
    assert meta["command"].startswith("sr-tile train enaf") and meta["hardware"]
    steps, run = dict.fromkeys(("backbone", "exits", "estimator"), 0), meta
    while run:  # the run itself, then the runs it went on from (``init``), oldest last
        for phase in steps:
            steps[phase] += run["iterations"].get(phase, 0)
        run = run.get("init")
    assert all(steps.values()), steps
    assert set(meta["presets"]) == {"L", "M", "S"}
    model = create_model(name, scale=scale, weights=path).eval()
    hr = torch.from_numpy(astronaut[32:284, 160:412]).permute(2, 0, 1)[None].float() / 255
    lr = imresize(hr, 1 / scale)
    with torch.inference_mode():
        full, skip = model(lr), model.backbone.forward_path(lr, 0)
    as_u8 = [(t[0].permute(1, 2, 0).clamp(0, 1) * 255).round().byte().numpy()
             for t in (full, skip, hr)]
    assert psnr_y(as_u8[0], as_u8[2], scale) > psnr_y(as_u8[1], as_u8[2], scale) + 0.3
