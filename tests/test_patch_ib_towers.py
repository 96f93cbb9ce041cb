"""Patch-IB-CXR paper towers (seed 004): BiomedCLIP's trained heads kept, the paper-size model on phantoms.

Run: python -m pytest -q tests/test_patch_ib_towers.py            (CPU, ~10 s; needs open_clip_torch, dev dependency)
     python -m pytest -q -m slow tests/test_patch_ib_towers.py    (paper-size towers, random weights: ~5 min of CPU)
The open_clip model is a small CustomTextCLIP built from a config dict in BiomedCLIP's layout (timm ViT with a
linear head on the CLS token, a BERT text tower with an MLP head on CLS), saved as the hub repo's two files
and loaded offline: nothing is downloaded.
"""
import json

import pytest
import torch

from hub.pretrained import resolve_pretrained
from models.patch_ib import PatchIB, PatchIBConfig
from models.patch_ib_towers import CLIP_MEAN, CLIP_STD

REPORTS = ["Findings: small left pleural effusion.", "Heart size is normal.", "Right upper lobe consolidation."]


def save_small_open_clip(folder):
    """a BiomedCLIP-shaped open_clip model with random weights, written as open_clip_config.json +
    open_clip_pytorch_model.bin -> the model"""
    open_clip = pytest.importorskip("open_clip")
    bert = resolve_pretrained("tiny-hub/bert-mlm")
    model_cfg = {"embed_dim": 32,
                 "vision_cfg": {"timm_model_name": "vit_tiny_patch16_224", "timm_model_pretrained": False,
                                "timm_pool": "", "timm_proj": "linear", "image_size": 224},
                 "text_cfg": {"hf_model_name": bert, "hf_tokenizer_name": bert, "hf_proj_type": "mlp",
                              "hf_pooler_type": "cls_last_hidden_state_pooler", "context_length": 64}}
    torch.manual_seed(0)
    text_cfg = {**model_cfg["text_cfg"], "hf_model_pretrained": False}              # no download: random BERT
    model = open_clip.CustomTextCLIP(**{**model_cfg, "text_cfg": text_cfg})
    with torch.no_grad():
        model.logit_scale.fill_(3.1)                    # not the fresh init log(1/0.07): copying it is tested
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg}))
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    return model.eval(), open_clip.tokenizer.HFTokenizer(bert)


def test_fresh_model_a_scores_pairs_as_the_open_clip_model(tmp_path):
    reference, tokenizer = save_small_open_clip(tmp_path)
    model = PatchIB(PatchIBConfig(variant="A", tower="biomedclip", image_tower=str(tmp_path),
                                  text_tower=str(tmp_path), image_size=224, max_text_length=64, embed_dim=32)).eval()
    images = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        image_ref = reference.encode_image((images - mean) / std, normalize=True)          # (2, 32)
        text_ref = reference.encode_text(tokenizer(REPORTS, context_length=64), normalize=True)   # (3, 32)
        logits_ref = reference.logit_scale.exp() * image_ref @ text_ref.T                  # (2, 3)
        ids, attention_mask, _ = model.tokenize(REPORTS)
        _, image = model.encode_image(images)
        _, text = model.encode_text(ids, attention_mask)
        logits = model.logit_scale.exp() * image @ text.T
    assert float(model.logit_scale.detach()) == pytest.approx(3.1)
    assert torch.allclose(image, image_ref, atol=1e-5) and torch.allclose(text, text_ref, atol=1e-5)
    assert torch.allclose(logits, logits_ref, atol=1e-4)
    with pytest.raises(ValueError, match="text_tower"):
        PatchIB(PatchIBConfig(variant="A", tower="biomedclip", image_tower=str(tmp_path), text_tower="other",
                              image_size=224, max_text_length=64, embed_dim=32))


@pytest.mark.slow
def test_paper_size_model_runs_every_variant_on_master_jsonl_phantoms(tmp_path):
    """BiomedCLIP-shaped towers (random weights, offline; heads of BiomedCLIP's shapes) at 224 px: two training
    steps (the bottleneck phase's terms, every part of the variant on; all parameters trainable) of each
    variant A-E on phantoms written in the MIMIC-CXR-JPG + master-JSONL layout and read by the paper config."""
    import contextlib

    import train_patch_ib
    from data.mimic_cxr import write_master_jsonl
    from data.phantom import phantom_split
    training = train_patch_ib.training
    root = tmp_path / "mimic"
    jsonl = write_master_jsonl(root, [phantom_split("train", 4, 224)[i] for i in range(4)])["path"]
    for variant in "ABCDE":
        cfg = training.load_config("configs/patch_ib.yaml", [
            f"model.variant={variant}", "model.pretrained=false", f"data.master_jsonl={jsonl}",
            f"data.image_root={root}", "data.num_workers=0"])
        data = train_patch_ib.build_dataset(cfg, "train")
        batch = {"image": torch.stack([data[i]["image"] for i in range(2)]),
                 "report": [data[i]["report"] for i in range(2)]}
        assert batch["image"].shape == (2, 3, 224, 224)
        torch.manual_seed(0)
        model = train_patch_ib.build_model(cfg)
        assert model.num_patches == 196 and model.image_proj.weight.shape == (512, 768)
        assert model.image_proj.bias is None                                        # BiomedCLIP's head shapes
        assert [tuple(m.weight.shape) for m in model.text_proj if hasattr(m, "weight")] == [(640, 768), (512, 640)]
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=1e-4)
        scaler = torch.amp.GradScaler(enabled=False)
        phase = training.Config(name="bottleneck", steps=2, lr=1e-4, use_local=True, use_ib=True)
        before = model.image_proj.weight.detach().clone()
        model.train()
        for step in range(2):
            out, terms, _ = train_patch_ib.train_step(model, batch, optimizer, scaler, trainable,
                                                      contextlib.nullcontext(), cfg, phase, "cpu", step)
            assert torch.isfinite(terms["loss"])
        assert ("masked_embed" in out) == (variant in "CDE") and ("summaries" in out) == (variant != "A")
        assert not torch.equal(before, model.image_proj.weight)
