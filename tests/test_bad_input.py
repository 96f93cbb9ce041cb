"""Every train script's command line against bad input, as a user meets it: one line on stderr naming the key,
file or folder, exit status 2, no traceback, and the run folder given as --out left exactly as it was. Bad data
(a missing test image, a repeated box row) and the resume of a finished run into another folder stop before
anything is written (tests/test_run_policy.py has the same for every script, in one process).
Run: python -m pytest -q tests/test_bad_input.py      (14 subprocesses, ~65 s on 2 cores)"""
import subprocess
import sys

import pytest
import torch

import training

# per script: a key that must be positive, as the script spells it
POSITIVE_KEY = {"train_chexquery.py": "phases.phase1.batch_size", "train_concept_cam.py": "train.batch_size",
                "train_patch_ib.py": "train.batch_size", "train_video_clip.py": "train.batch_size",
                "train_wsrpn_vl.py": "train.batch_size"}
CASES = {
    "zero": (lambda key, run: [f"{key}=0"], lambda key, run: f"{key} is 0; expected a number > 0"),
    "used_out": (lambda key, run: [], lambda key, run: f"--out {run} already holds a run (last.pt, log.jsonl)"),
}


def snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("script", sorted(POSITIVE_KEY))
def test_one_line_exit_2_and_the_run_folder_untouched(script, case, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_bytes(b"a finished run's checkpoint")
    (run / "log.jsonl").write_text('{"step": 1}\n')
    before = snapshot(run)
    make_args, expected = CASES[case]
    key = POSITIVE_KEY[script]
    result = subprocess.run([sys.executable, script, "--out", str(run), *make_args(key, run)], capture_output=True,
                            text=True, cwd=training.REPO_ROOT, timeout=300)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
    assert lines[0].startswith(f"{script}: ") and expected(key, run) in lines[0]
    assert snapshot(run) == before


def test_a_missing_resume_checkpoint_is_named_before_anything_is_written(tmp_path):
    result = subprocess.run([sys.executable, "train_wsrpn_vl.py", "--out", str(tmp_path / "new"), "--resume",
                             str(tmp_path / "gone.pt")], capture_output=True, text=True, cwd=training.REPO_ROOT)
    assert result.returncode == 2 and not (tmp_path / "new").exists()
    assert result.stderr.strip() == f"train_wsrpn_vl.py: --resume {tmp_path / 'gone.pt'}: no such checkpoint file " \
                                    f"(expected RUN/last.pt or RUN/best.pt)"


@pytest.mark.parametrize("override, message", [
    ("train.batch_size=null", "train.batch_size is None; expected a number > 0"),
    ("train.lr=-0.001", "train.lr is -0.001; expected a number > 0"),
    ("train.eval_interval=-1", "train.eval_interval is -1; expected a number >= 0"),
    ("data.image_size=0", "data.image_size is 0; expected a number > 0")])
def test_null_zero_or_negative_values_are_named_at_load(override, message):
    with pytest.raises(training.ConfigError, match=message.replace("(", r"\(")):
        training.load_config(training.default_config_path("video_clip"), [override])


# ----------------------------------------------------------------------------------------------------------
# bad data and a finished run: (script, arguments, text of the one line) made in a temporary folder

def _phantoms(n):
    from data.phantom import ChestPhantomDataset
    dataset = ChestPhantomDataset(n, image_size=64, seed=2)
    return [dataset[i] for i in range(n)]


def missing_test_image(tmp_path):
    from data.mimic_cxr import write_master_jsonl
    written = write_master_jsonl(tmp_path / "mimic", _phantoms(5), studies_per_subject=1)   # the 5th is test
    image = next((tmp_path / "mimic").rglob(f"{written['dicom_ids'][4]}.jpg"))
    image.unlink()
    return "train_patch_ib.py", ["data.source=mimic_master", f"data.master_jsonl={written['path']}",
                                 f"data.image_root={tmp_path / 'mimic'}"], f"image not found: {image}"


def repeated_box_row(tmp_path):
    from data.labels import VINDR_CONCEPTS
    from data.vindr import write_vindr
    phantoms = _phantoms(8)
    write_vindr(tmp_path / "vindr", phantoms[:6])
    write_vindr(tmp_path / "vindr", phantoms[6:], split="test")
    path = tmp_path / "vindr" / "annotations_train.csv"
    lines = path.read_text().splitlines(keepends=True)
    line = next(n for n, text in enumerate(lines, start=1) if any(f",{name}," in text for name in VINDR_CONCEPTS))
    path.write_text("".join(lines) + lines[line - 1])
    return "train_concept_cam.py", ["--stage", "1", "data.dataset=vindr", f"data.root={tmp_path / 'vindr'}"], \
        f"{path}: box of image_id {lines[line - 1].split(',')[0]} rad_id R"


def finished_elsewhere(tmp_path):
    finished = tmp_path / "finished"
    finished.mkdir()
    torch.save({"step": 3, "phase": "train"}, finished / "last.pt")      # what resume_rule reads of a checkpoint
    return "train_video_clip.py", ["--resume", str(finished / "last.pt"), "train.steps=3", "data.num_train=8",
                                   "data.num_val=4", "data.num_test=4"], \
        f"--resume {finished / 'last.pt'}: that run is finished (step 3 of 3), nothing is left to train into --out"


@pytest.mark.parametrize("make", [missing_test_image, repeated_box_row, finished_elsewhere],
                         ids=lambda make: make.__name__)
def test_bad_data_and_a_finished_run_stop_before_anything_is_written(make, tmp_path):
    script, args, expected = make(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    result = subprocess.run([sys.executable, script, "--out", str(run), *args], capture_output=True, text=True,
                            cwd=training.REPO_ROOT, timeout=300)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
    assert lines[0].startswith(f"{script}: ") and expected in lines[0], lines[0]
    assert list(run.iterdir()) == []
