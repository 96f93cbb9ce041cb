"""Nothing lost, nothing silently wrong (issue 26) through the train scripts:
- data.on_error reaches Patch-IB (MIMIC master JSONL), Concept CAM (VinDr, boxes outside the image too) and
  VideoAttentionCLIP (video folder): with skip only the good items load, each once per epoch, with one summary
  line per pass; with stop one DataError names the file.
- the test split's files are read before training: a bad test image stops every script at the start (nothing
  written into --out), or under skip is reported there.
- --resume into another --out, and of a finished run (training.resume_rule).
- exact duplicate box rows (NIH BBox_List_2017.csv, VinDr annotations_*.csv): one error naming both lines.
- metrics.json is strict JSON (NaN / inf -> null), and the comparison tables read and write it so.

Run: python -m pytest -q tests/test_run_policy.py
"""
import json
import math
import re
import shutil

import numpy as np
import pytest
import torch

import training
from data.loader import epoch_loader
from data.sample import DataError

VIDEO_SMALL = ["data.num_train=16", "data.num_val=8", "data.num_test=8", "train.batch_size=8", "eval.visualize=0",
               "train.steps=4", "train.eval_interval=2", "train.log_interval=1"]
PATCH_SMALL = ["data.num_train=16", "data.num_val=8", "data.num_test=8", "train.batch_size=4", "train.eval_interval=2",
               "train.log_interval=1", "phases.global.steps=2", "phases.local.steps=1", "phases.bottleneck.steps=2",
               "eval.visualize=0"]


@pytest.fixture(scope="module")
def phantoms():
    from data.phantom import ChestPhantomDataset
    dataset = ChestPhantomDataset(10, image_size=64, seed=3)
    return [dataset[i] for i in range(len(dataset))]


def truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def files_in(folder):
    return sorted(p.name for p in folder.iterdir() if p.name != ".lock")   # .lock: held until this process exits


def snapshot(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def loaded_ids(dataset, capsys, skipped, batch_size=3):
    """Two passes -> the ids of each; each pass prints exactly one summary line counting `skipped` records. (A batch
    in which every record fails is an error even under skip: batch_size leaves a good record in every batch.)"""
    capsys.readouterr()
    passes = []
    for epoch in range(2):
        passes.append(sorted(i for batch in epoch_loader(dataset, batch_size, 0, epoch, drop_last=False) for i in batch["id"]))
        lines = capsys.readouterr().out.splitlines()
        assert len(lines) == 1 and f"{skipped} of {len(dataset)} records could not be loaded" in lines[0], lines
    return passes


def load_all(dataset):
    for _ in epoch_loader(dataset, 2, 0, 0, shuffle=False, drop_last=False):
        pass


# ----------------------------------------------------------------------------------------------------------
# data.on_error in the three systems that lacked it

def test_patch_ib_mimic_master_skip_and_stop(tmp_path, phantoms, capsys):
    import train_patch_ib
    from data.mimic_cxr import write_master_jsonl
    written = write_master_jsonl(tmp_path, phantoms)
    config = lambda mode: training.load_config(training.default_config_path("patch_ib"), [  # noqa: E731
        "data.source=mimic_master", f"data.master_jsonl={written['path']}", f"data.image_root={tmp_path}",
        "data.image_size=64", f"data.on_error={mode}"])
    dataset = train_patch_ib.build_dataset(config("skip"), "train")
    missing, corrupt = dataset.records[0]["image_path"], dataset.records[1]["image_path"]
    missing.unlink()
    truncate(corrupt)
    good = sorted(r["id"] for r in dataset.records[2:])
    assert loaded_ids(dataset, capsys, 2) == [good, good]
    with pytest.raises(DataError, match=re.escape(f"image not found: {missing}")):
        load_all(train_patch_ib.build_dataset(config("stop"), "train"))


def test_concept_cam_vindr_skip_and_stop_with_a_box_outside_its_image(tmp_path, phantoms, capsys):
    import train_concept_cam
    from data.vindr import write_vindr
    write_vindr(tmp_path, phantoms)
    config = lambda mode: training.load_config(training.default_config_path("concept_cam"), [  # noqa: E731
        "data.dataset=vindr", f"data.root={tmp_path}", "data.val_fraction=0", f"data.on_error={mode}"])
    annotations = tmp_path / "annotations_train.csv"
    clean = annotations.read_bytes()
    lines = clean.decode().splitlines(keepends=True)
    row = next(n for n, line in enumerate(lines) if n and not line.rstrip().endswith(","))   # a row with a box
    cells = lines[row].rstrip("\n").split(",")
    outside = cells[0]                                                      # that box, moved far outside its image
    lines[row] = ",".join(cells[:-2] + ["99999", "99999"]) + "\n"
    annotations.write_text("".join(lines))
    with pytest.raises(DataError, match=rf"annotations_train.csv \(image_id {outside}\): box .* is not inside"):
        train_concept_cam.build_dataset(config("stop"), "train")
    capsys.readouterr()
    dataset = train_concept_cam.build_dataset(config("skip"), "train")
    assert "skipped: " in capsys.readouterr().out and outside not in [r["id"] for r in dataset.records]
    missing, corrupt = dataset.records[0]["image_path"], dataset.records[1]["image_path"]
    missing.unlink()
    truncate(corrupt)
    good = sorted(r["id"] for r in dataset.records[2:])
    assert len(good) == len(phantoms) - 3 and loaded_ids(dataset, capsys, 2) == [good, good]
    annotations.write_bytes(clean)
    with pytest.raises(DataError, match=re.escape(f"image not found: {missing}")):
        load_all(train_concept_cam.build_dataset(config("stop"), "train"))


@pytest.fixture
def video_root(tmp_path):
    from data.phantom_video import PhantomVideoDataset, write_video_folder
    write_video_folder({split: PhantomVideoDataset(n, split=split, num_frames=4, image_size=16)
                        for split, n in (("train", 8), ("val", 4), ("test", 4))}, tmp_path / "videos")
    return tmp_path / "videos"


def video_config(root, mode, *more):
    return training.load_config(training.default_config_path("video_clip"), [
        "data.source=folder", f"data.root={root}", "data.num_frames=4", "data.image_size=16", f"data.on_error={mode}",
        *more])


def test_video_folder_skip_and_stop(video_root, tmp_path, capsys):
    import train_video_clip
    full = train_video_clip.build_dataset(video_config(video_root, "stop"), "train")
    ids = [r["id"] for r in full.records]
    shutil.copytree(video_root / "videos" / ids[0], tmp_path / "kept")
    shutil.rmtree(video_root / "videos" / ids[0])                          # a missing video
    frame = sorted((video_root / "videos" / ids[1]).iterdir())[1]
    truncate(frame)                                                         # a corrupt frame
    capsys.readouterr()
    dataset = train_video_clip.build_dataset(video_config(video_root, "skip"), "train")
    assert f"skipped: {video_root / 'videos.csv'} row" in capsys.readouterr().out and len(dataset) == len(ids) - 1
    assert loaded_ids(dataset, capsys, 1, batch_size=4) == [sorted(ids[2:])] * 2
    with pytest.raises(DataError, match=re.escape(f"(id '{ids[0]}'): no video; looked for videos/{ids[0]}/")):
        train_video_clip.build_dataset(video_config(video_root, "stop"), "train")
    shutil.copytree(tmp_path / "kept", video_root / "videos" / ids[0])
    with pytest.raises(DataError, match=re.escape(f"cannot read image {frame}")):
        load_all(train_video_clip.build_dataset(video_config(video_root, "stop"), "train"))


# ----------------------------------------------------------------------------------------------------------
# the test split is read before training

def test_a_bad_test_video_is_reported_at_the_start_under_skip(video_root, tmp_path, capsys):
    import train_video_clip
    test = train_video_clip.build_dataset(video_config(video_root, "stop"), "test")
    frame = sorted(test.records[0]["video"][1].iterdir())[0]
    truncate(frame)
    with pytest.raises(DataError, match=re.escape(f"cannot read image {frame}")):
        train_video_clip.main(["--out", str(tmp_path / "stop"), *VIDEO_SMALL[4:], "data.source=folder",
                               f"data.root={video_root}", "data.num_frames=4", "data.image_size=16"])
    assert files_in(tmp_path / "stop") == []                                # stopped before anything was written
    capsys.readouterr()
    train_video_clip.main(["--out", str(tmp_path / "skip"), *VIDEO_SMALL[4:], "data.source=folder",
                           f"data.root={video_root}", "data.num_frames=4", "data.image_size=16", "data.on_error=skip",
                           "train.stop_after_steps=1", "train.batch_size=4"])
    out = capsys.readouterr().out
    assert f"skipped: cannot read image {frame}" in out and out.index(str(frame)) < out.index("step 1")


def test_a_missing_test_image_stops_each_image_script_at_the_start(tmp_path, phantoms):
    """CheXQuery (IU X-ray), WSRPN-VL (NIH), Concept CAM (VinDr), Patch-IB (MIMIC master): one DataError naming the
    test image, before the model is built or anything is written into --out."""
    import train_chexquery
    import train_concept_cam
    import train_patch_ib
    import train_wsrpn_vl
    from data.iu_xray import write_iu_xray
    from data.mimic_cxr import write_master_jsonl
    from data.nih import write_nih
    from data.phantom import ChestPhantomDataset
    from data.vindr import write_vindr
    many = ChestPhantomDataset(24, image_size=64, seed=4)
    many = [many[i] for i in range(len(many))]
    write_iu_xray(tmp_path / "iu", many, labels_csv=False)
    write_nih(tmp_path / "nih", many)
    write_vindr(tmp_path / "vindr", phantoms, split="train")
    write_vindr(tmp_path / "vindr", phantoms[:4], split="test")
    master = write_master_jsonl(tmp_path / "mimic", phantoms)
    nih_classes = "data.classes=[Atelectasis, Cardiomegaly, Effusion, Infiltration, Mass, Nodule, Pneumonia, Pneumothorax]"
    runs = [
        (train_chexquery, ["--phase", "1"], ["data.source=iu_xray", f"data.root={tmp_path / 'iu'}", "data.on_error=stop",
                                             "phases.phase1.batch_size=4", "phases.phase1.effective_batch_size=4"]),
        (train_wsrpn_vl, [], ["data.dataset=nih", "data.caption=labels", f"data.root={tmp_path / 'nih'}", nih_classes,
                              "data.image_size=64", "train.batch_size=4"]),
        (train_concept_cam, ["--stage", "1"], ["data.dataset=vindr", f"data.root={tmp_path / 'vindr'}"]),
        (train_patch_ib, [], ["data.source=mimic_master", f"data.master_jsonl={master['path']}",
                              f"data.image_root={tmp_path / 'mimic'}", "data.image_size=64"])]
    for script, flags, overrides in runs:
        name = script.__name__
        cfg = training.load_config(training.default_config_path(name[len("train_"):]), overrides)
        test = script.build_dataset(cfg, "test")
        image = getattr(test, "base", test).records[0]["image_path"]      # WSRPN-VL: the NIH dataset under its view
        image.unlink()
        out = tmp_path / f"run_{name}"
        with pytest.raises(DataError, match=re.escape(f"image not found: {image}")):
            script.main(["--out", str(out), *flags, *overrides])
        assert files_in(out) == [], name


# ----------------------------------------------------------------------------------------------------------
# --resume into another folder, and of a finished run

@pytest.mark.parametrize("system, small, total", [("video_clip", VIDEO_SMALL, 4), ("patch_ib", PATCH_SMALL, 5)])
def test_resume_into_another_folder_and_of_a_finished_run(system, small, total, tmp_path, capsys):
    script = __import__(f"train_{system}")
    first, other, third = tmp_path / "first", tmp_path / "other", tmp_path / "third"
    script.main(["--out", str(first), *small, "train.stop_after_steps=2"])
    kept = snapshot(first)
    capsys.readouterr()
    # another --out continues the run there; it copies nothing, and its final test scores its own best.pt
    metrics = script.main(["--out", str(other), "--resume", str(first / "last.pt"), *small])
    out = capsys.readouterr().out
    assert f"{other} continues that run from step 2 of {total} and copies nothing else from {first}" in out
    assert json.loads((other / "metrics.json").read_text())["checkpoint"] == "best.pt" and metrics
    assert torch.load(other / "best.pt", weights_only=False)["step"] > 2
    assert snapshot(first) == kept
    logged = [json.loads(line)["step"] for line in (other / "log.jsonl").read_text().splitlines()]
    assert min(logged) == 3 and max(logged) == total
    # a finished run with its metrics: one line, nothing changes
    before = snapshot(other)
    assert set(metrics) <= set(script.main(["--out", str(other), "--resume", str(other / "last.pt"), *small]))
    assert capsys.readouterr().out.strip().splitlines()[-1] == (
        f"{other} is finished (step {total} of {total}) and holds its test metrics ({other / 'metrics.json'}): "
        f"nothing to do")
    assert snapshot(other) == before
    # without metrics.json (killed during the final test): only the final test runs
    (other / "metrics.json").unlink()
    script.main(["--out", str(other), "--resume", str(other / "last.pt"), *small])
    assert "without metrics.json: only the final test runs" in capsys.readouterr().out
    assert (other / "metrics.json").is_file() and torch.load(other / "last.pt", weights_only=False)["step"] == total
    # a finished run into yet another folder: one error, nothing written there
    third.mkdir()
    with pytest.raises(training.ConfigError, match=re.escape(f"--resume {other / 'last.pt'}: that run is finished "
                                                             f"(step {total} of {total})")):
        script.main(["--out", str(third), "--resume", str(other / "last.pt"), *small])
    assert files_in(third) == []


# ----------------------------------------------------------------------------------------------------------
# exact duplicate box rows

def repeat_line(path, keep):
    """Append a copy of the first line for which keep(line) holds -> (its line number, the copy's)."""
    lines = path.read_text().splitlines(keepends=True)
    line = next(n for n, text in enumerate(lines, start=1) if n > 1 and keep(text))
    path.write_text("".join(lines) + lines[line - 1])
    return line, len(lines) + 1


def test_nih_repeated_box_row(tmp_path, phantoms):
    from data.nih import NihDataset, write_nih
    write_nih(tmp_path, phantoms)
    reference = NihDataset(tmp_path, split="all")
    line, copy = repeat_line(tmp_path / "BBox_List_2017.csv", lambda text: True)
    image = (tmp_path / "BBox_List_2017.csv").read_text().splitlines()[line - 1].split(",")[0]
    with pytest.raises(DataError, match=rf"BBox_List_2017.csv: box {re.escape(image)} \w+ \[.*\] on lines {line} "
                                        rf"and {copy}; expected each box once"):
        NihDataset(tmp_path, split="all")
    skipping = NihDataset(tmp_path, split="all", on_error="skip")
    assert len(skipping.policy.skipped) == 1
    for kept, clean in zip(skipping.records, reference.records):
        np.testing.assert_array_equal(kept["boxes"], clean["boxes"])


def test_vindr_repeated_box_row_of_one_reader(tmp_path, phantoms):
    from data.labels import VINDR_CONCEPTS
    from data.vindr import VinDrDataset, write_vindr
    write_vindr(tmp_path, phantoms)
    reference = VinDrDataset(tmp_path, split="train")
    path = tmp_path / "annotations_train.csv"
    line, copy = repeat_line(path, lambda text: any(f",{name}," in text for name in VINDR_CONCEPTS))
    image, reader = path.read_text().splitlines()[line - 1].split(",")[:2]
    with pytest.raises(DataError, match=rf"annotations_train.csv: box of image_id {image} rad_id {reader} .* on "
                                        rf"lines {line} and {copy}; expected each box once"):
        VinDrDataset(tmp_path, split="train")
    skipping = VinDrDataset(tmp_path, split="train", on_error="skip")
    assert len(skipping.policy.skipped) == 1
    for kept, clean in zip(skipping.records, reference.records):
        np.testing.assert_array_equal(kept["boxes"], clean["boxes"])
    # the same box from another reader is no repeat
    lines = path.read_text().splitlines(keepends=True)
    lines[-1] = lines[-1].replace(f",{reader},", ",R9,", 1)
    path.write_text("".join(lines))
    assert not VinDrDataset(tmp_path, split="train", on_error="skip").policy.skipped


# ----------------------------------------------------------------------------------------------------------
# strict JSON

def test_metrics_json_never_holds_bare_nan(tmp_path):
    from evals import tables
    path = tmp_path / "metrics.json"
    training.write_metrics(path, {"test/auroc/Hernia": float("nan"), "test/ratio": float("inf"),
                                  "test/tensor": torch.tensor(float("nan")), "test/numpy": np.float32(0.5),
                                  "test/auroc/mean": 0.75}, tmp_path / "best.pt", 7)
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    loaded = json.loads(text, parse_constant=lambda name: pytest.fail(f"bare {name} in metrics.json"))
    assert loaded == {"checkpoint": "best.pt", "checkpoint_step": 7, "test/auroc/Hernia": None, "test/ratio": None,
                      "test/tensor": None, "test/numpy": 0.5, "test/auroc/mean": 0.75}
    values = tables.values_of([loaded, {"test/auroc/Hernia": 0.5}], "test/auroc/Hernia")
    assert math.isnan(values[0]) and values[1] == 0.5
    tables.write_table(tmp_path / "t.md", ["x"], tmp_path / "t.json", {"a": [float("nan"), 1.0]})
    assert json.loads((tmp_path / "t.json").read_text()) == {"a": [None, 1.0]}
