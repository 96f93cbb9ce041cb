"""Patch-IB-CXR (seed 004): global CLIP alignment, local word-to-patch alignment, a patch information
bottleneck, and soft top-K / hard token dropping, as models A-E of the seed's ablation table.

    variant  global CLIP  local align  Patch-IB  top-K/dropping      (VARIANTS below: the switch sets)
    A        yes          -            -         -
    B        yes          yes          -         -
    C        yes          yes          yes       -
    D        yes          yes          yes       soft top-K
    E        yes          yes          yes       hard token drop

Design choices:
- Global heads (seed "Global Projection Heads"): image_embed = norm(image_proj(pooled v)) (the seed's "pooled
  ViT patch features": the tower's own pooling, BiomedCLIP's final CLS token, the tiny tower's patch mean),
  text_embed = norm(text_proj(CLS)), both to d = model.embed_dim (512 at paper scale), learnable
  logit_scale, clamped to [0, ln 100] after each step (open_clip). BiomedCLIP (paper): image_proj, text_proj
  and logit_scale START as BiomedCLIP's trained heads (Linear 768 -> 512; MLP 768 -> 640 -> 512; its logit
  scale), so a fresh model A is BiomedCLIP's zero-shot model; tiny: new Linear heads, logit_scale log(1/0.07).
- Spatial mask head (seed "Spatial Mask Head"): z = sigmoid(w_z^T v + b_z) over the final patch tokens,
  b_z initialized to model.mask_bias_init (> 0: training starts near "keep all", as IBA's alpha = 5).
- Masked embedding (never a CLS that has seen the full image, research §7 pitfall). Patch weights w: C the
  mask z; D soft top-K weights m_p (relaxed subset selection, Xie & Ermon 2019: K rounds of
  softmax(s / tau), s <- s + log(1 - p); sum_p m_p = K) times z. Then, by model.mask_apply:
  noise (paper and tiny default; the attribution bottleneck of IBA, Schulz et al. 2020): every patch
  embedding x_p (the patch conv's output, before positions and blocks) becomes
        x'_p = w_p x_p + (1 - w_p) eps_p,   eps_p ~ N(mu, diag(sigma^2))   (eval: eps_p = mu)
  with mu, sigma the running per-channel mean / std of the patch embeddings (updated in training); the
  tower runs again on x' and its pooled output is projected. A low w_p replaces the patch's content by
  noise before any token can read it (positions stay), so a constant mask of 0.1 loses 90% of every patch
  and w = 1 gives the full embedding exactly. pool: sum_p w_p v_p / sum_p w_p over the full-pass tokens
  (which attended to every patch); a CONSTANT mask then gives exactly the full embedding at any level, so
  L_cons is 0 and L_sparse lowers z without any choice of patches: no bottleneck (kept for comparison).
  E: the top-K patches by z are GATHERED before the encoder blocks and the tower runs again on them only,
  so the masked embedding cannot depend on a dropped patch; the mask head gets its gradient
  straight-through (pooled + mean_k (z_k / sg(z_k) - 1) v_k, exactly the pooled vector in the forward pass).
- Local head (seed "Local Alignment Head"): words w = norm(Linear(text tokens)), patches
  norm(Linear(v)); text tokens are the queries, patches the keys/values; padding/CLS/SEP never query.
- Retrieval score: the global cosine.

Shape letters: B batch, P patches (grid h x w), K kept patches, L text tokens, Dv / Dt tower widths, E embed.
"""
import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from models.patch_ib_towers import build_towers

VARIANTS = {  # model.variant -> switches
    "A": dict(local=False, patch_ib=False, selection="none"),
    "B": dict(local=True, patch_ib=False, selection="none"),
    "C": dict(local=True, patch_ib=True, selection="none"),
    "D": dict(local=True, patch_ib=True, selection="soft_topk"),
    "E": dict(local=True, patch_ib=True, selection="token_drop"),
}


@dataclass
class PatchIBConfig:
    variant: str = "C"                  # A | B | C | D | E (VARIANTS)
    tower: str = "tiny"                 # tiny | biomedclip
    pretrained: bool = True             # False (biomedclip): BiomedCLIP-shaped towers, random weights, offline
    image_tower: str = "tiny-hub/siglip"
    text_tower: str = "tiny-hub/bert-mlm"
    image_size: int = 96
    max_text_length: int = 64           # tokens (BiomedCLIP context_length 256)
    embed_dim: int = 64                 # d of the global heads (seed: 512)
    local_dim: int = 64                 # E of the local head
    tau_local: float = 0.1              # MGCA tau2
    init_temperature: float = 0.07      # logit_scale = log(1 / T)
    mask_bias_init: float = 2.0         # b_z at init (sigmoid(2) = 0.88)
    keep_ratio: float = 0.5             # D/E: K = round(keep_ratio * P)
    topk_tau: float = 0.5               # D: relaxed top-K temperature
    mask_apply: str = "noise"           # C/D: noise (w x + (1 - w) eps before the blocks, IBA) | pool (sum w v / sum w)
    noise_momentum: float = 0.05        # noise: update rate of the running patch-embedding mean / std

    @classmethod
    def from_dict(cls, d):
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"model: unknown keys {unknown}; known: {sorted(names)}")
        return cls(**d)


def soft_topk(scores, k, tau):
    """scores (B, P), k int -> soft k-hot (B, P), each row sums to k (relaxed subset selection; an entry
    may exceed 1 a little at high tau, since log(1 - p) only damps an already chosen patch)."""
    mask = torch.zeros_like(scores)                                                # (B, P)
    s = scores
    for _ in range(k):
        p = torch.softmax(s / tau, dim=-1)                                         # (B, P)
        mask = mask + p
        s = s + torch.log((1 - p).clamp_min(1e-9))
    return mask


class PatchIB(nn.Module):
    def __init__(self, cfg: PatchIBConfig):
        super().__init__()
        if cfg.variant not in VARIANTS:
            raise ValueError(f"model.variant must be one of {sorted(VARIANTS)}, got {cfg.variant!r}")
        self.cfg, self.switches = cfg, VARIANTS[cfg.variant]
        self.image_tower, self.text_tower, heads = build_towers(
            cfg.tower, cfg.image_tower, cfg.text_tower, cfg.image_size, cfg.max_text_length, cfg.pretrained,
            cfg.embed_dim, cfg.init_temperature)
        dv, dt = self.image_tower.width, self.text_tower.width
        self.grid = self.image_tower.grid
        self.num_patches = self.grid * self.grid
        self.num_keep = max(1, round(cfg.keep_ratio * self.num_patches))
        if heads is None:                             # tiny towers: new heads
            heads = {"image": nn.Linear(dv, cfg.embed_dim), "text": nn.Linear(dt, cfg.embed_dim),
                     "logit_scale": math.log(1 / cfg.init_temperature)}
        self.image_proj, self.text_proj = heads["image"], heads["text"]   # BiomedCLIP: its trained heads
        self.logit_scale = nn.Parameter(torch.tensor(float(heads["logit_scale"])))
        if self.switches["local"]:
            self.word_proj = nn.Linear(dt, cfg.local_dim)
            self.patch_proj = nn.Linear(dv, cfg.local_dim)
        if self.switches["patch_ib"]:
            self.mask_head = nn.Linear(dv, 1)
            nn.init.constant_(self.mask_head.bias, cfg.mask_bias_init)
        if cfg.mask_apply not in ("pool", "noise"):
            raise ValueError(f"model.mask_apply must be pool or noise, got {cfg.mask_apply!r}")
        if cfg.mask_apply == "noise":                 # running per-channel statistics of the patch embeddings
            self.register_buffer("patch_mean", torch.zeros(dv))
            self.register_buffer("patch_std", torch.ones(dv))
            self.register_buffer("noise_updates", torch.zeros((), dtype=torch.long))

    def no_weight_decay(self):
        return ["logit_scale"]

    def clamp_logit_scale(self):
        with torch.no_grad():
            self.logit_scale.clamp_(0, math.log(100))

    def tokenize(self, texts):
        return self.text_tower.tokenize(texts)

    # ---- towers + heads
    def encode_text(self, input_ids, attention_mask):
        tokens, cls = self.text_tower(input_ids, attention_mask)                   # (B, L, Dt), (B, Dt)
        return tokens, F.normalize(self.text_proj(cls), dim=-1)                    # (B, E)

    def encode_image(self, images):
        v, pooled = self.image_tower(images)                                       # (B, P, Dv), (B, Dv)
        return v, F.normalize(self.image_proj(pooled), dim=-1)                     # (B, E)

    def patch_mask(self, v):
        """v (B, P, Dv) -> z (B, P) in (0, 1)"""
        return torch.sigmoid(self.mask_head(v).squeeze(-1))                        # (B, P)

    def keep_index(self, z):
        """z (B, P) -> indices of the top-K patches (B, K), sorted by position"""
        return z.topk(self.num_keep, dim=1).indices.sort(dim=1).values             # (B, K)

    def masked_embed(self, images, v, z):
        """-> (masked image embedding (B, E), patch weights actually used (B, P))"""
        selection = self.switches["selection"]
        if selection == "token_drop":
            index = self.keep_index(z)                                             # (B, K)
            kept, pooled = self.image_tower(images, keep_index=index)              # (B, K, Dv), (B, Dv) in the encoder
            gate = torch.gather(z, 1, index)                                       # (B, K)
            gate = gate / gate.detach() - 1                                        # value 0, d/dz_k = 1 / z_k
            pooled = pooled + (gate.unsqueeze(-1) * kept).mean(1)                  # (B, Dv) straight-through
            weights = torch.zeros_like(z).scatter(1, index, 1.0)                   # (B, P) hard k-hot
            return F.normalize(self.image_proj(pooled), dim=-1), weights
        if selection == "soft_topk":
            m = soft_topk(torch.logit(z.clamp(1e-6, 1 - 1e-6)), self.num_keep, self.cfg.topk_tau)   # (B, P)
            weights = m * z                                                        # (B, P)
        else:
            weights = z                                                            # (B, P)
        if self.cfg.mask_apply == "noise":
            return self.bottleneck_embed(images, weights), weights
        pooled = (weights.unsqueeze(-1) * v).sum(1) / weights.sum(1, keepdim=True).clamp_min(1e-6)  # (B, Dv)
        return F.normalize(self.image_proj(pooled), dim=-1), weights

    def bottleneck_embed(self, images, weights):
        """images (B, 3, H, W), weights (B, P) in [0, 1] -> unit image embedding (B, E) of the tower run on the
        noise-bottlenecked patch embeddings (module docstring)"""
        _, pooled = self.image_tower(images, bottleneck=lambda x: self.noise_bottleneck(x, weights))  # (B, Dv)
        return F.normalize(self.image_proj(pooled), dim=-1)                        # (B, E)

    def noise_bottleneck(self, v, weights):
        """IBA-style (research §7 (a)): v' = w v + (1 - w) eps, eps ~ N(mean, std^2) of the patch embeddings'
        running per-channel statistics (updated in training); in eval eps = the mean. v (B, P, Dv), weights
        (B, P) -> (B, P, Dv). Unlike normalized pooling, lowering w really removes the patch's information."""
        if self.training:
            with torch.no_grad():
                flat = v.detach().flatten(0, 1).float()                            # (B * P, Dv)
                rate = self.cfg.noise_momentum if self.noise_updates > 0 else 1.0   # first batch: copy
                self.noise_updates += 1
                self.patch_mean.lerp_(flat.mean(0), rate)
                self.patch_std.lerp_(flat.std(0), rate)
            eps = self.patch_mean + self.patch_std * torch.randn_like(v)          # (B, P, Dv)
        else:
            eps = self.patch_mean.expand_as(v)                                     # (B, P, Dv)
        w = weights.clamp(0, 1).unsqueeze(-1)                                      # (B, P, 1)
        return w * v + (1 - w) * eps

    def forward(self, images, input_ids, attention_mask, word_mask, use_local=True, use_ib=True):
        """images (B, 3, H, W); input_ids, attention_mask, word_mask (B, L) -> dict of outputs.
        use_local / use_ib: the training phase may switch parts of the variant off (staged training)."""
        v, image_embed = self.encode_image(images)                                 # (B, P, Dv), (B, E)
        tokens, text_embed = self.encode_text(input_ids, attention_mask)           # (B, L, Dt), (B, E)
        out = {"image_embed": image_embed, "text_embed": text_embed, "logit_scale": self.logit_scale.exp(),
               "patch_tokens": v}
        if self.switches["local"] and use_local:
            words = F.normalize(self.word_proj(tokens), dim=-1)                    # (B, L, E')
            patches = F.normalize(self.patch_proj(v), dim=-1)                      # (B, P, E')
            attention = torch.softmax(words @ patches.transpose(1, 2) / self.cfg.tau_local, dim=-1)  # (B, L, P)
            out.update(words=words, summaries=attention @ patches, attention=attention,   # (B, L, E')
                       word_mask=word_mask.bool(), tau_local=self.cfg.tau_local)
        if self.switches["patch_ib"] and use_ib:
            z = self.patch_mask(v)                                                 # (B, P)
            masked, weights = self.masked_embed(images, v, z)                      # (B, E), (B, P)
            out.update(z=z, masked_embed=masked, patch_weights=weights)
        return out
