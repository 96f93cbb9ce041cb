"""train_chexquery.py: per-phase freezing, a two-step smoke run, phase 1 -> phase 2 resume, exact same-phase
resume, bad input (missing image, empty and all-XXXX reports, prompt without placeholder).
Run: /work/venv/bin/python -m pytest -q tests/test_chexquery_train.py"""
import csv
import json

import pytest
import torch

import evals.chexquery
import train_chexquery as T
import training
from data.sample import DataError
from models.chexquery import chexquery_losses
from models.text_decoder import encode_targets, prompt_prefix

SMALL = ["data.num_train=32", "data.num_val=8", "data.num_test=8", "phases.phase1.epochs=2", "phases.phase2.epochs=1",
         "phases.phase1.batch_size=16", "phases.phase2.batch_size=16", "phases.phase1.effective_batch_size=32",
         "phases.phase2.effective_batch_size=32", "eval.final_test=false", "train.log_interval=1"]


def config(*overrides):
    return training.load_config(training.default_config_path("chexquery"), list(SMALL) + list(overrides))


@pytest.mark.parametrize("phase", [1, 2, 3])
def test_freezing_per_phase(phase):
    """After one optimizer step: frozen parameters bit-identical, LoRA / queries / trained modules changed."""
    cfg = config()
    torch.manual_seed(0)
    model = T.build_model(cfg)
    trainable = training.set_trainable(model, T.trainable_patterns(model, phase))
    optimizer = training.build_optimizer(model, 1e-3, 0.0, no_weight_decay=model.no_weight_decay())
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    tokenizer = T.load_tokenizer_for(cfg)
    from data.sample import collate
    batch = collate([T.build_dataset(cfg, "train")[i] for i in range(4)])
    ids, labels, mask = encode_targets(tokenizer, batch["report"], prompt_prefix(cfg.data.prompt_template), 64, 0)
    out = model(batch["image"], ids, mask)
    p, _ = T.phase_settings(cfg, phase)
    chexquery_losses(out, labels, T.aux_targets(batch, cfg), p.lambda_gen, p.lambda_aux)["loss"].backward()
    optimizer.step()
    changed = {n for n, q in model.named_parameters() if not torch.equal(before[n], q.detach())}
    frozen = {n for n, q in model.named_parameters() if not q.requires_grad}
    assert not (changed & frozen)
    assert "condition_queries.queries" in changed and "anatomical_queries.queries" in changed
    assert any(n.startswith("cross_attention.") for n in changed) and any(n.startswith("gated_fusion.") for n in changed)
    vision_lora = {n for n in changed if n.startswith("vision_encoder.") and "lora_B" in n}
    decoder_lora = {n for n in changed if n.startswith("text_decoder.") and "lora_B" in n}
    assert bool(vision_lora) == (phase == 2)
    assert bool(decoder_lora) == (phase in (2, 3))
    assert not any(n.startswith("vision_encoder.") and "lora" not in n for n in changed)  # backbone never trains
    assert not any(n.startswith("text_decoder.") and "lora" not in n for n in changed)
    assert any(n.startswith("auxiliary_head.") for n in changed) == (phase in (1, 2))
    assert sum(q.numel() for q in trainable) < sum(q.numel() for q in model.parameters())


def test_two_step_smoke_run_and_phase_resume(tmp_path, capsys):
    out1 = tmp_path / "p1"
    T.main(["--phase", "1", "--out", str(out1), "train.stop_after_steps=2"] + SMALL)
    text = capsys.readouterr().out
    assert "phase 1 trainable patterns" in text and "accumulation = effective batch 32" in text
    assert "auxiliary labels from phantom label vectors" in text
    ckpt = torch.load(out1 / "last.pt", map_location="cpu", weights_only=False)
    assert ckpt["step"] == 2 and ckpt["phase"] == 1 and ckpt["tokenizer_files"]
    rows = [json.loads(l) for l in (out1 / "log.jsonl").read_text().splitlines()]
    losses = [r for r in rows if "generation" in r]
    assert [r["step"] for r in losses] == [1, 2] and all(torch.isfinite(torch.tensor(r["loss"])) for r in losses)
    assert all(r["s_per_step"] > 0 and r["data_s"] >= 0 for r in losses)  # the step and the wait for its batches
    # phase 2 from phase 1's best: frozen vision backbone weights carried over unchanged, LoRA trained
    out2 = tmp_path / "p2"
    T.main(["--phase", "2", "--resume", str(out1 / "best.pt"), "--out", str(out2)] + SMALL)
    assert "phase 2 starts from the phase 1 weights" in capsys.readouterr().out
    p1_checkpoint = torch.load(out1 / "best.pt", map_location="cpu", weights_only=False)
    p1 = p1_checkpoint["model"]
    p2 = torch.load(out2 / "best.pt", map_location="cpu", weights_only=False)
    assert p2["phase"] == 2
    key = "vision_encoder.model.encoder.layers.0.self_attn.k_proj.weight"   # frozen pretrained: left out of both,
    assert key not in p1 and key not in p2["model"]                         # named by source and fingerprint
    assert p1_checkpoint["frozen"] == p2["frozen"] and key in p2["frozen"]["vision_encoder.model."]["keys"]
    lora = "vision_encoder.model.encoder.layers.0.self_attn.q_proj.lora_B.default.weight"
    assert torch.equal(p1[lora], torch.zeros_like(p1[lora])) and not torch.equal(p1[lora], p2["model"][lora])
    assert not torch.equal(p1["condition_queries.queries"], p2["model"]["condition_queries.queries"])


def test_same_phase_resume_is_exact(tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    T.main(["--phase", "1", "--out", str(full)] + SMALL)
    T.main(["--phase", "1", "--out", str(part), "train.stop_after_steps=1"] + SMALL)
    T.main(["--phase", "1", "--out", str(part), "--resume", str(part / "last.pt")] + SMALL)
    a = torch.load(full / "last.pt", map_location="cpu", weights_only=False)
    b = torch.load(part / "last.pt", map_location="cpu", weights_only=False)
    assert a["step"] == b["step"] == 2
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=0, atol=0, msg=k)


LEFTOVER = ["data.num_train=40", "phases.phase1.batch_size=8", "phases.phase1.effective_batch_size=16"]
# 5 micro-batches per epoch, 2 per optimizer step: 2 steps per epoch and one micro-batch left over


def test_accumulation_steps_use_exactly_their_own_micro_batches(tmp_path, monkeypatch):
    """An epoch whose micro-batch count is not a multiple of the accumulation count: each optimizer step's
    gradient is the mean over exactly its own 2 micro-batches (the leftover one never runs backward)."""
    calls, per_step = [0], []

    def counted_losses(*args, **kwargs):
        calls[0] += torch.is_grad_enabled()     # training micro-batches (validation runs without grad)
        return chexquery_losses(*args, **kwargs)

    def counting_optimizer(*args, **kwargs):
        optimizer = build(*args, **kwargs)
        step = optimizer.step

        def counted_step(*a, **k):
            per_step.append(calls[0])
            calls[0] = 0
            return step(*a, **k)
        optimizer.step = counted_step
        return optimizer
    build = training.build_optimizer
    monkeypatch.setattr(T, "chexquery_losses", counted_losses)
    monkeypatch.setattr(training, "build_optimizer", counting_optimizer)
    T.main(["--phase", "1", "--out", str(tmp_path)] + SMALL + LEFTOVER)
    assert per_step == [2, 2, 2, 2]       # 2 epochs x 2 steps


def test_same_phase_resume_at_an_epoch_end_is_exact_with_leftover_micro_batches(tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    T.main(["--phase", "1", "--out", str(full)] + SMALL + LEFTOVER)
    T.main(["--phase", "1", "--out", str(part), "train.stop_after_steps=2"] + SMALL + LEFTOVER)
    T.main(["--phase", "1", "--out", str(part), "--resume", str(part / "last.pt")] + SMALL + LEFTOVER)
    a = torch.load(full / "last.pt", map_location="cpu", weights_only=False)
    b = torch.load(part / "last.pt", map_location="cpu", weights_only=False)
    assert a["step"] == b["step"] == 4
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=0, atol=0, msg=k)


def test_prompt_template_without_placeholder_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"data.prompt_template must contain the placeholder \{report\}"):
        T.main(["--phase", "1", "--out", str(tmp_path), "data.prompt_template=Write a chest X-ray report"])


def _iu_copy(tmp_path, n=12):
    from data.iu_xray import write_iu_xray
    from data.phantom import phantom_split
    info = write_iu_xray(tmp_path / "iu", [phantom_split("train", 1, 96)[0] for _ in range(1)] +
                         [phantom_split("val", n, 96)[i] for i in range(n)], labels_csv=False)
    return info["root"]


def _edit_reports(root, changes):
    path = root / "indiana_reports.csv"
    rows = list(csv.reader(path.open()))
    for uid, (findings, impression) in changes.items():
        row = next(r for r in rows if r[0] == uid)
        row[6], row[7] = findings, impression
    with path.open("w", newline="") as f:
        csv.writer(f).writerows(rows)


def test_split_file_goes_where_data_split_file_says(tmp_path):
    """data.split_file: the IU patient split is written there (a read-only data.root stays untouched)."""
    root = _iu_copy(tmp_path)
    target = tmp_path / "elsewhere" / "iu_split.json"
    cfg = config("data.source=iu_xray", f"data.root={root}", f"data.split_file={target}")
    sizes = [len(T.build_dataset(cfg, split)) for split in ("train", "val", "test")]
    assert sum(sizes) == 13 and target.is_file() and not (root / "splits").exists()
    assert set(json.loads(target.read_text())["patients"].values()) == {"train", "val", "test"}


def test_bad_reports_and_missing_image(tmp_path, capsys):
    root = _iu_copy(tmp_path)
    _edit_reports(root, {"2": ("", ""), "3": ("XXXX XXXX.", "The XXXX is XXXX.")})
    cfg = config("data.source=iu_xray", f"data.root={root}", "data.on_error=skip")
    kept = 0  # studies are split 70/15/15 by uid: count over the three splits
    for split in ("train", "val", "test"):
        try:
            d = T.build_dataset(cfg, split)
            kept += len(d)
        except DataError:
            pass
    out = capsys.readouterr().out
    assert kept == 11  # 13 studies - 1 empty (left out by the adapter) - 1 all-XXXX (skipped here)
    assert "whose report is empty after cleaning" in out and "studies without findings or impression left out" in out
    # the same all-XXXX report with on_error=stop: one clear error naming the CSV line
    stop = config("data.source=iu_xray", f"data.root={root}", "data.on_error=stop")
    with pytest.raises(DataError, match=r"empty after cleaning.*indiana_projections.csv line"):
        for split in ("train", "val", "test"):
            T.build_dataset(stop, split)
    # a missing image: stop names the file; skip counts it
    for image in (root / "images" / "images_normalized").glob("5_IM-*"):
        image.unlink()  # the frontal (and lateral) image of study 5
    _edit_reports(root, {"3": ("Normal heart.", "Normal.")})
    with pytest.raises(DataError, match=r"image not found: .*/5_IM-\d+-\d+\.dcm\.png"):
        for split in ("train", "val", "test"):
            T.build_dataset(stop, split)
    capsys.readouterr()
    assert sum(len(T.build_dataset(cfg, s)) for s in ("train", "val", "test")) == 11
    out = capsys.readouterr().out
    assert "skipped: image not found" in out and "skipped 1 bad item(s)" in out  # skipped and counted


def test_generation_follows_config(tmp_path):
    cfg = config("generation.max_length=10", "generation.min_length=3", "generation.num_beams=2")
    model = T.build_model(cfg).eval()
    tokenizer = T.load_tokenizer_for(cfg)
    images = torch.stack([T.build_dataset(cfg, "val")[i]["image"] for i in range(2)])
    reports, out = evals.chexquery.generate_reports(model, images, tokenizer, cfg, "cpu", torch.autocast("cpu", enabled=False))
    assert len(reports) == 2 and all(isinstance(r, str) for r in reports)
    prompt_ids = tokenizer(prompt_prefix(cfg.data.prompt_template), add_special_tokens=False).input_ids
    tokens, _ = model.generate(images, prompt_ids, evals.chexquery.generation_settings(cfg))
    assert tokens.shape[0] == 2 and 3 <= tokens.shape[1] <= 10  # report tokens only, prompt not counted
    assert evals.chexquery.generation_settings(cfg)["num_beams"] == 2
    assert out["attention"].shape == (2, 2, 20, 36)


def test_images_writes_a_report_per_image(tmp_path, capsys):
    import argparse
    from data.io import image_uint8, save_image
    from data.phantom import phantom_split
    T.main(["--phase", "1", "--out", str(tmp_path / "run"), "train.stop_after_steps=1"] + SMALL)
    folder = tmp_path / "xrays"
    for i in range(2):
        save_image(image_uint8(phantom_split("test", 2, 128)[i]["image"]), folder / f"cxr{i}.png")  # other size: resized
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")          # one bad file among good ones
    checkpoint = torch.load(tmp_path / "run" / "last.pt", map_location="cpu", weights_only=False)
    args = argparse.Namespace(checkpoint="x", split="test", bootstrap=0, visualize=0, images=str(folder),
                              out_dir=str(tmp_path), device="cpu")
    assert T.evaluate_checkpoint(checkpoint, args) == {"images/count": 2.0, "images/skipped": 1.0}
    assert "skipped: cannot read image" in capsys.readouterr().out
    rows = [json.loads(l) for l in (tmp_path / "generated_reports.jsonl").read_text().splitlines()]
    assert [r["image"].split("/")[-1] for r in rows] == ["cxr0.png", "cxr1.png"] and all(isinstance(r["report"], str) for r in rows)
    args.images = str(tmp_path / "nowhere")
    with pytest.raises(DataError, match="--images .*nowhere: no such file or folder"):
        T.evaluate_checkpoint(checkpoint, args)


def test_evaluate_py_overrides_generation_for_one_evaluation(tmp_path, capsys):
    """evaluate.py --num-beams / --max-length / --max-samples (and key=value) change generation for that
    evaluation only: reports obey the new maximum, the output is named after the settings, the checkpoint's
    own metrics.json is not written."""
    import evaluate
    T.main(["--phase", "1", "--out", str(tmp_path / "run"), "train.stop_after_steps=1"] + SMALL)
    checkpoint = tmp_path / "run" / "last.pt"
    metrics = evaluate.main([str(checkpoint), "--num-beams", "1", "--max-length", "6", "--max-samples", "4",
                             "generation.min_length=1", "eval.meteor=false", "--device", "cpu"])
    reports = [json.loads(line)["generated"] for line in (tmp_path / "run" / "vis" / "reports_test.jsonl").open()]
    assert len(reports) == 4 and all(len(r.split()) <= 6 for r in reports)
    assert metrics["pairs_scored"] + metrics["pairs_skipped"] == 4
    written = tmp_path / "run" / "metrics_last_test_min_length1_meteorfalse_num_beams1_max_length6_max_samples4.json"
    assert written.is_file() and not (tmp_path / "run" / "metrics.json").exists()
    evaluate.main([str(checkpoint), "--max-samples", "4", "--num-beams", "1", "--max-length", "12",
                   "eval.meteor=false", "--device", "cpu"])
    longer = [json.loads(line)["generated"] for line in (tmp_path / "run" / "vis" / "reports_test.jsonl").open()]
    assert max(len(r.split()) for r in longer) > 6 and all(len(r.split()) <= 12 for r in longer)
    with pytest.raises(SystemExit) as stop:
        evaluate.main([str(checkpoint), "model.heads=2"])
    assert stop.value.code == 2 and "model.heads=2: the model comes from the checkpoint" in capsys.readouterr().err


def test_r2gen_split_is_also_scored_under_r2gens_protocol(tmp_path):
    """data.source=iu_xray_r2gen: r2gen/... keys score the annotation's own strings with R2Gen's vocabulary
    (<unk> below 3 training counts) and reference cut, checked here against a hand-built reference."""
    import evaluate
    from collections import Counter
    from data.iu_xray import write_r2gen_annotation
    from data.phantom import phantom_split
    from data.reports import r2gen_normalize
    from metrics.text import bleu
    phantoms = phantom_split("train", 16, 96)
    written = write_r2gen_annotation(tmp_path / "r2gen", [phantoms[i] for i in range(16)])
    T.main(["--phase", "1", "--out", str(tmp_path / "run"), "train.stop_after_steps=1", *SMALL,
            "data.source=iu_xray_r2gen", f"data.annotation={written['annotation']}",
            f"data.root={written['image_root']}", "phases.phase1.batch_size=4",
            "phases.phase1.effective_batch_size=4", "eval.bertscore_model="])
    metrics = evaluate.main([str(tmp_path / "run" / "last.pt"), "--num-beams", "1", "--max-length", "8",
                             "eval.meteor=false", "--device", "cpu"])
    annotation = json.loads(written["annotation"].read_text())
    train = [e["report"] for e in annotation["train"]]
    counts = Counter(t for r in train for t in r2gen_normalize(r).split())
    words = {t for t, c in counts.items() if c >= 3}
    assert metrics["r2gen/vocabulary_size"] == len(words) + 1      # (a 1-step model may write an empty report:
    assert metrics["r2gen/pairs_scored"] + metrics["r2gen/pairs_skipped"] == 4    # skipped and counted)
    assert metrics["r2gen/template_frequent/pairs_scored"] == 4

    def r2gen(text, cut=None):
        tokens = [t if t in words else "<unk>" for t in r2gen_normalize(text).split()]
        return " ".join(tokens[:cut - 1] if cut else tokens)
    frequent = Counter(train).most_common(1)[0][0]
    references = [[r2gen(e["report"], 60)] for e in annotation["test"]]
    expected = bleu([r2gen(frequent)] * len(references), references)
    assert [metrics[f"r2gen/template_frequent/bleu{k}"] for k in (1, 2, 3, 4)] == pytest.approx(expected)
    assert "bleu4" in metrics and "bertscore/f1" not in metrics     # seed 001's normalization beside it


def test_evaluate_checkpoint_with_metrics(tmp_path):
    """Needs metrics/ (metrics helper). Keys of the contract, template baselines, aux AUROC, attention PNGs."""
    pytest.importorskip("metrics.text")
    pytest.importorskip("metrics.clinical")
    pytest.importorskip("metrics.visualize")
    import argparse
    T.main(["--phase", "1", "--out", str(tmp_path / "run"), "train.stop_after_steps=1"] + SMALL)
    checkpoint = torch.load(tmp_path / "run" / "last.pt", map_location="cpu", weights_only=False)
    args = argparse.Namespace(checkpoint="x", split="test", bootstrap=0, visualize=2, images=None,
                              out_dir=str(tmp_path), device="cpu")
    metrics = T.evaluate_checkpoint(checkpoint, args)
    for key in ("bleu1", "bleu4", "rouge1", "rouge2", "rougeL", "cider", "chexbert/micro_f1", "chexbert/micro_f1_5",
                "bertscore/f1", "clinical_rule/micro_f1", "aux/auroc/macro", "template_frequent/chexbert/micro_f1",
                "template_normal/bleu4"):
        assert key in metrics, sorted(metrics)
    assert metrics["bertscore/num_layers"] == 2 and metrics["bertscore/rescaled"] == 0   # tiny-hub/bert-mlm
    assert all(isinstance(v, float) for v in metrics.values())
    assert len(list(tmp_path.glob("cross_attention_*.png"))) == 2
    assert len((tmp_path / "reports_test.jsonl").read_text().splitlines()) == 8


def test_paper_scorers_without_weights_say_what_is_missing(tmp_path, capsys):
    """The paper config's CheXbert and BERTScore weights are not on this machine: one line each says which
    weights are missing and where it looked, the rule labeler's numbers stand alone, nothing reports 0."""
    from metrics.text import text_metrics
    paper = training.load_config(training.REPO_ROOT / "configs" / "chexquery.yaml")
    missing = tmp_path / "chexbert.pth"
    cfg = config(f"eval.chexbert_checkpoint={missing}")
    assert evals.chexquery.chexbert_scores(["No effusion."], ["Small effusion."], {}, cfg, "cpu") == {}
    assert f"CheXbert weights missing at {missing}" in capsys.readouterr().out
    notes = []
    scores = text_metrics(["the heart is normal"], ["the heart is normal"], meteor=False, notes=notes,
                          bertscore_model=paper.eval.bertscore_model)
    assert not any(k.startswith("bertscore/") for k in scores) and scores["bleu1"] > 0.9
    assert len(notes) == 1 and "microsoft/deberta-xlarge-mnli" in notes[0] and "looked in" in notes[0]


def test_ablation_runs_each_variant_and_reuses_finished_runs(tmp_path, capsys):
    fast = [o for o in SMALL if o not in ("eval.final_test=false", "phases.phase1.epochs=2")] + [
        "phases.phase1.epochs=1", "generation.num_beams=1", "generation.min_length=1", "generation.max_length=6",
        "eval.max_samples=4"]
    root = tmp_path / "ablation"
    argv = ["--ablation", str(root), "--variants", "full,no_gate", "--seeds", "0", "eval.meteor=false"] + fast
    summary = T.main(argv)
    for variant in ("full", "no_gate"):
        run = root / variant / "seed0"
        assert (run / "phase1" / "best.pt").exists() and (run / "phase2" / "metrics.json").exists()
        assert set(json.loads((run / "time.json").read_text())) == {"wall_s", "cpu_s"}
        assert len(summary[f"{variant}/clinical_rule/micro_f1"]) == 1
    # each variant's switch reached its run
    assert "use_gate: false" in (root / "no_gate" / "seed0" / "phase2" / "config.yaml").read_text()
    assert "use_gate: true" in (root / "full" / "seed0" / "phase2" / "config.yaml").read_text()
    table = (root / "ablation.md").read_text().splitlines()
    assert [row.split("|")[1].strip() for row in table[2:]] == ["full", "no_gate", "template_frequent (constant)",
                                                                 "template_normal (constant)"]
    # a second call reuses the finished runs (no retraining) and writes the same table
    stamp = (root / "full" / "seed0" / "phase2" / "best.pt").stat().st_mtime_ns
    capsys.readouterr()
    T.main(argv)
    assert (root / "ablation.md").read_text().splitlines() == table
    assert "phase 1 trainable patterns" not in capsys.readouterr().out
    assert (root / "full" / "seed0" / "phase2" / "best.pt").stat().st_mtime_ns == stamp
    with pytest.raises(training.ConfigError, match="unknown"):
        T.main(["--ablation", str(root), "--variants", "full,no_queries"])


def test_ablation_switches():
    """Each ablation row changes exactly its own setting (seed §9's three contributions)."""
    full = config(*T.ABLATIONS["full"])
    xavier, no_aux, no_gate = (config(*T.ABLATIONS[v]) for v in ("no_bert_init", "no_aux_loss", "no_gate"))
    assert full.model.condition_init == "bert" and xavier.model.condition_init == "xavier"
    assert full.phases.phase1.lambda_aux > 0 and full.phases.phase2.lambda_aux > 0
    assert no_aux.phases.phase1.lambda_aux == 0.0 == no_aux.phases.phase2.lambda_aux
    assert full.model.use_gate is True and no_gate.model.use_gate is False
    def leaves(tree, prefix=""):
        out = {}
        for k, v in tree.items():
            out.update(leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out
    base = leaves(full.to_dict())
    expected = {"no_bert_init": {"model.condition_init"}, "no_gate": {"model.use_gate"},
                "no_aux_loss": {"phases.phase1.lambda_aux", "phases.phase2.lambda_aux"}}
    for name, variant in zip(("no_bert_init", "no_aux_loss", "no_gate"), (xavier, no_aux, no_gate)):
        assert {k for k, v in leaves(variant.to_dict()).items() if base[k] != v} == expected[name]
