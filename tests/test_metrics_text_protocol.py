"""The field's text-metric protocols in metrics/text.py and metrics/text_model.py: ROUGE-1/2 equal to the
rouge-score package, R2Gen's scored strings (cleaning, single spaces, <unk> vocabulary, reference
truncation) equal to an independent step-by-step reference written here, and BERTScore equal to the
bert-score package called directly (a tiny BERT saved to tmp_path; no network, no hub).
Run: python -m pytest -q tests/test_metrics_text_protocol.py   (about 15 s)"""
import csv
import os
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from data.reports import r2gen_normalize
from metrics import text
from metrics.text import (
    R2GenVocabulary,
    bleu,
    cider_d,
    normalize,
    rouge_l,
    rouge_score_f,
    template_baselines,
    text_metrics,
)

IU_REPORTS = Path(__file__).resolve().parents[1].parent / "shared" / "real_samples" / "iu_xray" / "indiana_reports.csv"
if not IU_REPORTS.exists():
    IU_REPORTS = Path("/work/shared/real_samples/iu_xray/indiana_reports.csv")
WORDS = ["the", "heart", "is", "normal", "no", "effusion", "lungs", "are", "clear", "left", "mild", "."]


# --- ROUGE-1 / ROUGE-2 (rouge-score) ------------------------------------------------------------------
ROUGE_CASES = [
    ("the heart is normal", ["the heart is normal"]),
    ("The heart, is NORMAL!", ["heart normal size"]),                        # case and punctuation
    ("no effusion no effusion", ["no effusion", "no pleural effusion no effusion"]),   # clipping, 2 refs
    ("", ["a b"]),                                                             # empty hypothesis
    ("a", ["a"]),                                                              # no bigram on either side
    ("<unk> . the", ["<unk> the ."]),
    ("mild left effusion", ["right effusion", "mild left pleural effusion", "left effusion mild"]),
    ("heart  size 2.5 cm", ["heart size 25 cm", "heart size 2 5 cm"]),
]


def package_rouge(hypothesis, refs, kind):
    from rouge_score import rouge_scorer
    scorer = rouge_scorer.RougeScorer([kind])
    return scorer.score_multi(refs, hypothesis)[kind].fmeasure


def test_rouge1_rouge2_equal_rouge_score_package():
    pytest.importorskip("rouge_score")
    for hypothesis, refs in ROUGE_CASES:
        ours = rouge_score_f([hypothesis], [refs], ("rouge1", "rouge2", "rougeL"))
        for kind in ("rouge1", "rouge2", "rougeL"):
            assert ours[kind] == pytest.approx(package_rouge(hypothesis, refs, kind), abs=1e-12), (hypothesis, kind)
    rng = np.random.default_rng(0)
    hyps = [" ".join(rng.choice(WORDS, int(rng.integers(1, 20)))) for _ in range(60)]
    refs = [[" ".join(rng.choice(WORDS, int(rng.integers(1, 20)))) for _ in range(int(rng.integers(1, 4)))]
            for _ in range(60)]
    ours = rouge_score_f(hyps, refs)
    for kind in ("rouge1", "rouge2"):
        assert ours[kind] == pytest.approx(np.mean([package_rouge(h, r, kind) for h, r in zip(hyps, refs)]), abs=1e-12)
    # text_metrics scores the same strings ("none": as given) and reports both keys
    out = text_metrics([h for h, _ in ROUGE_CASES[:3]], [r for _, r in ROUGE_CASES[:3]], normalization="none",
                       meteor=False)
    for kind in ("rouge1", "rouge2"):
        assert out[kind] == pytest.approx(np.mean([package_rouge(h, r, kind) for h, r in ROUGE_CASES[:3]]), abs=1e-12)


def test_template_baselines_report_rouge1_rouge2():
    train = ["Findings: Lungs clear. | Impression: Normal."] * 2 + ["Findings: Big heart. | Impression: Cardiomegaly."]
    references = ["Findings: Lungs are clear. | Impression: Normal.", "Findings: Heart is big. | Impression: Big heart."]
    out = template_baselines(train, references, clinical=False)
    expected = text_metrics([train[0]] * 2, references, meteor=False)
    assert out["template_frequent/rouge1"] == pytest.approx(expected["rouge1"])
    assert out["template_frequent/rouge2"] == pytest.approx(expected["rouge2"])
    assert "template_normal/rouge2" in out


# --- R2Gen protocol ------------------------------------------------------------------------------------
# An independent reference of R2Gen's IU cleaning (modules/tokenizers.py), written step by step from the
# description in research/report_generation.md §3.1: deleted characters listed one by one.
R2GEN_DELETED = set("\"/\\'.,?;*!%^&_+(){}]") | {chr(c) for c in range(ord(":"), ord("[") + 1)}


def reference_r2gen_tokens(report):
    for _ in range(3):
        report = report.replace("..", ".")
    report = report.replace("1. ", "")
    for number in ("2", "3", "4", "5"):
        report = report.replace(". " + number + ". ", ". ")
    for number in ("2", "3", "4", "5"):
        report = report.replace(" " + number + ". ", ". ")
    tokens = []
    for sentence in report.strip().lower().split(". "):
        kept = "".join(char for char in sentence if char not in R2GEN_DELETED)
        tokens += kept.split() + ["."]
    return tokens


def reference_scored_string(report, train_reports, threshold, max_seq_length=None):
    counts = Counter(token for train in train_reports for token in reference_r2gen_tokens(train))
    words = {token for token, count in counts.items() if count >= threshold}
    tokens = [token if token in words else "<unk>" for token in reference_r2gen_tokens(report)]
    if max_seq_length is not None:          # ids [0] + words + [0], first max_seq_length kept, decoded after the 0
        tokens = tokens[:max_seq_length - 1]
    return " ".join(tokens)


def iu_rows():
    if not IU_REPORTS.exists():
        pytest.skip(f"real sample {IU_REPORTS} not present")
    with open(IU_REPORTS, newline="") as handle:
        return list(csv.DictReader(handle))


def test_r2gen_normalization_has_single_spaces_and_bleu_cider_unchanged():
    assert normalize("the lungs are clear .", "r2gen") == normalize("The lungs are clear.", "r2gen") == \
        "the lungs are clear ."
    assert r2gen_normalize("the lungs are clear .") == "the lungs are clear  ."       # R2Gen's own string
    assert normalize("Heart normal. . Lungs clear.", "r2gen") == "heart normal . . lungs clear ."
    assert normalize("Findings: Heart normal. | Impression: No effusion.", "r2gen") == "heart normal . no effusion ."
    assert normalize("Findings: | Impression:", "r2gen") == ""
    out = text_metrics(["the lungs are clear ."], ["The lungs are clear."], normalization="r2gen", meteor=False)
    assert out["rougeL"] == pytest.approx(1.0) and out["bleu4"] == pytest.approx(1.0, abs=1e-6)
    # BLEU and CIDEr split on any whitespace: R2Gen's double-spaced strings score the same
    rows = iu_rows()
    raw_hyps = [r2gen_normalize(row["impression"]) for row in rows]
    raw_refs = [[r2gen_normalize(row["findings"])] for row in rows]
    hyps = [normalize(row["impression"], "r2gen") for row in rows]
    refs = [[normalize(row["findings"], "r2gen")] for row in rows]
    assert all("  " not in s for s in hyps + [r[0] for r in refs])
    assert bleu(hyps, refs) == pytest.approx(bleu(raw_hyps, raw_refs), abs=1e-12)
    assert cider_d(hyps, refs)[0] == pytest.approx(cider_d(raw_hyps, raw_refs)[0], abs=1e-12)
    assert hyps == [" ".join(s.split()) for s in raw_hyps]


def test_r2gen_mimic_cleaning_hand_case():
    # newline -> space, "___" -> "_" (deleted later), "  " -> " ", ".." -> ".", "1. " deleted, then as IU
    report = "FINDINGS:\n\nThe heart  is ___ normal..  1. No effusion."
    assert r2gen_normalize(report, "mimic_cxr") == "findings the heart is  normal . no effusion ."
    assert r2gen_normalize(report) == "findings\n\nthe heart  is  normal . no effusion ."
    assert normalize(report, "r2gen_mimic") == "the heart is normal . no effusion ."      # "findings:" is structure
    vocabulary = R2GenVocabulary([report] * 10, threshold=10, normalization="r2gen_mimic")
    assert vocabulary.apply("The heart is big.", max_seq_length=100) == "the heart is <unk> ."


def test_r2gen_vocabulary_hand_cases():
    train = ["The heart is normal. The lungs are clear.", "The heart is normal. No effusion.",
             "The heart is enlarged. The lungs are clear."]
    vocabulary = R2GenVocabulary(train, threshold=2)
    # the 2, heart 3, is 3, normal 2, . 6, lungs 2, are 2, clear 2; no / effusion / enlarged once
    assert sorted(vocabulary.words) == [".", "<unk>", "are", "clear", "heart", "is", "lungs", "normal", "the"]
    assert len(vocabulary) == 9
    assert vocabulary.apply("The heart is  enlarged.  No effusion.") == "the heart is <unk> . <unk> <unk> ."
    assert vocabulary.apply("Heart normal. . Lungs clear.") == "heart normal . . lungs clear ."
    assert vocabulary.apply("1. Heart normal 2. Lungs (clear)") == "heart normal . lungs clear ."
    long_report = "The heart is normal. " * 15                                   # 75 tokens
    assert vocabulary.apply(long_report, max_seq_length=60) == (
        "the heart is normal . the heart is normal . the heart is normal . the heart is normal . "
        "the heart is normal . the heart is normal . the heart is normal . the heart is normal . "
        "the heart is normal . the heart is normal . the heart is normal . the heart is normal")   # 59 tokens
    assert vocabulary.apply(long_report) == " ".join(["the heart is normal ."] * 15)
    for words, kept in ((57, 58), (58, 59), (59, 59), (70, 59)):                   # tokens = words + "."
        assert len(vocabulary.apply("the " * words, max_seq_length=60).split()) == kept
    assert vocabulary.apply("the lungs", max_seq_length=3) == "the lungs"
    assert vocabulary.apply("the lungs", max_seq_length=2) == "the"


def test_text_metrics_scores_r2gen_strings(monkeypatch):
    """References: cleaned, <unk>, truncated; hypotheses: cleaned, <unk>, NOT truncated (module docstring)."""
    train = ["The heart is normal. The lungs are clear.", "The heart is normal. No effusion.",
             "The heart is enlarged. The lungs are clear."]
    vocabulary = R2GenVocabulary(train, threshold=2)
    scored = {}
    original = text.bleu
    monkeypatch.setattr(text, "bleu", lambda h, r: scored.update(hyps=h, refs=r) or original(h, r))
    predictions = ["The heart is  normal. Tiny effusion.", "The heart is normal. " * 15]
    references = ["The heart is normal. " * 15, ["Lungs clear.", "No  effusion."]]
    out = text_metrics(predictions, references, normalization="r2gen", meteor=False, r2gen_vocabulary=vocabulary,
                       max_seq_length=60)
    assert scored["hyps"] == ["the heart is normal . <unk> <unk> .", " ".join(["the heart is normal ."] * 15)]
    assert scored["refs"] == [[" ".join(["the heart is normal ."] * 11 + ["the heart is normal"])],
                              ["lungs clear .", "<unk> <unk> ."]]
    assert out["rougeL"] == pytest.approx(rouge_l(scored["hyps"], scored["refs"])[0])
    assert out["rouge1"] == pytest.approx(rouge_score_f(scored["hyps"], scored["refs"])["rouge1"])
    with pytest.raises(ValueError, match="r2gen_vocabulary"):
        text_metrics(predictions, references, normalization="seed001", r2gen_vocabulary=vocabulary, meteor=False)
    with pytest.raises(ValueError, match="max_seq_length"):
        text_metrics(predictions, references, normalization="r2gen", max_seq_length=60, meteor=False)


def test_r2gen_protocol_on_real_iu_samples(monkeypatch):
    rows = iu_rows()
    train = [row["findings"] for row in rows]
    vocabulary = R2GenVocabulary(train, threshold=3)
    assert len(vocabulary) == len({t for t, c in Counter(t for r in train for t in reference_r2gen_tokens(r)).items()
                                   if c >= 3}) + 1
    for row in rows:
        for report in (row["findings"], row["impression"]):
            for max_seq_length in (None, 60, 20, 5):
                assert vocabulary.apply(report, max_seq_length) == \
                    reference_scored_string(report, train, 3, max_seq_length), (row["uid"], max_seq_length)
    assert any("<unk>" in vocabulary.apply(row["impression"]) for row in rows)
    assert any(len(reference_r2gen_tokens(row["findings"])) > 19 for row in rows)       # 20 truncates some
    # end to end: the strings text_metrics scores (impressions as hypotheses, findings as references)
    scored = {}
    original = text.bleu
    monkeypatch.setattr(text, "bleu", lambda h, r: scored.update(hyps=h, refs=r) or original(h, r))
    out = text_metrics([row["impression"] for row in rows], train, normalization="r2gen", meteor=False,
                       r2gen_vocabulary=vocabulary, max_seq_length=20)
    assert scored["hyps"] == [reference_scored_string(row["impression"], train, 3) for row in rows]
    assert scored["refs"] == [[reference_scored_string(row["findings"], train, 3, 20)] for row in rows]
    assert out["pairs_scored"] == len(rows)
    floors = template_baselines(train, train, normalization="r2gen", clinical=False, r2gen_vocabulary=vocabulary,
                                max_seq_length=60)
    frequent = Counter(train).most_common(1)[0][0]
    expected = text_metrics([frequent] * len(train), train, "r2gen", meteor=False, r2gen_vocabulary=vocabulary,
                            max_seq_length=60)
    assert floors["template_frequent/bleu4"] == pytest.approx(expected["bleu4"])
    assert floors["template_frequent/rouge2"] == pytest.approx(expected["rouge2"])


# --- BERTScore through the bert-score package -----------------------------------------------------------
TINY_WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "heart", "is", "normal", "no", "effusion", "lungs",
              "are", "clear", "size", "mild", "left", "right", "pleural", "small", ".", "enlarged"]


def save_tiny_bert(folder, num_hidden_layers):
    """A tiny random BertModel + WordPiece tokenizer saved with save_pretrained (fixed seed)."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer
    os.makedirs(folder, exist_ok=True)
    vocab_file = os.path.join(folder, "vocab.txt")
    with open(vocab_file, "w") as handle:
        handle.write("\n".join(TINY_WORDS) + "\n")
    # model_max_length: the package truncates at it, and transformers' 1e30 default overflows
    BertTokenizer(vocab_file, model_max_length=512).save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(TINY_WORDS), hidden_size=16, num_hidden_layers=num_hidden_layers,
                        num_attention_heads=2, intermediate_size=32)
    BertModel(config).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    pytest.importorskip("bert_score")
    return save_tiny_bert(tmp_path_factory.mktemp("bertscore") / "tiny-bert", num_hidden_layers=3)


HYPS = ["the heart is normal .", "no effusion", "mild left pleural effusion"]
REFS = [["the heart is normal"], ["lungs are clear", "no pleural effusion"], ["small left effusion", "enlarged heart"]]


def package_means(hyps, refs, **kwargs):
    import bert_score
    precision, recall, f1 = bert_score.score(hyps, refs, lang="en", idf=False, device="cpu", **kwargs)
    return [float(precision.mean()), float(recall.mean()), float(f1.mean())]


def test_bertscore_equals_the_package(tiny_bert):
    from metrics.text_model import bertscore
    notes = []
    out = bertscore(HYPS, REFS, tiny_bert, notes, num_layers=2, device="cpu")
    assert notes == []
    assert [out["bertscore/precision"], out["bertscore/recall"], out["bertscore/f1"]] == pytest.approx(
        package_means(HYPS, REFS, model_type=tiny_bert, num_layers=2), abs=1e-7)
    assert out["bertscore/num_layers"] == 2.0 and out["bertscore/rescaled"] == 0.0
    # no layer given for a local model: its last layer (the package has no default for a path)
    last = bertscore(HYPS, REFS, tiny_bert, notes, device="cpu")
    assert last["bertscore/num_layers"] == 3.0
    assert last["bertscore/f1"] == pytest.approx(package_means(HYPS, REFS, model_type=tiny_bert, num_layers=3)[2],
                                                 abs=1e-7)
    # through text_metrics: the normalized strings go to the package
    predictions, references = ["The heart is normal.", "Mild left effusion!"], ["The heart is normal.", "Small effusion."]
    metrics = text_metrics(predictions, references, meteor=False, bertscore_model=tiny_bert, bertscore_layers=1,
                           bertscore_device="cpu")
    expected = package_means([normalize(p) for p in predictions], [[normalize(r)] for r in references],
                             model_type=tiny_bert, num_layers=1)
    assert [metrics["bertscore/precision"], metrics["bertscore/recall"], metrics["bertscore/f1"]] == pytest.approx(
        expected, abs=1e-7)


@pytest.mark.filterwarnings("ignore:The given NumPy array is not writable")     # inside bert_score's rescaling
def test_bertscore_hub_id_from_cache_uses_package_layer_and_baseline(tmp_path, monkeypatch):
    """A hub id the package knows, served from a local HF cache: layer 40 and the package's baseline file
    for microsoft/deberta-xlarge-mnli, as bert_score.score(model_type=<id>) picks them itself."""
    pytest.importorskip("bert_score")
    from huggingface_hub import constants

    from metrics.text_model import bertscore
    name, commit = "microsoft/deberta-xlarge-mnli", "0" * 40
    repo = tmp_path / "hf" / "models--microsoft--deberta-xlarge-mnli"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    save_tiny_bert(repo / "snapshots" / commit, num_hidden_layers=41)     # a stand-in with >= 40 layers
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)               # ours never goes online anyway
    notes = []
    ours = bertscore(HYPS, REFS, name, notes, rescale_with_baseline=True, device="cpu")
    assert notes == [] and ours["bertscore/num_layers"] == 40.0 and ours["bertscore/rescaled"] == 1.0
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)                # the package itself would try the hub
    expected = package_means(HYPS, REFS, model_type=name, rescale_with_baseline=True)
    assert [ours["bertscore/precision"], ours["bertscore/recall"], ours["bertscore/f1"]] == pytest.approx(
        expected, abs=1e-6)
    unrescaled = package_means(HYPS, REFS, model_type=name)
    assert unrescaled[2] != pytest.approx(expected[2], abs=1e-3)


def test_bertscore_unavailable_gives_a_note_and_no_keys(tmp_path, monkeypatch, tiny_bert):
    from huggingface_hub import constants

    from metrics.text_model import bertscore
    notes = []
    missing = str(tmp_path / "no-such-model")
    assert bertscore(["a"], [["a"]], missing, notes) == {}
    assert notes[0].startswith(f"bertscore: unavailable ({missing!r} not loadable, looked in the local directory")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    start = time.perf_counter()
    assert bertscore(["a"], [["a"]], "microsoft/deberta-xlarge-mnli", notes) == {}
    assert time.perf_counter() - start < 10                               # no network retries
    assert "not in the local cache" in notes[1] and "hub cache" in notes[1]
    # rescaling asked for a model the package has no baseline for: unavailable, not unrescaled numbers
    assert bertscore(["a"], [["a"]], tiny_bert, notes, rescale_with_baseline=True) == {}
    assert "baseline" in notes[2]
    empty_weights = tmp_path / "empty-model"
    empty_weights.mkdir()
    out = text_metrics(["heart normal"], ["heart normal"], meteor=False, bertscore_model=str(empty_weights),
                       notes=notes)
    assert not any(key.startswith("bertscore/") for key in out) and "bertscore: unavailable" in notes[3]
