"""Entry point that tests/test_distributed.py starts (plainly or under torchrun): `python tests/dist_entry.py
train_patch_ib ARGS...` runs that script's main(ARGS) through training.run_cli, as `python train_patch_ib.py
ARGS` would. Two switches for the comparisons:
--no-dropout: every nn.Dropout of the built model at p = 0 (a dropout mask is drawn per rank, so with dropout
    2 processes x b and 1 process x 2b agree only in distribution);
--no-text-cache: WSRPN-VL's frozen text encoder without its caption cache (a cached caption keeps the float
    rounding of the padded batch that first encoded it, so with the cache a resumed run, in one process as in
    two, matches the uninterrupted one to ~1e-7 rather than bit for bit)."""
import importlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import training  # noqa: E402


def without_text_cache(build_text_encoder):
    def build(*args, **kwargs):
        encoder = build_text_encoder(*args, **kwargs)
        encoder.cache_size = 0
        return encoder
    return build


def without_dropout(build_model):
    def build(*args, **kwargs):
        model = build_model(*args, **kwargs)
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        return model
    return build


if __name__ == "__main__":
    script, argv = sys.argv[1], sys.argv[2:]
    module = importlib.import_module(script)
    if "--no-dropout" in argv:
        argv.remove("--no-dropout")
        module.build_model = without_dropout(module.build_model)
    if "--no-text-cache" in argv:
        argv.remove("--no-text-cache")
        module.build_text_encoder = without_text_cache(module.build_text_encoder)
    training.run_cli(lambda: module.main(argv), f"{script}.py")
