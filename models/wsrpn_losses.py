"""The WSRPN losses (research/wsrpn_rodeo.md §2, details 5-8). Each returns a scalar; the model's
`detection_losses` puts them in a dict of named terms.

    weighted_bce(probs (N, C'), targets (N, C'))                         per-batch class-balanced BCE
    supcon_per_class(embeddings (N, C, E), labels (N, C), temperature)   per-class supervised contrastive
    roi_patch_consistency(patch_probs (N, P, C), roi_probs (N, K, C), gaussian_maps (N, K, P))

Definitions (as the reference code computes them):
- weighted_bce: per column c, w_pos = (N + 1) / (N_pos + 1) and w_neg = (N + 1) / (N_neg + 1), recomputed from
  the batch; p clamped to [1e-7, 1 - 1e-7]; L = mean over N x C' of -(w_pos y log p + w_neg (1 - y) log(1 - p)).
  The columns are the C - 1 pathology probabilities, OR-no-finding (target 1) and AND-no-finding (target =
  the image's No Finding label).
- supcon_per_class: for each class c separately over the batch, s_ij = z_ic . z_jc / tau. The positives of
  anchor i are all j != i with the SAME binary label for c (two negatives are positives too), weighted
  uniformly; the denominator runs over all j != i. l_ic = -mean_{j in Pos(i)} s_ij + log sum_{j != i}
  exp(s_ij) (the first term is 0 when i has no positive). L = mean over i and c. The caller drops the
  no-finding class and passes L2-normalized projections.
- roi_patch_consistency: teacher = detached patch probabilities q_p = p_p / (sum_c p_pc + 1e-3); student from
  the ROIs through their Gaussian maps m_k(p): pathologies s_pc = 1 - prod_k (1 - m_k(p) p_kc), no finding
  s_p,nf = prod_k (m_k(p) p_k,nf + 1 - m_k(p)); the student is renormalized over the C classes (sum + 1e-6);
  L = mean over N, P of KL(q_p || s_p) with s clamped at 1e-3 inside the log. Gradients reach the ROI
  probabilities and, through m_k, the Gaussian centres and scales.

Shape letters: N batch (images x views), P patches, K ROI tokens, C classes with no finding last, E width.
"""
import torch


def weighted_bce(probs, targets):
    """probs, targets: (N, C') -> scalar."""
    N = probs.shape[0]
    targets = targets.float()
    probs = probs.float().clamp(1e-7, 1 - 1e-7)  # (N, C')
    num_pos = targets.sum(0)  # (C',)
    weight_pos = (N + 1) / (num_pos + 1)  # (C',)
    weight_neg = (N + 1) / (N - num_pos + 1)  # (C',)
    loss = -(weight_pos * targets * probs.log() + weight_neg * (1 - targets) * (1 - probs).log())  # (N, C')
    return loss.mean()


def supcon_per_class(embeddings, labels, temperature=0.15):
    """embeddings: (N, C, E) L2-normalized; labels: (N, C) binary -> scalar."""
    N, C, E = embeddings.shape
    z = embeddings.float().transpose(0, 1)  # (C, N, E)
    similarity = z @ z.transpose(1, 2) / temperature  # (C, N, N)
    not_self = ~torch.eye(N, dtype=torch.bool, device=z.device)  # (N, N)
    y = labels.float().t()  # (C, N)
    same_label = (y[:, :, None] == y[:, None, :]) & not_self  # (C, N, N)
    positive_weight = same_label.float() / same_label.sum(-1, keepdim=True).clamp(min=1)  # (C, N, N)
    log_denominator = similarity.masked_fill(~not_self, float("-inf")).logsumexp(-1)  # (C, N)
    per_anchor = -(positive_weight * similarity).sum(-1) + log_denominator  # (C, N)
    return per_anchor.mean()


def roi_patch_consistency(patch_probs, roi_probs, gaussian_maps):
    """patch_probs: (N, P, C) (detached here); roi_probs: (N, K, C); gaussian_maps: (N, K, P) -> scalar."""
    with torch.autocast(roi_probs.device.type, enabled=False):
        teacher = patch_probs.detach().float()  # (N, P, C)
        teacher = teacher / (teacher.sum(-1, keepdim=True) + 1e-3)  # (N, P, C)
        teacher = teacher / teacher.sum(-1, keepdim=True).clamp(min=1e-12)  # (N, P, C)
        maps = gaussian_maps.float().transpose(1, 2)[..., None]  # (N, P, K, 1)
        probs = roi_probs.float()[:, None]  # (N, 1, K, C)
        pathologies = 1 - torch.prod(1 - maps * probs[..., :-1], dim=2)  # (N, P, C-1)
        no_finding = torch.prod(maps * probs[..., -1:] + 1 - maps, dim=2)  # (N, P, 1)
        student = torch.cat([pathologies, no_finding], dim=-1)  # (N, P, C)
        student = student / (student.sum(-1, keepdim=True) + 1e-6)  # (N, P, C)
        kl = torch.xlogy(teacher, teacher) - teacher * student.clamp(min=1e-3).log()  # (N, P, C)
        return kl.sum(-1).mean()


def lse_pool(probs, r=5.0, dim=1):
    """Log-sum-exp pooling with the mean inside the log: max + (1/r) log mean exp(r (p - max)). probs: (N, P, ...)."""
    peak = probs.amax(dim=dim, keepdim=True)  # (N, 1, ...)
    pooled = peak + torch.log(torch.exp(r * (probs - peak)).mean(dim=dim, keepdim=True)) / r  # (N, 1, ...)
    return pooled.squeeze(dim)


def noisy_or(probs, dim=1):
    """1 - prod (1 - p) over `dim`, computed in log space. probs: (N, K, ...)."""
    return 1 - torch.exp(torch.log1p(-probs.clamp(max=1 - 1e-6)).sum(dim))


def aggregate_patches(patch_probs, r=5.0):
    """Patch branch: LSE for pathologies and OR-no-finding, soft-min (-LSE(-p)) for AND-no-finding.
    patch_probs: (N, P, C) -> (N, C + 1) = [C-1 pathologies, OR-nf, AND-nf]."""
    pathologies_or_nf = lse_pool(patch_probs, r)  # (N, C)
    and_nf = -lse_pool(-patch_probs[..., -1:], r)  # (N, 1)
    return torch.cat([pathologies_or_nf, and_nf], dim=-1)  # (N, C + 1)


def aggregate_rois(roi_probs):
    """ROI branch: noisy-OR for pathologies and OR-no-finding, product for AND-no-finding.
    roi_probs: (N, K, C) -> (N, C + 1)."""
    pathologies_or_nf = noisy_or(roi_probs)  # (N, C)
    and_nf = torch.prod(roi_probs[..., -1:], dim=1)  # (N, 1)
    return torch.cat([pathologies_or_nf, and_nf], dim=-1)  # (N, C + 1)


def bce_targets(labels):
    """labels: (N, C) with no finding last -> (N, C + 1) = [pathology labels, 1 (OR-nf), no-finding label]."""
    ones = torch.ones_like(labels[:, :1])  # (N, 1)
    return torch.cat([labels[:, :-1], ones, labels[:, -1:]], dim=-1)  # (N, C + 1)


def class_features(probs, features, eps=1.0):
    """Per-class features for SupCon: w_ic = p_ic / (sum_i' p_i'c + eps) (eps = 1 as the reference).
    probs: (N, I, C) over items I (patches or ROIs), features: (N, I, D) -> (N, C, D)."""
    weights = probs / (probs.sum(1, keepdim=True) + eps)  # (N, I, C)
    return torch.einsum("nic,nid->ncd", weights, features)  # (N, C, D)

