"""Tests of train_concept_cam.py: smoke runs of each stage, stage freezing, the stage-1 backbone lr scale, exact
resume, cached stage-2 features, the VinDr-CXR / NIH file layouts, the --compare table, evaluation outputs.

Run:  python -m pytest -q tests/test_concept_cam_train.py     (both concept-cam test files: 75 s on the shared
      2-core box at load ~5; uses the tiny hub's mae-vit, built on first use)

The runs are tiny (64 px phantoms -> a 4 x 4 grid, 32 training images, one epoch per stage); they check the
mechanics, not accuracy (docs/concept_cam.md has the measured phantom numbers).
"""
import argparse
import json

import pytest
import torch

import train_concept_cam as script
import training
from hub.pretrained import PretrainedLoadError

TINY = ["model.image_size=64", "data.num_train=32", "data.num_val=16", "data.num_test=16", "train.batch_size=16",
        "stage1.epochs=1", "stage2.epochs=1", "stage3.epochs=1", "train.warmup_steps=1", "eval.visualize=1",
        "train.log_interval=1"]


def weights(path):
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def same(a, b, prefix):
    keys = [k for k in a if k.startswith(prefix)]
    assert keys, prefix
    return all(torch.equal(a[k], b[k]) for k in keys)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("concept_cam")
    script.main(["--out", str(out)] + TINY)       # --stage all: stage1, stage2, stage3
    return out


def test_each_stage_writes_its_files_and_metrics(run):
    for stage in (1, 2, 3):
        folder = run / f"stage{stage}"
        for name in ("config.yaml", "log.jsonl", "last.pt", "best.pt", "metrics.json"):
            assert (folder / name).is_file(), folder / name
        assert torch.load(folder / "best.pt", weights_only=False)["phase"] == stage
        metrics = json.loads((folder / "metrics.json").read_text())
        assert 0.0 <= metrics["concept/auroc/macro"] <= 1.0
        assert 0.0 <= metrics["loc/pointing_game"] <= 1.0 and 0.0 <= metrics["loc/energy_in_boxes"] <= 1.0
        assert ("disease/auroc/macro" in metrics) == (stage == 3)
        assert ("proto_loc/pointing_game" in metrics) == (stage >= 2)
        assert list((folder / "figures").glob("*.png"))
    lines = [json.loads(x) for x in (run / "stage1" / "log.jsonl").read_text().splitlines()]
    assert {"classification_loss", "localization_loss", "grad_norm", "lr", "s_per_step", "data_s"} <= set(lines[0])
    stage2 = [json.loads(x) for x in (run / "stage2" / "log.jsonl").read_text().splitlines()]
    assert all(r["data_s"] >= 0 and r["s_per_step"] > 0 for r in stage2 if "softtriple_loss" in r)


def test_stage_freezing(run):
    s1, s2, s3 = (weights(run / f"stage{s}" / "last.pt") for s in (1, 2, 3))
    # stage 2: backbone and concept head bit-identical to stage 1; projector and prototypes trained
    assert same(s1, s2, "backbone.") and same(s1, s2, "concept_head.")
    assert not same(s1, s2, "projector.") and not torch.equal(s1["prototypes"], s2["prototypes"])
    # stage 3: only the task head moves
    assert same(s2, s3, "backbone.") and same(s2, s3, "concept_head.") and same(s2, s3, "projector.")
    assert torch.equal(s2["prototypes"], s3["prototypes"]) and same(s2, s3, "linear_task_head.")
    assert not same(s2, s3, "task_head.")


def test_stage1_frozen_backbone_keeps_pretrained_weights(tmp_path, capsys):
    cfg = training.load_config(training.default_config_path("concept_cam"), TINY + ["stage1.freeze_backbone=true"])
    best = script.run_stage(cfg, 1, tmp_path, final_eval=False)
    printed = capsys.readouterr().out
    assert "trainable = ['concept_head.*']" in printed
    pretrained = script.build_model(cfg).state_dict()
    checkpoint = torch.load(best, map_location="cpu", weights_only=False)
    assert "backbone.pos_embed" not in checkpoint["model"] and set(checkpoint["frozen"]) == {"backbone."}
    model = script.build_model(cfg)                 # the frozen backbone comes from model.backbone, checked
    training.load_weights(model, checkpoint, best)  # against the checkpoint's fingerprint
    trained = model.state_dict()
    assert same(pretrained, trained, "backbone.") and not same(pretrained, trained, "concept_head.")


def test_stage1_backbone_trains_at_the_scaled_learning_rate(tmp_path):
    """seed 002 Step 2: the backbone at lr * stage1.backbone_lr_scale, the concept head at lr. Adam's first
    step moves every parameter by about lr * sign(grad), so the largest change of a tensor is its lr."""
    cfg = training.load_config(training.default_config_path("concept_cam"),
                               TINY + ["stage1.backbone_lr_scale=0.01", "train.stop_after_steps=1"])
    script.run_stage(cfg, 1, tmp_path, final_eval=False)
    training.seed_everything(cfg.train.seed)   # as run_stage does before it builds the model
    before, after = script.build_model(cfg).state_dict(), weights(tmp_path / "last.pt")
    lr = cfg.stage1.lr / cfg.train.warmup_steps   # the first step's lr
    for name, expected in (("backbone.blocks.0.attn.qkv.weight", 0.01 * lr), ("backbone.patch_embed.proj.weight",
                                                                             0.01 * lr),
                           ("concept_head.weight", lr)):
        moved = (after[name] - before[name]).abs().max().item()
        assert moved == pytest.approx(expected, rel=0.1), name


def test_resume_mid_stage_reproduces_the_uninterrupted_run(tmp_path):
    base = TINY + ["stage1.epochs=2"]      # 2 steps per epoch: stop after 3, i.e. inside epoch 2
    full = training.load_config(training.default_config_path("concept_cam"), base)
    script.run_stage(full, 1, tmp_path / "full", final_eval=False)
    cut = training.load_config(training.default_config_path("concept_cam"), base + ["train.stop_after_steps=3"])
    script.run_stage(cut, 1, tmp_path / "cut", final_eval=False)
    assert torch.load(tmp_path / "cut" / "last.pt", weights_only=False)["step"] == 3
    script.run_stage(full, 1, tmp_path / "cut", resume=tmp_path / "cut" / "last.pt", final_eval=False)
    a, b = weights(tmp_path / "full" / "last.pt"), weights(tmp_path / "cut" / "last.pt")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_eval_interval_validates_every_n_steps(tmp_path):
    """train.eval_interval=N validates every N optimizer steps and at the end (0 = each epoch end)."""
    cfg = training.load_config(training.default_config_path("concept_cam"),
                               TINY + ["stage1.epochs=2", "train.eval_interval=1", "train.stop_after_steps=3"])
    script.run_stage(cfg, 1, tmp_path, final_eval=False)
    lines = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "val/concept/auroc/macro" in r] == [1, 2, 3]
    assert [r["epoch"] for r in lines if "val/concept/auroc/macro" in r] == [0.5, 1.0, 1.5]
    assert torch.load(tmp_path / "last.pt", weights_only=False)["step"] == 3


def test_later_stage_needs_the_previous_checkpoint(tmp_path):
    cfg = training.load_config(training.default_config_path("concept_cam"), TINY)
    with pytest.raises(training.ConfigError, match="stage 2 starts from the stage 1 checkpoint"):
        script.run_stage(cfg, 2, tmp_path)


def test_evaluate_checkpoint_on_user_images(run, tmp_path):
    from PIL import Image
    Image.new("L", (80, 80), 90).save(tmp_path / "a.png")
    args = argparse.Namespace(checkpoint=str(run / "stage3" / "best.pt"), split="test", bootstrap=0, visualize=0,
                              images=str(tmp_path), out_dir=str(tmp_path), device="cpu")
    out = script.evaluate_checkpoint(torch.load(args.checkpoint, weights_only=False), args)
    assert out == {"images/count": 1.0, "images/skipped": 0.0}
    predictions = json.loads((tmp_path / "predictions.json").read_text())
    assert set(predictions["a.png"]) == {"concepts", "diseases"} and (tmp_path / "a_cams.png").is_file()


def test_split_files_go_where_data_split_file_says(tmp_path):
    """VinDr's val cut is written to data.split_file; NIH transfer reads the official test list and writes
    no split file (both dataset folders may be read-only)."""
    from data.nih import write_nih
    from data.phantom import ChestPhantomDataset
    from data.vindr import write_vindr
    phantoms = ChestPhantomDataset(8, image_size=64, seed=5)
    write_vindr(tmp_path / "vindr", [phantoms[i] for i in range(8)], split="train")
    write_nih(tmp_path / "nih", [phantoms[i] for i in range(8)])
    target = tmp_path / "out" / "vindr_split.json"
    cfg = training.load_config(training.default_config_path("concept_cam"), TINY + [
        "data.dataset=vindr", f"data.root={tmp_path / 'vindr'}", "data.val_fraction=0.25", "data.cache=false",
        f"data.split_file={target}", f"data.nih_root={tmp_path / 'nih'}"])
    assert len(script.build_dataset(cfg, "train")) == 6 and len(script.build_dataset(cfg, "val")) == 2
    assert target.is_file() and not (tmp_path / "vindr" / "splits").exists()
    assert len(script.build_nih_dataset(cfg)) > 0 and not (tmp_path / "nih" / "splits").exists()


def test_paper_config_names_medmae_and_fails_clearly_without_it():
    cfg = training.load_config(training.REPO_ROOT / "configs" / "concept_cam.yaml")
    assert cfg.system == "concept_cam" and cfg.model.image_size == 224 and cfg.model.embed_dim == 768
    with pytest.raises(PretrainedLoadError, match="configs/tiny/concept_cam.yaml"):
        script.build_model(cfg)


def test_stage1_on_vindr_layout_with_nih_transfer(tmp_path):
    """The real-data path: phantoms written in the VinDr-CXR layout (3 readers per train image, boxes in the
    original frame) train stage 1 through data.vindr; NIH boxes (written in the NIH layout) are scored too."""
    from data.labels import VINDR_CONCEPTS
    from data.nih import write_nih
    from data.phantom import ChestPhantomDataset
    from data.vindr import write_vindr
    train = ChestPhantomDataset(24, image_size=64, seed=5)
    test = ChestPhantomDataset(8, image_size=64, seed=6)
    write_vindr(tmp_path / "vindr", [train[i] for i in range(len(train))], split="train")
    written = write_vindr(tmp_path / "vindr", [test[i] for i in range(len(test))], split="test")
    write_nih(tmp_path / "nih", [test[i] for i in range(len(test))])
    cfg = training.load_config(training.default_config_path("concept_cam"), TINY + [
        "data.dataset=vindr", f"data.root={tmp_path / 'vindr'}", "data.val_fraction=0.25", "data.cache=false",
        f"data.nih_root={tmp_path / 'nih'}", "eval.visualize=0"])
    # the boxes the loss sees are the consensus test boxes, mapped from the original frame to input pixels
    test_set = script.build_dataset(cfg, "test")
    for i in range(len(test_set)):
        boxes, concepts = script.concept_boxes({k: [v] for k, v in test_set[i].items()}, 0, "vindr")
        assert torch.allclose(boxes, torch.as_tensor(written["boxes"][i]), atol=0.2)
        assert concepts.tolist() == written["box_labels"][i].tolist()
    # pos_weight comes from the aggregated training labels, read without loading images
    labels = script.training_labels(script.build_dataset(cfg, "train"), "concepts")
    assert labels.shape == (18, len(VINDR_CONCEPTS)) and labels.sum() > 0
    best = script.run_stage(cfg, 1, tmp_path / "run")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert torch.load(best, weights_only=False)["phase"] == 1
    expected_counts = {}
    for concepts, box_labels in zip(written["concepts"], written["box_labels"]):
        for k in set(box_labels.tolist()):
            expected_counts[VINDR_CONCEPTS[k]] = expected_counts.get(VINDR_CONCEPTS[k], 0) + 1
    assert {k[len("loc/count/"):]: v for k, v in metrics.items() if k.startswith("loc/count/")} == expected_counts
    assert 0.0 <= metrics["nih/loc/pointing_game"] <= 1.0 and "nih/concept/auroc/macro" not in metrics


def test_compare_writes_the_table_and_reuses_finished_stages(run, tmp_path, monkeypatch):
    import shutil
    seed = tmp_path / "seed0"
    for stage in (1, 2, 3):   # the module run is seed 0's box-guided pipeline: reused, not retrained
        shutil.copytree(run / f"stage{stage}", seed / "box" / f"stage{stage}")
    reused = (seed / "box" / "stage3" / "best.pt").stat().st_mtime_ns
    script.main(["--compare", "1", "--out", str(tmp_path)] + TINY)
    assert (seed / "box" / "stage3" / "best.pt").stat().st_mtime_ns == reused
    for folder in ("box/stage3_linear", "nobox/stage1"):
        assert (seed / folder / "metrics.json").is_file(), folder
    assert training.load_config(seed / "nobox" / "stage1" / "config.yaml").loss.beta == 0
    assert training.load_config(seed / "box" / "stage3_linear" / "config.yaml").stage3.task_head == "linear"
    linear, stage2 = weights(seed / "box" / "stage3_linear" / "best.pt"), weights(seed / "box" / "stage2" / "best.pt")
    assert same(stage2, linear, "task_head.") and not same(stage2, linear, "linear_task_head.")
    table = (tmp_path / "comparison.md").read_text()
    for arm, folder in (("box", "box/stage1"), ("nobox", "nobox/stage1")):
        value = json.loads((seed / folder / "metrics.json").read_text())["loc/pointing_game"]
        assert f" {value:.3f} |" in table.split("| loc/pointing_game |")[1].splitlines()[0], arm
    disease = json.loads((seed / "box" / "stage3_linear" / "metrics.json").read_text())["disease/auroc/macro"]
    assert table.split("| disease/auroc/macro |")[1].splitlines()[0].endswith(f" {disease:.3f} |")
    assert not (seed / "timing.json").exists()   # the reused default stages were not timed here
    # a second call finds every stage folder finished: no training at all
    monkeypatch.setattr(script, "run_stage", lambda *a, **k: pytest.fail("a finished stage was rerun"))
    script.main(["--compare", "1", "--out", str(tmp_path)] + TINY)


def test_cached_features_train_stage2_like_the_full_forward(run, tmp_path):
    """train.cache_features: stages 2-3 read the frozen backbone's features from a cache (epoch 2 reads it, in
    another order); the result equals the full forward's."""
    stage1 = run / "stage1" / "best.pt"
    results = {}
    for cache in ("true", "false"):
        overrides = TINY + [f"train.cache_features={cache}", "stage2.epochs=2"]
        cfg = training.load_config(training.default_config_path("concept_cam"), overrides)
        results[cache] = weights(script.run_stage(cfg, 2, tmp_path / cache, resume=stage1, final_eval=False))
    assert not same(weights(stage1), results["true"], "projector.")
    assert all(torch.allclose(results["true"][k], results["false"][k], atol=1e-5) for k in results["true"])


def test_validation_loss_early_stopping_and_the_collapse_warning(tmp_path, monkeypatch, capsys):
    """Each validation logs the stage's loss on val and the CAM energy beside the metric. With a metric that only
    falls, train.early_stop_steps=2 ends stage 1 two steps after its best (step 1) and still scores best.pt; CAMs
    forced to zero (a concept head of zeros, frozen) give the collapse warning naming the setting."""
    cfg = training.load_config(training.default_config_path("concept_cam"),
                               TINY + ["stage1.epochs=4", "train.eval_interval=1"])
    script.run_stage(cfg, 1, tmp_path / "plain", final_eval=False)
    rows = [json.loads(line) for line in (tmp_path / "plain" / "log.jsonl").read_text().splitlines()]
    val = [r for r in rows if "val/loss" in r]
    assert len(val) == 8 and all(r["val/loss"] > 0 and r["val/cam_energy"] > 0 for r in val)

    real_validate, calls = script.validate, []

    def falling(*args, **kwargs):
        scores = real_validate(*args, **kwargs)
        calls.append(1)
        return {**scores, "val/concept/auroc/macro": 1.0 - 0.1 * len(calls)}

    monkeypatch.setattr(script, "validate", falling)
    stopped = training.load_config(training.default_config_path("concept_cam"),
                                   TINY + ["stage1.epochs=4", "train.eval_interval=1", "train.early_stop_steps=2"])
    script.run_stage(stopped, 1, tmp_path / "stopped")
    assert len(calls) == 3 and "early stop at step 3" in capsys.readouterr().out
    assert torch.load(tmp_path / "stopped" / "last.pt", weights_only=False)["step"] == 3
    assert torch.load(tmp_path / "stopped" / "best.pt", weights_only=False)["step"] == 1
    assert (tmp_path / "stopped" / "metrics.json").exists()        # the final test of best.pt still runs

    monkeypatch.setattr(script, "validate", real_validate)
    original = script.build_model

    def zero_head(cfg, pretrained=True):
        model = original(cfg, pretrained)
        for p in model.concept_head.parameters():
            torch.nn.init.zeros_(p)
        return model

    monkeypatch.setattr(script, "build_model", zero_head)
    collapsed = training.load_config(training.default_config_path("concept_cam"),
                                     TINY + ["stage1.epochs=2", "train.eval_interval=1", "stage1.lr=1.0e-12",
                                             "loss.localization_margin=0.0"])
    script.run_stage(collapsed, 1, tmp_path / "collapsed", final_eval=False)
    out = capsys.readouterr().out
    assert "concept CAMs collapsed to zero" in out and "loss.localization_margin=0.0" in out


@pytest.mark.slow
def test_paper_config_builds_the_paper_size_model_and_runs_each_stage_on_prepared_vindr_dicom(tmp_path):
    """configs/concept_cam.yaml as it is with model.pretrained=false: a MedMAE-shaped ViT-B/16 at 224 px
    (14 x 14 grid, 768 wide), projector 256, 10 prototypes per concept. 224-px phantoms written as the VinDr-CXR
    DICOM release (12-bit, originals 4x larger, 3 readers) go through `python -m data.prepare vindr` into PNGs
    with the original sizes recorded, and each stage takes two steps on them (about 1-2 min on 2 CPU cores)."""
    pytest.importorskip("pydicom")
    from data.phantom import phantom_split
    from data.prepare import prepare
    from data.vindr import write_vindr
    raw, prepared = tmp_path / "raw", tmp_path / "prepared"
    write_vindr(raw, phantom_split("train", 12, 224), split="train", image_format="dicom")
    written = write_vindr(raw, phantom_split("test", 4, 224), split="test", image_format="dicom")
    prepare("vindr", raw, prepared, size=512, workers=1, progress=False)
    sizes = (prepared / "image_sizes.csv").read_text().splitlines()
    assert f"{written['image_ids'][0]},896,896" in sizes        # the DICOM's size, not the PNG's
    overrides = ["model.pretrained=false", f"data.root={prepared}", "data.num_workers=0", "train.batch_size=2",
                 "train.stop_after_steps=2", "train.device=cpu", "train.log_interval=1", "eval.visualize=0"]
    cfg = training.load_config(training.REPO_ROOT / "configs" / "concept_cam.yaml", overrides)
    assert cfg.data.dataset == "vindr" and cfg.data.image_format == "png" and cfg.model.image_size == 224
    run, previous = None, None
    for stage in (1, 2, 3):
        out = tmp_path / f"stage{stage}"
        script.run_stage(cfg, stage, out, resume=previous)
        previous = out / "last.pt"
        checkpoint = torch.load(previous, weights_only=False)
        assert checkpoint["phase"] == stage
        rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows if "loss" in r] == [1, 2]
        run = checkpoint
    weights = run["model"]
    assert weights["backbone.pos_embed"].shape == (1, 197, 768)      # 14 x 14 patches + CLS
    assert weights["backbone.blocks.11.attn.qkv.weight"].shape == (2304, 768)
    assert weights["prototypes"].shape == (22, 10, 256) and weights["task_head.weight"].shape == (6, 220)
