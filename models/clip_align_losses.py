"""Losses of VideoAttentionCLIP (seed 003 "Contrastive Objective" and the ablation table's L_CE, L_CLIP,
L_token). Each returns a dict of named terms; `video_clip_losses` adds the weighted total under "loss".

    L = L_CE + clip_weight * L_CLIP + lambda_token * L_token        (loss.clip_weight, model.lambda_token)

- L_CE: cross-entropy of the classifier logits against the class index.
- L_CLIP (open_clip ClipLoss, research/contrastive_vl.md §4): logits_per_video = s * V A^T with
  s = exp(logit_scale), V / A the unit-norm video / attention embeddings; the target of row i is column i
  (each video is paired with its own attention map). L_CLIP = (CE(logits_per_video, i) +
  CE(logits_per_attn, i)) / 2, the AVERAGE of both directions (GLoRIA and MGCA sum them instead).
- L_token (token-level alignment, the seed's B4): the map-guided tokens' saliency against the attention
  map. Token n's saliency is the share of the pooled feature it contributes,
      s_n = ||c_n||_2 / sum_m ||c_m||_2        (c_n = out["video_tokens"][:, n], pooled = sum_n c_n),
  the attention distribution on the same token grid is p_n = a_n / sum_m a_m (out["attn_grid"]), and
      L_token = KL(p || s) = sum_n p_n (log p_n - log s_n),
  which is >= 0 and exactly 0 when the saliency equals the map. It pushes the encoder to draw its pooled
  feature from where the clinician looked (GLoRIA/EG-ViT-style attention supervision, at token level).

Shape letters: B batch, E embedding dim, K classes, N tokens, F token channels.
"""
import torch
import torch.nn.functional as F

from models.gathered_loss import info_nce_all_ranks

EPS = 1e-8


def clip_loss(video_embed, attn_embed, logit_scale):
    """video_embed (B, E), attn_embed (B, E) unit norm; logit_scale () already exponentiated -> {"clip"}"""
    logits_per_video = logit_scale * video_embed @ attn_embed.T       # (B, B)
    logits_per_attn = logits_per_video.T                              # (B, B)
    targets = torch.arange(video_embed.shape[0], device=video_embed.device)   # (B,)
    clip = 0.5 * (F.cross_entropy(logits_per_video, targets) + F.cross_entropy(logits_per_attn, targets))
    return {"clip": clip}


def token_saliency(video_tokens):
    """video_tokens (B, N, F) -> (B, N) share of each token's contribution norm (sums to 1 per clip)."""
    norms = video_tokens.norm(dim=-1)                                  # (B, N)
    return norms / norms.sum(dim=1, keepdim=True).clamp_min(EPS)       # (B, N)


def token_alignment_loss(video_tokens, attn_grid):
    """video_tokens (B, N, F), attn_grid (B, N) non-negative map on the token grid -> {"token"}"""
    saliency = token_saliency(video_tokens)                            # (B, N)
    p = attn_grid / attn_grid.sum(dim=1, keepdim=True).clamp_min(EPS)  # (B, N)
    kl = (p * (torch.log(p + EPS) - torch.log(saliency + EPS))).sum(dim=1)   # (B,)
    return {"token": kl.mean()}


def video_clip_losses(out, labels, clip_weight=1.0, lambda_token=0.0, all_ranks=False):
    """out: VideoAttentionCLIP outputs; labels (B,) int64 -> {"ce", "clip", ["token"], "loss"}

    L_CLIP is always computed (it is logged even when clip_weight = 0, as a D-metric of training); it
    adds to "loss" only with its weight. L_token needs out["video_tokens"] (map-guided 3dcnn). all_ranks
    (training under torchrun, a collective): L_CLIP over the batch of every process (models/gathered_loss.py).
    """
    terms = {"ce": F.cross_entropy(out["logits"], labels)}
    if all_ranks:
        terms["clip"] = info_nce_all_ranks(out["video_embed"], out["attn_embed"], out["logit_scale"])
    else:
        terms.update(clip_loss(out["video_embed"], out["attn_embed"], out["logit_scale"]))
    loss = terms["ce"] + clip_weight * terms["clip"]
    if lambda_token > 0:
        if "video_tokens" not in out:
            raise ValueError("model.lambda_token > 0 but the model has no video_tokens (needs map-guided 3dcnn)")
        terms.update(token_alignment_loss(out["video_tokens"], out["attn_grid"]))
        loss = loss + lambda_token * terms["token"]
    terms["loss"] = loss
    return terms
