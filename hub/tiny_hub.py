"""The tiny model hub: small pretrained stand-ins for the frozen pretrained parts, built locally on first use.

The paper-scale systems take pretrained weights (Flan-T5, SigLIP, Bio_ClinicalBERT/BioBERT/PubMedBERT,
BiomedCLIP, MedMAE, DenseNet-121) and often freeze them. At the tiny CPU scale, frozen RANDOM weights
would make a run meaningless, so each family gets a small stand-in trained for under three minutes (most well under one) on
phantom data with the family's usual objective:

    name                      format                         objective              stands in for
    tiny-hub/bert-mlm         save_pretrained dir (+tok.)    masked LM              Bio_ClinicalBERT, BioBERT, PubMedBERT
    tiny-hub/t5-span          save_pretrained dir (+tok.)    span corruption        Flan-T5
    tiny-hub/siglip           save_pretrained dir (+tok.)    sigmoid contrastive    SigLIP, BiomedCLIP's towers
    tiny-hub/siglip-cxr       save_pretrained dir (+tok.)    sigmoid + 4 x label    SigLIP as CheXQuery's vision tower
    tiny-hub/mae-vit          .pth {'model': ...} (MedMAE)   MAE, 75% masking       MedMAE ViT
    tiny-hub/densenet-small   .pth state_dict (torchvision)  14-label BCE           torchvision DenseNet-121
    tiny-hub/chexbert         chexbert.pth (CheXbert's) +tok 14 x 4-way report CE   CheXbert (report labeler)

Design choices:
- Cache: argument > env `CXR_TINY_HUB` > `~/.cache/cxr-vlm/tiny-hub`. Each model is written to a private
  temp dir in the cache, moved into place with `os.replace`, and only then is `<key>.built.json` written
  (tmp + os.replace). No marker = not built: a half-built model is deleted and rebuilt.
- Data: phantoms from the "hub" seed range only (data.phantom.PHANTOM_SPLIT_SEEDS["hub"]), so the hub never
  sees a downstream train/val/test phantom; held-out measurements use indices from HELD_OUT_START on.
- Fixed seeds and fixed step counts; `torch.set_num_threads` uses every core during a build. Two builds on one
  machine (same core count) give bit-identical files (their tokenizers are counted, not trained: tiny_hub_text).
- The vision models' image size is a build parameter (default 96 = a 6x6 grid of 16-px patches);
  consumers at 64-128 px resample the position embeddings (timm does it on load; SigLIP takes
  `interpolate_pos_encoding=True`).
- Every build measures its objective on held-out phantoms before/after training and for a random-init
  twin; the numbers are stored in the marker and shown by `list`.

CLI:  python -m hub.tiny_hub build [--cache DIR] [--only NAME] [--force] [--image-size 96]
      python -m hub.tiny_hub list [--cache DIR]
"""
import argparse
import contextlib
import json
import os
import random
import shutil
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from hub import tiny_hub_chexbert, tiny_hub_text, tiny_hub_vision

DEFAULT_CACHE = os.path.join("~", ".cache", "cxr-vlm", "tiny-hub")
DEFAULT_IMAGE_SIZE = 96
NUM_TRAIN_SAMPLES = 4096        # phantoms from the hub seed range used for training (~450 MB as float)
NUM_HELD_OUT_SAMPLES = 128      # held-out phantoms (same hub seed range, indices from HELD_OUT_START)
HELD_OUT_START = 100_000
BUILD_SEED = 0


@dataclass(frozen=True)
class HubEntry:
    name: str                   # hub id used in configs
    filename: str               # directory or file inside the cache
    build: Callable             # build(out_path, corpus, held_out, steps, seed, progress[, image_size]) -> (dict, model)
    steps: int                  # default training steps (the reproducible build)
    uses_image_size: bool       # build takes image_size
    stands_in_for: str
    version: int = 1            # bumped when the build itself changes (a cache built before is rebuilt)


HUB = {entry.name: entry for entry in [
    HubEntry("tiny-hub/bert-mlm", "bert-mlm", tiny_hub_text.build_bert_mlm, 150, False,
             "Bio_ClinicalBERT / BioBERT / PubMedBERT",
             version=2),    # 2: counted word pieces (tiny_hub_text.counted_wordpiece_tokenizer)
    HubEntry("tiny-hub/t5-span", "t5-span", tiny_hub_text.build_t5_span, 600, False, "Flan-T5",
             version=2),    # 2: counted word pieces (tiny_hub_text.counted_unigram_tokenizer)
    HubEntry("tiny-hub/siglip", "siglip", tiny_hub_text.build_siglip, 400, True, "SigLIP, BiomedCLIP towers",
             version=2),    # 2: counted word pieces, the same in every build (tiny_hub_text.counted_unigram_tokenizer)
    HubEntry("tiny-hub/siglip-cxr", "siglip-cxr", tiny_hub_text.build_siglip_cxr, 800, True,
             "SigLIP as CheXQuery's vision tower (+ 4 x 14-label BCE)", version=2),   # 2: as siglip
    HubEntry("tiny-hub/mae-vit", "mae-vit.pth", tiny_hub_vision.build_mae_vit, 150, True, "MedMAE ViT"),
    HubEntry("tiny-hub/densenet-small", "densenet-small.pth", tiny_hub_vision.build_densenet_small, 120, False,
             "torchvision DenseNet-121"),
    HubEntry("tiny-hub/chexbert", "chexbert", tiny_hub_chexbert.build_chexbert, 600, False,
             "CheXbert (the labeler of CheXbert F1)"),
]}


def is_hub_name(name):
    return isinstance(name, str) and name.startswith("tiny-hub/")


def hub_entry(name):
    if name not in HUB:
        raise KeyError(f"unknown tiny-hub model {name!r}; known: {', '.join(HUB)}")
    return HUB[name]


def hub_cache_dir(cache=None):
    return os.path.abspath(os.path.expanduser(cache or os.environ.get("CXR_TINY_HUB") or DEFAULT_CACHE))


def hub_path(name, cache=None):
    """Where `name` lives in the cache (a directory or a file), built or not."""
    return os.path.join(hub_cache_dir(cache), hub_entry(name).filename)


def marker_path(name, cache=None):
    return os.path.join(hub_cache_dir(cache), hub_entry(name).filename.split(".")[0] + ".built.json")


def is_built(name, cache=None):
    return os.path.exists(marker_path(name, cache)) and os.path.exists(hub_path(name, cache))


def is_stale(name, cache=None):
    """Built, but with another step count or build version than the entry's (a cache from an older version)."""
    if not is_built(name, cache):
        return False
    marker, entry = read_marker(name, cache), hub_entry(name)
    return marker.get("steps") != entry.steps or marker.get("version", 1) != entry.version


def read_marker(name, cache=None):
    with open(marker_path(name, cache)) as f:
        return json.load(f)


# --------------------------------------------------------------------------------------------------
# phantom data

def phantom_corpus(num_samples, image_size=DEFAULT_IMAGE_SIZE, start_index=0, desc="phantoms", seed=None):
    """num_samples phantoms (seed: the "hub" range unless given) -> dict(images (N, 3, H, W) in [0, 1],
    reports [N str], labels (N, 14))."""
    from data.phantom import PHANTOM_SPLIT_SEEDS, ChestPhantomDataset
    seed = PHANTOM_SPLIT_SEEDS["hub"] if seed is None else seed
    dataset = ChestPhantomDataset(num_samples, image_size=image_size, seed=seed, start_index=start_index)
    samples = [dataset[i] for i in tqdm(range(num_samples), desc=desc, leave=False, disable=None)]
    return dict(images=torch.stack([s["image"] for s in samples]).float(),
                reports=[s["report"] for s in samples],
                labels=torch.stack([torch.as_tensor(s["labels"]) for s in samples]).float())


def default_corpora(image_size=DEFAULT_IMAGE_SIZE, num_train=NUM_TRAIN_SAMPLES, num_held_out=NUM_HELD_OUT_SAMPLES):
    return (phantom_corpus(num_train, image_size, 0, "hub phantoms"),
            phantom_corpus(num_held_out, image_size, HELD_OUT_START, "held-out phantoms"))


# --------------------------------------------------------------------------------------------------
# building

def remove_path(path):
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.exists(path):
        os.remove(path)


def write_json_atomic(path, payload):
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2)
    os.replace(tmp, path)


@contextlib.contextmanager
def callers_random_state_kept():
    """The torch (CPU and every CUDA device), numpy and Python random streams are as they were when this exits: a
    build seeds them (torch.manual_seed seeds CUDA too), and a run that builds a hub model on first use must go
    on with the numbers it would have drawn anyway."""
    numpy_state, python_state = np.random.get_state(), random.getstate()
    cuda_devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=cuda_devices):
        try:
            yield
        finally:
            np.random.set_state(numpy_state)
            random.setstate(python_state)


@torch.enable_grad()  # the first use may come from inside a caller's torch.no_grad() (a query initialization)
def build_model(name, cache=None, steps=None, force=False, image_size=DEFAULT_IMAGE_SIZE, corpora=None,
                seed=BUILD_SEED, verbose=True):
    """Build `name` into the cache unless its marker exists (or `force`). Returns its path.

    steps: training steps (default: the entry's fixed count); corpora: (train, held_out) dicts from
    `default_corpora` (made here if None, sharing them saves time when building several)."""
    entry, cache = hub_entry(name), hub_cache_dir(cache)
    target, marker = hub_path(name, cache), marker_path(name, cache)
    if is_built(name, cache) and not force:
        return target
    os.makedirs(cache, exist_ok=True)
    remove_path(marker)          # the marker goes first: from here on the model counts as not built
    steps = entry.steps if steps is None else steps
    if verbose:
        print(f"[tiny-hub] building {name} ({entry.stands_in_for}) into {target}: {steps} steps, seed {seed}")
    start = time.time()
    threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)
    try:
        with callers_random_state_kept():   # the caller's random streams go on unchanged
            train, held_out = corpora if corpora is not None else default_corpora(image_size)
            tmp_dir = os.path.join(cache, f".tmp-{entry.filename}-{os.getpid()}")
            remove_path(tmp_dir)
            os.makedirs(tmp_dir)
            out_path = tmp_dir if "." not in entry.filename else os.path.join(tmp_dir, entry.filename)
            extra = dict(image_size=image_size) if entry.uses_image_size else {}
            with tqdm(total=steps, desc=name, disable=None if verbose else True) as progress:
                measurements, _ = entry.build(out_path, train, held_out, steps=steps, seed=seed, progress=progress,
                                              **extra)
            remove_path(target)      # a stale or half-built copy without marker
            os.replace(out_path, target)
            remove_path(tmp_dir)
    finally:
        torch.set_num_threads(threads)
    seconds = time.time() - start
    write_json_atomic(marker, dict(name=name, path=target, steps=steps, version=entry.version, seed=seed,
                                   image_size=image_size,
                                   build_seconds=round(seconds, 1), stands_in_for=entry.stands_in_for,
                                   measurements=measurements, torch=torch.__version__))
    if verbose:
        print(f"[tiny-hub] built {name} in {seconds:.1f} s: {format_measurements(measurements)}")
    return target


def ensure_built(name, cache=None):
    """The local path of hub model `name`, building it first (with a printed note) if missing, or rebuilding
    it if its marker names another step count than the entry's (a cache built by an older version)."""
    if not is_built(name, cache):
        print(f"[tiny-hub] {name} is not in {hub_cache_dir(cache)} yet; building it once (about a minute)")
        build_model(name, cache)
    elif is_stale(name, cache):
        print(f"[tiny-hub] {name} in {hub_cache_dir(cache)} was built with another step count or build than "
              f"this version's ({hub_entry(name).steps} steps, build {hub_entry(name).version}): rebuilding it")
        build_model(name, cache, force=True)
    return hub_path(name, cache)


def build_all(cache=None, only=None, force=False, image_size=DEFAULT_IMAGE_SIZE):
    names = [only] if only else list(HUB)
    stale = [n for n in names if is_stale(n, cache)]
    todo = [n for n in names if force or not is_built(n, cache) or n in stale]
    start, seconds = time.time(), {}
    corpora = default_corpora(image_size) if todo else None
    print(f"[tiny-hub] phantom corpora ready in {time.time() - start:.1f} s")
    for name in names:
        t = time.time()
        build_model(name, cache, force=force or name in stale, image_size=image_size, corpora=corpora)
        seconds[name] = time.time() - t
    for name in names:
        print(f"  {name:26s} {seconds[name]:6.1f} s")
    print(f"[tiny-hub] total {time.time() - start:.1f} s (cache {hub_cache_dir(cache)})")


def format_measurements(m):
    text = f"{m['objective']}: random twin {m['random_twin']:.3f}, before {m['before']:.3f}, after {m['after']:.3f}"
    extras = [f"{k} {v:.3f}" for k, v in m.items() if k.startswith(("i2t_", "auroc_", "acc_"))]
    return text + ("; " + ", ".join(extras) if extras else "")


def list_models(cache=None):
    print(f"tiny hub cache: {hub_cache_dir(cache)}")
    for name in HUB:
        if is_built(name, cache):
            info = read_marker(name, cache)
            print(f"  {name:26s} built  {info['build_seconds']:6.1f} s  {info['steps']} steps  "
                  f"image {info['image_size']}  {hub_path(name, cache)}")
            print(f"      {format_measurements(info['measurements'])}")
        else:
            print(f"  {name:26s} not built")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m hub.tiny_hub", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build all hub models (or --only one)")
    build.add_argument("--cache", default=None, help="cache dir (default: $CXR_TINY_HUB or ~/.cache/cxr-vlm/tiny-hub)")
    build.add_argument("--only", default=None, choices=list(HUB))
    build.add_argument("--force", action="store_true", help="rebuild even if built")
    build.add_argument("--image-size", type=int, default=DEFAULT_IMAGE_SIZE)
    listing = sub.add_parser("list", help="show what is built and where")
    listing.add_argument("--cache", default=None)
    args = parser.parse_args(argv)
    if args.command == "build":
        build_all(args.cache, args.only, args.force, args.image_size)
    else:
        list_models(args.cache)


if __name__ == "__main__":
    main()
