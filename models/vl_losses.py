"""The WSRPN-VL losses of the text branch and the three-phase weight schedule (seed 000, component 3 and
"Three-Phase Training Schedule").

    ContrastiveVLLoss(temperature=0.07)(vision_emb (B, S), text_emb (B, S), groups (B,) or None) -> scalar
    vl_consistency(vision_emb, text_emb, temperature=0.1) -> scalar
    gaussian_entropy(gaussian_maps (B, K, P), weights (B, K)) -> scalar
    gaussian_scale(sigma (B, K, 2), weights (B, K)) -> scalar
    LossWeightScheduler(...).weights(epoch) -> {"phase": 1|2|3, "detection": 1.0, "contrastive": w, ...}

Definitions:
- contrastive (symmetric NT-Xent, tau = 0.07): logits = v t^T / tau (B, B); image->text and text->image
  cross-entropies, averaged. Each row's target is uniform over the columns of the same group (same caption
  string: the two augmented views of an image share one, and captions generated from labels repeat, e.g.
  every healthy image says "no acute cardiopulmonary abnormality"); groups None = the diagonal, which is
  plain NT-Xent. Without groups a duplicate caption would be a false negative.
- consistency (our definition; the seed names the term without defining it): the vision embeddings must
  relate to each other as their captions do. Row-wise softmax over j != i of the text similarities
  t_i . t_j / tau_c is the target (detached), of the vision similarities the prediction; the loss is the mean
  row KL(text || vision). It is 0 when both similarity structures agree.
- gaussian_entropy (phase 3): each Gaussian map normalized to a distribution over the P patches, its entropy
  divided by log P (so in [0, 1]); the mean over ROIs weighted by their objectness (detached), so only ROIs
  that claim a finding are sharpened. Lower = more focused maps.
- gaussian_scale (phase 3): the objectness-weighted mean box area sigma_x * sigma_y (image fractions). Lower
  = smaller boxes; keep its weight small, since large findings need large boxes.
- Schedule by epoch (0-based): phase 1 for epoch < warmup_epochs (detection only); phase 2 adds
  contrastive_weight * contrastive + consistency_weight * consistency (0.5 each in the seed); phase 3 from
  gaussian_start_epoch also adds the Gaussian terms. With gaussian_start_epoch <= warmup_epochs (the seed's
  example config, 2 and 2) phase 2 is empty. With the text branch off, every VL term and Gaussian term has
  weight 0 in every phase (plain WSRPN) unless gaussian_without_text is set.

Shape letters: B batch, S shared width, K ROI tokens, P patches.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn


class ContrastiveVLLoss(nn.Module):
    def __init__(self, temperature=0.07):
        super().__init__()
        self.temperature = temperature

    def forward(self, vision_emb, text_emb, groups=None):
        B = vision_emb.shape[0]
        logits = vision_emb.float() @ text_emb.float().t() / self.temperature  # (B, B)
        if groups is None:
            groups = torch.arange(B, device=logits.device)
        same = (groups[:, None] == groups[None, :]).float()  # (B, B)
        targets = same / same.sum(-1, keepdim=True)  # (B, B), symmetric groups -> same for the transpose
        loss_image = -(targets * F.log_softmax(logits, dim=-1)).sum(-1).mean()
        loss_text = -(targets * F.log_softmax(logits.t(), dim=-1)).sum(-1).mean()
        return (loss_image + loss_text) / 2


def vl_consistency(vision_emb, text_emb, temperature=0.1):
    """mean_i KL(softmax_j!=i(t_i.t_j / tau) || softmax_j!=i(v_i.v_j / tau)); text side detached."""
    B = vision_emb.shape[0]
    off_diagonal = ~torch.eye(B, dtype=torch.bool, device=vision_emb.device)  # (B, B)
    text_sim = (text_emb.detach().float() @ text_emb.detach().float().t() / temperature)  # (B, B)
    vision_sim = vision_emb.float() @ vision_emb.float().t() / temperature  # (B, B)
    target = F.softmax(text_sim.masked_fill(~off_diagonal, float("-inf")), dim=-1)  # (B, B)
    log_prediction = F.log_softmax(vision_sim.masked_fill(~off_diagonal, float("-inf")), dim=-1)  # (B, B)
    kl = torch.xlogy(target, target) - target * log_prediction.masked_fill(~off_diagonal, 0.0)  # (B, B)
    return kl.sum(-1).mean()


def _weighted_mean(values, weights):
    """values, weights: (B, K) -> sum w v / sum w."""
    weights = weights.detach().float()
    return (weights * values).sum() / weights.sum().clamp(min=1e-6)


def map_entropy(gaussian_maps):
    """(B, K, P) -> (B, K) normalized entropy in [0, 1] of each map as a distribution over patches."""
    P = gaussian_maps.shape[-1]
    distribution = gaussian_maps.float() / gaussian_maps.float().sum(-1, keepdim=True).clamp(min=1e-12)  # (B, K, P)
    # d log d with the log clamped: xlogy's gradient is NaN where a map underflows to exactly 0
    return -(distribution * distribution.clamp(min=1e-12).log()).sum(-1) / math.log(P)  # (B, K)


def gaussian_entropy(gaussian_maps, weights):
    return _weighted_mean(map_entropy(gaussian_maps), weights)


def gaussian_scale(sigma, weights):
    return _weighted_mean(sigma[..., 0].float() * sigma[..., 1].float(), weights)


class LossWeightScheduler:
    """epoch -> phase and the weight of every loss term; the loop logs both at every step."""

    def __init__(self, warmup_epochs=2, gaussian_start_epoch=4, contrastive_weight=0.5, consistency_weight=0.5,
                 entropy_weight=0.1, scale_weight=0.0, use_vl_branch=True, gaussian_without_text=False):
        if warmup_epochs < 0 or gaussian_start_epoch < 0:
            raise ValueError("loss.warmup_epochs and loss.gaussian_start_epoch must be >= 0")
        self.warmup_epochs, self.gaussian_start_epoch = warmup_epochs, gaussian_start_epoch
        self.contrastive_weight, self.consistency_weight = contrastive_weight, consistency_weight
        self.entropy_weight, self.scale_weight = entropy_weight, scale_weight
        self.use_vl_branch, self.gaussian_without_text = use_vl_branch, gaussian_without_text

    def phase(self, epoch):
        if epoch < self.warmup_epochs:
            return 1
        return 3 if epoch >= self.gaussian_start_epoch else 2

    def weights(self, epoch):
        phase = self.phase(epoch)
        text = self.use_vl_branch and phase >= 2
        gaussian = phase == 3 and (self.use_vl_branch or self.gaussian_without_text)
        return {"phase": phase, "detection": 1.0,
                "contrastive": self.contrastive_weight if text else 0.0,
                "consistency": self.consistency_weight if text else 0.0,
                "gaussian_entropy": self.entropy_weight if gaussian else 0.0,
                "gaussian_scale": self.scale_weight if gaussian else 0.0}
