"""tiny-hub/chexbert: a small CheXbert (BERT + 14 heads) trained on phantom reports, in the published layout.

The folder holds `chexbert.pth` = {"model_state_dict": {"module.bert.*", "module.linear_heads.0..13.*"}}
(the published file also carries "epoch" and "optimizer_state_dict", which loaders ignore) and the
tokenizer files (BertTokenizer: vocab.txt, tokenizer.json, tokenizer_config.json). models/chexbert.py
loads it with the same `load_chexbert` call as the real weights; `label` gives 4-way classes per head.

Targets (what generated the report, not a labeler's guess), per CheXbert head (data.labels.CHEXBERT_CONDITIONS):
- positive: the phantom's own 14-label vector (its findings through data/phantom.py's label rules);
- negative: the report's negation sentences, recognised as WHOLE sentences of the generator's own lists
  (data/phantom_report.NEGATIONS, HEART_NORMAL -> Cardiomegaly, MEDIASTINUM_NORMAL -> Enlarged
  Cardiomediastinum), so no cue rule is involved; plus inserted negations of conditions the phantom
  never negates (EXTRA_NEGATIONS: atelectasis, pneumonia, opacity, pleural thickening);
- uncertain: phantom reports have no hedges (they are written for a rule labeler), so the build edits
  them: a negation sentence is replaced by a hedged mention of its condition ("A small pneumothorax
  cannot be excluded."), or a hedge is inserted for a condition the report does not mention (HEDGES);
- blank otherwise; No Finding (2-way): the phantom's No Finding, made blank by an inserted hedge
  (CheXpert: No Finding needs no positive or uncertain observation other than support devices).
Edits are drawn per batch from the build's generator (train) or a fixed seed (held-out measurement).

Design choices:
- Vocabulary: the corpus's and the templates' whole words by count, plus every ASCII letter, digit and
  punctuation mark alone and as a "##" continuation, so any text tokenizes; sorted, so every build in
  every process has the same ids (tiny_hub_text.counted_wordpiece_tokenizer, shared with tiny-hub/bert-mlm).
- BERT: 2 layers, width 128, 2 heads (width / 64, the rule models/chexbert.py infers the head count by),
  feed-forward 256, no dropout while training (bert_config says why), 512 positions (the published
  512-token cut applies unchanged). Trained from scratch: the published CheXbert starts from
  bert-base-uncased, but starting from tiny-hub/bert-mlm would tie this build to that one's vocabulary.
- The training module here repeats models/chexbert.CheXbert's layout (hub/ may not import models/,
  .importlinter); tests/test_chexbert.py loads the saved file through models.chexbert.load_chexbert, whose
  strict key check is the contract between the two.
- Encoding: tokenizer(texts, truncation=True, max_length=512) gives the ids CheXbert's own encoding gives
  ([CLS] pieces [SEP], first 511 + [SEP]; its whitespace clean-up does not change BERT word pieces).
- Loss: the mean over the 14 heads of the cross-entropy (the published training weighted classes; here
  the blank class is not rare enough to need it).

Shape letters: B batch, L tokens, D width, H heads (14).
"""
import re
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn
from transformers import BertConfig, BertModel

from data import phantom_report
from data.labels import CHEXBERT_CONDITIONS, CHEXPERT_LABELS
from hub.tiny_hub_text import check_vocab_fits, counted_wordpiece_tokenizer, evaluate_loss, train_steps

CHECKPOINT_FILENAME = "chexbert.pth"     # models/chexbert.py reads this name inside the folder
VOCAB_SIZE = 512
MAX_TOKENS = 512
BLANK, POSITIVE, NEGATIVE, UNCERTAIN = 0, 1, 2, 3
HEAD = {name: index for index, name in enumerate(CHEXBERT_CONDITIONS)}
NO_FINDING = HEAD["No Finding"]
LABEL_TO_HEAD = [HEAD[name] for name in CHEXPERT_LABELS]      # phantom label j -> head LABEL_TO_HEAD[j]
HEDGE_PROBABILITY = 0.5           # a report gets one uncertain edit
NEGATION_PROBABILITY = 0.25       # a report gets one extra negation
SIDES, ZONES = ("right", "left"), ("upper", "middle", "lower")

# the generator's negation sentences -> the conditions they negate
NEGATED_BY = {"pneumothorax+pleural effusion": ["Pneumothorax", "Pleural Effusion"],
              "pneumothorax": ["Pneumothorax"], "pleural effusion": ["Pleural Effusion"],
              "consolidation": ["Consolidation"], "edema": ["Edema"], "nodule": ["Lung Lesion"],
              "fracture": ["Fracture"]}
NEGATION_SENTENCES = {sentence: NEGATED_BY[group] for group, sentences in phantom_report.NEGATIONS.items()
                      for sentence in sentences}
NEGATION_SENTENCES.update({s: ["Cardiomegaly"] for s in phantom_report.HEART_NORMAL})
NEGATION_SENTENCES.update({s: ["Enlarged Cardiomediastinum"] for s in phantom_report.MEDIASTINUM_NORMAL})

HEDGES = {
    "Enlarged Cardiomediastinum": ["The mediastinum may be mildly widened.", "Possible widening of the mediastinum.",
                                   "Questionable mediastinal widening."],
    "Cardiomegaly": ["The heart may be mildly enlarged.", "Possible mild cardiomegaly.",
                     "Borderline heart size, cardiomegaly cannot be excluded."],
    "Lung Opacity": ["Possible subtle opacity in the {side} {zone} zone.",
                     "A faint opacity cannot be excluded in the {side} {zone} zone."],
    "Lung Lesion": ["Possible small pulmonary nodule in the {side} {zone} zone.",
                    "A small nodule cannot be excluded in the {side} {zone} zone."],
    "Edema": ["Possible mild pulmonary edema.", "Mild pulmonary edema cannot be excluded.",
              "Questionable early pulmonary edema."],
    "Consolidation": ["Possible consolidation in the {side} {zone} zone.",
                      "Consolidation cannot be excluded in the {side} {zone} zone."],
    "Pneumonia": ["Possible early pneumonia in the {side} {zone} zone.",
                  "Infection cannot be excluded in the {side} {zone} zone."],
    "Atelectasis": ["Possible {side} basilar atelectasis.", "Atelectasis cannot be excluded at the {side} base."],
    "Pneumothorax": ["A small pneumothorax cannot be excluded.", "Possible small {side} apical pneumothorax.",
                     "Questionable {side} pneumothorax."],
    "Pleural Effusion": ["Possible small {side} pleural effusion.", "A small pleural effusion cannot be excluded.",
                         "Questionable trace {side} pleural effusion."],
    "Pleural Other": ["Possible {side} pleural thickening.",
                      "Pleural thickening cannot be excluded along the {side} chest wall."],
    "Fracture": ["Possible nondisplaced {side} rib fracture.", "A subtle {side} rib fracture cannot be excluded."],
}
EXTRA_NEGATIONS = {"Atelectasis": ["No atelectasis.", "There is no atelectasis."],
                   "Pneumonia": ["No evidence of pneumonia.", "There is no pneumonia."],
                   "Lung Opacity": ["No focal opacity.", "There is no focal opacity."],
                   "Pleural Other": ["No pleural thickening.", "There is no pleural thickening."]}
REPORT_PATTERN = re.compile(r"^Findings: (.*) \| Impression: (.*)$", re.DOTALL)
SENTENCE_BREAK = re.compile(r"(?<=\.) +(?=[A-Z0-9])")


# --------------------------------------------------------------------------------------------------
# reports with 4-way targets

def split_report(report):
    """'Findings: s1 s2 | Impression: t1' -> ([s1, s2], [t1])."""
    match = REPORT_PATTERN.match(report)
    if match is None:
        raise ValueError(f"tiny-hub/chexbert: not a phantom report (Findings: ... | Impression: ...): {report[:80]!r}")
    return [SENTENCE_BREAK.split(part.strip()) for part in match.groups()]


def join_report(findings, impression):
    return "Findings: " + " ".join(findings) + " | Impression: " + " ".join(impression)


def fill(template, rng):
    return template.format(side=SIDES[rng.integers(len(SIDES))], zone=ZONES[rng.integers(len(ZONES))])


def targets_of(labels, sentences, inserted):
    """labels (14,) phantom vector in CHEXPERT_LABELS order, the findings sentences, inserted {sentence:
    (condition, class)} -> (14,) long classes in head order (positive > uncertain > negative > blank)."""
    targets = torch.full((len(CHEXBERT_CONDITIONS),), BLANK, dtype=torch.long)
    rank = {BLANK: 0, NEGATIVE: 1, UNCERTAIN: 2, POSITIVE: 3}

    def put(head, value):
        if rank[value] > rank[int(targets[head])]:
            targets[head] = value
    for j, value in enumerate(labels.tolist()):
        if value == 1 and CHEXPERT_LABELS[j] != "No Finding":
            put(LABEL_TO_HEAD[j], POSITIVE)
    for sentence in sentences:
        for name in NEGATION_SENTENCES.get(sentence, []):
            put(HEAD[name], NEGATIVE)
        if sentence in inserted:
            name, value = inserted[sentence]
            put(HEAD[name], value)
    hedged = any(targets[h] == UNCERTAIN for name, h in HEAD.items() if name not in ("Support Devices", "No Finding"))
    targets[NO_FINDING] = POSITIVE if labels[CHEXPERT_LABELS.index("No Finding")] == 1 and not hedged else BLANK
    return targets


def edit_report(report, labels, rng, hedge_probability=HEDGE_PROBABILITY, negation_probability=NEGATION_PROBABILITY):
    """One phantom report (+ its 14 labels) -> (edited report, (14,) head-order targets). rng: np Generator."""
    findings, impression = split_report(report)
    inserted = {}

    def unmentioned(pool):
        targets = targets_of(labels, findings, inserted)
        return [name for name in pool if targets[HEAD[name]] == BLANK]
    if rng.random() < hedge_probability:
        negations = [i for i, s in enumerate(findings) if s in NEGATION_SENTENCES]
        if negations and rng.random() < 0.5:      # a negation becomes a hedge of one of its conditions
            i = negations[rng.integers(len(negations))]
            names = NEGATION_SENTENCES[findings[i]]
            name = names[rng.integers(len(names))]
            findings[i] = fill(HEDGES[name][rng.integers(len(HEDGES[name]))], rng)
            inserted[findings[i]] = (name, UNCERTAIN)
        elif candidates := unmentioned(HEDGES):   # a hedge of a condition the report does not mention
            name = candidates[rng.integers(len(candidates))]
            sentence = fill(HEDGES[name][rng.integers(len(HEDGES[name]))], rng)
            findings.insert(int(rng.integers(len(findings) + 1)), sentence)
            inserted[sentence] = (name, UNCERTAIN)
    if rng.random() < negation_probability and (candidates := unmentioned(EXTRA_NEGATIONS)):
        name = candidates[rng.integers(len(candidates))]
        sentence = EXTRA_NEGATIONS[name][rng.integers(len(EXTRA_NEGATIONS[name]))]
        findings.insert(int(rng.integers(len(findings) + 1)), sentence)
        inserted[sentence] = (name, NEGATIVE)
    return join_report(findings, impression), targets_of(labels, findings, inserted)


def edited_corpus(data, seed, **probabilities):
    """data: {"reports", "labels"} -> (edited reports, (N, 14) targets), the same for a given seed."""
    rng = np.random.default_rng(seed)
    pairs = [edit_report(r, l, rng, **probabilities) for r, l in zip(data["reports"], data["labels"])]
    return [p[0] for p in pairs], torch.stack([p[1] for p in pairs])


# --------------------------------------------------------------------------------------------------
# tokenizer and model

def template_texts():
    texts = [s for options in list(HEDGES.values()) + list(EXTRA_NEGATIONS.values()) for s in options]
    return [t.format(side=side, zone=zone) for t in texts for side in SIDES for zone in ZONES]


def bert_config():
    """Trained without BERT's dropout (0.1): 500 steps reach 0.977 mean head accuracy instead of 0.967 at 800
    steps, and each step is 30% faster. The file stores no config; a loader's default 0.1 is inert in eval."""
    return BertConfig(vocab_size=VOCAB_SIZE, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=256, max_position_embeddings=MAX_TOKENS, type_vocab_size=2, pad_token_id=0,
                      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


class ChexbertTrainingNet(nn.Module):
    """models/chexbert.CheXbert's layout (bert, dropout 0.1, linear_heads 13 x 4 + 1 x 2) with a loss."""

    def __init__(self, config):
        super().__init__()
        self.bert = BertModel(config)
        self.dropout = nn.Dropout(0.1)
        self.linear_heads = nn.ModuleList([nn.Linear(config.hidden_size, 4) for _ in range(13)]
                                          + [nn.Linear(config.hidden_size, 2)])

    def forward(self, input_ids, attention_mask, labels=None):
        """input_ids, attention_mask (B, L), labels (B, H) -> .logits (14 tensors (B, 4|2)), .loss."""
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state   # (B, L, D)
        cls = self.dropout(hidden[:, 0])                                                             # (B, D)
        logits = [head(cls) for head in self.linear_heads]
        loss = None
        if labels is not None:
            losses = [nn.functional.cross_entropy(logits[h], labels[:, h]) for h in range(len(logits))]
            loss = torch.stack(losses).mean()
        return SimpleNamespace(loss=loss, logits=logits)


def encode(tokenizer, texts):
    return tokenizer(texts, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")


@torch.no_grad()
def predict(model, tokenizer, texts, batch_size=64):
    """-> (N, H) long classes in head order."""
    model.eval()
    rows = []
    for start in range(0, len(texts), batch_size):
        encoded = encode(tokenizer, texts[start:start + batch_size])
        logits = model(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"]).logits
        rows.append(torch.stack([x.argmax(dim=1) for x in logits], dim=1))
    return torch.cat(rows)


def accuracies(predicted, targets):
    """(N, H) classes -> mean per-head accuracy, exact-match rate (all 14 heads right)."""
    right = predicted == targets
    return right.float().mean(0).mean().item(), right.all(1).float().mean().item()


# --------------------------------------------------------------------------------------------------
# build

def build_chexbert(out_dir, corpus, held_out, steps=600, seed=0, progress=None, batch_size=32, lr=2e-3):
    """Train on edited hub-corpus reports; measure on edited and plain held-out reports; save the published
    layout + tokenizer into out_dir. -> (measurements, the trained ChexbertTrainingNet)."""
    torch.manual_seed(seed)
    tokenizer = counted_wordpiece_tokenizer(list(corpus["reports"]) + template_texts(), VOCAB_SIZE, MAX_TOKENS)
    check_vocab_fits(tokenizer, VOCAB_SIZE, "tiny-hub/chexbert")
    model, twin = ChexbertTrainingNet(bert_config()), ChexbertTrainingNet(bert_config())

    held_texts, held_targets = edited_corpus(held_out, seed=1234)
    plain_texts, plain_targets = edited_corpus(held_out, seed=0, hedge_probability=0.0, negation_probability=0.0)

    def held_batch(idx, gen):
        encoded = encode(tokenizer, [held_texts[i] for i in idx])
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"],
                "labels": held_targets[idx]}

    def train_batch(idx, gen):
        rng = np.random.default_rng(int(torch.randint(2**31, (1,), generator=gen)))
        pairs = [edit_report(corpus["reports"][i], corpus["labels"][i], rng) for i in idx]
        encoded = encode(tokenizer, [p[0] for p in pairs])
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"],
                "labels": torch.stack([p[1] for p in pairs])}

    n_held = len(held_texts)
    eval_batch = min(32, n_held)
    loss_twin = evaluate_loss(twin, held_batch, n_held, eval_batch)
    loss_before = evaluate_loss(model, held_batch, n_held, eval_batch)
    train_steps(model, train_batch, len(corpus["reports"]), steps, batch_size, lr, seed, progress)
    loss_after = evaluate_loss(model, held_batch, n_held, eval_batch)
    head_mean, exact = accuracies(predict(model, tokenizer, held_texts), held_targets)
    _, exact_plain = accuracies(predict(model, tokenizer, plain_texts), plain_targets)
    majority = torch.mode(edited_corpus(corpus, seed=seed)[1], dim=0).values                     # (H,)
    majority_mean, majority_exact = accuracies(majority.expand_as(held_targets), held_targets)

    state = {f"module.{k}": v for k, v in model.state_dict().items()}      # as nn.DataParallel saved it
    torch.save({"model_state_dict": state}, f"{out_dir}/{CHECKPOINT_FILENAME}")
    tokenizer.save_pretrained(out_dir)
    return {"objective": "14-head cross-entropy (edited held-out reports)", "random_twin": loss_twin,
            "before": loss_before, "after": loss_after, "acc_head_mean": head_mean, "acc_exact_match": exact,
            "acc_exact_match_unedited": exact_plain, "acc_head_mean_majority": majority_mean,
            "acc_exact_match_majority": majority_exact, "held_out_reports": n_held, "vocab": len(tokenizer)}, model
