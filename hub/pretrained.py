"""The one loading entry point for pretrained parts: configs name a model, this module finds and loads it.

    resolve_pretrained(name) -> str         tiny-hub names -> local path (built on first use); others unchanged
    load_hf(cls, name, system=None, **kw)   cls.from_pretrained(resolve_pretrained(name), **kw)
    load_checkpoint_file(name, system=None) torch.load of a MedMAE-style/.pth file, a tiny-hub file, or
                                            "torchvision/<arch>" (ImageNet weights from the torch hub cache)
    random_init_twin(name, cls=None)        the same architecture with fresh random weights

Design choices:
- Paper configs name real weights (google/flan-t5-base, a MedMAE .pth path, torchvision/densenet121);
  tiny configs name tiny-hub models (hub/tiny_hub.py). Both go through the same loader calls.
- A name that cannot be loaded (offline and not cached, a missing file) raises ONE PretrainedLoadError
  that names the model, the cache it looked in and the tiny config to run instead. Never a silent
  fallback to random weights: random weights only come from an explicit `random_init_twin`.
- `random_init_twin` of a tiny-hub name returns the class the hub trained (BertForMaskedLM,
  T5ForConditionalGeneration, SiglipModel, tiny_hub_vision.MaskedAutoencoderViT, torchvision DenseNet,
  tiny_hub_chexbert.ChexbertTrainingNet; models/chexbert.py loads the CheXbert file itself)
  from the fixed tiny configs, without building anything.
- torchvision's DenseNet files use old key names (`norm.1`); `load_checkpoint_file("torchvision/densenet*")`
  renames them (`norm1`), so `model.load_state_dict(sd)` works on both scales.
"""
import os
import re

import torch

from hub import tiny_hub, tiny_hub_chexbert, tiny_hub_text, tiny_hub_vision

# which system's tiny config replaces a public pretrained name (for the error message)
SYSTEM_OF_PUBLIC_NAME = [
    ("flan-t5", "chexquery"), ("siglip", "chexquery"), ("biobert", "chexquery"),
    ("bio_clinicalbert", "wsrpn_vl"), ("densenet", "wsrpn_vl"),
    ("mae", "concept_cam"), ("biomedclip", "patch_ib"), ("pubmedbert", "patch_ib"), ("chexbert", "chexquery"),
]


class PretrainedLoadError(RuntimeError):
    """A pretrained model could not be loaded; the message says where we looked and what to use instead."""


def tiny_config_hint(name, system=None):
    if system is None:
        lowered = str(name).lower()
        system = next((s for key, s in SYSTEM_OF_PUBLIC_NAME if key in lowered), None)
    if system is None:
        return "run the system's embedded default instead: configs/tiny/<system>.yaml (it uses tiny-hub/* models)"
    return f"run the tiny config instead: configs/tiny/{system}.yaml (it uses tiny-hub/* models)"


def resolve_pretrained(name, cache=None):
    """tiny-hub/... -> local path in the hub cache (built with a progress bar the first time); other
    names (hub ids, local paths, torchvision/...) are returned unchanged."""
    if tiny_hub.is_hub_name(name):
        return tiny_hub.ensure_built(name, cache)
    return name


def hf_cache_description():
    from huggingface_hub import constants
    offline = " (HF_HUB_OFFLINE is set)" if constants.HF_HUB_OFFLINE else ""
    return f"HF_HOME={constants.HF_HOME}, hub cache {constants.HF_HUB_CACHE}{offline}"


def load_hf(cls, name, system=None, cache=None, **kwargs):
    """cls.from_pretrained(resolve_pretrained(name), **kwargs), or PretrainedLoadError naming the model,
    the cache looked in, and the tiny config (configs/tiny/<system>.yaml) to use instead."""
    path = resolve_pretrained(name, cache)
    try:
        return cls.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as error:
        looked = f"the local directory {path}" if os.path.isdir(path) else hf_cache_description()
        raise PretrainedLoadError(
            f"could not load pretrained {cls.__name__} {name!r}: not found in {looked}, and the model hub "
            f"could not be reached. Download it into that cache on a machine with internet, or "
            f"{tiny_config_hint(name, system)}. Cause: {str(error).splitlines()[0]}") from None


def densenet_keys_to_current(state_dict):
    """torchvision's published DenseNet files say `denselayer1.norm.1.weight`; the modules say `norm1`."""
    pattern = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$")
    renamed = {}
    for key, value in state_dict.items():
        match = pattern.match(key)
        renamed[match.group(1) + match.group(2) if match else key] = value
    return renamed


def torchvision_weights_file(arch):
    """The torch hub cache file of torchvision's default ImageNet weights for `arch` (e.g. densenet121)."""
    import torchvision
    weights = torchvision.models.get_model_weights(arch).DEFAULT
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))


def load_checkpoint_file(name, system=None, cache=None):
    """A weights file as a dict: tiny-hub/mae-vit -> {'model': ..., 'args': ...} (MedMAE layout),
    tiny-hub/densenet-small -> state_dict, a .pth path -> its contents, torchvision/<arch> -> its ImageNet
    state_dict (from the torch hub cache, keys renamed to the current module names)."""
    if isinstance(name, str) and name.startswith("torchvision/"):
        path = torchvision_weights_file(name.split("/", 1)[1])
        where = f"the torch hub cache ({os.path.dirname(path)}; set TORCH_HOME to move it)"
    else:
        path = resolve_pretrained(name, cache)
        where = "that path"
    if not os.path.isfile(path):
        raise PretrainedLoadError(
            f"pretrained weights file for {name!r} not found: looked for {path} in {where}. Download it "
            f"there on a machine with internet, or {tiny_config_hint(name, system)}.")
    # trusted local files; MedMAE's file may hold an argparse.Namespace, which weights_only rejects
    contents = torch.load(path, map_location="cpu", weights_only=False)
    if name.startswith("torchvision/densenet"):
        contents = densenet_keys_to_current(contents)
    return contents


def random_init_twin(name, cls=None, image_size=tiny_hub.DEFAULT_IMAGE_SIZE):
    """The architecture of `name` with fresh random weights (seed it with torch.manual_seed first).

    tiny-hub names use the fixed tiny configs (nothing is built). Other HF names need `cls` and their
    config.json locally (a directory, or the HF cache), else PretrainedLoadError."""
    if tiny_hub.is_hub_name(name):
        def siglip():
            return tiny_hub_text.SiglipModel(tiny_hub_text.siglip_config(image_size))
        makers = {
            "tiny-hub/bert-mlm": lambda: tiny_hub_text.BertForMaskedLM(tiny_hub_text.bert_config()),
            "tiny-hub/t5-span": lambda: tiny_hub_text.T5ForConditionalGeneration(tiny_hub_text.t5_config()),
            "tiny-hub/siglip": siglip,
            "tiny-hub/siglip-cxr": siglip,    # the same SiglipModel shape, built with a label loss
            "tiny-hub/mae-vit": lambda: tiny_hub_vision.MaskedAutoencoderViT(
                tiny_hub_vision.TinyMaeConfig(image_size=image_size)),
            "tiny-hub/densenet-small": tiny_hub_vision.tiny_densenet,
            "tiny-hub/chexbert": lambda: tiny_hub_chexbert.ChexbertTrainingNet(tiny_hub_chexbert.bert_config()),
        }
        tiny_hub.hub_entry(name)   # unknown names raise with the list of known ones
        return makers[name]()
    if cls is None:
        raise ValueError(f"random_init_twin({name!r}) needs cls= (e.g. transformers.AutoModel) for non-hub names")
    from transformers import AutoConfig
    config = load_hf(AutoConfig, name)
    return cls.from_config(config) if hasattr(cls, "from_config") else cls(config)
