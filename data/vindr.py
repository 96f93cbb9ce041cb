"""VinDr-CXR (PhysioNet v1.0.0): image-level labels of 3 readers, reader boxes, PNG (or DICOM) images.

Layout under data.root (research/concept_cam_datasets.md §1); the CSVs may also sit in root/annotations/:
    image_labels_train.csv   image_id, rad_id, 22 local + 6 global label columns (0/1), one row per reader
    image_labels_test.csv    image_id, 28 label columns (consensus, no rad_id; spells `Other disease`)
    annotations_train.csv    image_id, rad_id, class_name, x_min, y_min, x_max, y_max (`No finding`: empty box)
    annotations_test.csv     the same columns (rad_id may be absent)
    train/<image_id>.png, test/<image_id>.png    (or .dicom with image_format="dicom", needs pydicom)
    image_sizes.csv          optional: image_id, height, width of the ORIGINAL DICOM; boxes are drawn in that
                             frame and are rescaled to the PNG actually loaded. Without it a PNG is taken to
                             be at the original resolution. `python -m data.prepare vindr` turns the DICOM
                             release into this PNG layout and writes image_sizes.csv.

Design choices:
- Reader aggregation (`aggregation`): "any" = a label is positive if any reader marks it (max over readers);
  "majority" = if more than half of the image's readers do (>= 2 of 3). A test image has one consensus row,
  so both rules give that row.
- Box rule: boxes are kept only for concepts whose AGGREGATED label is positive; all readers' boxes of such
  a concept are kept (the union of readers, no fusion), so a negative concept never carries a box.
- `Other disease` (test CSV) is renamed `Other diseases`; labels/boxes are read by column/class NAME.
- VinDr has no patient ids: an image is its own patient. split: train | val | test; val is cut from the
  train images (val_fraction > 0) and saved as a JSON split file.
- Sample keys: image, labels (28,) = concepts then diseases, concepts (22,), diseases (6,), boxes,
  box_labels (into VINDR_CONCEPTS), id (image_id), patient_id (= image_id), view ("PA").
"""
from pathlib import Path

import numpy as np
from PIL import Image

from data.io import (RecordDataset, check_box, column_index, data_root, first_existing, first_of_each, image_uint8,
                     iterate_samples, load_dicom, load_or_make_split, make_policy, parse_float, parse_label, read_csv,
                     require_pydicom, row_errors, save_image, write_csv)
from data.labels import VINDR_CONCEPTS, VINDR_DISEASES
from data.sample import DataError

DATASET = "VinDr-CXR"
LABEL_COLUMNS = VINDR_CONCEPTS + VINDR_DISEASES
BOX_COLUMNS = ["x_min", "y_min", "x_max", "y_max"]


def read_image_labels(path, policy, aggregation):
    """-> {image_id: (28,) aggregated labels}. One row per image_id and rad_id (per image_id in the test CSV,
    which has no rad_id): a repeated reader row would count that reader twice in the vote."""
    header, rows = read_csv(path, policy)
    header = ["Other diseases" if h == "Other disease" else h for h in header]
    col = column_index(header, ["image_id"] + LABEL_COLUMNS, path)
    has_reader = "rad_id" in header

    def parse(line, cells):
        values = [parse_label(cells[col[n]], path, line, n, allowed=(0.0, 1.0)) for n in LABEL_COLUMNS]
        if any(v is None for v in values):
            raise DataError(f"{path} line {line}: every label column must be 0 or 1, found an empty cell")
        image = cells[col["image_id"]].strip()
        key = f"{image} rad_id {cells[header.index('rad_id')].strip()}" if has_reader else image
        return line, key, (image, np.array(values, np.float32))

    expected = "one row per image_id and rad_id" if has_reader else "one row per image_id"
    votes = {}
    for image, labels in first_of_each(policy, path, "image_id", row_errors(policy, rows, parse), expected).values():
        votes.setdefault(image, []).append(labels)
    if aggregation == "any":
        return {image: np.max(rows, 0) for image, rows in votes.items()}
    return {image: (np.sum(rows, 0) * 2 > len(rows)).astype(np.float32) for image, rows in votes.items()}


def read_annotations(path, policy, known_images):
    """-> {image_id: [(x1, y1, x2, y2, concept index)]} in the original-image frame; `No finding` rows skipped.
    No column is a key: a row that repeats another exactly (image, reader, class and box) would count that
    reader's box twice, so it is a policy message naming both lines and the repeat is left out."""
    header, rows = read_csv(path, policy)
    col = column_index(header, ["image_id", "class_name"] + BOX_COLUMNS, path)
    reader = header.index("rad_id") if "rad_id" in header else None

    def parse(line, cells):
        image, name = cells[col["image_id"]].strip(), cells[col["class_name"]].strip()
        if name == "No finding":
            return None
        if name not in VINDR_CONCEPTS:
            raise DataError(f"{path} line {line}: unknown class_name {name!r}; expected 'No finding' or one of the "
                            f"22 local labels {VINDR_CONCEPTS}")
        if image not in known_images:
            raise DataError(f"{path} line {line}: image_id {image} has no row in the image_labels CSV")
        box = tuple(parse_float(cells[col[c]], path, line, c) for c in BOX_COLUMNS)
        by = f" rad_id {cells[reader].strip()}" if reader is not None else ""
        return line, f"{image}{by} {name} {list(box)}", (image, box + (VINDR_CONCEPTS.index(name),))

    boxes = {}
    keyed = [parsed for parsed in row_errors(policy, rows, parse) if parsed is not None]
    for image, box in first_of_each(policy, path, "box of image_id", keyed, "each box once (no repeated row)").values():
        boxes.setdefault(image, []).append(box)
    return boxes


def read_image_sizes(path, policy):
    """-> {image_id: (width, height)} from image_id,height,width."""
    header, rows = read_csv(path, policy)
    col = column_index(header, ["image_id", "height", "width"], path)

    def parse(line, cells):
        height, width = (parse_float(cells[col[c]], path, line, c) for c in ("height", "width"))
        if height <= 0 or width <= 0:
            raise DataError(f"{path} line {line}: height and width must be positive, got {height}, {width}")
        return line, cells[col["image_id"]].strip(), (width, height)

    return first_of_each(policy, path, "image_id", row_errors(policy, rows, parse))


class VinDrDataset(RecordDataset):
    """VinDr-CXR. split: train | val | test; aggregation: any | majority; image_format: png | dicom."""

    label_names, box_classes = LABEL_COLUMNS, VINDR_CONCEPTS

    def __init__(self, root, split="train", transform=None, aggregation="any", image_format="png", val_fraction=0.0,
                 split_file=None, split_seed=0, on_error="stop", check_images=False):
        if split not in ("train", "val", "test") or aggregation not in ("any", "majority") \
                or image_format not in ("png", "dicom"):
            raise ValueError(f"{DATASET}: split train/val/test, aggregation any/majority, image_format png/dicom; "
                             f"got {split!r}, {aggregation!r}, {image_format!r}")
        if image_format == "dicom":
            require_pydicom()
        files = "test" if split == "test" else "train"
        names = lambda name: (name, f"annotations/{name}")  # noqa: E731 (the two places the CSVs live)
        root = data_root(root, [names(f"image_labels_{files}.csv"), names(f"annotations_{files}.csv"), files], DATASET)
        policy = make_policy(on_error, DATASET)
        self.image_format = image_format
        labels = read_image_labels(first_existing(root, names(f"image_labels_{files}.csv")), policy, aggregation)
        annotations_path = first_existing(root, names(f"annotations_{files}.csv"))
        boxes = read_annotations(annotations_path, policy, set(labels))
        sizes_path = root / "image_sizes.csv"
        sizes = read_image_sizes(sizes_path, policy) if sizes_path.exists() else None
        images = sorted(labels)
        if split != "test" and val_fraction > 0:
            split_file = split_file or root / "splits" / f"vindr_val{val_fraction:g}_seed{split_seed}.json"
            assignment = load_or_make_split(split_file, images, (1 - val_fraction, val_fraction, 0.0), split_seed,
                                            DATASET)
            images = [i for i in images if assignment[i] == split]
        elif split == "val":
            raise ValueError(f"{DATASET}: split='val' needs val_fraction > 0 (val is cut from the train images)")
        records, dropped = [], 0
        for image in images:
            aggregated = labels[image]
            kept = [b for b in boxes.get(image, []) if aggregated[b[4]] == 1]
            dropped += len(boxes.get(image, [])) - len(kept)
            where = f"{annotations_path} (image_id {image})"
            frame = None
            if sizes is not None:
                if image not in sizes:
                    policy(f"{sizes_path}: no row for image_id {image}; expected image_id,height,width of every image")
                    continue
                frame = sizes[image]
                try:
                    for box in boxes.get(image, []):  # every reader's box, kept or not, must be inside
                        check_box(box[:4], frame[0], frame[1], where)
                except DataError as error:
                    policy(str(error))
                    continue
            suffix = ".png" if image_format == "png" else ".dicom"
            records.append({"image_path": root / files / f"{image}{suffix}", "where": where, "id": image,
                            "patient_id": image, "view": "PA", "labels": aggregated,
                            "boxes": np.array([b[:4] for b in kept], np.float32).reshape(-1, 4),
                            "box_labels": np.array([b[4] for b in kept], np.int64), "box_frame": frame,
                            "extra": {"concepts": aggregated[:len(VINDR_CONCEPTS)],
                                      "diseases": aggregated[len(VINDR_CONCEPTS):]}})
        super().__init__(records, transform, policy, DATASET, check_images)
        print(self.summary() + f" ({split}, readers aggregated by '{aggregation}'; {dropped} boxes of concepts "
                               f"negative after aggregation left out)")

    def read_image(self, record):
        if self.image_format == "dicom":
            return load_dicom(record["image_path"], record["where"])
        return super().read_image(record)


# ----------------------------------------------------------------------------------------------------------
# writer: phantoms in the VinDr layout, 3 readers per train image

def write_vindr(root, dataset_or_samples, split="train", original_scale=4.0, jitter=0.5, seed=0, image_format="png",
                photometric="MONOCHROME2"):
    """Write image_labels_<split>.csv, annotations_<split>.csv, <split>/<image_id>.png and image_sizes.csv.

    The PNG is the phantom itself; image_sizes.csv says the original was `original_scale` times larger, and the
    boxes are written in that original frame. image_format="dicom" (needs pydicom) writes the original itself
    instead, as the DICOM release does: <split>/<image_id>.dicom, the phantom resized by `original_scale`, 12-bit
    in 16 (save_dicom, `photometric` MONOCHROME2 or MONOCHROME1), and no image_sizes.csv. Train: 3 readers
    (R1-R3). Each reader's box is the phantom box plus uniform jitter of +-`jitter` original pixels; on every 3rd
    image R3 misses the first boxed finding (its label and boxes), and on every 4th image (from the 2nd) R1 alone
    marks a spurious `Other lesion` box, which 'any' keeps and 'majority' drops. Test: one consensus row per
    image, `Other disease` header.
    -> {"root", "image_ids", "concepts" (per image (22,) as the phantom says), "boxes" (per image (N, 4) in
    pixels of the phantom image, i.e. the PNG), "box_labels" (per image (N,) into VINDR_CONCEPTS), "spurious"
    (image ids with the extra box)}.
    """
    from data.phantom import DETAIL_TO_VINDR, PHANTOM_TO_VINDR
    root = Path(root)
    rng = np.random.default_rng(seed)
    readers = ["R1", "R2", "R3"] if split == "train" else [None]
    label_rows, box_rows, size_rows = [], [], []
    result = {"root": root, "image_ids": [], "concepts": [], "boxes": [], "box_labels": [], "spurious": []}
    for position, sample in enumerate(iterate_samples(dataset_or_samples)):
        image = f"{split}{position:04d}phantom{seed:04x}"
        pixels = image_uint8(sample["image"])
        height, width = pixels.shape
        size_rows.append([image, round(height * original_scale), round(width * original_scale)])
        if image_format == "dicom":
            original = Image.fromarray(pixels).resize((size_rows[-1][2], size_rows[-1][1]), Image.BILINEAR)
            save_dicom(np.asarray(original), root / split / f"{image}.dicom", photometric, uid_seed=image)
        else:
            save_image(pixels, root / split / f"{image}.png")
        concepts, diseases = sample["concepts"].numpy(), sample["diseases"].numpy()
        findings = []  # (box, concept index): one box per VinDr concept of each phantom finding
        for box, finding in zip(sample["boxes"].numpy(), sample["findings"]):
            names = PHANTOM_TO_VINDR[finding["name"]] + DETAIL_TO_VINDR.get((finding["name"], finding["detail"]), [])
            findings += [(box, VINDR_CONCEPTS.index(n)) for n in names if concepts[VINDR_CONCEPTS.index(n)] == 1]
        missed = findings[0][1] if findings and position % 3 == 0 and split == "train" else None
        spurious = split == "train" and position % 4 == 1 and concepts[VINDR_CONCEPTS.index("Other lesion")] == 0
        for reader in readers:
            reader_concepts = concepts.copy()
            reader_findings = [(b, c) for b, c in findings if not (reader == "R3" and c == missed)]
            if reader == "R3" and missed is not None:
                reader_concepts[missed] = 0
            if spurious and reader == "R1":
                reader_concepts[VINDR_CONCEPTS.index("Other lesion")] = 1
                reader_findings = reader_findings + [(np.array([2, 2, 10, 10], np.float32) * width / 64,
                                                      VINDR_CONCEPTS.index("Other lesion"))]
            prefix = [image] if reader is None else [image, reader]
            label_rows.append(prefix + [int(v) for v in np.concatenate([reader_concepts, diseases])])
            for box, concept in reader_findings:
                original = np.clip(box * original_scale + rng.uniform(-jitter, jitter, 4), 0,
                                   [width * original_scale, height * original_scale] * 2)
                box_rows.append(prefix + [VINDR_CONCEPTS[concept]] + [f"{v:.2f}" for v in original])
            if not reader_findings:
                box_rows.append(prefix + ["No finding", "", "", "", ""])
        result["image_ids"].append(image)
        result["concepts"].append(concepts)
        result["boxes"].append(np.array([b for b, _ in findings], np.float32).reshape(-1, 4))
        result["box_labels"].append(np.array([c for _, c in findings], np.int64))
        if spurious:
            result["spurious"].append(image)
    names = VINDR_CONCEPTS + ["Other disease" if n == "Other diseases" and split == "test" else n
                              for n in VINDR_DISEASES]
    prefix = ["image_id"] if split == "test" else ["image_id", "rad_id"]
    write_csv(root / f"image_labels_{split}.csv", prefix + names, label_rows)
    write_csv(root / f"annotations_{split}.csv", prefix + ["class_name"] + BOX_COLUMNS, box_rows)
    sizes_path = root / "image_sizes.csv"
    if image_format == "dicom":
        return result
    if sizes_path.exists():  # a second split written into the same root: keep the first one's rows
        size_rows = [cells for _, cells in read_csv(sizes_path, make_policy("stop", DATASET))[1]] + size_rows
    write_csv(sizes_path, ["image_id", "height", "width"], size_rows)
    return result


def save_dicom(pixels, path, photometric="MONOCHROME2", bits=12, uid_seed=None):
    """(H, W) uint8 -> a DX DICOM file as VinDr ships them (needs pydicom): grey values scaled to `bits` bits in
    16-bit words, uncompressed; MONOCHROME1 stores them inverted (0 = white), so only a reader that inverts it
    gets the picture back; a window (centre, width) over the whole range, so the VOI step runs and keeps it."""
    require_pydicom()
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(f"photometric must be MONOCHROME1 or MONOCHROME2, got {photometric!r}")
    top = 2 ** bits - 1
    values = np.round(np.asarray(pixels, np.float64) * top / 255).astype(np.uint16)  # (H, W)
    if photometric == "MONOCHROME1":
        values = top - values
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage, for presentation
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=None if uid_seed is None else [str(uid_seed)])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dicom = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    dicom.SOPClassUID, dicom.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    dicom.Modality, dicom.PhotometricInterpretation, dicom.SamplesPerPixel = "DX", photometric, 1
    dicom.Rows, dicom.Columns = values.shape
    dicom.BitsAllocated, dicom.BitsStored, dicom.HighBit, dicom.PixelRepresentation = 16, bits, bits - 1, 0
    dicom.WindowCenter, dicom.WindowWidth = top / 2, top + 1
    dicom.PixelData = values.tobytes()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    dicom.save_as(path, enforce_file_format=True)
