"""Tests of data/prepare.py (one preparation per dataset) and the reduced JPEG decode of data/io.py.

Each dataset is written by its phantom writer in its real layout, prepared, and read back by its own adapter with
only the root changed: boxes of a prepared image equal the original boxes scaled (to 0.5 px), a rerun does
nothing, a corrupt file is reported with its reason and skipped. The DICOM tests need pydicom (skipped without).

Run: .venv/bin/python -m pytest -q tests/test_prepare.py
"""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data.io import load_image
from data.iu_xray import IUXrayDataset, write_iu_xray
from data.mimic_cxr import MimicCxrDataset, write_mimic_cxr
from data.nih import NihDataset, write_nih
from data.prepare import main, prepare
from data.transforms import build_transform, decode_size
from data.vindr import VinDrDataset, write_vindr

try:
    import pydicom  # noqa: F401
    HAVE_PYDICOM = True
except ImportError:
    HAVE_PYDICOM = False
needs_pydicom = pytest.mark.skipif(not HAVE_PYDICOM, reason="pydicom is not installed (optional)")


@pytest.fixture(scope="module")
def phantoms():
    from data.phantom import ChestPhantomDataset
    dataset = ChestPhantomDataset(8, image_size=128, seed=5)
    return [dataset[i] for i in range(len(dataset))]


def modified_times(folder):
    return {p: p.stat().st_mtime_ns for p in Path(folder).rglob("*") if p.is_file()}


def assert_boxes_scaled(raw, prepared):
    """Each prepared sample's boxes = the raw sample's boxes x (prepared size / raw size), to 0.5 px."""
    boxes = 0
    for original, small in zip(raw, prepared):
        assert original["id"] == small["id"]
        scale = np.array([small["image"].shape[2] / original["image"].shape[2],
                          small["image"].shape[1] / original["image"].shape[1]] * 2, np.float32)
        np.testing.assert_allclose(small["boxes"].numpy(), original["boxes"].numpy() * scale, atol=0.5)
        boxes += len(original["boxes"])
    assert boxes > 0


def test_nih_prepared_boxes_index_and_a_rerun_that_does_nothing(tmp_path, phantoms):
    write_nih(tmp_path / "raw", phantoms)
    summary = prepare("nih", tmp_path / "raw", tmp_path / "out", size=64, workers=2, progress=False)
    assert summary["prepared"] == len(phantoms) and summary["failed"] == 0
    assert_boxes_scaled(NihDataset(tmp_path / "raw", split="all"), NihDataset(tmp_path / "out", split="all"))
    index = (tmp_path / "out" / "prepared_index.csv").read_text().splitlines()
    assert index[0] == "path,source,original_width,original_height,width,height"
    assert index[1] == "images/00000001_000.png,images/00000001_000.png,128,128,64,64" and len(index) == 9
    test = {s["id"] for s in NihDataset(tmp_path / "out", split="test")}  # the official lists were copied
    assert test == {Path(i).stem for i in (tmp_path / "raw" / "test_list.txt").read_text().split()}

    before = modified_times(tmp_path / "out")
    again = prepare("nih", tmp_path / "raw", tmp_path / "out", size=64, workers=1, progress=False)
    assert again["prepared"] == 0 and again["already_done"] == len(phantoms) and again["copied"] == 0
    after = modified_times(tmp_path / "out")
    assert {p: t for p, t in after.items() if p.name != "prepare_failures.json"} == \
        {p: t for p, t in before.items() if p.name != "prepare_failures.json"}
    with pytest.raises(Exception, match="another --out"):
        prepare("nih", tmp_path / "raw", tmp_path / "out", size=32, workers=1, progress=False)


def test_corrupt_files_are_reported_with_their_reason_and_skipped(tmp_path, phantoms, capsys):
    written = write_nih(tmp_path / "raw", phantoms)
    images = tmp_path / "raw" / "images"
    (images / written["images"][0]).write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (images / written["images"][1]).write_bytes(b"")
    Image.new("CMYK", (80, 80)).save(images / written["images"][2], "JPEG")  # a CMYK JPEG under a .png name
    wide = (np.arange(96 * 96).reshape(96, 96) * 7).astype(np.uint16)  # 16-bit grey: min-max to 8 bit
    Image.fromarray(wide).save(images / written["images"][3])
    summary = prepare("nih", tmp_path / "raw", tmp_path / "out", size=64, workers=1, progress=False)
    assert (summary["prepared"], summary["failed"]) == (len(phantoms) - 3, 3)
    report = json.loads(summary["failures"].read_text())
    assert report["by_reason"] == {"unreadable": 1, "wrong mode": 1, "zero size": 1}
    assert [f["path"] for f in report["files"]] == [f"images/{n}" for n in written["images"][:3]]
    assert "3 failed (1 unreadable, 1 wrong mode, 1 zero size" in capsys.readouterr().out
    converted = np.asarray(Image.open(tmp_path / "out" / "images" / written["images"][3]))
    assert converted.dtype == np.uint8 and converted.shape == (64, 64) and converted.min() <= 5 \
        and converted.max() >= 250
    dataset = NihDataset(tmp_path / "out", split="all", on_error="skip", check_images=True)
    assert len(dataset) == len(phantoms) - 3  # the failed files are missing, as they would be unreadable in raw
    # a rerun tries the failed files again and still skips the good ones
    again = prepare("nih", tmp_path / "raw", tmp_path / "out", size=64, workers=1, progress=False)
    assert (again["prepared"], again["failed"], again["already_done"]) == (0, 3, len(phantoms) - 3)


def test_data_entry_v2020_is_read_and_prepared(tmp_path, phantoms):
    write_nih(tmp_path / "raw", phantoms[:4], data_entry_name="Data_Entry_2017_v2020.csv")
    prepare("nih", tmp_path / "raw", tmp_path / "out", size=64, workers=1, progress=False)
    assert (tmp_path / "out" / "Data_Entry_2017_v2020.csv").exists()
    assert len(NihDataset(tmp_path / "out", split="all")) == 4


def test_vindr_png_boxes_stay_in_the_original_frame(tmp_path, phantoms):
    write_vindr(tmp_path / "raw", phantoms, split="train")  # PNG + image_sizes.csv (original 4x larger)
    prepare("vindr", tmp_path / "raw", tmp_path / "out", size=48, workers=1, progress=False)
    assert (tmp_path / "out" / "image_sizes.csv").read_text() == (tmp_path / "raw" / "image_sizes.csv").read_text()
    assert_boxes_scaled(VinDrDataset(tmp_path / "raw", split="train"), VinDrDataset(tmp_path / "out", split="train"))


@needs_pydicom
@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
def test_vindr_dicom_becomes_png_with_the_right_polarity(tmp_path, phantoms, photometric):
    write_vindr(tmp_path / "raw", phantoms[:4], split="test", original_scale=2.0, image_format="dicom",
                photometric=photometric)
    assert not (tmp_path / "raw" / "image_sizes.csv").exists()  # as in the DICOM release
    prepare("vindr", tmp_path / "raw", tmp_path / "out", size=128, workers=1, progress=False)
    sizes = (tmp_path / "out" / "image_sizes.csv").read_text().splitlines()
    assert sizes[0] == "image_id,height,width" and all(row.endswith(",256,256") for row in sizes[1:])
    raw = VinDrDataset(tmp_path / "raw", split="test", image_format="dicom")
    prepared = VinDrDataset(tmp_path / "out", split="test")  # the default image_format png
    assert_boxes_scaled(raw, prepared)
    for sample, phantom in zip(prepared, phantoms):  # bright bone stays bright, whatever the file stored
        correlation = np.corrcoef(sample["image"][0].numpy().ravel(), phantom["image"][0].numpy().ravel())[0, 1]
        assert correlation > 0.97  # (min-max scaled to the full 8-bit range; an inverted picture gives < -0.97)


def test_mimic_jpegs_and_reports(tmp_path, phantoms):
    written = write_mimic_cxr(tmp_path / "raw", phantoms)
    prepare("mimic_cxr", tmp_path / "raw", tmp_path / "out", size=64, workers=1, progress=False)
    raw, prepared = MimicCxrDataset(tmp_path / "raw", split="all"), MimicCxrDataset(tmp_path / "out", split="all")
    assert [s["id"] for s in prepared] == written["dicom_ids"]
    for original, small in zip(raw, prepared):
        assert small["report"] == original["report"] and small["image"].shape == (3, 64, 64)
    first = next((tmp_path / "out" / "files").rglob("*.jpg"))
    assert Image.open(first).format == "JPEG" and Image.open(first).mode == "L"


def test_iu_xray_and_a_video_folder(tmp_path, phantoms):
    write_iu_xray(tmp_path / "iu", phantoms[:4])
    prepare("iu_xray", tmp_path / "iu", tmp_path / "iu_out", size=64, workers=1, progress=False)
    prepared = IUXrayDataset(tmp_path / "iu_out", split="all")
    assert len(prepared) == 4 and prepared[0]["image"].shape == (3, 64, 64)
    assert prepared[0]["report"] == IUXrayDataset(tmp_path / "iu", split="all")[0]["report"]

    from data.phantom_video import PhantomVideoDataset, write_video_folder
    from data.video import VideoFolderDataset
    phantom = PhantomVideoDataset(2, split="test", num_frames=3, image_size=32)
    write_video_folder({"test": phantom}, tmp_path / "video", attn_format="png")
    prepare("video", tmp_path / "video", tmp_path / "video_out", size=16, workers=1, progress=False)
    frame = next((tmp_path / "video_out" / "videos").rglob("*.png"))
    assert Image.open(frame).size == (16, 16)
    assert Image.open(next((tmp_path / "video_out" / "attention").rglob("*.png"))).size == (32, 32)  # copied
    dataset = VideoFolderDataset(tmp_path / "video_out", "test", phantom.class_names, num_frames=3, image_size=16)
    assert len(dataset) == 2 and dataset[0]["video"].shape == (3, 3, 16, 16)


def test_cli_wrong_root_is_one_line_and_status_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["nih", "--root", str(tmp_path), "--out", str(tmp_path / "out"), "--no-progress"])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Data_Entry_2017_v2020.csv or Data_Entry_2017.csv" in err
    assert not (tmp_path / "out").exists()


def test_jpeg_draft_decode_in_the_loader(tmp_path):
    pixels = np.tile(np.linspace(0, 255, 400, dtype=np.float32), (320, 1)).astype(np.uint8)  # 400 x 320
    Image.fromarray(pixels).save(tmp_path / "big.jpg", quality=95)
    assert load_image(tmp_path / "big.jpg").size == (400, 320)
    assert load_image(tmp_path / "big.jpg", draft_size=(100, 80)).size == (100, 80)     # 1/4 scale
    assert load_image(tmp_path / "big.jpg", draft_size=(101, 80)).size == (200, 160)    # never below the request
    assert decode_size(build_transform(False, 96)) == (96, 96)
    assert decode_size(build_transform(True, 96, resize="stretch")) == (96, 96)
