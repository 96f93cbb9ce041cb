"""train_wsrpn_vl.py end to end on tiny phantoms: a two-step smoke run, a resume that reproduces the
uninterrupted run, per-step phase/weight logging, evaluate_checkpoint; and (slow) the paper-size model.

Run: python -m pytest -q tests/test_wsrpn_train.py          (add -m slow for the paper-size step)
"""
import json
from types import SimpleNamespace

import pytest
import torch

import train_wsrpn_vl

TINY = ["data.train_samples=24", "data.val_samples=6", "data.test_samples=6", "data.image_size=64",
        "train.batch_size=4", "train.epochs=2", "loss.warmup_epochs=1", "loss.gaussian_start_epoch=2",
        "train.eval_interval=100000", "eval.visualize=0", "model.num_roi_tokens=4", "model.d_emb=32",
        "model.d_hidden=64"]


def read_log(path):
    return [json.loads(line) for line in open(path) if '"loss"' in line]


def test_two_step_smoke_run_writes_checkpoint_config_and_log(tmp_path):
    out = train_wsrpn_vl.main(["--out", str(tmp_path), *TINY, "train.stop_after_steps=2", "eval.final_test=false"])
    assert (out / "config.yaml").exists() and (out / "last.pt").exists()
    rows = read_log(out / "log.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    for row in rows:
        assert row["phase"] == 1 and row["weight/contrastive"] == 0.0 and row["weight/detection"] == 1.0
        assert all(k in row for k in ("patch_bce", "roi_bce", "patch_supcon", "roi_supcon", "roi_patch_consistency",
                                      "lr", "grad_norm", "s_per_step", "data_s"))
    checkpoint = torch.load(out / "last.pt", weights_only=False)
    assert checkpoint["step"] == 2 and checkpoint["batch_in_epoch"] == 2 and checkpoint["tokenizer_files"]


def test_resume_reproduces_the_uninterrupted_run_across_a_phase_boundary(tmp_path):
    # ~18 usable phantoms in batches of 4: epoch 0 (steps 1-4 or 5) is phase 1, epoch 1 is phase 2
    straight = train_wsrpn_vl.main(["--out", str(tmp_path / "a"), *TINY, "train.stop_after_steps=6", "eval.final_test=false"])
    first = train_wsrpn_vl.main(["--out", str(tmp_path / "b"), *TINY, "train.stop_after_steps=3", "eval.final_test=false"])
    resumed = train_wsrpn_vl.main(["--out", str(tmp_path / "c"), "--resume", str(first / "last.pt"), *TINY,
                                   "train.stop_after_steps=6", "eval.final_test=false"])
    a, c = read_log(straight / "log.jsonl"), read_log(resumed / "log.jsonl")
    assert [r["step"] for r in c] == [4, 5, 6]
    assert {r["phase"] for r in a} == {1, 2}  # the run crosses into phase 2 (text branch on)
    assert any(r["weight/contrastive"] == 0.5 and "contrastive" in r for r in a)
    for expected, got in zip(a[3:], c):
        assert got["phase"] == expected["phase"]
        assert got["loss"] == pytest.approx(expected["loss"], rel=1e-5, abs=1e-6)


@pytest.mark.slow
def test_paper_config_builds_the_paper_size_model_and_runs_two_steps_on_real_layouts(tmp_path):
    """configs/wsrpn_vl.yaml as it is (MIMIC-CXR with statement captions, NIH boxes for val/test) with
    model.pretrained=false: DenseNet-121 denseblock4 (1024 channels, 7x7 at 224 px), d_emb 256, K = 10, 9 classes,
    a random BERT-base-sized text encoder; two steps on 224-px phantoms written in the MIMIC-CXR-JPG and NIH
    ChestX-ray14 layouts (~1-2 min on 2 CPU cores)."""
    from data.mimic_cxr import write_mimic_cxr
    from data.nih import write_nih
    from data.phantom import phantom_split
    write_mimic_cxr(tmp_path / "mimic", phantom_split("train", 24, 224))
    write_nih(tmp_path / "nih", phantom_split("val", 24, 224), images_per_patient=2)
    out = train_wsrpn_vl.main(["--config", "configs/wsrpn_vl.yaml", "--out", str(tmp_path / "run"),
                               "model.pretrained=false", f"data.root={tmp_path / 'mimic'}",
                               f"data.eval_root={tmp_path / 'nih'}", "data.num_workers=0", "train.batch_size=2",
                               "train.stop_after_steps=2", "loss.warmup_epochs=0", "eval.final_test=false",
                               "train.device=cpu"])
    checkpoint = torch.load(out / "last.pt", weights_only=False)
    assert checkpoint["config"]["data"]["caption"] == "statements" and checkpoint["config"]["data"]["image_size"] == 224
    weights = checkpoint["model"]
    assert weights["wsrpn.projection.0.weight"].shape == (1024,)  # BatchNorm over DenseNet-121 channels
    assert weights["wsrpn.roi_tokens"].shape == (1, 10, 256)
    assert weights["shared_projection.text_proj.weight"].shape == (128, 768)
    rows = read_log(out / "log.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    assert all(r["phase"] == 2 and "contrastive" in r for r in rows)  # warmup 0: the text branch runs


def test_build_dataset_reads_nih_wsrpn_split_and_mimic_reports(tmp_path):
    """Real layouts written from phantoms: NIH (labels-only captions, val/test = box images of box patients) and
    MIMIC-CXR (report captions, CheXpert labels mapped to the NIH box classes) evaluated on NIH boxes."""
    import training
    from data.mimic_cxr import write_mimic_cxr
    from data.nih import write_nih
    from data.phantom import phantom_split
    write_nih(tmp_path / "nih", phantom_split("train", 40, 64), images_per_patient=2)
    write_mimic_cxr(tmp_path / "mimic", phantom_split("val", 40, 64))
    classes = "data.classes=[Atelectasis, Cardiomegaly, Effusion, Infiltration, Mass, Nodule, Pneumonia, Pneumothorax]"
    cfg = training.load_config("configs/wsrpn_vl.yaml", [f"data.root={tmp_path / 'nih'}", "data.dataset=nih",
                                                         "data.caption=labels", classes, "data.image_size=64"])
    train, test = train_wsrpn_vl.build_dataset(cfg, "train"), train_wsrpn_vl.build_dataset(cfg, "test")
    assert len(train) and len(test)
    assert all(len(train[i]["boxes"]) == 0 for i in range(len(train)))
    assert all(len(test[i]["boxes"]) > 0 and test[i]["image"].shape == (3, 64, 64) for i in range(len(test)))
    from data.captions import caption_from_labels
    assert all(train[i]["caption"] == caption_from_labels(train[i]["labels"], cfg.data.classes) for i in range(5))
    cfg = training.load_config("configs/wsrpn_vl.yaml", [f"data.root={tmp_path / 'mimic'}", "data.caption=report",
                                                         f"data.eval_root={tmp_path / 'nih'}", classes, "data.image_size=64"])
    mimic = train_wsrpn_vl.build_dataset(cfg, "train")
    assert len(mimic) and mimic[0]["labels"].shape == (9,)
    assert not mimic[0]["caption"].startswith("Findings:")  # impression sentences, not the whole report
    assert len(train_wsrpn_vl.build_dataset(cfg, "val")) > 0  # NIH boxes
    # the paper default: MIMIC-CXR with one statement per finding of the report
    from data.captions import caption_from_report_statements
    cfg = training.load_config("configs/wsrpn_vl.yaml", [f"data.root={tmp_path / 'mimic'}", classes,
                                                         f"data.eval_root={tmp_path / 'nih'}", "data.image_size=64"])
    assert (cfg.data.dataset, cfg.data.caption) == ("mimic", "statements")
    mimic = train_wsrpn_vl.build_dataset(cfg, "train")
    for i in range(5):
        assert mimic[i]["caption"] == caption_from_report_statements(mimic.base[mimic.indices[i]]["report"])
    assert any(side in mimic[i]["caption"] for i in range(len(mimic)) for side in ("left", "right", "bilateral"))
    cfg = training.load_config("configs/wsrpn_vl.yaml", [f"data.root={tmp_path / 'nih'}", "data.dataset=nih", classes])
    with pytest.raises(training.ConfigError, match="NIH has labels only"):
        train_wsrpn_vl.build_dataset(cfg, "train")


def test_evaluate_checkpoint_metrics_pngs_and_user_images(tmp_path):
    pytest.importorskip("metrics.detection")
    out = train_wsrpn_vl.main(["--out", str(tmp_path / "run"), *TINY, "train.stop_after_steps=2", "eval.final_test=false",
                               "loss.warmup_epochs=0"])
    checkpoint = torch.load(out / "last.pt", weights_only=False)
    args = SimpleNamespace(checkpoint=str(out / "last.pt"), split="test", bootstrap=3, visualize=2, images=None,
                           out_dir=str(tmp_path / "eval"), device="cpu")
    (tmp_path / "eval").mkdir()
    metrics = train_wsrpn_vl.evaluate_checkpoint(checkpoint, args)
    for key in ("rodeo/total", "rodeo/loc", "rodeo/shape", "rodeo/cls", "ap@0.3", "ap@0.5", "map",
                "rodeo/total/mean", "gaussian/scale", "gaussian/entropy", "vision_text/sim_correct"):
        assert key in metrics and isinstance(metrics[key], float), key
    assert len(list((tmp_path / "eval").glob("*_boxes.png"))) == 2
    assert len(list((tmp_path / "eval").glob("*_gaussians.png"))) == 2
    from PIL import Image
    (tmp_path / "user").mkdir()
    Image.new("L", (90, 70), 128).save(tmp_path / "user" / "a.png")
    args.images, args.out_dir = str(tmp_path / "user"), str(tmp_path / "user_out")
    (tmp_path / "user_out").mkdir()
    assert train_wsrpn_vl.evaluate_checkpoint(checkpoint, args)["images"] == 1.0
    assert json.loads((tmp_path / "user_out" / "predictions.json").read_text()).keys() == {"a"}


def test_compare_aggregates_mean_and_std_over_seeds(tmp_path, monkeypatch):
    calls = []

    def fake_main(argv):
        out = argv[argv.index("--out") + 1]
        text_on = "model.use_vl_branch=true" in argv
        seed = int(next(a for a in argv if a.startswith("train.seed=")).split("=")[1])
        calls.append(argv)
        import pathlib
        pathlib.Path(out).mkdir(parents=True, exist_ok=True)
        (pathlib.Path(out) / "metrics.json").write_text(json.dumps({"rodeo/total": 0.3 + 0.1 * text_on + 0.02 * seed}))

    monkeypatch.setattr(train_wsrpn_vl, "main", fake_main)
    table = train_wsrpn_vl.compare(["--config", "x.yaml"], 2, tmp_path)
    assert len(calls) == 2 * len(train_wsrpn_vl.COMPARE_ARMS)
    assert table["WSRPN-VL (text on)"]["rodeo/total"] == pytest.approx([0.4, 0.42])
    assert "0.410 ± 0.014" in (tmp_path / "comparison.md").read_text()  # sample std of (0.40, 0.42)
    train_wsrpn_vl.compare(["--config", "x.yaml"], 2, tmp_path)  # finished runs are reused, not rerun
    assert len(calls) == 2 * len(train_wsrpn_vl.COMPARE_ARMS)
    interrupted = tmp_path / "arm0-seed1"                         # killed after a checkpoint, before its test
    (interrupted / "metrics.json").unlink()
    (interrupted / "last.pt").write_bytes(b"checkpoint")
    train_wsrpn_vl.compare(["--config", "x.yaml"], 2, tmp_path)
    assert calls[-1][calls[-1].index("--resume") + 1] == str(interrupted / "last.pt")    # continued, not refused


def test_compare_jobs_runs_separate_processes_at_most_jobs_at_once(tmp_path, monkeypatch):
    import subprocess
    started, alive = [], []

    class FakeProcess:  # a run that "finishes" on its second poll, writing metrics.json like main() does
        def __init__(self, command, stdout, stderr):
            out = command[command.index("--out") + 1]
            started.append(command)
            alive.append(self)
            assert len(alive) <= 2  # --jobs 2
            self.out, self.polls, self.returncode = out, 0, None

        def poll(self):
            self.polls += 1
            if self.polls < 2:
                return None
            (tmp_path / self.out / "metrics.json").write_text(json.dumps({"rodeo/total": 0.5}))
            alive.remove(self)
            self.returncode = 0
            return 0

    monkeypatch.setattr(subprocess, "Popen", FakeProcess)
    monkeypatch.setattr(train_wsrpn_vl.time, "sleep", lambda seconds: None)
    monkeypatch.chdir(tmp_path)
    table = train_wsrpn_vl.compare(["--config", "x.yaml"], 2, "cmp", jobs=2)
    assert len(started) == 2 * len(train_wsrpn_vl.COMPARE_ARMS)
    assert all(c[1].endswith("train_wsrpn_vl.py") and c[-1] in ("train.seed=0", "train.seed=1") for c in started)
    assert all(v["rodeo/total"] == [0.5, 0.5] for v in table.values())
    assert (tmp_path / "cmp" / "arm0-seed1" / "stdout.log").exists()


def test_validation_uses_metrics_and_best_pt_follows_the_selection_metric(tmp_path):
    """Validation every epoch through metrics/ (RoDeO, AP@IoU); best.pt is the epoch with the highest
    eval.select_metric, and the final test evaluation of best.pt writes metrics.json (evaluate.py's keys)."""
    pytest.importorskip("metrics.detection")
    out = train_wsrpn_vl.main(["--out", str(tmp_path), *TINY, "train.eval_interval=0", "train.epochs=3",
                               "eval.box_threshold=0.0", "eval.select_metric=rodeo/total"])
    rows = [json.loads(line) for line in open(out / "log.jsonl") if '"val/rodeo/total"' in line]
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    assert all(isinstance(r["val/map"], float) and isinstance(r["val/rodeo/loc"], float) for r in rows)
    values = [r["val/rodeo/total"] for r in rows]
    best = torch.load(out / "best.pt", weights_only=False)
    first_best = values.index(max(values))  # ties keep the earlier epoch (strictly greater replaces)
    assert best["epoch"] == first_best + 1 and best["best_metric"] == pytest.approx(max(values))
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"rodeo/total", "ap@0.3", "ap@0.5", "loc_acc@0.3", "gaussian/scale"} <= metrics.keys()


def test_phase_flag_stops_after_that_phase(tmp_path):
    out = train_wsrpn_vl.main(["--phase", "1", "--out", str(tmp_path), *TINY, "eval.final_test=false",
                               "train.epochs=3", "loss.gaussian_start_epoch=3"])
    rows = read_log(out / "log.jsonl")
    assert rows and {r["phase"] for r in rows} == {1} and {r["epoch"] for r in rows} == {0}
    assert torch.load(out / "last.pt", weights_only=False)["epoch"] == 1  # resumable at the start of phase 2


def test_eval_interval_counts_steps_and_stop_after_steps_leaves_a_resumable_run(tmp_path):
    """train.eval_interval=N validates every N optimizer steps (the shared train.* vocabulary); a run stopped by
    train.stop_after_steps writes last.pt at that step and no test metrics."""
    out = train_wsrpn_vl.main(["--out", str(tmp_path), *TINY, "train.eval_interval=2", "train.stop_after_steps=5",
                               "eval.select_metric=rodeo/total"])
    rows = [json.loads(line) for line in open(out / "log.jsonl") if '"val/rodeo/total"' in line]
    assert [r["step"] for r in rows] == [2, 4]
    assert torch.load(out / "last.pt", weights_only=False)["step"] == 5
    assert (out / "best.pt").exists() and not (out / "metrics.json").exists()


def test_early_stopping_counts_steps_of_the_last_phase_without_improvement(tmp_path, monkeypatch):
    """train.early_stop_steps=3 with a validation score that only falls: the best stays at the first validation,
    the earlier phases never stop the run, and it ends 3 steps into the last phase, with last.pt there and
    best.pt from step 1."""
    import evals.wsrpn_vl
    calls = []

    def falling(*args, **kwargs):
        calls.append(1)
        return {"rodeo/total": -float(len(calls))}

    monkeypatch.setattr(evals.wsrpn_vl, "evaluate_detection", falling)
    out = train_wsrpn_vl.main(["--out", str(tmp_path), *TINY, "train.epochs=4", "train.eval_interval=1",
                               "train.early_stop_steps=3", "eval.select_metric=rodeo/total", "eval.final_test=false"])
    rows = read_log(out / "log.jsonl")
    last_phase_start = min(r["step"] for r in rows if r["phase"] == 3) - 1     # steps done before phase 3
    assert last_phase_start >= 3 and rows[-1]["step"] == last_phase_start + 3 == len(calls)
    assert torch.load(out / "last.pt", weights_only=False)["step"] == last_phase_start + 3
    assert torch.load(out / "best.pt", weights_only=False)["step"] == 1
