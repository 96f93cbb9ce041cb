"""Evaluation of CheXQuery-MedVLM: generated reports scored against the references (docs/chexquery.md).

    metrics = evaluate(model, dataset, cfg, device, ctx, prefix, visualize, out_dir, tokenizer=, targets_of=, ...)
    metrics = predict_user_images(model, cfg, images, out_dir, device, ctx, tokenizer=)   # generated_reports.jsonl
    generate_reports(model, images, tokenizer, cfg, device, ctx) -> (B report strings, model outputs)

Keys (docs/metrics.md says how each is computed and which published convention it follows):
- bleu1..4, rouge1, rouge2, rougeL, meteor, cider on seed 001 §8.4's normalization (metrics/text.py);
  bertscore/precision|recall|f1 through the bert-score package with eval.bertscore_model (metrics/text_model.py);
- r2gen/...: the same text metrics under R2Gen's protocol (its cleaning, <unk> for words seen fewer than
  eval.r2gen_threshold times in the training reports, references cut to eval.r2gen_max_seq_length), only
  when the data is the R2Gen split (data.source=iu_xray_r2gen), so they stand beside published IU numbers;
- chexbert/...: clinical efficacy from CheXbert labels of both sides (eval.chexbert_checkpoint: the published
  weights, or tiny-hub/chexbert at tiny scale; models/chexbert.py), uncertain rule eval.chexbert_uncertain;
  without loadable weights a printed line says which are missing and where it looked, and no chexbert/ key;
- clinical_rule/... (the project's rule labeler on both sides, metrics/clinical.py); template_frequent/...
  and template_normal/... (constant-report baselines on the same references); aux/auroc/... (the
  auxiliary head against the dataset's labels).
Decoding follows cfg.generation (seed 001 §4.6: beams, no-repeat n-gram, length penalty, min / max length).
"""
import json
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from data.labels import CHEXPERT_LABELS
from data.loader import epoch_loader
from metrics.classification import classification_metrics
from metrics.clinical import chexbert_metrics, clinical_metrics
from metrics.text import NORMAL_REPORT, R2GenVocabulary, frequent_report, template_baselines, text_metrics
from models.text_decoder import prompt_prefix


def text_settings(cfg, device):
    """cfg.eval -> text_metrics keyword arguments (METEOR, BERTScore model / layer / rescaling)."""
    e = cfg.eval
    return {"meteor": e.meteor, "bertscore_model": e.get("bertscore_model") or None,
            "bertscore_layers": e.get("bertscore_layers"), "bertscore_rescale": bool(e.get("bertscore_rescale")),
            "bertscore_device": str(device)}


def r2gen_protocol(predictions, raw_references, raw_train_reports, cfg):
    """R2Gen's scoring (cuhksz-nlp/R2Gen): r2gen/<metric> for the model and the two template baselines."""
    vocabulary = R2GenVocabulary(raw_train_reports, threshold=cfg.eval.get("r2gen_threshold", 3))
    cut = cfg.eval.get("r2gen_max_seq_length", 60)
    scores = text_metrics(predictions, raw_references, "r2gen", meteor=cfg.eval.meteor, r2gen_vocabulary=vocabulary,
                          max_seq_length=cut, rouge_score=False)
    scores.update(template_baselines(raw_train_reports, raw_references, normalization="r2gen", clinical=False,
                                     r2gen_vocabulary=vocabulary, max_seq_length=cut))
    scores["vocabulary_size"] = float(len(vocabulary))
    return {f"r2gen/{k}": v for k, v in scores.items()}


def chexbert_scores(predictions, references, templates, cfg, device):
    """CheXbert CE of the predictions and of each constant template {name: report} against the references
    (chexbert/... and <name>/chexbert/...), or {} with one printed line saying why the labeler did not run."""
    from evals.chexbert_labels import build_labeler, chexbert_unavailable
    checkpoint, tokenizer = cfg.eval.get("chexbert_checkpoint"), cfg.eval.get("chexbert_tokenizer")
    uncertain = cfg.eval.get("chexbert_uncertain", "positive")
    reason = chexbert_unavailable(checkpoint, tokenizer)
    if reason:
        print(f"[clinical] {reason}; rule labeler used instead (clinical_rule/..., not CheXbert F1)")
        return {}
    labeler = build_labeler(checkpoint, tokenizer, str(device), cfg.eval.batch_size)
    reference_classes = labeler(references, desc="CheXbert references")
    out = chexbert_metrics(labeler(predictions, desc="CheXbert generated"), reference_classes, uncertain)
    for name, report in templates.items():
        constant = labeler([report]).expand(len(references), -1)
        out.update({f"{name}/{k}": v for k, v in chexbert_metrics(constant, reference_classes, uncertain).items()})
    print(f"[clinical] CheXbert labeler {checkpoint} (uncertain -> {uncertain}): micro-F1 "
          f"{out['chexbert/micro_f1']:.4f}, micro-F1-5 {out['chexbert/micro_f1_5']:.4f}; rule labeler beside it "
          f"under clinical_rule/")
    return out


def generation_settings(cfg):
    return {k: cfg.generation[k] for k in ("num_beams", "no_repeat_ngram_size", "length_penalty", "early_stopping",
                                           "min_length", "max_length")}


@torch.no_grad()
def generate_reports(model, images, tokenizer, cfg, device, ctx):
    """images (B, 3, H, W) -> (list of B report strings, encode dict)."""
    prompt_ids = tokenizer(prompt_prefix(cfg.data.prompt_template), add_special_tokens=False).input_ids
    with ctx:
        tokens, out = model.generate(images.to(device), prompt_ids, generation_settings(cfg))
    return [t.strip() for t in tokenizer.batch_decode(tokens, skip_special_tokens=True)], out


def predict_user_images(model, cfg, path, out_dir, device, ctx, *, tokenizer):
    """Generate a report for each image under `path`; writes generated_reports.jsonl into out_dir."""
    from data.io import read_user_images
    from data.transforms import build_transform
    transform = build_transform(False, cfg.data.image_size)
    rows = []
    pairs, skipped = read_user_images(path)
    for file, pixels in tqdm(pairs, desc="generate", leave=False, disable=None):
        image, _, _ = transform(pixels)                                         # (3, H, W) normalized
        reports, _ = generate_reports(model, image[None], tokenizer, cfg, device, ctx)
        rows.append({"image": str(file), "report": reports[0]})
        print(f"{file}: {reports[0]}")
    target = Path(out_dir) / "generated_reports.jsonl"
    target.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"wrote {target}")
    return {"images/count": float(len(rows)), "images/skipped": float(len(skipped))}


def save_attention_pngs(model, dataset, count, cfg, tokenizer, device, ctx, out_dir):
    """One PNG per image: each of the 20 queries' last-layer cross-attention over the image."""
    from metrics.visualize import attention_grid
    names = [f"C: {n}" for n in model.condition_queries.names] + [f"A: {n}" for n in model.anatomical_queries.names]
    grid = model.vision_encoder.patch_grid
    for i in range(min(count, len(dataset))):
        sample = dataset[i]
        if sample is None:         # left out under data.on_error=skip
            continue
        report, out = generate_reports(model, sample["image"][None], tokenizer, cfg, device, ctx)
        maps = out["attention"][0, -1].float().cpu().view(-1, grid, grid).numpy()   # (N, h, w)
        image = (sample["image"][0].numpy() * 0.5 + 0.5).clip(0, 1)                # (H, W) un-normalized
        attention_grid(image, maps, names, str(Path(out_dir) / f"cross_attention_{i:03d}.png"))


def evaluate(model, dataset, cfg, device, ctx, prefix="", visualize=0, out_dir=None, bootstrap=0, *, tokenizer,
             targets_of, train_reports=None, split="test", r2gen_train_reports=None):
    """Generate for every sample -> the keys above (flat dict, keys with `prefix`). targets_of(batch, cfg) ->
    (B, 14) auxiliary targets. r2gen_train_reports: the raw training reports of the R2Gen split (then the
    dataset's records hold raw_report) -> r2gen/... keys. With out_dir: the generated and reference reports
    in reports_<split>.jsonl and `visualize` cross-attention PNGs. bootstrap: not used."""
    model.eval()
    predictions, references, ids, scores, targets = [], [], [], [], []
    limit = cfg.eval.max_samples or len(dataset)
    for batch in tqdm(epoch_loader(dataset, cfg.eval.batch_size, cfg.train.seed, 0, shuffle=False, drop_last=False),
                      desc="evaluate", leave=False, disable=None):
        reports, out = generate_reports(model, batch["image"], tokenizer, cfg, device, ctx)
        predictions += reports
        references += list(batch["report"])
        ids += list(batch["id"])
        scores.append(torch.sigmoid(out["aux_logits"].float()).cpu())
        targets.append(targets_of(batch, cfg))
        if len(predictions) >= limit:
            break
    predictions, references, ids = predictions[:limit], references[:limit], ids[:limit]
    metrics = dict(text_metrics(predictions, references, **text_settings(cfg, device)))
    metrics.update(clinical_metrics(predictions, references))
    templates = {}
    if train_reports:
        metrics.update(template_baselines(train_reports, references))
        templates = {"template_frequent": frequent_report(train_reports), "template_normal": NORMAL_REPORT}
    metrics.update(chexbert_scores(predictions, references, templates, cfg, device))
    if r2gen_train_reports:
        raw_of = {r["id"]: r["raw_report"] for r in dataset.records}
        metrics.update(r2gen_protocol(predictions, [raw_of[i] for i in ids], r2gen_train_reports, cfg))
    scores, targets = torch.cat(scores)[:limit].numpy(), torch.cat(targets)[:limit].numpy()
    metrics.update(classification_metrics(scores, targets, list(CHEXPERT_LABELS), prefix="aux/"))
    metrics = {prefix + k: float(v) for k, v in metrics.items()
               if isinstance(v, (int, float, np.floating)) and not isinstance(v, bool)}
    if out_dir is not None:
        (Path(out_dir) / f"reports_{split}.jsonl").write_text(
            "".join(json.dumps({"generated": p, "reference": r}) + "\n" for p, r in zip(predictions, references)))
        if visualize:
            save_attention_pngs(model, dataset, visualize, cfg, tokenizer, device, ctx, out_dir)
    return metrics
