"""SigLIP vision encoder with LoRA on q_proj / v_proj (seed 001 §4.1).

Design choices:
- SigLIP has no [CLS] token. The seed's "CLS token [B, 768]" is SigLIP's own global summary: the
  attention-pooling head's output (`pooler_output`), pretrained together with the patch tokens. The
  patch tokens are `last_hidden_state` (after the final LayerNorm).
- LoRA (rank 8, alpha 16, dropout 0.05, q_proj and v_proj of every encoder layer) is injected in place
  with peft, so parameter names read `vision_encoder.model.encoder.layers.3.self_attn.q_proj.lora_A...`
  and the freezing tables of §6 are name patterns (`vision_encoder.*lora_*`).
- Images arrive normalized with mean 0.5 / std 0.5 (seed §5.3, data/transforms.build_transform).
  A size other than the checkpoint's (tiny hub: 96 px) uses `interpolate_pos_encoding`.
- Paper weights load through hub.pretrained.load_hf like the tiny ones; `pretrained=False` builds
  the same architecture from a config object only (no download), used by `--dry-run`.

Shape letters: B batch, P patches (576 at 384 px / 16), D vision width (768 paper, 128 tiny).
"""
from dataclasses import dataclass, field

from torch import nn


@dataclass
class VisionEncoderConfig:
    name: str = "tiny-hub/siglip"          # tiny-hub/siglip or google/siglip-base-patch16-384
    pretrained: bool = True                # False: random weights from `architecture`, no download
    image_size: int = 96                   # input H = W
    lora_rank: int = 8                     # seed §4.1
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_targets: list = field(default_factory=lambda: ["q_proj", "v_proj"])
    architecture: dict = field(default_factory=dict)  # SiglipVisionConfig kwargs when pretrained=False


def build_siglip_vision(cfg):
    """-> transformers SiglipVisionModel (pretrained through load_hf, or from a local config object)."""
    from transformers import SiglipModel, SiglipVisionConfig, SiglipVisionModel
    if cfg.pretrained:
        from hub.pretrained import load_hf
        return load_hf(SiglipModel, cfg.name, system="chexquery").vision_model
    arch = dict(cfg.architecture) or {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
                                      "num_attention_heads": 4, "patch_size": 16}
    arch.setdefault("image_size", cfg.image_size)
    return SiglipVisionModel(SiglipVisionConfig(**arch))  # the same class SiglipModel.vision_model is


def add_lora(module, rank, alpha, dropout, targets):
    """Inject peft LoRA layers into `module` in place (names gain lora_A / lora_B); returns module."""
    from peft import LoraConfig, inject_adapter_in_model
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none")
    return inject_adapter_in_model(config, module)


class VisionEncoder(nn.Module):
    def __init__(self, cfg: VisionEncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.model = build_siglip_vision(cfg)
        if cfg.lora_rank > 0:
            add_lora(self.model, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout, list(cfg.lora_targets))
        self.width = self.model.config.hidden_size
        self.patch_grid = cfg.image_size // self.model.config.patch_size

    def forward(self, images):
        """images: (B, 3, H, W) normalized -> cls (B, D), patches (B, P, D)."""
        B, C, H, W = images.shape
        if C != 3 or H != self.cfg.image_size or W != self.cfg.image_size:
            raise ValueError(f"VisionEncoder: expected images (B, 3, {self.cfg.image_size}, {self.cfg.image_size}), "
                             f"got {tuple(images.shape)}")
        interpolate = H != self.model.config.image_size
        out = self.model(pixel_values=images, interpolate_pos_encoding=interpolate)
        patches = out.last_hidden_state          # (B, P, D)
        cls = out.pooler_output                  # (B, D)  SigLIP attention-pool head = the global token
        return cls, patches
