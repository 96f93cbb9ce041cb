"""Losses of Patch-IB-CXR (seed 004): each returns a dict of named terms.

- L_NCE-full (`info_nce`): open_clip ClipLoss, logits = s * I T^T with s = exp(logit_scale) learnable,
  (CE(logits, diag) + CE(logits^T, diag)) / 2 (the AVERAGE of both directions, research §4).
- L_local (`local_loss`): MGCA-style token-level InfoNCE inside one sample. Word t's patch summary
  o_t = sum_p softmax_p(w_t . v_p / tau) v_p; S_{t,t'} = w_t . o_t' / tau; CE with target t = t' over the
  real words of the report (padding, CLS and SEP masked with -inf), mean over words, then over reports.
  Uniform word weights (MGCA weights words by BERT's CLS attention; not done here).
- L_sparse (`sparsity_loss`): mean(z), the L1 of the patch mask (research §7 option 1).
- L_cons (`consistency_loss`): 1 - cos(e_mask, sg(e_full)): the masked image must behave like the full one.
- Several processes (`all_ranks=True`, training under torchrun): both InfoNCE terms take their negatives from
  the global batch (models/gathered_loss.py); the other terms are per-sample means, which DDP's gradient
  average turns into global-batch means (L_local: when every report has words, as phantom reports do).

Shape letters: B batch, E embedding dim, P patches, L text tokens.
"""
import torch
import torch.nn.functional as F

from models.gathered_loss import info_nce_all_ranks


def info_nce(image_embed, text_embed, logit_scale):
    """image_embed, text_embed (B, E) unit norm; logit_scale () exponentiated -> scalar"""
    logits_per_image = logit_scale * image_embed @ text_embed.T                    # (B, B)
    targets = torch.arange(image_embed.shape[0], device=image_embed.device)        # (B,)
    return 0.5 * (F.cross_entropy(logits_per_image, targets) + F.cross_entropy(logits_per_image.T, targets))


def word_to_patch_attention(words, patches, tau):
    """words (B, L, E), patches (B, P, E) unit norm -> attention (B, L, P), summaries (B, L, E)"""
    attention = torch.softmax(words @ patches.transpose(1, 2) / tau, dim=-1)       # (B, L, P)
    return attention, attention @ patches                                          # (B, L, E)


def local_loss(words, summaries, word_mask, tau):
    """words, summaries (B, L, E); word_mask (B, L) bool -> scalar (reports without words are skipped)"""
    scores = words @ summaries.transpose(1, 2) / tau                               # (B, L, L)
    pair_mask = word_mask.unsqueeze(1) & word_mask.unsqueeze(2)                    # (B, L, L)
    scores = scores.masked_fill(~pair_mask, float("-inf"))
    eye = torch.eye(words.shape[1], dtype=torch.bool, device=words.device)        # (L, L)
    log_rows = torch.log_softmax(scores, dim=2).masked_select(eye & word_mask.unsqueeze(2))  # words as queries
    log_cols = torch.log_softmax(scores, dim=1).masked_select(eye & word_mask.unsqueeze(2))  # summaries as queries
    counts = word_mask.sum(1)                                                      # (B,)
    report = torch.repeat_interleave(torch.arange(len(counts), device=words.device), counts)
    per_report = torch.zeros(len(counts), device=words.device).index_add(0, report, -(log_rows + log_cols) / 2)
    has_words = counts > 0
    return (per_report[has_words] / counts[has_words]).mean()


def sparsity_loss(z):
    """z (B, P) in (0, 1) -> mean(z)"""
    return z.mean()


def consistency_loss(masked_embed, full_embed):
    """(B, E) each -> 1 - cos(e_mask, sg(e_full)), mean over the batch"""
    return (1 - F.cosine_similarity(masked_embed, full_embed.detach(), dim=-1)).mean()


def patch_ib_losses(out, weights, all_ranks=False):
    """out: PatchIB outputs; weights: {"local", "sparse", "cons", "nce_mask"} -> {terms..., "loss"}.
    Terms whose outputs are absent (variant switched off, or phase) are left out. all_ranks: InfoNCE over the
    batch of every process (a collective; training under torchrun)."""
    nce = info_nce_all_ranks if all_ranks else info_nce
    terms = {"nce_full": nce(out["image_embed"], out["text_embed"], out["logit_scale"])}
    loss = terms["nce_full"]
    if "words" in out and weights["local"] > 0:
        terms["local"] = local_loss(out["words"], out["summaries"], out["word_mask"], out["tau_local"])
        loss = loss + weights["local"] * terms["local"]
    if "z" in out:
        terms["sparse"] = sparsity_loss(out["z"])
        terms["cons"] = consistency_loss(out["masked_embed"], out["image_embed"])
        terms["nce_mask"] = nce(out["masked_embed"], out["text_embed"], out["logit_scale"])
        loss = loss + weights["sparse"] * terms["sparse"] + weights["cons"] * terms["cons"] \
            + weights["nce_mask"] * terms["nce_mask"]
    terms["loss"] = loss
    return terms
