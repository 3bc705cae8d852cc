"""IET's individualized attention: equal to dense and to window attention when the index says
so, gradients (gradcheck), the sparse layout against plain gathers, the block path against the
sparse one, DLSG candidates, sparsification, expansion and dedup."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sr_tile.models.iet import attention as iea
from sr_tile.upscale import auto_batch_size

pytestmark = pytest.mark.usefixtures("one_thread")


def _attend(q, k, v, index):
    pattern = iea.Pattern(index, q.shape[2])
    scores = iea.qmk(q, k, pattern) / q.shape[-1] ** 0.5
    return iea.amv(scores.softmax(dim=-1), v, pattern)


def _gathered_attend(q, k, v, index):
    """The same with plain gathers and autograd: the reference for the sparse kernels."""
    batch = torch.arange(q.shape[0])[:, None, None]
    keys, values = k[batch, index.clamp(min=0)], v[batch, index.clamp(min=0)]  # (B, N, k, H, d)
    scores = torch.einsum("bnhd,bnkhd->bhnk", q, keys) / q.shape[-1] ** 0.5
    attn = scores.masked_fill(index[:, None] < 0, float("-inf")).softmax(dim=-1)
    return torch.einsum("bhnk,bnkhd->bnhd", attn, values)


def test_equals_dense_attention_when_every_token_is_a_candidate():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 10, 3, 4) for _ in range(3))
    index = torch.arange(10).expand(2, 10, 10)
    dense = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v)))
    assert torch.allclose(_attend(q, k, v, index), dense.transpose(1, 2), atol=1e-5)


def test_equals_window_attention_when_the_candidates_are_a_window():
    torch.manual_seed(1)
    h = w = 8
    s = 4
    q, k, v = (torch.randn(1, h * w, 2, 5) for _ in range(3))
    ids = torch.arange(h * w).view(h, w)
    windows = ids.view(h // s, s, w // s, s).transpose(1, 2).reshape(-1, s * s)  # (4, 16)
    index = torch.empty(h * w, s * s, dtype=torch.long)
    for win in windows:
        index[win] = win
    got = _attend(q, k, v, index[None])
    for win in windows:
        want = F.scaled_dot_product_attention(*(t[:, win].transpose(1, 2) for t in (q, k, v)))
        assert torch.allclose(got[:, win], want.transpose(1, 2), atol=1e-5)


def test_gradients_pass_gradcheck_with_masked_entries():
    torch.manual_seed(2)
    q, k, v = (torch.randn(1, 6, 2, 3, dtype=torch.float64, requires_grad=True)
               for _ in range(3))
    index = torch.tensor([[[0, 1, 2, -1], [1, 3, -1, -1], [2, 0, 5, 4], [3, 4, 1, 0],
                           [4, -1, 5, 2], [5, 0, 1, 2]]])
    assert torch.autograd.gradcheck(lambda a, b, c: _attend(a, b, c, index), (q, k, v))


def test_sparse_kernels_equal_plain_gathers_in_value_and_gradient():
    """Unsorted rows, -1 anywhere, rows with no candidate but the token: the CSR bookkeeping
    (sorting, leaving out -1, the transposes of the backward) against autograd of gathers."""
    torch.manual_seed(3)
    q, k, v = (torch.randn(2, 50, 3, 6, requires_grad=True) for _ in range(3))
    index = torch.rand(2, 50, 50).argsort(dim=-1)[..., :9]
    index[..., 0] = torch.arange(50)
    drop = torch.rand(2, 50, 9) < 0.3
    drop[..., 0] = False  # every token keeps itself
    index[drop] = -1
    index[:, 7, 1:] = -1

    def run(attend):
        out = attend(q, k, v, index)
        return out.detach(), torch.autograd.grad(out.square().sum(), (q, k, v))

    (out, grads), (want, want_grads) = run(_attend), run(_gathered_attend)
    assert torch.allclose(out, want, atol=1e-5)
    for a, b in zip(grads, want_grads):
        assert torch.allclose(a, b, atol=1e-4)


def test_dlsg_candidates():
    offsets, ids = iea.dlsg_offsets(8, 12, 3)
    assert offsets.shape == (889, 2) and offsets[0].tolist() == [0, 0]
    assert len({tuple(o) for o in offsets.tolist()}) == 889  # no duplicates
    assert offsets.abs().max() == 36  # the reach: 12 patches of 3 px
    assert len(set(ids.tolist())) == 889 and int(ids.max()) < iea.bias_table_size(8, 12)
    _, ids2 = iea.dlsg_offsets(8, 12, 2)  # at d = 2 more grid cells fall inside the window
    assert set(ids2.tolist()) - set(range(289)) < set(ids.tolist()) - set(range(289))
    index = iea.dlsg_index(5, 7, iea.dlsg_offsets(1, 2, 2)[0])
    assert index.shape == (35, 9 + 24)  # the 5x5 grid at dilation 2 less its centre
    assert index[0, 0] == 0 and (index[0] == -1).sum() > 0  # the corner loses the outside
    assert index[17].tolist()[:9] == [17, 9, 10, 11, 16, 18, 23, 24, 25]  # 3x3 around (2, 3)


def test_sparsify_keeps_the_strongest_candidates():
    attn = torch.tensor([[[[0.1, 0.5, 0.2, 0.2]], [[0.3, 0.3, 0.1, 0.3]]]])  # (1, 2, 1, 4)
    index = torch.tensor([[[7, 8, 9, -1]]])
    kept, ids, cols = iea.sparsify(attn, index, 2)
    assert ids.tolist() == [[[8, 7]]] and cols.tolist() == [[[1, 0]]]
    assert torch.allclose(kept[0, :, 0], torch.tensor([[0.5, 0.1], [0.3, 0.3]]))


def test_expansion_merges_two_hops_without_duplicates_and_pads():
    # best first (as sparsify returns them): token 0's candidates 1, 2; token 1's 3, 0; ...
    index = torch.tensor([[[1, 2], [3, 0], [0, 4], [3, -1], [4, 1]]])
    out = iea.expand(index, k1=2, k2=2, width=6)
    # token 0: own [1, 2], then 1's top two [3, 0], then 2's [0, 4] -> 1, 2, 3, 0, 4, pad
    assert out[0, 0].tolist() == [1, 2, 3, 0, 4, -1]
    # token 3: own [3], 3's own top two [3] (the -1 is skipped): nothing new
    assert out[0, 3].tolist() == [3, -1, -1, -1, -1, -1]
    cut = iea.expand(index, k1=2, k2=2, width=3)
    assert cut[0, 0].tolist() == [1, 2, 3]


def test_dedup_keeps_first_occurrences_in_order():
    rows = torch.tensor([[[5, 3, 5, -1, 3, 2]]])
    assert iea.dedup(rows, 5)[0, 0].tolist() == [5, 3, 2, -1, -1]


def test_model_candidates_shrink_and_expand_as_configured():
    from sr_tile.models.iet import build

    model = build(variant="iet-light")
    counts = model.candidate_counts()
    # the first group's block products: every query against its 8 x 8 blocks' regions, on
    # the d = 3 lattice (reach 12 there) and for the dense window's rest (reach 8)
    assert counts[0] == counts[2] == ((8 + 2 * 12) ** 2 + (8 + 2 * 8) ** 2,) * 2
    assert counts[3] == (320, 128)  # group 1 starts from group 0's expanded list
    assert len(counts) == 24 and all(kept <= scored for scored, kept in counts)
    model.set_dilation(2)
    assert int(model.offsets.abs().max()) == 24  # d = 2 reaches 12 patches of 2 px
    # one 128 px tile per forward pass by default: its peak RSS is ~1.6 GB
    assert auto_batch_size(model.descriptor.default_tile, model.descriptor.batch_pixels) == 1


def test_a_tiny_training_run_lowers_the_loss_and_the_weights_load(tmp_path):
    from PIL import Image
    from skimage import data

    from sr_tile.models.iet.training import IETTask
    from sr_tile.models.registry import create_model
    from sr_tile.train import run_training
    from sr_tile.train.config import from_dict
    from sr_tile.train.data import PatchSampler, load_pairs, step_generator

    train, val = tmp_path / "train", tmp_path / "val"
    train.mkdir()
    val.mkdir()
    Image.fromarray(data.astronaut()[:128, 100:228]).save(train / "a.png")
    Image.fromarray(data.astronaut()[256:320, 256:320]).save(val / "v.png")
    from sr_tile.models.checkpoint import save_weights

    # an untrained IET is exactly bicubic (zero last layer), which a few steps do not beat;
    # start it worse, with a random last layer, so that the steps have a loss to lower
    torch.manual_seed(0)
    start = create_model("iet-light", weights=False)
    with torch.no_grad():
        start.upsample.weight.normal_(0.0, 0.02)
    init = save_weights(start, tmp_path / "init.safetensors", name="iet-light", scale=4)
    cfg = from_dict({
        "model": "iet-light", "scale": 4, "seed": 0, "run_dir": str(tmp_path / "run"),
        "device": "cpu", "init": str(init),
        "data": {"train_dir": str(train), "val_dir": str(val), "cache_dir": str(tmp_path / "c"),
                 "lr_patch": 12, "val_patch": 12, "val_crops": 1},
        "phases": {"train": {"steps": 8, "lr": 1e-3, "batch_size": 4, "val_every": 8,
                             "ckpt_every": 8, "log_every": 1, "l2_warmup": 8}},
    })
    pairs = load_pairs(train, scale=4, cache_dir=tmp_path / "c", label="train")[0]
    lr, hr = PatchSampler(pairs, scale=4, lr_patch=12).batch(8, step_generator(5, 0, 0))
    task, phase = IETTask(), cfg.phases.train

    def loss(model) -> float:
        with torch.no_grad():
            return task.loss(model, "train", phase, 3, lambda: (lr, hr), 0,
                             torch.Generator(), torch.device("cpu")).item()

    before = loss(start)
    result = run_training(cfg)
    assert loss(result.model) < before
    loaded = create_model("iet-light", weights=result.export_path)
    x = torch.rand(1, 3, 12, 12)
    with torch.no_grad():
        assert torch.equal(loaded(x), result.model.eval()(x))


@pytest.mark.parametrize("h, w, band_bytes", [(6, 7, iea.BAND_BYTES), (19, 13, 1)])
def test_offset_products_equal_the_gathers(monkeypatch, h, w, band_bytes):
    """The block path (several blocks, edges that cut blocks, one band per block row too)."""
    monkeypatch.setattr(iea, "BAND_BYTES", band_bytes)
    torch.manual_seed(4)
    offsets, _ = iea.dlsg_offsets(1, 2, 2)
    index = iea.dlsg_index(h, w, offsets)[None].expand(2, -1, -1).clone()
    index[:, ::3, 5] = -1  # some pruned entries too
    q, k, v = (torch.randn(2, h * w, 3, 4, requires_grad=True) for _ in range(3))
    valid = index >= 0
    got = iea.qmk_offsets(q, k, offsets, h, w, valid)
    pattern = iea.Pattern(index, 3)
    want = iea.qmk(q, k, pattern)
    assert torch.equal(torch.isinf(got), torch.isinf(want))
    assert torch.allclose(got[~torch.isinf(got)], want[~torch.isinf(want)], atol=1e-5)
    blocks = iea.amv_offsets(got.softmax(dim=-1), v, offsets, h, w, valid)
    sparse = iea.amv(want.softmax(dim=-1), v, pattern)
    assert torch.allclose(blocks, sparse, atol=1e-5)
    # and their gradients (the block path joins and splits its pieces by hand)
    for a, b in zip(torch.autograd.grad(blocks.square().sum(), (q, k, v)),
                    torch.autograd.grad(sparse.square().sum(), (q, k, v))):
        assert torch.allclose(a, b, atol=1e-4)
