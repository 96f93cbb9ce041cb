"""A forced NaN gradient in each of the five scripts: the run stops at the step it happens in, with the step
number log.jsonl would give it, before the optimizer step, and no checkpoint is written (a finite loss with a
non-finite gradient used to reach optimizer.step and then last.pt).
Run: python -m pytest -q tests/test_nonfinite.py"""
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
