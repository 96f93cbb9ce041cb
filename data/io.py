"""Shared file handling of the real-dataset adapters (iu_xray, mimic_cxr, nih, vindr).

- DATA_ROOT convention: a config gives `data.root`; `data_root(root, expected, dataset)` checks that the
  folder and the files the adapter needs are there, else ONE error that lists every expected file.
- CSV: the csv module (quoted fields with line breaks work); `.gz` files are read transparently. Rows carry
  the file line number; a row with the wrong number of cells, or a cell that does not parse, becomes one
  message naming the file, the line and what was expected. Trailing empty header cells (NIH's split
  bracket headers leave some) are dropped, and extra cells in a row must then be empty.
- Text is UTF-8. A byte that is not is one message "<file>: not UTF-8 at line N (byte 0x..)": in a CSV row or
  a JSONL line it goes through the policy (skip drops that row); in a header or a whole-file text it stops.
- Keys: `first_of_each` keeps the first row of each key; a repeated key is one policy message naming the
  file, the key and both lines ("uid 42 on lines 7 and 19; expected one row per uid"), the later row left out.
- Images: `load_image` returns an 8-bit 'L' PIL image, or raises DataError naming the file (missing or not
  decodable). 16-bit images are scaled min-max to 8 bit. With `draft_size` a JPEG is decoded at the smallest
  DCT scale (1/2, 1/4, 1/8) that still gives at least that size (Pillow's `draft`): a 3,000-px MIMIC JPEG
  feeding a 224-px transform decodes at 1/8 of the work. DICOM (`load_dicom`, pydicom optional): modality
  and VOI LUT applied, MONOCHROME1 inverted. A corrupt image is never replaced by zeros, nor by another record.
- Patient-level split: made once (seeded shuffle of the sorted patient ids, cut by fractions), saved as JSON
  `{"dataset", "seed", "fractions", "patients": {patient_id: "train"|"val"|"test"}}`, and reused when the
  file exists. A split file that lacks a patient of the data is an error (delete it or pass the right one).
- `RecordDataset`: the common torch Dataset. An adapter indexes its files into records (plain dicts) and
  this class loads the image, rescales the boxes from the frame they were written in to the loaded image,
  checks that they lie inside it, applies the paired transform and returns the sample dict of data/sample.py.
  JPEGs are decoded down to the output size of the transform's resize step (data.transforms.decode_size).
  With `on_error="skip"` a record that fails at load time (unreadable image, box outside the image) is None:
  data.sample.collate drops it from its batch, and no other record takes its place. Such a failure prints
  nothing by itself: every loading process (DataLoader workers too) appends it to a JSONL log beside
  `skip_list`, and after each full pass data.loader.epoch_loader prints `skip_summary()`, ONE line with the
  count and the path of the JSON list (`skip_list`: [{"index", "id", "image", "message"}]). `check_images=True`
  finds such records when the dataset is built instead, so the count in `summary()` is exact before training.
"""
import csv
import gzip
import io
import json
import os
import re
import secrets
import struct
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from data.sample import DataError, ErrorPolicy
from data.transforms import decode_size, to_tensor_transform

SPLIT_NAMES = ("train", "val", "test")


# ----------------------------------------------------------------------------------------------------------
# root and files

def data_root(root, expected, dataset):
    """Check `data.root` and the files under it. expected: relative paths; a tuple means 'one of these'."""
    listing = ", ".join(" or ".join(e) if isinstance(e, tuple) else e for e in expected)
    if root is None or str(root) == "":
        raise DataError(f"{dataset}: no data.root given; set data.root to the folder that holds: {listing}")
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{dataset}: data.root '{root}' is not a folder; expected there: {listing}")
    missing = [e for e in expected if not any((root / name).exists() for name in (e if isinstance(e, tuple) else (e,)))]
    if missing:
        names = ", ".join(" or ".join(m) if isinstance(m, tuple) else m for m in missing)
        raise DataError(f"{dataset}: missing under data.root '{root}': {names}; expected there: {listing}")
    return root


def first_existing(root, names):
    """root / the first of names that exists (e.g. a `.csv.gz` or the plain `.csv`), else DataError."""
    for name in names:
        if (Path(root) / name).exists():
            return Path(root) / name
    raise DataError(f"none of {', '.join(names)} found in '{root}'")


def open_text(path, mode="r"):
    path = Path(path)
    if path.suffix == ".gz":
        return gzip.open(path, mode + "t", encoding="utf-8", newline="")
    return open(path, mode, encoding="utf-8", newline="")


def read_bytes(path):
    """The file's bytes (`.gz` decompressed); DataError naming the file if it cannot be read."""
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as handle:
                return handle.read()
        return path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"file not found: {path}") from None
    except (OSError, EOFError) as error:  # a truncated or corrupt .gz
        raise DataError(f"{path}: cannot be read ({error})") from None


def not_utf8(path, data, error, first_line=1):
    """Message for a UnicodeDecodeError of `data` (the bytes from line `first_line` of `path` on)."""
    line = first_line + data.count(b"\n", 0, error.start)
    return f"{path}: not UTF-8 at line {line} (byte 0x{data[error.start]:02x}); expected UTF-8 text"


def read_text(path):
    """The whole file as str (`.gz` decompressed); a non-UTF-8 byte is a DataError naming the file and line."""
    data = read_bytes(path)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DataError(not_utf8(path, data, error)) from None


def read_lines(path, policy):
    """-> [(line_number, str)] of a line-based file (JSONL, lists); a line that is not UTF-8 goes to the policy."""
    lines = []
    for number, raw in enumerate(read_bytes(path).split(b"\n"), start=1):
        try:
            lines.append((number, raw.decode("utf-8")))
        except UnicodeDecodeError as error:
            policy(not_utf8(path, raw, error, number))
    return lines


def first_of_each(policy, path, key_name, keyed, expected=None):
    """keyed: [(line, key, value)] -> {key: value} of the first row of each key. A repeated key is one policy
    message naming the file, the key and both lines; the later row is left out (skip) or stops (stop)."""
    table, first_line = {}, {}
    for line, key, value in keyed:
        if key in first_line:
            policy(f"{path}: {key_name} {key} on lines {first_line[key]} and {line}; "
                   f"expected {expected or f'one row per {key_name}'}")
            continue
        table[key], first_line[key] = value, line
    return table


# ----------------------------------------------------------------------------------------------------------
# CSV

def read_csv(path, policy):
    """-> (header list, [(line_number, cells list)]). A row with a wrong cell count or a non-UTF-8 byte is
    reported through policy and left out; a header that is not UTF-8 stops."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"file not found: {path}")
    data = read_bytes(path)
    # surrogateescape keeps a bad byte as one marker character (U+DC80..U+DCFF), found again per row below
    reader = csv.reader(io.StringIO(data.decode("utf-8", errors="surrogateescape"), newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise DataError(f"{path}: the file is empty, expected a header row") from None
    if _BAD_BYTE.search("".join(header)):
        raise DataError(not_utf8(path, data, _decode_error(data)) + " (in the header row)")
    while header and header[-1].strip() == "":
        header = header[:-1]
    header = [h.strip() for h in header]
    rows, end, raw_lines = [], reader.line_num, None
    for cells in reader:
        start, end = end + 1, reader.line_num
        if not cells:
            continue
        if _BAD_BYTE.search("".join(cells)):
            raw_lines = raw_lines or data.split(b"\n")
            policy(_not_utf8_in_rows(path, raw_lines, start, end))
            continue
        while len(cells) > len(header) and cells[-1].strip() == "":
            cells = cells[:-1]
        if len(cells) != len(header):
            policy(f"{path} line {reader.line_num}: expected {len(header)} columns "
                   f"({', '.join(header)}), found {len(cells)}")
            continue
        rows.append((reader.line_num, cells))
    return header, rows


_BAD_BYTE = re.compile("[\udc80-\udcff]")  # what errors="surrogateescape" makes of a byte that is not UTF-8


def _not_utf8_in_rows(path, raw_lines, start, end):
    """Message for the first bad byte in lines start..end (1-based, a row may span several lines)."""
    for number in range(start, min(end, len(raw_lines)) + 1):
        error = _decode_error(raw_lines[number - 1])
        if error is not None:
            return not_utf8(path, raw_lines[number - 1], error, number)
    return f"{path}: not UTF-8 at line {end}; expected UTF-8 text"


def _decode_error(data):
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as error:
        return error
    return None


def column_index(header, names, path):
    """-> {name: position}; every name must be in the header (exact spelling)."""
    missing = [n for n in names if n not in header]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; the header has {header}")
    return {n: header.index(n) for n in names}


def parse_float(cell, path, line, column):
    try:
        return float(cell)
    except ValueError:
        raise DataError(f"{path} line {line}: column '{column}' must be a number, got {cell!r}") from None


def parse_label(cell, path, line, column, allowed=(1.0, 0.0, -1.0)):
    """'1.0' / '0' / '-1.0' / '' (blank = not mentioned -> None)."""
    if cell.strip() == "":
        return None
    value = parse_float(cell, path, line, column)
    if value not in allowed:
        raise DataError(f"{path} line {line}: column '{column}' must be one of {allowed} or blank, got {cell!r}")
    return value


def write_csv(path, header, rows):
    """Write a CSV (gzip when the name ends in .gz); folders are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open_text(path, "w") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


# ----------------------------------------------------------------------------------------------------------
# images

# what PIL raises for a truncated or corrupt file (OSError covers "image file is truncated")
IMAGE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, Image.DecompressionBombError)

USER_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def read_user_images(path):
    """`--images`: a file or a folder of images -> [(file, PIL 'L' image)] in name order. An unreadable file is
    reported on one line and left out, so one bad file does not stop the others; -> (pairs, skipped files).
    DataError when the path is missing or holds no image file, or when no file can be read."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"--images {path}: no such file or folder; expected an image or a folder of images")
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.suffix.lower() in USER_IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"--images {path}: no image files ({', '.join(USER_IMAGE_SUFFIXES)}) in this folder")
    pairs, skipped = [], []
    for file in files:
        try:
            pairs.append((file, load_image(file)))
        except DataError as error:
            print(f"skipped: {error}")
            skipped.append(file)
    if not pairs:
        raise DataError(f"--images {path}: none of the {len(files)} image file(s) could be read")
    if skipped:
        print(f"--images {path}: {len(pairs)} image(s) read, {len(skipped)} skipped")
    return pairs, skipped


def load_image(path, context="", draft_size=None):
    """-> PIL 'L' image; DataError naming the file (and context, e.g. the CSV row) if missing or unreadable.
    draft_size (width, height): a JPEG may be decoded at a reduced DCT scale, to no less than that size."""
    path = Path(path)
    where = f" ({context})" if context else ""
    if not path.exists():
        raise DataError(f"image not found: {path}{where}")
    try:
        with Image.open(path) as image:
            if draft_size is not None and image.format == "JPEG":
                image.draft("L", tuple(draft_size))  # grey at 1/2, 1/4 or 1/8 scale, each side >= draft_size
            image.load()
            if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                return _scale_to_uint8(np.asarray(image, np.float64))
            return image.convert("L")
    except IMAGE_ERRORS as error:
        raise DataError(f"cannot read image {path}{where}: {error}; expected a readable PNG/JPEG") from None


def _scale_to_uint8(pixels):
    low, high = float(pixels.min()), float(pixels.max())
    scaled = np.zeros_like(pixels) if high <= low else (pixels - low) / (high - low) * 255
    return Image.fromarray(scaled.round().astype(np.uint8))


def require_pydicom():
    """pydicom is optional: only DICOM reading needs it; without it, one message says what to do."""
    try:
        import pydicom  # noqa: F401
    except ImportError:
        raise DataError("reading DICOM images needs pydicom: `pip install pydicom`, or convert the images to PNG "
                        "once with `python -m data.prepare vindr --root RAW --out PREPARED` (it needs pydicom "
                        "too, on any machine) and point data.root at PREPARED") from None


def load_dicom(path, context=""):
    """DICOM -> PIL 'L': modality LUT, then the VOI LUT or window when present, MONOCHROME1 inverted (so bone
    is bright), min-max to 8 bit. Needs pydicom."""
    require_pydicom()
    import pydicom
    try:
        from pydicom.pixels import apply_modality_lut, apply_voi_lut                      # pydicom >= 3
    except ImportError:
        from pydicom.pixel_data_handlers.util import apply_modality_lut, apply_voi_lut    # pydicom 2
    path = Path(path)
    where = f" ({context})" if context else ""
    if not path.exists():
        raise DataError(f"image not found: {path}{where}")
    try:
        dicom = pydicom.dcmread(str(path))
        pixels = apply_voi_lut(apply_modality_lut(dicom.pixel_array, dicom), dicom).astype(np.float64)
    except Exception as error:  # pydicom raises many types for bad files
        raise DataError(f"cannot read DICOM {path}{where}: {error}") from None
    if pixels.ndim != 2:
        raise DataError(f"DICOM {path}{where}: pixel data of shape {pixels.shape}; expected one grey frame (rows, "
                        f"columns)")
    if getattr(dicom, "PhotometricInterpretation", "") == "MONOCHROME1":
        pixels = pixels.max() - pixels
    return _scale_to_uint8(pixels)


def image_uint8(sample_image):
    """Sample image tensor (C, H, W) in [0, 1] -> (H, W) uint8 numpy of channel 0 (for the phantom writers)."""
    return (sample_image[0].clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def save_image(pixels, path, quality=95):
    """(H, W) uint8 -> PNG or JPEG by the file suffix; folders are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, quality=quality) if path.suffix in (".jpg", ".jpeg") \
        else Image.fromarray(pixels).save(path)


def check_box(box, width, height, where, tolerance=1.0):
    """box (4,) xyxy must satisfy 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height (within tolerance px)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    if not (x1 >= -tolerance and y1 >= -tolerance and x2 <= width + tolerance and y2 <= height + tolerance
            and x1 < x2 and y1 < y2):
        raise DataError(f"{where}: box [{x1:g}, {y1:g}, {x2:g}, {y2:g}] (x1, y1, x2, y2) is not inside the "
                        f"{width:g}x{height:g} image; expected 0 <= x1 < x2 <= {width:g} and 0 <= y1 < y2 <= {height:g}")


# ----------------------------------------------------------------------------------------------------------
# patient-level splits

def make_patient_split(patients, fractions=(0.7, 0.15, 0.15), seed=0):
    """-> {patient_id: split}; sorted ids shuffled by numpy's Generator(seed), cut at the fractions."""
    if len(fractions) != 3 or abs(sum(fractions) - 1) > 1e-6 or min(fractions) < 0:
        raise ValueError(f"split fractions must be 3 non-negative numbers summing to 1, got {fractions}")
    ordered = sorted(set(patients))
    order = np.random.default_rng(seed).permutation(len(ordered))
    # cumulative cut points, so a zero fraction gets no patient whatever the rounding
    end_train = round(fractions[0] * len(ordered))
    end_val = round((fractions[0] + fractions[1]) * len(ordered))
    assignment = {}
    for rank, position in enumerate(order):
        assignment[ordered[position]] = "train" if rank < end_train else "val" if rank < end_val else "test"
    return assignment


def load_or_make_split(path, patients, fractions, seed, dataset):
    """Reuse the split file at `path` if it exists (checking it covers `patients`), else make and save it."""
    path = Path(path)
    patients = set(patients)
    if path.exists():
        try:
            stored = json.loads(path.read_text())["patients"]
        except (ValueError, KeyError, TypeError) as error:
            raise DataError(f"{dataset}: split file {path} is not a split JSON with a 'patients' map "
                            f"({error})") from None
        bad = sorted({v for v in stored.values() if v not in SPLIT_NAMES})
        if bad:
            raise DataError(f"{dataset}: split file {path} has split names {bad}; expected {list(SPLIT_NAMES)}")
        missing = sorted(patients - set(stored))
        if missing:
            raise DataError(f"{dataset}: split file {path} does not match the data: {len(missing)} of "
                            f"{len(patients)} patients have no split (first: {missing[:3]}); delete the file to "
                            f"make a new split or pass the split file made for this data")
        return {p: stored[p] for p in patients}
    assignment = make_patient_split(patients, fractions, seed)
    payload = {"dataset": dataset, "seed": seed, "fractions": list(fractions), "patients": assignment}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(path.suffix + ".tmp")
        temporary.write_text(json.dumps(payload, indent=0, sort_keys=True))
        os.replace(temporary, path)
    except OSError as error:
        raise DataError(f"{dataset}: cannot write the split file {path} ({error}); pass data.split_file "
                        f"pointing to a writable place") from None
    print(f"[{dataset}] wrote patient split {path}: " +
          ", ".join(f"{s} {sum(v == s for v in assignment.values())}" for s in SPLIT_NAMES) + " patients")
    return assignment


# ----------------------------------------------------------------------------------------------------------
# the shared Dataset

class RecordDataset(torch.utils.data.Dataset):
    """Records (dicts) -> sample dicts. Keys of a record:

    image_path  Path              read with load_image (or `self.read_image`)
    where       str               file and line that produced the record, for error messages
    id, patient_id, view  str
    labels      (L,) float32      over `self.label_names`
    boxes       (N, 4) float32    xyxy in the pixel frame `box_frame` (optional)
    box_labels  (N,) int64        index into `self.box_classes` (optional)
    box_frame   (width, height)   size of the image the boxes were drawn on; None = the loaded image
    report      str               (optional; subclasses may override `read_report`)
    extra       dict of arrays    further sample keys (concepts, diseases)
    """

    label_names, box_classes = [], []

    def __init__(self, records, transform, policy, name, check_images=False):
        self.transform = transform if transform is not None else to_tensor_transform()
        self.policy, self.name = policy, name
        self.records = records
        self.draft_size = decode_size(self.transform)   # JPEGs decode down to this (None: at full size)
        self.bad = set()   # indices whose record failed to load (on_error=skip), in this process
        # the JSON list of records that failed to load; each loading process appends to the .jsonl beside it
        slug = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
        self.skip_list = Path(tempfile.gettempdir()) / f"skipped_{slug}_{os.getpid()}_{secrets.token_hex(3)}.json"
        if check_images:
            self.records = [r for r in records if self._image_ok(r)]

    def _image_ok(self, record):
        try:
            image = self.read_image(record)
            self._boxes_in_image(record, image.size)
            return True
        except DataError as error:
            self.policy(str(error))
            return False

    def read_image(self, record):
        return load_image(record["image_path"], record["where"], self.draft_size)

    def read_report(self, record):
        return record.get("report")

    def _boxes_in_image(self, record, image_size):
        """Boxes from their frame to the loaded image size -> (N, 4) float32, each checked inside the frame."""
        boxes = record.get("boxes", np.zeros((0, 4), np.float32))
        frame = record.get("box_frame") or image_size
        for box in boxes:
            check_box(box, frame[0], frame[1], record["where"])
        scale = np.array([image_size[0] / frame[0], image_size[1] / frame[1]] * 2, np.float32)
        return (boxes * scale).astype(np.float32)

    def __len__(self):
        return len(self.records)

    def __getitem__(self, index):
        """The sample of record `index`; None for a record that cannot be loaded under on_error=skip (reported
        and counted the first time, None again afterwards): data.sample.collate drops it from its batch, so a
        bad record is never replaced by another one."""
        if not 0 <= index < len(self.records):
            raise IndexError(f"[{self.name}] index {index} out of range for {len(self.records)} records")
        if index in self.bad:
            return None
        try:
            return self._sample(self.records[index])
        except DataError as error:
            if self.policy.mode == "stop":
                raise
            self.policy.skipped.append(str(error))  # counted once per loading process, no line per record
            self.bad.add(index)
            record = self.records[index]
            entry = {"index": index, "id": record["id"], "image": str(record["image_path"]), "message": str(error)}
            with open(self.skip_list.with_suffix(".jsonl"), "a", encoding="utf-8") as log:
                log.write(json.dumps(entry) + "\n")   # one short append: whole lines even from several workers
            return None

    def skip_summary(self):
        """After a pass (data.loader.epoch_loader): merge the records that failed to load, in any loading process,
        into the JSON list `skip_list` -> one line with their count and its path ("" when none failed)."""
        log = self.skip_list.with_suffix(".jsonl")
        if not log.exists():
            return ""
        failed = {}
        for line in log.read_text(encoding="utf-8").splitlines():
            if line.strip():
                entry = json.loads(line)
                failed.setdefault(entry["index"], entry)
        temporary = self.skip_list.with_suffix(".tmp")
        temporary.write_text(json.dumps([failed[i] for i in sorted(failed)], indent=1))
        os.replace(temporary, self.skip_list)
        return (f"[{self.name}] {len(failed)} of {len(self.records)} records could not be loaded and were left out "
                f"of their batches (data.on_error=skip); list: {self.skip_list}")

    def _sample(self, record):
        image = self.read_image(record)
        boxes = self._boxes_in_image(record, image.size)
        image, boxes, _ = self.transform(image, boxes, None)
        sample = {"image": image, "labels": torch.as_tensor(record["labels"], dtype=torch.float32)}
        if "boxes" in record:
            sample["boxes"] = boxes
            sample["box_labels"] = torch.as_tensor(record["box_labels"], dtype=torch.int64)
        for key, value in record.get("extra", {}).items():
            sample[key] = torch.as_tensor(value, dtype=torch.float32)
        report = self.read_report(record)
        if report is not None:
            sample["report"] = report
        sample.update(id=record["id"], patient_id=record["patient_id"], view=record["view"])
        return sample

    def summary(self):
        patients = len({r["patient_id"] for r in self.records})
        line = f"[{self.name}] {len(self.records)} images from {patients} patients"
        return line + (f"; {self.policy.summary()}" if self.policy.skipped else "")


def make_policy(on_error, name):
    return on_error if isinstance(on_error, ErrorPolicy) else ErrorPolicy(on_error, name)


def row_errors(policy, rows, parse_row):
    """Apply parse_row(line, cells) to each row; a DataError becomes one policy message and the row is left out."""
    results = []
    for line, cells in rows:
        try:
            results.append(parse_row(line, cells))
        except DataError as error:
            policy(str(error))
    return results



# ----------------------------------------------------------------------------------------------------------
# helpers of the phantom writers

def iterate_samples(dataset_or_samples):
    """Sample dicts of a Dataset (by index, so a procedural dataset ends at len) or of a list."""
    if isinstance(dataset_or_samples, (list, tuple)):
        return list(dataset_or_samples)
    return [dataset_or_samples[i] for i in range(len(dataset_or_samples))]



def read_label_table(path, key_column, names, policy, allowed=(1.0, 0.0, -1.0)):
    """CSV with a key column and one column per label NAME (any order) -> {key: (L,) float32}, blank -> 0.

    Used for CheXbert / CheXpert-labeler output and MIMIC's chexpert CSV (1 / 0 / -1 / blank).
    """
    header, rows = read_csv(path, policy)
    columns = column_index(header, [key_column] + list(names), path)

    def parse(line, cells):
        key = cells[columns[key_column]].strip()
        if not key:
            raise DataError(f"{path} line {line}: column '{key_column}' is empty")
        values = [parse_label(cells[columns[n]], path, line, n, allowed) for n in names]
        return line, key, np.array([0.0 if v is None else v for v in values], np.float32)

    return first_of_each(policy, path, key_column, row_errors(policy, rows, parse))


def rule_labels(report, names):
    """Labels of a report text by data/labeler.py's rule-based labeler; None (not mentioned) -> 0."""
    from data.labeler import label_report
    found = label_report(report)
    return np.array([0.0 if found[n] is None else float(found[n]) for n in names], np.float32)
