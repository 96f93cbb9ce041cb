"""Checkpoint size with and without the frozen pretrained weights: paper-size CheXQuery and Patch-IB, tiny CheXQuery.

    python -m benchmarks.checkpoint_size        # ~1 minute, ~5 GB of memory, ~2.5 GB in a temp folder; a markdown table

The paper configs' pretrained weights are not on this machine, so each model is built with random weights
(model.pretrained=false), which have the shapes of the real ones. Random weights have no source, so a run of
such a model stores them in full. The "slim" file is the one the same model gives when the parts its paper
config loads from named weights are declared by their sources (the script's frozen_sources of the config
WITHOUT model.pretrained=false, minus every phase's trainable patterns: training.frozen_pretrained), i.e. the
size a run with the real weights writes; only the fingerprints' values differ. Both files are written by
training.save_checkpoint, with the optimizer state of the phase named in the table (AdamW's two moments of
every trainable parameter, made by one step on zero gradients), to a temporary folder. The tiny CheXQuery row
is built from its tiny-hub sources, as a run builds it.

Patch-IB trains both towers in its global and local phases (PHASE_TRAINABLE), so nothing of it is frozen in
every phase: its checkpoint is the same either way.
"""
import argparse
import functools
import tempfile
from pathlib import Path

import torch

import train_chexquery
import train_patch_ib
import training

CONFIGS = training.REPO_ROOT / "configs"


def sizes(model, phase_patterns, sources, every_phase_trainable, folder, name):
    """-> dict: parameters, frozen-pretrained parameters, bytes of the full and the slim checkpoint."""
    frozen = training.frozen_pretrained(model, sources, every_phase_trainable)
    training.set_trainable(model, phase_patterns, verbose=False)
    optimizer = torch.optim.AdamW(training.param_groups(model, 0.01, verbose=False), lr=1e-4)
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    config = {"system": name}
    row = {"parameters": sum(p.numel() for p in model.parameters()),
           "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
           "frozen_pretrained": sum({id(model.get_parameter(k)): model.get_parameter(k).numel()   # tied: once
                                     for g in frozen.values() for k in g["keys"]}.values())}
    for kind, groups in (("full", None), ("slim", frozen)):
        path = Path(folder) / f"{name}-{kind}.pt"
        training.save_checkpoint(path, model, optimizer, None, 1, 0, "x", 0.0, config, frozen=groups)
        row[kind] = path.stat().st_size
        path.unlink()
    row["sources"] = ", ".join(f"{g['source']} ({len(g['keys'])} tensors)" for g in frozen.values()) or "-"
    return row


def chexquery(folder, config=CONFIGS / "chexquery.yaml", random_weights=True, phase=2):
    """random_weights: built with model.pretrained=false (paper size, offline); else from the config's sources."""
    declared = training.load_config(config)
    cfg = training.load_config(config, ["model.pretrained=false"] if random_weights else [])
    model = train_chexquery.build_model(cfg)
    return sizes(model, train_chexquery.trainable_patterns(model, phase), train_chexquery.frozen_sources(declared),
                 train_chexquery.every_phase_trainable(model), folder, "chexquery")


def patch_ib(folder, phase="global"):
    cfg = training.load_config(CONFIGS / "patch_ib.yaml", ["model.pretrained=false"])
    model = train_patch_ib.build_model(cfg)
    return sizes(model, train_patch_ib.PHASE_TRAINABLE[phase], {}, [], folder, "patch_ib")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="checkpoint-size-") as folder:
        tiny = functools.partial(chexquery, config=CONFIGS / "tiny" / "chexquery.yaml", random_weights=False)
        for label, measure in (("CheXQuery (configs/chexquery.yaml), phase 2", chexquery),
                               ("Patch-IB (configs/patch_ib.yaml), phase global", patch_ib),
                               ("CheXQuery tiny default (tiny hub weights), phase 2", tiny)):
            torch.manual_seed(0)
            try:
                rows.append((label, measure(folder)))
            except (training.ConfigError, ImportError) as error:   # a checkout whose config cannot build it offline
                print(f"{label}: not measured ({error})")
    print("| model, optimizer state of | parameters | trainable | frozen pretrained (left out) | full MB | "
          "slim MB | slim / full |\n|---|---:|---:|---:|---:|---:|---:|")
    for label, r in rows:
        print(f"| {label} | {r['parameters'] / 1e6:.1f} M | {r['trainable'] / 1e6:.2f} M | "
              f"{r['frozen_pretrained'] / 1e6:.1f} M | {r['full'] / 1e6:.0f} | {r['slim'] / 1e6:.0f} | "
              f"{r['slim'] / r['full']:.3f} |")
    for label, r in rows:
        print(f"{label}: left out {r['sources']}")
    return rows


if __name__ == "__main__":
    main()
