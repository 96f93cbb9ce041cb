"""Prepare a real dataset once: every image decoded and resized one time, in the raw layout, for fast loading.

    python -m data.prepare nih       --root /data/nih-chestxray14 --out /data/nih-512     [--size 512] [--workers 8]
    python -m data.prepare mimic_cxr --root /data/mimic-cxr-jpg   --out /data/mimic-512
    python -m data.prepare vindr     --root /data/vindr-cxr       --out /data/vindr-512    (DICOM: needs pydicom)
    python -m data.prepare iu_xray   --root /data/iu-xray         --out /data/iu-xray-512
    python -m data.prepare video     --root /data/video-gaze      --out /data/video-256 --size 256

Then train with the same config and only `data.root` changed (`data.root=/data/nih-512`; MIMIC's master JSONL:
`data.image_root` and `data.master_jsonl`, which is copied too when it sits under --root).

What is written under --out: the raw layout, mirrored (the same relative paths):
- every image under the dataset's image folders (IMAGE_FOLDERS), resized so that its LONGER side is --size
  (aspect ratio kept, never enlarged; bicubic, antialiased), 8-bit. The format follows the file name the adapter looks
  for: PNG stays PNG (zlib level 1 with run-length matching; 16-bit is scaled min-max to 8 bit, as the loader
  does), JPEG stays JPEG (quality 95),
  and DICOM becomes PNG (`<id>.dicom` -> `<id>.png`: VinDr is then read with its default image_format png).
  X-rays are written grey; video frames keep their colour.
- the metadata files the adapters read, copied: `.csv`, `.csv.gz`, `.txt` (split lists, MIMIC reports),
  `.json`, `.jsonl`, and for video folders the attention maps, `.npy` arrays and video files (`.mp4`, ...) as they
  are (a video file is not resized: convert it to a frame folder first to have its frames prepared).
- prepared_index.csv: path, source, original_width, original_height, width, height of every prepared image
  (relative paths), so anything drawn on a prepared image maps back exactly: x_original = x * original_width
  / width.
- VinDr: image_sizes.csv (image_id,height,width of the ORIGINAL image), unless the raw root has one, which is
  copied as it is (it already names the original DICOM frame).
- prepare_failures.json: the files that could not be prepared, each with its reason (unreadable, wrong mode,
  zero size) and message, and the count per reason. prepared.json: dataset and size; a rerun into the same
  --out with another size is refused (two sizes in one folder would mix).

Boxes (one rule for every adapter): box files are never rewritten and stay in the ORIGINAL pixel frame. The
adapter scales them by loaded size / original size: NIH by the 1024-px frame of BBox_List_2017.csv, VinDr by
image_sizes.csv (data/io.py RecordDataset `box_frame`).

Decoding: a JPEG is decoded straight at the smallest DCT scale that still gives at least the output size
(Pillow's `draft`: a 3,000 x 2,500 MIMIC JPEG at 1/4 for 512 px), then resized. DICOM through data/io.py
load_dicom (modality and VOI LUT, MONOCHROME1 inverted). Several processes (--workers, default all cores),
a tqdm bar; resumable: a file written (atomically: a temporary name, then os.replace) and listed in the index
is not prepared again, and a copied file whose size and time match its source is not copied again.
"""
import argparse
import csv
import json
import multiprocessing
import os
import shutil
import sys
import zlib
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from data.io import IMAGE_ERRORS, data_root, load_dicom, require_pydicom, write_csv
from data.sample import DataError

DATASETS = ("iu_xray", "mimic_cxr", "nih", "vindr", "video")
# files data.root must hold (a tuple: one of these), checked before anything is written
EXPECTED = {
    "iu_xray": [("indiana_reports.csv", "annotation.json"), "images"],
    "mimic_cxr": ["files"],
    "nih": [("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv"), "images"],
    "vindr": [("image_labels_train.csv", "annotations/image_labels_train.csv", "image_labels_test.csv",
               "annotations/image_labels_test.csv"), ("train", "test")],
    "video": ["videos.csv", "videos"],
}
IMAGE_FOLDERS = {"iu_xray": ("images",), "mimic_cxr": ("files",), "nih": ("images",), "vindr": ("train", "test"),
                 "video": ("videos",)}
COPIED_FOLDERS = {"video": ("attention", "videos")}  # also copied there: maps and .npy arrays, as they are
VIDEO_FILE_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv")   # video files (data/video.py decodes them): copied as they are
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dicom", ".dcm", ".bmp", ".tif", ".tiff")
DICOM_SUFFIXES = (".dicom", ".dcm")
METADATA_ENDINGS = (".csv", ".csv.gz", ".txt", ".json", ".jsonl")
ACCEPTED_MODES = ("L", "LA", "P", "RGB", "RGBA", "I;16", "I;16B", "I;16L", "I", "F")
JPEG_QUALITY = 95
RESAMPLE = Image.BICUBIC  # antialiased; after the reduced JPEG decode
INDEX_HEADER = ["path", "source", "original_width", "original_height", "width", "height"]


class PrepareFailure(Exception):
    """One file that cannot be prepared: reason is 'unreadable', 'wrong mode' or 'zero size'."""

    def __init__(self, reason, message):
        super().__init__(message)
        self.reason = reason


# ----------------------------------------------------------------------------------------------------------
# one file

def prepared_size(width, height, size):
    """Longer side -> size, aspect ratio kept (each side rounded, at least 1), never enlarged."""
    scale = min(1.0, size / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def read_for_preparing(source, size, colour=False):
    """-> (PIL image in 'L' (or 'RGB' when colour), original (width, height)); JPEGs decoded at a reduced DCT
    scale when the output is at least 2x smaller. PrepareFailure with the reason when it cannot be read."""
    if source.stat().st_size == 0:
        raise PrepareFailure("zero size", f"{source}: the file is empty (0 bytes)")
    if source.suffix.lower() in DICOM_SUFFIXES:
        try:
            image = load_dicom(source)
        except DataError as error:
            raise PrepareFailure("wrong mode" if "grey frame" in str(error) else "unreadable", str(error)) from None
        return image, image.size
    try:
        with Image.open(source) as image:
            original = image.size
            if 0 in original:
                raise PrepareFailure("zero size", f"{source}: image of {original[0]} x {original[1]} pixels")
            if image.mode not in ACCEPTED_MODES:
                raise PrepareFailure("wrong mode", f"{source}: PIL mode {image.mode}; expected grey or RGB "
                                                   f"({', '.join(ACCEPTED_MODES)})")
            if image.format == "JPEG":
                image.draft("RGB" if colour else "L", prepared_size(*original, size))
            image.load()
            if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # 16-bit and float: min-max to 8 bit
                pixels = np.asarray(image, np.float64)
                low, high = float(pixels.min()), float(pixels.max())
                pixels = np.zeros_like(pixels) if high <= low else (pixels - low) / (high - low) * 255
                return Image.fromarray(pixels.round().astype(np.uint8)), original
            if colour and image.mode in ("RGB", "RGBA", "P"):
                return image.convert("RGB"), original
            return image.convert("L"), original
    except IMAGE_ERRORS as error:
        raise PrepareFailure("unreadable", f"{source}: cannot be decoded ({error})") from None


def prepare_image(source, target, size, colour=False):
    """Read `source`, resize (longer side = size), write `target` atomically. -> (original size, written size)."""
    image, original = read_for_preparing(source, size, colour)
    width, height = prepared_size(*original, size)
    if image.size != (width, height):
        image = image.resize((width, height), RESAMPLE)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    if target.suffix.lower() in (".jpg", ".jpeg"):
        image.save(temporary, "JPEG", quality=JPEG_QUALITY)
    elif target.suffix.lower() == ".png":  # zlib level 1 with run-length matching: level 6's size, 3x faster
        image.save(temporary, "PNG", compress_level=1, compress_type=zlib.Z_RLE)
    else:
        image.save(temporary, Image.registered_extensions()[target.suffix.lower()])
    os.replace(temporary, target)
    return original, (width, height)


def copy_file(source, target):
    """Copy with its time (so a rerun can tell it is up to date), atomically. -> False when already up to date."""
    if target.exists():
        have, want = target.stat(), source.stat()
        if have.st_size == want.st_size and have.st_mtime_ns == want.st_mtime_ns:
            return False
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    shutil.copy2(source, temporary)
    os.replace(temporary, target)
    return True


def run_task(task):
    """One unit of work in a worker: ("image", relative source, relative target, root, out, size, colour) or
    ("copy", relative, root, out). -> a result tuple for the main process."""
    if task[0] == "copy":
        _, relative, root, out = task
        return "copy", relative, copy_file(root / relative, out / relative)
    _, source, target, root, out, size, colour = task
    try:
        original, written = prepare_image(root / source, out / target, size, colour)
    except PrepareFailure as failure:
        return "failed", source, failure.reason, str(failure)
    except OSError as error:  # a file that vanished or cannot be opened
        return "failed", source, "unreadable", f"{root / source}: {error}"
    return "image", source, target, original, written


# ----------------------------------------------------------------------------------------------------------
# the whole dataset

def plan(dataset, root, out):
    """Walk the raw root -> (images [(relative source, relative target)], copies [relative])."""
    images, copies = [], []
    image_folders, copied_folders = IMAGE_FOLDERS[dataset], COPIED_FOLDERS.get(dataset, ())
    for folder, subfolders, files in os.walk(root):
        folder = Path(folder)
        subfolders[:] = sorted(d for d in subfolders if not d.startswith(".") and (folder / d).resolve() != out)
        for name in sorted(files):
            if name.startswith("."):
                continue
            relative = (folder / name).relative_to(root)
            top, suffix = relative.parts[0], relative.suffix.lower()
            if len(relative.parts) > 1 and top in image_folders and suffix in IMAGE_SUFFIXES \
                    and not (dataset == "video" and len(relative.parts) == 2):  # video frames: videos/<id>/<frame>
                target = relative.with_suffix(".png") if suffix in DICOM_SUFFIXES else relative
                images.append((relative, target))
            elif name.lower().endswith(METADATA_ENDINGS) or (
                    top in copied_folders and (suffix in (".npy",) + VIDEO_FILE_SUFFIXES or suffix in IMAGE_SUFFIXES)):
                copies.append(relative)
    return images, copies


def read_index(path, out):
    """prepared_index.csv -> {target: row} of the files it lists that exist (a cut-off last line is ignored)."""
    if not path.exists():
        return {}
    rows = {}
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        if next(reader, None) != INDEX_HEADER:
            return {}
        for cells in reader:
            if len(cells) == len(INDEX_HEADER) and all(c.isdigit() for c in cells[2:]) and (out / cells[0]).exists():
                rows[cells[0]] = cells
    return rows


def check_settings(out, dataset, size):
    settings = {"dataset": dataset, "size": size, "side": "longer", "jpeg_quality": JPEG_QUALITY}
    path = out / "prepared.json"
    if path.exists():
        stored = json.loads(path.read_text())
        if {k: stored.get(k) for k in settings} != settings:
            raise DataError(f"{out} holds a preparation with {stored}; this run asks for {settings}. Use another "
                            f"--out (or delete that folder)")
    else:
        out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(settings, indent=1))


def prepare(dataset, root, out, size=512, workers=None, progress=True):
    """Prepare `dataset` from `root` into `out` (module docstring). -> summary dict: prepared, already_done,
    failed, copied, up_to_date, index, failures (paths)."""
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset {dataset!r}; expected one of {', '.join(DATASETS)}")
    if size < 1:
        raise DataError(f"--size must be a positive number of pixels, got {size}")
    root = data_root(root, EXPECTED[dataset], f"prepare {dataset} (--root)").resolve()
    out = Path(out).resolve()
    if out == root:
        raise DataError(f"--out must differ from --root ({root}): the prepared copy is a second folder")
    images, copies = plan(dataset, root, out)
    if any(source.suffix.lower() in DICOM_SUFFIXES for source, _ in images):
        require_pydicom()
    check_settings(out, dataset, size)
    index_path = out / "prepared_index.csv"
    index = read_index(index_path, out)
    pending = [("image", source, target, root, out, size, dataset == "video")
               for source, target in images if str(target) not in index]
    tasks = [("copy", relative, root, out) for relative in copies] + pending
    counts = {"prepared": 0, "already_done": len(images) - len(pending), "failed": 0, "copied": 0, "up_to_date": 0}
    failures = []
    workers = workers or os.cpu_count() or 1
    with open(index_path, "a" if index else "w", newline="", encoding="utf-8") as handle, \
            tqdm(total=len(tasks), desc=f"prepare {dataset}", unit="file", disable=not progress) as bar:
        writer = csv.writer(handle)
        if not index:
            writer.writerow(INDEX_HEADER)
        if workers > 1 and len(tasks) > 1:
            pool = multiprocessing.get_context().Pool(workers)
            results = pool.imap_unordered(run_task, tasks, chunksize=8)
        else:
            pool, results = None, map(run_task, tasks)
        try:
            for result in results:
                bar.update()
                if result[0] == "copy":
                    counts["copied" if result[2] else "up_to_date"] += 1
                elif result[0] == "failed":
                    counts["failed"] += 1
                    failures.append({"path": str(result[1]), "reason": result[2], "message": result[3]})
                else:
                    _, source, target, original, written = result
                    row = [str(target), str(source), *original, *written]
                    writer.writerow(row)
                    handle.flush()  # an interrupted run keeps the rows of the files it finished
                    index[str(target)] = [str(v) for v in row]
                    counts["prepared"] += 1
        finally:
            if pool is not None:
                pool.terminate()
    if counts["prepared"]:  # sorted, written whole
        write_csv(index_path.with_suffix(".tmp.csv"), INDEX_HEADER, [index[k] for k in sorted(index)])
        os.replace(index_path.with_suffix(".tmp.csv"), index_path)
    if dataset == "vindr" and not (root / "image_sizes.csv").exists():
        write_vindr_sizes(out, index.values())
    failures_path = out / "prepare_failures.json"
    reasons = sorted({f["reason"] for f in failures})
    by_reason = {reason: sum(f["reason"] == reason for f in failures) for reason in reasons}
    failures_path.write_text(json.dumps({"dataset": dataset, "root": str(root), "failed": len(failures),
                                         "by_reason": by_reason, "files": sorted(failures, key=lambda f: f["path"])},
                                        indent=1))
    print(f"[prepare {dataset}] {counts['prepared']} images prepared, {counts['already_done']} already done, "
          f"{counts['failed']} failed ({', '.join(f'{n} {r}' for r, n in by_reason.items()) or 'none'}: "
          f"{failures_path}); {counts['copied']} metadata files copied, {counts['up_to_date']} up to date; "
          f"index {index_path}")
    return {**counts, "index": index_path, "failures": failures_path}


def write_vindr_sizes(out, index_rows):
    """image_sizes.csv (image_id,height,width of the original) from the index rows of train/ and test/."""
    rows = sorted([Path(row[1]).stem, row[3], row[2]] for row in index_rows
                  if Path(row[1]).parts[0] in ("train", "test"))
    write_csv(out / ".image_sizes.tmp.csv", ["image_id", "height", "width"], rows)
    os.replace(out / ".image_sizes.tmp.csv", out / "image_sizes.csv")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", choices=DATASETS)
    p.add_argument("--root", required=True, help="the raw dataset folder (what data.root points at)")
    p.add_argument("--out", required=True, help="the prepared folder (the new data.root)")
    p.add_argument("--size", type=int, default=512, help="longer side of the prepared images, in pixels")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    try:
        prepare(args.dataset, args.root, args.out, args.size, args.workers, progress=not args.no_progress)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
