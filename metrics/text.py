"""Report-generation text metrics, each the number the field reports under its own name.

Scorers (their tokenization is pycocoevalcap's: whitespace split, ROUGE-L on split(" ")):
- bleu1..bleu4: corpus-level BLEU as pycocoevalcap `Bleu(4)` (clipped n-gram counts summed over the test
  set, cumulative geometric mean, one brevity penalty from total lengths, reference length "closest",
  its epsilons 1e-15 / 1e-9 kept so near-zero scores agree too).
- rougeL: pycocoevalcap ROUGE-L (LCS precision / recall, max over references, F with beta = 1.2, mean over
  items). LCS by the bit-parallel recurrence (Allison-Dix / Hyyro) on Python ints: same length as the DP
  table, much faster.
- rouge1, rouge2 (seed 001 §8.1) and rougeL_rouge_score: the `rouge-score` package's F-measures
  (`RougeScorer([...])`, no stemmer, its own tokenizer: lowercase, non-alphanumerics -> space; beta = 1;
  with several references the max F over them, as `score_multi`), mean over items, computed here with
  the package's tokenizer and equal to the package. rougeL (beta 1.2) and rougeL_rouge_score differ.
- cider: pycocoevalcap `Cider` = CIDEr-D (TF-IDF n-grams 1-4 with document frequencies from the test
  references, clipped by the reference, Gaussian length penalty sigma = 6 on the count of BIGRAMS, x10).
- meteor: METEOR 1.5 through pycocoevalcap's jar (needs `java` and pycocoevalcap); meteor_nltk: nltk's
  METEOR (needs WordNet data); bertscore/*: the bert-score package, only with a model (metrics/text_model.py).
  What is not available is listed with the reason in `notes` and printed, never replaced by a stand-in.
Normalization, applied identically to predictions and references before scoring:
- "seed001" (seed 001 §8.4): None -> ""; NFKC and smart quotes / dashes to ASCII; lowercase; remove the
  structural "findings:", "impression:" and "|"; delete apostrophes, every other punctuation mark -> space;
  tokens by nltk's word tokenizer (NLTKWordTokenizer, no data files needed) joined by one space; pairs
  with an empty side after this are skipped and counted (pairs_skipped).
- "r2gen" / "r2gen_mimic": the structural "findings:", "impression:" and "|" replaced by a space, then
  data/reports.r2gen_normalize (R2Gen's IU X-ray / MIMIC-CXR cleaning, period tokens kept; no NFKC, as
  R2Gen), then R2Gen's tokens (`.split()`) joined by ONE space, the string R2Gen decodes (a double space
  would be an empty token for ROUGE-L's split(" ")). "none": the strings as given.
R2Gen protocol (cuhksz-nlp/R2Gen modules/tokenizers.py, datasets.py, trainer.py; research/report_generation.md
§3.1): `R2GenVocabulary(train_reports, threshold)` is R2Gen's vocabulary (the tokens of the cleaned TRAINING
reports seen >= threshold times, 3 for IU X-ray, 10 for MIMIC-CXR, plus "<unk>"). R2Gen scores the
ground truth decoded from its ids: `[0] + ids + [0]` cut to max_seq_length (60 IU, 100 MIMIC), decoded
from position 1 up to the first 0, joined by single spaces, so a reference keeps its first
max_seq_length - 1 tokens (59 / 99; the end token is dropped first, so a 58-token report is whole), with
rare words as "<unk>". `text_metrics(..., normalization="r2gen", r2gen_vocabulary=vocabulary,
max_seq_length=60)` scores references so. Hypotheses: an R2Gen model can only write vocabulary words,
so ours are mapped through the same vocabulary (out-of-vocabulary -> "<unk>") but NOT truncated: R2Gen
never cuts a generated report at scoring (its decoder stops by itself, at most max_seq_length tokens),
and another model's length limit is its own generation setting. Exact on R2Gen's inputs: the vocabulary
built from annotation.json's train `report` strings and references that are those strings; reports in
this project's "Findings: ... | Impression: ..." form (clean_report drops XXXX sentences) give R2Gen's
protocol on different text.
Template baselines (research/report_generation.md §3.3): the most frequent training report (first seen
wins a tie) and a fixed normal report, each predicted for every reference, scored like a model.
"""
import functools
import math
import re
import sys
import unicodedata
from collections import Counter

import numpy as np

NORMAL_REPORT = ("Findings: The heart is normal in size. The mediastinum is unremarkable. The lungs are clear. "
                 "There is no pneumothorax or pleural effusion. No focal airspace consolidation. Degenerative "
                 "changes of the spine. | Impression: No acute cardiopulmonary abnormality.")
_ASCII = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u201c": '"', "\u201d": '"',
                        "\u201e": '"', "\u2013": "-", "\u2014": "-", "\u2212": "-", "\u2010": "-", "\u2011": "-"})
_STRUCTURE = re.compile(r"\b(?:findings|impression)\s*:|\|", re.IGNORECASE)
_PUNCTUATION = re.compile(r"[^\w\s]|_")


@functools.lru_cache(maxsize=1)
def _word_tokenizer():
    from nltk.tokenize import NLTKWordTokenizer
    return NLTKWordTokenizer()


@functools.lru_cache(maxsize=65536)
def _normalize_cached(text, normalization):
    return normalize(text, normalization, cache=False)


R2GEN_DATASET = {"r2gen": "iu_xray", "r2gen_mimic": "mimic_cxr"}      # normalization -> R2Gen's cleaning
UNKNOWN = "<unk>"


def normalize(text, normalization="seed001", cache=True):
    """One report -> the string the scorers see (tokens joined by single spaces unless "none")."""
    if cache and isinstance(text, str):
        return _normalize_cached(text, normalization)
    if normalization == "none":
        return "" if text is None else str(text)
    text = "" if text is None else str(text)
    if normalization in R2GEN_DATASET:
        from data.reports import r2gen_normalize
        text = _STRUCTURE.sub(" ", text)
        return " ".join(r2gen_normalize(text, R2GEN_DATASET[normalization]).split()) if text.strip() else ""
    if normalization != "seed001":
        raise ValueError(f"normalization {normalization!r}: expected 'seed001', 'r2gen', 'r2gen_mimic' or 'none'")
    text = unicodedata.normalize("NFKC", text).translate(_ASCII)
    text = _STRUCTURE.sub(" ", text.lower()).replace("'", "")
    text = _PUNCTUATION.sub(" ", text)
    return " ".join(_word_tokenizer().tokenize(text))


class R2GenVocabulary:
    """R2Gen's word vocabulary and the reference string it scores (see the module docstring).

    R2GenVocabulary(train_reports, threshold=3, normalization="r2gen")   IU X-ray (MIMIC: 10, "r2gen_mimic")
    .apply(text, max_seq_length=None) -> str   cleaned tokens, out-of-vocabulary -> "<unk>", the first
                                              max_seq_length - 1 kept when max_seq_length is given
    """

    def __init__(self, train_reports, threshold=3, normalization="r2gen"):
        if normalization not in R2GEN_DATASET:
            raise ValueError(f"R2GenVocabulary: normalization {normalization!r}, expected one of {list(R2GEN_DATASET)}")
        counts = Counter(token for report in train_reports for token in normalize(report, normalization).split())
        self.words = frozenset(token for token, count in counts.items() if count >= threshold) | {UNKNOWN}
        self.threshold, self.normalization = threshold, normalization

    def __len__(self):
        return len(self.words)                       # R2Gen's get_vocab_size() (ids 1..len; 0 = start/end/pad)

    def __contains__(self, token):
        return token in self.words

    def apply(self, text, max_seq_length=None):
        tokens = [token if token in self.words else UNKNOWN for token in normalize(text, self.normalization).split()]
        if max_seq_length is not None:
            # datasets.py: ids = ([0] + ids + [0])[:max_seq_length]; trainer.py decodes ids[1:] up to the first 0
            tokens = tokens[:max(0, max_seq_length - 1)]
        return " ".join(tokens)


def _ngrams(tokens, n=4):
    counts = Counter()
    for k in range(1, n + 1):
        counts.update(tuple(tokens[i:i + k]) for i in range(len(tokens) - k + 1))
    return counts


def bleu(hypotheses, references, n=4):
    """hypotheses: list of str, references: list of list of str -> [BLEU-1 .. BLEU-n] (pycocoevalcap)."""
    correct, guess = [0] * n, [0] * n
    test_length = reference_length = 0
    for hypothesis, refs in zip(hypotheses, references):
        tokens = hypothesis.split()
        counts = _ngrams(tokens, n)
        max_ref = {}
        lengths = []
        for ref in refs:
            ref_tokens = ref.split()
            lengths.append(len(ref_tokens))
            for gram, c in _ngrams(ref_tokens, n).items():
                if c > max_ref.get(gram, 0):
                    max_ref[gram] = c
        test_length += len(tokens)
        reference_length += min((abs(length - len(tokens)), length) for length in lengths)[1]
        for gram, c in counts.items():
            correct[len(gram) - 1] += min(max_ref.get(gram, 0), c)
        for k in range(n):
            guess[k] += max(0, len(tokens) - k)
    scores, product = [], 1.0
    for k in range(n):
        product *= (correct[k] + 1e-15) / (guess[k] + 1e-9)
        scores.append(product ** (1.0 / (k + 1)))
    ratio = (test_length + 1e-15) / (reference_length + 1e-9)
    if ratio < 1:
        scores = [s * math.exp(1 - 1 / ratio) for s in scores]
    return scores


def lcs_length(a, b):
    """Length of the longest common subsequence of two token lists (bit-parallel, exact)."""
    if len(a) < len(b):
        a, b = b, a
    if not b:
        return 0
    masks = {}
    for i, token in enumerate(b):
        masks[token] = masks.get(token, 0) | (1 << i)
    full = (1 << len(b)) - 1
    v = full
    for token in a:
        u = v & masks.get(token, 0)
        v = ((v + u) | (v - u)) & full
    return len(b) - v.bit_count()


def rouge_l(hypotheses, references, beta=1.2):
    """-> (mean, per-item list): pycocoevalcap ROUGE-L."""
    scores = []
    for hypothesis, refs in zip(hypotheses, references):
        candidate = hypothesis.split(" ")
        precision = recall = 0.0
        for ref in refs:
            tokens = ref.split(" ")
            lcs = lcs_length(tokens, candidate)
            precision, recall = max(precision, lcs / len(candidate)), max(recall, lcs / len(tokens))
        scores.append((1 + beta ** 2) * precision * recall / (recall + beta ** 2 * precision)
                      if precision and recall else 0.0)
    return float(np.mean(scores)) if scores else float("nan"), scores


def rouge_score_f(hypotheses, references, kinds=("rouge1", "rouge2", "rougeL")):
    """-> {kind: mean over items of the max F over references}, kinds "rouge<n>" / "rougeL" as the
    rouge-score package computes them (its tokenizer, no stemmer, beta 1; P = overlap / max(hypothesis
    count, 1), R = overlap / max(reference count, 1); overlap = clipped n-gram matches or the LCS length)."""
    from rouge_score.tokenize import tokenize

    def f_measure(candidate, target, kind):
        if kind == "rougeL":
            overlap, guessed, wanted = lcs_length(target, candidate), len(candidate), len(target)
        else:
            n = int(kind[len("rouge"):])
            c = Counter(zip(*(candidate[i:] for i in range(n))))
            t = Counter(zip(*(target[i:] for i in range(n))))
            overlap, guessed, wanted = sum((c & t).values()), sum(c.values()), sum(t.values())
        p, r = overlap / max(guessed, 1), overlap / max(wanted, 1)
        return 2 * p * r / (p + r) if p + r > 0 else 0.0
    scores = {kind: [] for kind in kinds}
    for hypothesis, refs in zip(hypotheses, references):
        candidate, targets = tokenize(hypothesis, None), [tokenize(ref, None) for ref in refs]
        for kind in kinds:
            scores[kind].append(max(f_measure(candidate, target, kind) for target in targets))
    return {kind: float(np.mean(values)) if values else float("nan") for kind, values in scores.items()}


def rouge_l_rouge_score(hypotheses, references):
    """rouge-score's ROUGE-L F1 (beta 1, its tokenizer, max F over references), mean over items."""
    return rouge_score_f(hypotheses, references, ("rougeL",))["rougeL"]


def cider_d(hypotheses, references, n=4, sigma=6.0):
    """-> (mean, per-item list): pycocoevalcap CIDEr(-D), document frequencies from these references."""
    hyp_counts = [_ngrams(h.split(), n) for h in hypotheses]
    ref_counts = [[_ngrams(r.split(), n) for r in refs] for refs in references]
    document_frequency = Counter()
    for refs in ref_counts:
        document_frequency.update({g for counts in refs for g in counts})
    log_items = np.log(float(len(ref_counts)))
    idf = {gram: log_items - np.log(max(1.0, df)) for gram, df in document_frequency.items()}

    def vector(counts):
        """-> per n-gram order {gram: tf * idf}, the L2 norms, and the BIGRAM count (pycocoevalcap's length)."""
        vec, norm, bigrams = [{} for _ in range(n)], [0.0] * n, 0
        for gram, tf in counts.items():
            k = len(gram) - 1
            weight = float(tf) * idf.get(gram, log_items)
            vec[k][gram] = weight
            norm[k] += weight * weight
            if k == 1:
                bigrams += tf
        return vec, [math.sqrt(x) for x in norm], bigrams
    scores = []
    for counts, refs in zip(hyp_counts, ref_counts):
        vec, norm, length = vector(counts)
        total = 0.0
        for ref in refs:
            vec_ref, norm_ref, length_ref = vector(ref)
            penalty = np.e ** (-(float(length - length_ref) ** 2) / (2 * sigma ** 2))
            for k in range(n):
                ref_k = vec_ref[k]
                value = 0.0
                for gram, weight in vec[k].items():
                    r = ref_k.get(gram)
                    if r is not None:
                        value += min(weight, r) * r
                if norm[k] != 0 and norm_ref[k] != 0:
                    value /= norm[k] * norm_ref[k]
                total += value * penalty
        scores.append(float(total / n / len(refs) * 10.0))
    return float(np.mean(scores)) if scores else float("nan"), scores


def _pairs(predictions, references, normalization, r2gen_vocabulary=None, max_seq_length=None):
    if len(predictions) != len(references):
        raise ValueError(f"text metrics: {len(predictions)} predictions but {len(references)} references")
    if r2gen_vocabulary is not None and r2gen_vocabulary.normalization != normalization:
        raise ValueError(f"text metrics: r2gen_vocabulary was built with normalization "
                         f"{r2gen_vocabulary.normalization!r} but normalization={normalization!r}")
    if max_seq_length is not None and r2gen_vocabulary is None:
        raise ValueError("text metrics: max_seq_length (R2Gen's reference truncation) needs r2gen_vocabulary")
    if r2gen_vocabulary is None:
        clean_hypothesis = clean_reference = functools.partial(normalize, normalization=normalization)
    else:                                 # R2Gen protocol: hypotheses <unk>-mapped, references also truncated
        clean_hypothesis = r2gen_vocabulary.apply
        clean_reference = functools.partial(r2gen_vocabulary.apply, max_seq_length=max_seq_length)
    hyps, refs, skipped = [], [], 0
    for prediction, reference in zip(predictions, references):
        reference = list(reference) if isinstance(reference, (list, tuple)) else [reference]
        hypothesis = clean_hypothesis(prediction)
        cleaned = [r for r in (clean_reference(x) for x in reference) if r.strip()]
        if not hypothesis.strip() or not cleaned:
            skipped += 1                                  # seed 001 §8.4: skip invalid pairs, counted
            continue
        hyps.append(hypothesis)
        refs.append(cleaned)
    return hyps, refs, skipped


def text_metrics(predictions, references, normalization="seed001", meteor=True, bertscore_model=None, notes=None,
                 rouge_score=True, r2gen_vocabulary=None, max_seq_length=None, bertscore_layers=None,
                 bertscore_rescale=False, bertscore_device=None):
    """predictions: list of str; references: list of str (or of lists of str) -> flat dict of floats.
    R2Gen protocol: normalization="r2gen", r2gen_vocabulary=R2GenVocabulary(train_reports, 3), max_seq_length=60.
    BERTScore (bert-score package) with bertscore_model= a hub id in the local HF cache, a local directory or
    a tiny-hub name; bertscore_layers=None is the package's layer for known names, else the model's last.
    Unavailable metrics are appended to `notes` (a list, if given) as "name: reason" and printed."""
    from metrics import text_model
    hyps, refs, skipped = _pairs(predictions, references, normalization, r2gen_vocabulary, max_seq_length)
    notes = [] if notes is None else notes
    out = {"pairs_scored": float(len(hyps)), "pairs_skipped": float(skipped)}
    if not hyps:
        notes.append("text metrics: no valid (prediction, reference) pair after normalization")
    else:
        out.update({f"bleu{k + 1}": s for k, s in enumerate(bleu(hyps, refs))})
        out["rougeL"] = rouge_l(hyps, refs)[0]
        package_rouge = rouge_score_f(hyps, refs, ("rouge1", "rouge2", "rougeL") if rouge_score else ("rouge1", "rouge2"))
        out["rouge1"], out["rouge2"] = package_rouge["rouge1"], package_rouge["rouge2"]
        out["cider"] = cider_d(hyps, refs)[0]
        if rouge_score:
            out["rougeL_rouge_score"] = package_rouge["rougeL"]
        if meteor:
            out.update(text_model.meteor_scores(hyps, refs, notes))
        if bertscore_model is not None:
            out.update(text_model.bertscore(hyps, refs, bertscore_model, notes, num_layers=bertscore_layers,
                                            rescale_with_baseline=bertscore_rescale, device=bertscore_device))
    for note in notes:
        print(f"[metrics.text] {note}", file=sys.stderr)
    return out


def frequent_report(train_reports):
    """The most frequent training report; the first seen wins a tie (a Counter keeps first-seen order)."""
    counts = Counter(train_reports)
    return max(counts, key=counts.__getitem__)


def template_baselines(train_reports, references, normal_report=None, normalization="seed001", meteor=False,
                       clinical=True, r2gen_vocabulary=None, max_seq_length=None):
    """Constant-output floors: "template_frequent/<metric>" (most frequent training report) and
    "template_normal/<metric>" (a fixed normal report), text metrics (+ rule-based clinical F1),
    scored under the same normalization / R2Gen protocol as the model."""
    if not train_reports:
        raise ValueError("template_baselines: no training reports given")
    frequent = frequent_report(train_reports)
    out = {"template_frequent/train_count": float(train_reports.count(frequent))}
    for name, template in (("template_frequent", frequent), ("template_normal", normal_report or NORMAL_REPORT)):
        constant = [template] * len(references)
        scores = text_metrics(constant, references, normalization, meteor=meteor, rouge_score=False,
                              r2gen_vocabulary=r2gen_vocabulary, max_seq_length=max_seq_length)
        if clinical:
            from metrics.clinical import clinical_metrics
            scores.update(clinical_metrics(constant, references, verbose=False))
        out.update({f"{name}/{key}": value for key, value in scores.items()})
    return out
