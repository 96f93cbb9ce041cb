"""CheXbert (Smit et al., EMNLP 2020): a BERT report labeler, 14 CheXpert observations per report.

    model = load_chexbert(checkpoint, tokenizer=None, device="cpu")    # the published file, or tiny-hub/chexbert
    tokenizer = load_chexbert_tokenizer(name_or_path)                   # bert-base-uncased for the real one
    classes = model.label(reports, tokenizer, batch_size=32)            # (N, 14) long, CHEXPERT_LABELS order

Facts of the published code (stanfordmlgroup/CheXbert src/models/bert_labeler.py, src/bert_tokenizer.py,
src/label.py; the `f1chexbert` 0.0.2 package repeats them), written again here:
- Network: BertModel (bert-base-uncased sizes, pooler kept: its weights are in the file), the LAST layer's
  [CLS] state -> dropout 0.1 -> 14 linear heads. Heads 0..12 have 4 classes (0 blank, 1 positive,
  2 negative, 3 uncertain); head 13, "No Finding", has 2 (0 blank, 1 positive). Head order =
  data.labels.CHEXBERT_CONDITIONS (No Finding last); `label` returns CHEXPERT_LABELS order (No Finding
  first) through HEAD_OF_LABEL, by name.
- Checkpoint: torch.save({"epoch", "model_state_dict", "optimizer_state_dict"}) of an nn.DataParallel
  model, so every key starts with `module.` (`module.bert.*`, `module.linear_heads.K.*`). Files saved by
  transformers 3.x also hold the buffer `bert.embeddings.position_ids`, which today's BertModel does not
  store (f1chexbert loads with strict=False partly for this); that buffer is the only key skipped here.
- Text: strip, newlines -> spaces, runs of whitespace -> one space, strip; then the WordPiece tokenizer
  (bert-base-uncased lower-cases and strips accents itself); [CLS] tokens [SEP]; longer than 512 ids ->
  the first 511 + [SEP]; an empty report -> [CLS] [SEP]. Batches are right-padded with id 0 and an
  attention mask of ones over the real ids; each head's argmax is the class.

Design choices:
- The BertConfig is read off the weights (vocab, width, layers, feed-forward width, positions, token
  types); the number of attention heads is width / 64 (every released BERT: 768 -> 12) unless given.
  So the tiny-hub stand-in (same layout, width 128) loads through the same call as the real file.
- Strict loading: any missing or unexpected key (other than that buffer), or a head of another shape,
  raises ONE ChexbertLoadError naming the file and a few offending keys.
- `label` sorts the reports by length before batching (less padding), and returns them in input order.

Shape letters: B batch, L tokens, D width, N reports.
"""
import os
import pickle
import re
from dataclasses import dataclass

import torch
from torch import nn
from tqdm import tqdm
from transformers import BertConfig, BertModel, BertTokenizer

from data.labels import CHEXBERT_CLASSES, CHEXBERT_CONDITIONS, CHEXPERT_LABELS
from hub.pretrained import PretrainedLoadError, load_hf, resolve_pretrained

CHECKPOINT_FILENAME = "chexbert.pth"    # the name f1chexbert caches the published file under
MAX_TOKENS = 512                        # the published truncation (ids, with [CLS] and [SEP])
HEAD_DIM = 64                           # attention head width of every released BERT
SKIPPED_BUFFERS = ("bert.embeddings.position_ids",)   # stored by transformers 3.x, not by BertModel today
# CHEXPERT_LABELS[j] is predicted by head HEAD_OF_LABEL[j]
HEAD_OF_LABEL = [CHEXBERT_CONDITIONS.index(name) for name in CHEXPERT_LABELS]
BLANK, POSITIVE, NEGATIVE, UNCERTAIN = range(len(CHEXBERT_CLASSES))


class ChexbertLoadError(PretrainedLoadError):
    """A CheXbert checkpoint that is missing, unreadable or not in the published layout."""


@dataclass
class ChexbertConfig:
    bert: BertConfig             # the encoder (bert-base-uncased sizes for the published weights)
    dropout: float = 0.1         # on the [CLS] state before the heads, as published


class CheXbert(nn.Module):
    def __init__(self, config: ChexbertConfig):
        super().__init__()
        self.bert = BertModel(config.bert)          # with its pooler: the published state dict has it
        self.dropout = nn.Dropout(config.dropout)
        width = config.bert.hidden_size
        # 13 four-way heads (blank, positive, negative, uncertain), then No Finding (blank, positive)
        self.linear_heads = nn.ModuleList([nn.Linear(width, len(CHEXBERT_CLASSES)) for _ in range(13)]
                                          + [nn.Linear(width, 2)])

    def forward(self, input_ids, attention_mask):
        """input_ids, attention_mask (B, L) -> list of 14 logit tensors, (B, 4) x 13 then (B, 2)."""
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state   # (B, L, D)
        cls = self.dropout(hidden[:, 0])                                                             # (B, D)
        return [head(cls) for head in self.linear_heads]

    @torch.no_grad()
    def label(self, reports, tokenizer, batch_size=32, device=None, desc="CheXbert"):
        """reports: N strings -> (N, 14) LongTensor in CHEXPERT_LABELS order, CheXbert's coding
        (0 blank, 1 positive, 2 negative, 3 uncertain; No Finding only 0 / 1). device: the model is moved there
        (default: where it is)."""
        device = torch.device(device) if device is not None else next(self.parameters()).device
        self.to(device)
        max_tokens = min(MAX_TOKENS, self.bert.config.max_position_embeddings)
        ids = encode_reports(reports, tokenizer, max_tokens)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        was_training = self.training
        self.eval()
        classes = torch.zeros(len(ids), len(CHEXBERT_CONDITIONS), dtype=torch.long)    # (N, 14) head order
        starts = range(0, len(ids), batch_size)
        for start in tqdm(starts, desc=desc, unit="batch", disable=None):
            rows = order[start:start + batch_size]
            input_ids, attention_mask = pad_batch([ids[i] for i in rows], tokenizer.pad_token_id)   # (B, L)
            logits = self(input_ids.to(device), attention_mask.to(device))
            classes[rows] = torch.stack([head.argmax(dim=1) for head in logits], dim=1).cpu()       # (B, 14)
        self.train(was_training)
        return classes[:, HEAD_OF_LABEL]                                                  # (N, 14) CHEXPERT_LABELS


def clean_report_text(text):
    """CheXbert's cleaning before tokenizing: strip, newline -> space, whitespace runs -> one space, strip."""
    text = "" if text is None else str(text)
    return re.sub(r"\s+", " ", text.strip().replace("\n", " ")).strip()


def encode_reports(reports, tokenizer, max_tokens=MAX_TOKENS):
    """N report strings -> N lists of ids: [CLS] word pieces [SEP], cut to max_tokens as CheXbert cuts."""
    encoded = []
    for report in reports:
        tokens = tokenizer.tokenize(clean_report_text(report))
        ids = [tokenizer.cls_token_id] + tokenizer.convert_tokens_to_ids(tokens) + [tokenizer.sep_token_id]
        if len(ids) > max_tokens:
            ids = ids[:max_tokens - 1] + [tokenizer.sep_token_id]
        encoded.append(ids)
    return encoded


def pad_batch(id_lists, pad_id):
    """B lists of ids -> input_ids (B, L) right-padded with pad_id, attention_mask (B, L) 1 on real ids."""
    length = max(len(ids) for ids in id_lists)
    input_ids = torch.full((len(id_lists), length), pad_id, dtype=torch.long)                   # (B, L)
    attention_mask = torch.zeros((len(id_lists), length), dtype=torch.long)                     # (B, L)
    for row, ids in enumerate(id_lists):
        input_ids[row, :len(ids)] = torch.tensor(ids)
        attention_mask[row, :len(ids)] = 1
    return input_ids, attention_mask


# --------------------------------------------------------------------------------------------------
# loading

def checkpoint_file(checkpoint):
    """A checkpoint name -> the file: tiny-hub/chexbert -> <hub>/chexbert/chexbert.pth (built on first use);
    a folder -> <folder>/chexbert.pth; a file -> itself."""
    path = resolve_pretrained(str(checkpoint))
    return os.path.join(path, CHECKPOINT_FILENAME) if os.path.isdir(path) else path


def describe_keys(keys, limit=4):
    keys = sorted(keys)
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def config_from_state_dict(state_dict, num_attention_heads=None):
    """BertConfig sizes read off the weights (bert.* keys without `module.`)."""
    words = state_dict["bert.embeddings.word_embeddings.weight"]                   # (V, D)
    layers = {int(m.group(1)) for k in state_dict if (m := re.match(r"bert\.encoder\.layer\.(\d+)\.", k))}
    width = words.shape[1]
    return BertConfig(vocab_size=words.shape[0], hidden_size=width, num_hidden_layers=len(layers),
                      num_attention_heads=num_attention_heads or max(1, width // HEAD_DIM),
                      intermediate_size=state_dict["bert.encoder.layer.0.intermediate.dense.weight"].shape[0],
                      max_position_embeddings=state_dict["bert.embeddings.position_embeddings.weight"].shape[0],
                      type_vocab_size=state_dict["bert.embeddings.token_type_embeddings.weight"].shape[0],
                      pad_token_id=0)


def existing_checkpoint_file(checkpoint):
    """checkpoint_file(checkpoint), or ChexbertLoadError naming the path and what is expected there."""
    path = checkpoint_file(checkpoint)
    if not os.path.isfile(path):
        raise ChexbertLoadError(
            f"CheXbert weights not found: {path}. Expected the published CheXbert checkpoint (stanfordmlgroup/"
            f"CheXbert, f1chexbert's chexbert.pth: a dict with 'model_state_dict', keys 'module.bert.*' and "
            f"'module.linear_heads.0..13.*'), or use tiny-hub/chexbert at tiny scale.")
    return path


def read_state_dict(path):
    """The published file -> its model_state_dict with `module.` removed; ChexbertLoadError if it is not one."""
    path = existing_checkpoint_file(path)
    try:
        contents = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:      # a trusted local file the user named, holding more than tensors
        contents = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, OSError, EOFError) as error:
        raise ChexbertLoadError(f"{path}: not a readable torch checkpoint ({str(error).splitlines()[0]})") from None
    if not isinstance(contents, dict) or not isinstance(contents.get("model_state_dict"), dict):
        found = sorted(contents)[:6] if isinstance(contents, dict) else type(contents).__name__
        raise ChexbertLoadError(f"{path}: expected CheXbert's layout, a dict with 'model_state_dict' "
                                f"(keys 'module.bert.*', 'module.linear_heads.*'); found {found}")
    return {k.removeprefix("module."): v for k, v in contents["model_state_dict"].items()}


def load_chexbert(checkpoint, tokenizer=None, device="cpu", num_attention_heads=None):
    """The CheXbert labeler from a published-layout file (or a folder holding chexbert.pth, or
    tiny-hub/chexbert), in eval mode on `device`. tokenizer (optional, object or name): checked against the
    embedding rows. Raises ChexbertLoadError (one message: the file and the offending keys)."""
    path = existing_checkpoint_file(checkpoint)
    state_dict = read_state_dict(path)
    if "bert.embeddings.word_embeddings.weight" not in state_dict:
        raise ChexbertLoadError(f"{path}: no 'module.bert.embeddings.word_embeddings.weight' in model_state_dict; "
                                f"found {describe_keys(state_dict)}: not a CheXbert checkpoint")
    model = CheXbert(ChexbertConfig(config_from_state_dict(state_dict, num_attention_heads)))
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected and k not in SKIPPED_BUFFERS]
    reshaped = [f"{k} {tuple(v.shape)} (expected {tuple(expected[k].shape)})" for k, v in state_dict.items()
                if k in expected and v.shape != expected[k].shape]
    if missing or unexpected or reshaped:
        problems = [f"{what}: {describe_keys(keys)}" for what, keys in
                    (("missing", missing), ("unexpected", unexpected), ("wrong shape", reshaped)) if keys]
        raise ChexbertLoadError(f"{path} is not in CheXbert's layout (BertModel + 13 four-way heads + the two-way "
                                f"No Finding head, keys 'module.bert.*', 'module.linear_heads.0..13.*'): "
                                + "; ".join(problems))
    model.load_state_dict({k: v for k, v in state_dict.items() if k in expected})
    if tokenizer is not None:
        tokenizer = load_chexbert_tokenizer(tokenizer) if isinstance(tokenizer, (str, os.PathLike)) else tokenizer
        check_tokenizer(model, tokenizer, path)
    return model.to(device).eval()


def check_tokenizer(model, tokenizer, where):
    """ChexbertLoadError if the tokenizer has more ids than the checkpoint's embedding rows."""
    if len(tokenizer) > model.bert.config.vocab_size:
        raise ChexbertLoadError(f"{where}: the tokenizer has {len(tokenizer)} tokens but the checkpoint's embeddings "
                                f"only {model.bert.config.vocab_size} rows: not the tokenizer it was trained with")


def load_chexbert_tokenizer(name_or_path):
    """bert-base-uncased (the published one), a local folder, or tiny-hub/chexbert (its hub folder)."""
    return load_hf(BertTokenizer, str(name_or_path), system="chexquery")
