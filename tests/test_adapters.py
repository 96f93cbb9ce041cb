"""Tests of the real-dataset adapters (data/iu_xray.py, mimic_cxr.py, nih.py, vindr.py, io.py).

Real files: the 20 IU X-ray studies and the 2 NIH PNGs of /work/shared/real_samples (or ../shared from the
repository). Phantoms written in each real layout are read back with the real reader and compared with the
phantom source. Every kind of bad input gives one DataError naming the file and line (on_error="stop")
or is skipped and counted (on_error="skip").

Run: /work/venv/bin/pytest -q tests/test_adapters.py
"""
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data.io import data_root, load_or_make_split, make_patient_split, rule_labels, write_csv
from data.iu_xray import IUXrayDataset, IUXrayR2GenDataset, write_iu_xray, write_r2gen_annotation
from data.labels import CHEXPERT_LABELS, NIH_BOX_CLASSES, NIH_LABELS, VINDR_CONCEPTS
from data.mimic_cxr import MimicCxrDataset, MimicMasterDataset, write_master_jsonl, write_mimic_cxr
from data.nih import BBOX_HEADER, DATA_ENTRY_HEADER, NihDataset, write_nih
from data.reports import clean_report, split_sections
from data.sample import DataError
from data.transforms import build_transform
from data.vindr import VinDrDataset, write_vindr

REAL = Path(__file__).resolve().parents[2] / "shared" / "real_samples"
if not REAL.exists():
    REAL = Path("/work/shared/real_samples")
needs_real = pytest.mark.skipif(not REAL.exists(), reason="shared/real_samples not found")


@pytest.fixture(scope="module")
def phantoms():
    from data.phantom import ChestPhantomDataset
    dataset = ChestPhantomDataset(12, image_size=64, seed=3)
    return [dataset[i] for i in range(len(dataset))]


# ----------------------------------------------------------------------------------------------------------
# real IU X-ray CSVs

@pytest.fixture
def iu_real(tmp_path):
    for name in ("indiana_reports.csv", "indiana_projections.csv"):
        shutil.copy(REAL / "iu_xray" / name, tmp_path / name)
    (tmp_path / "images" / "images_normalized").mkdir(parents=True)
    return tmp_path


@needs_real
def test_iu_real_csvs_frontal_filter_and_reports(iu_real):
    dataset = IUXrayDataset(iu_real, split="all")
    assert len(dataset) == 20
    frontal = [line.split(",") for line in (iu_real / "indiana_projections.csv").read_text().splitlines()[1:]]
    expected_ids = [row[1].split(".")[0] for row in frontal if row[2] == "Frontal"]
    assert [r["id"] for r in dataset.records] == expected_ids
    assert all(r["view"] == "FRONTAL" for r in dataset.records)
    assert len(IUXrayDataset(iu_real, split="all", frontal_only=False)) == 40
    reports = {r["patient_id"]: r["report"] for r in dataset.records}
    assert not any("XXXX" in report for report in reports.values())
    # uid 813: the findings' first sentence holds "XXXX" and is dropped, the rest is kept
    assert reports["813"].startswith("Findings: The cardiomediastinal contours are unchanged.")
    assert reports["317"] == ("Findings: Normal heart size. Normal mediastinal silhouette. No pneumothorax or "
                              "pleural effusion. No suspicious focal air space opacity. | Impression: No acute "
                              "abnormality.")
    for record in dataset.records:  # the rule labeler's labels of the cleaned report
        np.testing.assert_array_equal(record["labels"], rule_labels(record["report"], CHEXPERT_LABELS))


@needs_real
def test_iu_patient_split_saved_and_reused(iu_real):
    sizes = {s: len(IUXrayDataset(iu_real, split=s)) for s in ("train", "val", "test")}
    assert sizes == {"train": 14, "val": 3, "test": 3}
    split_file = iu_real / "splits" / "iu_xray_patient_split_seed0.json"
    stored = json.loads(split_file.read_text())["patients"]
    stored["183"] = "test" if stored["183"] != "test" else "train"  # an edited file is reused as is
    split_file.write_text(json.dumps({"patients": stored}))
    test_ids = {r["patient_id"] for r in IUXrayDataset(iu_real, split="test").records}
    assert test_ids == {p for p, s in stored.items() if s == "test"}
    del stored["183"]
    split_file.write_text(json.dumps({"patients": stored}))
    with pytest.raises(DataError, match="does not match the data: 1 of 20 patients"):
        IUXrayDataset(iu_real, split="train")


@needs_real
def test_missing_image_stop_and_skip(iu_real):
    dataset = IUXrayDataset(iu_real, split="all")
    with pytest.raises(DataError, match=r"image not found: .*183_IM-0537-1001.dcm.png .*projections.csv line 2"):
        dataset[0]
    skipping = IUXrayDataset(iu_real, split="all", on_error="skip", check_images=True)
    assert len(skipping) == 0 and len(skipping.policy.skipped) == 20
    assert "skipped 20 bad item(s)" in skipping.summary()


def test_missing_root_and_missing_csv_list_expected_files(tmp_path):
    with pytest.raises(DataError, match="no data.root given.*indiana_reports.csv, indiana_projections.csv"):
        IUXrayDataset(None)
    with pytest.raises(DataError, match="is not a folder; expected there: indiana_reports.csv"):
        IUXrayDataset(tmp_path / "nowhere")
    (tmp_path / "indiana_reports.csv").write_text("uid,findings,impression\n")
    (tmp_path / "images" / "images_normalized").mkdir(parents=True)
    with pytest.raises(DataError, match=r"missing under data.root .*: indiana_projections.csv"):
        IUXrayDataset(tmp_path)
    with pytest.raises(DataError, match="mimic-cxr-2.0.0-split.csv.gz or mimic-cxr-2.0.0-split.csv"):
        data_root(tmp_path, [("mimic-cxr-2.0.0-split.csv.gz", "mimic-cxr-2.0.0-split.csv")], "MIMIC-CXR")


# ----------------------------------------------------------------------------------------------------------
# real NIH PNGs, with a Data_Entry CSV in the real header format

ENTRY = {"00000001_000.png": ["00000001_000.png", "Cardiomegaly", "0", "1", "58", "M", "PA", "2682", "2749",
                              "0.143", "0.143"],
         "00027426_000.png": ["00027426_000.png", "No Finding", "0", "27426", "46", "M", "PA", "2048", "2500",
                              "0.168", "0.168"]}


@pytest.fixture
def nih_real(tmp_path):
    (tmp_path / "images").mkdir()
    for name in ENTRY:
        shutil.copy(REAL / "nih" / name, tmp_path / "images" / name)
    write_csv(tmp_path / "Data_Entry_2017.csv", DATA_ENTRY_HEADER, list(ENTRY.values()))
    return tmp_path


@needs_real
def test_nih_real_pngs_labels_and_boxes(nih_real):
    assert (nih_real / "Data_Entry_2017.csv").read_text().splitlines()[0].endswith(
        "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],")
    write_csv(nih_real / "BBox_List_2017.csv", BBOX_HEADER,
              [["00000001_000.png", "Cardiomegaly", "100", "200", "300", "400", "", "", ""],
               ["00000001_000.png", "Infiltrate", "10", "20", "30.5", "40", "", "", ""]])
    dataset = NihDataset(nih_real, split="all")
    assert len(dataset) == 2 and dataset.label_names == NIH_LABELS and dataset.box_classes == NIH_BOX_CLASSES
    first, second = dataset[0], dataset[1]
    assert first["id"] == "00000001_000" and first["patient_id"] == "1" and first["view"] == "PA"
    assert first["labels"].tolist() == [float(n == "Cardiomegaly") for n in NIH_LABELS]
    assert second["labels"].sum() == 0  # No Finding
    # the real PNG is 512 px: the 1024-frame boxes are halved
    np.testing.assert_allclose(first["boxes"].numpy(), [[50, 100, 200, 300], [5, 10, 20.25, 30]], atol=1e-4)
    assert [NIH_BOX_CLASSES[i] for i in first["box_labels"].tolist()] == ["Cardiomegaly", "Infiltration"]
    assert second["boxes"].shape == (0, 4)
    pixels = np.asarray(Image.open(REAL / "nih" / "00000001_000.png").convert("L"), np.float32) / 255
    assert first["image"].shape == (3, 512, 512)
    assert torch.equal(first["image"][0], torch.from_numpy(pixels))
    assert torch.equal(first["image"][2], first["image"][0])
    resized = NihDataset(nih_real, split="all", transform=build_transform(False, 256))[0]
    assert resized["image"].shape == (3, 256, 256)
    np.testing.assert_allclose(resized["boxes"][0].numpy(), [25, 50, 100, 150], atol=1e-4)


def _bad_nih(root, entry_rows=None, box_rows=None, image_bytes=None):
    if entry_rows is not None:
        write_csv(root / "Data_Entry_2017.csv", DATA_ENTRY_HEADER, entry_rows)
    if box_rows is not None:
        write_csv(root / "BBox_List_2017.csv", BBOX_HEADER, box_rows)
    if image_bytes is not None:
        (root / "images" / "00000001_000.png").write_bytes(image_bytes)


BAD_INPUTS = {
    "wrong column count": (dict(entry_rows=[ENTRY["00000001_000.png"][:9], ENTRY["00027426_000.png"]]),
                           r"Data_Entry_2017.csv line 2: expected 11 columns .* found 9"),
    "unknown label": (dict(entry_rows=[["00000001_000.png", "Cardiomegaly|Flu"] + ENTRY["00000001_000.png"][2:],
                                       ENTRY["00027426_000.png"]]),
                      r"Data_Entry_2017.csv line 2: unknown finding label 'Flu'"),
    "non-numeric box": (dict(box_rows=[["00000001_000.png", "Mass", "1O0", "2", "3", "4", "", "", ""]]),
                        r"BBox_List_2017.csv line 2: column 'x' must be a number, got '1O0'"),
    "unknown box label": (dict(box_rows=[["00000001_000.png", "Tumour", "1", "2", "3", "4", "", "", ""]]),
                          r"BBox_List_2017.csv line 2: unknown box label 'Tumour'"),
    "box outside the image": (dict(box_rows=[["00000001_000.png", "Mass", "900", "10", "200", "50", "", "", ""]]),
                              r"BBox_List_2017.csv line 2: box \[900, 10, 1100, 60\] .* not inside the 1024x1024"),
}


@needs_real
@pytest.mark.parametrize("kind", list(BAD_INPUTS))
def test_nih_bad_rows_stop_and_skip(nih_real, kind):
    changes, message = BAD_INPUTS[kind]
    _bad_nih(nih_real, **changes)
    with pytest.raises(DataError, match=message):
        NihDataset(nih_real, split="all")
    skipping = NihDataset(nih_real, split="all", on_error="skip")
    assert len(skipping.policy.skipped) == 1 and "skipped 1 bad item(s)" in skipping.summary()
    assert len(skipping) == (1 if "entry_rows" in changes else 2)
    if "box_rows" in changes:
        assert sum(len(r["boxes"]) for r in skipping.records) == 0  # the bad box is gone, not zeroed


@needs_real
def test_unreadable_image_is_never_fed_as_zeros(nih_real):
    _bad_nih(nih_real, image_bytes=b"\x89PNG garbage, not an image")
    dataset = NihDataset(nih_real, split="all")
    with pytest.raises(DataError, match=r"cannot read image .*00000001_000.png \(.*Data_Entry_2017.csv line 2\)"):
        dataset[0]
    skipping = NihDataset(nih_real, split="all", on_error="skip")
    assert skipping[0] is None     # the bad record is reported and dropped (collate leaves it out), not replaced
    sample = skipping[1]
    assert sample["id"] == "00027426_000" and sample["image"].abs().sum() > 0
    assert len(skipping.policy.skipped) == 1
    checked = NihDataset(nih_real, split="all", on_error="skip", check_images=True)
    assert [r["id"] for r in checked.records] == ["00027426_000"]


# ----------------------------------------------------------------------------------------------------------
# splits

def test_patient_split_numbers_reproducible_and_saved(tmp_path):
    patients = [f"p{i}" for i in range(100)]
    first = make_patient_split(patients, (0.7, 0.15, 0.15), seed=5)
    assert first == make_patient_split(list(reversed(patients)), (0.7, 0.15, 0.15), seed=5)
    assert [sum(v == s for v in first.values()) for s in ("train", "val", "test")] == [70, 15, 15]
    assert first != make_patient_split(patients, (0.7, 0.15, 0.15), seed=6)
    path = tmp_path / "split.json"
    assert load_or_make_split(path, patients, (0.7, 0.15, 0.15), 5, "test") == first
    assert load_or_make_split(path, patients[:50], (0.5, 0.25, 0.25), 9, "test") == {p: first[p] for p in patients[:50]}
    with pytest.raises(DataError, match="2 of 102 patients have no split"):
        load_or_make_split(path, patients + ["new1", "new2"], (0.7, 0.15, 0.15), 5, "test")
    path.write_text(json.dumps({"patients": {"p1": "validation"}}))
    with pytest.raises(DataError, match=r"split names \['validation'\]"):
        load_or_make_split(path, ["p1"], (0.7, 0.15, 0.15), 5, "test")


# ----------------------------------------------------------------------------------------------------------
# phantoms written in each layout and read back

def _pixels(sample):
    return (sample["image"][0].clamp(0, 1) * 255).round() / 255  # what the writers store, as [0, 1]


def test_iu_phantom_round_trip(tmp_path, phantoms):
    written = write_iu_xray(tmp_path, phantoms)
    dataset = IUXrayDataset(tmp_path, split="all", labels_csv=written["labels_csv"])
    assert [s["patient_id"] for s in dataset] == written["uids"]  # laterals are filtered out
    for source, sample in zip(phantoms, dataset):
        assert torch.equal(sample["labels"], source["labels"].float())
        assert sample["report"] == clean_report(*split_sections(source["report"]))
        assert torch.allclose(sample["image"][0], _pixels(source), atol=1e-6)
    everything = IUXrayDataset(tmp_path, split="all", frontal_only=False, labels_csv=written["labels_csv"])
    laterals = [s for s in everything if s["view"] == "LATERAL"]
    assert len(laterals) == 6 and torch.allclose(laterals[0]["image"][0], _pixels(phantoms[0]).T, atol=1e-6)
    ruled = IUXrayDataset(tmp_path, split="all")
    for record in ruled.records:
        np.testing.assert_array_equal(record["labels"], rule_labels(record["report"], CHEXPERT_LABELS))


def test_r2gen_phantom_round_trip(tmp_path, phantoms):
    written = write_r2gen_annotation(tmp_path, phantoms)
    train = IUXrayR2GenDataset(written["annotation"], written["image_root"], split="train")
    assert [r["patient_id"] for r in train.records] == [written["ids"][i] for i in range(12) if i % 4 in (0, 1)]
    test = IUXrayR2GenDataset(written["annotation"], written["image_root"], split="test")
    source = phantoms[3]
    assert test[0]["report"] == clean_report(split_sections(source["report"])[0], None)
    assert torch.allclose(test[0]["image"][0], _pixels(source), atol=1e-6)
    both = IUXrayR2GenDataset(written["annotation"], written["image_root"], split="test", image_index="all")
    assert len(both) == 6 and torch.allclose(both[1]["image"][0], _pixels(source).T, atol=1e-6)
    patient = [IUXrayR2GenDataset(written["annotation"], written["image_root"], split=s, official_split=False)
               for s in ("train", "val", "test")]
    assert sorted(r["patient_id"] for d in patient for r in d.records) == sorted(written["ids"])


def test_mimic_phantom_round_trip(tmp_path, phantoms):
    written = write_mimic_cxr(tmp_path, phantoms)
    name = {"train": "train", "validate": "val", "test": "test"}
    by_id = {}
    for split in ("train", "val", "test"):
        dataset = MimicCxrDataset(tmp_path, split=split)
        expected = [d for d, s in zip(written["dicom_ids"], written["splits"]) if name[s] == split]
        assert [r["id"] for r in dataset.records] == expected  # frontal only: the LATERAL images are left out
        by_id.update({s["id"]: s for s in dataset})
    assert len(MimicCxrDataset(tmp_path, split="all", frontal_only=False)) == 16
    for dicom, source in zip(written["dicom_ids"], phantoms):
        sample = by_id[dicom]
        assert torch.equal(sample["labels"], source["labels"].float())
        assert sample["report"] == clean_report(*split_sections(source["report"]))
        assert (sample["image"][0] - source["image"][0]).abs().mean() < 0.03  # JPEG
        assert sample["view"] in ("PA", "AP") and sample["patient_id"].startswith("1000000")
    assert by_id[written["dicom_ids"][0]]["patient_id"] == by_id[written["dicom_ids"][1]]["patient_id"]


def test_mimic_master_jsonl_round_trip_and_bad_lines(tmp_path, phantoms):
    written = write_master_jsonl(tmp_path, phantoms)
    dataset = MimicMasterDataset(written["path"], written["image_root"], split="all")
    assert [r["id"] for r in dataset.records] == written["dicom_ids"]
    for source, sample in zip(phantoms, dataset):
        assert torch.equal(sample["labels"], (source["labels"] == 1).float())
        assert sample["report"] == " ".join(" ".join(split_sections(source["report"])).split())
    assert len(MimicMasterDataset(written["path"], written["image_root"], split="val")) == 2
    lines = written["path"].read_text().splitlines()
    short = json.loads(lines[0]) | {"report": "Report to follow."}
    unknown = json.loads(lines[1])
    unknown["labels"]["Flu"] = 1
    written["path"].write_text("\n".join(lines + [json.dumps(short), json.dumps(unknown), "{not json"]) + "\n")
    with pytest.raises(DataError, match=r"line 14: 'labels' must map the 14 CheXpert names .*unknown names \['Flu'\]"):
        MimicMasterDataset(written["path"], written["image_root"], split="all")
    skipping = MimicMasterDataset(written["path"], written["image_root"], split="all", on_error="skip")
    assert len(skipping) == 12 and len(skipping.policy.skipped) == 2  # the short report is dropped, not an error
    assert "line 15: not valid JSON" in skipping.policy.skipped[1]


def test_nih_phantom_round_trip(tmp_path, phantoms):
    written = write_nih(tmp_path, phantoms)
    dataset = NihDataset(tmp_path, split="all")
    assert [s["id"] + ".png" for s in dataset] == written["images"]
    assert sum(len(b) for b in written["boxes"]) > 0
    for sample, labels, boxes in zip(dataset, written["labels"], written["boxes"]):
        assert sample["labels"].tolist() == labels.tolist()
        np.testing.assert_allclose(sample["boxes"].numpy(), boxes, atol=1e-3)
    test_ids = {s["id"] + ".png" for s in NihDataset(tmp_path, split="test")}
    assert test_ids == set((tmp_path / "test_list.txt").read_text().split())
    train = NihDataset(tmp_path, split="train", val_fraction=0.34)
    val = NihDataset(tmp_path, split="val", val_fraction=0.34)
    assert {r["patient_id"] for r in train.records}.isdisjoint({r["patient_id"] for r in val.records})
    assert len(train) + len(val) + len(test_ids) == 12


def _match(boxes, labels, target_box, target_label, atol):
    return sum(int(lab == target_label and np.abs(box - target_box).max() <= atol) for box, lab in zip(boxes, labels))


def test_vindr_phantom_round_trip_and_reader_aggregation(tmp_path, phantoms):
    written = write_vindr(tmp_path, phantoms, split="train")
    assert sum(len(b) for b in written["boxes"]) > 0 and written["spurious"]
    other_lesion = VINDR_CONCEPTS.index("Other lesion")
    for aggregation in ("any", "majority"):
        dataset = VinDrDataset(tmp_path, split="train", aggregation=aggregation)
        for position, sample in enumerate(dataset):
            assert sample["id"] == written["image_ids"][position]
            expected = written["concepts"][position].copy()
            spurious = sample["id"] in written["spurious"]
            if spurious and aggregation == "any":
                expected[other_lesion] = 1
            np.testing.assert_array_equal(sample["concepts"].numpy(), expected)
            np.testing.assert_array_equal(sample["diseases"].numpy(), phantoms[position]["diseases"].numpy())
            boxes, labels = sample["boxes"].numpy(), sample["box_labels"].tolist()
            for label in labels:  # the box rule: never a box on a negative concept
                assert sample["concepts"][label] == 1
            for box, label in zip(written["boxes"][position], written["box_labels"][position]):
                assert _match(boxes, labels, box, label, atol=0.2) >= 2  # 2 or 3 readers, within jitter / 4
            assert (other_lesion in labels) == (spurious and aggregation == "any")


def test_vindr_test_split_renames_other_disease_and_checks_boxes(tmp_path, phantoms):
    written = write_vindr(tmp_path, phantoms[:4], split="test")
    assert "Other disease," in (tmp_path / "image_labels_test.csv").read_text().splitlines()[0] + ","
    dataset = VinDrDataset(tmp_path, split="test")
    for sample, concepts, boxes in zip(dataset, written["concepts"], written["boxes"]):
        np.testing.assert_array_equal(sample["concepts"].numpy(), concepts)
        assert len(sample["boxes"]) == len(boxes)
    sizes = (tmp_path / "image_sizes.csv").read_text().splitlines()
    image, height, width = sizes[1].split(",")
    annotations = tmp_path / "annotations_test.csv"
    annotations.write_text(annotations.read_text() + f"{image},Nodule/Mass,10,10,{int(width) + 5},20\n")
    with pytest.raises(DataError, match=rf"box \[10, 10, {int(width) + 5}, 20\] .*not inside the {width}x{height}"):
        VinDrDataset(tmp_path, split="test")
    assert len(VinDrDataset(tmp_path, split="test", on_error="skip")) == 3


def test_dicom_without_pydicom_is_one_clear_message(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pydicom", None)  # as if pydicom were not installed
    with pytest.raises(DataError, match="needs pydicom: `pip install pydicom`, or convert the images to PNG"):
        VinDrDataset(tmp_path, split="test", image_format="dicom")


def test_nih_reads_data_entry_v2020(tmp_path, phantoms, capsys):
    write_nih(tmp_path, phantoms[:4], data_entry_name="Data_Entry_2017_v2020.csv")
    assert not (tmp_path / "Data_Entry_2017.csv").exists()
    assert [s["id"] + ".png" for s in NihDataset(tmp_path, split="all")] == sorted(
        p.name for p in (tmp_path / "images").iterdir())
    assert "Data_Entry_2017_v2020.csv)" in capsys.readouterr().out  # the summary line names the file read


@pytest.mark.parametrize("workers", [0, 2])
def test_skip_with_a_partly_missing_folder(tmp_path, phantoms, capfd, workers):
    """on_error=skip: only the images that exist, each once per epoch, and one summary line per epoch (also from
    DataLoader workers, which each meet the missing files again)."""
    from data.loader import epoch_loader
    written = write_nih(tmp_path, phantoms)
    missing = written["images"][1::4]
    for name in missing:
        (tmp_path / "images" / name).unlink()
    dataset = NihDataset(tmp_path, split="all", on_error="skip")
    capfd.readouterr()
    for epoch in range(2):
        ids = [i for batch in epoch_loader(dataset, 4, 0, epoch, num_workers=workers, drop_last=False)
               for i in batch["id"]]
        assert sorted(ids) == sorted(n[:-4] for n in written["images"] if n not in missing)
        lines = capfd.readouterr().out.splitlines()
        assert len(lines) == 1 and f"{len(missing)} of {len(phantoms)} records could not be loaded" in lines[0]
    listed = json.loads(dataset.skip_list.read_text())
    assert str(dataset.skip_list) in lines[0] and [Path(e["image"]).name for e in listed] == missing
