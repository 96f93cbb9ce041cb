"""Report-generation text metrics, each the number the field reports under its own name.

Scorers (their tokenization is pycocoevalcap's: whitespace split, ROUGE-L on split(" ")):
- bleu1..bleu4: corpus-level BLEU as pycocoevalcap `Bleu(4)` (clipped n-gram counts summed over the test
  set, cumulative geometric mean, one brevity penalty from total lengths, reference length "closest",
  its epsilons 1e-15 / 1e-9 kept so near-zero scores agree too).
- rougeL: pycocoevalcap ROUGE-L (LCS precision / recall, max over references, F with beta = 1.2, mean over
  items). LCS by the bit-parallel recurrence (Allison-Dix / Hyyro) on Python ints: same length as the DP
  table, much faster. rougeL_rouge_score: the `rouge-score` package's ROUGE-L F1 (beta = 1, its own
  tokenizer, no stemmer) under its own name, computed with the same LCS and equal to the package.
- cider: pycocoevalcap `Cider` = CIDEr-D (TF-IDF n-grams 1-4 with document frequencies from the test
  references, clipped by the reference, Gaussian length penalty sigma = 6 on the count of BIGRAMS, x10).
- meteor: METEOR 1.5 through pycocoevalcap's jar (needs `java` and pycocoevalcap); meteor_nltk: nltk's
  METEOR (needs WordNet data); bertscore/*: only with a model (metrics/text_model.py). What is not
  available is listed with the reason in `notes` and printed, never replaced by a stand-in.
Normalization, applied identically to predictions and references before scoring:
- "seed001" (seed 001 §8.4): None -> ""; NFKC and smart quotes / dashes to ASCII; lowercase; remove the
  structural "findings:", "impression:" and "|"; delete apostrophes, every other punctuation mark -> space;
  tokens by nltk's word tokenizer (NLTKWordTokenizer, no data files needed) joined by one space; pairs
  with an empty side after this are skipped and counted (pairs_skipped).
- "r2gen": structure removed as above, then data/reports.r2gen_normalize (R2Gen's IU cleaning, period
  tokens kept) on both sides. "none": the strings as given.
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


def normalize(text, normalization="seed001", cache=True):
    """One report -> the string the scorers see (tokens joined by single spaces for seed001 / r2gen)."""
    if cache and isinstance(text, str):
        return _normalize_cached(text, normalization)
    if normalization == "none":
        return "" if text is None else str(text)
    text = "" if text is None else unicodedata.normalize("NFKC", str(text)).translate(_ASCII)
    if normalization == "r2gen":
        from data.reports import r2gen_normalize
        text = re.sub(r"\s+", " ", _STRUCTURE.sub(" ", text)).strip()
        return r2gen_normalize(text) if text else ""
    if normalization != "seed001":
        raise ValueError(f"normalization {normalization!r}: expected 'seed001', 'r2gen' or 'none'")
    text = _STRUCTURE.sub(" ", text.lower()).replace("'", "")
    text = _PUNCTUATION.sub(" ", text)
    return " ".join(_word_tokenizer().tokenize(text))


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
    return len(b) - bin(v).count("1")


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


def rouge_l_rouge_score(hypotheses, references):
    """rouge-score's ROUGE-L F1 (beta 1, its tokenizer, max F over references), mean over items."""
    from rouge_score.tokenize import tokenize
    scores = []
    for hypothesis, refs in zip(hypotheses, references):
        candidate, best = tokenize(hypothesis, None), 0.0
        for ref in refs:
            target = tokenize(ref, None)
            if candidate and target:
                lcs = lcs_length(target, candidate)
                p, r = lcs / len(candidate), lcs / len(target)
                best = max(best, 2 * p * r / (p + r) if p + r > 0 else 0.0)
        scores.append(best)
    return float(np.mean(scores)) if scores else float("nan")


def cider_d(hypotheses, references, n=4, sigma=6.0):
    """-> (mean, per-item list): pycocoevalcap CIDEr(-D), document frequencies from these references."""
    hyp_counts = [_ngrams(h.split(), n) for h in hypotheses]
    ref_counts = [[_ngrams(r.split(), n) for r in refs] for refs in references]
    document_frequency = Counter()
    for refs in ref_counts:
        document_frequency.update(set(g for counts in refs for g in counts))
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
                        value += (weight if weight < r else r) * r
                if norm[k] != 0 and norm_ref[k] != 0:
                    value /= norm[k] * norm_ref[k]
                total += value * penalty
        scores.append(float(total / n / len(refs) * 10.0))
    return float(np.mean(scores)) if scores else float("nan"), scores


def _pairs(predictions, references, normalization):
    if len(predictions) != len(references):
        raise ValueError(f"text metrics: {len(predictions)} predictions but {len(references)} references")
    hyps, refs, skipped = [], [], 0
    for i, (prediction, reference) in enumerate(zip(predictions, references)):
        reference = list(reference) if isinstance(reference, (list, tuple)) else [reference]
        hypothesis = normalize(prediction, normalization)
        cleaned = [r for r in (normalize(x, normalization) for x in reference) if r.strip()]
        if not hypothesis.strip() or not cleaned:
            skipped += 1                                  # seed 001 §8.4: skip invalid pairs, counted
            continue
        hyps.append(hypothesis)
        refs.append(cleaned)
    return hyps, refs, skipped


def text_metrics(predictions, references, normalization="seed001", meteor=True, bertscore_model=None, notes=None,
                 rouge_score=True):
    """predictions: list of str; references: list of str (or of lists of str) -> flat dict of floats.
    Unavailable metrics are appended to `notes` (a list, if given) as "name: reason" and printed."""
    from metrics import text_model
    hyps, refs, skipped = _pairs(predictions, references, normalization)
    notes = [] if notes is None else notes
    out = {"pairs_scored": float(len(hyps)), "pairs_skipped": float(skipped)}
    if not hyps:
        notes.append("text metrics: no valid (prediction, reference) pair after normalization")
    else:
        out.update({f"bleu{k + 1}": s for k, s in enumerate(bleu(hyps, refs))})
        out["rougeL"] = rouge_l(hyps, refs)[0]
        out["cider"] = cider_d(hyps, refs)[0]
        if rouge_score:
            out["rougeL_rouge_score"] = rouge_l_rouge_score(hyps, refs)
        if meteor:
            out.update(text_model.meteor_scores(hyps, refs, notes))
        if bertscore_model is not None:
            out.update(text_model.bertscore(hyps, refs, bertscore_model, notes))
    for note in notes:
        print(f"[metrics.text] {note}", file=sys.stderr)
    return out


def template_baselines(train_reports, references, normal_report=None, normalization="seed001", meteor=False,
                       clinical=True):
    """Constant-output floors: "template_frequent/<metric>" (most frequent training report) and
    "template_normal/<metric>" (a fixed normal report), text metrics (+ rule-based clinical F1)."""
    if not train_reports:
        raise ValueError("template_baselines: no training reports given")
    counts = Counter(train_reports)
    frequent = max(counts, key=lambda report: (counts[report], -train_reports.index(report)))
    out = {"template_frequent/train_count": float(counts[frequent])}
    for name, template in (("template_frequent", frequent), ("template_normal", normal_report or NORMAL_REPORT)):
        constant = [template] * len(references)
        scores = text_metrics(constant, references, normalization, meteor=meteor, rouge_score=False)
        if clinical:
            from metrics.clinical import clinical_metrics
            scores.update(clinical_metrics(constant, references, verbose=False))
        out.update({f"{name}/{key}": value for key, value in scores.items()})
    return out
