"""Tests of data/reports.py: report cleaning (seed 001 §5.4), R2Gen normalization (§3.1 quirks, worked by
hand), the sentence splitter and MIMIC-CXR sectioning.

Run: /work/venv/bin/pytest -q tests/test_reports.py   (about 1 s)
"""
import csv
from pathlib import Path

import pytest

from data.reports import clean_report, mimic_sections, r2gen_normalize, split_sections, split_sentences

IU_REPORTS = Path(__file__).resolve().parents[1].parent / "shared" / "real_samples" / "iu_xray" / "indiana_reports.csv"
if not IU_REPORTS.exists():
    IU_REPORTS = Path("/work/shared/real_samples/iu_xray/indiana_reports.csv")


def iu_rows():
    if not IU_REPORTS.exists():
        pytest.skip(f"real sample {IU_REPORTS} not present")
    with open(IU_REPORTS, newline="") as f:
        return list(csv.DictReader(f))


# --- clean_report -------------------------------------------------------------------------------------
def test_clean_report_removes_whole_phi_sentences():
    findings = ("The heart, pulmonary XXXX and mediastinum are within normal limits. There is no pleural "
                "effusion or pneumothorax.")
    assert clean_report(findings, "Normal chest x-XXXX.") == \
        "Findings: There is no pleural effusion or pneumothorax. | Impression:"


def test_clean_report_spacing_unicode_and_whitespace():
    findings = "  Heart  size normal.Lungs are clear ..\n\nNo effusion .  "
    impression = "No acute\u00a0disease\uff0e"      # non-breaking space, full-width period (NFKC -> ".")
    assert clean_report(findings, impression) == \
        "Findings: Heart size normal. Lungs are clear. No effusion. | Impression: No acute disease."


def test_clean_report_keeps_decimals_and_numbering():
    assert clean_report("A 2.5 cm nodule.", "1. Nodule. 2. No effusion.") == \
        "Findings: A 2.5 cm nodule. | Impression: 1. Nodule. 2. No effusion."


@pytest.mark.parametrize("findings, impression, expected", [
    ("", "No acute disease.", "Findings: | Impression: No acute disease."),
    (None, "XXXX.", "Findings: | Impression:"),
    ("Lungs clear.", None, "Findings: Lungs clear. | Impression:"),
])
def test_clean_report_empty_sections_keep_their_header(findings, impression, expected):
    report = clean_report(findings, impression)
    assert report == expected
    assert split_sections(report) == (expected.split(" | ")[0][9:].strip(), expected.split(" | ")[1][11:].strip())


def test_split_sections_inverts_clean_report_on_real_iu_rows():
    rows = iu_rows()
    assert len(rows) == 20
    for row in rows:
        report = clean_report(row["findings"], row["impression"])
        assert "XXXX" not in report and "  " not in report
        findings, impression = split_sections(report)
        assert clean_report(findings, impression) == report
    by_uid = {row["uid"]: row for row in rows}
    row = by_uid["1047"]      # ".." in the source, a PHI-free impression
    assert clean_report(row["findings"], row["impression"]).endswith(
        "without acute abnormality. | Impression: No acute cardiopulmonary abnormality.")


def test_split_sections_rejects_other_text():
    with pytest.raises(ValueError, match="Findings"):
        split_sections("The heart is normal.")


# --- sentence splitter --------------------------------------------------------------------------------
@pytest.mark.parametrize("text, expected", [
    ("1. Stable mild cardiomegaly. 2. Hyperexpanded but clear lungs.",
     ["1. Stable mild cardiomegaly.", "2. Hyperexpanded but clear lungs."]),
    ("A 2.5 cm nodule. No effusion", ["A 2.5 cm nodule.", "No effusion"]),
    ("Effusion is present.\n\n2. Cardiomegaly", ["Effusion is present.", "2. Cardiomegaly"]),
    ("Seen by Dr. Smith. Is it stable? Yes!", ["Seen by Dr. Smith.", "Is it stable?", "Yes!"]),
    ("First paragraph\n\nSecond one", ["First paragraph", "Second one"]),
])
def test_split_sentences(text, expected):
    assert split_sentences(text) == expected


# --- R2Gen normalization (each expected string worked by hand from §3.1) -----------------------------
@pytest.mark.parametrize("text, expected", [
    # plain: lowercase, ". " -> " . ", trailing " ."
    ("The heart is normal. The lungs are clear.", "the heart is normal . the lungs are clear ."),
    # the range ":-[" deletes ; < = > ? @ but keeps "-" and digits; the decimal point goes (2.5 -> 25)
    ("Size 2.5 cm; a<b=c>d?e@f [g] {h} (i) x-ray.", "size 25 cm abcdef g h i x-ray ."),
    # characters outside the class stay
    ("a # b $ ~ | ` c", "a # b $ ~ | ` c ."),
    # numbering: "1. " deleted, ". 2. " -> ". ", " 3. " -> ". "
    ("1. Cardiomegaly. 2. Small effusion 3. No pneumothorax.",
     "cardiomegaly . small effusion . no pneumothorax ."),
    # "1. " is deleted anywhere, also inside "11. "
    ("Item 11. Next", "item 1next ."),
    # quotes, slashes, backslashes, apostrophes deleted before the regex
    ("Patient's AP/PA \"view\" back\\slash.", "patients appa view backslash ."),
    # an empty sentence is kept (R2Gen compares a str with []), giving a double space
    ("Heart normal. . Lungs clear.", "heart normal .  . lungs clear ."),
    # ".." collapses
    ("No effusion.. Lungs clear", "no effusion . lungs clear ."),
    ("", " ."),
])
def test_r2gen_normalize_hand_worked(text, expected):
    assert r2gen_normalize(text) == expected


def test_r2gen_normalize_real_iu_findings():
    by_uid = {row["uid"]: row for row in iu_rows()}
    assert r2gen_normalize(by_uid["1657"]["findings"]) == \
        "the heart is normal in size . the mediastinum is unremarkable . the lungs are clear ."
    # the 3046 impression has numbering "1. ... 2. ... 3. ..." and a comma-rich sentence
    assert r2gen_normalize(by_uid["3046"]["impression"]).startswith(
        "left perihilar nodular opacity redemonstrated appears dense may be granulomatous if desired")


# --- MIMIC-CXR sections -------------------------------------------------------------------------------
MIMIC_REPORT = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with cough  // ? pneumonia

 COMPARISON:  ___

 FINDINGS:
 
 PA and lateral views of the chest provided.  There is no focal consolidation,
 effusion, or pneumothorax.  The cardiomediastinal silhouette is normal.
 
 IMPRESSION:
 
 No acute intrathoracic process.
"""


def test_mimic_sections_headers():
    sections = mimic_sections(MIMIC_REPORT)
    assert sections["source"] == "sections"
    assert sections["findings"] == ("PA and lateral views of the chest provided. There is no focal consolidation, "
                                    "effusion, or pneumothorax. The cardiomediastinal silhouette is normal.")
    assert sections["impression"] == "No acute intrathoracic process."
    assert sections["sections"]["INDICATION"] == "___F with cough // ? pneumonia"
    assert sections["sections"]["EXAMINATION"] == "CHEST (PA AND LAT)"
    # the PHI marker "___" is dropped with its sentence by clean_report
    assert clean_report(sections["sections"]["COMPARISON"], sections["impression"]) == \
        "Findings: | Impression: No acute intrathoracic process."


def test_mimic_sections_addendum_and_conclusion():
    text = ("ADDENDUM: Dr. ___ was paged at 10am.\n\nFINAL REPORT\nCONCLUSION: Small left effusion.\n"
            "IMPRESSION: Mild cardiomegaly.")
    sections = mimic_sections(text)
    assert sections["findings"] == ""
    assert sections["impression"] == "Small left effusion. Mild cardiomegaly."
    assert sections["sections"]["ADDENDUM"] == "Dr. ___ was paged at 10am."


def test_mimic_sections_last_paragraph_fallback():
    text = "FINAL REPORT\n\nPortable chest.\n\nLines and tubes in place.\nNo pneumothorax.\n\n"
    sections = mimic_sections(text)
    assert sections["source"] == "last_paragraph"
    assert sections["findings"] == ""
    assert sections["impression"] == "Lines and tubes in place. No pneumothorax."
    with pytest.raises(TypeError, match="str"):
        mimic_sections(None)
