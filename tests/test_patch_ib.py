"""Patch-IB-CXR model tests (seed 004): towers, InfoNCE, mask head, local loss, soft top-K, token drop.

Run: python -m pytest -q tests/test_patch_ib.py   (CPU, ~20 s; tiny-hub models built on first use)
"""
import math

import numpy as np
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
    v, pooled = m.image_tower(images)
    assert v.shape == (3, 36, m.image_tower.width)                       # 96 px / 16-px patches = 6 x 6
    assert torch.allclose(pooled, v.mean(1))                             # the tiny tower pools by the mean
    tokens, cls = m.text_tower(ids, am)
    assert tokens.shape == (3, ids.shape[1], m.text_tower.width) and cls.shape == (3, m.text_tower.width)
    assert not wm[:, 0].any() and (wm.sum(1) < am.sum(1)).all()          # CLS/SEP are not words
    m128 = PatchIB(PatchIBConfig(variant="A", image_size=128))           # other sizes: interpolated positions
    assert m128.image_tower(torch.rand(1, 3, 128, 128))[0].shape == (1, 64, m.image_tower.width)
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
        changed = images.clone()
        for dropped in (~kept).nonzero()[:, 0].tolist():                     # rewrite EVERY dropped patch
            row, col = divmod(dropped, m.grid)
            changed[..., row * 16:(row + 1) * 16, col * 16:(col + 1) * 16] = torch.rand(3, 16, 16)
        index = m.keep_index(out["z"])
        assert torch.equal(m.image_tower(images, keep_index=index)[0], m.image_tower(changed, keep_index=index)[0])
        # the masked embedding for the same mask z: bit-identical, although the image changed
        v_changed, full_changed = m.encode_image(changed)
        masked, _ = m.masked_embed(images, out["patch_tokens"], out["z"])
        masked_changed, _ = m.masked_embed(changed, v_changed, out["z"])
        assert torch.equal(masked, masked_changed)
        assert not torch.allclose(full_changed, out["image_embed"], atol=1e-3)   # the full embedding changes
        # contrast: C pools full-pass tokens, which attended to every patch, so its masked embedding changes
        c = models["C"]
        c_out = c(images, ids, am, wm)
        c_changed, _ = c.masked_embed(changed, c.encode_image(changed)[0], c_out["z"])
        assert not torch.allclose(c_changed, c_out["masked_embed"], atol=1e-3)
        # changing a KEPT patch does change E's masked embedding (the test above could not pass vacuously)
        row, col = divmod(kept.nonzero()[0, 0].item(), m.grid)
        kept_changed = images.clone()
        kept_changed[..., row * 16:(row + 1) * 16, col * 16:(col + 1) * 16] = 1.0
        other, _ = m.masked_embed(kept_changed, m.encode_image(kept_changed)[0], out["z"])
        assert not torch.allclose(other, masked, atol=1e-4)


@pytest.mark.parametrize("variant, keep_ratio, expected", [("D", 0.25, 9), ("E", 0.75, 27), ("D", 0.5, 18),
                                                          ("E", 0.5, 18)])
def test_topk_and_token_drop_keep_the_configured_count(models, variant, keep_ratio, expected):
    torch.manual_seed(0)
    m = models[variant] if keep_ratio == 0.5 else PatchIB(PatchIBConfig(variant=variant, keep_ratio=keep_ratio)).eval()
    images, ids, am, wm = batch(m, n=2)
    with torch.no_grad():
        out = m(images, ids, am, wm)
    assert m.num_keep == expected
    if variant == "E":                                                      # hard k-hot, K tokens through the encoder
        assert out["patch_weights"].sum(1).tolist() == [expected, expected]
        assert set(out["patch_weights"].unique().tolist()) == {0.0, 1.0}
        assert m.image_tower(images, keep_index=m.keep_index(out["z"]))[0].shape[1] == expected
    else:                                                                   # soft k-hot m sums to K; weights = m * z
        m_soft = soft_topk(torch.logit(out["z"]), expected, m.cfg.topk_tau)
        assert torch.allclose(m_soft.sum(1), torch.full((2,), float(expected)), atol=1e-3)
        assert torch.allclose(out["patch_weights"], m_soft * out["z"], atol=1e-5)


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


def test_mask_localization_measures_on_a_hand_made_mask():
    from types import SimpleNamespace
    from evals.patch_ib import box_energy, box_patch_auroc
    grid = SimpleNamespace(grid=6)                                        # 6 x 6 patches of 16 px on 96 px
    boxes = [np.array([[16.0, 16.0, 48.0, 32.0]]), np.zeros((0, 4), np.float32)]   # patches (1,1), (1,2)
    z = torch.full((2, 36), 0.2)
    z[0, 7] = z[0, 8] = 0.9                                              # high exactly on the box patches
    assert box_patch_auroc(grid, z, boxes, (96, 96)) == 1.0             # the image without a box is skipped
    assert box_patch_auroc(grid, 1 - z, boxes, (96, 96)) == 0.0
    assert box_patch_auroc(grid, torch.ones(2, 36), boxes, (96, 96)) == 0.5
    assert box_energy(grid, z, boxes, (96, 96)) == pytest.approx(1.8 / (1.8 + 34 * 0.2))
    assert box_energy(grid, torch.ones(2, 36), boxes, (96, 96)) == pytest.approx(2 / 36)


def test_noise_bottleneck_removes_what_the_mask_drops(models):
    torch.manual_seed(0)
    m = PatchIB(PatchIBConfig(variant="C", mask_apply="noise"))
    images, ids, am, wm = batch(m, n=2)
    m.train()
    m.bottleneck_embed(images, torch.full((2, 36), 0.5))                 # first update copies the batch statistics
    x = m.image_tower.vit.embeddings.patch_embedding((images - 0.5) / 0.5).flatten(2).transpose(1, 2)  # (2, 36, Dv)
    assert torch.allclose(m.patch_mean, x.detach().flatten(0, 1).mean(0), atol=1e-6) and int(m.noise_updates) == 1
    m.eval()
    with torch.no_grad():
        v, full = m.encode_image(images)
        kept_all, _ = m.masked_embed(images, v, torch.ones(2, 36))
        assert torch.allclose(kept_all, full, atol=1e-6)                  # w = 1: the full embedding
        none, _ = m.masked_embed(images, v, torch.zeros(2, 36))
        assert torch.allclose(none[0], none[1], atol=1e-6)                # w = 0: nothing of the image is left
        assert not torch.allclose(full[0], full[1], atol=1e-3)
        # a constant mask of 0.1 is a bottleneck: 90% of every patch's content is replaced, the embedding changes
        tenth, _ = m.masked_embed(images, v, torch.full((2, 36), 0.1))
        assert (1 - (tenth * full).sum(-1)).min() > 1e-3
        # normalized pooling (mask_apply=pool) keeps the full embedding under ANY constant mask: no bottleneck
        torch.manual_seed(0)
        pool = PatchIB(PatchIBConfig(variant="C", mask_apply="pool")).eval()
        v_pool, full_pool = pool.encode_image(images)
        assert torch.allclose(pool.masked_embed(images, v_pool, torch.full((2, 36), 0.1))[0], full_pool, atol=1e-6)


def test_zero_shot_uses_the_seed_prompt_and_the_cosine(models):
    from data.labels import CHEXPERT_LABELS
    from evals.patch_ib import prompt_embeddings, prompts, zero_shot_scores
    m = models["B"]
    texts = prompts()
    assert len(texts) == 14
    assert texts[CHEXPERT_LABELS.index("Pleural Effusion")] == "A chest x-ray showing pleural effusion"
    embedded = prompt_embeddings(m, "cpu")                                           # (14, E)
    ids, am, _ = m.tokenize(["A chest x-ray showing cardiomegaly"])
    assert torch.allclose(embedded[CHEXPERT_LABELS.index("Cardiomegaly")], m.encode_text(ids, am)[1][0], atol=1e-6)
    image = torch.nn.functional.normalize(torch.randn(3, embedded.shape[1]), dim=-1)
    assert torch.allclose(zero_shot_scores(m, image, "cpu"), image @ embedded.T, atol=1e-6)


def test_attention_figure_words_join_word_pieces(models):
    from evals.patch_ib import shown_words
    m = models["B"]
    ids, _, wm = m.tokenize(["Findings: the catheter terminates in the superior vena cava. | Impression: ok."])
    words = shown_words(m, ids[0], wm[0])
    names = [n for _, n in words]
    assert names[:5] == ["catheter", "terminates", "superior", "vena", "cava"] and "findings" not in names
    pieces = m.text_tower.tokenizer.convert_ids_to_tokens(ids[0].tolist())
    for positions, name in words:                                        # each word = its consecutive pieces
        assert "".join(pieces[p].lstrip("#") for p in positions) == name and wm[0, positions].all()
