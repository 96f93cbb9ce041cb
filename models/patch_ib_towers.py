"""Image and text towers of Patch-IB-CXR (seed 004 "Core Architecture"), one interface at both scales.

    ImageTower.forward(images (B, 3, H, W) in [0, 1], keep_index=None, bottleneck=None)
        -> (patch tokens (B, P, Dv), pooled (B, Dv)); pooled = the tower's own pooling: BiomedCLIP's final CLS
        token (what its trained head projects), the tiny tower's mean over patch tokens (it has no CLS).
        keep_index (B, K): run the transformer blocks on those patch tokens ONLY (EViT/EG-ViT gather inside
        the encoder), so the result (B, K, Dv) cannot depend on the dropped patches (Model E).
        bottleneck: a function (B, P, Dv) -> (B, P, Dv) applied to the patch embeddings (the conv's output,
        before the position embeddings and every block): the noise bottleneck of models/patch_ib.py.
    TextTower.tokenize(list[str]) -> (input_ids (B, L), attention_mask (B, L), word_mask (B, L))
    TextTower.forward(input_ids, attention_mask) -> (tokens (B, L, Dt), cls (B, Dt))

Scales:
- paper (`model.tower: biomedclip`): BiomedCLIP (ViT-B/16 + PubMedBERT) through open_clip, an OPTIONAL
  dependency (`pip install open_clip_torch`), imported only here and only when asked. Patch tokens are the
  196 final-LayerNorm tokens of `visual.trunk` (index 0 = CLS is left out); text tokens are
  `text.transformer(...).last_hidden_state`, CLS at position 0 (research/contrastive_vl.md §3).
- BiomedCLIP's trained global heads come with the towers (`heads`): `visual.head.proj` (Linear 768 -> 512,
  no bias), `text.proj` (MLP 768 -> 640 -> 512, GELU, no bias) and `logit_scale`, so a freshly built model
  scores image-text pairs exactly as the open_clip model. `model.pretrained=false` builds heads of the same
  shapes, randomly initialized. `model.image_tower` names the open_clip model (a hub id, or a local folder with
  open_clip_config.json and open_clip_pytorch_model.bin, the hub repo's layout); both towers come from it.
- tiny (`model.tower: tiny`): the vision tower of "tiny-hub/siglip" (a 2-layer ViT, 16-px patches, no CLS
  token; other image sizes through interpolate_pos_encoding) and "tiny-hub/bert-mlm" (a 2-layer BERT, CLS
  pooling like PubMedBERT), both loaded only through hub.pretrained.load_hf.
- Images arrive in [0, 1]; each tower applies its own normalization (SigLIP (x - 0.5) / 0.5, BiomedCLIP the
  OpenAI CLIP mean/std).
- word_mask marks the real word pieces (not CLS/SEP/padding): the queries of the local alignment head.

Shape letters: B batch, P patches, K kept patches, L text tokens, Dv / Dt tower widths.
"""
import json
import math
from pathlib import Path

import torch
from torch import nn

BIOMEDCLIP = "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def gather_tokens(tokens, keep_index):
    """tokens (B, P, D), keep_index (B, K) -> (B, K, D)"""
    return torch.gather(tokens, 1, keep_index.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


class TinyImageTower(nn.Module):
    """tiny-hub/siglip's vision transformer, patch tokens after post_layernorm (no pooling head)."""

    def __init__(self, name, image_size):
        super().__init__()
        from transformers import SiglipModel
        from hub.pretrained import load_hf
        siglip = load_hf(SiglipModel, name, system="patch_ib")
        self.vit = siglip.vision_model
        self.vit.head = None                      # the MAP pooling head is not used (patch tokens are)
        self.width = self.vit.config.hidden_size
        self.patch_size = self.vit.config.patch_size
        self.grid = image_size // self.patch_size
        self.interpolate = image_size != self.vit.config.image_size

    def forward(self, images, keep_index=None, bottleneck=None):
        embeddings = self.vit.embeddings
        x = embeddings.patch_embedding((images - 0.5) / 0.5).flatten(2).transpose(1, 2)   # (B, P, Dv)
        if bottleneck is not None:
            x = bottleneck(x)                                                      # (B, P, Dv)
        if self.interpolate:
            x = x + embeddings.interpolate_pos_encoding(x, images.shape[-2], images.shape[-1])
        else:
            x = x + embeddings.position_embedding(embeddings.position_ids)         # (B, P, Dv)
        if keep_index is not None:
            x = gather_tokens(x, keep_index)                                       # (B, K, Dv)
        for layer in self.vit.encoder.layers:
            x = layer(x, None)                                                     # (B, P or K, Dv)
        x = self.vit.post_layernorm(x)                                             # (B, P or K, Dv)
        return x, x.mean(1)                                                        # (B, P or K, Dv), (B, Dv)


class TinyTextTower(nn.Module):
    """tiny-hub/bert-mlm's BERT encoder; tokens of the last layer, CLS = position 0."""

    def __init__(self, name, max_length):
        super().__init__()
        from transformers import AutoTokenizer, BertModel
        from hub.pretrained import load_hf
        self.bert = load_hf(BertModel, name, system="patch_ib", add_pooling_layer=False)
        self.tokenizer = load_hf(AutoTokenizer, name, system="patch_ib")
        self.width = self.bert.config.hidden_size
        self.max_length = max_length

    def tokenize(self, texts):
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                             return_special_tokens_mask=True, return_tensors="pt")
        word_mask = enc["attention_mask"].bool() & ~enc["special_tokens_mask"].bool()   # (B, L)
        return enc["input_ids"], enc["attention_mask"], word_mask

    def forward(self, input_ids, attention_mask):
        tokens = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, L, Dt)
        return tokens, tokens[:, 0]


def import_open_clip():
    try:
        import open_clip
    except ImportError:
        raise ImportError("model.tower=biomedclip needs the optional package open_clip_torch "
                          "(pip install open_clip_torch==2.23.0, as the BiomedCLIP model card pins); "
                          "or run the tiny config configs/tiny/patch_ib.yaml") from None
    return open_clip


class BiomedClipTowers:
    """Loads BiomedCLIP (or another open_clip timm + HF-text model) once and hands out its two towers and heads.
    name: an `hf-hub:` id, or a local folder with open_clip_config.json + open_clip_pytorch_model.bin."""

    def __init__(self, name=BIOMEDCLIP):
        open_clip = import_open_clip()
        folder = Path(name)
        if (folder / "open_clip_config.json").is_file():   # offline: the hub repo's two files in a folder
            model_cfg = json.loads((folder / "open_clip_config.json").read_text())["model_cfg"]
            model_cfg["text_cfg"]["hf_model_pretrained"] = False                    # weights come from the .bin
            self.model = open_clip.CustomTextCLIP(**model_cfg)
            state = torch.load(folder / "open_clip_pytorch_model.bin", map_location="cpu", weights_only=True)
            state.pop("text.transformer.embeddings.position_ids", None)             # a buffer in older transformers
            self.model.load_state_dict(state)
            self.tokenizer = open_clip.tokenizer.HFTokenizer(model_cfg["text_cfg"]["hf_tokenizer_name"])
        else:
            self.model, _ = open_clip.create_model_from_pretrained(name)
            self.tokenizer = open_clip.get_tokenizer(name)
        self.model.eval()
        self.heads = {"image": self.model.visual.head.proj, "text": self.model.text.proj,
                      "logit_scale": float(self.model.logit_scale.detach())}


class BiomedClipImageTower(nn.Module):
    def __init__(self, towers):
        super().__init__()
        self.trunk = towers.model.visual.trunk
        self.width = self.trunk.embed_dim
        self.grid = self.trunk.patch_embed.grid_size[0]
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images, keep_index=None, bottleneck=None):
        x = self.trunk.patch_embed((images - self.mean) / self.std)                 # (B, P, Dv)
        if bottleneck is not None:
            x = bottleneck(x)                                                       # (B, P, Dv)
        x = self.trunk._pos_embed(x)                                                # (B, 1 + P, Dv) CLS first
        if keep_index is not None:
            x = torch.cat([x[:, :1], gather_tokens(x[:, 1:], keep_index)], dim=1)  # (B, 1 + K, Dv)
        x = self.trunk.norm(self.trunk.blocks(self.trunk.norm_pre(x)))              # (B, 1 + P or K, Dv)
        return x[:, 1:], self.trunk.forward_head(x, pre_logits=True)                # (B, P or K, Dv), (B, Dv) CLS


class BiomedClipTextTower(nn.Module):
    def __init__(self, towers, max_length):
        super().__init__()
        self.transformer = towers.model.text.transformer
        self.tokenizer = towers.tokenizer
        self.width = self.transformer.config.hidden_size
        self.max_length = max_length
        hf = self.tokenizer.tokenizer
        self.special_ids = torch.tensor(sorted(set(hf.all_special_ids)))

    def tokenize(self, texts):
        input_ids = self.tokenizer(list(texts), context_length=self.max_length)    # (B, L)
        attention_mask = (input_ids != self.tokenizer.tokenizer.pad_token_id).long()
        word_mask = attention_mask.bool() & ~torch.isin(input_ids, self.special_ids)
        return input_ids, attention_mask, word_mask

    def forward(self, input_ids, attention_mask):
        tokens = self.transformer(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return tokens, tokens[:, 0]                                                 # (B, L, Dt), (B, Dt)


class PaddedTokenizer:
    """open_clip's tokenizer interface over a transformers tokenizer: (texts, context_length) -> (B, L) ids,
    padded to context_length as open_clip pads; `.tokenizer` is the transformers tokenizer."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, texts, context_length):
        return self.tokenizer(list(texts), padding="max_length", truncation=True, max_length=context_length,
                              return_tensors="pt")["input_ids"]


class RandomBiomedClipTowers:
    """BiomedCLIP's two towers with random weights and nothing downloaded (`model.pretrained=false`: shape checks,
    the step benchmark): timm's vit_base_patch16_224 without pooling or classifier (BiomedCLIP's trunk) and a
    BERT-base-shaped encoder (transformers' BertConfig defaults: 12 layers, width 768, 30,522-token vocabulary),
    the tiny hub's WordPiece tokenizer padding to the context length, and BiomedCLIP's head shapes (image Linear
    768 -> 512 without bias, text MLP 768 -> 640 -> 512, logit scale log(1 / 0.07)), randomly initialized. The
    same attributes as open_clip's model."""

    def __init__(self, embed_dim=512, init_temperature=0.07):
        import timm
        from transformers import AutoTokenizer, BertConfig, BertModel
        from hub.pretrained import load_hf
        trunk = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0)   # pool: CLS token
        self.model = nn.Module()
        self.model.visual, self.model.text = nn.Module(), nn.Module()
        self.model.visual.trunk = trunk
        self.model.text.transformer = BertModel(BertConfig(), add_pooling_layer=False)
        self.tokenizer = PaddedTokenizer(load_hf(AutoTokenizer, "tiny-hub/bert-mlm", system="patch_ib"))
        width, hidden = trunk.embed_dim, (768 + embed_dim) // 2          # open_clip's hf_proj_type mlp
        self.heads = {"image": nn.Linear(width, embed_dim, bias=False),
                      "text": nn.Sequential(nn.Linear(768, hidden, bias=False), nn.GELU(),
                                            nn.Linear(hidden, embed_dim, bias=False)),
                      "logit_scale": math.log(1 / init_temperature)}


def build_towers(tower, image_name, text_name, image_size, max_length, pretrained=True, embed_dim=512,
                 init_temperature=0.07):
    """-> (image tower, text tower, heads) for model.tower = tiny | biomedclip; pretrained=False: biomedclip's
    shapes with random weights, offline. heads: None (tiny: the model builds new Linear heads) or a dict of the
    open_clip model's image head, text head (modules, of width embed_dim) and logit scale (a float)."""
    if tower == "tiny":
        if not pretrained:
            raise ValueError("model.pretrained=false builds the paper towers (model.tower=biomedclip) with random "
                             "weights; the tiny towers always load tiny-hub models")
        return TinyImageTower(image_name, image_size), TinyTextTower(text_name, max_length), None
    if tower == "biomedclip":
        if pretrained and text_name not in (None, image_name):      # the random build reads no name
            raise ValueError(f"model.tower=biomedclip takes both towers from one open_clip model "
                             f"(model.image_tower={image_name!r}); model.text_tower must be null or the same, "
                             f"got {text_name!r}")
        if image_size != 224:
            raise ValueError(f"model.tower=biomedclip takes 224-px images, got data.image_size={image_size}")
        towers = BiomedClipTowers(image_name) if pretrained else RandomBiomedClipTowers(embed_dim, init_temperature)
        width = towers.heads["image"].out_features
        if width != embed_dim:
            raise ValueError(f"model.embed_dim={embed_dim}, but the open_clip model's heads project to {width}")
        return BiomedClipImageTower(towers), BiomedClipTextTower(towers, max_length), towers.heads
    raise ValueError(f"model.tower must be tiny or biomedclip, got {tower!r}")
