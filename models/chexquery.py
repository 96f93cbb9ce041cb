"""CheXQuery-MedVLM: the joined model and its losses (seed 001 §3, §7).

    images (B, 3, H, W) -> VisionEncoder -> cls (B, D), patches (B, P, D)
    [ConditionQueries (B, 14, D) ; AnatomicalQueries (B, 6, D)] -> combined queries (B, 20, D)
    CrossAttentionModule(queries, patches) -> attended queries (B, 20, D), attention (B, L, 20, P)
    split 14 + 6 -> AuxiliaryHead(condition part) -> aux_logits (B, 14)
    GatedFusion(cls, attended) -> visual_tokens (B, 11, D), gate (B, 1)
    TextDecoder(visual_tokens, decoder_input_ids) -> logits (B, T, W)

    L_total = lambda_gen * L_generation + lambda_aux * L_auxiliary   (§7.1; weights per phase, §7.4)

Design choices:
- Every component is an attribute named as in the seed's file list, so the freezing tables of §6 are
  name patterns (PHASE_TRAINABLE in train_chexquery.py).
- `condition_init` "bert" | "xavier", `use_gate` and `lambda_aux` = 0 are the three ablations.
- `no_weight_decay()` names the learned query tokens (condition, anatomical, pooling queries).

Shape letters: B batch, P patches, D width, Q = 14 condition queries, A = 6 anatomical queries,
N = Q + A, V = 11 visual tokens, L cross-attention layers, T decoder length, W vocabulary.
"""
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from models.anatomical_queries import AnatomicalQueries
from models.auxiliary_head import AuxiliaryHead
from models.condition_queries import ConditionQueries
from models.cross_attention import CrossAttentionModule
from models.gated_fusion import GatedFusion
from models.text_decoder import TextDecoder, TextDecoderConfig, generation_loss
from models.vision_encoder import VisionEncoder, VisionEncoderConfig

@dataclass
class ChexQueryConfig:
    vision: dict = field(default_factory=dict)       # VisionEncoderConfig fields
    decoder: dict = field(default_factory=dict)      # TextDecoderConfig fields
    condition_init: str = "bert"                     # "bert" (seed §4.2) or "xavier" (ablation)
    condition_encoder: str = "tiny-hub/bert-mlm"     # BioBERT at paper scale
    condition_center: bool = False                   # centre the 14 [CLS] vectors, Xavier norm (tiny default)
    num_pooled: int = 10                             # gated fusion 20 -> 10
    cross_attention_layers: int = 2
    heads: int = 8
    ffn_ratio: int = 4
    dropout: float = 0.1
    aux_dropout: float = 0.2
    use_gate: bool = True                            # False: ablation without gated fusion
    gate_hidden: int = 0                             # gate MLP hidden width; 0 = D / 4

    @classmethod
    def from_dict(cls, d):
        known = {k: v for k, v in dict(d).items() if k in cls.__dataclass_fields__}
        return cls(**known)


class ChexQuery(nn.Module):
    def __init__(self, cfg: ChexQueryConfig):
        super().__init__()
        self.cfg = cfg
        self.vision_encoder = VisionEncoder(VisionEncoderConfig(**dict(cfg.vision)))
        D = self.vision_encoder.width
        self.condition_queries = ConditionQueries(D, init=cfg.condition_init, encoder_name=cfg.condition_encoder,
                                                  center=cfg.condition_center)
        self.anatomical_queries = AnatomicalQueries(D)
        self.cross_attention = CrossAttentionModule(D, cfg.heads, cfg.cross_attention_layers, cfg.ffn_ratio, cfg.dropout)
        self.gated_fusion = GatedFusion(D, cfg.num_pooled, cfg.heads, cfg.dropout, cfg.use_gate,
                                        cfg.gate_hidden or None)
        self.auxiliary_head = AuxiliaryHead(D, dropout=cfg.aux_dropout)
        self.text_decoder = TextDecoder(TextDecoderConfig(**dict(cfg.decoder)), D)
        self.num_conditions = len(self.condition_queries.names)

    def no_weight_decay(self):
        return ["condition_queries.queries", "anatomical_queries.queries", "gated_fusion.pool_queries"]

    def encode(self, images):
        """images (B, 3, H, W) -> dict of the visual path (everything before the decoder)."""
        B = images.shape[0]
        cls, patches = self.vision_encoder(images)                          # (B, D), (B, P, D)
        condition = self.condition_queries(B)                               # (B, Q, D)
        anatomical = self.anatomical_queries(B)                             # (B, A, D)
        combined = torch.cat([condition, anatomical], dim=1)               # (B, N, D)
        attended, attention = self.cross_attention(combined, patches)      # (B, N, D), (B, L, N, P)
        condition_attended = attended[:, :self.num_conditions]             # (B, Q, D)
        anatomical_attended = attended[:, self.num_conditions:]            # (B, A, D)
        aux_logits = self.auxiliary_head(condition_attended)                # (B, Q)
        visual_tokens, gate = self.gated_fusion(cls, attended)              # (B, V, D), (B, 1)
        return {"cls": cls, "patches": patches, "combined_queries": combined, "attended_queries": attended,
                "condition_attended": condition_attended, "anatomical_attended": anatomical_attended,
                "attention": attention, "aux_logits": aux_logits, "visual_tokens": visual_tokens, "gate": gate}

    def forward(self, images, decoder_input_ids, decoder_attention_mask=None):
        out = self.encode(images)
        out["logits"] = self.text_decoder(out["visual_tokens"], decoder_input_ids, decoder_attention_mask)  # (B, T, W)
        return out

    @torch.no_grad()
    def generate(self, images, prompt_ids, generation):
        """images (B, 3, H, W) -> (token ids (B, T'), encode dict)."""
        out = self.encode(images)
        return self.text_decoder.generate(out["visual_tokens"], prompt_ids, generation), out


def chexquery_losses(out, labels, aux_targets, lambda_gen, lambda_aux, label_smoothing=0.0):
    """seed §7: L_total = lambda_gen * L_generation + lambda_aux * L_auxiliary.

    out["logits"] (B, T, W), labels (B, T) (-100 = prompt or padding), out["aux_logits"] (B, Q),
    aux_targets (B, Q) in {0, 1}. Returns {"loss", "generation", "auxiliary"}."""
    generation = generation_loss(out["logits"], labels, label_smoothing)
    auxiliary = F.binary_cross_entropy_with_logits(out["aux_logits"], aux_targets)
    loss = lambda_gen * generation + lambda_aux * auxiliary
    return {"loss": loss, "generation": generation, "auxiliary": auxiliary}
