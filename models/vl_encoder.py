"""The text branch of WSRPN-VL (seed 000, components 1-2): a frozen BERT text encoder and a shared projection.

    text_encoder = TextEncoder("tiny-hub/bert-mlm")      # paper: emilyalsentzer/Bio_ClinicalBERT
    text_features = text_encoder(captions)                # (B, H_t) masked mean of the last hidden states
    model = WsrpnVL(WSRPN(...), text_dim=text_encoder.hidden_size, shared_dim=128)
    out = model(images)                                   # WSRPN outputs + "vision_emb" (B, S)
    text_embedding = model.shared_projection.text(text_features)   # (B, S)

Design choices:
- TextEncoder loads tokenizer and model through hub.pretrained.load_hf (the same path for the tiny hub
  and the paper's Bio_ClinicalBERT). Frozen (seed: vl_freeze_text_encoder=true): requires_grad False, eval
  mode (no dropout), no autograd graph. It is NOT a submodule of the trained model, so checkpoints do not
  carry a 110M-parameter frozen copy; they carry the tokenizer files and the config names the weights.
- pretrained=False (the shape-only paper-size check): a randomly initialized BERT-base-sized BertModel
  (transformers' BertConfig defaults: 12 layers, 768 wide) with the tiny hub's tokenizer, nothing downloaded.
- Because it is frozen and deterministic, embeddings are cached per caption string (captions generated from
  labels repeat a lot); `cache_size` bounds the cache (0 = off).
- SharedProjection: one Linear per modality into S = 128 dims, both L2-normalized (seed: vision (B, 1024) and
  text (B, 768) -> (B, 128)). The vision input is WSRPN's `vision_features` (B, D): by default the
  objectness-weighted mean of the ROI features, so the contrastive gradient reaches the Gaussian centres and
  scales; model.vl_vision_source = "global" uses the mean patch feature instead (the ablation).

Shape letters: B batch, T tokens, H_t text hidden size, D WSRPN width, S shared width.
"""
import torch
import torch.nn.functional as F
from torch import nn

from hub.pretrained import load_hf


class TextEncoder(nn.Module):
    def __init__(self, name, max_length=64, freeze=True, cache_size=50_000, pretrained=True):
        super().__init__()
        from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel
        self.name, self.max_length, self.freeze, self.cache_size = name, max_length, freeze, cache_size
        if pretrained:
            self.tokenizer = load_hf(AutoTokenizer, name, system="wsrpn_vl")
            self.bert = load_hf(AutoModel, name, system="wsrpn_vl")
        else:
            self.tokenizer = load_hf(AutoTokenizer, "tiny-hub/bert-mlm")
            self.bert = BertModel(BertConfig(), add_pooling_layer=False)
        self.hidden_size = self.bert.config.hidden_size
        if freeze:
            self.bert.requires_grad_(False)
            self.bert.eval()
        self.cache = {}

    def train(self, mode=True):
        super().train(mode)
        if self.freeze:
            self.bert.eval()  # frozen = always without dropout
        return self

    def encode(self, texts):
        """texts: list of B str -> (B, H_t) masked mean pooling of the last hidden states."""
        device = next(self.bert.parameters()).device
        tokens = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                                return_tensors="pt").to(device)
        hidden = self.bert(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]).last_hidden_state  # (B, T, H_t)
        mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)  # (B, H_t)

    def forward(self, texts):
        if not self.freeze:
            return self.encode(texts)
        missing = list(dict.fromkeys(t for t in texts if t not in self.cache))
        with torch.no_grad():
            if missing:
                encoded = self.encode(missing).float()  # (M, H_t)
                if len(self.cache) + len(missing) > self.cache_size:
                    self.cache.clear()
                for text, row in zip(missing, encoded):
                    self.cache[text] = row
                if self.cache_size == 0:
                    rows = dict(zip(missing, encoded))
                    self.cache.clear()
                    return torch.stack([rows[t] for t in texts])
            return torch.stack([self.cache[t] for t in texts])  # (B, H_t)


class SharedProjection(nn.Module):
    """Vision (B, D) and text (B, H_t) -> L2-normalized (B, S) each."""

    def __init__(self, vision_dim, text_dim, shared_dim=128):
        super().__init__()
        self.vision_proj = nn.Linear(vision_dim, shared_dim)
        self.text_proj = nn.Linear(text_dim, shared_dim)

    def vision(self, vision_features):
        return F.normalize(self.vision_proj(vision_features.float()), p=2, dim=-1)  # (B, S)

    def text(self, text_features):
        return F.normalize(self.text_proj(text_features.float()), p=2, dim=-1)  # (B, S)

    def forward(self, vision_features, text_features):
        return self.vision(vision_features), self.text(text_features)


class WsrpnVL(nn.Module):
    """WSRPN plus the shared projection; with use_vl_branch false the projection is unused (and untrained)."""

    def __init__(self, wsrpn, text_dim, shared_dim=128):
        super().__init__()
        self.wsrpn = wsrpn
        self.shared_projection = SharedProjection(wsrpn.config.d_emb, text_dim, shared_dim)

    def no_weight_decay(self):
        return ["wsrpn." + name for name in self.wsrpn.no_weight_decay()]

    def forward(self, images):
        out = self.wsrpn(images)
        out["vision_emb"] = self.shared_projection.vision(out["vision_features"])  # (B, S)
        return out
