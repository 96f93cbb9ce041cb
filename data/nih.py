"""NIH ChestX-ray14: Data_Entry_2017(_v2020).csv, BBox_List_2017.csv, images/, the official split lists.

Layout under data.root (research/concept_cam_datasets.md §2, research/wsrpn_rodeo.md §5):
    Data_Entry_2017_v2020.csv (as the NIH site ships it today) or Data_Entry_2017.csv (older mirrors); the
                          same columns. When both are there the v2020 file is read; the summary line names it.
                          Image Index, Finding Labels, Follow-up #, Patient ID, Patient Age, Patient Gender,
                          View Position, OriginalImage[Width, Height], OriginalImagePixelSpacing[x, y]
                          (the commas inside the brackets split the header into extra columns; trailing
                          empty header cells are dropped, the named columns are found by name)
    BBox_List_2017.csv    Image Index, Finding Label, Bbox [x, y, w, h]  (optional; also split, with trailing
                          empty columns: the box is read by position, columns 3-6)
    images/<Image Index>  PNG, 1024 x 1024 8-bit grey (some decode with 2 channels: read with convert('L'))
    train_val_list.txt, test_list.txt   (optional, the official patient-wise split, one Image Index a line)

Design choices:
- labels (14,) over NIH_LABELS; `Finding Labels` is `|`-joined or exactly `No Finding` (all zeros); an
  unknown name is a bad row.
- Boxes: x, y, w, h in the 1024-px frame -> x1, y1, x2, y2, rescaled to the image actually loaded (so a
  downsized copy of the PNGs works, e.g. one made by `python -m data.prepare nih`) and then moved by the
  transform. `Infiltrate` is renamed
  `Infiltration`; box_labels index NIH_BOX_CLASSES. A box outside the 1024 frame is a bad row.
- Splits: split="all" takes every image. split_mode="official": test = test_list.txt, and train/val are
  cut by patient from train_val_list.txt (val_fraction); split_mode="patient": 70/15/15 by patient over
  all images; split_mode="wsrpn" (research/wsrpn_rodeo.md §5): train = every image of the patients with NO
  box in BBox_List_2017.csv, val/test = the box patients cut 50/50 by patient (the reference cuts by box rows,
  half of the rows to val; a patient cut is the reproducible equivalent). All save the patient split in a
  JSON file and reuse it.
- Sample keys: image, labels, boxes, box_labels, id (Image Index stem), patient_id, view (View Position).
"""
from pathlib import Path

import numpy as np

from data.io import (RecordDataset, check_box, column_index, data_root, first_existing, first_of_each, image_uint8,
                     iterate_samples, load_or_make_split, make_policy, parse_float, read_csv, read_text, row_errors,
                     save_image, write_csv)
from data.labels import NIH_BOX_CLASSES, NIH_LABELS, PHANTOM_FINDINGS
from data.sample import DataError

DATASET = "NIH ChestX-ray14"
BOX_FRAME = 1024  # the boxes' pixel frame: the released 1024 x 1024 PNGs
BOX_NAME_FIXES = {"Infiltrate": "Infiltration"}
DATA_ENTRY_NAMES = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv")  # the first one present is read
DATA_ENTRY_HEADER = ["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", "Patient Gender",
                     "View Position", "OriginalImage[Width", "Height]", "OriginalImagePixelSpacing[x", "y]", ""]
BBOX_HEADER = ["Image Index", "Finding Label", "Bbox [x", "y", "w", "h]", "", "", ""]


def read_data_entry(path, policy):
    """-> [(line, image_index, patient_id, view, labels (14,))], one per Image Index (a repeat is a policy message)."""
    header, rows = read_csv(path, policy)
    col = column_index(header, ["Image Index", "Finding Labels", "Patient ID", "View Position"], path)

    def parse(line, cells):
        names = cells[col["Finding Labels"]].strip()
        labels = np.zeros(len(NIH_LABELS), np.float32)
        if names != "No Finding":
            for name in names.split("|"):
                if name not in NIH_LABELS:
                    raise DataError(f"{path} line {line}: unknown finding label {name!r}; expected 'No Finding' "
                                    f"or '|'-joined names from {NIH_LABELS}")
                labels[NIH_LABELS.index(name)] = 1
        patient = cells[col["Patient ID"]].strip()
        if not patient:
            raise DataError(f"{path} line {line}: column 'Patient ID' is empty")
        image = cells[col["Image Index"]].strip()
        return line, image, (line, image, patient, cells[col["View Position"]].strip(), labels)

    return list(first_of_each(policy, path, "Image Index", row_errors(policy, rows, parse)).values())


def read_bbox_list(path, policy, known_images, entry_name="Data_Entry_2017.csv"):
    """-> {image_index: [(x1, y1, x2, y2, class index)]} in the 1024 frame. The file has no key column; a row
    that repeats another exactly (image, label and box) would count one box twice: a policy message naming both
    lines, the repeat left out."""
    header, rows = read_csv(path, policy)
    if header[:2] != ["Image Index", "Finding Label"] or len(header) < 6 or not header[2].startswith("Bbox"):
        raise DataError(f"{path}: header {header} is not 'Image Index,Finding Label,Bbox [x,y,w,h]'")
    boxes = {}

    def parse(line, cells):
        image, name = cells[0].strip(), BOX_NAME_FIXES.get(cells[1].strip(), cells[1].strip())
        if name not in NIH_BOX_CLASSES:
            raise DataError(f"{path} line {line}: unknown box label {cells[1]!r}; expected one of {NIH_BOX_CLASSES} "
                            f"(or 'Infiltrate')")
        if image not in known_images:
            raise DataError(f"{path} line {line}: image {image} has no row in {entry_name}")
        x, y, w, h = (parse_float(cells[2 + k], path, line, column) for k, column in enumerate("xywh"))
        box = (x, y, x + w, y + h)
        check_box(box, BOX_FRAME, BOX_FRAME, f"{path} line {line}")
        return line, f"{image} {name} [{x!r}, {y!r}, {w!r}, {h!r}]", (image, box + (NIH_BOX_CLASSES.index(name),))

    unique = first_of_each(policy, path, "box", row_errors(policy, rows, parse), "each box once (no repeated row)")
    for image, box in unique.values():
        boxes.setdefault(image, []).append(box)
    return boxes


def read_image_list(path):
    if not Path(path).exists():
        raise DataError(f"{DATASET}: split_mode='official' needs {path} (one Image Index a line)")
    return {line.strip() for line in read_text(path).splitlines() if line.strip()}


class NihDataset(RecordDataset):
    """ChestX-ray14. split: train | val | test | all; split_mode: official | patient."""

    label_names, box_classes = NIH_LABELS, NIH_BOX_CLASSES

    def __init__(self, root, split="all", transform=None, split_mode="official", val_fraction=0.1,
                 split_file=None, split_seed=0, image_dir="images", with_boxes=True, boxes_only=False,
                 on_error="stop", check_images=False):
        if split not in ("train", "val", "test", "all") or split_mode not in ("official", "patient", "wsrpn"):
            raise ValueError(f"{DATASET}: split must be train/val/test/all and split_mode official/patient/wsrpn, "
                             f"got {split!r}, {split_mode!r}")
        root = data_root(root, [DATA_ENTRY_NAMES, image_dir], DATASET)
        policy = make_policy(on_error, DATASET)
        entry_path = first_existing(root, DATA_ENTRY_NAMES)
        entries = read_data_entry(entry_path, policy)
        boxes = {}
        if with_boxes and (root / "BBox_List_2017.csv").exists():
            boxes = read_bbox_list(root / "BBox_List_2017.csv", policy, {e[1] for e in entries}, entry_path.name)
        patient_of = {image: patient for _, image, patient, _, _ in entries}
        if split_mode == "wsrpn" and split != "all" and not boxes:
            raise DataError(f"{DATASET}: split_mode='wsrpn' needs {root / 'BBox_List_2017.csv'} with boxes")
        split_of = self._assign_splits(root, split, split_mode, val_fraction, split_file, split_seed, patient_of,
                                       set(boxes))
        records = []
        for line, image, patient, view, labels in entries:
            if split != "all" and split_of[image] != split:
                continue
            if boxes_only and image not in boxes:
                continue
            image_boxes = np.array([b[:4] for b in boxes.get(image, [])], np.float32).reshape(-1, 4)
            records.append({"image_path": root / image_dir / image, "where": f"{entry_path} line {line}",
                            "id": Path(image).stem, "patient_id": patient, "view": view, "labels": labels,
                            "boxes": image_boxes,
                            "box_labels": np.array([b[4] for b in boxes.get(image, [])], np.int64),
                            "box_frame": (BOX_FRAME, BOX_FRAME)})
        super().__init__(records, transform, policy, DATASET, check_images)
        print(self.summary() + f" ({split}, {split_mode} split; {sum(len(r['boxes']) for r in records)} boxes; "
                               f"{entry_path.name})")

    @staticmethod
    def _assign_splits(root, split, split_mode, val_fraction, split_file, split_seed, patient_of, box_images=()):
        """-> {image_index: split} (empty for split='all')."""
        if split == "all":
            return {}
        split_file = split_file or root / "splits" / f"nih_{split_mode}_patient_split_seed{split_seed}.json"
        if split_mode == "wsrpn":
            box_patients = {patient_of[image] for image in box_images}
            by_patient = load_or_make_split(split_file, box_patients, (0.0, 0.5, 0.5), split_seed, DATASET)
            return {image: by_patient.get(patient, "train") for image, patient in patient_of.items()}
        if split_mode == "patient":
            by_patient = load_or_make_split(split_file, patient_of.values(), (0.7, 0.15, 0.15), split_seed, DATASET)
            return {image: by_patient[patient] for image, patient in patient_of.items()}
        test_images = read_image_list(root / "test_list.txt")
        train_val_images = read_image_list(root / "train_val_list.txt")
        train_val_patients = {patient_of[i] for i in train_val_images if i in patient_of}
        test_patients = {patient_of[i] for i in test_images if i in patient_of}
        if train_val_patients & test_patients:
            raise DataError(f"{DATASET}: patients {sorted(train_val_patients & test_patients)[:3]} are in both "
                            f"train_val_list.txt and test_list.txt; the official split is patient-wise")
        if split == "test":   # the official test list alone: no train / val split is made or written
            return {image: "test" if image in test_images else "train_val" for image in patient_of}
        by_patient = load_or_make_split(split_file, train_val_patients, (1 - val_fraction, val_fraction, 0.0),
                                        split_seed, DATASET)
        split_of = {}
        for image, patient in patient_of.items():
            if image in test_images:
                split_of[image] = "test"
            elif image in train_val_images:
                split_of[image] = by_patient[patient]
            else:
                raise DataError(f"{DATASET}: image {image} of the Data_Entry CSV is in neither train_val_list.txt "
                                f"nor test_list.txt")
        return split_of


# ----------------------------------------------------------------------------------------------------------
# writer: phantoms in the NIH layout

# phantom finding -> NIH label (findings without an NIH counterpart are left out)
PHANTOM_TO_NIH = {"cardiomegaly": "Cardiomegaly", "pleural effusion": "Effusion", "pneumothorax": "Pneumothorax",
                  "consolidation": "Consolidation", "atelectasis": "Atelectasis", "edema": "Edema",
                  "nodule": "Nodule", "emphysema": "Emphysema", "pleural thickening": "Pleural_Thickening"}


def write_nih(root, dataset_or_samples, images_per_patient=2, test_every=4, data_entry_name="Data_Entry_2017.csv"):
    """Write Data_Entry_2017.csv (or data_entry_name) and BBox_List_2017.csv (the real split headers; boxes as
    x, y, w, h in the 1024 frame), images/, train_val_list.txt and test_list.txt (every test_every-th patient is
    test). Any image size works: (1, 1024, 1024) samples give the real PNG size.
    Phantom findings map to NIH names by PHANTOM_TO_NIH; the others are left out.
    -> {"root", "images", "labels" (per image (14,) over NIH_LABELS), "boxes" (per image (N, 4) xyxy in the
    written image's pixels, for the NIH box classes)}."""
    root = Path(root)
    entry_rows, box_rows, images, all_labels, all_boxes, tests, train_vals = [], [], [], [], [], [], []
    for position, sample in enumerate(iterate_samples(dataset_or_samples)):
        patient = position // images_per_patient + 1
        image = f"{patient:08d}_{position % images_per_patient:03d}.png"
        pixels = image_uint8(sample["image"])
        save_image(pixels, root / "images" / image)
        height, width = pixels.shape
        labels = np.zeros(len(NIH_LABELS), np.float32)
        kept_boxes = []
        for box, finding in zip(sample["boxes"].tolist(), sample["box_labels"].tolist()):
            name = PHANTOM_TO_NIH.get(PHANTOM_FINDINGS[finding])
            if name is None:
                continue
            labels[NIH_LABELS.index(name)] = 1
            if name in NIH_BOX_CLASSES:
                x1, y1, x2, y2 = box[0] * BOX_FRAME / width, box[1] * BOX_FRAME / height, \
                    box[2] * BOX_FRAME / width, box[3] * BOX_FRAME / height
                written = "Infiltrate" if name == "Infiltration" else name
                box_rows.append([image, written] + [f"{v:.6f}" for v in (x1, y1, x2 - x1, y2 - y1)] + ["", "", ""])
                kept_boxes.append(box)
        names = "|".join(n for n, v in zip(NIH_LABELS, labels) if v) or "No Finding"
        entry_rows.append([image, names, position % images_per_patient, patient, 58, "M", "PA", 2682, 2749,
                           0.143, 0.143])
        (tests if (patient - 1) % test_every == test_every - 1 else train_vals).append(image)
        images.append(image)
        all_labels.append(labels)
        all_boxes.append(np.array(kept_boxes, np.float32).reshape(-1, 4))
    write_csv(root / data_entry_name, DATA_ENTRY_HEADER, entry_rows)
    write_csv(root / "BBox_List_2017.csv", BBOX_HEADER, box_rows)
    (root / "train_val_list.txt").write_text("".join(f"{i}\n" for i in train_vals))
    (root / "test_list.txt").write_text("".join(f"{i}\n" for i in tests))
    return {"root": root, "images": images, "labels": all_labels, "boxes": all_boxes}
