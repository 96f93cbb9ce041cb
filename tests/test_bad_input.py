"""Every train script's command line against bad input, as a user meets it: one line on stderr naming the key,
file or folder, exit status 2, no traceback, and the run folder given as --out left exactly as it was.
Run: python -m pytest -q tests/test_bad_input.py      (11 subprocesses, ~50 s on 2 cores)"""
import subprocess
import sys

import pytest

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
