"""WSRPN pieces against direct computations and hand-computed cases (research/wsrpn_rodeo.md §1-3).

Run: python -m pytest -q tests/test_wsrpn.py
"""
import math

import pytest
import torch

from models.soft_roi_pool import SoftRoiPool, patch_centres, separable_generalized_gaussian_pdf
from models.wsrpn import WSRPN, WsrpnConfig, extract_boxes, sincos_position_embedding
from models.wsrpn_losses import (aggregate_patches, aggregate_rois, lse_pool, noisy_or, roi_patch_consistency,
                                 supcon_per_class, weighted_bce)


def tiny_config(**kw):
    base = dict(num_classes=4, backbone="densenet-small", pretrained=False, backbone_layer="denseblock3",
                d_emb=32, d_hidden=64, num_roi_tokens=3, num_heads=4)
    base.update(kw)
    return WsrpnConfig(**base)


# ---------------------------------------------------------------------------------------------- Gaussian pool

def test_patch_centres_are_cell_centres():
    centres = patch_centres(2, 4)  # (8, 2)
    assert torch.allclose(centres[0], torch.tensor([0.125, 0.25]))
    assert torch.allclose(centres[5], torch.tensor([0.375, 0.75]))  # row 1, column 1


def test_gaussian_maps_match_a_direct_loop():
    torch.manual_seed(0)
    H, W = 3, 4
    mu, sigma = torch.rand(2, 3, 2), torch.rand(2, 3, 2) * 0.8 + 0.1  # (B, K, 2)
    maps = separable_generalized_gaussian_pdf(patch_centres(H, W), mu, sigma, beta=2.0)  # (B, K, P)
    for b in range(2):
        for k in range(3):
            values = []
            for i in range(H):
                for j in range(W):
                    x, y = (j + 0.5) / W, (i + 0.5) / H
                    dx, dy = abs(x - mu[b, k, 0].item()), abs(y - mu[b, k, 1].item())
                    values.append(math.exp(-(dx / sigma[b, k, 0].item()) ** 2 - (dy / sigma[b, k, 1].item()) ** 2))
            peak = max(values)
            expected = torch.tensor([v / (peak + 1e-12) for v in values])
            assert torch.allclose(maps[b, k], expected, atol=1e-6)
    assert torch.allclose(maps.amax(-1), torch.ones(2, 3))


def test_soft_roi_pool_matches_direct_sum_and_grads_reach_mu_and_sigma():
    torch.manual_seed(0)
    B, H, W, D = 2, 3, 3, 8
    pool = SoftRoiPool(D)
    features = torch.randn(B, H * W, D)
    mu = torch.rand(B, 2, 2, requires_grad=True)
    sigma = (torch.rand(B, 2, 2) * 0.5 + 0.2).requires_grad_()
    roi_features, maps = pool(features, mu, sigma, H, W)  # (B, K, D), (B, K, P)
    values = pool.roi_feature_projector(pool.norm(features))  # (B, P, D)
    for b in range(B):
        for k in range(2):
            direct = sum(maps[b, k, p] * values[b, p] for p in range(H * W)) / (H * W)
            assert torch.allclose(roi_features[b, k], direct, atol=1e-6)
    roi_features.pow(2).sum().backward()
    assert mu.grad.abs().sum() > 0 and sigma.grad.abs().sum() > 0
    assert torch.isfinite(mu.grad).all() and torch.isfinite(sigma.grad).all()


def test_gaussian_gradients_agree_with_finite_differences():
    torch.manual_seed(1)
    centres = patch_centres(3, 3).double()
    mu = (torch.rand(1, 2, 2, dtype=torch.float64) * 0.6 + 0.2).requires_grad_()
    sigma = (torch.rand(1, 2, 2, dtype=torch.float64) * 0.5 + 0.3).requires_grad_()
    assert torch.autograd.gradcheck(lambda m, s: separable_generalized_gaussian_pdf(centres, m, s), (mu, sigma))


def test_sincos_position_embedding_layout():
    emb = sincos_position_embedding(3, 5, 8)  # (15, 8): rows in channels 0-3, columns in 4-7
    assert emb.shape == (15, 8)
    assert torch.allclose(emb[0, :4], emb[4, :4])  # same row 0, columns 0 and 4
    assert torch.allclose(emb[1, 4:], emb[6, 4:])  # same column 1, rows 0 and 1
    assert emb[7, 0].item() == pytest.approx(math.sin(1.0))  # row 1, frequency 1


# ---------------------------------------------------------------------------------------------- model

def test_roi_branch_sends_no_gradient_into_the_backbone():
    torch.manual_seed(0)
    model = WSRPN(tiny_config())
    labels = torch.tensor([[1, 0, 0, 0], [0, 0, 0, 1], [0, 1, 1, 0], [0, 0, 0, 1]], dtype=torch.float32)
    out = model(torch.rand(4, 3, 64, 64))
    terms = model.detection_losses(out, labels)
    (terms["roi_bce"] + terms["roi_supcon"] + terms["roi_patch_consistency"]
     + out["vision_features"].sum()).backward(retain_graph=True)
    frozen_side = list(model.backbone.parameters()) + list(model.projection.parameters())
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in frozen_side)
    assert model.gaussian_predictor.mlp[0].weight.grad.abs().sum() > 0
    assert model.roi_tokens.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)
    (terms["patch_bce"] + terms["patch_supcon"]).backward()
    assert model.backbone[0].weight.grad.abs().sum() > 0


def test_model_shapes_and_probability_bookkeeping():
    torch.manual_seed(0)
    model = WSRPN(tiny_config()).eval()
    out = model(torch.rand(2, 3, 64, 64))
    H, W = out["grid"]
    assert (H, W) == (4, 4)
    assert out["patch_probs"].shape == (2, 16, 4) and out["roi_probs"].shape == (2, 3, 4)
    assert out["mu"].shape == out["sigma"].shape == (2, 3, 2) and out["gaussian_maps"].shape == (2, 3, 16)
    assert out["patch_aggregated"].shape == out["roi_aggregated"].shape == (2, 5)
    # pathology probs are multiplied by the objectness 1 - p_nf
    assert (out["roi_probs"][..., :-1] <= 1 - out["roi_probs"][..., -1:] + 1e-6).all()
    assert ((out["sigma"] > 0) & (out["sigma"] < 1)).all()


# ---------------------------------------------------------------------------------------------- losses

def test_weighted_bce_hand_computed():
    probs, targets = torch.tensor([[0.8], [0.3], [0.6]]), torch.tensor([[1.0], [0.0], [0.0]])
    # N = 3, one positive: w_pos = 4 / 2, w_neg = 4 / 3
    expected = (-2 * math.log(0.8) - 4 / 3 * math.log(0.7) - 4 / 3 * math.log(0.4)) / 3
    assert weighted_bce(probs, targets).item() == pytest.approx(expected, rel=1e-6)


def test_supcon_per_class_hand_computed():
    z = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]], [[1.0, 0.0]]])  # (N=3, C=1, E=2)
    labels = torch.tensor([[1.0], [1.0], [0.0]])
    # tau 0.5: s02 = s20 = 2, all other off-diagonal 0. anchor 0: positive 1 (s=0); anchor 1: positive 0;
    # anchor 2: no positive (label 0 alone) -> only the log-denominator.
    expected = (math.log(1 + math.exp(2)) + math.log(2) + math.log(1 + math.exp(2))) / 3
    assert supcon_per_class(z, labels, temperature=0.5).item() == pytest.approx(expected, rel=1e-6)


def test_roi_patch_consistency_hand_computed():
    patch_probs = torch.tensor([[[0.6, 0.2]]])  # (N=1, P=1, C=2)
    roi_probs = torch.tensor([[[0.5, 0.4]]])  # (N=1, K=1, C=2)
    maps = torch.tensor([[[0.5]]])  # (N=1, K=1, P=1)
    teacher = [0.6 / 0.801 / (0.8 / 0.801), 0.2 / 0.801 / (0.8 / 0.801)]  # = [0.75, 0.25]
    student = [0.25, 0.5 * 0.4 + 0.5]  # 1 - (1 - m p); m p_nf + 1 - m
    total = sum(student) + 1e-6
    expected = sum(q * (math.log(q) - math.log(s / total)) for q, s in zip(teacher, student))
    assert roi_patch_consistency(patch_probs, roi_probs, maps).item() == pytest.approx(expected, rel=1e-5)


def test_consistency_gradient_reaches_the_gaussian_maps_not_the_teacher():
    patch_probs = torch.rand(2, 4, 3, requires_grad=True)
    roi_probs, maps = torch.rand(2, 2, 3, requires_grad=True), torch.rand(2, 2, 4, requires_grad=True)
    roi_patch_consistency(patch_probs, roi_probs, maps).backward()
    assert patch_probs.grad is None and maps.grad.abs().sum() > 0 and roi_probs.grad.abs().sum() > 0


def test_aggregators_hand_computed():
    probs = torch.tensor([[[0.2, 0.9], [0.8, 0.5]]])  # (N=1, P=2, C=2), no finding last
    lse = 0.8 + math.log((math.exp(5 * -0.6) + 1) / 2) / 5
    assert lse_pool(probs)[0, 0].item() == pytest.approx(lse, rel=1e-6)
    assert noisy_or(probs)[0, 0].item() == pytest.approx(1 - 0.8 * 0.2, rel=1e-6)
    patch = aggregate_patches(probs)  # (1, 3): pathology, OR-nf, AND-nf (soft-min)
    soft_min = 0.5 - math.log((1 + math.exp(5 * -0.4)) / 2) / 5
    assert patch[0, 2].item() == pytest.approx(soft_min, rel=1e-6)
    rois = aggregate_rois(probs)
    assert rois[0, 1].item() == pytest.approx(1 - 0.1 * 0.5, rel=1e-6)
    assert rois[0, 2].item() == pytest.approx(0.9 * 0.5, rel=1e-6)


# ---------------------------------------------------------------------------------------------- boxes

def test_extract_boxes_top1_per_class_threshold_and_objectness_score():
    roi_probs = torch.tensor([[[0.02, 0.03, 0.90],    # ROI 0: no pathology above 0.05 -> dropped
                               [0.60, 0.10, 0.20],    # ROI 1: class 0 (0.6) -> kept
                               [0.40, 0.20, 0.50],    # ROI 2: class 0 but weaker than ROI 1 -> dropped
                               [0.10, 0.30, 0.10]]])  # ROI 3: class 1 -> kept
    mu = torch.tensor([[[0.1, 0.1], [0.5, 0.4], [0.5, 0.5], [1.0, 0.9]]])
    sigma = torch.tensor([[[0.1, 0.1], [0.2, 0.4], [0.3, 0.3], [0.4, 0.4]]])
    boxes, labels, scores = extract_boxes(roi_probs, mu, sigma)
    assert labels[0].tolist() == [0, 1]
    assert torch.allclose(boxes[0], torch.tensor([[0.4, 0.2, 0.6, 0.6], [0.8, 0.7, 1.2, 1.1]]))  # not clipped
    assert torch.allclose(scores[0], torch.tensor([0.8, 0.9]))
    assert extract_boxes(roi_probs, mu, sigma, return_indices=True)[3][0].tolist() == [1, 3]  # the ROIs behind them
    assert extract_boxes(roi_probs, mu, sigma, threshold=0.35)[1][0].tolist() == [0]  # ROI 3 (0.3) no longer kept


def test_gaussian_parameter_predictor_offset_is_the_reference_and_logit_stays_inside():
    from models.soft_roi_pool import GaussianParameterPredictor
    torch.manual_seed(0)
    tokens, pos = torch.randn(2, 3, 16) * 50, torch.zeros(2, 3, 16)
    reference = torch.full((2, 3, 2), 0.0625)  # the corner patch of an 8x8 grid
    offset = GaussianParameterPredictor(16, 32, "offset")
    logit = GaussianParameterPredictor(16, 32, "logit")
    logit.load_state_dict(offset.state_dict())
    z = offset.mlp(offset.norm(tokens) + pos)  # (B, K, 4)
    mu, sigma = offset(tokens, pos, reference)
    assert torch.allclose(mu, reference + torch.sigmoid(z[..., :2]) - 0.5, atol=1e-6)
    assert torch.allclose(sigma, torch.sigmoid(z[..., 2:]), atol=1e-6)
    mu_logit, _ = logit(tokens, pos, reference)
    assert ((mu_logit > 0) & (mu_logit < 1)).all()
    zero = GaussianParameterPredictor(16, 32, "logit")
    torch.nn.init.zeros_(zero.mlp[2].weight), torch.nn.init.zeros_(zero.mlp[2].bias)
    assert torch.allclose(zero(tokens, pos, reference)[0], reference, atol=1e-6)  # z = 0 -> the reference point
