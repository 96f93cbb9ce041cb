"""Video phantoms and the real video folder reader (data/phantom_video.py, data/video.py).
Run: python -m pytest -q tests/test_video_clip_data.py
"""
import csv
import shutil

import numpy as np
import pytest
import torch

from data.phantom_video import PhantomVideoDataset, make_video_phantom
from data.sample import DataError
from data.video import VideoFolderDataset, normalize_attention, subject_splits


def _gaze_on_evidence(informativeness, n=60):
    shares = []
    for i in range(n):
        p = make_video_phantom(5, i, gaze_informativeness=informativeness)
        shares.append((p["attn_map"] * p["evidence_mask"]).sum() / p["attn_map"].sum())
    return float(np.mean(shares)), float(np.mean([make_video_phantom(5, i)["evidence_mask"].mean() for i in range(n)]))


def test_phantom_shapes_determinism_and_classes():
    ds = PhantomVideoDataset(6, split="val", num_frames=6, image_size=24, num_classes=4)
    s = ds[3]
    assert s["video"].shape == (3, 6, 24, 24) and s["attn_map"].shape == (1, 6, 24, 24)
    assert s["video"].min() >= 0 and s["video"].max() <= 1
    assert torch.allclose(s["attn_map"].amax(dim=(2, 3)), torch.ones(1, 6))      # frame_max normalized
    again = PhantomVideoDataset(6, split="val", num_frames=6, image_size=24, num_classes=4)[3]
    assert torch.equal(s["video"], again["video"]) and torch.equal(s["attn_map"], again["attn_map"])
    labels = [int(PhantomVideoDataset(80, num_classes=3)[i]["label"]) for i in range(80)]
    assert set(labels) == {0, 1, 2}
    train_subjects = {PhantomVideoDataset(4, split="train")[i]["subject"] for i in range(4)}
    assert not train_subjects & {s["subject"]}


def test_gaze_informativeness_knob_moves_gaze_onto_the_evidence():
    informative, area = _gaze_on_evidence(0.9)
    uninformative, _ = _gaze_on_evidence(0.0)
    # the evidence covers ~4% of the frame; informative gaze puts several times that share of mass on it,
    # uninformative gaze about as much as on any one of the 3 objects
    assert informative > 3 * uninformative > 3 * area
    assert informative > 0.3


def _write(tmp_path, video_format="frames", attn_format="npy"):
    from data.phantom_video import write_video_folder
    datasets = {"train": PhantomVideoDataset(4, split="train", num_frames=5, image_size=16),
                "test": PhantomVideoDataset(3, split="test", num_frames=5, image_size=16)}
    write_video_folder(datasets, tmp_path, video_format=video_format, attn_format=attn_format)
    return datasets


@pytest.mark.parametrize("video_format,attn_format", [("frames", "npy"), ("npy", "png")])
def test_reader_reads_the_phantom_writer_back(tmp_path, video_format, attn_format):
    phantoms = _write(tmp_path, video_format, attn_format)
    ds = VideoFolderDataset(tmp_path, "test", phantoms["test"].class_names, num_frames=5, image_size=16)
    assert len(ds) == 3
    for i in range(3):
        got, ref = ds[i], phantoms["test"][i]
        assert got["id"] == ref["id"] and got["subject"] == ref["subject"] and got["label"] == ref["label"]
        assert (got["video"] - ref["video"]).abs().max() <= 0.5 / 255 + 1e-6
        tol = 1e-6 if attn_format == "npy" else 2 / 255
        assert (got["attn_map"] - ref["attn_map"]).abs().max() <= tol
    resized = VideoFolderDataset(tmp_path, "train", phantoms["train"].class_names, num_frames=3, image_size=8)[0]
    assert resized["video"].shape == (3, 3, 8, 8) and resized["attn_map"].shape == (1, 3, 8, 8)


def _rewrite_csv(tmp_path, edit):
    path = tmp_path / "videos.csv"
    rows = list(csv.reader(open(path)))
    edit(rows)
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)


def test_reader_errors_name_the_problem(tmp_path):
    phantoms = _write(tmp_path)
    names = phantoms["train"].class_names
    first = phantoms["test"][0]["id"]
    (tmp_path / "attention" / f"{first}.npy").rename(tmp_path / "held.npy")
    with pytest.raises(DataError, match=f"missing attention map.*{first}"):
        VideoFolderDataset(tmp_path, "test", names, num_frames=5)
    np.save(tmp_path / "attention" / f"{first}.npy", np.load(tmp_path / "held.npy")[:4])
    with pytest.raises(DataError, match="frame-count mismatch.*5 frames.*has 4"):
        VideoFolderDataset(tmp_path, "test", names, num_frames=5)
    shutil.move(tmp_path / "held.npy", tmp_path / "attention" / f"{first}.npy")
    _rewrite_csv(tmp_path, lambda rows: rows[2].__setitem__(1, "tumour"))
    with pytest.raises(DataError, match=r"row 3 .*unknown label 'tumour'"):
        VideoFolderDataset(tmp_path, "test", names, num_frames=5)


def test_reader_split_rules_and_unreadable_mp4(tmp_path):
    phantoms = _write(tmp_path)
    names = phantoms["train"].class_names
    _rewrite_csv(tmp_path, lambda rows: rows[1].__setitem__(2, rows[-1][2]))   # a train video, test subject
    with pytest.raises(DataError, match="splits must be by subject"):
        VideoFolderDataset(tmp_path, "test", names, num_frames=5)
    _write(tmp_path)
    vid = phantoms["test"][1]["id"]
    shutil.rmtree(tmp_path / "videos" / vid)
    (tmp_path / "videos" / f"{vid}.mp4").write_bytes(b"\x00")
    with pytest.raises(DataError, match=f"(cannot open video|needs PyAV).*{vid}.mp4"):
        VideoFolderDataset(tmp_path, "test", names, num_frames=5)
    # empty split column: assigned by subject
    assignment = subject_splits([f"s{i}" for i in range(200)])
    assert set(assignment.values()) == {"train", "val", "test"}
    assert 0.55 < list(assignment.values()).count("train") / 200 < 0.85


def test_normalize_attention_modes():
    maps = torch.rand(2, 3, 4, 4) * 5
    assert torch.allclose(normalize_attention(maps, "frame_sum").sum(dim=(0, 2, 3)), torch.ones(3))
    assert torch.allclose(normalize_attention(maps, "frame_max").amax(dim=(0, 2, 3)), torch.ones(3))
    with pytest.raises(ValueError, match="attn_normalize"):
        normalize_attention(maps, "softmax")
