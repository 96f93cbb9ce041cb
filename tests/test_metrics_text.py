"""metrics/text.py, metrics/text_model.py and metrics/clinical.py against the reference implementations
(pycocoevalcap 1.2 BLEU / ROUGE-L / CIDEr / METEOR jar, the rouge-score package, scikit-learn's
classification_report) on random and adversarial cases, plus normalization, templates and hand cases.
Reference packages are test-only (requirements-dev.txt); METEOR is skipped, with the reason, without java.
Run: python -m pytest -q tests/test_metrics_text.py"""
import contextlib
import io
import shutil
import warnings

import numpy as np
import pytest

from metrics.benchmark import phantom_reports
from metrics.clinical import ce_scores, clinical_metrics
from metrics.text import (NORMAL_REPORT, bleu, cider_d, lcs_length, normalize, rouge_l, rouge_l_rouge_score,
                          template_baselines, text_metrics)

WORDS = ["the", "heart", "is", "normal", "no", "effusion", "lungs", "are", "clear", "left", "right", "mild", "a"]


def random_corpora(count=30, size=10, seed=0):
    """count corpora of `size` items; adversarial: repeats, empty and one-word hypotheses, double spaces,
    several references of different lengths (BLEU's closest length, ROUGE's max over references)."""
    rng = np.random.default_rng(seed)
    for c in range(count):
        hyps, refs = [], []
        for i in range(size):
            kind = (c * size + i) % 7
            length = int(rng.integers(1, 25))
            hyp = " ".join(rng.choice(WORDS[:4] if kind == 1 else WORDS, length))
            if kind == 2:
                hyp = "the the the the"
            elif kind == 3:
                hyp = str(rng.choice(WORDS))
            elif kind == 4:
                hyp = hyp.replace(" ", "  ", 1)                     # empty token for split(" ")
            n_refs = 1 if kind < 5 else int(rng.integers(2, 4))
            ref_list = [" ".join(rng.choice(WORDS, int(rng.integers(1, 25)))) for _ in range(n_refs)]
            if kind == 6:
                ref_list.append(hyp)                                 # an exact match among the references
            hyps.append(hyp)
            refs.append(ref_list)
        yield hyps, refs


def coco(hyps, refs):
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    gts = {i: list(r) for i, r in enumerate(refs)}
    res = {i: [h] for i, h in enumerate(hyps)}
    with contextlib.redirect_stdout(io.StringIO()):
        b = Bleu(4).compute_score(gts, res, verbose=0)[0]
    return list(b), Rouge().compute_score(gts, res)[0], Cider().compute_score(gts, res)[0]


def test_bleu_rouge_cider_equal_pycocoevalcap_on_random_corpora():
    pytest.importorskip("pycocoevalcap")
    for hyps, refs in random_corpora():
        ref_bleu, ref_rouge, ref_cider = coco(hyps, refs)
        assert np.allclose(bleu(hyps, refs), ref_bleu, atol=1e-6, rtol=0)
        assert abs(rouge_l(hyps, refs)[0] - ref_rouge) < 1e-6
        assert abs(cider_d(hyps, refs)[0] - ref_cider) < 1e-6


def test_equal_pycocoevalcap_on_phantom_reports_after_normalization():
    pytest.importorskip("pycocoevalcap")
    references, predictions = phantom_reports(300, seed=1), phantom_reports(300, seed=2)
    ours = text_metrics(predictions, references, meteor=False)
    hyps = [normalize(p) for p in predictions]
    refs = [[normalize(r)] for r in references]
    ref_bleu, ref_rouge, ref_cider = coco(hyps, refs)
    for k in range(4):
        assert abs(ours[f"bleu{k + 1}"] - ref_bleu[k]) < 1e-6
    assert abs(ours["rougeL"] - ref_rouge) < 1e-6 and abs(ours["cider"] - ref_cider) < 1e-6
    assert 0.1 < ours["bleu1"] < 0.95 and ours["pairs_scored"] == 300


def test_lcs_and_rouge_score_equal_references():
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    rng = np.random.default_rng(3)
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    for _ in range(300):
        a = list(rng.choice(WORDS[:5], int(rng.integers(0, 30))))
        b = list(rng.choice(WORDS[:5], int(rng.integers(0, 30))))
        table = np.zeros((len(a) + 1, len(b) + 1), dtype=int)
        for i in range(1, len(a) + 1):
            for j in range(1, len(b) + 1):
                table[i, j] = table[i - 1, j - 1] + 1 if a[i - 1] == b[j - 1] else max(table[i - 1, j], table[i, j - 1])
        assert lcs_length(a, b) == table[-1, -1]
    for hyps, refs in random_corpora(count=10, seed=4):
        expected = np.mean([max(scorer.score(r, h)["rougeL"].fmeasure for r in rs) for h, rs in zip(hyps, refs)])
        assert abs(rouge_l_rouge_score(hyps, refs) - expected) < 1e-9


@pytest.mark.skipif(shutil.which("java") is None, reason="no java on PATH: METEOR 1.5 is a Java jar")
def test_meteor_is_pycocoevalcap_jar():
    meteor = pytest.importorskip("pycocoevalcap.meteor.meteor")
    references, predictions = phantom_reports(40, seed=5), phantom_reports(40, seed=6)
    notes = []
    ours = text_metrics(predictions, references, notes=notes)
    scorer = meteor.Meteor()
    expected = scorer.compute_score({i: [normalize(r)] for i, r in enumerate(references)},
                                    {i: [normalize(p)] for i, p in enumerate(predictions)})[0]
    assert abs(ours["meteor"] - expected) < 1e-6 and 0 < ours["meteor"] < 1
    assert not any(note.startswith("meteor:") for note in notes)


def test_meteor_unavailable_is_reported_not_replaced(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    notes = []
    out = text_metrics(["heart normal"], ["heart normal"], notes=notes)
    assert "meteor" not in out and any("meteor: unavailable (no `java`" in note for note in notes)


def test_seed001_normalization_both_sides():
    assert normalize("Findings: Normal. | Impression: The heart\u2019s size is NORMAL.") == "normal the hearts size is normal"
    assert normalize("No effusion.") == normalize("no effusion")
    assert normalize(None) == "" and normalize("  ...  ") == ""
    assert normalize("Cannot exclude edema\u2013mild") == "can not exclude edema mild"   # nltk word tokenizer
    out = text_metrics(["Heart normal.", "", "x"], ["heart normal", "lungs clear", "  "], meteor=False)
    assert out["pairs_scored"] == 1 and out["pairs_skipped"] == 2 and out["bleu1"] == pytest.approx(1.0)
    from data.reports import r2gen_normalize
    assert normalize("Findings: Heart normal. Lungs clear. | Impression:", "r2gen") == r2gen_normalize(
        "Heart normal. Lungs clear.")
    with pytest.raises(ValueError, match="normalization"):
        normalize("x", "ptb")


def test_template_baselines():
    train = ["Findings: Lungs clear. | Impression: Normal.", "Findings: Big heart. | Impression: Cardiomegaly.",
             "Findings: Lungs clear. | Impression: Normal."]
    references = phantom_reports(20, seed=8)
    out = template_baselines(train, references)
    expected = text_metrics([train[0]] * 20, references, meteor=False)
    assert out["template_frequent/bleu1"] == pytest.approx(expected["bleu1"])
    assert out["template_frequent/train_count"] == 2.0
    normal = text_metrics([NORMAL_REPORT] * 20, references, meteor=False)
    assert out["template_normal/cider"] == pytest.approx(normal["cider"])
    assert "template_normal/clinical_rule/micro_f1" in out


def test_ce_scores_equal_sklearn_report():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    from data.labels import CHEXPERT_COMPETITION, CHEXPERT_LABELS
    five = [CHEXPERT_LABELS.index(n) for n in CHEXPERT_COMPETITION]
    for _ in range(100):
        n = int(rng.integers(1, 30))
        truth = (rng.random((n, 14)) < 0.25).astype(int)
        pred = (rng.random((n, 14)) < 0.25).astype(int)
        ours = ce_scores(pred, truth)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            report = metrics.classification_report(truth, pred, output_dict=True, zero_division=0)
            report5 = metrics.classification_report(truth[:, five], pred[:, five], output_dict=True, zero_division=0)
        for ours_key, (row, column) in {"micro_f1": ("micro avg", "f1-score"), "micro_precision": ("micro avg", "precision"),
                                        "macro_f1": ("macro avg", "f1-score"), "macro_recall": ("macro avg", "recall"),
                                        "example_f1": ("samples avg", "f1-score"),
                                        "example_precision": ("samples avg", "precision")}.items():
            assert ours[f"clinical_rule/{ours_key}"] == pytest.approx(report[row][column], abs=1e-12)
        assert ours["clinical_rule/micro_f1_5"] == pytest.approx(report5["micro avg"]["f1-score"], abs=1e-12)


def test_clinical_metrics_by_hand(capsys):
    same = ["Findings: Moderate cardiomegaly. Small left pleural effusion. | Impression: Cardiomegaly."]
    out = clinical_metrics(same, same)
    assert out["clinical_rule/micro_f1"] == 1.0 and out["clinical_rule/example_f1"] == 1.0
    assert "uncertain -> positive" in capsys.readouterr().out
    # prediction says effusion is possible (uncertain), reference says it is present
    pred = ["Possible left pleural effusion."]
    ref = ["Left pleural effusion."]
    assert clinical_metrics(pred, ref, uncertain="positive")["clinical_rule/f1/Pleural Effusion"] == 1.0
    negative = clinical_metrics(pred, ref, uncertain="negative")
    assert negative["clinical_rule/f1/Pleural Effusion"] == 0.0 and negative["clinical_rule/uncertain_as_positive"] == 0.0
    with pytest.raises(ValueError, match="uncertain"):
        clinical_metrics(pred, ref, uncertain="ignore")


def test_bertscore_with_tiny_model_and_unavailable_model():
    from metrics.text_model import bertscore
    notes = []
    assert bertscore(["a"], [["a"]], "/nonexistent/model-dir", notes) == {} and "not loadable" in notes[0]
    try:
        out = bertscore(["the heart is normal", "no effusion"], [["the heart is normal"], ["lungs are clear"]],
                        "tiny-hub/bert-mlm", notes=[])
    except Exception as error:                                       # tiny hub not built on this machine
        pytest.skip(f"tiny-hub/bert-mlm not available: {error}")
    if not out:
        pytest.skip("tiny-hub/bert-mlm not available")
    assert out["bertscore/precision"] <= 1.0 + 1e-6 and out["bertscore/f1"] > 0.5
