"""IU X-ray (Indiana University chest X-rays): the Kaggle CSV layout and the R2Gen annotation.json.

Kaggle layout under data.root (research/report_generation.md §1):
    indiana_reports.csv       uid, MeSH, Problems, image, indication, comparison, findings, impression
    indiana_projections.csv   uid, filename, projection (Frontal | Lateral)
    images/images_normalized/<filename>
R2Gen layout (§2): annotation.json {"train"|"val"|"test": [{"id", "report", "image_path": [...], "split"}]}
with the image paths relative to an image root (one folder per study holding 0.png, 1.png).

Design choices:
- One sample per image; frontal only by default (seed 001 §5.1), the view taken from `projection`
  (never from the file name: its suffix does not encode the view reliably).
- report = data.reports.clean_report(findings, impression); studies whose findings and impression are both
  empty are left out (counted in the summary line, they are not bad input).
- labels (14,) over CHEXPERT_LABELS: from a CheXbert/CheXpert-labeler CSV when `labels_csv` is given
  (key column `uid` for Kaggle, `id` for R2Gen, then the 14 label columns by name; 1 / 0 / -1 / blank -> 0),
  else from the rule-based labeler data/labeler.py on the cleaned report (it is a rule labeler, not CheXbert).
- IU has no patient ids: a study (uid) is the patient. Split 70/15/15 by uid (seed 001 §5.2), saved to a
  JSON split file and reused. R2Gen: its official split (the top-level key) by default, or the same
  patient split over its ids.
- Sample keys: image, labels, report, id (file stem), patient_id (uid), view ("FRONTAL" | "LATERAL").
"""
import json
from pathlib import Path

import numpy as np

from data.io import (RecordDataset, column_index, data_root, first_of_each, iterate_samples, image_uint8,
                     load_or_make_split, make_policy, read_csv, read_label_table, read_text, row_errors, rule_labels,
                     save_image, write_csv)
from data.labels import CHEXPERT_LABELS
from data.sample import DataError

DATASET = "IU X-ray"
EXPECTED_FILES = ["indiana_reports.csv", "indiana_projections.csv", "images/images_normalized"]
SPLITS = ("train", "val", "test", "all")


def _check_split(split):
    if split not in SPLITS:
        raise ValueError(f"{DATASET}: split must be one of {SPLITS}, got {split!r}")


class _ReportLabels:
    """labels of a study: from the labels CSV table when given, else from the rule labeler."""

    def __init__(self, labels_csv, key_column, policy):
        self.table = None if labels_csv is None else read_label_table(labels_csv, key_column, CHEXPERT_LABELS, policy)
        self.labels_csv, self.key_column = labels_csv, key_column

    def __call__(self, key, report):
        if self.table is None:
            return rule_labels(report, CHEXPERT_LABELS)
        if key not in self.table:
            raise DataError(f"{self.labels_csv}: no row for {self.key_column} {key}; expected one row per study")
        return self.table[key]


class IUXrayDataset(RecordDataset):
    """Kaggle IU X-ray. split: train | val | test | all."""

    label_names, box_classes = CHEXPERT_LABELS, []

    def __init__(self, root, split="train", transform=None, frontal_only=True, labels_csv=None, split_file=None,
                 split_fractions=(0.7, 0.15, 0.15), split_seed=0, on_error="stop", check_images=False):
        from data.reports import clean_report
        _check_split(split)
        root = data_root(root, EXPECTED_FILES, DATASET)
        policy = make_policy(on_error, DATASET)
        reports_path, projections_path = root / "indiana_reports.csv", root / "indiana_projections.csv"

        header, rows = read_csv(reports_path, policy)
        col = column_index(header, ["uid", "findings", "impression"], reports_path)

        def parse_report(line, cells):
            uid = cells[col["uid"]].strip()
            if not uid.isdigit():
                raise DataError(f"{reports_path} line {line}: column 'uid' must be an integer, got {uid!r}")
            return line, uid, (cells[col["findings"]], cells[col["impression"]])

        # a second row for a uid is a policy message naming both lines (it would silently replace the first)
        raw_reports = first_of_each(policy, reports_path, "uid", row_errors(policy, rows, parse_report))
        reports = {uid: clean_report(f, i) for uid, (f, i) in raw_reports.items() if f.strip() or i.strip()}
        empty = len(raw_reports) - len(reports)

        header, rows = read_csv(projections_path, policy)
        col_p = column_index(header, ["uid", "filename", "projection"], projections_path)

        def parse_projection(line, cells):
            uid, filename, view = (cells[col_p[k]].strip() for k in ("uid", "filename", "projection"))
            if view not in ("Frontal", "Lateral"):
                raise DataError(f"{projections_path} line {line}: projection must be 'Frontal' or 'Lateral', "
                                f"got {view!r}")
            if uid not in raw_reports:
                raise DataError(f"{projections_path} line {line}: uid {uid} has no row in indiana_reports.csv")
            return line, filename, (line, uid, filename, view)

        # a file name listed twice would be a second sample of the same image
        projections = first_of_each(policy, projections_path, "filename",
                                    row_errors(policy, rows, parse_projection)).values()
        assignment = None
        if split != "all":
            split_file = split_file or root / "splits" / f"iu_xray_patient_split_seed{split_seed}.json"
            assignment = load_or_make_split(split_file, raw_reports, split_fractions, split_seed, DATASET)
        labeler = _ReportLabels(labels_csv, "uid", policy)
        labels_of = {}
        records = []
        for line, uid, filename, view in projections:
            if (frontal_only and view != "Frontal") or uid not in reports:
                continue
            if assignment is not None and assignment[uid] != split:
                continue
            if uid not in labels_of:
                try:
                    labels_of[uid] = labeler(uid, reports[uid])
                except DataError as error:
                    policy(str(error))
                    labels_of[uid] = None
            if labels_of[uid] is None:
                continue
            records.append({"image_path": root / "images" / "images_normalized" / filename,
                            "where": f"{projections_path} line {line}", "id": filename.split(".")[0],
                            "patient_id": uid, "view": view.upper(), "labels": labels_of[uid],
                            "report": reports[uid]})
        super().__init__(records, transform, policy, DATASET, check_images)
        self.empty_reports = empty
        print(self.summary() + f" ({split}{', frontal only' if frontal_only else ''}; "
                               f"{empty} studies without findings or impression left out)")


class IUXrayR2GenDataset(RecordDataset):
    """R2Gen annotation.json. image_index: 0 or 1 (one image per study) or "all" (one sample per image).

    official_split=True uses the file's own train/val/test keys; False makes a 70/15/15 split by id.
    The R2Gen report is the Kaggle findings only, so report = clean_report(report, None); the file's own
    string stays in record["raw_report"] (R2Gen's scoring protocol starts from it, metrics/text.R2GenVocabulary).
    """

    label_names, box_classes = CHEXPERT_LABELS, []

    def __init__(self, annotation_path, image_root, split="train", transform=None, image_index=0,
                 official_split=True, labels_csv=None, split_file=None, split_fractions=(0.7, 0.15, 0.15),
                 split_seed=0, on_error="stop", check_images=False):
        from data.reports import clean_report
        _check_split(split)
        annotation_path, image_root = Path(annotation_path), Path(image_root)
        if not annotation_path.exists():
            raise DataError(f"{DATASET}: annotation file not found: {annotation_path}")
        if not image_root.is_dir():
            raise DataError(f"{DATASET}: image root '{image_root}' is not a folder; expected <id>/0.png there")
        policy = make_policy(on_error, DATASET)
        text = read_text(annotation_path)  # one JSON document: a byte that is not UTF-8 stops
        try:
            # some copies of the file carry whitespace around the split keys; the key names are checked below
            annotation = {key.strip(): value for key, value in json.loads(text).items()}
        except (ValueError, AttributeError) as error:
            raise DataError(f"{annotation_path}: not a JSON object with keys train/val/test ({error})") from None
        if set(annotation) != {"train", "val", "test"}:
            raise DataError(f"{annotation_path}: top-level keys {sorted(annotation)}, expected train, val, test")
        entries, first_place = [], {}
        for key in ("train", "val", "test"):
            for position, entry in enumerate(annotation[key]):
                where = f"{annotation_path} [{key!r}][{position}]"
                missing = [k for k in ("id", "report", "image_path") if k not in entry]
                if missing or not isinstance(entry.get("image_path"), list):
                    policy(f"{where}: expected keys id, report, image_path (a list), split; missing {missing}")
                    continue
                study = str(entry["id"])
                if study in first_place:  # a repeated id would be extra samples of one study
                    policy(f"{annotation_path}: id {study} at [{first_place[study][0]!r}][{first_place[study][1]}] "
                           f"and [{key!r}][{position}]; expected one entry per id")
                    continue
                first_place[study] = (key, position)
                entries.append((key, where, entry))
        assignment = None
        if split != "all" and not official_split:
            split_file = split_file or annotation_path.parent / f"iu_xray_r2gen_patient_split_seed{split_seed}.json"
            assignment = load_or_make_split(split_file, [str(e["id"]) for _, _, e in entries], split_fractions,
                                            split_seed, DATASET)
        labeler = _ReportLabels(labels_csv, "id", policy)
        records = []
        for key, where, entry in entries:
            study = str(entry["id"])
            if split != "all" and (assignment[study] if assignment else key) != split:
                continue
            report = clean_report(entry["report"], None)
            try:
                labels = labeler(study, report)
            except DataError as error:
                policy(str(error))
                continue
            paths = entry["image_path"] if image_index == "all" else entry["image_path"][image_index:image_index + 1]
            if not paths:
                policy(f"{where}: has no image_path[{image_index}]")
            for relative in paths:
                records.append({"image_path": image_root / relative, "where": where,
                                "id": f"{study}/{Path(relative).stem}", "patient_id": study, "view": "UNKNOWN",
                                "labels": labels, "report": report, "raw_report": entry["report"]})
        super().__init__(records, transform, policy, DATASET, check_images)
        print(self.summary() + f" (R2Gen {split}, {'official' if official_split else 'patient'} split)")


# ----------------------------------------------------------------------------------------------------------
# writers: phantoms in the same layouts, read back by the readers above in the tests

def write_iu_xray(root, dataset_or_samples, lateral_every=2, labels_csv=True):
    """Write samples in the Kaggle layout: uid = position + 1, one Frontal image each, plus a Lateral row
    (the transposed picture) for every `lateral_every`-th study. With labels_csv, also write
    `chexbert_labels.csv` (uid + the 14 labels, 1.0 or blank). -> {"root", "labels_csv", "uids"}."""
    from data.reports import split_sections
    root = Path(root)
    report_rows, projection_rows, label_rows, uids = [], [], [], []
    for position, sample in enumerate(iterate_samples(dataset_or_samples)):
        uid = str(position + 1)
        findings, impression = split_sections(sample["report"])
        report_rows.append([uid, "phantom", "phantom", "PA and lateral chest", "", "None.", findings, impression])
        pixels = image_uint8(sample["image"])
        # the file-name suffix does not tell the view (as in the real data): it alternates here
        frontal, lateral = ("1001", "2001") if position % 2 == 0 else ("2001", "1001")
        frontal_name = f"{uid}_IM-{position:04d}-{frontal}.dcm.png"
        save_image(pixels, root / "images" / "images_normalized" / frontal_name)
        projection_rows.append([uid, frontal_name, "Frontal"])
        if lateral_every and position % lateral_every == 0:
            lateral_name = f"{uid}_IM-{position:04d}-{lateral}.dcm.png"
            save_image(np.ascontiguousarray(pixels.T), root / "images" / "images_normalized" / lateral_name)
            projection_rows.append([uid, lateral_name, "Lateral"])
        label_rows.append([uid] + ["1.0" if v == 1 else "" for v in sample["labels"].tolist()])
        uids.append(uid)
    write_csv(root / "indiana_reports.csv",
              ["uid", "MeSH", "Problems", "image", "indication", "comparison", "findings", "impression"], report_rows)
    write_csv(root / "indiana_projections.csv", ["uid", "filename", "projection"], projection_rows)
    labels_path = None
    if labels_csv:
        labels_path = root / "chexbert_labels.csv"
        write_csv(labels_path, ["uid"] + CHEXPERT_LABELS, label_rows)
    return {"root": root, "labels_csv": labels_path, "uids": uids}


def write_r2gen_annotation(root, dataset_or_samples, splits=("train", "train", "val", "test")):
    """Write annotation.json + images/<id>/0.png (frontal) and 1.png (transposed); report = findings only.
    Study i gets splits[i % len(splits)]. -> {"annotation", "image_root", "ids"}."""
    from data.reports import split_sections
    root = Path(root)
    annotation = {"train": [], "val": [], "test": []}
    ids = []
    for position, sample in enumerate(iterate_samples(dataset_or_samples)):
        study = f"CXR{position + 1}_IM-{position:04d}"
        pixels = image_uint8(sample["image"])
        save_image(pixels, root / "images" / study / "0.png")
        save_image(np.ascontiguousarray(pixels.T), root / "images" / study / "1.png")
        split = splits[position % len(splits)]
        annotation[split].append({"id": study, "report": split_sections(sample["report"])[0],
                                  "image_path": [f"{study}/0.png", f"{study}/1.png"], "split": split})
        ids.append(study)
    (root / "annotation.json").write_text(json.dumps(annotation))
    return {"annotation": root / "annotation.json", "image_root": root / "images", "ids": ids}
