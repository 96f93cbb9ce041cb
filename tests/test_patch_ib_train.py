"""train_patch_ib.py: staged phases with printed freezing, smoke runs of each variant, exact resume.

Run: python -m pytest -q tests/test_patch_ib_train.py   (CPU, ~30 s)
"""
import json

import pytest
import torch

import train_patch_ib

SMALL = ["data.num_train=16", "data.num_val=8", "data.num_test=8", "train.batch_size=4", "train.eval_interval=2",
         "train.log_interval=1", "phases.global.steps=2", "phases.local.steps=1", "phases.bottleneck.steps=2"]


@pytest.mark.parametrize("variant", ["A", "B", "C", "D", "E"])
def test_smoke_each_variant(tmp_path, variant, capsys):
    train_patch_ib.main(["--out", str(tmp_path), f"model.variant={variant}"] + SMALL)
    out = capsys.readouterr().out
    assert "phase bottleneck" in out and "image_tower" in out
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    bottleneck = [r for r in log if r.get("phase") == "bottleneck"]
    assert bottleneck and all(("sparse" in r) == (variant in "CDE") for r in bottleneck)
    assert all(("local" in r) == (variant != "A") for r in log if r.get("phase") == "local")
    ckpt = torch.load(tmp_path / "last.pt", map_location="cpu", weights_only=False)
    assert ckpt["step"] == 5 and ckpt["phase"] == "bottleneck"


def test_bottleneck_phase_freezes_towers_and_resume_is_exact(tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    train_patch_ib.main(["--out", str(full), "model.variant=E"] + SMALL)
    train_patch_ib.main(["--out", str(part), "model.variant=E", "train.stop_after_steps=3"] + SMALL)
    mid = torch.load(part / "last.pt", map_location="cpu", weights_only=False)
    assert mid["step"] == 3 and mid["phase"] == "local"
    train_patch_ib.main(["--out", str(part), "--resume", str(part / "last.pt"), "model.variant=E"] + SMALL)
    a = torch.load(full / "last.pt", map_location="cpu", weights_only=False)["model"]
    b = torch.load(part / "last.pt", map_location="cpu", weights_only=False)["model"]
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    after_local = mid["model"]
    # the bottleneck phase (steps 3-5) trains only heads: the towers equal their state after phase local
    assert all(torch.equal(a[k], after_local[k]) for k in a if k.startswith(("image_tower", "text_tower")))
    assert not torch.equal(a["mask_head.bias"], after_local["mask_head.bias"])
