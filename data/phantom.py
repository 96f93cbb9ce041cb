"""Chest X-ray phantoms: a PA chest film with known anatomy, findings, boxes, labels, masks and a report.

    make_chest_phantom(seed, index, size) -> dict of numpy values (one sample, no storage)
    ChestPhantomDataset(num_samples, image_size=224, seed=0, start_index=0, transform=None,
                        healthy_fraction=0.3, cache=False, cache_dir=None) -> sample dicts of data/sample.py
    phantom_split(split, num_samples, image_size, **kw) -> dataset with the split's seed
    python -m data.phantom --preview /tmp/phantom_preview.png [--n 12] [--size 256] [--seed 0]
    python -m data.phantom --benchmark          (images/s at 128 and 224 px, one process)

Design choices:
- Deterministic per (seed, index): four independent streams `np.random.default_rng([seed, index, k])`,
  k = 0 anatomy, 1 findings, 2 pixel noise, 3 report wording. So the same (seed, index) drawn with
  healthy_fraction=1 has the same anatomy and noise without its findings (the tests use this).
- Everything is drawn in normalized "thorax" coordinates (x right in the image, y down, both in [0, 1]),
  then one global pose (rotation +-3 deg, scale, shift) maps them to pixels. Any size 64..512 shows the same
  anatomy and findings. Smooth shapes are signed distance-like functions evaluated on the pixel grid (numpy,
  float32); thin lines (vessels, airways, tubes) are PIL ImageDraw lines. Each part (lung, heart, ribs,
  a nodule, ...) is computed only in its own pixel window. `--benchmark` on the 2-core dev box while other
  jobs ran (load ~5.5): 185 / 68 images/s wall clock, 280 / 101 images/s per CPU second, at 128 / 224 px.
  The dataset converts to float with numpy: torch's intra-op threads cost ~30 ms per image on a busy CPU.
- The image is an attenuation sum: soft tissue + heart + mediastinum + bones - lung air + findings, then
  brightness/contrast/gamma and mild Gaussian noise, as uint8. Bright bones and heart, dark lungs.
- Sides are the PATIENT's: in a PA view the patient's left is the image's right, so the heart sits on the
  image's right and "Left Lung" (ANATOMY_REGIONS) is the image-right lung.
- Boxes are xyxy pixels of the generated image, pixel i covering [i, i + 1); each is the bounding box of
  the finding's drawn pixels (half of its peak intensity), so a box always contains what it labels.
  A bilateral pleural effusion gives two findings (right and left) with one box each; edema and emphysema
  give one bilateral box.

Label rules (all derived from the finding list, so they agree with the picture and the report):
- CheXpert (14): PHANTOM_TO_CHEXPERT plus DETAIL_TO_CHEXPERT. Consolidation, atelectasis, edema and
  nodule/mass also set Lung Opacity (CheXpert's hierarchy; the report always says "opacity" for them).
  Pneumonia = consolidation whose report uses an infectious word. Cardiomegaly does NOT set Enlarged
  Cardiomediastinum: that label means a widened superior mediastinum, as the labeler reads the report
  sentences independently. Emphysema has no label but, as in the CheXpert labeler, blanks No Finding.
  No Finding = 1 iff there is no finding other than support devices.
- VinDr concepts (22): PHANTOM_TO_VINDR plus DETAIL_TO_VINDR: enlarged cardiomediastinum -> Aortic
  enlargement; infectious consolidation also -> Infiltration; cavitary consolidation -> Infiltration and
  Lung cavity; fracture -> Rib fracture or Clavicle fracture. Support devices have no concept. Concepts
  the phantom never draws (Calcification, ILD, ...) stay 0.
- VinDr diseases (6), from the concepts: COPD <- Emphysema; Lung tumor <- Nodule/Mass; Pneumonia <-
  Infiltration; Tuberculosis <- Lung cavity (upper-zone cavitary infection); Other diseases <- any concept
  that no positive disease explains (DISEASE_EXPLAINS); No finding <- no concept at all.
"""
import argparse
import functools
import hashlib
import math
import os
import pickle
import textwrap
import time

import numpy as np
import torch
from PIL import Image, ImageDraw

from data.labels import ANATOMY_REGIONS, CHEXPERT_LABELS, PHANTOM_FINDINGS, VINDR_CONCEPTS, VINDR_DISEASES
from data.phantom_anatomy import sample_anatomy, sample_findings
from data.phantom_draw import draw_findings, render_anatomy
from data.phantom_report import write_report

MIN_SIZE, MAX_SIZE = 64, 512
PHANTOM_SPLIT_SEEDS = {"train": 0, "val": 1, "test": 2, "hub": 1000}

PHANTOM_TO_CHEXPERT = {
    "cardiomegaly": ["Cardiomegaly"],
    "enlarged cardiomediastinum": ["Enlarged Cardiomediastinum"],
    "pleural effusion": ["Pleural Effusion"],
    "pneumothorax": ["Pneumothorax"],
    "consolidation": ["Consolidation", "Lung Opacity"],
    "atelectasis": ["Atelectasis", "Lung Opacity"],
    "edema": ["Edema", "Lung Opacity"],
    "nodule": ["Lung Lesion", "Lung Opacity"],
    "fracture": ["Fracture"],
    "support device": ["Support Devices"],
    "emphysema": [],
    "pleural thickening": ["Pleural Other"],
}
DETAIL_TO_CHEXPERT = {("consolidation", "infectious"): ["Pneumonia"], ("consolidation", "cavitary"): ["Pneumonia"]}

PHANTOM_TO_VINDR = {
    "cardiomegaly": ["Cardiomegaly"],
    "enlarged cardiomediastinum": ["Aortic enlargement"],
    "pleural effusion": ["Pleural effusion"],
    "pneumothorax": ["Pneumothorax"],
    "consolidation": ["Consolidation"],
    "atelectasis": ["Atelectasis"],
    "edema": ["Edema"],
    "nodule": ["Nodule/Mass"],
    "fracture": [],
    "support device": [],
    "emphysema": ["Emphysema"],
    "pleural thickening": ["Pleural thickening"],
}
DETAIL_TO_VINDR = {
    ("consolidation", "infectious"): ["Infiltration"],
    ("consolidation", "cavitary"): ["Infiltration", "Lung cavity"],
    ("fracture", "rib"): ["Rib fracture"],
    ("fracture", "clavicle"): ["Clavicle fracture"],
}
DISEASE_RULES = {"COPD": "Emphysema", "Lung tumor": "Nodule/Mass", "Pneumonia": "Infiltration",
                 "Tuberculosis": "Lung cavity"}
DISEASE_EXPLAINS = {"COPD": ["Emphysema"], "Lung tumor": ["Nodule/Mass"],
                    "Pneumonia": ["Infiltration", "Consolidation"],
                    "Tuberculosis": ["Lung cavity", "Infiltration", "Consolidation"]}


# ------------------------------------------------------------------------------------------------------------
# labels from the finding list

def chexpert_labels(findings):
    """list of finding dicts -> (14,) float32 over CHEXPERT_LABELS (1 present, 0 absent)."""
    labels = np.zeros(len(CHEXPERT_LABELS), np.float32)
    for finding in findings:
        for name in PHANTOM_TO_CHEXPERT[finding["name"]] + DETAIL_TO_CHEXPERT.get(
                (finding["name"], finding["detail"]), []):
            labels[CHEXPERT_LABELS.index(name)] = 1.0
    if all(finding["name"] == "support device" for finding in findings):
        labels[CHEXPERT_LABELS.index("No Finding")] = 1.0
    return labels


def vindr_concepts(findings):
    """list of finding dicts -> (22,) float32 over VINDR_CONCEPTS."""
    concepts = np.zeros(len(VINDR_CONCEPTS), np.float32)
    for finding in findings:
        for name in PHANTOM_TO_VINDR[finding["name"]] + DETAIL_TO_VINDR.get((finding["name"], finding["detail"]), []):
            concepts[VINDR_CONCEPTS.index(name)] = 1.0
    return concepts


def vindr_diseases(concepts):
    """(22,) concepts -> (6,) float32 over VINDR_DISEASES by DISEASE_RULES / DISEASE_EXPLAINS."""
    present = {name for name, value in zip(VINDR_CONCEPTS, concepts) if value > 0}
    diseases = np.zeros(len(VINDR_DISEASES), np.float32)
    explained = set()
    for disease, concept in DISEASE_RULES.items():
        if concept in present:
            diseases[VINDR_DISEASES.index(disease)] = 1.0
            explained.update(DISEASE_EXPLAINS[disease])
    diseases[VINDR_DISEASES.index("Other diseases")] = float(bool(present - explained))
    diseases[VINDR_DISEASES.index("No finding")] = float(not present)
    return diseases


# ------------------------------------------------------------------------------------------------------------
# one phantom

GENERATOR_FILES = ("phantom.py", "phantom_anatomy.py", "phantom_draw.py", "phantom_report.py", "labels.py")


@functools.lru_cache(maxsize=1)
def generator_hash():
    """12 hex digits of sha1 over the source of the modules that make a phantom (the disk-cache key)."""
    digest = hashlib.sha1()
    for name in GENERATOR_FILES:
        with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), name), "rb") as f:
            digest.update(f.read())
    return digest.hexdigest()[:12]


def check_size(size):
    if not isinstance(size, (int, np.integer)) or not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"data/phantom.py: image size must be an integer from {MIN_SIZE} to {MAX_SIZE} px "
                         f"(square images), got {size!r}")
    return int(size)


def make_chest_phantom(seed, index, size=224, healthy_fraction=0.3, finding_names=None):
    """One PA chest phantom as numpy values.

    finding_names: draw exactly these PHANTOM_FINDINGS (attributes still random); None samples them.
    Returns image (H, W) uint8, labels (14,), concepts (22,), diseases (6,) float32, region_masks (6, H, W)
    bool, boxes (N, 4) float32 xyxy pixels, box_labels (N,) int64 into PHANTOM_FINDINGS, report str,
    findings [{name, side, zone, size, detail, extra, box}], id str.
    """
    size = check_size(size)
    if not 0.0 <= healthy_fraction <= 1.0:
        raise ValueError(f"data/phantom.py: healthy_fraction must be in [0, 1], got {healthy_fraction}")
    if finding_names is not None:
        unknown = [name for name in finding_names if name not in PHANTOM_FINDINGS]
        if unknown:
            raise ValueError(f"data/phantom.py: unknown finding names {unknown}; known: {PHANTOM_FINDINGS}")
    anatomy = sample_anatomy(np.random.default_rng([seed, index, 0]))
    findings = sample_findings(np.random.default_rng([seed, index, 1]), anatomy, healthy_fraction, finding_names)
    canvas = render_anatomy(anatomy, findings, size)
    boxes = draw_findings(canvas, anatomy, findings)  # (N, 4)
    image = canvas.to_uint8(anatomy, np.random.default_rng([seed, index, 2]))  # (H, W)
    public = []
    for finding, box in zip(findings, boxes):
        public.append({key: finding[key] for key in ("name", "side", "zone", "size", "detail", "extra")})
        public[-1]["box"] = [float(v) for v in box]
    concepts = vindr_concepts(public)
    return {
        "image": image,
        "labels": chexpert_labels(public),
        "concepts": concepts,
        "diseases": vindr_diseases(concepts),
        "region_masks": canvas.region_masks(),
        "boxes": np.asarray(boxes, np.float32).reshape(-1, 4),
        "box_labels": np.array([PHANTOM_FINDINGS.index(f["name"]) for f in public], np.int64),
        "report": write_report(public, np.random.default_rng([seed, index, 3])),
        "findings": public,
        "id": f"phantom-{seed}-{index}",
    }


class ChestPhantomDataset(torch.utils.data.Dataset):
    """num_samples phantoms with indices start_index.. under one seed, generated in __getitem__.

    Keys: image (3, H, W) float32 in [0, 1] (or whatever `transform` returns), labels (14,), concepts (22,),
    diseases (6,), region_masks (6, H, W) bool, boxes (N, 4) float32, box_labels (N,) int64, report, id,
    patient_id, view "PA", findings (list of dicts; their "box" follows the transform).
    transform(image_pil_L, boxes (N, 4) np, masks (6, H, W) bool np) -> (image, boxes, masks).
    cache=True keeps each generated phantom (numpy, before the transform) in this process, so epochs after
    the first skip the generation: ~1 ms per image at 128 px. Use it with num_workers=0 (a worker's cache
    dies with the worker at the end of each epoch); memory is about 100 KB per 128-px image.
    cache_dir=PATH keeps them on disk instead (one pickle per phantom, ~30 KB at 128 px with bit-packed masks, written atomically),
    shared by DataLoader workers, epochs and runs: the first read of an index generates and writes it, every
    later read loads the file. Files sit under PATH/<generator key>/, the key naming size, healthy fraction
    and a hash of the generator's source files, so a changed generator never reads stale phantoms.
    """

    label_names = CHEXPERT_LABELS
    box_classes = PHANTOM_FINDINGS
    concept_names = VINDR_CONCEPTS
    disease_names = VINDR_DISEASES
    region_names = ANATOMY_REGIONS

    def __init__(self, num_samples, image_size=224, seed=0, start_index=0, transform=None, healthy_fraction=0.3,
                 cache=False, cache_dir=None):
        if num_samples < 0:
            raise ValueError(f"data/phantom.py: num_samples must be >= 0, got {num_samples}")
        self.num_samples, self.image_size = int(num_samples), check_size(image_size)
        self.seed, self.start_index = int(seed), int(start_index)
        self.transform, self.healthy_fraction = transform, healthy_fraction
        self.cache = {} if cache else None
        self.cache_dir = None
        if cache_dir:
            key = f"{self.image_size}px-healthy{healthy_fraction:g}-{generator_hash()}"
            self.cache_dir = os.path.join(os.path.expanduser(str(cache_dir)), key)
            os.makedirs(self.cache_dir, exist_ok=True)

    def generate(self, index):
        """The phantom of `index` (numpy dict): from the disk cache when it has it, else made (and stored)."""
        made = lambda: make_chest_phantom(self.seed, self.start_index + index, self.image_size, self.healthy_fraction)
        if self.cache_dir is None:
            return made()
        path = os.path.join(self.cache_dir, f"{self.seed}-{self.start_index + index}.pkl")
        try:
            with open(path, "rb") as f:
                stored = pickle.load(f)
            shape = stored.pop("mask_shape")
            stored["region_masks"] = np.unpackbits(stored["region_masks"], count=int(np.prod(shape))).reshape(shape).astype(bool)
            return stored
        except FileNotFoundError:
            pass
        except (pickle.UnpicklingError, EOFError, ValueError, AttributeError, KeyError) as error:
            print(f"[phantom cache] {path}: unreadable ({error}); regenerating it")
        phantom = made()
        temp = f"{path}.{os.getpid()}.tmp"  # workers may write the same index: each its own temp, then rename
        stored = dict(phantom, region_masks=np.packbits(phantom["region_masks"]), mask_shape=phantom["region_masks"].shape)
        with open(temp, "wb") as f:  # masks bit-packed: 12 KB instead of 98 KB at 128 px
            pickle.dump(stored, f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(temp, path)
        return phantom

    def __len__(self):
        return self.num_samples

    def __getitem__(self, index):
        if not 0 <= index < self.num_samples:
            raise IndexError(f"phantom index {index} out of range for {self.num_samples} samples")
        if self.cache is not None and index in self.cache:
            phantom = self.cache[index]
            phantom = {key: value.copy() if isinstance(value, np.ndarray) else value for key, value in phantom.items()}
            phantom["findings"] = [dict(finding) for finding in phantom["findings"]]  # the cache stays untouched
        else:
            phantom = self.generate(index)
            if self.cache is not None:
                self.cache[index] = phantom
                return self[index]
        if self.transform is None:  # numpy, not torch ops: torch's intra-op threads cost ~30 ms on a busy CPU
            grey = phantom["image"].astype(np.float32) * np.float32(1 / 255)  # (H, W)
            image = torch.from_numpy(np.repeat(grey[None], 3, axis=0))  # (3, H, W)
            boxes, masks = torch.from_numpy(phantom["boxes"]), torch.from_numpy(phantom["region_masks"])
        else:
            image, boxes, masks = self.transform(Image.fromarray(phantom["image"], "L"), phantom["boxes"],
                                                 phantom["region_masks"])
            boxes = torch.as_tensor(np.asarray(boxes, np.float32)).reshape(-1, 4)  # (N, 4)
            masks = torch.as_tensor(np.asarray(masks, bool))  # (6, H', W')
        for finding, box in zip(phantom["findings"], boxes.tolist()):
            finding["box"] = box
        return {
            "image": image, "labels": torch.from_numpy(phantom["labels"]),
            "concepts": torch.from_numpy(phantom["concepts"]), "diseases": torch.from_numpy(phantom["diseases"]),
            "region_masks": masks, "boxes": boxes, "box_labels": torch.from_numpy(phantom["box_labels"]),
            "report": phantom["report"], "id": phantom["id"], "patient_id": phantom["id"], "view": "PA",
            "findings": phantom["findings"],
        }


def phantom_split(split, num_samples, image_size=224, **kwargs):
    """The dataset of one split ("train", "val", "test", "hub"), each with its own seed (disjoint images)."""
    if split not in PHANTOM_SPLIT_SEEDS:
        raise ValueError(f"data/phantom.py: unknown split {split!r}; expected one of {list(PHANTOM_SPLIT_SEEDS)}")
    return ChestPhantomDataset(num_samples, image_size, seed=PHANTOM_SPLIT_SEEDS[split], **kwargs)


# ------------------------------------------------------------------------------------------------------------
# command line: preview grid and benchmark

BOX_COLOURS = [(255, 64, 64), (255, 160, 0), (80, 200, 255), (255, 255, 0), (0, 230, 120), (200, 120, 255),
               (255, 120, 200), (120, 255, 255), (255, 255, 255), (160, 255, 80), (255, 200, 140), (100, 140, 255)]


def preview(path, n=12, size=256, seed=0, columns=4, report_lines=11, finding_names=None):
    """Save a grid of n phantoms with coloured, named boxes and a wrapped report excerpt under each tile."""
    text_height, chars = 11 * report_lines + 4, max(20, size // 6)
    rows = math.ceil(n / columns)
    sheet = Image.new("RGB", (columns * (size + 8), rows * (size + text_height + 8)), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    for i in range(n):
        phantom = make_chest_phantom(seed, i, size, finding_names=finding_names)
        left, top = (i % columns) * (size + 8) + 4, (i // columns) * (size + text_height + 8) + 4
        sheet.paste(Image.fromarray(phantom["image"], "L").convert("RGB"), (left, top))
        for box, label in zip(phantom["boxes"], phantom["box_labels"]):
            colour = BOX_COLOURS[int(label)]
            x1, y1, x2, y2 = (float(v) for v in box)
            draw.rectangle([left + x1, top + y1, left + x2 - 1, top + y2 - 1], outline=colour)
            name = PHANTOM_FINDINGS[int(label)]
            width, height = draw.textbbox((0, 0), name)[2:]
            x = max(left, min(left + x1 + 2, left + size - width - 2))       # the label stays inside its tile
            y = min(top + y1 + 1, top + size - height - 3)
            draw.rectangle([x - 1, y - 1, x + width + 1, y + height + 1], fill=(24, 24, 24))
            draw.text((x, y), name, fill=colour)
        draw.text((left + 2, top + 2), phantom["id"], fill=(255, 255, 255))
        lines = textwrap.wrap(phantom["report"], chars)[:report_lines]
        draw.multiline_text((left, top + size + 3), "\n".join(lines), fill=(220, 220, 220), spacing=1)
    sheet.save(path)
    return path


def benchmark(sizes=(128, 224), seconds=3.0):
    """ChestPhantomDataset.__getitem__ in this one process, per size -> {size: (images/s wall, images/s CPU)}.

    The CPU-time rate is what one idle core would give; the wall rate drops when other processes share it."""
    rates = {}
    for size in sizes:
        dataset = ChestPhantomDataset(10 ** 6, image_size=size, seed=0)
        dataset[0]
        count, start, cpu_start = 0, time.perf_counter(), time.process_time()
        while time.perf_counter() - start < seconds:
            dataset[count]
            count += 1
        rates[size] = (count / (time.perf_counter() - start), count / (time.process_time() - cpu_start))
    return rates


def main():
    parser = argparse.ArgumentParser(description="Chest X-ray phantom preview and benchmark")
    parser.add_argument("--preview", help="write a PNG grid of samples with boxes and reports here")
    parser.add_argument("--n", type=int, default=12)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--finding", action="append", help="draw only this finding (repeatable), for a look")
    parser.add_argument("--benchmark", action="store_true", help="print images/s at 128 and 224 px")
    args = parser.parse_args()
    if not args.preview and not args.benchmark:
        parser.error("give --preview PATH and/or --benchmark")
    if args.preview:
        print("wrote", preview(args.preview, args.n, check_size(args.size), args.seed, finding_names=args.finding))
    if args.benchmark:
        for size, (wall, cpu) in benchmark().items():
            print(f"phantom __getitem__ at {size} px: {wall:.0f} images/s wall clock, {cpu:.0f} images/s per CPU "
                  f"second (one process)")


if __name__ == "__main__":
    main()
