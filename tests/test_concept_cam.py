"""Tests of the Concept CAM model and losses (models/concept_cam.py, models/concept_losses.py).

Run:  python -m pytest -q tests/test_concept_cam.py        (a few seconds, no hub build)

Each test checks behaviour that could fail: the feature-map order against the token order, the max-pool tie
between CAMs and logits (values and gradient), the seed 002 §5b localization loss and the box rasterization
against hand computations, pos_weight with its cap, SoftTriple against a loop written from the paper's formula,
and loading a MedMAE-layout checkpoint written here (decoder keys ignored, missing encoder keys refused).
"""
import argparse
import math

import pytest
import torch

from hub import tiny_hub_vision
from models.concept_cam import ConceptCAM, ConceptCamConfig, feature_map
from train_concept_cam import trainable_patterns
from models.concept_losses import (bbox_guided_concept_loss, boxes_to_grid_masks, pos_weight_from_labels,
                                   soft_triple_loss)

SMALL = dict(embed_dim=32, depth=1, num_heads=2, patch_size=16, image_size=48, projector_dim=8,
             prototypes_per_concept=2)


def write_medmae_file(path, image_size=48, drop=()):
    """A MedMAE-layout file: {'model': encoder + decoder + mask_token, 'args': Namespace}, like the real one."""
    torch.manual_seed(0)
    mae = tiny_hub_vision.MaskedAutoencoderViT(tiny_hub_vision.TinyMaeConfig(
        image_size=image_size, embed_dim=32, depth=1, num_heads=2, decoder_embed_dim=16, decoder_depth=1,
        decoder_num_heads=2))
    state = {k: v for k, v in mae.state_dict().items() if k not in drop}
    torch.save({"model": state, "args": argparse.Namespace(model="mae_vit_base_patch16")}, path)
    return state


def small_model(tmp_path, **overrides):
    path = tmp_path / "medmae.pth"
    write_medmae_file(path)
    return ConceptCAM(ConceptCamConfig(backbone=str(path), **{**SMALL, **overrides}))


# --------------------------------------------------------------------------------------------------
# backbone loading and the feature map

def test_medmae_layout_checkpoint_loads_without_missing_encoder_keys(tmp_path):
    path = tmp_path / "medmae.pth"
    state = write_medmae_file(path)
    assert any(k.startswith("decoder") for k in state) and "mask_token" in state   # the file really has them
    model = ConceptCAM(ConceptCamConfig(backbone=str(path), **SMALL))
    vit = model.backbone
    loaded = vit.state_dict()
    encoder_keys = [k for k in state if not k.startswith(("decoder", "mask_token"))]
    assert set(encoder_keys) == set(loaded)    # every encoder key of timm's ViT came from the file
    for key in encoder_keys:
        assert torch.equal(loaded[key], state[key]), key


def test_missing_encoder_key_is_refused(tmp_path):
    path = tmp_path / "broken.pth"
    write_medmae_file(path, drop=("blocks.0.norm1.weight",))
    with pytest.raises(ValueError, match="missing encoder keys.*blocks.0.norm1.weight"):
        ConceptCAM(ConceptCamConfig(backbone=str(path), **SMALL))


def test_other_image_size_resamples_position_table(tmp_path):
    model = small_model(tmp_path, image_size=64)   # checkpoint grid 3x3, model grid 4x4
    assert model.backbone.pos_embed.shape == (1, 1 + 16, 32)
    out = model(torch.randn(2, 3, 64, 64), stage=1)
    assert out["cams"].shape == (2, 22, 4, 4)


def test_feature_map_is_patch_tokens_in_row_major_order(tmp_path):
    model = small_model(tmp_path, image_size=64).eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        tokens = model.backbone.forward_features(images)      # (B, 1+P, D)
        f = feature_map(model.backbone, images)                # (B, D, h, w)
    assert f.shape == (2, 32, 4, 4)
    for i in range(4):
        for j in range(4):
            assert torch.equal(f[:, :, i, j], tokens[:, 1 + i * 4 + j])
    # and row-major means spatial: a change confined to the image's top-right patch moves cell (0, 3) most
    changed = images.clone()
    changed[:, :, 0:16, 48:64] += 3.0
    with torch.no_grad():
        delta = (feature_map(model.backbone, changed) - f).abs().sum(dim=(0, 1))   # (h, w)
    assert delta.argmax().item() == 0 * 4 + 3


def test_max_pooling_ties_cams_and_concept_logits(tmp_path):
    model = small_model(tmp_path)
    out = model(torch.randn(3, 3, 48, 48), stage=1)
    cams = out["cams"]
    cams.retain_grad()
    assert torch.equal(out["concept_logits"], cams.amax(dim=(2, 3)))
    out["concept_logits"][1, 5].backward()
    grad = cams.grad[1, 5]
    assert grad.sum().item() == pytest.approx(1.0) and (grad != 0).sum() == 1
    assert grad.flatten().argmax() == cams[1, 5].flatten().argmax()
    assert cams.grad[0].abs().sum() == 0 and cams.grad[1, 4].abs().sum() == 0


def test_stage_outputs_and_shapes(tmp_path):
    model = small_model(tmp_path)
    out = model(torch.randn(2, 3, 48, 48), stage=3)
    assert out["similarity_maps"].shape == (2, 22, 2, 3, 3)
    assert out["prototype_scores"].shape == (2, 22, 2) and out["disease_logits"].shape == (2, 6)
    # prototype score = max over patches of the cosine similarity map
    assert torch.allclose(out["prototype_scores"], out["similarity_maps"].amax(dim=(3, 4)))
    assert out["prototype_scores"].abs().max() <= 1 + 1e-5
    # concept vectors pool projected patches with the softmax of their own CAM
    weights = out["cams"][0, 7].flatten().softmax(0)
    manual = torch.nn.functional.normalize(weights @ out["projected"][0], dim=0)
    assert torch.allclose(out["concept_vectors"][0, 7], manual, atol=1e-6)
    assert model(torch.randn(2, 3, 48, 48), stage=3, task_head="linear")["disease_logits"].shape == (2, 6)
    assert "disease_logits" not in model(torch.randn(1, 3, 48, 48), stage=2)
    assert trainable_patterns(1, freeze_backbone=True) == ["concept_head.*"]


# --------------------------------------------------------------------------------------------------
# losses

def test_pos_weight_is_neg_over_pos_with_cap():
    labels = torch.zeros(200, 3)
    labels[:50, 0] = 1     # 150 / 50 = 3
    labels[:1, 1] = 1      # 199 / 1, capped at 20
    pos_weight = pos_weight_from_labels(labels, cap=20.0)   # class 2 has no positive: 1
    assert pos_weight.tolist() == [3.0, 20.0, 1.0]
    assert pos_weight_from_labels(labels, cap=1000.0)[1].item() == 199.0


def test_localization_loss_matches_hand_computation():
    # one image, two concepts, a 2x2 grid; concept 0 present with a box over the left column
    cams = torch.tensor([[[[-1.0, 2.0], [0.5, -3.0]],
                          [[4.0, 4.0], [4.0, 4.0]]]])          # (1, 2, 2, 2)
    inside = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]],
                            [[1.0, 1.0], [1.0, 1.0]]]])
    concepts = torch.tensor([[1.0, 0.0]])
    has_box = torch.tensor([[True, True]])                    # concept 1 is absent: its box is ignored
    terms = bbox_guided_concept_loss(cams, concepts, inside, has_box, pos_weight=torch.tensor([2.0, 1.0]))
    # inside cells of concept 0: -1 and 0.5 -> relu(-cam) = 1, 0; mean over 4 cells = 0.25
    # outside cells: 2 and -3 -> relu(cam) = 2, 0; mean over 4 cells = 0.5
    assert terms["L_inside"].item() == pytest.approx(0.25)
    assert terms["L_outside"].item() == pytest.approx(0.5)
    assert terms["localization_loss"].item() == pytest.approx(0.75)
    # classification: logits = max = 2 (present, weight 2) and 4 (absent)
    softplus = lambda x: math.log1p(math.exp(x))  # noqa: E731
    expected = (2.0 * softplus(-2.0) + softplus(4.0)) / 2
    assert terms["classification_loss"].item() == pytest.approx(expected, rel=1e-6)
    # margin m = 1: inside relu(1 - cam) = 2, 0.5 -> 2.5 / 4; outside relu(cam + 1) = 3, 0 -> 3 / 4
    with_margin = bbox_guided_concept_loss(cams, concepts, inside, has_box, torch.tensor([2.0, 1.0]), margin=1.0)
    assert with_margin["L_inside"].item() == pytest.approx(0.625)
    assert with_margin["L_outside"].item() == pytest.approx(0.75)
    # m = 0 has the degenerate minimum the margin removes: an all-zero CAM costs nothing
    zero = torch.zeros_like(cams)
    assert bbox_guided_concept_loss(zero, concepts, inside, has_box, torch.ones(2))["localization_loss"].item() == 0.0
    assert bbox_guided_concept_loss(zero, concepts, inside, has_box, torch.ones(2),
                                    margin=1.0)["localization_loss"].item() == pytest.approx(1.0)  # 2/4 + 2/4
    # no present concept with a box: localization is exactly zero
    none = bbox_guided_concept_loss(cams, torch.tensor([[0.0, 0.0]]), inside, has_box, torch.ones(2))
    assert none["localization_loss"].item() == 0.0


def test_boxes_rasterize_onto_the_grid():
    # 64 px image, 4x4 grid of 16-px cells; box covers x 10..38, y 0..16 -> columns 0,1,2 of row 0
    inside, has_box = boxes_to_grid_masks([[10, 0, 38, 16], [50, 50, 52, 52]], [3, 7], 22, (64, 64), (4, 4))
    assert has_box.nonzero().flatten().tolist() == [3, 7]
    assert inside[3].nonzero().tolist() == [[0, 0], [0, 1], [0, 2]]
    assert inside[7].nonzero().tolist() == [[3, 3]]
    # with an area threshold the 6/16-covered cells 0 and 2 drop out, but a tiny box keeps its best cell
    inside, _ = boxes_to_grid_masks([[10, 0, 38, 16], [50, 50, 52, 52]], [3, 7], 22, (64, 64), (4, 4),
                                    min_fraction=0.5)
    assert inside[3].nonzero().tolist() == [[0, 1]]
    assert inside[7].nonzero().tolist() == [[3, 3]]


def test_soft_triple_matches_a_loop_over_the_formula():
    torch.manual_seed(0)
    B, K, M, E = 3, 4, 2, 5
    vectors = torch.nn.functional.normalize(torch.randn(B, K, E), dim=-1)
    prototypes = torch.nn.functional.normalize(torch.randn(K, M, E), dim=-1)
    present = torch.tensor([[1, 0, 1, 0], [0, 0, 0, 1], [0, 0, 0, 0]])
    la, gamma, margin = 20.0, 0.1, 0.01
    losses = []
    for b in range(B):
        for y in range(K):
            if not present[b, y]:
                continue
            x = vectors[b, y]
            scores = []
            for c in range(K):
                dots = torch.stack([x @ prototypes[c, m] for m in range(M)])
                weights = torch.exp(dots / gamma) / torch.exp(dots / gamma).sum()
                scores.append((weights * dots).sum())
            top = torch.exp(la * (scores[y] - margin))
            rest = sum(torch.exp(la * scores[j]) for j in range(K) if j != y)
            losses.append(-torch.log(top / (top + rest)))
    expected = torch.stack(losses).mean()
    got = soft_triple_loss(vectors, prototypes, present, la, gamma, margin)["softtriple_loss"]
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    assert soft_triple_loss(vectors, prototypes, torch.zeros(B, K))["softtriple_loss"].item() == 0.0
