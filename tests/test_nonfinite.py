"""A forced NaN gradient in each of the five scripts: the run stops at the step it happens in, with the step
number log.jsonl would give it, before the optimizer step, and no checkpoint is written (a finite loss with a
non-finite gradient used to reach optimizer.step and then last.pt). Also the run folder's formats: one log line
per step after a resume, no temporaries left by a killed write, NaN as null, file modes from the umask.
Run: python -m pytest -q tests/test_nonfinite.py"""
import json
import os
import shutil
import stat

import pytest
import torch

import train_chexquery
import train_concept_cam
import train_patch_ib
import train_video_clip
import train_wsrpn_vl
import training

RUNS = {
    "video_clip": (train_video_clip, ["data.num_train=32", "data.num_val=16", "data.num_test=16", "train.batch_size=8",
                                      "eval.visualize=0", "train.steps=3", "train.eval_interval=1"]),
    "chexquery": (train_chexquery, ["--phase", "1", "data.num_train=32", "data.num_val=8", "data.num_test=8",
                                    "phases.phase1.batch_size=16", "phases.phase1.effective_batch_size=16",
                                    "eval.final_test=false", "train.eval_interval=1"]),
    "concept_cam": (train_concept_cam, ["--stage", "1", "model.image_size=64", "data.num_train=32", "data.num_val=16",
                                        "data.num_test=16", "train.batch_size=16", "stage1.epochs=1",
                                        "train.eval_interval=1", "eval.visualize=0"]),
    "patch_ib": (train_patch_ib, ["data.num_train=16", "data.num_val=8", "data.num_test=8", "train.batch_size=4",
                                  "train.eval_interval=1", "phases.global.steps=2", "phases.local.steps=1",
                                  "phases.bottleneck.steps=2", "eval.visualize=0"]),
    "wsrpn_vl": (train_wsrpn_vl, ["data.train_samples=24", "data.val_samples=6", "data.test_samples=6",
                                  "data.image_size=64", "train.batch_size=4", "train.epochs=1", "loss.warmup_epochs=1",
                                  "train.eval_interval=1", "eval.visualize=0", "model.num_roi_tokens=4",
                                  "model.d_emb=32", "model.d_hidden=64"]),
}


@pytest.mark.parametrize("system", sorted(RUNS))
def test_nan_gradient_stops_before_the_step_and_saves_nothing(system, tmp_path, monkeypatch):
    script, argv = RUNS[system]
    build = script.build_model

    def poisoned(*args, **kwargs):
        model = build(*args, **kwargs)
        for p in (p for p in model.parameters() if p.requires_grad):   # a finite loss, NaN gradients
            p.register_hook(lambda grad: torch.full_like(grad, float("nan")))
        return model
    monkeypatch.setattr(script, "build_model", poisoned)
    with pytest.raises(training.NonFiniteLoss, match=r"non-finite gradient norm \(nan\) at step 1:"):
        script.main(["--out", str(tmp_path / "run"), *argv])
    assert not list((tmp_path / "run").rglob("*.pt")) and not list((tmp_path / "run").rglob("*.tmp"))


def test_resume_leaves_one_log_line_per_step_and_the_litter_goes(tmp_path):
    """A run resumed from an earlier last.pt logs its steps again: the lines past the checkpoint's step are
    dropped first (log.jsonl then reads as the uninterrupted run's); a killed write's temporary is removed at
    the start; NaN is written as null."""
    script, argv = RUNS["video_clip"]
    argv = [a for a in argv if not a.startswith(("train.steps", "train.eval_interval"))] + [
        "train.steps=4", "train.eval_interval=2", "train.log_interval=1"]

    def steps(run):
        return [r["step"] for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if "event" not in r]
    script.main(["--out", str(tmp_path / "full"), *argv])
    cut = tmp_path / "cut"
    script.main(["--out", str(cut), *argv, "train.stop_after_steps=2"])
    shutil.copy(cut / "last.pt", cut / "step2.pt")
    script.main(["--out", str(cut), "--resume", str(cut / "last.pt"), *argv])
    (cut / "last.pt.k1ll3d.tmp").write_bytes(b"half a checkpoint")
    script.main(["--out", str(cut), "--resume", str(cut / "step2.pt"), *argv])   # steps 3, 4 again
    assert steps(cut) == steps(tmp_path / "full") and not list(cut.glob("*.tmp"))
    events = [r for r in map(json.loads, (cut / "log.jsonl").read_text().splitlines()) if "event" in r]
    assert [(e["step"], e["dropped_lines"]) for e in events] == [(2, 0), (2, len(steps(cut)) - steps(cut).index(3))]


def test_log_writes_nan_as_null_and_files_follow_the_umask(tmp_path):
    logger = training.RunLogger(tmp_path)
    logger.log(echo=False, step=1, loss=float("nan"), values=[1.0, float("inf")])
    assert json.loads((tmp_path / "log.jsonl").read_text(), parse_constant=pytest.fail) == {
        "step": 1, "loss": None, "values": [1.0, None]}
    old = os.umask(0o022)
    try:
        training.atomic_write_bytes(tmp_path / "metrics.json", b"{}")
        os.umask(0o077)
        training.atomic_write_bytes(tmp_path / "private.json", b"{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "metrics.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "private.json").stat().st_mode) == 0o600


def test_a_used_run_folder_is_refused_unless_resumed_or_overwritten(tmp_path, capsys):
    script, argv = RUNS["video_clip"]
    argv = [a for a in argv if not a.startswith(("train.steps", "train.eval_interval"))] + [
        "train.steps=2", "train.eval_interval=2"]
    run = tmp_path / "run"
    script.main(["--out", str(run), *argv])
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    with pytest.raises(training.ConfigError, match=r"already holds a run .*--resume .*--overwrite"):
        script.main(["--out", str(run), *argv])
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == before          # nothing touched
    script.main(["--out", str(run), "--overwrite", *argv])
    lines = (run / "log.jsonl").read_text().splitlines()
    assert "--overwrite: deleted" in capsys.readouterr().out and sum('"val/' in line for line in lines) == 1
    # a folder another live process writes into is refused; a dead process's lock is taken over
    other = tmp_path / "other"
    other.mkdir()
    (other / ".lock").write_text("1\n")                                  # pid 1 is alive
    with pytest.raises(training.ConfigError, match=r"another run \(pid 1\) is writing into it"):
        training.make_out_dir(str(other), "video_clip", "train")
    (other / ".lock").write_text("999999999\n")
    assert training.make_out_dir(str(other), "video_clip", "train") == other
    assert (other / ".lock").read_text().strip() == str(os.getpid())


def test_resume_from_another_systems_checkpoint_is_one_message(tmp_path, capsys):
    video, argv = RUNS["video_clip"]
    video_argv = [a for a in argv if not a.startswith(("train.steps", "train.eval_interval"))] + ["train.steps=1"]
    video.main(["--out", str(tmp_path / "video"), *video_argv])
    script, patch_argv = RUNS["patch_ib"]
    with pytest.raises(training.ConfigError, match=r"is a checkpoint of system 'video_clip', not 'patch_ib'$"):
        script.main(["--out", str(tmp_path / "patch"), "--resume", str(tmp_path / "video" / "last.pt"), *patch_argv])
    model = train_patch_ib.build_model(training.load_config(training.default_config_path("patch_ib"), patch_argv[:4]))
    checkpoint = torch.load(tmp_path / "video" / "last.pt", weights_only=False)
    with pytest.raises(training.ConfigError) as error:
        training.load_weights(model, checkpoint, "video/last.pt")
    message = str(error.value)
    assert message.startswith("video/last.pt: a checkpoint of system 'video_clip' whose weights do not fit")
    assert "missing" in message and "unexpected" in message and len(message) < 600
    # a changed config outside train.* / eval.* is named on one line when resuming
    video.main(["--out", str(tmp_path / "video"), "--resume", str(tmp_path / "video" / "last.pt"),
                *video_argv[:-1], "train.steps=2", "train.batch_size=4", "data.num_val=8"])
    assert "with a changed config: data.num_val 16 -> 8" in capsys.readouterr().out
