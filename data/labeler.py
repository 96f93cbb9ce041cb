"""The rule-based CheXpert-style labeler: report text -> 14 observations (1 positive, 0 negative,
-1 uncertain, None not mentioned). It is "the rule-based labeler", a regex re-implementation of the
stanfordmlgroup/chexpert-labeler pipeline (research/report_generation.md §5); it is NOT CheXbert and has
no dependency parser, so its cue scopes are surface rules, stated here.

Pipeline, per report:
1. Clean: lowercase; "and/or" -> "or"; "a/b" between letters -> "a or b"; ".." -> "."; a space after
   every "," and "." (not inside a decimal "2.5"); " | " (our report separator) -> ". "; whitespace runs
   -> one space. Split sentences (data/reports.split_sentences: not on "1." or "2.5").
2. Mentions: every substring match of a mention phrase (data/labeler_phrases.py) is a mention of its
   observation unless it overlaps an unmention match of the same observation ("over the heart").
3. Classify each mention inside its CLAUSE: the sentence cut at ";", "but", "however", "although",
   "though", "whereas", "while", "except", "apart from". With pre = clause text before the mention and
   post = clause text after the mention's word, the first rule that fires wins:
   a. pre-negation uncertainty -> -1: a cue before ("cannot exclude", "no new") at most 6 words before
      the mention, or a predicate after ("is not excluded", "cannot be ruled out").
   b. negation -> 0: a cue before ("no", "without", "negative for", "free of", "resolution of", ...)
      at most 10 words before the mention with no breaker between ("with", "is", "are", "was", "were",
      "has", "have", "there", "and the", "and there"); an adjective before ("normal heart size": at most
      4 words between for anatomy words, 1 for others, no comma); a predicate after ("heart size normal",
      "the heart is not enlarged", "effusion has resolved").
   c. post-negation uncertainty -> -1: a cue before ("possible", "may reflect", "versus", ...) at most 6
      words before; a predicate after ("may be", "is likely", "poorly evaluated"); "X or Y" / "X versus
      Y" with the mention next to the "or"; the always-uncertain Edema signs ("vascular congestion");
      a neutral anatomy word with a stability word ("stable cardiac silhouette", "contours unchanged").
   d. otherwise positive -> 1.
   A predicate after the mention is found by skipping at most 3 words (anatomy words: 6 words and
   commas, so "the heart, mediastinum and hila are normal" works) that are not themselves verbs,
   negations or "with"/"which"/"that".
4. Aggregate per observation: positive beats uncertain beats negative. A positive or uncertain "chf" /
   "heart failure" mention also adds an uncertain Cardiomegaly. No Finding = 1 iff no observation other
   than Support Devices, and no phrase of the "no finding" list of other abnormalities ("emphysema",
   "scoliosis", ...), is positive or uncertain; otherwise None (never 0). So a report that mentions
   nothing (also an empty one) gets No Finding 1, as in the CheXpert labeler.

Neutral anatomy words (CheXpert's design): "the heart", "heart size", "cardiac silhouette", " mediastinum",
"contour", ... are mentions with no polarity of their own; the cue decides ("heart size normal" -> 0,
"stable cardiac silhouette" -> -1, "the heart is enlarged" / no cue -> 1, as in CheXpert).

Known limits: scope is surface-based ("no effusion and mild edema" negates both, like a conjunction
would); a phrase is a substring, so "tube" also hits "tubes" and (without our unmention) "tuberculosis".

CLI: `python -m data.labeler reports.csv out.csv` reads the CheXpert labeler's input (one report per
row, no header, quoted multi-line fields; blank rows skipped) and writes its output (Reports + 14
columns in CHEXPERT_CSV_COLUMNS order, 1.0 / 0.0 / -1.0 / empty).
"""
import csv
import functools
import re
import sys
from dataclasses import dataclass

import numpy as np

from data import labeler_phrases as P
from data.labels import CHEXPERT_LABELS
from data.reports import split_sentences

POSITIVE, NEGATIVE, UNCERTAIN = 1.0, 0.0, -1.0
# the CheXpert labeler's own output column order (Lung Lesion before Lung Opacity)
CHEXPERT_CSV_COLUMNS = [
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Lesion", "Lung Opacity", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture",
    "Support Devices",
]
NEGATION_WINDOW, UNCERTAIN_WINDOW, ANATOMY_NORMAL_WINDOW, STABLE_WINDOW = 10, 6, 4, 3


def _cue_regex(cues):
    """Alternatives as whole words, longest first so "no evidence to rule out" wins over "no"."""
    return re.compile(r"(?<![\w-])(?:" + "|".join(sorted(cues, key=len, reverse=True)) + r")(?![\w-])")


_CLAUSE_BOUNDARY = re.compile(r";|\b(?:but|however|although|though|whereas|while|except|apart from)\b")
_SCOPE_BREAKER = re.compile(r"\b(?:with|is|are|was|were|has|have|there|and the|and there)\b")
_STOP = r"(?:is|are|was|were|has|have|appears?|remains?|seems?|looks?|with|without|which|that|may|might|could" \
        r"|can|cannot|would|not|no|normal|unremarkable|within|versus|vs|stable|unchanged|similar)"
_PRE_NEG_UNC_BEFORE = _cue_regex(P.PRE_NEGATION_UNCERTAIN_BEFORE)
_NEGATION_BEFORE = _cue_regex(P.NEGATION_BEFORE)
_NORMAL_BEFORE = _cue_regex(P.NORMAL_BEFORE)
_UNCERTAIN_BEFORE = _cue_regex(P.UNCERTAIN_BEFORE)
_STABLE_BEFORE = _cue_regex([P.STABLE_WORDS])
_PRE_NEG_UNC_AFTER = "|".join(P.PRE_NEGATION_UNCERTAIN_AFTER)
_NEGATION_AFTER = "|".join(P.NEGATION_AFTER)
_UNCERTAIN_AFTER = "|".join(P.UNCERTAIN_AFTER)
_STABLE_AFTER = r"(?:(?:is|are|was|were|remains?|appears?) )?(?:again |overall |otherwise )?" + P.STABLE_WORDS


@dataclass
class Mention:
    observation: str   # a CHEXPERT_LABELS name or P.NO_FINDING_KEY
    phrase: str
    start: int         # character span in the sentence
    end: int


# --- 1. cleaning --------------------------------------------------------------------------------------
def clean_text(text):
    """Report -> the labeler's cleaned lowercase text (step 1 of the module docstring)."""
    text = text.lower().replace(" | ", ". ")
    text = text.replace("and/or", "or")
    text = re.sub(r"(?<=[a-z])/(?=[a-z])", " or ", text)
    text = re.sub(r"\.(\s*\.)+", ".", text)
    text = re.sub(r",(?=\S)", ", ", text)
    text = re.sub(r"\.(?=[^\s\d])|(?<=\D)\.(?=\d)", ". ", text)
    return re.sub(r"\s+", " ", text).strip()


# --- 2. mentions --------------------------------------------------------------------------------------
def _spans(phrase, sentence):
    """Every (start, end) where the literal `phrase` occurs in `sentence` (overlaps included)."""
    spans, start = [], sentence.find(phrase)
    while start >= 0:
        spans.append((start, start + len(phrase)))
        start = sentence.find(phrase, start + 1)
    return spans


_MENTION_TABLES = dict(P.MENTIONS, **{P.NO_FINDING_KEY: P.NO_FINDING_OTHERS})


def find_mentions(sentence):
    """Cleaned sentence -> list of Mention (unmention overlaps removed)."""
    mentions = []
    for observation, phrases in _MENTION_TABLES.items():
        blocked = [span for phrase in P.UNMENTIONS.get(observation, []) for span in _spans(phrase, sentence)]
        for phrase in phrases:
            for start, end in _spans(phrase, sentence):
                if any(start < b_end and b_start < end for b_start, b_end in blocked):
                    continue
                mentions.append(Mention(observation, phrase, start, end))
    return mentions


# --- 3. classification --------------------------------------------------------------------------------
def _clause(sentence, start):
    """Character span of the clause that holds position `start`."""
    left, right = 0, len(sentence)
    for boundary in _CLAUSE_BOUNDARY.finditer(sentence):
        if boundary.end() <= start:
            left = boundary.end()
        elif boundary.start() >= start:
            right = boundary.start()
            break
    return left, right


def _cue_before(regex, pre, window, breakers=True, comma_breaks=False):
    """True if the nearest match of `regex` in `pre` ends at most `window` words before the mention."""
    matches = list(regex.finditer(pre))
    if not matches:
        return False
    gap = pre[matches[-1].end():]
    if len(re.findall(r"[\w'-]+", gap)) > window:
        return False
    if breakers and _SCOPE_BREAKER.search(gap):
        return False
    return not (comma_breaks and "," in gap)


@functools.lru_cache(maxsize=None)
def _predicate_regex(predicate, anatomy):
    max_words, separator = (6, r"[\s,]") if anatomy else (3, r"\s")
    gap = rf"(?:{separator}*(?!{_STOP}\b)[\w'-]+){{0,{max_words}}}?{separator}*"
    return re.compile(rf"{gap}(?:{predicate})(?![\w-])")


def _predicate_after(predicate, post, anatomy):
    """True if `post` (text after the mention's word) starts, after a short subject tail, with `predicate`."""
    return _predicate_regex(predicate, anatomy).match(post) is not None


def classify(sentence, mention):
    """Cleaned sentence + Mention -> 1.0 / 0.0 / -1.0 (rules a-d of the module docstring)."""
    left, right = _clause(sentence, mention.start)
    word_end = re.match(r"[\w-]*", sentence[mention.end:]).end() + mention.end
    pre, post = sentence[left:mention.start], " " + sentence[word_end:right].strip()
    anatomy = mention.phrase in P.ANATOMY_PHRASES
    # a. pre-negation uncertainty
    if (_cue_before(_PRE_NEG_UNC_BEFORE, pre, UNCERTAIN_WINDOW)
            or _predicate_after(_PRE_NEG_UNC_AFTER, post, anatomy)):
        return UNCERTAIN
    # b. negation
    normal_window = ANATOMY_NORMAL_WINDOW if anatomy else 1
    if (_cue_before(_NEGATION_BEFORE, pre, NEGATION_WINDOW)
            or _cue_before(_NORMAL_BEFORE, pre, normal_window, comma_breaks=True)
            or _predicate_after(_NEGATION_AFTER, post, anatomy)):
        return NEGATIVE
    # c. post-negation uncertainty
    if (_cue_before(_UNCERTAIN_BEFORE, pre, UNCERTAIN_WINDOW)
            or _predicate_after(_UNCERTAIN_AFTER, post, anatomy)
            or re.search(r"(?<![\w-])(?:or|versus|vs)\.?(?:\s+[\w'-]+){0,2}\s*$", pre)
            or re.match(r"\s*(?:or|versus|vs)(?![\w-])", post)
            or mention.phrase in P.ALWAYS_UNCERTAIN):
        return UNCERTAIN
    if anatomy and (_cue_before(_STABLE_BEFORE, pre, STABLE_WINDOW, comma_breaks=True)
                    or _predicate_after(_STABLE_AFTER, post, anatomy)):
        return UNCERTAIN
    return POSITIVE


# --- 4. aggregation -----------------------------------------------------------------------------------
def _aggregate(values):
    if POSITIVE in values:
        return POSITIVE
    return UNCERTAIN if UNCERTAIN in values else NEGATIVE


def classified_mentions(text):
    """Report text -> [(cleaned sentence, Mention, 1.0 | 0.0 | -1.0)] in reading order (steps 1-3); the
    report-derived captions (data/captions.py report_statements) read each mention's location from them."""
    if not isinstance(text, str):
        raise TypeError(f"label_report: expected a report str, got {type(text).__name__}: {text!r}")
    out = []
    for sentence in split_sentences(clean_text(text)):
        for mention in sorted(find_mentions(sentence), key=lambda m: m.start):
            out.append((sentence, mention, classify(sentence, mention)))
    return out


def label_report(text):
    """Report text -> {observation: 1.0 | 0.0 | -1.0 | None} over all 14 CHEXPERT_LABELS."""
    found = {}
    for _, mention, value in classified_mentions(text):
        found.setdefault(mention.observation, []).append(value)
        if mention.phrase in P.HEART_FAILURE_PHRASES and value != NEGATIVE:
            found.setdefault("Cardiomegaly", []).append(UNCERTAIN)
    labels = {name: (_aggregate(found[name]) if name in found else None) for name in CHEXPERT_LABELS}
    abnormal = [name for name in list(P.MENTIONS) + [P.NO_FINDING_KEY] if name != "Support Devices"
                and name in found and _aggregate(found[name]) in (POSITIVE, UNCERTAIN)]
    labels["No Finding"] = None if abnormal else POSITIVE
    return labels


def label_reports(texts):
    """list of report texts -> list of label dicts (see label_report)."""
    return [label_report(text) for text in texts]


def labels_to_vector(labels, uncertain="keep"):
    """Label dict -> (14,) float32 in CHEXPERT_LABELS order; None -> 0; -1 kept, or mapped to 0 / 1."""
    mapping = {"keep": UNCERTAIN, "zeros": 0.0, "ones": 1.0}
    if uncertain not in mapping:
        raise ValueError(f"labels_to_vector: uncertain must be one of {sorted(mapping)}, got {uncertain!r}")
    missing = [name for name in CHEXPERT_LABELS if name not in labels]
    if missing:
        raise KeyError(f"labels_to_vector: label dict lacks {missing}")
    vector = np.zeros(len(CHEXPERT_LABELS), dtype=np.float32)   # (14,)
    for i, name in enumerate(CHEXPERT_LABELS):
        value = labels[name]
        vector[i] = 0.0 if value is None else (mapping[uncertain] if value == UNCERTAIN else value)
    return vector


# --- CheXpert labeler CSV format ----------------------------------------------------------------------
def read_reports_csv(path):
    """The CheXpert labeler's input: one report per row, no header -> list of report strings."""
    reports = []
    with open(path, newline="", encoding="utf-8") as f:
        for row_number, row in enumerate(csv.reader(f), start=1):
            if not row:
                continue
            if len(row) != 1:
                raise ValueError(f"{path} row {row_number}: expected one report per row (quote reports that "
                                 f"hold commas), got {len(row)} fields: {row!r}")
            reports.append(row[0])
    return reports


def _format(value):
    return "" if value is None else f"{value:.1f}"


def write_labels_csv(path, reports, labels):
    """Reports + 14 columns in the CheXpert labeler's column order, values 1.0 / 0.0 / -1.0 / empty."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["Reports"] + CHEXPERT_CSV_COLUMNS)
        for report, label in zip(reports, labels):
            writer.writerow([report] + [_format(label[name]) for name in CHEXPERT_CSV_COLUMNS])


def main(argv):
    if len(argv) != 2:
        raise SystemExit("usage: python -m data.labeler reports.csv out.csv")
    reports = read_reports_csv(argv[0])
    write_labels_csv(argv[1], reports, label_reports(reports))
    print(f"labeled {len(reports)} reports -> {argv[1]}")


if __name__ == "__main__":
    main(sys.argv[1:])
