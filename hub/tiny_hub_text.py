"""Tiny text stand-ins of the hub: tokenizers, a BERT (masked LM), a T5 (span corruption), a SigLIP pair
(contrastive, and a second build with a 14-label BCE on its vision tower for CheXQuery).

Each `build_*` function trains one model on a phantom corpus for a fixed number of steps with a fixed
seed, saves it in its library's own format (`save_pretrained`: config.json + model.safetensors +
tokenizer.json/tokenizer_config.json) into `out_dir`, and returns (measurements, the trained model): a dict (its objective
on held-out phantoms before/after, beside a random-init twin). hub/tiny_hub.py orchestrates them.

Design choices:
- Tokenizers are wrapped in the transformers 5.x class of the family (`BertTokenizer` for WordPiece,
  `T5Tokenizer` for Unigram), so `AutoTokenizer.from_pretrained` rebuilds the same pipeline (normalizer,
  pre-tokenizer, [CLS]/[SEP] or </s> post-processing).
- The T5 and SigLIP pieces are counted on the corpus, whole words first, not learned by UnigramTrainer
  (counted_unigram_tokenizer says why: fragments, and another vocabulary in every process).
- The BERT pieces are counted the same way (counted_wordpiece_tokenizer; WordPieceTrainer's differ per process).
- The T5 tokenizer carries 100 sentinels <extra_id_0>..<extra_id_99> as T5 does; they are appended after
  the learned pieces (so <extra_id_0> has the smallest sentinel id, unlike Google's T5 vocab).
- SigLIP's own tokenizer class needs `sentencepiece` (not installed), so its text tower gets a Unigram
  `T5Tokenizer` without sentinels (SigLIP's real tokenizer is also a T5-style sentencepiece). SigLIP's text
  tower pools the LAST position and was trained without an attention mask on texts padded to a fixed
  length: always tokenize with padding="max_length", max_length=SIGLIP_TEXT_LENGTH, truncation=True.
- Model vocab sizes are fixed in the configs (the tokenizers may learn fewer pieces), so a random-init
  twin can be made without training a tokenizer.
- Images: SigLIP expects (x - 0.5) / 0.5 like the real SigLIP; the image size is a build parameter.
- The SigLIP build starts from the paper's logit scale/bias (log 10, -10), not HF's (0, 0).

Shape letters: B batch, L tokens, T target tokens, V vocabulary, D width.
"""
import math
import re
import string
from collections import Counter
from types import SimpleNamespace

import torch
from tokenizers import pre_tokenizers
from transformers import (BertConfig, BertForMaskedLM, BertTokenizer, SiglipConfig, SiglipModel,
                          T5Config, T5ForConditionalGeneration, T5Tokenizer)

BERT_VOCAB_SIZE = 512       # model rows; the WordPiece tokenizer learns at most this many
T5_VOCAB_SIZE = 640         # includes the 100 sentinels
T5_SENTINELS = 100
SIGLIP_VOCAB_SIZE = 512
SIGLIP_TEXT_LENGTH = 64     # fixed padded text length of the SigLIP text tower
TEXT_MAX_LENGTH = 128       # BERT/T5 inputs are truncated to this many tokens


# --------------------------------------------------------------------------------------------------
# tokenizers

def counted_wordpiece_tokenizer(texts, vocab_size=BERT_VOCAB_SIZE, model_max_length=TEXT_MAX_LENGTH):
    """Lower-cased WordPiece pieces counted on the corpus, wrapped as a transformers BertTokenizer.

    Vocabulary = [PAD] (id 0, CheXbert's PAD_IDX), [UNK], [CLS], [SEP], [MASK], every ASCII letter, digit and
    punctuation mark alone and as a "##" continuation (so any text tokenizes), then whole words as
    BertPreTokenizer splits them, by count (ties alphabetical) until `vocab_size` is full. The same pieces and
    ids in every process. Why not WordPieceTrainer: it breaks merge ties in hash order, so five trainings on
    the hub corpus gave five vocabularies, 41-55 pieces apart, and every build of tiny-hub/bert-mlm (and every
    number measured on it) differed."""
    split = pre_tokenizers.BertPreTokenizer()
    counts = Counter(word for text in texts for word, _ in split.pre_tokenize_str(text.lower()))
    characters = sorted(set(string.ascii_lowercase + string.digits + string.punctuation))
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    fallback = characters + ["##" + c for c in characters]
    budget = vocab_size - len(specials) - len(fallback)
    in_fallback = set(fallback)
    words = [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if w not in in_fallback][:budget]
    vocab = {token: i for i, token in enumerate(specials + fallback + words)}
    return BertTokenizer(vocab=vocab, do_lower_case=True, model_max_length=model_max_length)


T5_SPECIALS = ["<pad>", "</s>", "<unk>"]   # ids 0, 1, 2 of every Unigram vocabulary here


def t5_pre_tokenizer():
    """The pre-tokenizer T5Tokenizer installs: whitespace split, then "\u2581" before each word."""
    return pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(),
        pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)])


WORD_PIECE = re.compile(r"\u2581?\w+|\u2581|[^\w\u2581]")


def counted_unigram_tokenizer(reports, vocab_size, extra_ids, model_max_length):
    """Unigram pieces counted on the corpus (whole words first), wrapped as a transformers T5Tokenizer.

    Why not UnigramTrainer: on the phantom corpus (~260 distinct words) the `tokenizers` trainer keeps only
    ~410-510 pieces, mostly characters and word fragments ("Findings" -> _ F i nding s): 2.8 tokens per word,
    although the budget has room for every word. Pieces here: "\u2581word" and punctuation, as the
    pre-tokenizer leaves them, by count (score = log relative frequency) until the budget is full; then every
    character seen plus ASCII letters, digits and punctuation, alone and after "\u2581", scored below any
    word, so any text still tokenizes. Vocabulary = [<pad>, </s>, <unk>, pieces...] + `extra_ids` sentinels.
    The trainer's vocabulary also differs per process (same pieces, but its required characters get scores 1e-4
    apart in hash order and its float sums differ by 1e-14); counted pieces are the same in every process."""
    pre = t5_pre_tokenizer()
    counts, characters = Counter(), set()
    for report in reports:
        for word, _ in pre.pre_tokenize_str(report):
            counts.update(WORD_PIECE.findall(word))
            characters.update(word.replace("\u2581", ""))
    characters |= set(string.ascii_letters + string.digits + string.punctuation)   # a small corpus lacks some
    fallback = sorted({"\u2581"} | characters | {"\u2581" + c for c in characters})   # sorted: fixed ids
    budget = vocab_size - extra_ids - len(T5_SPECIALS) - len(fallback)
    if budget < 0:
        raise ValueError(f"counted_unigram_tokenizer: {len(fallback)} character pieces do not fit {vocab_size} rows")
    in_fallback = set(fallback)
    words = [(piece, n) for piece, n in counts.most_common() if piece not in in_fallback][:budget]
    total = sum(counts.values())
    pieces = [(piece, math.log(n / total)) for piece, n in words]
    floor = min((score for _, score in pieces), default=0.0) - 10.0
    pieces += [(piece, math.log(counts[piece] / total) if counts[piece] else floor) for piece in fallback]
    return T5Tokenizer(vocab=[(token, 0.0) for token in T5_SPECIALS] + pieces, extra_ids=extra_ids,
                       model_max_length=model_max_length)


def check_vocab_fits(tokenizer, vocab_size, what):
    if len(tokenizer) > vocab_size:
        raise ValueError(f"{what}: tokenizer has {len(tokenizer)} tokens but the model has {vocab_size} rows")


# --------------------------------------------------------------------------------------------------
# tiny configs (random_init_twin uses these too)

def bert_config():
    return BertConfig(vocab_size=BERT_VOCAB_SIZE, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=256, max_position_embeddings=TEXT_MAX_LENGTH, pad_token_id=0)


def t5_config():
    # Flan-T5 style gated-GELU feed-forward; tied embeddings (transformers 5.x always ties for T5)
    return T5Config(vocab_size=T5_VOCAB_SIZE, d_model=128, d_kv=32, d_ff=256, num_layers=2,
                    num_decoder_layers=2, num_heads=4, feed_forward_proj="gated-gelu", dropout_rate=0.0,
                    pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)


def siglip_config(image_size=96):
    text = dict(vocab_size=SIGLIP_VOCAB_SIZE, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=SIGLIP_TEXT_LENGTH, projection_size=128,
                pad_token_id=0, bos_token_id=None, eos_token_id=1)
    vision = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                  image_size=image_size, patch_size=16, num_channels=3)
    return SiglipConfig(text_config=text, vision_config=vision)


# --------------------------------------------------------------------------------------------------
# objectives

def mask_tokens_for_mlm(input_ids, special_mask, tokenizer, generator, probability=0.15):
    """BERT masking: pick 15% of non-special tokens; 80% -> [MASK], 10% -> random, 10% kept.

    input_ids, special_mask: (B, L). Returns (masked inputs (B, L), labels (B, L) with -100 elsewhere)."""
    chosen = (torch.rand(input_ids.shape, generator=generator) < probability) & ~special_mask  # (B, L)
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, -100))
    draw = torch.rand(input_ids.shape, generator=generator)                                       # (B, L)
    random_ids = torch.randint(len(tokenizer.all_special_ids), len(tokenizer), input_ids.shape,
                               generator=generator)
    masked = input_ids.clone()
    masked[chosen & (draw < 0.8)] = tokenizer.mask_token_id
    swap = chosen & (draw >= 0.8) & (draw < 0.9)
    masked[swap] = random_ids[swap]
    return masked, labels


def mlm_batch(tokenizer, reports, generator):
    encoded = tokenizer(reports, padding=True, truncation=True, max_length=TEXT_MAX_LENGTH,
                        return_special_tokens_mask=True, return_tensors="pt")
    special = encoded["special_tokens_mask"].bool()                                              # (B, L)
    masked, labels = mask_tokens_for_mlm(encoded["input_ids"], special, tokenizer, generator)
    return dict(input_ids=masked, attention_mask=encoded["attention_mask"], labels=labels)


def random_span_mask(length, generator, noise_density=0.15, mean_span_length=3.0):
    """T5 noise mask over `length` tokens: round(length * density) noise tokens in spans of mean length
    3, alternating kept/noise segments, starting with a kept segment. Returns a (length,) bool tensor."""
    num_noise = min(max(1, round(length * noise_density)), length - 1)
    num_spans = max(1, round(num_noise / mean_span_length))
    num_spans = min(num_spans, num_noise, length - num_noise)

    def split(total, parts):  # `total` into `parts` positive integers, uniformly at random
        cuts = torch.randperm(total - 1, generator=generator)[:parts - 1].sort().values + 1
        edges = torch.cat([torch.tensor([0]), cuts, torch.tensor([total])])
        return (edges[1:] - edges[:-1]).tolist()

    mask = []
    for kept, noise in zip(split(length - num_noise, num_spans), split(num_noise, num_spans)):
        mask += [False] * kept + [True] * noise
    return torch.tensor(mask)


def span_corruption_example(token_ids, sentinel_ids, eos_id, generator):
    """token_ids: list of ids without </s>. Each noise span -> one sentinel in the input; the target lists
    sentinel, span tokens, ..., </s>. Returns (input ids, target ids) as lists."""
    noise = random_span_mask(len(token_ids), generator).tolist()
    inputs, targets, span = [], [], -1
    for position, token in enumerate(token_ids):
        if noise[position]:
            if position == 0 or not noise[position - 1]:
                span += 1
                inputs.append(sentinel_ids[span])
                targets.append(sentinel_ids[span])
            targets.append(token)
        else:
            inputs.append(token)
    return inputs + [eos_id], targets + [eos_id]


def span_corruption_batch(tokenizer, reports, generator):
    sentinel_ids = tokenizer.convert_tokens_to_ids([f"<extra_id_{i}>" for i in range(T5_SENTINELS)])
    encoded = tokenizer(reports, add_special_tokens=False, truncation=True, max_length=TEXT_MAX_LENGTH - 1)
    pairs = [span_corruption_example(ids, sentinel_ids, tokenizer.eos_token_id, generator)
             for ids in encoded["input_ids"]]
    input_ids = pad_lists([p[0] for p in pairs], tokenizer.pad_token_id)                          # (B, L)
    labels = pad_lists([p[1] for p in pairs], -100)                                               # (B, T)
    return dict(input_ids=input_ids, attention_mask=(input_ids != tokenizer.pad_token_id).long(), labels=labels)


def pad_lists(lists, value):
    out = torch.full((len(lists), max(len(x) for x in lists)), value, dtype=torch.long)
    for row, values in enumerate(lists):
        out[row, :len(values)] = torch.tensor(values)
    return out


def siglip_batch(tokenizer, reports, images):
    """images: (B, 3, H, W) in [0, 1] -> SigLIP pixel values (x - 0.5) / 0.5; texts padded to 64."""
    encoded = tokenizer(reports, padding="max_length", truncation=True, max_length=SIGLIP_TEXT_LENGTH,
                        return_tensors="pt")
    return dict(input_ids=encoded["input_ids"], pixel_values=siglip_pixels(images))


def siglip_pixels(images):
    """(B, 3, H, W) in [0, 1] -> SigLIP's (x - 0.5) / 0.5."""
    return (images - 0.5) / 0.5


def siglip_tokenizer(corpus, name):
    tokenizer = counted_unigram_tokenizer(corpus["reports"], SIGLIP_VOCAB_SIZE, 0, SIGLIP_TEXT_LENGTH)
    check_vocab_fits(tokenizer, SIGLIP_VOCAB_SIZE, name)
    return tokenizer


def siglip_batches(tokenizer, data, with_labels=False):
    """The (idx, gen) -> batch function of the SigLIP builds: return_loss=True, or the 14 labels for
    SiglipWithLabelHead."""
    def batch(idx, gen):
        out = siglip_batch(tokenizer, [data["reports"][i] for i in idx], data["images"][idx])
        return dict(out, labels=data["labels"][idx]) if with_labels else dict(out, return_loss=True)
    return batch


# --------------------------------------------------------------------------------------------------
# training and evaluation (shared by the three text-side models)

def train_steps(model, make_batch, num_items, steps, batch_size, lr, seed, progress=None):
    """AdamW with linear warmup (10%) then cosine decay; batches drawn from a seeded permutation."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    order, cursor, warmup = torch.randperm(num_items, generator=generator), 0, max(1, steps // 10)
    model.train()
    for step in range(steps):
        if cursor + batch_size > num_items:
            order, cursor = torch.randperm(num_items, generator=generator), 0
        indices = order[cursor:cursor + batch_size].tolist()
        cursor += batch_size
        step_lr = lr * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / steps))
        for group in optimizer.param_groups:
            group["lr"] = step_lr
        loss = model(**make_batch(indices, generator)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if progress is not None:
            progress.set_postfix(loss=f"{loss.item():.3f}")
            progress.update(1)
    model.eval()
    return loss.item()


@torch.no_grad()
def evaluate_loss(model, make_batch, num_items, batch_size, seed=1234):
    """Mean loss over fixed batches; `make_batch` draws its randomness (masks, spans) from a generator
    seeded the same way for every model, so trained and twin see identical inputs."""
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    losses = [model(**make_batch(list(range(start, min(start + batch_size, num_items))), generator)).loss.item()
              for start in range(0, num_items - batch_size + 1, batch_size)]
    return sum(losses) / len(losses)


# --------------------------------------------------------------------------------------------------
# builders

def pretrain_text_model(out_dir, model, twin, tokenizer, make_batch, objective, corpus, held_out, steps, seed,
                        progress):
    """The text stand-ins' shared recipe: held-out loss of a random twin and of the model, `steps` steps on the
    corpus reports, held-out loss again, then model + tokenizer saved with save_pretrained.
    make_batch(tokenizer, reports, generator) -> model keyword arguments (with labels)."""
    def batches(data):
        return lambda idx, gen: make_batch(tokenizer, [data["reports"][i] for i in idx], gen)
    loss_twin = evaluate_loss(twin, batches(held_out), len(held_out["reports"]), 32)
    loss_before = evaluate_loss(model, batches(held_out), len(held_out["reports"]), 32)
    train_steps(model, batches(corpus), len(corpus["reports"]), steps, 32, 2e-3, seed, progress)
    loss_after = evaluate_loss(model, batches(held_out), len(held_out["reports"]), 32)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return dict(objective=objective, random_twin=loss_twin, before=loss_before, after=loss_after,
                vocab=len(tokenizer)), model


def build_bert_mlm(out_dir, corpus, held_out, steps=400, seed=0, progress=None):
    torch.manual_seed(seed)
    tokenizer = counted_wordpiece_tokenizer(corpus["reports"])
    check_vocab_fits(tokenizer, BERT_VOCAB_SIZE, "tiny-hub/bert-mlm")
    model, twin = BertForMaskedLM(bert_config()), BertForMaskedLM(bert_config())
    return pretrain_text_model(out_dir, model, twin, tokenizer, mlm_batch, "masked-LM cross-entropy", corpus,
                               held_out, steps, seed, progress)


def build_t5_span(out_dir, corpus, held_out, steps=400, seed=0, progress=None):
    torch.manual_seed(seed)
    tokenizer = counted_unigram_tokenizer(corpus["reports"], T5_VOCAB_SIZE, T5_SENTINELS, TEXT_MAX_LENGTH)
    check_vocab_fits(tokenizer, T5_VOCAB_SIZE, "tiny-hub/t5-span")
    model, twin = T5ForConditionalGeneration(t5_config()), T5ForConditionalGeneration(t5_config())
    return pretrain_text_model(out_dir, model, twin, tokenizer, span_corruption_batch,
                               "span-corruption cross-entropy", corpus, held_out, steps, seed, progress)


def new_siglip(image_size):
    model = SiglipModel(siglip_config(image_size))
    with torch.no_grad():   # SigLIP paper init: t' = log 10, b = -10
        model.logit_scale.fill_(math.log(10.0))
        model.logit_bias.fill_(-10.0)
    return model


@torch.no_grad()
def image_to_text_top1(model, tokenizer, data, batch_size=32):
    """Fraction of images whose own report scores highest within its batch (chance = 1 / batch_size)."""
    hits, total = 0, 0
    for start in range(0, len(data["reports"]) - batch_size + 1, batch_size):
        idx = range(start, start + batch_size)
        out = model(**siglip_batch(tokenizer, [data["reports"][i] for i in idx], data["images"][start:start + batch_size]))
        hits += (out.logits_per_image.argmax(dim=1) == torch.arange(batch_size)).sum().item()
        total += batch_size
    return hits / total


def build_siglip(out_dir, corpus, held_out, steps=300, seed=0, progress=None, image_size=96):
    torch.manual_seed(seed)
    tokenizer = siglip_tokenizer(corpus, "tiny-hub/siglip")
    model, twin = new_siglip(image_size), SiglipModel(siglip_config(image_size))

    held_batches = siglip_batches(tokenizer, held_out)
    loss_twin = evaluate_loss(twin, held_batches, len(held_out["reports"]), 32)
    loss_before = evaluate_loss(model, held_batches, len(held_out["reports"]), 32)
    top1_before = image_to_text_top1(model, tokenizer, held_out)
    train_steps(model, siglip_batches(tokenizer, corpus), len(corpus["reports"]), steps, 32, 1e-3, seed, progress)
    loss_after = evaluate_loss(model, held_batches, len(held_out["reports"]), 32)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return dict(objective="sigmoid contrastive loss (batch 32)", random_twin=loss_twin, before=loss_before,
                after=loss_after, i2t_top1_before=top1_before,
                i2t_top1_after=image_to_text_top1(model, tokenizer, held_out), vocab=len(tokenizer)), model


class SiglipWithLabelHead(torch.nn.Module):
    """SigLIP plus a linear 14-label head on its vision tower, for the label-supervised build only (the head
    is not saved). The head reads [pooled; mean patch; max patch] (3 D): the max keeps a finding that fills
    one patch. forward(...).loss = sigmoid contrastive loss + label_weight * 14-label BCE."""

    def __init__(self, siglip, num_labels, label_weight):
        super().__init__()
        self.siglip, self.label_weight = siglip, label_weight
        self.head = torch.nn.Linear(3 * siglip.config.vision_config.hidden_size, num_labels)

    def label_logits(self, vision_output):
        tokens = vision_output.last_hidden_state                                        # (B, P, D)
        features = torch.cat([vision_output.pooler_output, tokens.mean(1), tokens.amax(1)], dim=-1)
        return self.head(features)                                                      # (B, C)

    def forward(self, input_ids, pixel_values, labels):
        out = self.siglip(input_ids=input_ids, pixel_values=pixel_values, return_loss=True)
        bce = torch.nn.functional.binary_cross_entropy_with_logits(
            self.label_logits(out.vision_model_output), labels)
        return SimpleNamespace(loss=out.loss + self.label_weight * bce)


@torch.no_grad()
def label_head_auroc(model, data, batch_size=64):
    """Macro-AUROC of the build's label head on `data` (held-out phantoms)."""
    from hub.tiny_hub_vision import macro_auroc
    model.eval()
    logits = torch.cat([model.label_logits(model.siglip.vision_model(
        pixel_values=siglip_pixels(data["images"][s:s + batch_size])))
        for s in range(0, len(data["images"]), batch_size)])
    return macro_auroc(logits, data["labels"])


def build_siglip_cxr(out_dir, corpus, held_out, steps=800, seed=0, progress=None, image_size=96,
                     label_weight=4.0):
    """tiny-hub/siglip-cxr: the SigLIP pair trained with its sigmoid loss plus a 14-label BCE on the vision
    tower (the hub phantoms' own label vectors), as a chest-X-ray-adapted vision tower. The contrastive-only
    tower holds the large findings but hardly the small ones (docs/chexquery.md); CheXQuery's tiny default
    uses this one, Patch-IB keeps tiny-hub/siglip."""
    torch.manual_seed(seed)
    tokenizer = siglip_tokenizer(corpus, "tiny-hub/siglip-cxr")
    num_labels = corpus["labels"].shape[1]
    model = SiglipWithLabelHead(new_siglip(image_size), num_labels, label_weight)
    twin = SiglipWithLabelHead(SiglipModel(siglip_config(image_size)), num_labels, label_weight)

    held_batches = siglip_batches(tokenizer, held_out, with_labels=True)
    loss_twin = evaluate_loss(twin, held_batches, len(held_out["reports"]), 32)
    loss_before = evaluate_loss(model, held_batches, len(held_out["reports"]), 32)
    train_steps(model, siglip_batches(tokenizer, corpus, with_labels=True), len(corpus["reports"]), steps, 32, 1e-3,
                seed, progress)
    loss_after = evaluate_loss(model, held_batches, len(held_out["reports"]), 32)
    model.siglip.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return dict(objective=f"sigmoid contrastive + {label_weight:g} x 14-label BCE (batch 32)", random_twin=loss_twin,
                before=loss_before, after=loss_after,
                i2t_top1_after=image_to_text_top1(model.siglip, tokenizer, held_out),
                auroc_label_head=label_head_auroc(model, held_out), vocab=len(tokenizer)), model.siglip
