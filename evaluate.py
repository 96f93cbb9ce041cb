"""Evaluate any checkpoint of the five systems: one entry point, the system is read from the checkpoint.

    python evaluate.py --checkpoint runs/wsrpn_vl/<run>/best.pt --split test --bootstrap 250 --visualize 8
    python evaluate.py runs/chexquery/<run>/best.pt --images my_xrays/ --device cpu     # positional works too
    python evaluate.py runs/chexquery/<run>/best.pt --num-beams 1 --max-length 120 eval.max_samples=200
    python evaluate.py runs/chexquery/<run>/best.pt --export-full best_full.pt   # a self-contained copy

What it does: loads the checkpoint (training.load_checkpoint, no RNG restore), reads
checkpoint["config"]["system"] (wsrpn_vl | chexquery | concept_cam | video_clip | patch_ib), imports
train_<system>.py and calls its `evaluate_checkpoint(checkpoint, args)`. args carries .checkpoint (str),
.split, .bootstrap (0 = off), .visualize (N PNGs), .images (path or None), .out_dir, .device. The system
returns a flat dict of floats; this script prints it as a table and writes it atomically as JSON beside
the checkpoint:
- metrics.json for best.pt on --split test (the file the train scripts write at the end of training;
  re-running evaluate.py on best.pt reproduces it), metrics_<split>.json for another split, metrics_<stem>.json
  for another checkpoint (metrics_last.json), metrics_images.json with --images; --output PATH overrides.
  Each file starts with "checkpoint" and "checkpoint_step": what it scored.
- PNGs and per-image outputs (--visualize, --images) go to RUN/vis/ (created; --out-dir overrides).
Settings for this evaluation only: `key=value` items (as the train scripts take them) override the
checkpoint's config, except model.* (the weights fix the model); --num-beams, --max-length (generation.*),
--batch-size and --max-samples (eval.*) are short names for the common ones. With overrides the default
output is metrics_<split>_<settings>.json, so the run's own metrics.json is left as training wrote it.
Checkpoints leave out the weights frozen in every phase that came from a named pretrained source (CheXQuery's
SigLIP and Flan-T5 bases; training.frozen_pretrained): they name the source and a fingerprint, and the model
is rebuilt from that source, whose weights must match the fingerprint. --export-full OUT.pt evaluates nothing:
it writes a copy of the checkpoint holding every weight, which loads without the sources (a checkpoint that
already holds them all is copied as it is).
Errors are one line each: missing file, checkpoint without config / system, unknown system, a system
without evaluate_checkpoint, a pretrained source that cannot be loaded or does not match the checkpoint's
fingerprint, or a non-numeric metric value.
"""
import argparse
import importlib
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


SHORT_OVERRIDES = {"--num-beams": "generation.num_beams", "--max-length": "generation.max_length",
                   "--batch-size": "eval.batch_size", "--max-samples": "eval.max_samples"}


class EvaluationError(RuntimeError):
    """One clear, user-facing problem with the checkpoint or the system's evaluation."""


def known_systems():
    return sorted(p.stem[len("train_"):] for p in ROOT.glob("train_*.py"))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("items", nargs="*", metavar="CHECKPOINT|key=value",
                        help="checkpoint (.pt; same as --checkpoint) and config overrides for this evaluation, "
                             "e.g. generation.num_beams=1 eval.max_samples=100")
    parser.add_argument("--checkpoint", help="checkpoint (.pt) written by a train_<system>.py")
    parser.add_argument("--split", default="test", choices=("val", "test"))
    parser.add_argument("--bootstrap", type=int, default=0, help="bootstrap resamples over images (0 = off)")
    parser.add_argument("--visualize", type=int, default=0, help="number of PNG figures to write")
    parser.add_argument("--images", default=None, help="a file or folder of user images to run inference on")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:1 ...")
    parser.add_argument("--out-dir", dest="out_dir", default=None, help="folder for PNGs (default RUN/vis)")
    parser.add_argument("--output", default=None, help="metrics JSON path (default beside the checkpoint)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--export-full", dest="export_full", default=None, metavar="OUT.pt",
                        help="write a copy of the checkpoint holding every weight (the frozen pretrained ones "
                             "included) to OUT.pt, and evaluate nothing")
    for flag, key in SHORT_OVERRIDES.items():
        parser.add_argument(flag, type=int, default=None, metavar="N", help=f"sets {key}")
    args = parser.parse_intermixed_args(argv)
    paths = [x for x in args.items if "=" not in x or Path(x).is_file()]
    args.overrides = [x for x in args.items if x not in paths]
    args.overrides += [f"{key}={getattr(args, flag[2:].replace('-', '_'))}" for flag, key in SHORT_OVERRIDES.items()
                       if getattr(args, flag[2:].replace("-", "_")) is not None]
    if len(paths) > 1:
        parser.error(f"more than one checkpoint given: {', '.join(paths)} (overrides are key=value)")
    if args.export_full and args.overrides:
        parser.error("--export-full copies the checkpoint as it is: it takes no key=value settings")
    fixed = [x for x in args.overrides if x.startswith(("model.", "system="))]
    if fixed:
        parser.error(f"{fixed[0]}: the model comes from the checkpoint's weights; only data.*, eval.*, "
                     "generation.* and train.* settings can change for an evaluation")
    args.checkpoint_path = paths[0] if paths else None
    if args.checkpoint and args.checkpoint_path and args.checkpoint != args.checkpoint_path:
        parser.error(f"two different checkpoints given: {args.checkpoint_path} and --checkpoint {args.checkpoint}")
    args.checkpoint = args.checkpoint or args.checkpoint_path
    if not args.checkpoint:
        parser.error("give a checkpoint: python evaluate.py --checkpoint RUN/best.pt")
    if args.bootstrap < 0 or args.visualize < 0:
        parser.error("--bootstrap and --visualize must be >= 0")
    return args


def load(path):
    """checkpoint path -> (checkpoint dict, system name)."""
    import training
    path = Path(path)
    if not path.is_file():
        raise EvaluationError(f"checkpoint not found: {path}")
    try:
        checkpoint = training.load_checkpoint(path, restore_rng=False)
    except Exception as error:                                   # not a torch file, truncated, ...
        raise EvaluationError(f"{path}: cannot be read as a checkpoint ({type(error).__name__}: {error})") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("config"), dict):
        raise EvaluationError(f"{path}: no 'config' dict inside; expected a checkpoint written by "
                              "training.save_checkpoint (keys model, config, step, ...)")
    system = checkpoint["config"].get("system")
    if not system:
        raise EvaluationError(f"{path}: config has no 'system' key; expected one of {', '.join(known_systems())}")
    return checkpoint, str(system)


def system_module(system):
    try:
        module = importlib.import_module(f"train_{system}")
    except ModuleNotFoundError as error:
        if error.name != f"train_{system}":
            raise                                                # the system exists but misses a package
        raise EvaluationError(f"unknown system {system!r} in the checkpoint's config; this repository has "
                              f"{', '.join(known_systems())} (train_<system>.py at the root)") from None
    if not callable(getattr(module, "evaluate_checkpoint", None)):
        raise EvaluationError(f"train_{system}.py has no evaluate_checkpoint(checkpoint, args) function")
    return module


def check_metrics(metrics, system):
    if not isinstance(metrics, dict):
        raise EvaluationError(f"train_{system}.evaluate_checkpoint returned {type(metrics).__name__}, expected a dict")
    clean = {}
    for key, value in metrics.items():
        if isinstance(value, bool) or (not isinstance(value, (int, float)) and not hasattr(value, "__float__")):
            raise EvaluationError(f"train_{system}.evaluate_checkpoint: metric {key!r} = {value!r} is not a number")
        clean[str(key)] = float(value)
    return clean


def format_table(metrics, title):
    width = max([len("metric")] + [len(k) for k in metrics])
    lines = [title, f"| {'metric'.ljust(width)} | value      |", f"|{'-' * (width + 2)}|------------|"]
    for key in sorted(metrics):
        value = metrics[key]
        text = "nan" if math.isnan(value) else f"{value:.4f}" if abs(value) < 1e5 else f"{value:.4g}"
        lines.append(f"| {key.ljust(width)} | {text.rjust(10)} |")
    return "\n".join(lines)


def output_path(args, checkpoint_path):
    if args.output:
        return Path(args.output)
    if args.images:
        return Path(checkpoint_path).parent / "metrics_images.json"
    stem = Path(checkpoint_path).stem
    parts = [] if stem == "best" else [stem]                 # the run's own metrics.json is best.pt's
    if args.split != "test" or args.overrides:
        parts.append(args.split)
    if args.overrides:
        settings = "_".join(item.split("=", 1)[0].split(".")[-1] + item.split("=", 1)[1] for item in args.overrides)
        parts.append("".join(c if c.isalnum() or c in "._-" else "-" for c in settings))
    name = "_".join(["metrics", *parts]) + ".json"
    return Path(checkpoint_path).parent / name


def export_full(args):
    """--export-full: the checkpoint with every weight, written to args.export_full. -> its path."""
    import training
    source, target = Path(args.checkpoint), Path(args.export_full)
    if target.exists() and target.resolve() == source.resolve():
        raise EvaluationError(f"--export-full {target} is the checkpoint itself; give another file")
    checkpoint, system = load(source)
    if not checkpoint.get("frozen"):
        training.atomic_write_bytes(target, source.read_bytes())
        print(f"{source} holds every weight already: copied to {target}")
        return target
    build = getattr(system_module(system), "model_for_checkpoint", None)
    if build is None:
        raise EvaluationError(f"{source} leaves out frozen pretrained weights, but train_{system}.py has no "
                              "model_for_checkpoint(checkpoint, args) to rebuild them")
    _, model, _, _ = build(checkpoint, argparse.Namespace(checkpoint=str(source), device="cpu", overrides=[]))
    training.export_full(checkpoint, model, target)
    sources = ", ".join(sorted({group["source"] for group in checkpoint["frozen"].values()}))
    print(f"wrote {target} ({target.stat().st_size / 2**20:.1f} MiB; {source}: {source.stat().st_size / 2**20:.1f} "
          f"MiB) with the frozen weights of {sources}: it loads without them")
    return target


def main(argv=None):
    args = parse_args(argv)
    import training
    from hub.pretrained import PretrainedLoadError
    if args.export_full:
        try:
            return export_full(args)
        except (EvaluationError, training.ConfigError, PretrainedLoadError) as error:
            sys.exit(f"evaluate.py: {error}")
    try:
        checkpoint, system = load(args.checkpoint)
        module = system_module(system)
        out_dir = Path(args.out_dir) if args.out_dir else Path(args.checkpoint).parent / "vis"
        out_dir.mkdir(parents=True, exist_ok=True)
        call_args = argparse.Namespace(checkpoint=str(args.checkpoint), split=args.split, bootstrap=args.bootstrap,
                                       visualize=args.visualize, images=args.images, out_dir=str(out_dir),
                                       device=args.device, overrides=list(args.overrides))
        if args.images and not Path(args.images).exists():
            raise EvaluationError(f"--images {args.images}: no such file or folder")
        training.seed_everything(args.seed)
        metrics = check_metrics(module.evaluate_checkpoint(checkpoint, call_args), system)
    except (EvaluationError, training.ConfigError, PretrainedLoadError) as error:
        sys.exit(f"evaluate.py: {error}")
    target = output_path(args, args.checkpoint)
    what = f"--images {args.images}" if args.images else f"split {args.split}"
    what += "".join(f", {item}" for item in args.overrides)
    print(format_table(metrics, f"{system}: {args.checkpoint} ({what}, bootstrap {args.bootstrap})"))
    training.write_metrics(target, metrics, args.checkpoint, checkpoint.get("step"))
    print(f"wrote {target}" + (f"; figures in {out_dir}" if args.visualize or args.images else ""))
    return metrics


if __name__ == "__main__":
    main()
