"""Loading full-size chest X-rays: full decode, reduced JPEG decode and prepared files, side by side in one run.

    python -m data.benchmark                 # ~70 s on 2 cores; prints a markdown table (docs/benchmarks.md)
    python -m data.benchmark --images 8      # fewer images per dataset: faster, noisier

Synthetic full-size images in each real layout, written by the phantom writers (a 512-px chest phantom upscaled
bicubic to the real size; its ribs and texture make a JPEG of about 1 MB):
- MIMIC-CXR-JPG: JPEG quality 95, 2,500 x 3,000 (width x height), data/mimic_cxr.py write_mimic_cxr;
- NIH ChestX-ray14: 8-bit PNG, 1,024 x 1,024, data/nih.py write_nih;
- VinDr-CXR: DICOM 2,500 x 3,000, 12 bits in 16, uncompressed, data/vindr.py write_vindr (only with pydicom).

Each rate is images/s of ONE process (one core; torch limited to one thread). The methods of a dataset run
in turn, one pass each, until each has run --seconds in total, so a change in the machine's load during the
run falls on all of them alike:
- bare decode: Image.open + load of the raw file (DICOM: data/io.py load_dicom); bare draft decode: the same
  with Pillow's JPEG draft to at least 512 px (JPEG only);
- (a) the adapter's __getitem__ on the raw root with a 224-px eval transform (build_transform(False, 224)),
  JPEGs decoded at full size; (b) the same with the reduced decode the loader uses by default (JPEG only);
  (c) the adapter on the prepared root (longer side --size), the same transform;
- preparation: data.prepare.prepare(..., workers=1) on the same files into fresh folders.
The goals: (c) >= 10x (a), and preparation at most 1.5x the time of a bare draft decode of the same file
(the decoder is the ceiling; for PNG and DICOM, where no reduced decode exists, of the bare decode).
"""
import argparse
import contextlib
import io
import itertools
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from data.io import load_dicom
from data.prepare import DICOM_SUFFIXES, prepare
from data.transforms import build_transform

FULL_SIZE = {"mimic_cxr": (2500, 3000), "nih": (1024, 1024), "vindr": (2500, 3000)}  # (width, height)


def full_size_samples(count, width, height, seed=0):
    """Chest phantoms (512 px) upscaled to width x height, boxes scaled with them: samples for the writers."""
    from data.phantom import ChestPhantomDataset
    phantoms = ChestPhantomDataset(count, image_size=512, seed=seed)
    samples = []
    for index in range(count):
        sample = dict(phantoms[index])
        picture = Image.fromarray((sample["image"][0].numpy() * 255).round().astype(np.uint8))
        big = np.asarray(picture.resize((width, height), Image.BICUBIC), np.float32) / 255
        sample["image"] = torch.from_numpy(big)[None]                                   # (1, H, W)
        sample["boxes"] = sample["boxes"] * torch.tensor([width / 512, height / 512] * 2)  # (N, 4)
        samples.append(sample)
    return samples


def write_dataset(name, root, count):
    """-> (raw image files, make(root, raw) -> the adapter with the 224-px eval transform)."""
    width, height = FULL_SIZE[name]
    samples = full_size_samples(count, width, height)
    transform = build_transform(False, 224)
    if name == "mimic_cxr":
        from data.mimic_cxr import MimicCxrDataset, write_mimic_cxr
        write_mimic_cxr(root, samples, lateral_every=0)
        return sorted(Path(root).rglob("*.jpg")), lambda r, raw: MimicCxrDataset(r, "all", transform)
    if name == "nih":
        from data.nih import NihDataset, write_nih
        write_nih(root, samples)
        return sorted(Path(root).rglob("*.png")), lambda r, raw: NihDataset(r, "all", transform)
    from data.vindr import VinDrDataset, write_vindr
    write_vindr(root, samples, split="train", original_scale=1.0, image_format="dicom")
    return sorted(Path(root).rglob("*.dicom")), \
        lambda r, raw: VinDrDataset(r, "train", transform, image_format="dicom" if raw else "png")


def bare_decode(path, draft=None):
    if path.suffix.lower() in DICOM_SUFFIXES:
        return load_dicom(path)
    with Image.open(path) as image:
        if draft is not None:
            image.draft("L", (draft, draft))
        image.load()
        return image


def side_by_side(methods, seconds):
    """methods {name: (read, items, images per item)} -> {name: images/s}. A first pass of each (warm-up) gives
    its time; then rounds in which each method runs about as long as the slowest pass (a fast method repeats its
    pass), until every method has run `seconds` in total: a change in the machine's load falls on all alike."""
    def one_pass(read, items):
        start = time.perf_counter()
        for item in items:
            read(item)
        return time.perf_counter() - start

    first = {name: one_pass(read, items) for name, (read, items, _) in methods.items()}
    repeats = {name: max(1, round(max(first.values()) / max(t, 1e-6))) for name, t in first.items()}
    spent, done = dict.fromkeys(methods, 0.0), dict.fromkeys(methods, 0)
    while min(spent.values()) < seconds:
        for name, (read, items, per_item) in methods.items():
            for _ in range(repeats[name]):
                spent[name] += one_pass(read, items)
                done[name] += len(items) * per_item
    return {name: done[name] / spent[name] for name in methods}


def measure(name, work, count, size, seconds):
    """-> {"files": description, then images/s of each method (None where it does not apply)}."""
    raw = work / "raw"
    files, make = write_dataset(name, raw, count)
    jpeg = files[0].suffix == ".jpg"
    images = prepare(name, raw, work / "prepared", size=size, workers=1, progress=False)["prepared"]
    runs = itertools.count()
    full, draft, prepared = make(raw, True), make(raw, True), make(work / "prepared", False)
    full.draft_size = None
    indices = list(range(len(full)))
    methods = {"bare": (bare_decode, files, 1),
               "full": (full.__getitem__, indices, 1),
               "prepared": (prepared.__getitem__, indices, 1),
               "prepare": (lambda _: prepare(name, raw, work / f"again{next(runs)}", size=size, workers=1,
                                             progress=False), [None], images)}
    if jpeg:
        methods["bare_draft"] = (lambda f: bare_decode(f, size), files, 1)
        methods["draft"] = (draft.__getitem__, indices, 1)
    rates = side_by_side(methods, seconds)
    kind = "JPEG" if jpeg else files[0].suffix[1:].upper()
    megabytes = np.mean([f.stat().st_size for f in files]) / 1e6
    return {"files": f"{len(files)} x {FULL_SIZE[name][0]:,} x {FULL_SIZE[name][1]:,} {kind}, {megabytes:.1f} MB",
            "bare_draft": None, "draft": None, **rates}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=16, help="images written per dataset")
    p.add_argument("--size", type=int, default=512, help="longer side of the prepared images")
    p.add_argument("--seconds", type=float, default=3.0, help="minimum time of each measurement")
    args = p.parse_args()
    torch.set_num_threads(1)
    names = ["mimic_cxr", "nih"]
    try:
        import pydicom  # noqa: F401
        names.append("vindr")
    except ImportError:
        print("pydicom is not installed: the VinDr-CXR (DICOM) row is left out")
    rows, start = {}, time.perf_counter()
    for name in names:
        with tempfile.TemporaryDirectory(prefix=f"benchmark-{name}-") as work:
            with contextlib.redirect_stdout(io.StringIO()):  # the adapters' and prepare's summary lines
                rows[name] = measure(name, Path(work), args.images if name != "vindr" else max(4, args.images // 2),
                                     args.size, args.seconds)

    def cell(value):
        return "-" if value is None else f"{value:,.1f}"

    print(f"\n| dataset, raw files | bare decode | bare draft decode | (a) loader, full decode | (b) loader, draft "
          f"decode | (c) loader, prepared {args.size} px | (c) / (a) | preparation | preparation time / bare "
          f"(draft) decode time |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, row in rows.items():
        ceiling = row["bare_draft"] or row["bare"]
        print(f"| {name}: {row['files']} | {cell(row['bare'])} | {cell(row['bare_draft'])} | {cell(row['full'])} | "
              f"{cell(row['draft'])} | {cell(row['prepared'])} | {row['prepared'] / row['full']:.1f} | "
              f"{cell(row['prepare'])} | {ceiling / row['prepare']:.2f} |")
    print(f"\nimages/s of one process; {time.perf_counter() - start:.0f} s for the whole command")


if __name__ == "__main__":
    main()
