"""Build seed 004's master JSONL (`mimic_master_official_split.jsonl`) from MIMIC-CXR-JPG's official files.

    python -m data.mimic_master --root /data/mimic-cxr-jpg [--report-root /data/mimic-cxr-reports] \
        [--out /data/mimic-cxr-jpg/mimic_master_official_split.jsonl] [--per-image]

Seed 004 "Data Generation Pipeline", step by step (schema: data/mimic_cxr.py module docstring):
1. View selection: frontal images only, ViewPosition PA or AP (MimicCxrDataset, frontal_only=True); by
   default ONE frontal image per study, the seed's rows (213,364 / 1,733 / 3,041, about one per study): a PA
   image before an AP one, then the smallest dicom_id. --per-image keeps every frontal image (about 15%
   more rows; sibling images then share a report).
   Narrative: the report's FINDINGS and IMPRESSION sections (data.reports.mimic_sections), joined.
2. Labels: the 14 CheXpert labels per study; positive-only, 1 iff the CheXpert value is 1.0 (uncertain -1,
   negative 0 and blank all become 0).
3. Split: the official split file (train / validate / test); patients never cross splits there.
4. Quality: reports under 30 characters are dropped (counted); integrity check: every written row has an
   existing image file and a non-empty report, else one DataError naming the row.
Prints the seed's distribution table (rows per split, positives per label) and the row counts per split.
"""
import argparse
import json
from pathlib import Path

from data.io import read_text
from data.labels import CHEXPERT_LABELS
from data.mimic_cxr import MimicCxrDataset
from data.sample import DataError

OFFICIAL = {"train": "train", "val": "validate", "test": "test"}


def narrative(report_path):
    from data.reports import mimic_sections
    sections = mimic_sections(read_text(report_path))  # not UTF-8: DataError naming the file and line
    return " ".join(" ".join(s for s in (sections["findings"], sections["impression"]) if s).split())


def one_per_study(records):
    """frontal records -> one per study, in first-seen study order: PA before AP, then the smallest dicom_id"""
    chosen = {}
    for record in records:
        study = record["report_path"].stem
        key = (record["view"] != "PA", record["id"])
        if study not in chosen or key < chosen[study][0]:
            chosen[study] = (key, record)
    return [record for _, record in chosen.values()]


def build_master_jsonl(root, out=None, report_root=None, min_report_chars=30, per_study=True):
    """per_study: one frontal image per study (module docstring), else every frontal image.
    -> {"path", "rows" (per split), "dropped_short", "positives" {split: {label: n}}}"""
    root = Path(root)
    out = Path(out) if out else root / "mimic_master_official_split.jsonl"
    lines, counts, dropped = [], {}, 0
    positives = {s: dict.fromkeys(CHEXPERT_LABELS, 0) for s in OFFICIAL}
    for split, official in OFFICIAL.items():
        dataset = MimicCxrDataset(root, split, frontal_only=True, uncertain="zero", report_root=report_root)
        counts[split] = 0
        for record in one_per_study(dataset.records) if per_study else dataset.records:
            if not record["report_path"].exists():
                raise DataError(f"integrity: report {record['report_path']} missing (for {record['where']})")
            text = narrative(record["report_path"])
            if len(text) < min_report_chars:
                dropped += 1
                continue
            if not Path(record["image_path"]).is_file():
                raise DataError(f"integrity: image {record['image_path']} missing (for {record['where']})")
            labels = {n: int(v == 1) for n, v in zip(CHEXPERT_LABELS, record["labels"].tolist())}
            for n, v in labels.items():
                positives[split][n] += v
            lines.append(json.dumps({
                "image_path": str(Path(record["image_path"]).relative_to(root)), "report": text,
                "labels": labels, "split": official, "subject_id": record["patient_id"],
                "study_id": record["report_path"].stem[1:], "dicom_id": record["id"], "view": record["view"]}))
            counts[split] += 1
    out.write_text("\n".join(lines) + ("\n" if lines else ""))
    print(distribution_table(counts, positives))
    rule = "one frontal image per study: PA before AP, then the smallest dicom_id" if per_study else \
        "every frontal image"
    print(f"rows per split ({rule}): " + ", ".join(f"{s} {counts[s]:,}" for s in OFFICIAL))
    print(f"wrote {sum(counts.values())} rows to {out}; {dropped} reports under {min_report_chars} chars dropped")
    return {"path": out, "rows": counts, "dropped_short": dropped, "positives": positives}


def distribution_table(counts, positives):
    """The seed-004 table: Total Samples, then positives per label, by split."""
    rows = ["| Pathology | Train | Val | Test |", "| :-- | :-: | :-: | :-: |",
            "| **Total Samples** | " + " | ".join(f"**{counts[s]:,}**" for s in OFFICIAL) + " |"]
    rows += [f"| {n} | " + " | ".join(f"{positives[s][n]:,}" for s in OFFICIAL) + " |" for n in CHEXPERT_LABELS]
    return "\n".join(rows)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True, help="MIMIC-CXR-JPG root (the three CSVs and files/)")
    p.add_argument("--report-root", default=None, help="folder holding files/pXX/pSUBJECT/sSTUDY.txt (default: root)")
    p.add_argument("--out", default=None, help="output JSONL (default: ROOT/mimic_master_official_split.jsonl)")
    p.add_argument("--min-report-chars", type=int, default=30)
    p.add_argument("--per-image", action="store_true", help="every frontal image (default: one per study, the "
                   "seed's rows: PA before AP, then the smallest dicom_id)")
    args = p.parse_args(argv)
    build_master_jsonl(args.root, args.out, args.report_root, args.min_report_chars, per_study=not args.per_image)


if __name__ == "__main__":
    main()
