"""Tiny vision stand-ins of the hub: a MAE-pretrained ViT (MedMAE's role) and a small DenseNet (DenseNet-121's).

MAE (He et al. 2022, "Masked Autoencoders Are Scalable Vision Learners"), written here for the tiny hub:
- 75% of the patches are masked at random per image (argsort of uniform noise); the encoder sees only
  the visible patches plus the cls token; a light decoder gets the encoded tokens plus a shared
  `mask_token` at the masked places and predicts each patch's pixels; the loss is the MSE on masked
  patches of per-patch normalized pixels ("norm_pix_loss").
- Parameter names follow timm's VisionTransformer (`cls_token`, `pos_embed`, `patch_embed.proj.*`,
  `blocks.N.*`, `norm.*`) because the encoder is built from timm's PatchEmbed/Block and the file is saved
  as MedMAE's `{'model': state_dict}` with the `decoder_*` keys and `mask_token` kept, so consumers load it
  exactly like the real MedMAE file (research/concept_cam_datasets.md §0.4-6, §3, §6).
- Position embeddings are fixed 2-D sine-cosine tables (as MAE), stored as (non-trainable) parameters.
- Pixels are normalized with MedMAE's statistics (mean 0.5056, std 0.252), the consumer's convention.
- `timm_vit_kwargs(config)` gives the `timm.create_model` arguments that rebuild the encoder.

DenseNet: torchvision's `DenseNet` class with a small growth rate and four short blocks (features
`denseblock1..4` and `norm5` exist as in DenseNet-121), trained as a 14-label multi-label classifier with
BCE on ImageNet-normalized images (the convention of torchvision weights it replaces). Saved as a plain
state_dict file for `model.load_state_dict(torch.load(path))`.

Shape letters: B batch, P patches, V visible patches, D width, p patch size, C labels.
"""
import math
from dataclasses import asdict, dataclass
from functools import partial

import torch
from torch import nn
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block
from torchvision.models import DenseNet

MEDMAE_MEAN, MEDMAE_STD = 0.5056, 0.252
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass
class TinyMaeConfig:
    image_size: int = 96            # pixels; 96 / 16 -> a 6x6 patch grid
    patch_size: int = 16
    embed_dim: int = 128            # encoder width D
    depth: int = 4                  # encoder blocks
    num_heads: int = 4
    mlp_ratio: float = 4.0
    decoder_embed_dim: int = 64
    decoder_depth: int = 2
    decoder_num_heads: int = 4
    mask_ratio: float = 0.75


def timm_vit_kwargs(config):
    """`timm.create_model(**timm_vit_kwargs(cfg), pretrained=True, pretrained_cfg_overlay=dict(file=...))`."""
    return dict(model_name="vit_small_patch16_224", img_size=config.image_size, patch_size=config.patch_size,
                embed_dim=config.embed_dim, depth=config.depth, num_heads=config.num_heads,
                mlp_ratio=config.mlp_ratio, num_classes=0)


def sincos_pos_embed(dim, grid_size, with_cls_token):
    """Fixed 2-D sine-cosine table (grid*grid [+1], dim): half the channels encode the row, half the column."""
    quarter = dim // 4
    frequencies = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)        # (dim/4,)
    rows, cols = torch.meshgrid(torch.arange(grid_size, dtype=torch.float64),
                                torch.arange(grid_size, dtype=torch.float64), indexing="ij")
    parts = []
    for coordinate in (cols.flatten(), rows.flatten()):
        angles = coordinate[:, None] * frequencies[None, :]                                       # (P, dim/4)
        parts += [torch.sin(angles), torch.cos(angles)]
    table = torch.cat(parts, dim=1).float()                                                      # (P, dim)
    if with_cls_token:
        table = torch.cat([torch.zeros(1, dim), table], dim=0)                                   # (1+P, dim)
    return table


class MaskedAutoencoderViT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        norm = partial(nn.LayerNorm, eps=1e-6)
        D, Dd = config.embed_dim, config.decoder_embed_dim
        self.patch_embed = PatchEmbed(config.image_size, config.patch_size, 3, D)
        grid = self.patch_embed.grid_size[0]
        P = grid * grid
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        self.pos_embed = nn.Parameter(sincos_pos_embed(D, grid, True)[None], requires_grad=False)  # (1, 1+P, D)
        self.blocks = nn.ModuleList([Block(D, config.num_heads, config.mlp_ratio, qkv_bias=True, norm_layer=norm)
                                     for _ in range(config.depth)])
        self.norm = norm(D)
        self.decoder_embed = nn.Linear(D, Dd)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, Dd))
        self.decoder_pos_embed = nn.Parameter(sincos_pos_embed(Dd, grid, True)[None], requires_grad=False)
        self.decoder_blocks = nn.ModuleList([Block(Dd, config.decoder_num_heads, config.mlp_ratio, qkv_bias=True,
                                                   norm_layer=norm) for _ in range(config.decoder_depth)])
        self.decoder_norm = norm(Dd)
        self.decoder_pred = nn.Linear(Dd, config.patch_size ** 2 * 3)
        self.num_patches = P
        self.apply(self._init_weights)
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)

    @staticmethod
    def _init_weights(module):
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def patchify(self, images):
        """images: (B, 3, H, W) -> (B, P, p*p*3), patches in row-major order, pixels (row, col, channel)."""
        B, C, H, W = images.shape
        p = self.config.patch_size
        x = images.reshape(B, C, H // p, p, W // p, p)
        return x.permute(0, 2, 4, 3, 5, 1).reshape(B, (H // p) * (W // p), p * p * C)

    def random_masking(self, B, generator=None):
        """Returns (keep_indices (B, V), mask (B, P) with 1 = masked), V = P * (1 - mask_ratio)."""
        P = self.num_patches
        V = int(P * (1 - self.config.mask_ratio))
        noise = torch.rand(B, P, generator=generator)                                           # (B, P)
        keep = noise.argsort(dim=1)[:, :V]                                                       # (B, V)
        mask = torch.ones(B, P)
        mask.scatter_(1, keep, 0.0)
        return keep, mask

    def forward_encoder(self, images, keep):
        x = self.patch_embed(images) + self.pos_embed[:, 1:]                                     # (B, P, D)
        B, P, D = x.shape
        x = torch.gather(x, 1, keep[..., None].expand(-1, -1, D))                                # (B, V, D)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(B, -1, -1)                         # (B, 1, D)
        x = torch.cat([cls, x], dim=1)                                                           # (B, 1+V, D)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward_decoder(self, latent, keep):
        x = self.decoder_embed(latent)                                                           # (B, 1+V, Dd)
        B, _, Dd = x.shape
        full = self.mask_token.expand(B, self.num_patches, Dd).clone()                           # (B, P, Dd)
        full.scatter_(1, keep[..., None].expand(-1, -1, Dd), x[:, 1:])
        x = torch.cat([x[:, :1], full], dim=1) + self.decoder_pos_embed                          # (B, 1+P, Dd)
        for block in self.decoder_blocks:
            x = block(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]                                    # (B, P, p*p*3)

    def forward(self, images, generator=None):
        """images: (B, 3, H, W) MedMAE-normalized. Returns the masked-patch normalized-pixel MSE."""
        keep, mask = self.random_masking(images.shape[0], generator)
        prediction = self.forward_decoder(self.forward_encoder(images, keep), keep)              # (B, P, p*p*3)
        target = self.patchify(images)
        target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
        per_patch = ((prediction - target) ** 2).mean(dim=-1)                                    # (B, P)
        return (per_patch * mask).sum() / mask.sum()


def medmae_normalize(images):
    return (images - MEDMAE_MEAN) / MEDMAE_STD


def imagenet_normalize(images):
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images - mean) / std


def tiny_densenet():
    """DenseNet-121's layout (4 dense blocks, transitions, norm5, classifier) at a tiny width."""
    return DenseNet(growth_rate=12, block_config=(2, 2, 2, 2), num_init_features=24, bn_size=4, num_classes=14)


def macro_auroc(scores, labels):
    """Mean over labels with both classes present of P(score_pos > score_neg) (ties count 1/2).

    scores, labels: (N, C)."""
    values = []
    for c in range(labels.shape[1]):
        positive, negative = scores[labels[:, c] > 0.5, c], scores[labels[:, c] <= 0.5, c]
        if len(positive) and len(negative):
            diff = positive[:, None] - negative[None, :]
            values.append(((diff > 0).float() + 0.5 * (diff == 0).float()).mean().item())
    return sum(values) / len(values)


# --------------------------------------------------------------------------------------------------
# training (AdamW, warmup then cosine, seeded batches) and evaluation

def train_vision(model, loss_of_batch, num_items, steps, batch_size, lr, seed, progress=None):
    generator = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.05, betas=(0.9, 0.95))
    order, cursor, warmup = torch.randperm(num_items, generator=generator), 0, max(1, steps // 10)
    model.train()
    for step in range(steps):
        if cursor + batch_size > num_items:
            order, cursor = torch.randperm(num_items, generator=generator), 0
        indices = order[cursor:cursor + batch_size]
        cursor += batch_size
        for group in optimizer.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / steps))
        loss = loss_of_batch(model, indices, generator)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if progress is not None:
            progress.set_postfix(loss=f"{loss.item():.3f}")
            progress.update(1)
    model.eval()


@torch.no_grad()
def mae_eval_loss(model, images, batch_size=64, seed=1234):
    """Masked-patch loss with masks from a fixed seed (the same masks for every model of one config)."""
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    losses = [model(medmae_normalize(images[s:s + batch_size]), generator).item()
              for s in range(0, len(images), batch_size)]
    return sum(losses) / len(losses)


def build_mae_vit(out_file, corpus, held_out, steps=300, seed=0, progress=None, image_size=96):
    torch.manual_seed(seed)
    config = TinyMaeConfig(image_size=image_size)
    model, twin = MaskedAutoencoderViT(config), MaskedAutoencoderViT(config)
    images, held_images = corpus["images"], held_out["images"]
    loss_twin, loss_before = mae_eval_loss(twin, held_images), mae_eval_loss(model, held_images)

    def loss_of_batch(m, idx, gen):
        return m(medmae_normalize(images[idx]), gen)
    train_vision(model, loss_of_batch, len(images), steps, 64, 1.5e-3, seed, progress)
    torch.save({"model": model.state_dict(), "args": asdict(config)}, out_file)
    return dict(objective="MAE masked-patch normalized-pixel MSE", random_twin=loss_twin, before=loss_before,
                after=mae_eval_loss(model, held_images)), model


@torch.no_grad()
def densenet_eval(model, images, labels, batch_size=128):
    model.eval()
    logits = torch.cat([model(imagenet_normalize(images[s:s + batch_size]))
                        for s in range(0, len(images), batch_size)])                             # (N, C)
    bce = nn.functional.binary_cross_entropy_with_logits(logits, labels).item()
    return bce, macro_auroc(logits, labels)


def build_densenet_small(out_file, corpus, held_out, steps=300, seed=0, progress=None):
    torch.manual_seed(seed)
    model, twin = tiny_densenet(), tiny_densenet()
    images, labels = corpus["images"], corpus["labels"]
    (bce_twin, auroc_twin), (bce_before, _) = (densenet_eval(twin, held_out["images"], held_out["labels"]),
                                               densenet_eval(model, held_out["images"], held_out["labels"]))

    def loss_of_batch(m, idx, gen):
        return nn.functional.binary_cross_entropy_with_logits(m(imagenet_normalize(images[idx])), labels[idx])
    train_vision(model, loss_of_batch, len(images), steps, 64, 3e-3, seed, progress)
    torch.save(model.state_dict(), out_file)
    bce_after, auroc_after = densenet_eval(model, held_out["images"], held_out["labels"])
    return dict(objective="14-label BCE", random_twin=bce_twin, before=bce_before, after=bce_after,
                auroc_random_twin=auroc_twin, auroc_after=auroc_after), model
