"""Tests of the chest phantom (data/phantom.py, data/phantom_report.py): determinism, sizes, label rules,
boxes against the picture, anatomy masks, report wording, the dataset contract and the finding distribution.

Run: /work/venv/bin/pytest -q tests/test_phantom.py
"""
import re

import numpy as np
import pytest
import torch
from PIL import Image

from data.labels import ANATOMY_REGIONS, CHEXPERT_LABELS, PHANTOM_FINDINGS, VINDR_CONCEPTS, VINDR_DISEASES
from data.phantom import (PHANTOM_SPLIT_SEEDS, PHANTOM_TO_CHEXPERT, PHANTOM_TO_VINDR, ChestPhantomDataset,
                          chexpert_labels, make_chest_phantom, phantom_split, preview, vindr_concepts, vindr_diseases)
from data.sample import collate

SMALL = 64


@pytest.fixture(scope="module")
def samples():
    """500 phantoms at 64 px (seed 11): the population the statistical tests look at."""
    return [make_chest_phantom(11, i, SMALL) for i in range(500)]


def label(vector, names, name):
    return vector[names.index(name)]


# ------------------------------------------------------------------------------------------------------------
# determinism and sizes

def test_same_seed_and_index_give_identical_sample():
    a, b = make_chest_phantom(3, 17, 128), make_chest_phantom(3, 17, 128)
    assert np.array_equal(a["image"], b["image"]) and a["report"] == b["report"]
    assert np.array_equal(a["boxes"], b["boxes"]) and np.array_equal(a["region_masks"], b["region_masks"])
    c = make_chest_phantom(3, 18, 128)
    assert not np.array_equal(a["image"], c["image"])
    assert a["id"] == "phantom-3-17"


@pytest.mark.parametrize("size", [64, 97, 224, 512])
def test_any_square_size_from_64_to_512(size):
    sample = make_chest_phantom(0, 5, size)
    assert sample["image"].shape == (size, size) and sample["image"].dtype == np.uint8
    assert sample["region_masks"].shape == (len(ANATOMY_REGIONS), size, size)


@pytest.mark.parametrize("size", [63, 513, 0, 128.0, "224"])
def test_bad_size_is_rejected(size):
    with pytest.raises(ValueError, match="64 to 512"):
        make_chest_phantom(0, 0, size)


def test_same_anatomy_and_findings_at_different_sizes():
    names = ["pleural effusion", "nodule"]
    large, small = make_chest_phantom(2, 9, 256, finding_names=names), make_chest_phantom(2, 9, 64, finding_names=names)
    assert large["report"] == small["report"]
    assert [f["name"] for f in large["findings"]] == [f["name"] for f in small["findings"]] == names
    shrunk = np.asarray(Image.fromarray(large["image"]).resize((64, 64), Image.BILINEAR), np.float32)
    correlation = np.corrcoef(shrunk.ravel(), small["image"].astype(np.float32).ravel())[0, 1]
    assert correlation > 0.9
    np.testing.assert_allclose(large["boxes"] / 4, small["boxes"], atol=2.5)


# ------------------------------------------------------------------------------------------------------------
# label rules: hand-computed vectors, then the rules over the population

def finding(name, side="right", zone="lower", size="moderate", detail=""):
    return {"name": name, "side": side, "zone": zone, "size": size, "detail": detail, "extra": ""}


def test_label_vectors_by_hand():
    findings = [finding("consolidation", detail="infectious"), finding("support device", detail="pacemaker")]
    labels = chexpert_labels(findings)
    expected = {"Consolidation", "Lung Opacity", "Pneumonia", "Support Devices"}
    assert {n for n, v in zip(CHEXPERT_LABELS, labels) if v == 1} == expected
    concepts = vindr_concepts(findings)
    assert {n for n, v in zip(VINDR_CONCEPTS, concepts) if v == 1} == {"Consolidation", "Infiltration"}
    diseases = vindr_diseases(concepts)
    assert {n for n, v in zip(VINDR_DISEASES, diseases) if v == 1} == {"Pneumonia"}

    # devices only: No Finding in both label spaces
    only_device = [finding("support device", detail="endotracheal tube")]
    assert label(chexpert_labels(only_device), CHEXPERT_LABELS, "No Finding") == 1
    assert label(vindr_diseases(vindr_concepts(only_device)), VINDR_DISEASES, "No finding") == 1

    # emphysema: no CheXpert label but No Finding blank (0); COPD
    emphysema = [finding("emphysema", side="bilateral", zone="diffuse")]
    assert chexpert_labels(emphysema).sum() == 0
    assert {n for n, v in zip(VINDR_DISEASES, vindr_diseases(vindr_concepts(emphysema))) if v} == {"COPD"}

    # cardiomegaly does not set Enlarged Cardiomediastinum; it is an "Other diseases" concept
    heart = [finding("cardiomegaly", side="midline", zone="cardiac")]
    assert {n for n, v in zip(CHEXPERT_LABELS, chexpert_labels(heart)) if v} == {"Cardiomegaly"}
    assert {n for n, v in zip(VINDR_DISEASES, vindr_diseases(vindr_concepts(heart))) if v} == {"Other diseases"}

    # cavitary consolidation: Tuberculosis and Pneumonia, nothing unexplained
    cavity = [finding("consolidation", zone="upper", detail="cavitary"), finding("fracture", detail="clavicle")]
    concepts = vindr_concepts(cavity)
    assert {n for n, v in zip(VINDR_CONCEPTS, concepts) if v} == {"Consolidation", "Infiltration", "Lung cavity",
                                                                  "Clavicle fracture"}
    assert {n for n, v in zip(VINDR_DISEASES, vindr_diseases(concepts)) if v} == {"Pneumonia", "Tuberculosis",
                                                                                   "Other diseases"}


def test_mapping_tables_use_known_names():
    assert set(PHANTOM_TO_CHEXPERT) == set(PHANTOM_FINDINGS) == set(PHANTOM_TO_VINDR)
    assert all(n in CHEXPERT_LABELS for names in PHANTOM_TO_CHEXPERT.values() for n in names)
    assert all(n in VINDR_CONCEPTS for names in PHANTOM_TO_VINDR.values() for n in names)


def test_chexpert_hierarchy_over_population(samples):
    for sample in samples:
        labels = dict(zip(CHEXPERT_LABELS, sample["labels"]))
        names = {f["name"] for f in sample["findings"]}
        for child in ("Consolidation", "Edema", "Atelectasis", "Lung Lesion", "Pneumonia"):
            assert labels[child] <= labels["Lung Opacity"]
        assert labels["Pneumonia"] <= labels["Consolidation"]
        assert labels["No Finding"] == float(names <= {"support device"})
        others = [v for n, v in labels.items() if n not in ("No Finding", "Support Devices")]
        if labels["No Finding"] == 1:
            assert sum(others) == 0
        assert labels["Cardiomegaly"] == float("cardiomegaly" in names)
        assert labels["Enlarged Cardiomediastinum"] == float("enlarged cardiomediastinum" in names)


def test_concepts_and_diseases_follow_the_rules(samples):
    for sample in samples:
        f = sample["findings"]
        names = {x["name"] for x in f}
        details = {(x["name"], x["detail"]) for x in f}
        concepts = dict(zip(VINDR_CONCEPTS, sample["concepts"]))
        diseases = dict(zip(VINDR_DISEASES, sample["diseases"]))
        infectious = bool(details & {("consolidation", "infectious"), ("consolidation", "cavitary")})
        assert concepts["Rib fracture"] == float(("fracture", "rib") in details)
        assert concepts["Clavicle fracture"] == float(("fracture", "clavicle") in details)
        assert diseases["COPD"] == float("emphysema" in names)
        assert diseases["Lung tumor"] == float("nodule" in names)
        assert diseases["Pneumonia"] == float(infectious)
        assert diseases["Tuberculosis"] == float(("consolidation", "cavitary") in details)
        assert diseases["No finding"] == float(names <= {"support device"})
        unexplained = names - {"emphysema", "nodule", "support device"} - ({"consolidation"} if infectious else set())
        assert diseases["Other diseases"] == float(bool(unexplained))


# ------------------------------------------------------------------------------------------------------------
# boxes and masks against the picture

def test_boxes_inside_image_and_not_degenerate(samples):
    for sample in samples:
        boxes = sample["boxes"]
        assert boxes.shape == (len(sample["findings"]), 4) and boxes.dtype == np.float32
        assert sample["box_labels"].tolist() == [PHANTOM_FINDINGS.index(f["name"]) for f in sample["findings"]]
        assert (boxes >= 0).all() and (boxes <= SMALL).all()
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()


BRIGHTER = ["pleural effusion", "consolidation", "nodule", "atelectasis", "edema", "pleural thickening",
            "cardiomegaly"]


@pytest.mark.parametrize("name", BRIGHTER + ["pneumothorax", "emphysema", "support device"])
def test_box_content_differs_from_the_same_seed_healthy_image(name):
    """The same (seed, index) with healthy_fraction=1 has the same anatomy and the SAME noise, without findings.
    So every pixel that changed was changed by the finding: at least 20% of its box must be brighter (dense
    findings) or darker (air: pneumothorax, emphysema) by > 6 grey levels; a device (thin lines) raises the
    box mean. Sharply bounded findings change (almost) nothing outside their box. 6 images at 160 px."""
    for index in range(6):
        sick = make_chest_phantom(4, index, 160, finding_names=[name])
        healthy = make_chest_phantom(4, index, 160, healthy_fraction=1.0)
        assert healthy["findings"] == []
        x1, y1, x2, y2 = (int(v) for v in sick["boxes"][0])
        change = sick["image"][y1:y2, x1:x2].astype(float) - healthy["image"][y1:y2, x1:x2]
        if name == "support device":
            assert change.mean() > 2.0
        elif name in BRIGHTER:
            assert (change > 6).mean() > 0.15, (index, (change > 6).mean())
        else:
            assert (change < -6).mean() > 0.15, (index, (change < -6).mean())
        outside = np.ones((160, 160), bool)
        for x1, y1, x2, y2 in sick["boxes"].astype(int):  # a bilateral effusion has two boxes
            outside[max(y1 - 3, 0):y2 + 3, max(x1 - 3, 0):x2 + 3] = False
        if name in ("nodule", "consolidation", "pleural thickening", "pneumothorax", "pleural effusion"):
            assert (np.abs(sick["image"].astype(float) - healthy["image"])[outside] > 6).mean() < 0.01


def test_heart_on_image_right_and_left_lung_on_image_right(samples):
    for sample in samples[:100]:
        masks = sample["region_masks"]
        assert masks.reshape(len(ANATOMY_REGIONS), -1).any(1).all(), "every anatomical region is non-empty"
        columns = np.arange(SMALL)
        centroid = {name: (masks[i].sum(0) * columns).sum() / masks[i].sum() for i, name in enumerate(ANATOMY_REGIONS)}
        assert centroid["Cardiac"] > SMALL / 2
        assert centroid["Left Lung"] > SMALL / 2 > centroid["Right Lung"]
        assert abs(centroid["Spine"] - SMALL / 2) < 4
        image = sample["image"].astype(float)
        assert image[masks[0]].mean() > image[masks[1] | masks[2]].mean() + 30, "heart brighter than lungs"


def test_finding_sides_match_box_positions(samples):
    """Patient's right = image left: a right-sided finding's box centre lies left of the midline (x < W/2)."""
    for sample in samples:
        for f, box in zip(sample["findings"], sample["boxes"]):
            centre = (box[0] + box[2]) / 2
            if f["side"] == "right":
                assert centre < SMALL / 2, f
            elif f["side"] == "left" and f["name"] != "support device":
                assert centre > SMALL / 2, f


# ------------------------------------------------------------------------------------------------------------
# reports

KEYWORDS = {"cardiomegaly": r"cardiomegaly|heart is \w+ly enlarged|enlargement of the cardiac",
            "enlarged cardiomediastinum": r"mediastin\w* (contour|silhouette )?(is )?\w*ly (widened|enlarged)|"
                                          r"\w+ly widened mediastin", "pleural effusion": r"pleural effusion",
            "pneumothorax": r"pneumothorax", "consolidation": r"consolidat|pneumonia", "atelectasis": r"atelecta",
            "edema": r"edema", "nodule": r"nodul|mass", "fracture": r"fracture", "support device":
            r"tube|catheter|pacemaker", "emphysema": r"emphysema", "pleural thickening": r"pleural thickening"}
NEGATED = re.compile(r"^(no |there is no |normal |heart size is normal|the heart is normal|the mediastinal contour is "
                     r"normal|the mediastinum is not|the cardiac silhouette is within)")


def sentences(report):
    findings, impression = report.split(" | Impression: ")
    assert findings.startswith("Findings: ")
    text = findings[len("Findings: "):] + " " + impression
    return [s.strip().lower() for s in text.split(". ") if s.strip()]


def test_report_names_each_finding_with_its_side_and_negates_absent_ones(samples):
    uncertain = re.compile(r"\b(may|might|possible|possibly|likely|versus|suggest\w*|cannot|questionable|"
                           r"probable|consistent with|blunting|plate|lines?)\b")
    for sample in samples:
        report, found = sample["report"], sample["findings"]
        parts = sentences(report)
        assert not uncertain.search(report.lower()), report
        for f in found:
            mentioning = [s for s in parts if re.search(KEYWORDS[f["name"]], s) and not NEGATED.match(s)]
            assert mentioning, (f, report)
            if f["side"] in ("right", "left"):
                assert any(f["side"] in s or "bilateral" in s for s in mentioning), (f, report)
            if f["name"] in ("pleural effusion", "pneumothorax", "consolidation", "nodule", "edema", "emphysema"):
                assert any(f["size"] in s for s in mentioning), (f, report)
        names = {f["name"] for f in found}
        for absent in ("pneumothorax", "pleural effusion", "edema", "fracture", "emphysema"):
            if absent not in names:  # any mention of an absent finding is a negation
                assert all(NEGATED.match(s) or " no " in s or " not " in s
                           for s in parts if absent in s), (absent, report)
        assert len([s for s in parts if NEGATED.match(s)]) >= 1, report
        if not names:
            assert re.search(r"normal|no acute", report.lower())


def test_reports_vary_in_wording(samples):
    normal = {s["report"] for s in samples if not s["findings"]}
    assert len(normal) > 20
    effusion_sentences = {p for s in samples for p in sentences(s["report"])
                          if "pleural effusion" in p and not NEGATED.match(p)}
    templates = {re.sub(r"\b(small|moderate|large|right|left)\b", "_", p) for p in effusion_sentences}
    assert len(templates) >= 3


# ------------------------------------------------------------------------------------------------------------
# dataset contract and distribution

def test_dataset_sample_contract_and_collate():
    dataset = ChestPhantomDataset(4, image_size=96, seed=5)
    assert dataset.label_names == CHEXPERT_LABELS and dataset.box_classes == PHANTOM_FINDINGS and len(dataset) == 4
    sample = dataset[1]
    assert sample["image"].shape == (3, 96, 96) and sample["image"].dtype == torch.float32
    assert 0 <= sample["image"].min() and sample["image"].max() <= 1
    assert sample["labels"].shape == (14,) and sample["concepts"].shape == (22,) and sample["diseases"].shape == (6,)
    assert sample["region_masks"].shape == (6, 96, 96) and sample["region_masks"].dtype == torch.bool
    assert sample["boxes"].dtype == torch.float32 and sample["box_labels"].dtype == torch.int64
    assert sample["id"] == sample["patient_id"] == "phantom-5-1" and sample["view"] == "PA"
    raw = make_chest_phantom(5, 1, 96)
    torch.testing.assert_close(sample["image"][2], torch.from_numpy(raw["image"]).float() / 255)
    batch = collate([dataset[i] for i in range(4)])
    assert batch["image"].shape == (4, 3, 96, 96) and isinstance(batch["boxes"], list)
    with pytest.raises(IndexError):
        dataset[4]


def test_worker_batches_are_one_shared_block_with_the_main_process_values():
    """collate in a DataLoader worker writes every tensor of a batch (boxes too) into one shared-memory block;
    the values and dtypes are those of the main-process collate."""
    from data.loader import SeededDataset, epoch_loader
    data = SeededDataset(ChestPhantomDataset(8, image_size=64, seed=5), seed=0)
    main = list(epoch_loader(data, 4, seed=0, epoch=0))
    workers = list(epoch_loader(data, 4, seed=0, epoch=0, num_workers=2))
    for got, want in zip(workers, main, strict=True):
        tensors = [v for v in got.values() if isinstance(v, torch.Tensor)] + got["boxes"] + got["box_labels"]
        assert len({t.untyped_storage().data_ptr() for t in tensors}) == 1 and tensors[0].is_shared()
        assert len({t.untyped_storage().data_ptr() for t in want["boxes"] + [want["image"]]}) == 2
        for key, value in want.items():
            if isinstance(value, torch.Tensor):
                assert got[key].dtype == value.dtype and torch.equal(got[key], value), key
            elif key in ("boxes", "box_labels"):
                assert all(a.dtype == b.dtype and torch.equal(a, b) for a, b in zip(got[key], value, strict=True))
            else:
                assert got[key] == value, key


def test_dataset_applies_paired_transform():
    from data.transforms import Compose, Grayscale, Resize, ToTensor
    dataset = ChestPhantomDataset(30, image_size=128, seed=6, transform=Compose([Grayscale(), Resize(64), ToTensor()]))
    index = next(i for i in range(30) if len(make_chest_phantom(6, i, 128)["findings"]))
    sample, raw = dataset[index], make_chest_phantom(6, index, 128)
    assert sample["image"].shape == (3, 64, 64) and sample["region_masks"].shape == (6, 64, 64)
    np.testing.assert_allclose(sample["boxes"].numpy(), raw["boxes"] / 2, atol=1e-4)
    assert sample["findings"][0]["box"] == pytest.approx(sample["boxes"][0].tolist())


def test_splits_use_disjoint_seeds():
    assert len(set(PHANTOM_SPLIT_SEEDS.values())) == 4
    ids = {split: {phantom_split(split, 3, 64)[i]["id"] for i in range(3)} for split in ("train", "val", "test")}
    assert not ids["train"] & ids["val"] and not ids["val"] & ids["test"]
    with pytest.raises(ValueError, match="unknown split"):
        phantom_split("dev", 3, 64)


def test_distribution_covers_every_finding_and_healthy_fraction(samples):
    counts = {name: sum(any(f["name"] == name for f in s["findings"]) for s in samples) for name in PHANTOM_FINDINGS}
    assert min(counts.values()) >= 20, counts
    healthy = np.mean([not s["findings"] for s in samples])
    assert abs(healthy - 0.3) < 0.06
    per_image = [len(s["findings"]) for s in samples if s["findings"]]
    assert max(per_image) <= 4 and 1.3 < np.mean(per_image) < 2.3
    assert np.mean([not make_chest_phantom(12, i, SMALL, healthy_fraction=0.8)["findings"] for i in range(100)]) > 0.65


def test_preview_writes_a_png(tmp_path):
    path = preview(tmp_path / "grid.png", n=2, size=64, seed=0, columns=2)
    image = Image.open(path)
    assert image.size[0] == 2 * (64 + 8) and image.mode == "RGB"


def test_preview_box_labels_stay_inside_their_tile(tmp_path):
    # seed 0's first 12 phantoms hold boxes at the right edge of the lung field (phantom-0-8: pleural thickening);
    # their names used to run past the tile into the dark gap between tiles
    size, columns = 256, 4
    sheet = np.asarray(Image.open(preview(tmp_path / "grid.png", n=12, size=size, seed=0, columns=columns)))
    tile_height = (sheet.shape[0]) // 3                                   # 3 rows of tiles: image + report text
    for row in range(3):
        for column in range(columns):
            top, left = row * tile_height + 4, column * (size + 8) + 4
            gap = sheet[top:top + size, left + size:left + size + 8]      # beside the picture, not its text
            assert (gap == 24).all(), f"something drawn right of tile ({row}, {column})"


@pytest.mark.parametrize("seed, index, size, names", [
    (7, 2539, 128, None),  # segmental atelectasis under a severely enlarged heart
    (11, 1241, 64, ["cardiomegaly", "atelectasis"]),  # linear atelectasis, heart covering the medial lung
])
def test_atelectasis_beside_a_large_heart_is_still_drawn(seed, index, size, names):
    phantom = make_chest_phantom(seed, index, size, finding_names=names)
    (box,) = [b for b, f in zip(phantom["boxes"], phantom["findings"]) if f["name"] == "atelectasis"]
    assert box[2] > box[0] and box[3] > box[1]
    x1, y1, x2, y2 = (int(v) for v in box)
    lung = phantom["region_masks"][1]  # the patient's left lung (image right) holds these atelectases
    assert lung[y1:y2, x1:x2].any()


def test_cache_returns_the_same_samples_and_is_not_changed_by_callers():
    plain, cached = ChestPhantomDataset(6, 64, seed=3), ChestPhantomDataset(6, 64, seed=3, cache=True)
    for i in range(6):
        first = cached[i]
        first["boxes"] += 5.0  # a caller that edits its sample in place must not reach the cache
        first["findings"].append({"name": "intruder"})
        again, reference = cached[i], plain[i]
        assert set(cached.cache) == set(range(i + 1))
        for key in ("image", "boxes", "labels", "region_masks", "box_labels"):
            assert torch.equal(again[key], reference[key]), key
        assert again["findings"] == reference["findings"] and again["report"] == reference["report"]


def test_disk_cache_is_shared_by_workers_and_gives_the_generated_samples(tmp_path):
    """cache_dir: 2 DataLoader workers fill it, a second dataset object (another run) reads it back, and every
    sample equals the freshly generated one; an unreadable file is regenerated, not fed as garbage."""
    from data.loader import SeededDataset, epoch_loader
    from data.phantom import generator_hash
    plain = ChestPhantomDataset(12, 64, seed=5)
    first = ChestPhantomDataset(12, 64, seed=5, cache_dir=tmp_path)
    batches = list(epoch_loader(SeededDataset(first, seed=0), 4, seed=0, epoch=0, num_workers=2))
    folder = tmp_path / f"64px-healthy0.3-{generator_hash()}"
    files = sorted(p.name for p in folder.iterdir())
    assert files == sorted(f"5-{i}.pkl" for i in range(12))  # written by the workers, no temp files left
    reference = list(epoch_loader(SeededDataset(plain, seed=0), 4, seed=0, epoch=0))
    for got, want in zip(batches, reference):
        assert got["id"] == want["id"] and torch.equal(got["image"], want["image"])
        assert len(got["boxes"]) == len(want["boxes"]) == 4  # collate: one list entry (N_i, 4) per sample
        for a, b, labels in zip(got["boxes"], want["boxes"], got["box_labels"]):
            assert a.shape == b.shape and torch.equal(a, b) and labels.shape == (len(a),)
    (folder / "5-3.pkl").write_bytes(b"not a pickle")
    second = ChestPhantomDataset(12, 64, seed=5, cache_dir=tmp_path)
    for i in range(12):
        again, want = second[i], plain[i]
        for key in ("image", "boxes", "labels", "region_masks", "box_labels", "concepts"):
            assert torch.equal(again[key], want[key]), (i, key)
        assert again["region_masks"].dtype == torch.bool
        assert again["report"] == want["report"] and again["findings"] == want["findings"]
    assert (folder / "5-3.pkl").stat().st_size > 1000  # rewritten
    other_size = ChestPhantomDataset(2, 96, seed=5, cache_dir=tmp_path)
    other_size[0]
    assert (tmp_path / f"96px-healthy0.3-{generator_hash()}" / "5-0.pkl").exists()
