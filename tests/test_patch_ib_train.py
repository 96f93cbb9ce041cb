"""train_patch_ib.py: staged phases with printed freezing, smoke runs of each variant, exact resume,
evaluate.py on a tiny run (metrics, PNGs, user images) and the --table ablation command.

Run: python -m pytest -q tests/test_patch_ib_train.py   (CPU, ~30 s)
"""
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

import evaluate
import train_patch_ib
from data.labels import CHEXPERT_LABELS

SMALL = ["data.num_train=16", "data.num_val=8", "data.num_test=8", "train.batch_size=4", "train.eval_interval=2",
         "train.log_interval=1", "phases.global.steps=2", "phases.local.steps=1", "phases.bottleneck.steps=2",
         "eval.visualize=1"]
MASK_KEYS = {"test/mask/sparsity", "test/mask/box_patch_auroc", "test/mask/energy_in_boxes",
             "test/mask/energy_in_boxes_weights", "test/mask/energy_in_boxes_uniform", "test/masked/t2i/R@1"}


@pytest.mark.parametrize("variant, extra", [("A", []), ("B", []), ("C", []), ("D", ["model.mask_apply=pool"]),
                                            ("E", [])])
def test_smoke_each_variant(tmp_path, variant, extra, capsys):
    train_patch_ib.main(["--out", str(tmp_path), f"model.variant={variant}"] + SMALL + extra)
    out = capsys.readouterr().out
    assert "phase bottleneck" in out and "image_tower" in out
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    bottleneck = [r for r in log if r.get("phase") == "bottleneck"]
    assert bottleneck and all(("sparse" in r) == (variant in "CDE") for r in bottleneck)
    assert all(("local" in r) == (variant != "A") for r in log if r.get("phase") == "local")
    ckpt = torch.load(tmp_path / "last.pt", map_location="cpu", weights_only=False)
    assert ckpt["step"] == 5 and ckpt["phase"] == "bottleneck"
    best = torch.load(tmp_path / "best.pt", map_location="cpu", weights_only=False)
    assert best["phase"] == "bottleneck"               # best.pt is chosen within the last phase
    metrics = json.loads((tmp_path / "metrics.json").read_text())       # the final test evaluation ran
    assert "test/t2i/R@1" in metrics
    assert MASK_KEYS <= set(metrics) if variant in "CDE" else not MASK_KEYS & set(metrics)
    assert (tmp_path / "vis" / "word_attention_0.png").is_file() == (variant != "A")
    assert (tmp_path / "vis" / "mask_0.png").is_file() == (variant in "CDE")
    if variant in "CD" and not extra:                                    # the noise bottleneck's running statistics
        assert int(ckpt["model"]["noise_updates"]) == 2 and ckpt["model"]["patch_std"].min() > 0   # 2 steps


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


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    """--table for models A and E, seed 0, on the SMALL setting: two trained runs, each measured by evaluate.py"""
    out = tmp_path_factory.mktemp("table")
    means = train_patch_ib.main(["--table", str(out / "table.md"), "--out", str(out), "--variants", "A,E",
                                 "--seeds", "0"] + SMALL)
    return out, means


def test_evaluate_py_on_a_tiny_run(table, tmp_path, capsys):
    out, _ = table
    run = out / "E-s0"
    trained = json.loads((run / "metrics.json").read_text())
    metrics = evaluate.main([str(run / "best.pt"), "--split", "test", "--visualize", "2", "--device", "cpu",
                             "--out-dir", str(tmp_path / "vis")])
    printed = capsys.readouterr().out
    assert "duplicate rule: identical report texts" in printed and "chance R@1 0.1250" in printed
    rewritten = json.loads((run / "metrics.json").read_text())
    assert rewritten.pop("checkpoint") == trained.pop("checkpoint") == "best.pt"      # what each file scored
    assert rewritten.pop("checkpoint_step") == trained.pop("checkpoint_step")
    assert rewritten == trained == {k: None if math.isnan(v) else pytest.approx(v) for k, v in metrics.items()}
    # evaluate.py reproduces the script's file; a NaN (a label without positives) is null there
    for side in ("t2i", "i2t", "masked/t2i", "masked/i2t"):
        r = [metrics[f"test/{side}/R@{k}"] for k in (1, 5, 10)]
        assert 0 <= r[0] <= r[1] <= r[2] == 1.0                            # 8 candidates: R@10 = 1
    assert metrics["test/t2i/chance_R@1"] == 1 / 8 and metrics["test/retrieval/groups"] == 8
    per_label = [metrics[f"test/zeroshot/auroc/{n}"] for n in CHEXPERT_LABELS]
    assert all(math.isnan(a) or 0 <= a <= 1 for a in per_label)
    assert metrics["test/zeroshot/auroc/mean"] == pytest.approx(np.nanmean(per_label))
    assert metrics["test/zeroshot/labels_scored"] == sum(not math.isnan(a) for a in per_label) > 0
    assert -1 <= metrics["test/zeroshot/prompt_cosine/mean"] < 1
    assert 0 < metrics["test/mask/sparsity"] < 1 and 0 <= metrics["test/mask/energy_in_boxes"] <= 1
    # a constant map's energy = the mean share of the image covered by the boxes (images with a box)
    from data.phantom import phantom_split
    from metrics.localization import box_masks
    data = phantom_split("test", 8, 96)
    shares = [box_masks([np.asarray(data[i]["boxes"])], 96, 96).mean() for i in range(8) if len(data[i]["boxes"])]
    assert metrics["test/mask/energy_in_boxes_uniform"] == pytest.approx(np.mean(shares))
    assert 0 <= metrics["test/mask/box_patch_auroc"] <= 1
    for name in ("mask_0", "mask_1", "word_attention_0", "word_attention_1"):
        with Image.open(tmp_path / "vis" / f"{name}.png") as png:
            assert png.width > 96 and png.height > 96
    a_metrics = json.loads((out / "A-s0" / "metrics.json").read_text())
    assert not MASK_KEYS & set(a_metrics)                                  # model A has no mask


def test_evaluate_py_on_user_images(table, tmp_path):
    out, _ = table
    from data.phantom import phantom_split
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(2):
        pixels = (phantom_split("test", 2, 128)[i]["image"][0].numpy() * 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"film{i}.png")
    metrics = evaluate.main([str(out / "E-s0" / "best.pt"), "--images", str(folder), "--device", "cpu",
                             "--out-dir", str(tmp_path / "user")])
    assert metrics["images/count"] == 2 and 0 < metrics["images/mask_sparsity"] < 1
    assert json.loads((out / "E-s0" / "metrics_images.json").read_text()) == {
        "checkpoint": "best.pt", "checkpoint_step": torch.load(out / "E-s0" / "best.pt", weights_only=False)["step"],
        **metrics}
    predictions = json.loads((tmp_path / "user" / "predictions.json").read_text())
    assert sorted(predictions) == ["film0.png", "film1.png"]
    test_reports = {phantom_split("test", 8, 96)[i]["report"] for i in range(8)}
    for entry in predictions.values():
        assert set(entry["zeroshot_cosine"]) == set(CHEXPERT_LABELS)
        assert all(-1 <= c <= 1 for c in entry["zeroshot_cosine"].values())
        assert all(0 <= p <= 1 for p in entry["zeroshot_relative"].values())
        cosines = [r["cosine"] for r in entry["closest_reports"]]
        assert len(cosines) == 3 and cosines == sorted(cosines, reverse=True)
        assert all(r["report"] in test_reports for r in entry["closest_reports"])
    assert (tmp_path / "user" / "mask_film0.png").is_file() and (tmp_path / "user" / "word_attention_film1.png").is_file()


def test_table_writes_mean_std_rows_and_reuses_finished_runs(table, capsys):
    out, means = table
    text = (out / "table.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| A ") or line.startswith("| E ")]
    assert len(rows) == 2 and "evaluate.py" in text and "--seeds 0 --variants A,E" in text
    assert text.startswith("Test split of the phantoms") and "model.mask_apply=noise" in text
    a_row, e_row = (row.split(" | ") for row in rows)
    assert a_row[-1].strip(" |") == "—" and e_row[-1].strip(" |") != "—"  # A has no mask column values
    assert means["E"]["t2i/R@1"] == json.loads((out / "E-s0" / "metrics.json").read_text())["test/t2i/R@1"]
    before = (out / "E-s0" / "best.pt").stat().st_mtime_ns
    train_patch_ib.main(["--table", str(out / "again.md"), "--out", str(out), "--variants", "E", "--seeds", "0"] + SMALL)
    assert (out / "E-s0" / "best.pt").stat().st_mtime_ns == before        # reused: not trained again
    assert "All runs reused" in (out / "again.md").read_text()


def test_probe_knocks_out_box_patches_and_as_many_others(table, capsys):
    out, _ = table
    results = train_patch_ib.main(["--probe", str(out / "E-s0" / "best.pt")])
    printed = capsys.readouterr().out
    assert "| box_patches |" in printed and "| other_patches |" in printed
    for name in ("none", "box_patches", "other_patches"):
        assert 0 <= results[f"knockout/{name}/t2i/R@1"] <= results[f"knockout/{name}/t2i/R@5"] <= 1
    assert results["knockout/images"] > 0
