"""WSRPN-VL text branch: losses against hand computations, the phase schedule, gradient paths, text encoder
pooling, captions and the NIH WSRPN split.

Run: python -m pytest -q tests/test_wsrpn_vl.py
"""
import json
import math

import pytest
import torch
import torch.nn.functional as F

from data.captions import (NO_FINDING_CAPTION, DetectionCaptionDataset, caption_from_findings, caption_from_labels,
                           caption_from_report)
from models.vl_encoder import SharedProjection, TextEncoder, WsrpnVL
from models.vl_losses import (ContrastiveVLLoss, LossWeightScheduler, gaussian_entropy, gaussian_scale,
                              vl_consistency)
from models.wsrpn import WSRPN, WsrpnConfig


def test_contrastive_hand_computed_plain_and_grouped():
    v = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    loss = ContrastiveVLLoss(temperature=1.0)
    # logits = identity: each row -log(e / (e + 1)) = log(1 + e^-1)
    assert loss(v, t).item() == pytest.approx(math.log(1 + math.exp(-1)), rel=1e-6)
    # both items in one group: target (0.5, 0.5) -> log(e + 1) - 0.5
    assert loss(v, t, torch.tensor([0, 0])).item() == pytest.approx(math.log(math.e + 1) - 0.5, rel=1e-6)


def test_contrastive_matches_cross_entropy_reference():
    torch.manual_seed(0)
    v, t = F.normalize(torch.randn(6, 8), dim=-1), F.normalize(torch.randn(6, 8), dim=-1)
    logits = v @ t.t() / 0.07
    reference = (F.cross_entropy(logits, torch.arange(6)) + F.cross_entropy(logits.t(), torch.arange(6))) / 2
    assert ContrastiveVLLoss(0.07)(v, t).item() == pytest.approx(reference.item(), rel=1e-5)


def test_consistency_against_a_loop_and_zero_when_structures_agree():
    torch.manual_seed(0)
    v, t = F.normalize(torch.randn(4, 5), dim=-1), F.normalize(torch.randn(4, 5), dim=-1)
    tau, total = 0.1, 0.0
    for i in range(4):
        others = [j for j in range(4) if j != i]
        p = torch.softmax(torch.stack([t[i] @ t[j] / tau for j in others]), 0)
        q = torch.softmax(torch.stack([v[i] @ v[j] / tau for j in others]), 0)
        total += (p * (p.log() - q.log())).sum().item()
    assert vl_consistency(v, t, tau).item() == pytest.approx(total / 4, rel=1e-5)
    assert vl_consistency(t, t, tau).item() == pytest.approx(0.0, abs=1e-6)


def test_gaussian_losses_hand_computed():
    maps = torch.tensor([[[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]]])  # (B=1, K=2, P=4)
    # entropies 0 and 1 (normalized by log 4); weights 1 and 3 -> 0.75
    assert gaussian_entropy(maps, torch.tensor([[1.0, 3.0]])).item() == pytest.approx(0.75, rel=1e-6)
    sigma = torch.tensor([[[0.5, 0.4], [0.2, 0.2]]])
    assert gaussian_scale(sigma, torch.tensor([[1.0, 3.0]])).item() == pytest.approx((0.2 + 3 * 0.04) / 4, rel=1e-6)


def test_scheduler_phase_boundaries_and_weights():
    s = LossWeightScheduler(warmup_epochs=2, gaussian_start_epoch=4, entropy_weight=0.1, scale_weight=0.05)
    assert [s.phase(e) for e in range(6)] == [1, 1, 2, 2, 3, 3]
    assert s.weights(1) == {"phase": 1, "detection": 1.0, "contrastive": 0.0, "consistency": 0.0,
                            "gaussian_entropy": 0.0, "gaussian_scale": 0.0}
    assert s.weights(2)["contrastive"] == 0.5 and s.weights(3)["consistency"] == 0.5
    assert s.weights(3)["gaussian_entropy"] == 0.0 and s.weights(4)["gaussian_entropy"] == 0.1
    assert s.weights(4)["contrastive"] == 0.5 and s.weights(4)["gaussian_scale"] == 0.05
    seed_example = LossWeightScheduler(warmup_epochs=2, gaussian_start_epoch=2)  # the seed's yaml: no phase 2
    assert [seed_example.phase(e) for e in range(4)] == [1, 1, 3, 3]
    off = LossWeightScheduler(2, 4, use_vl_branch=False)
    assert all(off.weights(e)[k] == 0.0 for e in range(6) for k in ("contrastive", "consistency", "gaussian_entropy"))
    assert LossWeightScheduler(2, 4, use_vl_branch=False, gaussian_without_text=True).weights(4)["gaussian_entropy"] > 0


def _vl_model(source):
    torch.manual_seed(0)
    config = WsrpnConfig(num_classes=3, backbone="densenet-small", pretrained=False, backbone_layer="denseblock3",
                         d_emb=32, d_hidden=64, num_roi_tokens=3, num_heads=4, vl_vision_source=source)
    return WsrpnVL(WSRPN(config), text_dim=16, shared_dim=8)


def test_contrastive_gradient_reaches_gaussians_not_backbone_with_roi_source():
    model = _vl_model("roi")
    out = model(torch.rand(4, 3, 64, 64))
    out["mu"].retain_grad(), out["sigma"].retain_grad()
    text = model.shared_projection.text(torch.randn(4, 16))
    ContrastiveVLLoss()(out["vision_emb"], text).backward()
    assert out["mu"].grad.abs().sum() > 0 and out["sigma"].grad.abs().sum() > 0
    assert model.wsrpn.gaussian_predictor.mlp[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.wsrpn.backbone.parameters())


def test_global_source_trains_backbone_and_bypasses_gaussians():
    model = _vl_model("global")
    out = model(torch.rand(4, 3, 64, 64))
    ContrastiveVLLoss()(out["vision_emb"], model.shared_projection.text(torch.randn(4, 16))).backward()
    assert model.wsrpn.backbone[0].weight.grad.abs().sum() > 0
    assert model.wsrpn.gaussian_predictor.mlp[0].weight.grad is None


def test_shared_projection_is_unit_norm():
    projection = SharedProjection(32, 16, 8)
    v, t = projection(torch.randn(3, 32), torch.randn(3, 16))
    assert v.shape == t.shape == (3, 8)
    assert torch.allclose(v.norm(dim=-1), torch.ones(3)) and torch.allclose(t.norm(dim=-1), torch.ones(3))


def test_text_encoder_masked_mean_pooling_ignores_padding_and_is_frozen():
    encoder = TextEncoder("tiny-hub/bert-mlm")
    assert not any(p.requires_grad for p in encoder.parameters())
    short, long = "left pleural effusion.", "moderate right apical pneumothorax and mild cardiomegaly."
    batch = encoder.encode([short, long])  # short is padded here
    alone = encoder.encode([short])
    assert torch.allclose(batch[0], alone[0], atol=1e-5)
    tokens = encoder.tokenizer([short], return_tensors="pt")
    hidden = encoder.bert(**tokens).last_hidden_state[0]  # (T, H_t), no padding
    assert torch.allclose(alone[0], hidden.mean(0), atol=1e-5)
    cached = encoder([long, short, long])  # through the cache
    assert torch.allclose(cached[1], batch[0], atol=1e-5) and torch.allclose(cached[0], cached[2])


# ---------------------------------------------------------------------------------------------- captions and data

def test_captions_from_findings_labels_and_report():
    findings = [{"name": "pleural effusion", "side": "left", "zone": "basal", "size": "moderate"},
                {"name": "fracture", "side": "left", "zone": "upper", "size": "displaced"},
                {"name": "cardiomegaly", "side": "midline", "zone": "cardiac", "size": "mild"}]
    classes = ["cardiomegaly", "pleural effusion"]
    assert caption_from_findings(findings, classes) == "mild cardiomegaly. moderate left basal pleural effusion."
    assert caption_from_findings(findings[1:2], classes) == NO_FINDING_CAPTION
    assert caption_from_labels([1, 0, 1, 0], ["Atelectasis", "Cardiomegaly", "Effusion"]) == "atelectasis and effusion."
    report = "Findings: Heart size normal. Small left effusion. | Impression: Small left effusion. No pneumothorax."
    assert caption_from_report(report, max_sentences=1) == "Small left effusion."


def test_detection_dataset_on_phantoms_maps_labels_boxes_and_drops_unlabelled():
    from data.phantom import phantom_split
    classes = ["cardiomegaly", "pleural effusion", "nodule"]
    base = phantom_split("train", 40, 64)
    dataset = DetectionCaptionDataset(base, classes, "phantom", cache=True)
    assert 0 < len(dataset) < 40
    for i in range(len(dataset)):
        sample = dataset[i]
        assert sample["image"].shape == (3, 64, 64) and sample["labels"].shape == (4,)
        assert sample["labels"].sum() > 0  # a class or no finding
        assert set(sample["box_labels"].tolist()) == {c for c in range(3) if sample["labels"][c] > 0}
        if sample["labels"][-1] > 0:
            assert sample["caption"] == NO_FINDING_CAPTION and len(sample["boxes"]) == 0


def test_nih_wsrpn_split_trains_on_patients_without_boxes(tmp_path):
    from data.nih import NihDataset, write_nih
    from data.phantom import phantom_split
    write_nih(tmp_path, phantom_split("train", 48, 64), images_per_patient=2)
    splits = {s: NihDataset(tmp_path, split=s, split_mode="wsrpn") for s in ("train", "val", "test")}
    patients = {s: {r["patient_id"] for r in d.records} for s, d in splits.items()}
    assert patients["train"] and patients["val"] and patients["test"]
    assert not (patients["train"] & patients["val"]) and not (patients["val"] & patients["test"])
    assert all(len(r["boxes"]) == 0 for r in splits["train"].records)
    box_patients = {r["patient_id"] for s in ("val", "test") for r in splits[s].records if len(r["boxes"])}
    assert box_patients == patients["val"] | patients["test"]
    split_file = tmp_path / "splits" / "nih_wsrpn_patient_split_seed0.json"
    assert set(json.loads(split_file.read_text())["patients"].values()) <= {"val", "test"}


def test_unfrozen_text_encoder_is_refused_not_ignored(tmp_path):
    """The text encoder is outside the optimizer and the checkpoints: vl_freeze_text_encoder=false would train
    nothing, so it is one ConfigError before any data or model is built."""
    import training
    import train_wsrpn_vl
    with pytest.raises(training.ConfigError, match="vl_freeze_text_encoder=false is not supported"):
        train_wsrpn_vl.main(["--config", "configs/tiny/wsrpn_vl.yaml", "--out", str(tmp_path / "run"),
                             "model.vl_freeze_text_encoder=false"])
