"""Tests of the rule-based CheXpert-style labeler (data/labeler.py): the CheXpert labeler's own fixture
(exact labels), the CLI round trip, a table of hand-written sentences (one per cue type), weak agreement
with the MeSH terms of the 20 real IU X-ray rows, and agreement with the chest phantom's reports.

Measured (see the asserts): IU MeSH weak agreement 100% (Cardiomegaly 1/1, Pleural Effusion 1/1,
Pulmonary Atelectasis 2/2, Opacity 2/2, Airspace Disease 2/2 -> Lung Opacity, positive or uncertain; `normal` 10/10 get
No Finding 1; the 9 indexed abnormal rows 9/9 leave No Finding blank).

Run: /work/venv/bin/pytest -q tests/test_labeler.py   (a few seconds)
"""
import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from data.labeler import (CHEXPERT_CSV_COLUMNS, label_report, label_reports, labels_to_vector,
                          read_reports_csv)
from data.labels import CHEXPERT_LABELS
from data.reports import clean_report

REPO = Path(__file__).resolve().parents[1]
REAL_SAMPLES = Path("/work/shared/real_samples")
for candidate in (REPO.parent / "shared" / "real_samples", REPO / "shared" / "real_samples"):
    if candidate.exists():
        REAL_SAMPLES = candidate
CHEXPERT_DIR = REAL_SAMPLES / "chexpert_labeler"
IU_REPORTS = REAL_SAMPLES / "iu_xray" / "indiana_reports.csv"


def read_expected():
    """labeled_reports.csv -> list of (report, {column: 1.0/0.0/-1.0/None})."""
    path = CHEXPERT_DIR / "labeled_reports.csv"
    if not path.exists():
        pytest.skip(f"real sample {path} not present")
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    header = rows[0]
    assert header == ["Reports"] + CHEXPERT_CSV_COLUMNS
    return [(row[0], {name: (float(v) if v else None) for name, v in zip(header[1:], row[1:])}) for row in rows[1:]]


# --- the CheXpert labeler's fixture -------------------------------------------------------------------
def test_reproduces_chexpert_fixture_exactly():
    expected = read_expected()
    reports = read_reports_csv(CHEXPERT_DIR / "sample_reports.csv")
    assert len(reports) == 4 and "\n\n2. Cardiomegaly" in reports[1]    # a quoted multi-line field
    assert reports == [report for report, _ in expected]
    for (report, expected_labels), labels in zip(expected, label_reports(reports)):
        assert labels == {name: expected_labels[name] for name in CHEXPERT_LABELS}, report


def test_cli_round_trip(tmp_path):
    expected = read_expected()
    out = tmp_path / "labeled.csv"
    subprocess.run([sys.executable, "-m", "data.labeler", str(CHEXPERT_DIR / "sample_reports.csv"), str(out)],
                   cwd=REPO, check=True, capture_output=True)
    with open(out, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["Reports"] + CHEXPERT_CSV_COLUMNS
    got = [(row[0], {name: (float(v) if v else None) for name, v in zip(rows[0][1:], row[1:])})
           for row in rows[1:]]
    assert got == expected
    assert out.read_bytes() == (CHEXPERT_DIR / "labeled_reports.csv").read_bytes()   # even byte for byte


def test_reports_csv_with_two_fields_is_an_error(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("No effusion, small pneumothorax\n")
    with pytest.raises(ValueError, match=r"bad.csv row 1: expected one report per row"):
        read_reports_csv(path)


# --- hand-written sentences, one per cue type ---------------------------------------------------------
P, N, U = 1.0, 0.0, -1.0
CASES = [
    # negation forms
    ("No pneumothorax.", {"Pneumothorax": N, "No Finding": P}),
    ("There is no evidence of pleural effusion.", {"Pleural Effusion": N, "No Finding": P}),
    ("Lungs are clear without focal consolidation.", {"Consolidation": N, "No Finding": P}),
    ("Negative for pneumothorax.", {"Pneumothorax": N, "No Finding": P}),
    ("Lungs are free of focal airspace disease.", {"Lung Opacity": N, "No Finding": P}),
    ("The heart is not enlarged.", {"Cardiomegaly": N, "No Finding": P}),
    ("Interval resolution of the left pleural effusion.", {"Pleural Effusion": N, "No Finding": P}),
    ("The left pleural effusion has resolved.", {"Pleural Effusion": N, "No Finding": P}),
    ("Pneumothorax is no longer seen.", {"Pneumothorax": N, "No Finding": P}),
    ("No pleural effusion, pneumothorax or focal consolidation is seen.",
     {"Pleural Effusion": N, "Pneumothorax": N, "Consolidation": N, "No Finding": P}),
    ("Pleural effusion or pneumothorax is not seen.", {"Pleural Effusion": N, "Pneumothorax": N, "No Finding": P}),
    ("No focal air space opacity to suggest a pneumonia.", {"Lung Opacity": N, "Pneumonia": N, "No Finding": P}),
    ("Limited for evaluation of fractures.", {"Fracture": N, "No Finding": P}),
    # pre-negation uncertainty beats negation
    ("Cannot exclude pneumonia.", {"Pneumonia": U}),
    ("Pneumonia is not excluded.", {"Pneumonia": U}),
    ("Left basilar opacity, cannot rule out pneumonia.", {"Lung Opacity": P, "Pneumonia": U}),
    ("No new consolidation.", {"Consolidation": U}),
    # post-negation uncertainty: the subject of "may represent" stays positive
    ("Opacity may represent atelectasis.", {"Lung Opacity": P, "Atelectasis": U}),
    ("Possible small left effusion.", {"Pleural Effusion": U}),
    ("Atelectasis versus scarring.", {"Atelectasis": U, "Lung Opacity": U}),
    ("Findings are suspicious for pneumonia.", {"Pneumonia": U}),
    ("Pneumonia is likely.", {"Pneumonia": U}),
    ("Heart failure may be present.", {"Edema": U, "Cardiomegaly": U}),
    ("Mild pulmonary vascular congestion.", {"Edema": U}),
    ("No pulmonary vascular congestion.", {"Edema": N, "No Finding": P}),
    # clause boundaries stop a cue
    ("No pneumothorax but small left effusion.", {"Pneumothorax": N, "Pleural Effusion": P}),
    ("No pneumothorax; small left pleural effusion.", {"Pneumothorax": N, "Pleural Effusion": P}),
    ("Cardiomegaly with normal pulmonary vascularity.", {"Cardiomegaly": P}),
    # unmentions: positional uses of anatomy words are not findings
    ("Pacemaker leads project over the heart.", {"Support Devices": P, "No Finding": P}),
    ("Catheter tip in the right cardiac silhouette.", {"Support Devices": P, "No Finding": P}),
    ("There is an 8 mm calcified nodule.", {"No Finding": None}),           # "calcified nodul", "calcifi"
    ("History of tuberculosis.", {"No Finding": P}),                       # our "tubercul" unmention
    # neutral anatomy words: the cue decides
    ("Heart size normal.", {"Cardiomegaly": N, "No Finding": P}),
    ("Normal heart size.", {"Cardiomegaly": N, "No Finding": P}),
    ("Stable cardiac silhouette.", {"Cardiomegaly": U}),
    ("Cardiomediastinal contours are unchanged.", {"Enlarged Cardiomediastinum": U}),
    ("Borderline heart size.", {"Cardiomegaly": U}),
    ("Enlarged heart.", {"Cardiomegaly": P}),
    ("The heart is enlarged.", {"Cardiomegaly": P}),
    ("The heart size and cardiomediastinal silhouette are normal.",
     {"Cardiomegaly": N, "Enlarged Cardiomediastinum": N, "No Finding": P}),
    # chf rule: positive chf adds an uncertain Cardiomegaly, a negated one adds nothing
    ("Findings consistent with CHF.", {"Edema": P, "Cardiomegaly": U}),
    ("No CHF.", {"Edema": N, "No Finding": P}),
    # aggregation: positive beats negative, uncertain beats negative
    ("Small left effusion. No right effusion.", {"Pleural Effusion": P}),
    ("Possible pneumonia. No pneumonia on the right.", {"Pneumonia": U}),
    # No Finding: blanked by an "other abnormality", not by support devices
    ("Emphysema. No acute process.", {"No Finding": None}),
    ("Right PICC line in place. No pneumothorax.", {"Support Devices": P, "Pneumothorax": N, "No Finding": P}),
    ("No emphysema.", {"No Finding": P}),
    # our report form: " | " separates the sections
    ("Findings: Heart size normal | Impression: Small left pleural effusion.",
     {"Cardiomegaly": N, "Pleural Effusion": P}),
]


@pytest.mark.parametrize("text, expected", CASES, ids=[c[0][:40] for c in CASES])
def test_hand_written_sentences(text, expected):
    labels = label_report(text)
    assert list(labels) == CHEXPERT_LABELS
    full = {name: None for name in CHEXPERT_LABELS}
    full.update(expected)
    assert labels == full, {k: (labels[k], full[k]) for k in full if labels[k] != full[k]}


def test_labels_to_vector():
    labels = label_report("Cardiomegaly. Possible pneumonia. No effusion.")
    order = {name: i for i, name in enumerate(CHEXPERT_LABELS)}
    keep = labels_to_vector(labels)
    assert keep.shape == (14,) and keep.dtype == np.float32
    assert keep[order["Cardiomegaly"]] == 1 and keep[order["Pneumonia"]] == -1
    assert keep[order["Pleural Effusion"]] == 0 and keep[order["Edema"]] == 0 and keep[order["No Finding"]] == 0
    assert labels_to_vector(labels, "zeros")[order["Pneumonia"]] == 0
    assert labels_to_vector(labels, "ones")[order["Pneumonia"]] == 1
    assert labels_to_vector(labels, "ones").sum() == 2
    with pytest.raises(ValueError, match="uncertain"):
        labels_to_vector(labels, "half")
    with pytest.raises(KeyError, match="Edema"):
        labels_to_vector({k: v for k, v in labels.items() if k != "Edema"})
    with pytest.raises(TypeError, match="report str"):
        label_report(None)


# --- weak agreement with the IU MeSH terms ------------------------------------------------------------
MESH_TO_LABEL = {"Cardiomegaly": "Cardiomegaly", "Pleural Effusion": "Pleural Effusion",
                 "Pulmonary Atelectasis": "Atelectasis", "Opacity": "Lung Opacity", "Airspace Disease": "Lung Opacity"}


def test_weak_agreement_with_iu_mesh():
    if not IU_REPORTS.exists():
        pytest.skip(f"real sample {IU_REPORTS} not present")
    with open(IU_REPORTS, newline="") as f:
        rows = list(csv.DictReader(f))
    hits, total, misses = 0, 0, []
    normal_ok = normal_total = abnormal_blank = abnormal_total = 0
    for row in rows:
        labels = label_report(clean_report(row["findings"], row["impression"]))
        terms = set(row["Problems"].split(";"))
        for term, name in MESH_TO_LABEL.items():
            if term in terms:
                total += 1
                if labels[name] in (1.0, -1.0):
                    hits += 1
                else:
                    misses.append((row["uid"], term, labels[name]))
        if row["Problems"] == "normal":
            normal_total += 1
            normal_ok += labels["No Finding"] == 1.0
        elif row["Problems"] != "No Indexing":
            abnormal_total += 1
            abnormal_blank += labels["No Finding"] is None
    assert (total, normal_total, abnormal_total) == (8, 10, 9)
    assert hits == total, misses                  # 8/8 = 100%
    assert normal_ok == normal_total              # 10/10
    assert abnormal_blank == abnormal_total       # 9/9


# --- agreement with the chest phantom's reports -------------------------------------------------------
PHANTOM_NEGATION_LABELS = {"pneumothorax": ["Pneumothorax"], "pleural effusion": ["Pleural Effusion"],
                           "pneumothorax+pleural effusion": ["Pneumothorax", "Pleural Effusion"],
                           "consolidation": ["Consolidation"], "edema": ["Edema"], "nodule": ["Lung Lesion"],
                           "fracture": ["Fracture"]}


def explicit_negations(report, phantom_report):
    """Labels that the phantom's own negative/normal sentences state absent in this report."""
    negated = set()
    for group, sentences in phantom_report.NEGATIONS.items():
        if any(sentence in report for sentence in sentences):
            negated.update(PHANTOM_NEGATION_LABELS[group])
    if any(sentence in report for sentence in phantom_report.HEART_NORMAL):
        negated.add("Cardiomegaly")
    if any(sentence in report for sentence in phantom_report.MEDIASTINUM_NORMAL):
        negated.add("Enlarged Cardiomediastinum")
    return negated


def test_agreement_with_phantom_reports():
    """300 phantom reports: labeler positive <=> phantom label 1, for each of the 14 labels; and every
    label that one of the phantom's negative sentences names is negative (0.0) for the labeler."""
    phantom = pytest.importorskip("data.phantom")
    phantom_report = pytest.importorskip("data.phantom_report")
    count = 300
    agree = np.zeros(len(CHEXPERT_LABELS))                                # (14,)
    disagreements, negation_errors, negated_total = [], [], 0
    for index in range(count):
        sample = phantom.make_chest_phantom(seed=0, index=index, size=64)
        truth = np.asarray(sample["labels"], dtype=np.float32) == 1       # (14,) bool
        labels = label_report(sample["report"])
        positive = np.array([labels[name] == 1.0 for name in CHEXPERT_LABELS])
        agree += positive == truth
        for i in np.flatnonzero(positive != truth):
            disagreements.append((CHEXPERT_LABELS[i], bool(truth[i]), sample["report"]))
        for name in explicit_negations(sample["report"], phantom_report):
            negated_total += 1
            if labels[name] != 0.0 or truth[CHEXPERT_LABELS.index(name)]:
                negation_errors.append((name, labels[name], sample["report"]))
    rates = {name: round(float(agree[i]) / count, 3) for i, name in enumerate(CHEXPERT_LABELS)}
    print("per-label agreement with the phantom:", rates, "explicit negations checked:", negated_total)
    assert not disagreements, (rates, disagreements[:3])
    assert negated_total > count and not negation_errors, negation_errors[:3]
