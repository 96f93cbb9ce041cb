"""WSRPN: weakly supervised region proposals with Gaussian soft ROIs (Mueller et al., arXiv 2402.11985), as the
reference code builds it (research/wsrpn_rodeo.md §1-3), plus the vision side of the seed-000 text branch.

    model = WSRPN(WsrpnConfig(...)); out = model(images)      images (B, 3, H, W) in [0, 1]
    terms = model.detection_losses(out, labels)               labels (B, C), no finding last
    boxes, box_labels, scores = extract_boxes(out["roi_probs"], out["mu"], out["sigma"])

Design choices:
- Backbone: torchvision DenseNet `features` cut after `backbone_layer` (denseblock4, before norm5, stride 32,
  at paper scale). The tiny default cuts the hub's small DenseNet after denseblock3 (stride 16), because at
  128 px its denseblock4 grid is only 4x4; the layer is a config field, not a code path.
- projection BatchNorm2d -> 1x1 conv to D, plus a fixed 2-D sin-cos position embedding (first half of the
  channels the row index, second half the column index, integer positions) ADDED to the features.
- One classifier (LN -> Linear -> ReLU -> Dropout -> Linear -> Dropout on the logits) for patches and ROIs;
  pathology probs are multiplied by the objectness 1 - p_nf. Patch branch aggregated by LSE (r = 5, on
  probabilities), ROI branch by noisy-OR (models/wsrpn_losses.py).
- Stop-gradients (reference detail 1): the patch features are detached before the ROI attention and the ROI
  pooling, so the backbone learns only from the patch BCE and patch SupCon (and, in the text-branch ablation
  `vl_vision_source="global"`, from the contrastive loss on globally pooled features).
- ROI tokens: learned (1, K, D), pre-LN cross-attention block, then a single-head "assign" attention whose
  output replaces the tokens (no residual); the reference point is the argmax patch (straight-through).
- `vision_features` (B, D) for the text branch: the objectness-weighted mean of the ROI features f_k, so a
  contrastive gradient reaches mu and sigma through the Gaussian maps; "global" = mean of the patch features.

Shape letters: B batch, H x W patch grid, P = H*W patches, K ROI tokens, C classes (no finding last),
D width (d_emb), F backbone channels.
"""
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from models.soft_roi_pool import GaussianParameterPredictor, SoftRoiPool, patch_centres
from models.wsrpn_losses import (aggregate_patches, aggregate_rois, bce_targets, class_features,
                                 roi_patch_consistency, supcon_per_class, weighted_bce)


@dataclass
class WsrpnConfig:
    num_classes: int = 9                  # C: pathologies + "no finding" (last)
    backbone: str = "densenet121"         # densenet121 | densenet-small (the tiny hub's layout)
    backbone_weights: str = "torchvision/densenet121"  # name for hub.pretrained.load_checkpoint_file
    pretrained: bool = True               # False: random init (shape tests, the slow paper-size test)
    backbone_layer: str = "denseblock4"   # last DenseNet feature module kept
    pixel_mean: list = field(default_factory=lambda: [0.505])   # per channel (1 value = all channels)
    pixel_std: list = field(default_factory=lambda: [0.248])
    d_emb: int = 256                      # D
    d_hidden: int = 512                   # MLP hidden width
    num_roi_tokens: int = 10              # K
    num_heads: int = 8                    # ROI cross-attention heads
    dropout: float = 0.3
    beta: float = 2.0                     # generalized Gaussian exponent
    lse_r: float = 5.0                    # LSE sharpness of the patch aggregation
    supcon_temperature: float = 0.15
    vl_vision_source: str = "roi"         # roi | global: what the text branch's vision embedding pools
    mu_parametrization: str = "offset"    # offset (reference: r + sigmoid - 0.5) | logit (inside the image)


def sincos_position_embedding(height, width, dim):
    """-> (H*W, D): first D/2 channels encode the row i, the others the column j (sin then cos each)."""
    quarter = dim // 4
    inv_freq = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float32) * 2 / (dim // 2))  # (D/4,)
    rows = torch.arange(height, dtype=torch.float32)[:, None] * inv_freq  # (H, D/4)
    cols = torch.arange(width, dtype=torch.float32)[:, None] * inv_freq  # (W, D/4)
    row_emb = torch.cat([rows.sin(), rows.cos()], -1)[:, None].expand(height, width, -1)  # (H, W, D/2)
    col_emb = torch.cat([cols.sin(), cols.cos()], -1)[None].expand(height, width, -1)  # (H, W, D/2)
    return torch.cat([row_emb, col_emb], -1).reshape(height * width, dim)  # (P, D)


def build_backbone(config):
    """DenseNet `features` up to and including `backbone_layer` -> (module, channels F)."""
    if config.backbone == "densenet121":
        densenet = torchvision.models.densenet121(weights=None)
    elif config.backbone == "densenet-small":
        from hub.tiny_hub_vision import tiny_densenet
        densenet = tiny_densenet()
    else:
        raise ValueError(f"model.backbone must be densenet121 or densenet-small, got {config.backbone!r}")
    if config.pretrained:
        from hub.pretrained import load_checkpoint_file
        densenet.load_state_dict(load_checkpoint_file(config.backbone_weights, system="wsrpn_vl"))
    names = [name for name, _ in densenet.features.named_children()]
    if config.backbone_layer not in names:
        raise ValueError(f"model.backbone_layer {config.backbone_layer!r} is not a DenseNet feature module; "
                         f"expected one of {names}")
    layers = list(densenet.features.children())[:names.index(config.backbone_layer) + 1]
    backbone = nn.Sequential(*layers)
    with torch.no_grad():
        channels = backbone.eval()(torch.zeros(1, 3, 64, 64)).shape[1]
    return backbone.train(), channels


class Classifier(nn.Module):
    """LN -> Linear -> ReLU -> Dropout -> Linear -> Dropout (on the logits, as the reference)."""

    def __init__(self, d_emb, d_hidden, num_classes, dropout):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(d_emb), nn.Linear(d_emb, d_hidden), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(d_hidden, num_classes), nn.Dropout(dropout))

    def forward(self, x):
        probs = torch.sigmoid(self.net(x).float())  # (..., C)
        objectness = 1 - probs[..., -1:]  # (..., 1)
        return torch.cat([probs[..., :-1] * objectness, probs[..., -1:]], dim=-1)  # (..., C)


class RoiTokenAttention(nn.Module):
    """Pre-LN cross-attention of the ROI tokens to the patches, then the single-head assign attention."""

    def __init__(self, d_emb, d_hidden, num_heads, dropout):
        super().__init__()
        self.patch_norm, self.attn_norm, self.mlp_norm, self.assign_norm = (nn.LayerNorm(d_emb) for _ in range(4))
        self.cross_attention = nn.MultiheadAttention(d_emb, num_heads, dropout=dropout, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(d_emb, d_hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(d_hidden, d_emb))
        self.query, self.key, self.value, self.out = (nn.Linear(d_emb, d_emb) for _ in range(4))
        self.out_dropout = nn.Dropout(dropout)

    def forward(self, tokens, patches, centres, pos_emb):
        """tokens: (B, K, D); patches: (B, P, D) detached; centres: (P, 2); pos_emb: (P, D)."""
        B, K, D = tokens.shape
        patches = self.patch_norm(patches)  # (B, P, D)
        query = self.attn_norm(tokens)  # (B, K, D)
        tokens = tokens + self.cross_attention(query, patches, patches, need_weights=False)[0]  # (B, K, D)
        tokens = tokens + self.mlp(self.mlp_norm(tokens))  # (B, K, D)
        q = self.query(self.assign_norm(tokens))  # (B, K, D)
        k, v = self.key(patches), self.value(patches)  # (B, P, D)
        assign = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(D), dim=-1)  # (B, K, P)
        tokens = self.out_dropout(self.out(assign @ v))  # (B, K, D), no residual
        hard = F.one_hot(assign.argmax(-1), assign.shape[-1]).to(assign.dtype)  # (B, K, P)
        straight_through = hard - assign.detach() + assign  # (B, K, P)
        reference_points = straight_through @ centres.to(assign.dtype)  # (B, K, 2)
        reference_pos_emb = straight_through @ pos_emb.to(assign.dtype)  # (B, K, D)
        return tokens, assign, reference_points, reference_pos_emb


class WSRPN(nn.Module):
    def __init__(self, config: WsrpnConfig):
        super().__init__()
        self.config = c = config
        self.backbone, channels = build_backbone(c)
        self.projection = nn.Sequential(nn.BatchNorm2d(channels), nn.Conv2d(channels, c.d_emb, 1))
        self.classifier = Classifier(c.d_emb, c.d_hidden, c.num_classes, c.dropout)
        self.roi_tokens = nn.Parameter(torch.randn(1, c.num_roi_tokens, c.d_emb))
        self.roi_attention = RoiTokenAttention(c.d_emb, c.d_hidden, c.num_heads, c.dropout)
        self.gaussian_predictor = GaussianParameterPredictor(c.d_emb, c.d_hidden, c.mu_parametrization)
        self.soft_roi_pool = SoftRoiPool(c.d_emb, c.beta)
        self.supcon_projector = nn.Sequential(nn.Linear(c.d_emb, c.d_hidden), nn.ReLU(), nn.Dropout(c.dropout),
                                              nn.Linear(c.d_hidden, c.d_emb), nn.Dropout(c.dropout))
        self.register_buffer("pixel_mean", torch.tensor(c.pixel_mean, dtype=torch.float32).view(1, -1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(c.pixel_std, dtype=torch.float32).view(1, -1, 1, 1), False)

    @staticmethod
    def no_weight_decay():
        return ["roi_tokens"]

    def forward(self, images):
        """images: (B, 3, H_img, W_img) in [0, 1] -> dict of tensors (shapes in the comments)."""
        x = self.backbone((images - self.pixel_mean) / self.pixel_std)  # (B, F, H, W)
        x = self.projection(x)  # (B, D, H, W)
        B, D, H, W = x.shape
        pos_emb = sincos_position_embedding(H, W, D).to(x.device)  # (P, D)
        patch_features = x.flatten(2).transpose(1, 2) + pos_emb.to(x.dtype)  # (B, P, D)
        patch_probs = self.classifier(patch_features)  # (B, P, C)

        # ROI branch: no gradient into the backbone (reference detail 1)
        centres = patch_centres(H, W, x.device)  # (P, 2)
        detached = patch_features.detach()  # (B, P, D)
        tokens = self.roi_tokens.expand(B, -1, -1)  # (B, K, D)
        tokens, assign, reference_points, reference_pos_emb = self.roi_attention(tokens, detached, centres, pos_emb)
        mu, sigma = self.gaussian_predictor(tokens, reference_pos_emb, reference_points)  # (B, K, 2) each
        roi_features, gaussian_maps = self.soft_roi_pool(detached, mu, sigma, H, W)  # (B, K, D), (B, K, P)
        roi_probs = self.classifier(roi_features)  # (B, K, C)

        objectness = 1 - roi_probs[..., -1:]  # (B, K, 1)
        if self.config.vl_vision_source == "roi":
            vision_features = (objectness * roi_features).sum(1) / (objectness.sum(1) + 1e-6)  # (B, D)
        elif self.config.vl_vision_source == "global":
            vision_features = patch_features.mean(1)  # (B, D)
        else:
            raise ValueError(f"model.vl_vision_source must be roi or global, got {self.config.vl_vision_source!r}")
        return {
            "patch_features": patch_features, "patch_probs": patch_probs,  # (B, P, D), (B, P, C)
            "roi_features": roi_features, "roi_probs": roi_probs,  # (B, K, D), (B, K, C)
            "mu": mu, "sigma": sigma, "gaussian_maps": gaussian_maps,  # (B, K, 2), (B, K, 2), (B, K, P)
            "assign_attention": assign, "grid": (H, W),  # (B, K, P)
            "patch_aggregated": aggregate_patches(patch_probs, self.config.lse_r),  # (B, C + 1)
            "roi_aggregated": aggregate_rois(roi_probs),  # (B, C + 1)
            "vision_features": vision_features,  # (B, D)
        }

    def detection_losses(self, out, labels):
        """The five WSRPN terms and their plain mean `detection`. labels: (B, C) float, no finding last."""
        targets = bce_targets(labels)  # (B, C + 1)
        patch_class = class_features(out["patch_probs"], out["patch_features"])  # (B, C, D)
        roi_class = class_features(out["roi_probs"], out["roi_features"])  # (B, C, D)
        patch_z = F.normalize(self.supcon_projector(patch_class[:, :-1]).float(), dim=-1)  # (B, C-1, D)
        roi_z = F.normalize(self.supcon_projector(roi_class[:, :-1]).float(), dim=-1)  # (B, C-1, D)
        tau = self.config.supcon_temperature
        terms = {
            "patch_bce": weighted_bce(out["patch_aggregated"], targets),
            "patch_supcon": supcon_per_class(patch_z, labels[:, :-1], tau),
            "roi_bce": weighted_bce(out["roi_aggregated"], targets),
            "roi_supcon": supcon_per_class(roi_z, labels[:, :-1], tau),
            "roi_patch_consistency": roi_patch_consistency(out["patch_probs"], out["roi_probs"], out["gaussian_maps"]),
        }
        terms["detection"] = sum(terms.values()) / len(terms)
        return terms


@torch.no_grad()
def extract_boxes(roi_probs, mu, sigma, threshold=0.05, return_indices=False):
    """Boxes from the ROI branch only (reference detail 9): per ROI the argmax pathology; a ROI is kept if any
    pathology prob > threshold; top-1 ROI per class; box = mu -+ sigma / 2 (xyxy in image fractions, not
    clipped); score = objectness 1 - p_nf. Not reproduced: the reference's quirk that also marks ROI 0 as
    "top" for every class no ROI predicts (it adds a duplicate box).

    roi_probs: (B, K, C); mu, sigma: (B, K, 2) -> lists over images of boxes (M, 4), labels (M,), scores (M,)
    [and, with return_indices, the ROI index (M,) of each box]."""
    B, K, C = roi_probs.shape
    pathology = roi_probs[..., :-1].float()  # (B, K, C-1)
    best_prob, best_class = pathology.max(-1)  # (B, K)
    keep = best_prob > threshold  # (B, K)
    boxes_xyxy = torch.cat([mu - sigma / 2, mu + sigma / 2], dim=-1).float()  # (B, K, 4)
    objectness = 1 - roi_probs[..., -1].float()  # (B, K)
    all_boxes, all_labels, all_scores, all_indices = [], [], [], []
    for b in range(B):
        chosen = []
        for c in range(C - 1):
            candidates = torch.nonzero(keep[b] & (best_class[b] == c)).flatten()  # (M_c,)
            if len(candidates):
                chosen.append(int(candidates[best_prob[b, candidates].argmax()]))
        index = torch.tensor(chosen, dtype=torch.long, device=roi_probs.device)  # (M,)
        all_boxes.append(boxes_xyxy[b, index].cpu())  # (M, 4)
        all_labels.append(best_class[b, index].cpu())  # (M,)
        all_scores.append(objectness[b, index].cpu())  # (M,)
        all_indices.append(index.cpu())  # (M,)
    if return_indices:
        return all_boxes, all_labels, all_scores, all_indices
    return all_boxes, all_labels, all_scores
