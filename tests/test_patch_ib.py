"""Patch-IB-CXR model tests (seed 004): towers, InfoNCE, mask head, local loss, soft top-K, token drop.

Run: python -m pytest -q tests/test_patch_ib.py   (CPU, ~20 s; tiny-hub models built on first use)
"""
import math

import pytest
import torch

from models.patch_ib import PatchIB, PatchIBConfig, VARIANTS, soft_topk
from models.patch_ib_losses import info_nce, local_loss, patch_ib_losses

REPORTS = ["Findings: small left pleural effusion. | Impression: left effusion.",
           "Findings: heart size is normal. | Impression: no acute process.",
           "Findings: right upper lobe consolidation. | Impression: pneumonia."]
WEIGHTS = dict(local=1.0, sparse=0.1, cons=1.0, nce_mask=1.0)


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {v: PatchIB(PatchIBConfig(variant=v)).eval() for v in VARIANTS}


def batch(model, n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids, am, wm = model.tokenize(REPORTS[:n])
    return torch.rand(n, 3, 96, 96, generator=g), ids, am, wm


def test_tower_shapes(models):
    m = models["A"]
    images, ids, am, wm = batch(m)
    v = m.image_tower(images)
    assert v.shape == (3, 36, m.image_tower.width)                       # 96 px / 16-px patches = 6 x 6
    tokens, cls = m.text_tower(ids, am)
    assert tokens.shape == (3, ids.shape[1], m.text_tower.width) and cls.shape == (3, m.text_tower.width)
    assert not wm[:, 0].any() and (wm.sum(1) < am.sum(1)).all()          # CLS/SEP are not words
    m128 = PatchIB(PatchIBConfig(variant="A", image_size=128))           # other sizes: interpolated positions
    assert m128.image_tower(torch.rand(1, 3, 128, 128)).shape == (1, 64, m.image_tower.width)
    out = m(images, ids, am, wm)
    assert out["image_embed"].shape == out["text_embed"].shape == (3, 64)
    assert torch.allclose(out["image_embed"].norm(dim=-1), torch.ones(3), atol=1e-5)


def test_info_nce_matches_hand_computation():
    g = torch.Generator().manual_seed(1)
    a = torch.nn.functional.normalize(torch.randn(4, 8, generator=g), dim=-1)
    b = torch.nn.functional.normalize(torch.randn(4, 8, generator=g), dim=-1)
    s = 7.0
    total = 0.0
    for i in range(4):
        row = [s * float(a[i] @ b[j]) for j in range(4)]
        col = [s * float(a[j] @ b[i]) for j in range(4)]
        total += -(row[i] - math.log(sum(math.exp(x) for x in row)))
        total += -(col[i] - math.log(sum(math.exp(x) for x in col)))
    assert float(info_nce(a, b, torch.tensor(s))) == pytest.approx(total / 8, rel=1e-5)


def test_mask_range_and_sparsity_gradient(models):
    m = models["C"]
    images, ids, am, wm = batch(m)
    out = m(images, ids, am, wm)
    assert out["z"].shape == (3, 36) and (out["z"] > 0).all() and (out["z"] < 1).all()
    m.zero_grad()
    patch_ib_losses(out, dict(local=0, sparse=1.0, cons=0, nce_mask=0))["sparse"].backward()
    assert m.mask_head.bias.grad > 0                      # gradient descent lowers the bias: sparser mask
    bias = m.mask_head.bias.detach().clone()
    with torch.no_grad():
        m.mask_head.bias -= 10.0
    assert m.patch_mask(out["patch_tokens"].detach()).mean() < out["z"].mean()
    with torch.no_grad():
        m.mask_head.bias.copy_(bias)


def test_token_drop_embedding_ignores_dropped_patches(models):
    m = models["E"]
    images, ids, am, wm = batch(m, n=1)
    with torch.no_grad():
        out = m(images, ids, am, wm)
        kept = out["patch_weights"][0].bool()
        assert int(kept.sum()) == m.num_keep == 18
        dropped = (~kept).nonzero()[0, 0].item()
        row, col = divmod(dropped, m.grid)
        changed = images.clone()
        changed[..., row * 16:(row + 1) * 16, col * 16:(col + 1) * 16] = 1.0   # rewrite one dropped patch
        index = m.keep_index(out["z"])
        a = m.image_tower(images, keep_index=index)
        b = m.image_tower(changed, keep_index=index)
        assert torch.equal(a, b)
        out2 = m(changed, ids, am, wm)
        assert not torch.equal(out2["image_embed"], out["image_embed"])      # the full embedding does change
        if torch.equal(m.keep_index(out2["z"]), index):                      # same kept set -> same embedding
            assert torch.allclose(out2["masked_embed"], out["masked_embed"], atol=1e-6)


def test_soft_topk_keeps_k_and_gradients_flow(models):
    scores = torch.randn(2, 36, requires_grad=True)
    m = soft_topk(scores, 18, 0.5)
    assert torch.allclose(m.sum(1), torch.full((2,), 18.0), atol=1e-3)
    top = scores.topk(18, dim=1).indices
    assert torch.gather(m, 1, top).mean() > 0.7                           # mass on the true top-K
    m[:, 0].sum().backward()
    assert scores.grad.abs().sum() > 0
    mod = models["D"]
    images, ids, am, wm = batch(mod)
    out = mod(images, ids, am, wm)
    assert out["patch_weights"].shape == (3, 36)


def test_local_loss_ignores_padding_and_variant_switches(models):
    g = torch.Generator().manual_seed(2)
    w = torch.nn.functional.normalize(torch.randn(2, 5, 8, generator=g), dim=-1)
    o = torch.nn.functional.normalize(torch.randn(2, 5, 8, generator=g), dim=-1)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0]], dtype=torch.bool)
    base = local_loss(w, o, mask, 0.1)
    w2, o2 = w.clone(), o.clone()
    w2[0, 3:] = 5.0
    o2[1, 4] = -3.0
    assert torch.allclose(local_loss(w2, o2, mask, 0.1), base)
    # hand computation for report 0 (3 words), both directions
    s = (w[0, :3] @ o[0, :3].T) / 0.1
    hand0 = -(torch.log_softmax(s, 1).diag() + torch.log_softmax(s, 0).diag()).mean() / 2
    s1 = (w[1, :4] @ o[1, :4].T) / 0.1
    hand1 = -(torch.log_softmax(s1, 1).diag() + torch.log_softmax(s1, 0).diag()).mean() / 2
    assert float(base) == pytest.approx(float((hand0 + hand1) / 2), rel=1e-5)
    images, ids, am, wm = batch(models["A"])
    keys = {v: set(patch_ib_losses(models[v](images, ids, am, wm), WEIGHTS)) for v in VARIANTS}
    assert keys["A"] == {"nce_full", "loss"} and keys["B"] == {"nce_full", "local", "loss"}
    assert keys["C"] == keys["D"] == keys["E"] == {"nce_full", "local", "sparse", "cons", "nce_mask", "loss"}
