"""What all five train_*.py scripts share, and nothing else (STYLE.md habits 2-9, 13).

The training loop itself stays written out in each script; this module holds the pieces around it:

- config: a YAML file, optionally `inherit:`-ing another one, then `a.b=value` overrides (values parsed
  as YAML, type-checked against the existing value; an unknown key is an error listing close matches).
- `seed_everything`: python, numpy and torch (CPU and CUDA) from one integer.
- `setup_device`: device, autocast context and GradScaler. CUDA: bf16 when supported, else fp16 with
  a GradScaler; CPU: fp32 (a `nullcontext`) unless the config asks for bf16. The loop has no branches.
- `set_trainable`: sets `requires_grad` on EVERY parameter from a list of name patterns and prints a
  trainable/frozen table by module. Idempotent, so a phase change is one call.
- `param_groups` / `build_optimizer`: AdamW, weight decay only on >= 2-D tensors that are not named in
  `no_weight_decay` (query/ROI tokens, position embeddings, logit scales), optional per-prefix lr_scale.
- `get_lr` / `set_lr`: warmup + cosine as a pure function of the optimizer step (nothing to checkpoint).
- checkpoints: one dict (model, optimizer, scaler, step, epoch, phase, best_metric, config, RNG states,
  tokenizer files), written atomically (tmp file + os.replace), so `last.pt` is never half written.
  Parameters frozen in every phase that came from a named pretrained source (`frozen_pretrained`) are
  left out: the checkpoint names the source and a SHA-256 fingerprint, and loading takes them from the
  model built from that source after checking the fingerprint (`export_full` writes a self-contained copy).
- `RunLogger`: JSONL lines in `out_dir/log.jsonl` plus one printed line per log interval.
- `check_finite`: raises `NonFiniteLoss` with the step and every loss term, before backward, so the run
  stops without touching the last good checkpoint.
- `run_processes`: the `--jobs` of the comparison tables: python commands as subprocesses, J at a time.
"""
import argparse
import contextlib
import difflib
import fnmatch
import hashlib
import io
import json
import math
import os
import random
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from metrics.summary import strict_json

REPO_ROOT = Path(__file__).resolve().parent


# ----------------------------------------------------------------------------------------------------
# config

class _YamlLoader(yaml.SafeLoader):
    """PyYAML follows YAML 1.1, where `3e-4` is a string; read exponent numbers as floats."""


_YamlLoader.add_implicit_resolver("tag:yaml.org,2002:float",
                                  re.compile(r"^[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+$"),
                                  list("-+0123456789."))


def parse_yaml(text):
    return yaml.load(text, Loader=_YamlLoader)


class ConfigError(ValueError):
    """A config file or override that does not fit the config (unknown key, wrong type, bad YAML)."""


class Config(dict):
    """A nested dict with attribute access: `cfg.train.lr` is `cfg["train"]["lr"]`."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"config has no key {name!r}; keys: {sorted(self)}") from None

    def __setattr__(self, name, value):
        self[name] = value

    @staticmethod
    def wrap(value):
        if isinstance(value, dict):
            return Config({k: Config.wrap(v) for k, v in value.items()})
        if isinstance(value, list):
            return [Config.wrap(v) for v in value]
        return value

    def to_dict(self):
        def plain(v):
            if isinstance(v, dict):
                return {k: plain(x) for k, x in v.items()}
            return [plain(x) for x in v] if isinstance(v, list) else v
        return plain(self)


def flat_items(tree, prefix=""):
    """{'a': {'b': 1}} -> ('a.b', 1), ...: every leaf by its dotted name (an empty dict is a leaf)."""
    for k, v in (tree or {}).items():
        if isinstance(v, dict) and v:
            yield from flat_items(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def flat_keys(tree, prefix=""):
    """{'a': {'b': 1}} -> ['a.b'] (dotted names of every leaf, for errors and overrides)."""
    return [name for name, _ in flat_items(tree, prefix)]


def _read_yaml(path):
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        tree = parse_yaml(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(tree).__name__}")
    parent = tree.pop("inherit", None)
    if parent is None:
        return tree
    base = _read_yaml(path.parent / parent)
    _merge(base, tree, source=str(path))
    return base


def _merge(base, update, source, prefix=""):
    """Write `update` into `base`; every key of `update` must already exist in `base`."""
    for k, v in update.items():
        name = f"{prefix}{k}"
        if k not in base:
            _unknown_key(name, base, prefix, source)
        if isinstance(base[k], dict) and isinstance(v, dict):
            _merge(base[k], v, source, name + ".")
        else:
            base[k] = v


def _unknown_key(name, tree, prefix, source):
    known = [prefix + k for k in flat_keys(tree)] if isinstance(tree, dict) else []
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; known keys here: {', '.join(known[:12])}"
    raise ConfigError(f"{source}: unknown config key {name!r}{hint}")


def _check_type(name, old, new):
    if old is None or new is None:
        return new
    if isinstance(old, bool) != isinstance(new, bool):
        raise ConfigError(f"override {name}: expected a bool like {old!r}, got {new!r}")
    if isinstance(old, float) and isinstance(new, int) and not isinstance(new, bool):
        return float(new)
    if type(old) is not type(new):
        raise ConfigError(f"override {name}: expected {type(old).__name__} like {old!r}, "
                          f"got {type(new).__name__} {new!r}")
    return new


def apply_overrides(cfg, overrides):
    """Apply `a.b=value` strings (value parsed as YAML) to a nested dict, in place."""
    all_keys = flat_keys(cfg)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key.path=value")
        name, text = item.split("=", 1)
        try:
            value = parse_yaml(text) if text != "" else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override {name}: value {text!r} is not valid YAML: {e}") from None
        node, parts = cfg, name.split(".")
        for i, part in enumerate(parts):
            if not isinstance(node, dict) or part not in node:
                close = difflib.get_close_matches(name, all_keys, n=3, cutoff=0.5)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                raise ConfigError(f"unknown config key {name!r}{hint}")
            if i == len(parts) - 1:
                node[part] = Config.wrap(_check_type(name, node[part], value))
            else:
                node = node[part]
    return cfg


# keys (fnmatch over dotted names) whose value must be a number > 0, or >= 0
POSITIVE_KEYS = ("*batch_size", "*.lr", "*image_size", "*log_interval", "*.epochs", "*.steps", "*num_beams",
                 "*max_length", "*grad_clip")
NON_NEGATIVE_KEYS = ("*eval_interval", "*stop_after_steps", "*warmup_steps", "*num_workers", "*weight_decay", "*min_lr")


def check_values(cfg, source="config"):
    """One ConfigError naming the key for a null / 0 / negative value where the loops need a positive number
    (a ZeroDivisionError or TypeError deep in a run otherwise)."""
    for key, value in flat_items(cfg.to_dict() if isinstance(cfg, Config) else cfg):
        for patterns, ok, expected in ((POSITIVE_KEYS, lambda v: v > 0, "a number > 0"),
                                       (NON_NEGATIVE_KEYS, lambda v: v >= 0, "a number >= 0")):
            if any(fnmatch.fnmatchcase(key, p) for p in patterns):
                number = isinstance(value, (int, float)) and not isinstance(value, bool)
                if not number or not ok(value):
                    raise ConfigError(f"{source}: {key} is {value!r}; expected {expected}")


def load_config(path, overrides=()):
    """YAML file (+ `inherit:` parent) + overrides -> Config, its numeric keys checked (check_values); under
    torchrun the training batch sizes must divide by the number of processes (check_batch_sizes)."""
    cfg = apply_overrides(Config.wrap(_read_yaml(path)), list(overrides))
    check_values(cfg, str(path))
    check_batch_sizes(cfg, world_size(), str(path))
    return cfg


def check_batch_sizes(cfg, processes, source="config"):
    """Batch sizes are global: each of the `processes` ranks takes batch_size / processes samples, so every
    training batch size (every `*batch_size` key outside eval.*) must divide by it."""
    if processes == 1:
        return
    for key, value in flat_items(cfg.to_dict() if isinstance(cfg, Config) else cfg):
        if fnmatch.fnmatchcase(key, "*batch_size") and not key.startswith("eval.") and value % processes:
            raise ConfigError(f"{source}: {key} is {value}, which {processes} processes do not divide: batch sizes "
                              f"are global (each process takes batch_size / {processes}); give a multiple of "
                              f"{processes} or another --nproc_per_node")


def run_cli(main, script):
    """`if __name__ == "__main__"` of a train script: a user error (config, data, weights, non-finite training)
    is one line on stderr and exit status 2, not a traceback. Under torchrun the process group is set up first
    and taken down at the end (setup_distributed)."""
    from data.sample import DataError
    from hub.pretrained import PretrainedLoadError
    try:
        setup_distributed()
        main()
    except (ConfigError, DataError, PretrainedLoadError, NonFiniteLoss, FileNotFoundError) as error:
        where = f" (rank {rank()})" if world_size() > 1 else ""
        print(f"{script}{where}: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        cleanup_distributed()


def default_config_path(system):
    return REPO_ROOT / "configs" / "tiny" / f"{system}.yaml"


def base_argparser(system, doc=None):
    """The arguments every train script takes; scripts add their own (e.g. --phase) before parsing."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(default_config_path(system)),
                   help="YAML config (default: the embedded tiny default)")
    p.add_argument("--out", default=None, help=f"run directory (default runs/{system}/<phase>-<time>)")
    p.add_argument("--resume", default=None, help="checkpoint to resume from (last.pt or best.pt)")
    p.add_argument("--overwrite", action="store_true", help="write into an --out that already holds a run, "
                   "deleting its checkpoints, logs and metrics first (without it such an --out is refused)")
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. train.lr=1e-4 model.lambda_token=0.5")
    return p


RUN_FILES = ("*.pt", "log.jsonl", "metrics*.json")     # what makes a folder a run's (searched recursively)


def make_out_dir(out, system, phase_name, resume=None, overwrite=False):
    """The run folder: --out, or runs/<system>/<phase>-<time>. A folder that already holds a run is refused unless
    --resume points inside it (the same run continues) or overwrite (its run files are deleted first). While
    this process writes into it, out/.lock holds its pid: a second process is refused. Under torchrun rank 0
    does all of this and every rank gets its folder (or its refusal)."""
    if world_size() == 1:
        return _make_out_dir(out, system, phase_name, resume, overwrite)
    answer = None
    if is_main():
        try:
            answer = _make_out_dir(out, system, phase_name, resume, overwrite)
        except ConfigError as error:
            answer = error
    answer = broadcast_object(answer)
    if isinstance(answer, ConfigError):
        raise answer
    return answer


def _make_out_dir(out, system, phase_name, resume=None, overwrite=False):
    if resume is not None and not Path(resume).is_file():
        raise ConfigError(f"--resume {resume}: no such checkpoint file (expected RUN/last.pt or RUN/best.pt)")
    path = Path(out) if out else Path("runs") / system / f"{phase_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    used = sorted({p for pattern in RUN_FILES for p in path.rglob(pattern)}) if path.is_dir() else []
    inside = resume is not None and path.resolve() in Path(resume).resolve().parents
    if used and not inside:
        if not overwrite:
            names = ", ".join(str(p.relative_to(path)) for p in used[:3]) + (", ..." if len(used) > 3 else "")
            raise ConfigError(f"--out {path} already holds a run ({names}); continue it with --resume "
                              f"{path}/last.pt, replace it with --overwrite, or choose another --out")
        for p in used:
            p.unlink()
        print(f"--overwrite: deleted {len(used)} file(s) of the previous run in {path}")
    path.mkdir(parents=True, exist_ok=True)
    hold_lock(path)
    return path


_LOCKS = set()


def hold_lock(folder):
    """folder/.lock with this pid (removed at exit); another live process's lock is refused, a dead one's taken."""
    lock = Path(folder) / ".lock"
    if lock in _LOCKS:
        return lock
    try:
        owner = int(lock.read_text().strip() or 0)
    except (FileNotFoundError, ValueError):
        owner = 0
    if owner and owner != os.getpid():
        try:
            os.kill(owner, 0)
        except ProcessLookupError:
            print(f"{lock}: the run of pid {owner} is gone; taking the folder over")
        except PermissionError:
            raise ConfigError(f"{folder}: another run (pid {owner}) is writing into it ({lock})") from None
        else:
            raise ConfigError(f"{folder}: another run (pid {owner}) is writing into it ({lock}); wait for it or "
                              f"choose another --out") from None
    lock.write_text(f"{os.getpid()}\n")
    _LOCKS.add(lock)
    if len(_LOCKS) == 1:
        import atexit
        atexit.register(_release_locks)
    return lock


def _release_locks():
    for lock in _LOCKS:
        try:
            if lock.read_text().strip() == str(os.getpid()):
                lock.unlink()
        except OSError:
            pass


def resume_rule(resume, out_dir, total_steps, phase=None):
    """What `--resume CKPT` does, decided once a script knows its total steps and before it writes into out_dir
    or builds the model. phase: the phase or stage being trained; a CKPT of another phase only gives starting
    weights (step 0) and is not ruled here. -> (plan, fresh_best):

    - CKPT inside out_dir, step < total_steps: ("train", False), the run continues exactly.
    - CKPT in another folder, step < total_steps: ("train", True). out_dir continues that run from CKPT (weights,
      optimizer, step, RNG) and takes nothing else from CKPT's folder: its log.jsonl starts at that step, and
      its best.pt is the best of the validations made in out_dir (the caller restarts its best metric), so the
      final test never looks for a best.pt that is not there. One line says so.
    - step >= total_steps (a finished run), CKPT inside out_dir: one line says so; ("test", False) when out_dir
      has no metrics.json (the loop has nothing left, only the final test runs), else ("done", False): the
      caller returns at once.
    - a finished run from another folder: ConfigError, since nothing is left to train into out_dir.
    """
    if not resume:
        return "train", False
    checkpoint = torch.load(resume, map_location="cpu", weights_only=False, mmap=True)
    if phase is not None and checkpoint.get("phase") != phase:
        return "train", False
    step, out_dir, say = checkpoint["step"], Path(out_dir), print if is_main() else (lambda *_: None)
    inside = out_dir.resolve() in Path(resume).resolve().parents
    if step < total_steps:
        if not inside:
            say(f"--resume {resume}: {out_dir} continues that run from step {step} of {total_steps} and copies "
                f"nothing else from {Path(resume).parent}; {out_dir / 'best.pt'} will be the best validation of "
                f"the steps trained here")
        return "train", not inside
    if not inside:
        raise ConfigError(f"--resume {resume}: that run is finished (step {step} of {total_steps}), nothing is left "
                          f"to train into --out {out_dir}; test it with `python evaluate.py "
                          f"{Path(resume).parent / 'best.pt'}` or give it more steps")
    if (out_dir / "metrics.json").exists():
        say(f"{out_dir} is finished (step {step} of {total_steps}) and holds its test metrics "
            f"({out_dir / 'metrics.json'}): nothing to do")
        return "done", False
    say(f"{out_dir} is finished (step {step} of {total_steps}) without metrics.json: only the final test runs")
    return "test", False


def save_config(cfg, out_dir):
    """Each run's first write into its folder: stale temporaries of an interrupted run go, config.yaml is written.
    Rank 0 only under torchrun."""
    if not is_main():
        return
    remove_stale_temporaries(out_dir)
    text = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
    print(f"config:\n{text}")
    atomic_write_bytes(Path(out_dir) / "config.yaml", text.encode())


# ----------------------------------------------------------------------------------------------------
# seeding, device, precision

def seed_everything(seed):
    """Under torchrun each process is seeded with seed + rank (its own dropout and augmentation draws)."""
    seed = seed + rank()
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def setup_device(device="auto", dtype="auto"):
    """-> (device, autocast context, GradScaler, dtype name).

    dtype "auto": bfloat16 on a CUDA device that supports it, float16 on an older one, float32 on CPU.
    The GradScaler is enabled only for float16, so `scaler.scale(loss)` is a no-op otherwise.
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())    # under torchrun: LOCAL_RANK's GPU
    if dtype == "auto":
        if device.type == "cuda":
            dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        else:
            dtype = "float32"
    if dtype not in ("float32", "bfloat16", "float16"):
        raise ConfigError(f"train.dtype must be auto, float32, bfloat16 or float16, got {dtype!r}")
    if dtype == "float16" and device.type != "cuda":
        raise ConfigError("train.dtype=float16 needs a CUDA device; use float32 or bfloat16 on CPU")
    ctx = (contextlib.nullcontext() if dtype == "float32"
           else torch.autocast(device.type, dtype=getattr(torch, dtype)))
    scaler = torch.amp.GradScaler(device.type, enabled=(dtype == "float16"))
    return device, ctx, scaler, dtype


# ----------------------------------------------------------------------------------------------------
# several processes (torchrun, DDP): `torchrun --nproc_per_node N train_<system>.py ...`
#
# Without torchrun there is no process group and every helper below is a no-op (rank 0 of 1).
# - Batch: config batch sizes are GLOBAL (all processes together); each of the N processes takes
#   batch_size / N samples of every batch (data/loader.py), so losses, learning rates and schedules read
#   the same for any N. A batch size that N does not divide is a ConfigError (load_config).
# - Rank 0 alone writes (run folder and lock, config.yaml, log.jsonl, checkpoints, metrics.json) and
#   validates; every rank calls save_checkpoint (it gathers each rank's RNG state) and run_on_main.
# - DDP averages the gradients of the per-rank mean losses: for equal shards that is the gradient of the
#   global-batch mean. Contrastive losses gather the embeddings of every rank (models/gathered_loss.py).
# - Batch norm uses per-rank batch statistics (batch_size / N samples); the running statistics in
#   checkpoints are rank 0's (DDP broadcasts rank 0's buffers at every forward).

def setup_distributed():
    """Join torchrun's process group (RANK, WORLD_SIZE, LOCAL_RANK in the environment): gloo on CPU, NCCL for
    CUDA tensors with gloo beside it for CPU ones; the CUDA device is LOCAL_RANK's. No-op without torchrun."""
    if "WORLD_SIZE" not in os.environ or not torch.distributed.is_available() or torch.distributed.is_initialized():
        return
    import datetime
    backend = "gloo"
    if torch.cuda.is_available():
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA devices; "
                              f"give torchrun --nproc_per_node <= {torch.cuda.device_count()}")
        torch.cuda.set_device(local_rank)
        backend = "cpu:gloo,cuda:nccl"
    # rank 0 validates and evaluates alone while the others wait in a collective
    torch.distributed.init_process_group(backend, timeout=datetime.timedelta(hours=2))


def cleanup_distributed():
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def rank():
    """This process's rank (0 without torchrun)."""
    initialized = torch.distributed.is_available() and torch.distributed.is_initialized()
    return torch.distributed.get_rank() if initialized else 0


def world_size():
    """Number of processes (1 without torchrun)."""
    initialized = torch.distributed.is_available() and torch.distributed.is_initialized()
    return torch.distributed.get_world_size() if initialized else 1


def is_main():
    return rank() == 0


def wrap_ddp(model, device, find_unused_parameters=False):
    """DistributedDataParallel(model) under torchrun, the model itself otherwise. Build it after set_trainable
    and again whenever requires_grad changes (DDP registers its gradient hooks at construction). Forward
    through the wrapper; save, evaluate and call methods on the bare model."""
    if world_size() == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                   find_unused_parameters=find_unused_parameters)


def to_channels_last(model):
    """Every 4-dim weight in channels-last memory, every 5-dim one in channels-last-3d, in place (a convolution
    with such a weight gives channels-last outputs, which cuDNN runs faster on tensor cores)."""
    formats = {4: torch.channels_last, 5: torch.channels_last_3d}
    for p in model.parameters():
        if p.dim() in formats:
            p.data = p.data.contiguous(memory_format=formats[p.dim()])
    return model


def step_module(model, device, train_cfg, find_unused_parameters=False):
    """The module each training step calls: `model` with the speed options of train.* (channels_last: CNN weights
    channels-last, in place; compile: torch.compile, compiled during the first steps) and, under torchrun, DDP
    (wrap_ddp). Build it after set_trainable, again when requires_grad changes; save, evaluate and call methods on
    the bare model. `python -m benchmarks.step SYSTEM --variants default,compile,channels_last` measures both."""
    if train_cfg.get("channels_last"):
        to_channels_last(model)
    module = wrap_ddp(model, device, find_unused_parameters)
    return torch.compile(module) if train_cfg.get("compile") else module


def fused_adamw(train_cfg, device):
    """train.fused_adamw -> build_optimizer's `fused`: torch's one-kernel AdamW, a CUDA option."""
    if not train_cfg.get("fused_adamw"):
        return None
    if device.type != "cuda":
        raise ConfigError(f"train.fused_adamw=true needs a CUDA device (this run uses {device.type}); set it false")
    return True


def gradient_sync(model, sync):
    """The context of one micro-batch's forward and backward under gradient accumulation: DDP's no_sync() (the
    gradients stay local and add up) unless `sync`, the last micro-batch of an optimizer step, whose backward
    all-reduces the summed gradients once. A no-op for a model that is not DDP-wrapped."""
    from torch.nn.parallel import DistributedDataParallel
    if sync or not isinstance(model, DistributedDataParallel):
        return contextlib.nullcontext()
    return model.no_sync()


def mean_over_ranks(values):
    """{name: number or 0-d tensor} -> {name: float}, each the mean over ranks (one all_reduce): the loss of
    the global batch for logging. Every rank must call it at the same steps."""
    numbers = torch.tensor([float(v.detach()) if isinstance(v, torch.Tensor) else float(v) for v in values.values()],
                           dtype=torch.float64)
    if world_size() > 1:
        torch.distributed.all_reduce(numbers)
        numbers /= world_size()
    return dict(zip(values, numbers.tolist()))


def broadcast_object(value):
    """Rank 0's value (any picklable object) on every rank."""
    if world_size() == 1:
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def run_on_main(fn, *args, **kwargs):
    """fn(*args, **kwargs) on rank 0 only (validation), its result sent to every rank, which wait for it."""
    return broadcast_object(fn(*args, **kwargs) if is_main() else None)


# ----------------------------------------------------------------------------------------------------
# freezing and the optimizer

def set_trainable(model, trainable, depth=1, verbose=True):
    """Set requires_grad on every parameter: True iff its name matches one of the fnmatch patterns.

    trainable: list of patterns over parameter names, e.g. ["condition_queries.*", "*lora_*"]; "*" = all.
    Prints a table of trainable / frozen parameter counts grouped by the first `depth` name parts.
    Returns the list of trainable parameters.
    """
    patterns = [trainable] if isinstance(trainable, str) else list(trainable)
    rows, params = {}, []
    for name, p in model.named_parameters():
        p.requires_grad_(any(fnmatch.fnmatchcase(name, pat) for pat in patterns))
        key = ".".join(name.split(".")[:depth])
        row = rows.setdefault(key, [0, 0])
        row[0 if p.requires_grad else 1] += p.numel()
        if p.requires_grad:
            params.append(p)
    unused = [pat for pat in patterns
              if not any(fnmatch.fnmatchcase(n, pat) for n, _ in model.named_parameters())]
    if unused:
        raise ValueError(f"set_trainable: pattern(s) {unused} match no parameter of {type(model).__name__}")
    if verbose:
        width = max([len(k) for k in rows] + [6])
        print(f"{'module':<{width}}  {'trainable':>12}  {'frozen':>12}")
        for key, (t, f) in rows.items():
            print(f"{key:<{width}}  {t:>12,}  {f:>12,}")
        total_t = sum(r[0] for r in rows.values())
        total_f = sum(r[1] for r in rows.values())
        print(f"{'total':<{width}}  {total_t:>12,}  {total_f:>12,}")
    return params


def param_groups(model, weight_decay, no_weight_decay=(), lr_scales=None, verbose=True):
    """AdamW groups: decay iff p.ndim >= 2 and the name matches no `no_weight_decay` pattern.

    lr_scales: {name pattern: scale}, e.g. {"backbone.*": 0.01}; the first matching pattern wins and
    each group carries `lr_scale`, which `set_lr` multiplies in. Only trainable parameters are used.
    """
    lr_scales = lr_scales or {}
    groups = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = p.ndim >= 2 and not any(fnmatch.fnmatchcase(name, pat) for pat in no_weight_decay)
        scale = next((s for pat, s in lr_scales.items() if fnmatch.fnmatchcase(name, pat)), 1.0)
        group = groups.setdefault((decay, scale), {"params": [], "names": [], "lr_scale": scale,
                                                   "weight_decay": weight_decay if decay else 0.0})
        group["params"].append(p)
        group["names"].append(name)
    out = list(groups.values())
    n_trainable = sum(1 for p in model.parameters() if p.requires_grad)
    assert sum(len(g["params"]) for g in out) == n_trainable == len({id(p) for g in out for p in g["params"]})
    if verbose:
        for g in out:
            n = sum(p.numel() for p in g["params"])
            print(f"param group: weight_decay={g['weight_decay']} lr_scale={g['lr_scale']} "
                  f"tensors={len(g['params'])} params={n:,}")
    return out


def build_optimizer(model, lr, weight_decay, betas=(0.9, 0.999), no_weight_decay=(), lr_scales=None, fused=None):
    """AdamW over the trainable parameters only; call it after set_trainable, again at each phase. fused=True:
    torch's fused CUDA kernel (one launch for all parameters; CUDA only)."""
    groups = param_groups(model, weight_decay, no_weight_decay, lr_scales)
    for g in groups:
        g.pop("names")
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), fused=fused)


def adamw(model, lr, train_cfg, device, lr_scales=None):
    """build_optimizer as every script uses it: train.weight_decay except model.no_weight_decay(), the fused
    kernel by train.fused_adamw; lr_scales {pattern: factor} for parameter groups at lr * factor."""
    return build_optimizer(model, lr, train_cfg.weight_decay, no_weight_decay=model.no_weight_decay(),
                           lr_scales=lr_scales, fused=fused_adamw(train_cfg, device))


def get_lr(step, lr, warmup_steps, total_steps, min_lr=0.0):
    """Linear warmup over `warmup_steps`, then cosine from `lr` down to `min_lr` at `total_steps`."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if step >= total_steps:
        return min_lr
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)


def set_lr(optimizer, lr):
    for g in optimizer.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)


# ----------------------------------------------------------------------------------------------------
# checkpoints

def _umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def remove_stale_temporaries(out_dir):
    """Delete what a killed atomic_write_bytes left in out_dir (<name>.<random>.tmp beside a checkpoint, config
    or metrics file); called when a run starts writing into the folder."""
    removed = [p for p in Path(out_dir).glob("*.*.tmp") if p.is_file()]
    for p in removed:
        p.unlink()
    if removed:
        print(f"removed {len(removed)} temporary file(s) left by an interrupted write in {out_dir}: "
              f"{', '.join(p.name for p in removed[:3])}")
    return removed


def atomic_write_bytes(path, data):
    """Write to a temp file in the same folder, fsync, then os.replace: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())            # mkstemp makes 0600; the user's umask decides, as for open()
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_metrics(path, metrics, checkpoint, step):
    """metrics.json (atomically): "checkpoint" (the scored file, relative to the metrics file's folder when it
    lies inside it) and "checkpoint_step" first, then the flat metric values. Strict JSON: a NaN or infinite
    value (an AUROC of a class without positives, ...) is written as null, never as bare NaN / Infinity."""
    path, checkpoint = Path(path), Path(checkpoint)
    try:
        name = str(checkpoint.resolve().relative_to(path.parent.resolve()))
    except ValueError:
        name = str(checkpoint.resolve())
    payload = {"checkpoint": name, "checkpoint_step": step, **strict_json(dict(metrics))}
    atomic_write_bytes(path, json.dumps(payload, indent=1, allow_nan=False).encode())


def unwrap(model):
    """The bare module under DDP (`.module`) and torch.compile (`._orig_mod`) wrappers."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model


def rng_state():
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def all_rng_states():
    """rng_state() of this process; under torchrun rank 0's, with every rank's under "ranks" (a collective:
    every rank calls it)."""
    state = rng_state()
    if world_size() == 1:
        return state
    ranks = [None] * world_size()
    torch.distributed.all_gather_object(ranks, state)
    return {**ranks[0], "ranks": ranks}


def set_rng_state(state):
    """Restore rng_state() / all_rng_states(): under torchrun each rank its own. Resumed on another number of
    processes, ranks without a saved state keep their fresh seed + rank streams."""
    ranks = state.get("ranks")
    if ranks is not None or world_size() > 1:
        if ranks is None or len(ranks) != world_size():
            saved = len(ranks) if ranks is not None else 1
            if is_main():
                print(f"resuming a run of {saved} process(es) on {world_size()}: the random streams (dropout, "
                      f"augmentation) differ from an uninterrupted run; batches and weights continue exactly")
            if rank() >= saved:
                return
        state = ranks[rank()] if ranks is not None else state
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def tokenizer_files(tokenizer):
    """tokenizer.save_pretrained into a temp dir -> {file name: bytes}, so a checkpoint is self-contained."""
    if tokenizer is None:
        return None
    with tempfile.TemporaryDirectory() as d:
        tokenizer.save_pretrained(d)
        return {p.name: p.read_bytes() for p in Path(d).iterdir() if p.is_file()}


def write_tokenizer_files(files, directory):
    """Inverse of tokenizer_files: write them out so AutoTokenizer.from_pretrained(directory) loads."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (directory / name).write_bytes(data)
    return directory


def fingerprint(state, keys):
    """SHA-256 (hex) over the name, dtype, shape and bytes of state[key] for each key, in the order given."""
    digest = hashlib.sha256()
    for key in keys:
        tensor = state[key].detach()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def frozen_pretrained(model, sources, trainable=()):
    """The parameters checkpoints of `model` leave out: {prefix: {"source", "fingerprint", "keys"}}.

    sources: {prefix: name} for the parts built from named pretrained weights (a hub id, a tiny-hub name, a
    weights file). Give none for parts built with random weights (model.pretrained=false) or loaded from a run's
    checkpoint: they have no source to rebuild them from, so they are stored in full. trainable: the fnmatch
    patterns of EVERY phase of the run; a parameter under a prefix that matches one (a LoRA adapter, a head
    trained in some phase) stays in the checkpoint, and so do buffers. Call it right after the model is built,
    before any checkpoint weights are loaded, so the fingerprints are those of the sources."""
    bare = unwrap(model)
    state = bare.state_dict()
    names = [n for n, _ in bare.named_parameters(remove_duplicate=False)]   # tied weights under every name
    frozen = {}
    for prefix, source in sources.items():
        keys = [n for n in names if n.startswith(prefix) and n in state
                and not any(fnmatch.fnmatchcase(n, pattern) for pattern in trainable)]
        if keys:
            frozen[prefix] = {"source": str(source), "fingerprint": fingerprint(state, keys), "keys": keys}
    return frozen


def leave_out_frozen(state, frozen, path="checkpoint"):
    """state without the tensors of the `frozen` groups (frozen_pretrained) that still match their fingerprint
    -> (stored state, groups left out). A group whose tensors changed is stored in full, with a warning."""
    stored, left_out = dict(state), {}
    for prefix, group in (frozen or {}).items():
        if not set(group["keys"]) <= set(state) or fingerprint(state, group["keys"]) != group["fingerprint"]:
            print(f"warning: the parameters {prefix}* changed since they were loaded from {group['source']!r} "
                  f"(declared frozen in every phase); {path} stores them in full")
            continue
        for key in group["keys"]:
            del stored[key]
        left_out[prefix] = group
    return stored, left_out


def save_checkpoint(path, model, optimizer, scaler, step, epoch, phase, best_metric, config,
                    tokenizer=None, frozen=None, **extra):
    """One dict with everything a resume needs, written atomically to `path`; never non-finite weights.
    frozen (frozen_pretrained): those parameters are left out of "model"; "frozen" names their sources and
    fingerprints ({} when the checkpoint holds every weight)."""
    state = unwrap(model).state_dict()
    check_weights(state, step, path)
    state, left_out = leave_out_frozen(state, frozen, path)
    ckpt = {
        "model": state,
        "frozen": left_out,
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "step": step, "epoch": epoch, "phase": phase, "best_metric": best_metric,
        "config": config.to_dict() if isinstance(config, Config) else config,
        "rng": all_rng_states(),
        "tokenizer_files": tokenizer_files(tokenizer),
        **extra,
    }
    if not is_main():      # every rank calls save_checkpoint (all_rng_states gathers); rank 0 writes
        return
    buffer = io.BytesIO()
    torch.save(ckpt, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_weights(model, checkpoint, path="checkpoint", strict=True):
    """checkpoint["model"] into model. Weights of another system or architecture are one ConfigError naming the
    checkpoint's system and a few of the differing keys, instead of torch's dump of every key. The frozen
    pretrained weights a checkpoint left out (checkpoint["frozen"]) stay those of `model`, which must have been
    built from the same sources: a fingerprint that differs is one ConfigError naming the source."""
    state = checkpoint.get("model") if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise ConfigError(f"{path}: no 'model' state dict inside; expected a checkpoint written by a train_*.py")
    own = unwrap(model).state_dict()
    frozen = checkpoint.get("frozen") or {}
    left_out = {key for group in frozen.values() for key in group["keys"]}
    missing = [k for k in own if k not in state and k not in left_out]
    unexpected = [k for k in list(state) + sorted(left_out) if k not in own]
    shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if strict and (missing or unexpected or shapes):
        system = (checkpoint.get("config") or {}).get("system")
        parts = [f"{len(v)} {name} ({', '.join(v[:2])}{', ...' if len(v) > 2 else ''})"
                 for name, v in (("missing", missing), ("unexpected", unexpected), ("of another shape", shapes)) if v]
        raise ConfigError(f"{path}: a checkpoint of system {system!r} whose weights do not fit this model: "
                          f"{'; '.join(parts)} keys; give a checkpoint of this system and model config")
    for prefix, group in frozen.items():
        keys = [k for k in group["keys"] if k in own]
        if fingerprint(own, keys) != group["fingerprint"]:
            raise ConfigError(
                f"{path} leaves out the frozen pretrained weights {prefix}* ({len(keys)} tensors from "
                f"{group['source']!r}), and the model built here does not match their fingerprint: build it from "
                f"{group['source']!r} unchanged (model.pretrained=true), or write a copy holding every weight on a "
                f"machine that has it (python evaluate.py {path} --export-full FULL.pt)")
    state = {**{k: own[k] for k in left_out if k in own}, **state}
    return unwrap(model).load_state_dict(state, strict=strict)


def export_full(checkpoint, model, out):
    """Write `checkpoint` (atomically, to `out`) with every weight in "model" and "frozen" empty: the frozen
    pretrained weights it left out are taken from `model`, which holds its weights (load_weights checked their
    fingerprints). The copy loads without the sources, e.g. into a model built with model.pretrained=false."""
    stored = checkpoint["model"]
    state = {k: stored[k] if k in stored else v.detach().cpu() for k, v in unwrap(model).state_dict().items()}
    buffer = io.BytesIO()
    torch.save({**checkpoint, "model": state, "frozen": {}}, buffer)
    atomic_write_bytes(out, buffer.getvalue())
    return Path(out)


def config_changes(old, new, allowed=("train.", "eval.", "generation.")):
    """[(key, old value, new value)] where a checkpoint's config and this run's differ, outside `allowed`."""
    old, new = dict(flat_items(old)), dict(flat_items(new))
    return [(k, old.get(k), new.get(k)) for k in sorted(set(old) | set(new))
            if old.get(k) != new.get(k) and not k.startswith(allowed)]


def load_checkpoint(path, model=None, optimizer=None, scaler=None, restore_rng=True, strict=True, config=None):
    """Load a checkpoint dict and restore what is given. Returns the dict (step, epoch, phase, ...). config (this
    run's): a resume whose config differs outside train.* / eval.* / generation.* names the keys on one line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if config is not None and isinstance(ckpt.get("config"), dict):
        current = config.to_dict() if isinstance(config, Config) else config
        if ckpt["config"].get("system") != current.get("system"):
            raise ConfigError(f"{path} is a checkpoint of system {ckpt['config'].get('system')!r}, not "
                              f"{current.get('system')!r}")
        changed = config_changes(ckpt["config"], current)
        if changed:
            print(f"resuming {path} with a changed config: " + ", ".join(
                f"{k} {old!r} -> {new!r}" for k, old, new in changed[:6]) +
                (f" (+{len(changed) - 6} more)" if len(changed) > 6 else ""))
    if model is not None:
        result = load_weights(model, ckpt, path, strict=strict)
        if not strict and (result.missing_keys or result.unexpected_keys):
            print(f"{path}: missing keys {result.missing_keys}, unexpected keys {result.unexpected_keys}")
    if optimizer is not None and ckpt.get("optimizer") is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
    if scaler is not None and ckpt.get("scaler") is not None:
        scaler.load_state_dict(ckpt["scaler"])
    if restore_rng and ckpt.get("rng") is not None:
        set_rng_state(ckpt["rng"])
    return ckpt


# ----------------------------------------------------------------------------------------------------
# logging and the non-finite stop

class NonFiniteLoss(RuntimeError):
    """A loss term, the gradient or the weights became NaN or inf: the run stops before the optimizer step,
    and no checkpoint holding non-finite weights is ever written (last.pt stays as it was)."""


def check_finite(loss_terms, step):
    """Before backward. step: optimizer steps done so far; messages name the step being taken (step + 1),
    the number log.jsonl gives that step."""
    bad = [k for k, v in loss_terms.items() if not torch.isfinite(torch.as_tensor(v).detach()).all()]
    if bad:
        terms = ", ".join(f"{k}={float(torch.as_tensor(v).detach().float().mean()):.4g}"
                          for k, v in loss_terms.items())
        raise NonFiniteLoss(f"non-finite loss at step {step + 1} ({', '.join(bad)}); terms: {terms}. "
                            "The last good checkpoint was left untouched.")


def check_gradient(grad_norm, scaler, step):
    """After clip_grad_norm_, before optimizer.step: a NaN / inf gradient stops the run (a finite loss can still
    give one). With fp16's GradScaler enabled the scaler skips such steps itself and lowers its scale."""
    if scaler.is_enabled() or torch.isfinite(torch.as_tensor(grad_norm)).all():
        return
    raise NonFiniteLoss(f"non-finite gradient norm ({float(grad_norm)}) at step {step + 1}: the optimizer step was not "
                        f"taken (a lower learning rate or train.grad_clip may help). The last good checkpoint was "
                        f"left untouched.")


def optimizer_step(optimizer, scaler, params, grad_clip, step):
    """The end of every training step after backward: unscale, clip the gradient norm of `params` to grad_clip,
    stop on a non-finite norm (check_gradient), step, update the scaler, zero the gradients. -> grad norm."""
    scaler.unscale_(optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
    check_gradient(grad_norm, scaler, step)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm


def check_weights(state, step, path=None):
    """Raise NonFiniteLoss when any floating tensor of a model's state dict holds NaN or inf (before a save)."""
    bad = [name for name, t in state.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        where = f"; {path} was not written" if path else ""
        raise NonFiniteLoss(f"non-finite weights after step {step} in {len(bad)} tensors ({', '.join(bad[:3])}"
                            f"{', ...' if len(bad) > 3 else ''}){where}. The last good checkpoint was left untouched.")


class RunLogger:
    """Appends one JSON object per call to out_dir/log.jsonl (every value; NaN / inf written as null) and prints
    a compact line: at most `max_printed` values, per-class keys (two or more '/', e.g. val/ap@0.5/Nodule) left
    out, a count of what log.jsonl has beyond that. resume_step=N (a resumed run): lines of steps after N, which
    the resumed run logs again, and a torn last line are dropped first, and an {"event": "resume"} line marks it.
    Under torchrun only rank 0 writes and prints (log values that differ by rank through mean_over_ranks first)."""

    def __init__(self, out_dir, filename="log.jsonl", max_printed=14, resume_step=None):
        self.path = Path(out_dir) / filename
        self.max_printed = max_printed
        self.enabled = is_main()
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            kept, dropped = [], 0
            for line in self.path.read_text().splitlines():
                try:
                    step = json.loads(line).get("step")
                except ValueError:
                    step = float("inf")                              # a line torn by a kill
                if isinstance(step, (int, float)) and step > resume_step:
                    dropped += 1
                else:
                    kept.append(line + "\n")
            atomic_write_bytes(self.path, "".join(kept).encode())
            self.log(echo=False, event="resume", step=resume_step, dropped_lines=dropped)

    def log(self, echo=True, **record):
        if not self.enabled:
            return
        record = {k: strict_json(v) for k, v in record.items()}
        with open(self.path, "a") as f:
            f.write(json.dumps(record, allow_nan=False) + "\n")
        if echo:
            (tqdm_write if "tqdm" in sys.modules else print)(self.line(record))

    def line(self, record):
        shown = [k for k in record if k.count("/") < 2][:self.max_printed]
        parts = [f"{k} {record[k]:.4g}" if isinstance(record[k], float) else f"{k} {record[k]}" for k in shown]
        hidden = len(record) - len(shown)
        return " | ".join(parts) + (f" | (+{hidden} more in {self.path.name})" if hidden else "")


def tqdm_write(text):
    from tqdm import tqdm
    tqdm.write(text)



def model_from_checkpoint(checkpoint, args, build_model, dtype=None, overrides=()):
    """What every script's evaluate_checkpoint starts with: the checkpoint's config (+ overrides, then
    args.overrides: evaluate.py's key=value settings for this evaluation only), torch threads
    (train.num_threads), device and autocast from args.device (dtype: the config's unless given), and the model
    made by build_model(cfg) holding the checkpoint's weights, in eval mode. -> (cfg, model, device, ctx)."""
    cfg = apply_overrides(Config.wrap(checkpoint["config"]), list(overrides) + list(getattr(args, "overrides", ())))
    if cfg.train.get("num_threads"):
        torch.set_num_threads(cfg.train.num_threads)
    device, ctx, _, _ = setup_device(getattr(args, "device", None) or "auto", dtype or cfg.train.dtype)
    model = build_model(cfg)
    load_weights(model, checkpoint, getattr(args, "checkpoint", None) or "checkpoint")
    return cfg, model.to(device).eval(), device, ctx

# ----------------------------------------------------------------------------------------------------
# comparison runs as separate processes (--jobs)

def run_processes(commands, jobs, stop_on_failure=False, poll_seconds=2.0):
    """commands: [(name, argv, log_path)]; each runs as `python *argv` with stdout and stderr in its log file,
    at most `jobs` at once, in order. Prints a line as each starts and ends. stop_on_failure: raise as soon as
    one exits non-zero (the others keep running). -> {name: exit code}."""
    import subprocess
    pending, running, codes = list(commands), [], {}
    while pending or running:
        while pending and len(running) < jobs:
            name, argv, log_path = pending.pop(0)
            Path(log_path).parent.mkdir(parents=True, exist_ok=True)
            with open(log_path, "w") as log:
                running.append((name, log_path, subprocess.Popen([sys.executable, *argv], stdout=log,
                                                                 stderr=subprocess.STDOUT)))
            print(f"{name} started (log {log_path})")
        time.sleep(poll_seconds)
        for entry in [r for r in running if r[2].poll() is not None]:
            running.remove(entry)
            name, log_path, process = entry
            codes[name] = process.returncode
            print(f"{name} finished (exit {process.returncode})")
            if process.returncode and stop_on_failure:
                raise RuntimeError(f"{name} failed (exit {process.returncode}); see {log_path}")
    return codes
