"""Tests for sr_tile.flops: exact arithmetic of both conventions, and that counting is harmless."""

from __future__ import annotations

import gc
import time
import warnings

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from sr_tile import flops as F
from sr_tile.errors import ConfigError
from sr_tile.flops import CONVENTIONS, count_flops, flops_cached, format_flops


def fsrcnn(d: int = 56, s: int = 12, m: int = 4, scale: int = 4) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(3, d, 5, padding=2), nn.PReLU(d),
                               nn.Conv2d(d, s, 1), nn.PReLU(s)]
    for _ in range(m):
        layers += [nn.Conv2d(s, s, 3, padding=1), nn.PReLU(s)]
    layers += [nn.Conv2d(s, d, 1), nn.PReLU(d),
               nn.ConvTranspose2d(d, 3, 9, stride=scale, padding=3, output_padding=1)]
    return nn.Sequential(*layers)


def classsr_classifier() -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(3, 128, 4, stride=4), nn.LeakyReLU(0.1)]
    for _ in range(3):
        layers += [nn.Conv2d(128, 128, 1), nn.LeakyReLU(0.1)]
    layers += [nn.Conv2d(128, 32, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 4)]
    return nn.Sequential(*layers)


def test_conventions_listed() -> None:
    assert CONVENTIONS == ("classsr", "torch", "executed")
    with pytest.raises(ConfigError):
        count_flops(nn.Conv2d(3, 3, 1), (1, 3, 4, 4), "macs")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        count_flops(nn.Conv2d(3, 3, 1), (1, 3, 0, 4))


def test_conv2d_plain_grouped_strided() -> None:
    assert count_flops(nn.Conv2d(3, 64, 3, padding=1), (1, 3, 32, 32)) == 2 * 3 * 9 * 64 * 32 * 32
    grouped = nn.Conv2d(64, 64, 3, padding=1, groups=4)
    assert count_flops(grouped, (1, 64, 32, 32)) == 2 * 64 * 9 * 64 * 32 * 32 // 4
    strided = nn.Conv2d(3, 64, 3, stride=2, padding=1)  # 32x32 -> 16x16
    assert count_flops(strided, (1, 3, 32, 32)) == 2 * 3 * 9 * 64 * 16 * 16


def test_conv_transpose_output_vs_input_resolution() -> None:
    deconv = nn.ConvTranspose2d(56, 3, 9, stride=4, padding=3, output_padding=1)
    classsr = count_flops(deconv, (1, 56, 32, 32))
    torch_conv = count_flops(deconv, (1, 56, 32, 32), "torch")
    assert classsr == 2 * 56 * 81 * 3 * 128 * 128 == 445_906_944
    assert torch_conv == 2 * 56 * 81 * 3 * 32 * 32 == 27_869_184
    assert classsr == 16 * torch_conv
    assert count_flops(deconv, (1, 56, 32, 32), "executed") == torch_conv


def test_linear_rows() -> None:
    for n in (1, 7):
        assert count_flops(nn.Linear(32, 4), (n, 32)) == 2 * 32 * 4 * n
    assert count_flops(nn.Linear(32, 4), (2, 5, 32)) == 2 * 32 * 4 * 10  # leading dims are rows


def test_fsrcnn_matches_papers() -> None:
    hw = 32 * 32
    expected = (2 * 3 * 25 * 56 * hw + 2 * 56 * 12 * hw + 4 * 2 * 12 * 9 * 12 * hw
                + 2 * 12 * 56 * hw + 2 * 56 * 81 * 3 * 128 * 128)
    got = count_flops(fsrcnn(), (1, 3, 32, 32))
    assert got == expected == 467_877_888
    assert abs(got - 468e6) / 468e6 < 0.03
    torch_conv = count_flops(fsrcnn(), (1, 3, 32, 32), "torch")
    assert torch_conv == expected - 2 * 56 * 81 * 3 * (128 * 128 - hw) == 49_840_128
    assert count_flops(fsrcnn(), (1, 3, 32, 32), "executed") == torch_conv


@pytest.mark.parametrize("convention", ["classsr", "executed"])
def test_real_cpu_run_counts_as_meta(convention: str) -> None:
    """Small inputs are counted by a real CPU run in a fresh process: the same numbers."""
    for model, shape in [(fsrcnn(), (2, 3, 24, 20)), (classsr_classifier(), (1, 3, 32, 32)),
                         (nn.ConvTranspose1d(4, 2, 5, stride=3), (3, 4, 7))]:
        assert F._run(model, shape, convention, "cpu", None) == F._run(
            model, shape, convention, "meta", None) > 0


def test_classsr_classifier_exact() -> None:
    expected = (2 * 3 * 16 * 128 * 8 * 8 + 3 * 2 * 128 * 128 * 8 * 8
                + 2 * 128 * 32 * 8 * 8 + 2 * 32 * 4)
    assert count_flops(classsr_classifier(), (1, 3, 32, 32)) == expected == 7_602_432
    assert count_flops(classsr_classifier(), (1, 3, 32, 32), "torch") == expected


@pytest.mark.parametrize("convention", CONVENTIONS)
def test_batch_scales_linearly(convention: str) -> None:
    one = count_flops(fsrcnn(), (1, 3, 24, 24), convention)  # type: ignore[arg-type]
    assert count_flops(fsrcnn(), (3, 3, 24, 24), convention) == 3 * one  # type: ignore[arg-type]


def test_counting_does_not_modify_model() -> None:
    model = fsrcnn().train()
    model[0].register_forward_hook(lambda *_: None)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    hooks = [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()]
    for convention in CONVENTIONS:
        count_flops(model, (1, 3, 16, 16), convention)  # type: ignore[arg-type]
    assert all(m.training for m in model.modules())
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()] == hooks
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


class Attention(nn.Module):
    """A block whose matmul the hooks cannot see, so it reports its own FLOPs."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Conv2d(8, 24, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).flatten(2).chunk(3, dim=1)
        return (v @ (k.transpose(1, 2) @ q)).view_as(x)

    def flops(self, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> int:
        n, c, h, w = inputs[0].shape
        return 1000 * n + h * w  # deliberately not the real count: proves children are skipped


def test_flops_method_overrides_children() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), Attention())
    assert count_flops(model, (2, 3, 4, 4)) == 2 * 3 * 9 * 8 * 2 * 16 + 2000 + 16
    # torch sees the real work: qkv conv + two bmm (2*n*(8*16*16) each), and ignores flops().
    qkv, mm = 2 * 8 * 24 * 2 * 16, 2 * 2 * (8 * 16 * 16) * 2
    assert count_flops(model, (2, 3, 4, 4), "torch") == 2 * 3 * 9 * 8 * 2 * 16 + qkv + mm


def test_zero_arg_flops_is_ignored_with_warning() -> None:
    class SwinStyle(nn.Sequential):
        def flops(self) -> int:  # SwinIR/HAT style: fixed resolution, other meaning
            return 1

    with pytest.warns(UserWarning, match="SwinStyle.flops"):
        assert count_flops(SwinStyle(nn.Conv2d(3, 4, 1)), (1, 3, 5, 5)) == 2 * 3 * 4 * 25


def test_shared_module_counted_per_call() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 1)
            self.alias = self.conv  # same module under two names: hooked once

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.alias(self.conv(x))

    assert count_flops(Twice(), (1, 4, 8, 8)) == 2 * (2 * 4 * 4 * 64)


def test_conventions_agree_on_plain_conv_net() -> None:
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2),
                        nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1, groups=8))
    classsr = count_flops(net, (2, 3, 20, 20))
    assert classsr == count_flops(net, (2, 3, 20, 20), "torch")
    assert classsr == 2 * 2 * (3 * 9 * 16 * 400 + 16 * 9 * 32 * 81 + 4 * 9 * 32 * 81)
    with FlopCounterMode(display=False) as counter:  # and torch == FlopCounterMode on real CPU
        net(torch.zeros(2, 3, 20, 20))
    assert counter.get_total_flops() == classsr


def test_meta_run_of_5k_input_is_fast() -> None:
    model = fsrcnn()
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a CPU fallback would warn
        got = count_flops(model, (1, 3, 2880, 5120))
    assert time.perf_counter() - start < 5.0  # a real CPU forward would take minutes
    assert got == 467_877_888 * (2880 * 5120) // (32 * 32)


def test_falls_back_to_cpu_for_data_dependent_model() -> None:
    class Gate(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 8, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.a(x) if x.abs().sum().item() > 0 else self.b(x)  # needs real values

    with pytest.warns(UserWarning, match="meta"):
        assert count_flops(Gate(), (1, 3, 8, 8)) == 2 * 3 * 8 * 64  # zeros take the 1x1 path
    with pytest.warns(UserWarning, match="meta"):
        ones = count_flops(Gate(), (1, 3, 8, 8), inputs_fn=lambda s, d: torch.ones(s, device=d))
    assert ones == 2 * 3 * 9 * 8 * 64


def test_old_weight_norm_model_can_be_counted() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        conv = nn.utils.weight_norm(nn.Conv2d(3, 8, 3, padding=1))
    conv(torch.zeros(1, 3, 4, 4))  # leaves a non-leaf `weight` attribute that breaks deepcopy
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and no CPU fallback
        assert count_flops(conv, (1, 3, 16, 16)) == 2 * 3 * 9 * 8 * 256


def test_flops_cached_memoises_and_does_not_leak(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, ...]] = []
    real = F.count_flops
    monkeypatch.setattr(F, "count_flops", lambda m, s, c: calls.append(s) or real(m, s, c))
    F.clear_flops_cache()
    model = fsrcnn()
    assert flops_cached(model, (1, 3, 32, 32), "classsr") == 467_877_888
    assert flops_cached(model, (1, 3, 32, 32), "classsr") == 467_877_888
    assert flops_cached(model, (1, 3, 32, 32), "torch") == 49_840_128
    assert calls == [(1, 3, 32, 32), (1, 3, 32, 32)]  # one count per (shape, convention)
    assert len(F._cache) == 1
    del model
    gc.collect()
    assert len(F._cache) == 0


def test_format_flops() -> None:
    assert format_flops(468e6) == "468.0 M"
    assert format_flops(467_877_888) == "467.9 M"
    assert format_flops(5.19e9) == "5.19 G"
    assert format_flops(1.2e12) == "1.20 T"
    assert format_flops(49_840_128) == "49.8 M"
    assert format_flops(7_602_432) == "7.60 M"
    assert format_flops(999_960_000) == "1.00 G"  # rounds up into the next prefix
    assert format_flops(0) == "0" and format_flops(512) == "512"
