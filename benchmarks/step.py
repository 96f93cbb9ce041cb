"""Step benchmark: each system's training step at the size its config gives, random weights, synthetic batches.

    python -m benchmarks.step all --steps 20 --json runs/bench/step.json     # the five paper configs
    python -m benchmarks.step chexquery --phase 1,2 --steps 20                 # one system, its phases
    python -m benchmarks.step patch_ib --variants default,compile,fused_adamw  # speed options side by side
    python -m benchmarks.step wsrpn_vl --config configs/tiny/wsrpn_vl.yaml --steps 2 --warmup 1   # tiny

What runs is the script's own step (train_<system>.train_step, CheXQuery's micro_step x accumulation, then
training.optimizer_step: autocast, GradScaler, clipping), on the model its build_model makes with
`model.pretrained=false` (nothing downloaded), frozen as the phase freezes it, with AdamW over what trains.
The batches have the shapes of the config (batch size, image size, frames, accumulation); text is a fixed
chest-report paragraph cut to SYNTHETIC_WORDS words, so token counts are those of a typical report (printed).

Per variant, in one process so the rows compare: samples/s (images, clips or pairs per optimizer step / median
step time), ms/step median and p90, peak memory (CUDA max_memory_allocated of the timed steps; on CPU the
process's peak RSS, model build included), model FLOPs per step (torch.utils.flop_counter over one step:
matrix products, convolutions and attention, forward + backward), achieved TFLOP/s and MFU = achieved /
PEAK_TFLOPS of the device (dense bf16 tensor-core peak from the vendor's data sheet; on an unknown device
and on CPU no MFU is given). Variants: default (train.dtype auto: bf16 autocast on CUDA, float32 on CPU), fp32
(no autocast), and the training switches train.fused_adamw (torch's fused CUDA AdamW), train.compile
(torch.compile of the step's model) and train.channels_last (CNN systems: channels-last weights), each set
alone, exactly as a training run sets them (training.step_module, training.fused_adamw). CheXQuery adds generation: reports/s of beam search with the
config's beam settings, min_length = max_length = --gen-tokens so every report has the same length.
"""
import argparse
import importlib
import json
import os
import resource
import statistics
import time
from pathlib import Path

import torch

import training

SYSTEMS = ["chexquery", "wsrpn_vl", "concept_cam", "patch_ib", "video_clip"]
SCRIPTS = {"chexquery": "train_chexquery", "wsrpn_vl": "train_wsrpn_vl", "concept_cam": "train_concept_cam",
           "patch_ib": "train_patch_ib", "video_clip": "train_video_clip"}
DEFAULT_PHASE = {"chexquery": "1", "wsrpn_vl": "3", "concept_cam": "1", "patch_ib": "local", "video_clip": "train"}
CNN_SYSTEMS = {"wsrpn_vl", "video_clip"}      # channels_last applies (DenseNet-121, the 3D CNN)

# dense (no sparsity) bf16 tensor-core peak, TFLOP/s, from NVIDIA's data sheets; matched against the device name
PEAK_TFLOPS = [("H200", 989.4), ("H100 PCIe", 756.0), ("H100", 989.4), ("A100", 312.0), ("L40S", 362.0),
               ("L4", 121.0), ("A10G", 70.0), ("V100", 125.0)]

REPORT = ("The heart size is normal. The mediastinal and hilar contours are within normal limits. There is "
          "mild bibasilar atelectasis. No focal consolidation, pleural effusion or pneumothorax is seen. "
          "Degenerative changes of the thoracic spine are noted. There is a small left pleural effusion with "
          "adjacent opacity that may reflect atelectasis, although infection cannot be excluded. The "
          "pulmonary vasculature is not engorged. Surgical clips project over the right upper quadrant. "
          "Impression: no acute cardiopulmonary process; small left effusion.")
SYNTHETIC_WORDS = {"chexquery": 40, "patch_ib": 60}   # IU X-ray reports ~40 words; MIMIC findings + impression ~60


def peak_tflops(device):
    if device.type != "cuda":
        return None, "CPU: no MFU (no stated peak)"
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_TFLOPS:
        if key in name:
            return value, f"{name}: dense bf16 peak {value} TFLOP/s"
    return None, f"{name}: not in PEAK_TFLOPS, no MFU"


def report_text(words):
    tokens = (REPORT.split() * (words // len(REPORT.split()) + 1))[:words]
    return " ".join(tokens)


# ----------------------------------------------------------------------------------------------------------
# one adapter per system: -> dict(model, step(batch, step), batch(), samples, note); each calls the script's
# own build_model, freezing table and training step

def bench_chexquery(script, cfg, phase, device, ctx, scaler):
    from transformers import AutoTokenizer
    from hub.pretrained import load_hf
    phase = int(phase)
    p, accum = script.phase_settings(cfg, phase)
    model = script.build_model(cfg).to(device)
    trainable = training.set_trainable(model, script.trainable_patterns(model, phase), verbose=False)
    optimizer = training.adamw(model, p.lr, cfg.train, device, lr_scales=script.lr_scales(p))
    # paper tokenizer (T5's) is not on disk offline: the tiny hub's T5 tokenizer, ids inside T5's vocabulary
    tokenizer = (script.load_tokenizer_for(cfg) if cfg.model.pretrained else load_hf(AutoTokenizer, "tiny-hub/t5-span"))
    prompt = script.prompt_prefix(cfg.data.prompt_template)
    run = training.step_module(model, device, cfg.train)   # train.compile / channels_last as in training
    size, b = cfg.data.image_size, p.batch_size
    text = report_text(SYNTHETIC_WORDS["chexquery"])

    def batch():
        return [{"image": torch.rand(b, 3, size, size), "report": [text] * b,
                 "labels": torch.randint(0, 2, (b, 14)).float()} for _ in range(accum)]

    def step(micro_batches, index):
        for micro, mb in enumerate(micro_batches):
            script.micro_step(run, mb, scaler, ctx, cfg, p, accum, tokenizer, prompt, device, index, micro)
        training.optimizer_step(optimizer, scaler, trainable, cfg.train.grad_clip, index)

    tokens = len(tokenizer(prompt + text).input_ids)
    return dict(model=model, step=step, batch=batch, samples=b * accum, tokenizer=tokenizer,
                note=f"phase {phase}: micro-batch {b} x {accum}, {size} px, {tokens} target tokens")


def bench_wsrpn_vl(script, cfg, phase, device, ctx, scaler):
    from models.vl_losses import ContrastiveVLLoss
    epoch = {"1": 0, "2": cfg.loss.warmup_epochs, "3": cfg.loss.gaussian_start_epoch}[str(phase)]
    text_encoder = script.build_text_encoder(cfg).to(device)
    model = script.build_model(cfg, text_encoder.hidden_size).to(device)
    weights = script.build_scheduler(cfg).weights(epoch)
    contrastive = ContrastiveVLLoss(cfg.loss.contrastive_temperature)
    trainable = training.set_trainable(model, script.trainable_patterns(cfg), verbose=False)
    optimizer = script.build_optimizer(model, cfg, device)
    run = training.step_module(model, device, cfg.train)   # train.compile / channels_last as in training
    b, size, classes = cfg.train.batch_size, cfg.data.image_size, list(cfg.data.classes)

    def batch():
        labels = (torch.rand(b, len(classes) + 1) < 0.2).float()
        captions = [", ".join(c for c, on in zip(classes, row) if on) or "No Finding" for row in labels.tolist()]
        return {"image": torch.rand(b, 3, size, size), "labels": labels, "caption": captions}

    def step(data, index):
        script.train_step(run, data, optimizer, scaler, trainable, ctx, cfg, weights, text_encoder, contrastive,
                          device, index)

    return dict(model=model, step=step, batch=batch, samples=b,
                note=f"phase {weights['phase']}: {b} images x {cfg.train.n_views} views, {size} px")


def bench_concept_cam(script, cfg, phase, device, ctx, scaler):
    from data.labels import VINDR_CONCEPTS, VINDR_DISEASES
    stage = int(phase)
    cfg.data["dataset"] = "vindr"                 # the synthetic batch carries VinDr-style boxes
    model = script.build_model(cfg, pretrained=False).to(device)
    stage_cfg = cfg[f"stage{stage}"]
    freeze = stage == 1 and stage_cfg.freeze_backbone
    trainable = training.set_trainable(model, script.trainable_patterns(stage, freeze, cfg.stage3.task_head),
                                       verbose=False)
    optimizer = script.build_optimizer(model, cfg, stage, device)
    run = training.step_module(model, device, cfg.train)   # train.compile / channels_last as in training
    grid = model.backbone.patch_embed.grid_size
    b, size, K = cfg.train.batch_size, cfg.model.image_size, len(VINDR_CONCEPTS)
    pos_weight = torch.ones(K, device=device) if stage < 3 else torch.ones(len(VINDR_DISEASES), device=device)

    def batch():
        corner = torch.rand(b, 2, 2) * size / 2
        boxes = [torch.cat([c, c + size / 4], dim=1) for c in corner]            # two boxes per image
        return {"image": torch.rand(b, 3, size, size), "concepts": (torch.rand(b, K) < 0.2).float(),
                "diseases": (torch.rand(b, len(VINDR_DISEASES)) < 0.2).float(), "boxes": boxes,
                "box_labels": [torch.randint(0, K, (2,)) for _ in range(b)]}

    def step(data, index):
        script.train_step(run, data, optimizer, scaler, trainable, ctx, cfg, stage, pos_weight, grid, device, index)

    return dict(model=model, step=step, batch=batch, samples=b, note=f"stage {stage}: {b} images, {size} px")


def bench_patch_ib(script, cfg, phase, device, ctx, scaler):
    spec = training.Config(name=phase, **cfg.phases[phase])
    model = script.build_model(cfg).to(device)
    trainable = training.set_trainable(model, script.phase_patterns(model, phase), verbose=False)
    optimizer = training.adamw(model, spec.lr, cfg.train, device)
    run = training.step_module(model, device, cfg.train)   # train.compile / channels_last as in training
    b, size = cfg.train.batch_size, cfg.data.image_size
    text = report_text(SYNTHETIC_WORDS["patch_ib"])

    def batch():
        return {"image": torch.rand(b, 3, size, size), "report": [text] * b}

    def step(data, index):
        script.train_step(run, data, optimizer, scaler, trainable, ctx, cfg, spec, device, index)

    tokens = int(model.tokenize([text])[1].sum())
    return dict(model=model, step=step, batch=batch, samples=b,
                note=f"phase {phase}, variant {cfg.model.variant}: {b} pairs, {size} px, {tokens} text tokens "
                     f"(padded to {cfg.model.max_text_length} where the tower pads)")


def bench_video_clip(script, cfg, phase, device, ctx, scaler):
    model = script.build_model(cfg).to(device)
    trainable = training.set_trainable(model, script.TRAINABLE, verbose=False)
    optimizer = training.adamw(model, cfg.train.lr, cfg.train, device)
    run = training.step_module(model, device, cfg.train)   # train.compile / channels_last as in training
    m, d = cfg.model, cfg.data
    b, T, size = cfg.train.batch_size, d.num_frames, d.image_size

    def batch():
        return {"video": torch.rand(b, 3, T, size, size), "attn_map": torch.rand(b, m.attn_in_channels, T, size, size),
                "label": torch.randint(0, m.model_class_num, (b,))}

    def step(data, index):
        script.train_step(run, data, optimizer, scaler, trainable, ctx, cfg, device, index)

    return dict(model=model, step=step, batch=batch, samples=b,
                note=f"{b} clips x {T} frames, {size} px, backbone {m.clip_backbone}")


ADAPTERS = {"chexquery": bench_chexquery, "wsrpn_vl": bench_wsrpn_vl, "concept_cam": bench_concept_cam,
            "patch_ib": bench_patch_ib, "video_clip": bench_video_clip}


# ----------------------------------------------------------------------------------------------------------
# measuring

def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def count_flops(bench, device):
    """Model FLOPs of one training step (forward + backward of every micro-batch), counted by torch."""
    from torch.utils.flop_counter import FlopCounterMode
    data = bench["batch"]()
    counter = FlopCounterMode(display=False)
    with counter:
        bench["step"](data, 0)
    _sync(device)
    return counter.get_total_flops()


def measure(system, cfg, phase, variant, steps, warmup, device, flops=None, gen_tokens=0):
    """Build, warm up, time `steps` steps of one variant; -> dict of figures."""
    cfg = training.Config.wrap(cfg.to_dict())
    cfg.train["dtype"] = "float32" if variant == "fp32" else cfg.train.dtype
    cfg.train["compile"] = variant == "compile"
    cfg.train["channels_last"] = variant == "channels_last"
    cfg.train["fused_adamw"] = variant == "fused_adamw"
    device, ctx, scaler, dtype = training.setup_device(str(device), cfg.train.dtype)
    torch.manual_seed(0)
    script = importlib.import_module(SCRIPTS[system])
    bench = ADAPTERS[system](script, cfg, phase, device, ctx, scaler)
    model = bench["model"]
    model.train()
    if flops is None and variant == "default":
        flops = count_flops(bench, device)
    batches = [bench["batch"]() for _ in range(2)]                              # reused: no data cost in the timing
    started = time.perf_counter()
    for i in range(warmup):
        bench["step"](batches[i % 2], i)
    _sync(device)
    warmup_s = time.perf_counter() - started
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i in range(steps):
        _sync(device)
        t0 = time.perf_counter()
        bench["step"](batches[i % 2], warmup + i)
        _sync(device)
        times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    p90 = sorted(times)[round(0.9 * (len(times) - 1))]
    row = {"system": system, "phase": str(phase), "variant": variant, "dtype": dtype, "device": device_name(device),
           "note": bench["note"], "samples_per_step": bench["samples"], "steps": steps, "warmup": warmup,
           "warmup_s": round(warmup_s, 2), "ms_per_step_median": round(median * 1e3, 2),
           "ms_per_step_p90": round(p90 * 1e3, 2), "samples_per_s": round(bench["samples"] / median, 2),
           "parameters": sum(p.numel() for p in model.parameters()),
           "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)}
    if device.type == "cuda":
        row["peak_memory_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    else:
        row["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    if flops:
        row["tflop_per_step"] = round(flops / 1e12, 4)
        row["tflops_achieved"] = round(flops / median / 1e12, 2)
        peak, _ = peak_tflops(device)
        if peak and dtype != "float32":
            row["mfu"] = round(flops / median / 1e12 / peak, 4)
    if gen_tokens and system == "chexquery" and variant == "default":
        row.update(generation_speed(bench, cfg, device, ctx, gen_tokens))
    del bench, model, batches
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row, flops


@torch.no_grad()
def generation_speed(bench, cfg, device, ctx, tokens):
    """reports/s of beam search (config's beams, no_repeat_ngram_size, length_penalty) on eval.batch_size images,
    every report exactly `tokens` long (min_length = max_length)."""
    from evals.chexquery import generate_reports
    model = bench["model"].eval()
    g = training.Config.wrap(cfg.to_dict())
    g.generation.min_length = g.generation.max_length = tokens
    b = cfg.eval.batch_size
    images = torch.rand(b, 3, cfg.data.image_size, cfg.data.image_size)
    generate_reports(model, images[:2], bench["tokenizer"], g, device, ctx)   # warm-up
    _sync(device)
    t0 = time.perf_counter()
    generate_reports(model, images, bench["tokenizer"], g, device, ctx)
    _sync(device)
    seconds = time.perf_counter() - t0
    model.train()
    return {"generation_reports_per_s": round(b / seconds, 2), "generation_batch": b,
            "generation_tokens": tokens, "generation_beams": cfg.generation.num_beams}


def device_name(device):
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"


# ----------------------------------------------------------------------------------------------------------
# command line

def run(system, config, overrides, phases, variants, steps, warmup, device, gen_tokens, rows, json_path=None):
    cfg = training.load_config(config or f"configs/{system}.yaml", overrides)
    if cfg.get("system") != system:
        raise training.ConfigError(f"{config}: system is {cfg.get('system')!r}, expected {system!r}")
    if "pretrained" in cfg.model and cfg.model.get("tower") != "tiny":
        cfg.model["pretrained"] = False         # random weights, nothing downloaded (tiny hub towers load)
    for phase in phases or [DEFAULT_PHASE[system]]:
        flops = None
        for variant in variants:
            if variant == "channels_last" and system not in CNN_SYSTEMS:
                continue
            if variant == "fused_adamw" and torch.device(device).type != "cuda":
                continue
            if variant == "fp32" and torch.device(device).type != "cuda":
                continue
            row, flops = measure(system, cfg, phase, variant, steps, warmup, torch.device(device), flops, gen_tokens)
            rows.append(row)
            print(format_row(row), flush=True)
            if json_path:
                training.atomic_write_bytes(json_path, json.dumps(rows, indent=1).encode())
    return rows


def format_row(row):
    memory = (f"{row['peak_memory_gb']} GB CUDA peak" if "peak_memory_gb" in row else f"{row['peak_rss_gb']} GB peak RSS")
    text = (f"{row['system']:<11} {row['phase']:<6} {row['variant']:<13} {row['samples_per_s']:>9.1f} samples/s  "
            f"{row['ms_per_step_median']:>9.1f} ms median  {row['ms_per_step_p90']:>9.1f} p90  {memory}")
    if "tflops_achieved" in row:
        text += f"  {row['tflop_per_step']:.3f} TFLOP/step  {row['tflops_achieved']:.1f} TFLOP/s"
    if "mfu" in row:
        text += f"  MFU {row['mfu']:.1%}"
    if "generation_reports_per_s" in row:
        text += f"  generation {row['generation_reports_per_s']:.1f} reports/s"
    return text + f"  [{row['note']}]"


def markdown_table(rows):
    """The rows as the table of docs/benchmarks.md."""
    lines = ["| system, phase | variant | batch / step | samples/s | ms/step median (p90) | peak memory GB | "
             "TFLOP/step | TFLOP/s | MFU |", "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        memory = r.get("peak_memory_gb", r.get("peak_rss_gb"))
        mfu = f"{r['mfu']:.1%}" if "mfu" in r else "-"
        lines.append(f"| {r['system']} {r['phase']} | {r['variant']} ({r['dtype']}) | {r['note']} | "
                     f"{r['samples_per_s']:.2f} | {r['ms_per_step_median']:.0f} ({r['ms_per_step_p90']:.0f}) | "
                     f"{memory} | {r.get('tflop_per_step', '-')} | {r.get('tflops_achieved', '-')} | {mfu} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("system", choices=[*SYSTEMS, "all"])
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    parser.add_argument("--config", default=None, help="default: configs/<system>.yaml (the paper config)")
    parser.add_argument("--phase", default=None, help="phase / stage list, comma-separated (default: "
                        + ", ".join(f"{k} {v}" for k, v in DEFAULT_PHASE.items()) + ")")
    parser.add_argument("--variants", default="default,fp32,fused_adamw,channels_last",
                        help="default, fp32, fused_adamw, compile, channels_last (those that do not apply are "
                             "left out: fp32 and fused_adamw need CUDA, channels_last a CNN)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compile happens here)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--gen-tokens", type=int, default=96, help="CheXQuery generation length (0: skip)")
    parser.add_argument("--json", default=None, help="write the rows here (rewritten after each row)")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
    if args.system == "all" and (args.config or args.phase or args.overrides):
        parser.error("with all, each system runs its paper config and default phase; give one system instead")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - {"default", "fp32", "fused_adamw", "compile", "channels_last"})
    if unknown:
        parser.error(f"unknown --variants {unknown}")
    device = torch.device(args.device)
    print(f"{device_name(device)}; {peak_tflops(device)[1]}; torch {torch.__version__}", flush=True)
    phases = args.phase.split(",") if args.phase else None
    rows = []
    for system in SYSTEMS if args.system == "all" else [args.system]:
        run(system, args.config, args.overrides, phases, variants, args.steps, args.warmup, args.device,
            args.gen_tokens, rows, Path(args.json) if args.json else None)
    print(markdown_table(rows))
    return rows


if __name__ == "__main__":
    training.run_cli(main, "benchmarks/step.py")
