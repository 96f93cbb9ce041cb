"""Flan-T5 decoder reading the 11 visual tokens as its encoder output, LoRA r 16 / alpha 32 on q, k, v, o
(seed 001 §4.6), with prompt-guided decoding.

Design choices:
- The T5 encoder's blocks are bypassed: `encoder_outputs = projection(visual_tokens)`, then (with
  `normalize_visual`, both configs) scaled like a T5 encoder output: divided by the RMS of the sample's
  11 tokens taken together and multiplied by the weight of the T5 encoder's own final RMSNorm
  (pretrained, frozen with the rest of T5). Every T5 encoder output passes that norm (RMS ~1 per
  channel), so the decoder's cross-attention reads visual tokens at the scale it was pretrained on.
  One RMS over all 11 tokens, not one per token, so the gate's balance between the global token and the
  pooled tokens (seed §4.5) survives: a per-token norm would undo `gate * cls`. Without it
  (`normalize_visual=False`, the seed's text taken literally) the tiny default's visual tokens reached the
  decoder at a norm of 1.6-4 per token against ~11 for T5 encoder outputs (measured on a trained tiny
  model), so T5's unscaled cross-attention stayed flat and the visual part of the decoder's residual
  stream was small: the reports came out mostly "normal".
  The encoder blocks stay in the module (frozen, unused) so the checkpoint layout is the published one
  and the seed's ~248M count holds.
- LoRA goes into the decoder's self- and cross-attention q, k, v, o only (the encoder never runs, so
  adapters there would never receive a gradient). Names read `text_decoder.model.decoder...q.lora_A...`.
- `projection`: Linear(visual width -> d_model) when they differ, else no parameters at all.
- Prompt-guided decoding. A template holds the placeholder `{report}`; the text before it is the prompt.
  Training sequence = prompt tokens + report tokens + </s>; decoder input = <start> + that sequence
  shifted right; labels = the sequence with the prompt positions set to -100 (not in the loss).
  Generation starts from <start> + prompt (the `decoder_input_ids` of `generate`) and returns only the
  text after the prompt.
- The loss is computed here (cross-entropy with label smoothing, ignore_index -100) instead of inside
  T5, so label smoothing can change per phase.

Shape letters: B batch, V visual tokens (11), D visual width, E decoder width, T decoder length, W vocab.
"""
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

PLACEHOLDER = "{report}"
IGNORE = -100


@dataclass
class TextDecoderConfig:
    name: str = "tiny-hub/t5-span"          # google/flan-t5-base at paper scale
    pretrained: bool = True
    lora_rank: int = 16                     # seed §4.6
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_targets: list = field(default_factory=lambda: ["q", "k", "v", "o"])
    normalize_visual: bool = False          # True (both configs): visual tokens scaled like a T5 encoder output
                                            # (see above); False = checkpoints written before it existed
    architecture: dict = field(default_factory=dict)  # T5Config kwargs when pretrained=False


def prompt_prefix(template):
    """'... {report}' -> the prompt text before the placeholder (error when the placeholder is missing)."""
    if not isinstance(template, str) or PLACEHOLDER not in template:
        raise ValueError(f"data.prompt_template must contain the placeholder {PLACEHOLDER} (where the report "
                         f"goes), got {template!r}")
    if not template.rstrip().endswith(PLACEHOLDER):
        raise ValueError(f"data.prompt_template must end with {PLACEHOLDER}: the decoder writes the report "
                         f"after the prompt; got {template!r}")
    return template[:template.index(PLACEHOLDER)]


def build_t5(cfg):
    from transformers import T5Config, T5ForConditionalGeneration
    if cfg.pretrained:
        from hub.pretrained import load_hf
        return load_hf(T5ForConditionalGeneration, cfg.name, system="chexquery")
    arch = dict(cfg.architecture) or {"vocab_size": 640, "d_model": 128, "d_kv": 32, "d_ff": 256, "num_layers": 2,
                                      "num_heads": 4, "feed_forward_proj": "gated-gelu",
                                      "decoder_start_token_id": 0, "tie_word_embeddings": True}
    tie = arch.pop("tie_word_embeddings", True)
    config = T5Config(**arch)
    config.tie_word_embeddings = tie  # set after construction: this transformers version ignores the keyword
    model = T5ForConditionalGeneration(config)
    # the published layout: one shared input embedding for encoder and decoder (lm_head separate iff untied)
    model.encoder.embed_tokens.weight = model.shared.weight
    model.decoder.embed_tokens.weight = model.shared.weight
    return model


def load_tokenizer(cfg):
    from transformers import AutoTokenizer
    from hub.pretrained import load_hf
    return load_hf(AutoTokenizer, cfg.name, system="chexquery")


class TextDecoder(nn.Module):
    def __init__(self, cfg: TextDecoderConfig, visual_width):
        super().__init__()
        self.cfg = cfg
        self.model = build_t5(cfg)
        E = self.model.config.d_model
        self.projection = nn.Linear(visual_width, E) if visual_width != E else nn.Identity()
        if cfg.lora_rank > 0:
            from models.vision_encoder import add_lora
            targets = "|".join(cfg.lora_targets)
            add_lora(self.model, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout,
                     rf".*decoder\.block\.\d+\.layer\.\d+\.(SelfAttention|EncDecAttention)\.({targets})")

    def encoder_outputs(self, visual_tokens):
        from transformers.modeling_outputs import BaseModelOutput
        hidden = self.projection(visual_tokens)                                    # (B, V, E)
        if self.cfg.normalize_visual:
            norm = self.model.encoder.final_layer_norm
            rms = hidden.float().pow(2).mean(dim=(1, 2), keepdim=True).add(norm.variance_epsilon).sqrt()  # (B, 1, 1)
            hidden = norm.weight * (hidden / rms).to(hidden.dtype)                 # (B, V, E) RMS ~1 per channel
        return BaseModelOutput(last_hidden_state=hidden)

    def forward(self, visual_tokens, decoder_input_ids, decoder_attention_mask=None):
        """visual_tokens (B, V, D), decoder_input_ids (B, T) -> logits (B, T, W)."""
        out = self.model(encoder_outputs=self.encoder_outputs(visual_tokens), decoder_input_ids=decoder_input_ids,
                         decoder_attention_mask=decoder_attention_mask, use_cache=False)
        return out.logits  # (B, T, W)

    @torch.no_grad()
    def generate(self, visual_tokens, prompt_ids, generation):
        """visual_tokens (B, V, D), prompt_ids (L,) -> generated token ids (B, T') after the prompt.

        generation: dict with num_beams, no_repeat_ngram_size, length_penalty, early_stopping,
        min_length, max_length (report tokens, prompt not counted)."""
        B = visual_tokens.shape[0]
        start = self.model.config.decoder_start_token_id
        prefix = torch.tensor([start] + list(prompt_ids), device=visual_tokens.device)
        prefix = prefix.unsqueeze(0).expand(B, -1)                                   # (B, 1 + L)
        out = self.model.generate(encoder_outputs=self.encoder_outputs(visual_tokens), decoder_input_ids=prefix,
                                  num_beams=generation["num_beams"], do_sample=False,
                                  no_repeat_ngram_size=generation["no_repeat_ngram_size"],
                                  length_penalty=generation["length_penalty"],
                                  early_stopping=generation["early_stopping"],
                                  min_new_tokens=generation["min_length"], max_new_tokens=generation["max_length"])
        return out[:, prefix.shape[1]:]                                               # (B, T')


def encode_targets(tokenizer, reports, prompt, max_tokens, decoder_start_token_id):
    """reports (B str), prompt str -> decoder_input_ids (B, T), labels (B, T) with prompt = -100, mask (B, T).

    Reports are cut to `max_tokens` report tokens (+ </s>)."""
    prompt_ids = tokenizer(prompt, add_special_tokens=False).input_ids if prompt else []
    rows = []
    for report in reports:
        target = tokenizer(report, add_special_tokens=False).input_ids[:max_tokens] + [tokenizer.eos_token_id]
        sequence = prompt_ids + target
        labels = [IGNORE] * len(prompt_ids) + target
        rows.append(([decoder_start_token_id] + sequence[:-1], labels))
    T = max(len(inputs) for inputs, _ in rows)
    pad = tokenizer.pad_token_id
    decoder_input_ids = torch.full((len(rows), T), pad, dtype=torch.long)   # (B, T)
    labels = torch.full((len(rows), T), IGNORE, dtype=torch.long)           # (B, T)
    mask = torch.zeros((len(rows), T), dtype=torch.long)                    # (B, T)
    for i, (inputs, target) in enumerate(rows):
        decoder_input_ids[i, :len(inputs)] = torch.tensor(inputs)
        labels[i, :len(target)] = torch.tensor(target)
        mask[i, :len(inputs)] = 1
    return decoder_input_ids, labels, mask


def word_dropout(decoder_input_ids, labels, rate, replacement_id, generator=None):
    """Replace each report token among the decoder INPUTS by `replacement_id` with probability `rate`.

    decoder_input_ids, labels (B, T) as encode_targets returns them. The input at t + 1 is the target at t,
    so the report inputs are the positions t + 1 where labels[t] and labels[t + 1] are both in the loss (the
    second excludes the padding after a shorter report's </s>); the prompt, the start token, the padding and
    every target stay as they are. Training only: the decoder has to take more of each next token from the
    visual tokens and less from the report words before it."""
    if rate <= 0:
        return decoder_input_ids
    report_input = torch.zeros_like(labels, dtype=torch.bool)                      # (B, T)
    report_input[:, 1:] = (labels[:, :-1] != IGNORE) & (labels[:, 1:] != IGNORE)
    drop = report_input & (torch.rand(labels.shape, generator=generator) < rate)   # (B, T)
    return torch.where(drop, torch.full_like(decoder_input_ids, replacement_id), decoder_input_ids)


def generation_loss(logits, labels, label_smoothing=0.0):
    """logits (B, T, W), labels (B, T) with -100 = not in the loss -> mean token cross-entropy."""
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE,
                           label_smoothing=label_smoothing)
