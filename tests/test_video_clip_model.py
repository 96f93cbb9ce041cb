"""VideoAttentionCLIP model and losses (seed 003): shapes of every backbone and variant, gate ranges,
the CLIP loss against a hand computation, the token loss. Run: python -m pytest -q tests/test_video_clip_model.py
"""
import itertools
import math

import pytest
import torch

from models.clip_align import ClipAlignConfig, VideoAttentionCLIP
from models.clip_align_losses import clip_loss, token_alignment_loss, token_saliency, video_clip_losses

B, T, S, K = 3, 8, 32, 4


def _inputs(attn_channels=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    video = torch.rand(B, 3, T, S, S, generator=g)
    attn = torch.rand(B, attn_channels, T, S, S, generator=g)
    return video, attn


def _model(**kw):
    cfg = dict(clip_feature_dim=24, clip_embed_dim=12, model_class_num=K, map_guided_hidden_dim=8, encoder_width=4)
    cfg.update(kw)
    torch.manual_seed(0)
    return VideoAttentionCLIP(ClipAlignConfig(**cfg)).eval()


@pytest.mark.parametrize("backbone,map_guided,source", list(itertools.product(
    ["3dcnn", "2dcnn", "cnn_lstm"], [False, True], ["video", "attn", "fusion"])))
def test_output_shapes_every_backbone(backbone, map_guided, source):
    guide_type = "spatiotemporal" if backbone == "3dcnn" else "grid"
    model = _model(clip_backbone=backbone, map_guided=map_guided, clip_classifier_source=source, attn_in_channels=2,
                   map_guided_type=guide_type)
    out = model(*_inputs(attn_channels=2))
    assert out["logits"].shape == (B, K)
    for name in ("video_embed", "attn_embed"):
        assert out[name].shape == (B, 12)
        assert torch.allclose(out[name].norm(dim=-1), torch.ones(B), atol=1e-5)
    assert out["video_feat"].shape == out["attn_feat"].shape == (B, 24)
    assert out["logit_scale"].item() == pytest.approx(1 / 0.07, rel=1e-5)
    if map_guided and backbone != "3dcnn":          # map_gate path
        assert out["video_gate"].shape == (B, 24) and "video_tokens" not in out
    elif not map_guided:
        assert "video_gate" not in out and "video_tokens" not in out


@pytest.mark.parametrize("guide_type,sigmoid", list(itertools.product(
    ["spatiotemporal", "channel", "channel_attended", "weighted_pool"], [True, False])))
def test_map_guided_variants_shapes_and_gate_ranges(guide_type, sigmoid):
    if guide_type == "weighted_pool" and not sigmoid:   # no gate to make linear: refused
        with pytest.raises(ValueError, match="no effect"):
            _model(map_guided=True, map_guided_type=guide_type, map_guided_sigmoid_gate=sigmoid)
        return
    model = _model(map_guided=True, map_guided_type=guide_type, map_guided_sigmoid_gate=sigmoid)
    video, attn = _inputs()
    out = model(video, attn)
    n_tokens, token_dim = (T // 2) * (S // 4) * (S // 4), 16   # grid 4 x 8 x 8, F = 4 * width
    assert out["video_tokens"].shape == (B, n_tokens, token_dim)
    assert out["attn_grid"].shape == (B, n_tokens)
    gate = out["video_gate"]
    expected_gate = {"spatiotemporal": (B, token_dim, T // 2, S // 4, S // 4), "channel": (B, token_dim),
                     "channel_attended": (B, token_dim), "weighted_pool": (B, 1, T // 2, S // 4, S // 4)}[guide_type]
    assert gate.shape == expected_gate
    # the pooled trunk output is the sum of the token contributions
    pooled = out["video_tokens"].sum(1)
    assert torch.allclose(model.video_encoder.backbone.proj(pooled), out["video_feat"], atol=1e-5)
    if guide_type == "weighted_pool":                   # pooling weights: non-negative, sum to 1
        assert (gate >= 0).all() and torch.allclose(gate.flatten(1).sum(1), torch.ones(B))
        return
    # push the last gate layer to large weights: a sigmoid gate stays in [0, 1], a linear one leaves it
    with torch.no_grad():
        model.video_encoder.gate_net[-1].weight.mul_(200)
    gate = model(video, attn)["video_gate"]
    if sigmoid:
        assert gate.min() >= 0 and gate.max() <= 1
    else:
        assert gate.min() < 0 or gate.max() > 1


def test_gate_initialization():
    """The linear channel gate starts as a pass-through; the spatiotemporal gate as a soft copy of the map."""
    model = _model(map_guided=True, map_guided_type="channel", map_guided_sigmoid_gate=False)
    with torch.no_grad():
        model.video_encoder.gate_net[-1].weight.zero_()
    out = model(*_inputs())
    assert torch.allclose(out["video_gate"], torch.ones_like(out["video_gate"]))
    video, attn = _inputs()
    attn_grid = torch.nn.functional.adaptive_avg_pool3d(attn, (T // 2, S // 4, S // 4))   # (B, 1, T', H', W')
    for sigmoid, expected in ((True, torch.sigmoid(6 * attn_grid - 3)), (False, attn_grid)):
        gate = _model(map_guided=True, map_guided_sigmoid_gate=sigmoid)(video, attn)["video_gate"]
        assert (gate - expected).abs().max() < 0.05


def test_map_guidance_uses_the_map_and_plain_encoder_ignores_it():
    video, attn = _inputs()
    attn2 = torch.roll(attn, shifts=7, dims=-1)
    guided = _model(map_guided=True)
    assert not torch.allclose(guided(video, attn)["video_feat"], guided(video, attn2)["video_feat"])
    plain = _model(map_guided=False)
    assert torch.allclose(plain(video, attn)["video_feat"], plain(video, attn2)["video_feat"])
    gated2d = _model(map_guided=True, clip_backbone="2dcnn", map_guided_type="grid")
    assert not torch.allclose(gated2d(video, attn)["video_feat"], gated2d(video, attn2)["video_feat"])


@pytest.mark.parametrize("backbone", ["3dcnn", "2dcnn"])
def test_seed_channel_gate_reads_only_the_global_average_of_the_map(backbone):
    """Seed 003 A.d / B: the gate comes from the map's global average per channel, through a small MLP, in [0, 1]:
    moving the attention changes nothing, scaling it changes the gate; 3D tokens are gated alike, pooled uniformly."""
    video, attn = _inputs()
    model = _model(map_guided=True, map_guided_type="channel", clip_backbone=backbone)
    out = model(video, attn)
    moved = model(video, torch.roll(attn, shifts=(3, 7), dims=(-2, -1)))
    assert torch.allclose(out["video_feat"], moved["video_feat"], atol=1e-5)
    scaled = model(video, 0.3 * attn)
    assert not torch.allclose(out["video_gate"], scaled["video_gate"])
    assert out["video_gate"].min() >= 0 and out["video_gate"].max() <= 1
    if backbone == "3dcnn":
        enc = model.video_encoder
        assert enc.gate_net[0].in_features == 1                     # A: one value per attention channel
        x = enc.backbone.tokens(video).flatten(2)                   # (B, F, N)
        gate = torch.sigmoid(enc.gate_net(attn.mean(dim=(2, 3, 4))))   # (B, F)
        assert torch.allclose(out["video_gate"], gate, atol=1e-6)
        assert torch.allclose(out["video_feat"], enc.backbone.proj(gate * x.mean(2)), atol=1e-5)


@pytest.mark.parametrize("backbone,guide_type,sigmoid", [
    ("2dcnn", "spatiotemporal", True), ("cnn_lstm", "weighted_pool", True), ("cnn_lstm", "channel_attended", True),
    ("3dcnn", "grid", True), ("3dcnn", "weighted_pool", False), ("3dcnn", "bogus", True)])
def test_a_switch_the_model_would_ignore_is_an_error(backbone, guide_type, sigmoid):
    with pytest.raises(ValueError, match="map_guided"):
        _model(map_guided=True, clip_backbone=backbone, map_guided_type=guide_type, map_guided_sigmoid_gate=sigmoid)


def test_clip_loss_matches_hand_computation():
    g = torch.Generator().manual_seed(1)
    v = torch.nn.functional.normalize(torch.randn(4, 5, generator=g), dim=-1)
    a = torch.nn.functional.normalize(torch.randn(4, 5, generator=g), dim=-1)
    scale = 7.5
    sim = [[scale * sum(v[i, d].item() * a[j, d].item() for d in range(5)) for j in range(4)] for i in range(4)]

    def ce_rows(m):   # mean over rows of -log softmax at the diagonal
        return sum(-(m[i][i] - math.log(sum(math.exp(x) for x in m[i]))) for i in range(4)) / 4
    expected = 0.5 * (ce_rows(sim) + ce_rows([list(col) for col in zip(*sim)]))
    got = clip_loss(v, a, torch.tensor(scale))["clip"].item()
    assert got == pytest.approx(expected, rel=1e-5)


def test_logit_scale_learns_and_is_clamped():
    model = _model()
    out = model(*_inputs())
    terms = video_clip_losses(out, torch.tensor([0, 1, 2]), clip_weight=1.0)
    terms["loss"].backward()
    assert model.logit_scale.grad is not None and model.logit_scale.grad.abs() > 0
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    model.clamp_logit_scale()
    assert model.logit_scale.item() == pytest.approx(math.log(100))


def test_token_loss_zero_when_saliency_equals_map_and_positive_otherwise():
    g = torch.Generator().manual_seed(2)
    attn_grid = torch.rand(2, 10, generator=g) + 0.05
    directions = torch.nn.functional.normalize(torch.randn(2, 10, 6, generator=g), dim=-1)
    tokens = directions * (3.0 * attn_grid)[..., None]          # norms proportional to the map
    assert torch.allclose(token_saliency(tokens), attn_grid / attn_grid.sum(1, keepdim=True), atol=1e-6)
    assert token_alignment_loss(tokens, attn_grid)["token"].item() == pytest.approx(0.0, abs=1e-6)
    other = directions * torch.rand(2, 10, 1, generator=g)
    assert token_alignment_loss(other, attn_grid)["token"].item() > 1e-3


def test_total_loss_is_weighted_sum_and_token_needs_tokens():
    model = _model(map_guided=True, lambda_token=0.3)
    out = model(*_inputs())
    labels = torch.tensor([0, 3, 1])
    t = video_clip_losses(out, labels, clip_weight=0.5, lambda_token=0.3)
    assert t["loss"].item() == pytest.approx((t["ce"] + 0.5 * t["clip"] + 0.3 * t["token"]).item(), rel=1e-6)
    with pytest.raises(ValueError, match="lambda_token"):
        _model(map_guided=False, lambda_token=0.1)
    with pytest.raises(ValueError, match="clip_backbone"):
        _model(clip_backbone="resnet")
