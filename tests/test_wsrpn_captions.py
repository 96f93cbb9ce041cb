"""Report-derived captions of WSRPN-VL (data/captions.py report_statements, seed 000 "RDF" captions): structured
statements (finding, laterality, zone, certainty) read from hand-written MIMIC-style reports, real IU X-ray and
CheXpert-labeler sample reports (../shared/real_samples/), and phantom reports whose truth is known.

Run: python -m pytest -q tests/test_wsrpn_captions.py      (~3 s)
"""
import csv
from pathlib import Path

import pytest

from data import labeler_phrases as P
from data.captions import (NO_FINDING_CAPTION, DetectionCaptionDataset, caption_from_report_statements,
                           report_statements)

REAL = Path(__file__).resolve().parents[2] / "shared" / "real_samples"
if not REAL.exists():                          # a clone outside the workspace: the workspace's copy, else skip
    REAL = Path("/work/shared/real_samples")
needs_real = pytest.mark.skipif(not REAL.exists(), reason="shared/real_samples not found")


def located(report):
    return [(s.finding, s.laterality, s.zone, s.certainty) for s in report_statements(report)]


# hand-written MIMIC-style reports: FINDINGS / IMPRESSION text with known laterality and zone
HAND_WRITTEN = [
    ("FINDINGS: Moderate right pleural effusion with a meniscus at the right costophrenic angle. No pneumothorax. "
     "IMPRESSION: Moderate right pleural effusion.",
     [("pleural effusion", "right", "costophrenic", "positive")]),
    ("FINDINGS: Left lower lobe opacity may represent atelectasis. Heart size is normal. IMPRESSION: Possible left "
     "basilar atelectasis.",
     [("atelectasis", "left", "lower", "uncertain")]),
    ("Right upper lobe consolidation concerning for pneumonia. Small left apical pneumothorax.",
     [("consolidation", "right", "upper", "positive"), ("pneumonia", "right", "upper", "uncertain"),
      ("pneumothorax", "left", "apical", "positive")]),
    ("Retrocardiac opacity. Bibasilar atelectasis. The heart is mildly enlarged.",
     [("opacity", "left", "retrocardiac", "positive"), ("atelectasis", "bilateral", "basal", "positive"),
      ("cardiomegaly", "", "cardiac", "positive")]),
    ("Small right and left pleural effusions. 8 mm nodule in the right mid lung. Left perihilar mass.",
     [("pleural effusion", "bilateral", "basal", "positive"), ("nodule", "right", "middle", "positive"),
      ("mass", "left", "perihilar", "positive")]),
    ("Stable cardiomediastinal silhouette. No focal consolidation, pleural effusion or pneumothorax. "
     "IMPRESSION: No acute cardiopulmonary process.", []),
]


@pytest.mark.parametrize("report, expected", HAND_WRITTEN)
def test_statements_from_hand_written_mimic_style_reports(report, expected):
    assert located(report) == expected


def test_rendered_caption_negation_and_uncertainty_rule():
    caption = caption_from_report_statements("Left lower lobe atelectasis. Possible right basilar pneumonia. "
                                             "No pneumothorax. Right IJ catheter tip in the SVC.")
    assert caption == "left lower zone atelectasis. possible right basal pneumonia."   # negated + device: none
    assert caption_from_report_statements("No pleural effusion. Heart size is normal.") == NO_FINDING_CAPTION


@needs_real
def test_statements_on_real_iu_xray_and_chexpert_sample_reports():
    rows = {row["uid"]: row for row in csv.DictReader(open(REAL / "iu_xray" / "indiana_reports.csv"))}
    iu = {uid: located(f"Findings: {row['findings']} | Impression: {row['impression']}") for uid, row in rows.items()}
    # "mild increased airspace opacity within the right lung base which may represent atelectasis or infiltrate"
    assert ("atelectasis", "right", "basal", "uncertain") in iu["183"]
    assert iu["3148"] == [("cardiomegaly", "", "cardiac", "positive"), ("pleural effusion", "left", "basal", "positive")]
    assert iu["2417"] == [("opacity", "bilateral", "basal", "positive")]         # "minimal bibasilar airspace disease"
    assert iu["3046"] == [("nodule", "left", "perihilar", "positive")]          # "left perihilar nodular opacity"
    assert iu["1047"] == [] and iu["2386"] == []   # normal; calcified nodules are the labeler's unmention
    from data.labeler import read_reports_csv
    sample = [located(report) for report in read_reports_csv(REAL / "chexpert_labeler" / "sample_reports.csv")]
    assert sample[0] == []
    assert ("pleural effusion", "left", "basal", "positive") in sample[1]
    assert ("pleural effusion", "right", "basal", "positive") in sample[1]
    assert sample[2] == [("atelectasis", "left", "middle", "uncertain"), ("consolidation", "left", "middle", "uncertain")]


# phantom finding -> the CheXpert observation whose statement should locate it (support devices, fractures and
# emphysema are left out: a device is no finding, a rib fracture's location is a rib number, emphysema is diffuse
# and no CheXpert observation)
PHANTOM_OBSERVATION = {"consolidation": "Consolidation", "atelectasis": "Atelectasis", "nodule": "Lung Lesion",
                       "pleural effusion": "Pleural Effusion", "pneumothorax": "Pneumothorax",
                       "cardiomegaly": "Cardiomegaly", "enlarged cardiomediastinum": "Enlarged Cardiomediastinum",
                       "edema": "Edema", "pleural thickening": "Pleural Other"}


def recovered(finding, statements):
    side = "" if finding["side"] == "midline" else finding["side"]
    sides = {side, "bilateral"} if side in ("left", "right") else {side}
    region = dict(P.ZONE_REGION, apicolateral="upper")[finding["zone"]]
    return any(s.observation == PHANTOM_OBSERVATION[finding["name"]] and s.laterality in sides
               and P.ZONE_REGION.get(s.zone) == region for s in statements)


def test_phantom_reports_laterality_and_zone_recovered_for_95_percent_of_findings():
    from data.phantom import make_chest_phantom
    total = hits = 0
    for index in range(200):
        phantom = make_chest_phantom(7, index, 64)
        statements = report_statements(phantom["report"])
        for finding in phantom["findings"]:
            if finding["name"] in PHANTOM_OBSERVATION:
                total, hits = total + 1, hits + recovered(finding, statements)
    assert total > 150 and hits / total >= 0.95, (hits, total)


def test_detection_dataset_statement_captions_on_phantoms():
    from data.phantom import phantom_split
    dataset = DetectionCaptionDataset(phantom_split("train", 12, 64), ["pleural effusion", "cardiomegaly",
                                      "pneumothorax"], "phantom", "statements", drop_unlabelled=False)
    for i in range(len(dataset)):
        sample = dataset[i]
        assert sample["caption"] == caption_from_report_statements(dataset.base[dataset.indices[i]]["report"])
