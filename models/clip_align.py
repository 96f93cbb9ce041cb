"""VideoAttentionCLIP: align clinical video with clinician attention maps, CLIP-style, and classify
(seed 003, the file the seed names). Encoders in models/clip_align_encoders.py, losses in
models/clip_align_losses.py.

    model = VideoAttentionCLIP(ClipAlignConfig(model_class_num=3, map_guided=True))
    out = model(video, attn_map)            video (B, 3, T, H, W) in [0, 1], attn_map (B, A, T, H, W)
    out["logits"] (B, K), out["video_embed"] / out["attn_embed"] (B, E) unit norm,
    out["video_feat"] / out["attn_feat"] (B, D), out["logit_scale"] () = exp(learned log-scale),
    and, when they exist: out["video_tokens"] (B, N, F), out["video_gate"], out["attn_grid"] (B, N)
    terms = video_clip_losses(out, labels, clip_weight=1.0, lambda_token=0.1)   # models/clip_align_losses

Design choices:
- Video encoder by `clip_backbone` (3dcnn | 2dcnn | cnn_lstm). With `map_guided` and `3dcnn` it is the
  MapGuidedVideoEncoder (`map_guided_type` channel, the seed's | channel_attended | spatiotemporal |
  weighted_pool); with `map_guided` and a non-3D backbone the plain encoder's feature is scaled by the
  `map_gate` (seed "Detailed Architecture" B), whose map summary `map_guided_type` names (channel, the
  seed's global average | grid). A `map_guided_type` the chosen backbone has no use for is an error.
- Attention encoder: a Simple3DEncoder over the A-channel map (seed "Attention encoder").
- Projection heads `video_projection` / `attn_projection`: Linear(D -> E) (as open_clip's visual/text
  projections), outputs L2-normalized.
- Classifier: Linear(D -> K) over `video_feat`, `attn_feat` or their average (`clip_classifier_source`
  video | attn | fusion).
- Temperature: `logit_scale` = nn.Parameter(log(1 / 0.07)) used as exp(logit_scale) (open_clip); the
  training loop calls `clamp_logit_scale()` after every optimizer step ([0, ln 100]); it is in
  `no_weight_decay`.
- `video_tokens` are the map-guided token contributions c_n (pooled = sum_n c_n), so their norms say how
  much each spatiotemporal position contributed: the saliency that the token loss compares with the map.

Shape letters: B batch, T frames, H x W frame size, A attention channels, N tokens of the (T', H', W') grid,
F token channels, D feature dim (clip_feature_dim), E embedding dim (clip_embed_dim), K classes
(model_class_num).
"""
import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from models.clip_align_encoders import (GUIDE_TYPES, MAP_GATE_TYPES, MapGate, MapGuidedVideoEncoder, Simple2DEncoder,
                                        Simple3DEncoder, SimpleCNNLSTMEncoder)

BACKBONES = {"3dcnn": Simple3DEncoder, "2dcnn": Simple2DEncoder, "cnn_lstm": SimpleCNNLSTMEncoder}
CLASSIFIER_SOURCES = ("video", "attn", "fusion")
LOGIT_SCALE_MAX = math.log(100.0)  # open_clip clamps the log-scale to [0, ln 100]


@dataclass
class ClipAlignConfig:
    """The `model:` section of configs/*video_clip.yaml (names as seed 003 "Key Configuration Fields")."""
    clip_feature_dim: int = 512             # D: feature dim before projection
    clip_embed_dim: int = 256               # E: shared embedding dim of the contrastive space
    model_class_num: int = 3                # K: diagnostic classes
    attn_in_channels: int = 1               # A: attention map channels
    clip_backbone: str = "3dcnn"            # 3dcnn | 2dcnn | cnn_lstm
    map_guided: bool = False                # attention-guided gating of the video encoder
    map_guided_type: str = "spatiotemporal"  # 3dcnn: channel (seed) | channel_attended | spatiotemporal |
                                            # weighted_pool; 2dcnn, cnn_lstm: channel (seed) | grid
    map_guided_hidden_dim: int = 128        # Hd: hidden width of the gate networks
    map_guided_sigmoid_gate: bool = True    # sigmoid gate in [0, 1]; false = linear (unbounded) gate
    clip_classifier_source: str = "video"   # video | attn | fusion
    lambda_token: float = 0.0               # weight of the token-level alignment loss (models/clip_align_losses)
    encoder_width: int = 16                 # base channel width of the small CNNs (F = 4 * width)

    @classmethod
    def from_dict(cls, section):
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(section) - names)
        if unknown:
            raise ValueError(f"model: unknown key(s) {unknown} for VideoAttentionCLIP; known: {sorted(names)}")
        return cls(**{k: v for k, v in section.items()})

    def validate(self):
        if self.clip_backbone not in BACKBONES:
            raise ValueError(f"model.clip_backbone must be one of {sorted(BACKBONES)}, got {self.clip_backbone!r}")
        allowed = GUIDE_TYPES if self.clip_backbone == "3dcnn" else MAP_GATE_TYPES
        if self.map_guided and self.map_guided_type not in allowed:
            raise ValueError(f"model.map_guided_type={self.map_guided_type!r} has no meaning for "
                             f"model.clip_backbone={self.clip_backbone}; choose one of {allowed} "
                             "(models/clip_align_encoders.py)")
        if self.map_guided_type not in GUIDE_TYPES + MAP_GATE_TYPES:
            raise ValueError(f"model.map_guided_type must be one of {GUIDE_TYPES} (3dcnn) or {MAP_GATE_TYPES} "
                             f"(2dcnn, cnn_lstm), got {self.map_guided_type!r}")
        if self.map_guided and self.map_guided_type == "weighted_pool" and not self.map_guided_sigmoid_gate:
            raise ValueError("model.map_guided_sigmoid_gate=false has no effect with map_guided_type=weighted_pool "
                             "(no learned gate); leave it true")
        if self.clip_classifier_source not in CLASSIFIER_SOURCES:
            raise ValueError(f"model.clip_classifier_source must be one of {CLASSIFIER_SOURCES}, "
                             f"got {self.clip_classifier_source!r}")
        if self.lambda_token > 0 and not (self.map_guided and self.clip_backbone == "3dcnn"):
            raise ValueError("model.lambda_token > 0 needs map-guided tokens: set model.map_guided=true and "
                             "model.clip_backbone=3dcnn (other backbones have no spatiotemporal tokens)")
        return self


class VideoAttentionCLIP(nn.Module):
    """Video encoder + attention encoder + two projection heads + classifier + learnable temperature."""

    def __init__(self, config):
        super().__init__()
        self.config = c = config.validate()
        self.map_guided_3d = c.map_guided and c.clip_backbone == "3dcnn"
        if self.map_guided_3d:
            self.video_encoder = MapGuidedVideoEncoder(3, c.attn_in_channels, c.clip_feature_dim,
                                                       c.map_guided_hidden_dim, c.map_guided_type,
                                                       c.map_guided_sigmoid_gate, c.encoder_width)
        else:
            self.video_encoder = BACKBONES[c.clip_backbone](3, c.clip_feature_dim, c.encoder_width)
        self.map_gate = (MapGate(c.attn_in_channels, c.clip_feature_dim, c.map_guided_hidden_dim,
                                 c.map_guided_sigmoid_gate, c.map_guided_type)
                         if c.map_guided and not self.map_guided_3d else None)
        self.attn_encoder = Simple3DEncoder(c.attn_in_channels, c.clip_feature_dim, c.encoder_width)
        self.video_projection = nn.Linear(c.clip_feature_dim, c.clip_embed_dim)
        self.attn_projection = nn.Linear(c.clip_feature_dim, c.clip_embed_dim)
        self.classifier = nn.Linear(c.clip_feature_dim, c.model_class_num)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    @staticmethod
    def no_weight_decay():
        return ("logit_scale",)

    @torch.no_grad()
    def clamp_logit_scale(self):
        self.logit_scale.clamp_(0, LOGIT_SCALE_MAX)

    def forward(self, video, attn_map):
        B, _, T, H, W = video.shape
        if attn_map.shape[0] != B or attn_map.shape[2:] != video.shape[2:]:
            raise ValueError(f"attn_map {tuple(attn_map.shape)} must be (B, A, T, H, W) matching video "
                             f"{tuple(video.shape)}")
        out = {}
        # 1. video feature extraction
        if self.map_guided_3d:
            video_feat, tokens, gate, attn_grid = self.video_encoder(video, attn_map)   # (B, D), (B, N, F)
            out.update(video_tokens=tokens, video_gate=gate, attn_grid=attn_grid)
        else:
            video_feat = self.video_encoder(video)                       # (B, D)
            if self.map_gate is not None:
                gate = self.map_gate(attn_map)                           # (B, D)
                video_feat = video_feat * gate                           # (B, D)
                out["video_gate"] = gate
        # 2. attention feature extraction
        attn_feat = self.attn_encoder(attn_map)                          # (B, D)
        # 3. CLIP embeddings
        video_embed = F.normalize(self.video_projection(video_feat), dim=-1)   # (B, E)
        attn_embed = F.normalize(self.attn_projection(attn_feat), dim=-1)      # (B, E)
        # 4. classification
        source = self.config.clip_classifier_source
        class_feat = {"video": video_feat, "attn": attn_feat}.get(source)
        if class_feat is None:                                           # fusion
            class_feat = 0.5 * (video_feat + attn_feat)                  # (B, D)
        out.update(logits=self.classifier(class_feat),                   # (B, K)
                   video_embed=video_embed, attn_embed=attn_embed, video_feat=video_feat, attn_feat=attn_feat,
                   logit_scale=self.logit_scale.exp())
        return out
