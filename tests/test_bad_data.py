"""Bad real-dataset files (issue 26, defects 4 and 5): duplicated keys, bytes that are not UTF-8, truncated
images and short CSV rows, in every adapter (data/iu_xray.py, vindr.py, nih.py, mimic_cxr.py, mimic_master.py,
video.py and the shared readers of data/io.py).

Each case writes phantoms in the real layout (the adapters' write_* functions), spoils one row, and checks
that on_error="stop" gives ONE DataError naming the file, the key / line(s) and what was expected, and that
on_error="skip" leaves out the later (bad) row and counts it once.

Run: python -m pytest -q tests/test_bad_data.py
"""
import json
import re

import numpy as np
import pytest
import torch

from data.iu_xray import IUXrayDataset, IUXrayR2GenDataset, write_iu_xray, write_r2gen_annotation
from data.mimic_cxr import MimicCxrDataset, MimicMasterDataset, write_master_jsonl, write_mimic_cxr
from data.mimic_master import build_master_jsonl
from data.nih import NihDataset, write_nih
from data.sample import DataError
from data.video import VideoFolderDataset
from data.vindr import VinDrDataset, write_vindr

BAD_BYTE = b"\xe9"  # Latin-1 'e acute': not valid UTF-8 on its own


@pytest.fixture(scope="module")
def phantoms():
    from data.phantom import ChestPhantomDataset
    dataset = ChestPhantomDataset(6, image_size=64, seed=3)
    return [dataset[i] for i in range(len(dataset))]


# ----------------------------------------------------------------------------------------------------------
# helpers that spoil one line of a written file (lines are 1-based, the header is line 1)

def _lines(path):
    return path.read_bytes().splitlines(keepends=True)


def append_copy(path, line):
    """Append a copy of `line` at the end of the file -> the line number of the copy."""
    lines = _lines(path)
    if not lines[-1].endswith(b"\n"):
        lines[-1] += b"\n"
    path.write_bytes(b"".join(lines + [lines[line - 1]]))
    return len(lines) + 1


def insert_bad_byte(path, line, after=b","):
    """Put a non-UTF-8 byte into `line`, right after the first `after` (inside a cell, cell count unchanged)."""
    lines = _lines(path)
    head, separator, tail = lines[line - 1].partition(after)
    lines[line - 1] = head + separator + BAD_BYTE + tail
    path.write_bytes(b"".join(lines))


def one_error(make, *parts):
    """make() raises one DataError whose message holds every part (in order) -> the message."""
    with pytest.raises(DataError) as caught:
        make()
    message = str(caught.value)
    assert re.search(".*".join(re.escape(str(p)) for p in parts), message), message
    return message


def not_utf8(name, line):
    return (name, f"not UTF-8 at line {line} (byte 0xe9)")


# ----------------------------------------------------------------------------------------------------------
# defect 4: duplicated keys

def test_iu_duplicate_report_uid_stop_names_both_lines_skip_keeps_first(tmp_path, phantoms):
    write_iu_xray(tmp_path, phantoms, labels_csv=False)
    reports = tmp_path / "indiana_reports.csv"
    lines = _lines(reports)
    # the later row holds another report for uid 1: it used to replace the first silently
    copy = lines[1].replace(b"phantom,phantom", b"other,other")
    reports.write_bytes(b"".join(lines) + copy)
    copy_line = len(lines) + 1
    one_error(lambda: IUXrayDataset(tmp_path, split="all"),
              "indiana_reports.csv: uid 1 on lines 2 and", copy_line, "expected one row per uid")
    clean = IUXrayDataset(tmp_path, split="all", on_error="skip")
    assert len(clean.policy.skipped) == 1 and "uid 1 on lines 2 and" in clean.policy.skipped[0]
    assert len(clean) == len(phantoms)


def test_iu_duplicate_projection_filename(tmp_path, phantoms):
    write_iu_xray(tmp_path, phantoms, labels_csv=False)
    projections = tmp_path / "indiana_projections.csv"
    filename = _lines(projections)[1].split(b",")[1].decode()
    copy_line = append_copy(projections, 2)
    one_error(lambda: IUXrayDataset(tmp_path, split="all"),
              f"indiana_projections.csv: filename {filename} on lines 2 and {copy_line}", "expected one row per")
    skipping = IUXrayDataset(tmp_path, split="all", on_error="skip")
    assert len(skipping) == len(phantoms) and len(skipping.policy.skipped) == 1
    assert [r["id"] for r in skipping.records].count(filename.split(".")[0]) == 1


def test_iu_duplicate_label_csv_row_names_both_lines(tmp_path, phantoms):
    written = write_iu_xray(tmp_path, phantoms)
    copy_line = append_copy(written["labels_csv"], 3)
    one_error(lambda: IUXrayDataset(tmp_path, split="all", labels_csv=written["labels_csv"]),
              f"chexbert_labels.csv: uid 2 on lines 3 and {copy_line}", "expected one row per uid")
    skipping = IUXrayDataset(tmp_path, split="all", labels_csv=written["labels_csv"], on_error="skip")
    assert len(skipping) == len(phantoms) and len(skipping.policy.skipped) == 1


def test_r2gen_duplicate_id(tmp_path, phantoms):
    written = write_r2gen_annotation(tmp_path, phantoms)
    annotation = json.loads(written["annotation"].read_text())
    annotation["test"].append(annotation["train"][0])
    written["annotation"].write_text(json.dumps(annotation))
    study = annotation["train"][0]["id"]
    one_error(lambda: IUXrayR2GenDataset(written["annotation"], written["image_root"], split="all"),
              f"annotation.json: id {study} at ['train'][0] and ['test'][", "expected one entry per id")
    skipping = IUXrayR2GenDataset(written["annotation"], written["image_root"], split="all", on_error="skip")
    assert len(skipping) == len(phantoms) and len(skipping.policy.skipped) == 1


def test_vindr_repeated_reader_row_does_not_flip_the_majority(tmp_path, phantoms):
    written = write_vindr(tmp_path, phantoms)
    reference = VinDrDataset(tmp_path, split="train", aggregation="majority")
    labels_csv = tmp_path / "image_labels_train.csv"
    # image 1 has the spurious 'Other lesion' of reader R1 alone (1 of 3: negative by majority); a second
    # R1 row would make it 2 of 4
    spurious = written["spurious"][0]
    line = next(n for n, raw in enumerate(_lines(labels_csv), start=1) if raw.startswith(f"{spurious},R1,".encode()))
    copy_line = append_copy(labels_csv, line)
    one_error(lambda: VinDrDataset(tmp_path, split="train", aggregation="majority"),
              f"image_labels_train.csv: image_id {spurious} rad_id R1 on lines {line} and {copy_line}",
              "expected one row per image_id and rad_id")
    skipping = VinDrDataset(tmp_path, split="train", aggregation="majority", on_error="skip")
    assert len(skipping.policy.skipped) == 1
    for kept, clean in zip(skipping.records, reference.records):
        np.testing.assert_array_equal(kept["labels"], clean["labels"])


def test_vindr_duplicate_image_size_row(tmp_path, phantoms):
    written = write_vindr(tmp_path, phantoms)
    copy_line = append_copy(tmp_path / "image_sizes.csv", 2)
    one_error(lambda: VinDrDataset(tmp_path, split="train"),
              f"image_sizes.csv: image_id {written['image_ids'][0]} on lines 2 and {copy_line}")
    assert len(VinDrDataset(tmp_path, split="train", on_error="skip").policy.skipped) == 1


def test_nih_duplicate_image_index(tmp_path, phantoms):
    written = write_nih(tmp_path, phantoms)
    copy_line = append_copy(tmp_path / "Data_Entry_2017.csv", 3)
    one_error(lambda: NihDataset(tmp_path, split="all"),
              f"Data_Entry_2017.csv: Image Index {written['images'][1]} on lines 3 and {copy_line}",
              "expected one row per Image Index")
    skipping = NihDataset(tmp_path, split="all", on_error="skip")
    assert len(skipping) == len(phantoms) and len(skipping.policy.skipped) == 1
    assert [r["where"].endswith("line 3") for r in skipping.records].count(True) == 1


@pytest.mark.parametrize("kind,key,line", [("split", "dicom_id", 2), ("metadata", "dicom_id", 2),
                                           ("chexpert", "study_id", 2)])
def test_mimic_duplicate_rows(tmp_path, phantoms, kind, key, line):
    write_mimic_cxr(tmp_path, phantoms, gz=False)
    path = tmp_path / f"mimic-cxr-2.0.0-{kind}.csv"
    copy_line = append_copy(path, line)
    one_error(lambda: MimicCxrDataset(tmp_path, split="all"),
              f"{path.name}: {key} ", f"on lines {line} and {copy_line}", f"expected one row per {key}")
    skipping = MimicCxrDataset(tmp_path, split="all", on_error="skip")
    assert len(skipping.policy.skipped) == 1
    assert len({r["id"] for r in skipping.records}) == len(skipping) == len(MimicCxrDataset(tmp_path, split="all",
                                                                                            on_error="skip"))


def test_mimic_master_duplicate_dicom_line(tmp_path, phantoms):
    written = write_master_jsonl(tmp_path, phantoms)
    copy_line = append_copy(written["path"], 2)
    one_error(lambda: MimicMasterDataset(written["path"], written["image_root"], split="all"),
              f"mimic_master_official_split.jsonl: dicom_id {written['dicom_ids'][1]} on lines 2 and {copy_line}",
              "expected one line per dicom_id")
    skipping = MimicMasterDataset(written["path"], written["image_root"], split="all", on_error="skip")
    assert [r["id"] for r in skipping.records] == written["dicom_ids"] and len(skipping.policy.skipped) == 1


@pytest.fixture
def video_folder(tmp_path):
    from data.phantom_video import PhantomVideoDataset, write_video_folder
    datasets = {"train": PhantomVideoDataset(3, split="train", num_frames=4, image_size=16),
                "test": PhantomVideoDataset(2, split="test", num_frames=4, image_size=16)}
    write_video_folder(datasets, tmp_path)
    return tmp_path, datasets["train"].class_names


def test_video_duplicate_id(video_folder):
    root, names = video_folder
    csv_path = root / "videos.csv"
    vid = _lines(csv_path)[1].split(b",")[0].decode()
    copy_line = append_copy(csv_path, 2)
    one_error(lambda: VideoFolderDataset(root, "train", names, num_frames=4),
              f"videos.csv: id {vid} on lines 2 and {copy_line}", "expected one row per id")
    skipping = VideoFolderDataset(root, "train", names, num_frames=4, on_error="skip")
    assert len(skipping) == 3 and len(skipping.policy.skipped) == 1


# ----------------------------------------------------------------------------------------------------------
# defect 5: bytes that are not UTF-8, truncated images, short rows

@pytest.mark.parametrize("name", ["indiana_reports.csv", "indiana_projections.csv"])
def test_iu_csv_not_utf8_names_file_and_line(tmp_path, phantoms, name):
    write_iu_xray(tmp_path, phantoms, labels_csv=False)
    insert_bad_byte(tmp_path / name, 3)
    one_error(lambda: IUXrayDataset(tmp_path, split="all"), *not_utf8(name, 3))
    skipping = IUXrayDataset(tmp_path, split="all", frontal_only=False, on_error="skip")
    assert f"{name}: not UTF-8 at line 3 (byte 0xe9)" in skipping.policy.skipped[0]
    # reports line 3 is uid 2 (its one frontal image is then left out too: "uid 2 has no row"),
    # projections line 3 is one image
    assert len(skipping) == len(phantoms) + len(phantoms) // 2 - 1
    assert len(skipping.policy.skipped) == (2 if name == "indiana_reports.csv" else 1)


def test_csv_header_not_utf8_stops_even_with_skip(tmp_path, phantoms):
    write_iu_xray(tmp_path, phantoms, labels_csv=False)
    insert_bad_byte(tmp_path / "indiana_reports.csv", 1)
    for on_error in ("stop", "skip"):
        one_error(lambda on_error=on_error: IUXrayDataset(tmp_path, split="all", on_error=on_error),
                  *not_utf8("indiana_reports.csv", 1), "header")


def test_r2gen_annotation_not_utf8(tmp_path, phantoms):
    written = write_r2gen_annotation(tmp_path, phantoms)
    text = json.dumps(json.loads(written["annotation"].read_text()), indent=1).encode()
    written["annotation"].write_bytes(text.replace(b'"report": "', b'"report": "' + BAD_BYTE, 1))
    line = text[:text.index(b'"report": "')].count(b"\n") + 1
    one_error(lambda: IUXrayR2GenDataset(written["annotation"], written["image_root"], split="all"),
              *not_utf8("annotation.json", line))


def test_vindr_csv_not_utf8(tmp_path, phantoms):
    write_vindr(tmp_path, phantoms)
    insert_bad_byte(tmp_path / "image_labels_train.csv", 4)
    one_error(lambda: VinDrDataset(tmp_path, split="train"), *not_utf8("image_labels_train.csv", 4))
    assert len(VinDrDataset(tmp_path, split="train", on_error="skip").policy.skipped) == 1


def test_nih_csv_and_list_not_utf8(tmp_path, phantoms):
    write_nih(tmp_path, phantoms)
    insert_bad_byte(tmp_path / "Data_Entry_2017.csv", 2)
    one_error(lambda: NihDataset(tmp_path, split="all"), *not_utf8("Data_Entry_2017.csv", 2))
    skipping = NihDataset(tmp_path, split="all", on_error="skip")
    assert len(skipping) == len(phantoms) - 1 and "line 2 (byte 0xe9)" in skipping.policy.skipped[0]
    write_nih(tmp_path, phantoms)
    insert_bad_byte(tmp_path / "train_val_list.txt", 2, after=b"_")
    one_error(lambda: NihDataset(tmp_path, split="train", split_mode="official"), *not_utf8("train_val_list.txt", 2))


def test_mimic_gz_csv_not_utf8(tmp_path, phantoms):
    import gzip
    write_mimic_cxr(tmp_path, phantoms)
    path = tmp_path / "mimic-cxr-2.0.0-split.csv.gz"
    lines = gzip.decompress(path.read_bytes()).splitlines(keepends=True)
    lines[2] = lines[2].replace(b",", b"," + BAD_BYTE, 1)
    path.write_bytes(gzip.compress(b"".join(lines)))
    one_error(lambda: MimicCxrDataset(tmp_path, split="all"), *not_utf8("mimic-cxr-2.0.0-split.csv.gz", 3))
    assert len(MimicCxrDataset(tmp_path, split="all", on_error="skip").policy.skipped) == 1


def test_mimic_report_txt_not_utf8(tmp_path, phantoms):
    write_mimic_cxr(tmp_path, phantoms, gz=False)
    dataset = MimicCxrDataset(tmp_path, split="all")
    report = dataset.records[0]["report_path"]
    insert_bad_byte(report, 6, after=b" ")  # the findings line
    one_error(lambda: dataset[0], report.name, "not UTF-8 at line 6 (byte 0xe9)")
    skipping = MimicCxrDataset(tmp_path, split="all", on_error="skip")
    assert skipping[0] is None and skipping[1]["id"] == skipping.records[1]["id"]   # dropped, not replaced
    assert len(skipping.policy.skipped) == 1
    # the master-JSONL builder reads the same report: one DataError naming it
    one_error(lambda: build_master_jsonl(tmp_path, out=tmp_path / "master.jsonl"),
              report.name, "not UTF-8 at line 6")


def test_mimic_master_jsonl_not_utf8(tmp_path, phantoms):
    written = write_master_jsonl(tmp_path, phantoms)
    insert_bad_byte(written["path"], 3, after=b'"report": "')
    one_error(lambda: MimicMasterDataset(written["path"], written["image_root"], split="all"),
              *not_utf8("mimic_master_official_split.jsonl", 3))
    skipping = MimicMasterDataset(written["path"], written["image_root"], split="all", on_error="skip")
    assert len(skipping) == len(phantoms) - 1 and len(skipping.policy.skipped) == 1


def test_videos_csv_not_utf8(video_folder):
    root, names = video_folder
    insert_bad_byte(root / "videos.csv", 3)
    one_error(lambda: VideoFolderDataset(root, "train", names, num_frames=4), *not_utf8("videos.csv", 3))


@pytest.mark.parametrize("edit,found", [(lambda raw: raw.rsplit(b",", 1)[0] + b"\r\n", 3),
                                        (lambda raw: raw.rstrip() + b",extra\r\n", 5)])
def test_videos_csv_short_or_long_row(video_folder, edit, found):
    root, names = video_folder
    path = root / "videos.csv"
    lines = _lines(path)
    lines[2] = edit(lines[2])
    path.write_bytes(b"".join(lines))
    one_error(lambda: VideoFolderDataset(root, "train", names, num_frames=4),
              "videos.csv line 3: expected 4 columns (id, label, subject, split)", f"found {found}")


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_truncated_png_names_the_path(tmp_path, phantoms):
    """The record path (data/io.py load_image): already a DataError naming the file, kept so."""
    written = write_nih(tmp_path, phantoms)
    image = tmp_path / "images" / written["images"][0]
    _truncate(image)
    dataset = NihDataset(tmp_path, split="all")
    one_error(lambda: dataset[0], f"cannot read image {image}", "truncated")


def test_truncated_video_frame_and_npy_name_the_path(video_folder):
    root, names = video_folder
    dataset = VideoFolderDataset(root, "train", names, num_frames=4)
    vid = dataset.items[0][0]
    frame = sorted((root / "videos" / vid).iterdir())[1]
    _truncate(frame)
    one_error(lambda: dataset[0], f"cannot read image {frame}", "truncated")
    attention = root / "attention" / f"{vid}.npy"
    _truncate(attention)
    one_error(lambda: VideoFolderDataset(root, "train", names, num_frames=4), f"cannot read array {attention}")


def test_clean_files_read_as_before(tmp_path, phantoms):
    """No false alarms: the written phantoms (with non-ASCII UTF-8 in a report) give no skipped item."""
    write_iu_xray(tmp_path, phantoms, labels_csv=False)
    reports = tmp_path / "indiana_reports.csv"
    reports.write_bytes(reports.read_bytes().replace(b"phantom,phantom", "phantôm,phantøm".encode(), 1))
    dataset = IUXrayDataset(tmp_path, split="all", on_error="skip")
    assert len(dataset) == len(phantoms) and not dataset.policy.skipped
    assert isinstance(dataset[0]["image"], torch.Tensor)


# ----------------------------------------------------------------------------------------------------------
# skip that skips: a record that fails while loading is dropped from its batch, never replaced

def test_skip_drops_a_bad_record_from_its_batch_and_reports_it_once(phantoms, tmp_path, capsys):
    from data.loader import epoch_loader
    written = write_nih(tmp_path, phantoms)
    dataset = NihDataset(tmp_path, split="all", on_error="skip")          # no up-front image check
    bad = dataset.records[2]
    bad["image_path"].unlink()
    assert dataset[2] is None and dataset[2] is None                       # the same record, not the next one
    assert len(dataset.policy.skipped) == 1 and str(bad["image_path"]) not in capsys.readouterr().out  # no line
    ids = [i for epoch in range(2) for batch in epoch_loader(dataset, 4, 0, epoch, shuffle=False, drop_last=False)
           for i in batch["id"]]
    expected = [r["id"] for r in dataset.records if r is not bad]
    assert sorted(ids) == sorted(expected * 2) and len(expected) == len(dataset) - 1 == len(written["images"]) - 1
    assert len(dataset.policy.skipped) == 1                                # counted once, not once per epoch
    summaries = capsys.readouterr().out.splitlines()                       # one summary line per epoch
    assert len(summaries) == 2 and all(f"1 of {len(dataset)} records" in line for line in summaries)
    assert [e["image"] for e in json.loads(dataset.skip_list.read_text())] == [str(bad["image_path"])]
    stopping = NihDataset(tmp_path, split="all", on_error="stop")
    with pytest.raises(DataError, match=re.escape(str(bad["image_path"]))):
        stopping[2]
