"""MIMIC-CXR-JPG: the official CSV files + report texts, and the seed-004 master JSONL.

Official layout under data.root (research/contrastive_vl.md §5); each CSV may be plain or `.gz`:
    mimic-cxr-2.0.0-split.csv      dicom_id, study_id, subject_id, split (train | validate | test)
    mimic-cxr-2.0.0-chexpert.csv   subject_id, study_id, then 14 labels by NAME (1.0 / 0.0 / -1.0 / blank)
    mimic-cxr-2.0.0-metadata.csv   dicom_id, subject_id, study_id, ..., ViewPosition, ...
    files/p{subject[:2]}/p{subject}/s{study}/{dicom}.jpg
    files/p{subject[:2]}/p{subject}/s{study}.txt      (the report; may live under a separate report_root)

Master JSONL (seed 004, `mimic_master_official_split.jsonl`): one JSON object per line,
    {"image_path": str (relative to image_root, or absolute), "report": str (findings + impression narrative),
     "labels": {the 14 CHEXPERT_LABELS names: 0 | 1} (positive-only: 1 = CheXpert positive),
     "split": "train" | "validate" | "test", "subject_id": str, "study_id": str, "dicom_id": str}
The reader also takes the seed authors' form of `labels`: a list of 14 values 0/1 in CheXpert order
(CHEXPERT_LABELS: No Finding, Enlarged Cardiomediastinum, Cardiomegaly, ..., Support Devices). Which form a
file uses is read from its first line; every line must then use the same form.
Its builder keeps frontal PA/AP images, the official split, and drops reports under 30 characters; the
reader re-applies that length rule (`min_report_chars`), counting what it drops.

Design choices:
- One sample per image (dicom); frontal = ViewPosition PA or AP (the official VIEW_MAP); images whose
  ViewPosition is missing are not frontal. Labels are per study (joined on study_id), over CHEXPERT_LABELS;
  uncertain (-1) kept by default (`uncertain="keep" | "zero" | "one"`), blank -> 0.
- The official split name `validate` is called `val` here.
- Reports are read lazily in __getitem__ and cut with data.reports.mimic_sections, then clean_report.
- Sample keys: image, labels, report, id (dicom_id), patient_id (subject_id), view (ViewPosition).
"""
import json
from pathlib import Path

import numpy as np

from data.io import (RecordDataset, column_index, data_root, first_existing, first_of_each, image_uint8,
                     iterate_samples, make_policy, read_csv, read_label_table, read_lines, read_text, row_errors,
                     save_image, write_csv)
from data.labels import CHEXPERT_LABELS
from data.sample import DataError

DATASET = "MIMIC-CXR"
PREFIX = "mimic-cxr-2.0.0-"
EXPECTED_FILES = [(f"{PREFIX}{kind}.csv.gz", f"{PREFIX}{kind}.csv") for kind in ("split", "chexpert", "metadata")] \
    + ["files"]
SPLIT_NAMES = {"train": "train", "validate": "val", "val": "val", "test": "test"}
FRONTAL_VIEWS = ("PA", "AP")
MASTER_KEYS = ("image_path", "report", "labels", "split", "subject_id", "study_id", "dicom_id")


def study_folder(subject_id, study_id):
    """-> 'files/p10/p10000032/s50414267' (relative)."""
    return Path("files") / f"p{subject_id[:2]}" / f"p{subject_id}" / f"s{study_id}"


def _check_split(split):
    if split not in ("train", "val", "test", "all"):
        raise ValueError(f"{DATASET}: split must be train, val, test or all, got {split!r}")


class MimicCxrDataset(RecordDataset):
    """MIMIC-CXR-JPG from the official files. split: train | val | test | all."""

    label_names, box_classes = CHEXPERT_LABELS, []

    def __init__(self, root, split="train", transform=None, frontal_only=True, uncertain="keep", report_root=None,
                 with_reports=True, on_error="stop", check_images=False):
        _check_split(split)
        if uncertain not in ("keep", "zero", "one"):
            raise ValueError(f"{DATASET}: uncertain must be keep, zero or one, got {uncertain!r}")
        root = data_root(root, EXPECTED_FILES, DATASET)
        policy = make_policy(on_error, DATASET)
        self.report_root = Path(report_root) if report_root else root
        self.with_reports = with_reports
        split_path, chexpert_path, metadata_path = (first_existing(root, names) for names in EXPECTED_FILES[:3])

        header, rows = read_csv(metadata_path, policy)
        col_m = column_index(header, ["dicom_id", "ViewPosition"], metadata_path)
        views = first_of_each(policy, metadata_path, "dicom_id", [
            (line, cells[col_m["dicom_id"]].strip(), cells[col_m["ViewPosition"]].strip()) for line, cells in rows])

        table = read_label_table(chexpert_path, "study_id", CHEXPERT_LABELS, policy)

        header, rows = read_csv(split_path, policy)
        col = column_index(header, ["dicom_id", "study_id", "subject_id", "split"], split_path)

        def parse(line, cells):
            dicom, study, subject, name = (cells[col[k]].strip()
                                           for k in ("dicom_id", "study_id", "subject_id", "split"))
            if not (subject.isdigit() and study.isdigit()):
                raise DataError(f"{split_path} line {line}: subject_id and study_id must be digits, "
                                f"got {subject!r}, {study!r}")
            if name not in SPLIT_NAMES:
                raise DataError(f"{split_path} line {line}: split must be train, validate or test, got {name!r}")
            if dicom not in views:
                raise DataError(f"{split_path} line {line}: dicom_id {dicom} has no row in {metadata_path.name}")
            return line, dicom, (line, dicom, study, subject, SPLIT_NAMES[name])

        records = []
        # a dicom_id listed twice would be a second sample of the same image
        for line, dicom, study, subject, name in first_of_each(policy, split_path, "dicom_id",
                                                               row_errors(policy, rows, parse)).values():
            if (split != "all" and name != split) or (frontal_only and views[dicom] not in FRONTAL_VIEWS):
                continue
            if study not in table:
                policy(f"{split_path} line {line}: study {study} has no row in {chexpert_path.name}")
                continue
            labels = table[study].copy()
            if uncertain != "keep":
                labels[labels == -1] = 0.0 if uncertain == "zero" else 1.0
            folder = study_folder(subject, study)
            records.append({"image_path": root / folder / f"{dicom}.jpg", "where": f"{split_path} line {line}",
                            "report_path": self.report_root / folder.parent / f"s{study}.txt",
                            "id": dicom, "patient_id": subject, "view": views[dicom], "labels": labels})
        super().__init__(records, transform, policy, DATASET, check_images)
        print(self.summary() + f" ({split}{', frontal PA/AP' if frontal_only else ''})")

    def read_report(self, record):
        if not self.with_reports:
            return None
        from data.reports import clean_report, mimic_sections
        path = record["report_path"]
        if not path.exists():
            raise DataError(f"report not found: {path} (for {record['where']})")
        sections = mimic_sections(read_text(path))  # not UTF-8: DataError naming the file and line
        return clean_report(sections["findings"], sections["impression"])


class MimicMasterDataset(RecordDataset):
    """The seed-004 master JSONL (schema in the module docstring). split: train | val | test | all."""

    label_names, box_classes = CHEXPERT_LABELS, []

    def __init__(self, path, image_root, split="train", transform=None, min_report_chars=30, on_error="stop",
                 check_images=False):
        _check_split(split)
        path, image_root = Path(path), Path(image_root)
        if not path.exists():
            raise DataError(f"{DATASET}: master JSONL not found: {path}")
        policy = make_policy(on_error, DATASET)
        records, short, line_of_dicom, self.schema = [], 0, {}, None
        for line_number, line in read_lines(path, policy):  # a line that is not UTF-8 goes to the policy
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                if self.schema is None and isinstance(entry, dict):   # the first line decides the labels' form
                    self.schema = "list" if isinstance(entry.get("labels"), list) else "dict"
                record = self._parse(entry, f"{path} line {line_number}", image_root, self.schema)
            except ValueError as error:  # DataError is a ValueError, and so is a JSON decoding error
                policy(str(error) if isinstance(error, DataError)
                       else f"{path} line {line_number}: not valid JSON ({error})")
                continue
            # a repeated dicom_id is a second sample of one image (checked over all splits: it may also cross
            # them); a short report that is dropped anyway is no sample, so it is not counted as a repeat
            if len(record["report"]) >= min_report_chars:
                if record["id"] in line_of_dicom:
                    policy(f"{path}: dicom_id {record['id']} on lines {line_of_dicom[record['id']]} and "
                           f"{line_number}; expected one line per dicom_id")
                    continue
                line_of_dicom[record["id"]] = line_number
            if split != "all" and record.pop("split") != split:
                continue
            if len(record["report"]) < min_report_chars:
                short += 1
                continue
            records.append(record)
        super().__init__(records, transform, policy, DATASET, check_images)
        print(self.summary() + f" (master JSONL {split}, labels as a {self.schema}; {short} reports under "
              f"{min_report_chars} chars left out)")

    @staticmethod
    def _parse(entry, where, image_root, schema="dict"):
        if not isinstance(entry, dict) or any(k not in entry for k in MASTER_KEYS):
            found = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
            raise DataError(f"{where}: expected the keys {', '.join(MASTER_KEYS)}; found {found}")
        labels = entry["labels"]
        if schema == "list":                          # the seed authors' form: 14 values in CheXpert order
            if not isinstance(labels, list) or len(labels) != len(CHEXPERT_LABELS):
                raise DataError(f"{where}: 'labels' must be a list of {len(CHEXPERT_LABELS)} values in CheXpert "
                                f"order, as on the file's first line; got {labels!r}")
            labels = dict(zip(CHEXPERT_LABELS, labels))
        unknown = sorted(set(labels) - set(CHEXPERT_LABELS)) if isinstance(labels, dict) else None
        if unknown is None or unknown or set(labels) != set(CHEXPERT_LABELS):
            raise DataError(f"{where}: 'labels' must map the 14 CheXpert names to 0/1; unknown names {unknown}, "
                            f"missing {sorted(set(CHEXPERT_LABELS) - set(labels or {}))}")
        if any(labels[n] not in (0, 1) for n in CHEXPERT_LABELS):
            raise DataError(f"{where}: 'labels' values must be 0 or 1, got {labels}")
        if entry["split"] not in SPLIT_NAMES:
            raise DataError(f"{where}: split must be train, validate or test, got {entry['split']!r}")
        report = " ".join(str(entry["report"]).split())
        return {"image_path": image_root / entry["image_path"], "where": where, "id": str(entry["dicom_id"]),
                "patient_id": str(entry["subject_id"]), "view": entry.get("view", "FRONTAL"),
                "labels": np.array([labels[n] for n in CHEXPERT_LABELS], np.float32), "report": report,
                "split": SPLIT_NAMES[entry["split"]]}


# ----------------------------------------------------------------------------------------------------------
# writers: phantoms in the same layouts

def _phantom_ids(position, studies_per_subject, splits):
    subject_number = position // studies_per_subject
    subject = str(10000000 + subject_number)
    study = str(50000000 + position)
    dicom = f"{position:08x}-phantom-{subject}"
    return subject, study, dicom, splits[subject_number % len(splits)]


def write_mimic_cxr(root, dataset_or_samples, studies_per_subject=2, lateral_every=3, gz=True,
                    splits=("train", "train", "train", "validate", "test")):
    """Write the official layout: JPEG images, report .txt (FINDINGS:/IMPRESSION:), the three CSVs.
    Subject k holds studies_per_subject consecutive samples and gets splits[k % len(splits)]; every
    lateral_every-th study also gets a LATERAL image. Labels: 1.0 for positives, blank otherwise.
    -> {"root", "dicom_ids" (frontal, in sample order), "splits" (per frontal dicom, official names)}."""
    from data.reports import split_sections
    root = Path(root)
    suffix = ".csv.gz" if gz else ".csv"
    split_rows, metadata_rows, label_rows, dicoms, dicom_splits = [], [], [], [], []
    for position, sample in enumerate(iterate_samples(dataset_or_samples)):
        subject, study, dicom, split = _phantom_ids(position, studies_per_subject, splits)
        folder = root / study_folder(subject, study)
        pixels = image_uint8(sample["image"])
        save_image(pixels, folder / f"{dicom}.jpg")
        images = [(dicom, "PA" if position % 2 == 0 else "AP")]
        if lateral_every and position % lateral_every == 0:
            save_image(np.ascontiguousarray(pixels.T), folder / f"{dicom}-lateral.jpg")
            images.append((f"{dicom}-lateral", "LATERAL"))
        for image_id, view in images:
            split_rows.append([image_id, study, subject, split])
            metadata_rows.append([image_id, subject, study, "CHEST (PA AND LAT)", view, pixels.shape[0],
                                  pixels.shape[1], "21800506", "213014.531"])
        findings, impression = split_sections(sample["report"])
        (folder.parent / f"s{study}.txt").write_text(
            f"                                 FINAL REPORT\n EXAMINATION:  CHEST (PA AND LAT)\n\n"
            f" INDICATION:  ___ with cough.\n\n FINDINGS:\n {findings}\n\n IMPRESSION:\n {impression}\n")
        labels = dict(zip(CHEXPERT_LABELS, sample["labels"].tolist()))
        label_rows.append([subject, study] + ["1.0" if labels[n] == 1 else "" for n in sorted(CHEXPERT_LABELS)])
        dicoms.append(dicom)
        dicom_splits.append(split)
    write_csv(root / f"{PREFIX}split{suffix}", ["dicom_id", "study_id", "subject_id", "split"], split_rows)
    write_csv(root / f"{PREFIX}chexpert{suffix}", ["subject_id", "study_id"] + sorted(CHEXPERT_LABELS), label_rows)
    write_csv(root / f"{PREFIX}metadata{suffix}",
              ["dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition", "Rows",
               "Columns", "StudyDate", "StudyTime"], metadata_rows)
    return {"root": root, "dicom_ids": dicoms, "splits": dicom_splits}


def write_master_jsonl(root, dataset_or_samples, studies_per_subject=2,
                       splits=("train", "train", "train", "validate", "test")):
    """Write JPEGs under root/files/... and root/mimic_master_official_split.jsonl (positive-only labels,
    report = findings + impression narrative). -> {"path", "image_root", "dicom_ids"}."""
    from data.reports import split_sections
    root = Path(root)
    lines, dicoms = [], []
    for position, sample in enumerate(iterate_samples(dataset_or_samples)):
        subject, study, dicom, split = _phantom_ids(position, studies_per_subject, splits)
        relative = study_folder(subject, study) / f"{dicom}.jpg"
        save_image(image_uint8(sample["image"]), root / relative)
        findings, impression = split_sections(sample["report"])
        labels = {n: int(v == 1) for n, v in zip(CHEXPERT_LABELS, sample["labels"].tolist())}
        lines.append(json.dumps({"image_path": str(relative), "report": f"{findings} {impression}".strip(),
                                 "labels": labels, "split": split, "subject_id": subject, "study_id": study,
                                 "dicom_id": dicom}))
        dicoms.append(dicom)
    path = root / "mimic_master_official_split.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return {"path": path, "image_root": root, "dicom_ids": dicoms}
