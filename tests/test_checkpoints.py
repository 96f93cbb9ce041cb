"""Checkpoints without frozen pretrained weights (training.frozen_pretrained / save_checkpoint / load_weights,
evaluate.py --export-full), on the tiny hub's stand-ins: CheXQuery's SigLIP and T5 bases and Concept CAM's
backbone with stage1.freeze_backbone=true are named by source and fingerprint instead of stored; loading
rebuilds them from the source and checks the fingerprint; a full export loads without the source. Exact
resume with such checkpoints: tests/test_chexquery_train.py::test_same_phase_resume_is_exact (tiny default).
Run: python -m pytest -q tests/test_checkpoints.py
"""
import argparse
import fnmatch
import shutil

import pytest
import torch

import evaluate
import train_chexquery as T
import train_concept_cam as C
import training
from hub.pretrained import resolve_pretrained

SMALL = ["data.num_train=32", "data.num_val=8", "data.num_test=8", "phases.phase1.batch_size=16",
         "phases.phase1.effective_batch_size=32", "eval.final_test=false", "train.log_interval=1"]


def config(*overrides):
    return training.load_config(training.default_config_path("chexquery"), list(SMALL) + list(overrides))


def built(cfg, seed):
    """A CheXQuery model whose trainable parts (LoRA, queries, heads) hold seed-dependent non-zero values."""
    torch.manual_seed(seed)
    model = T.build_model(cfg)
    frozen = training.frozen_pretrained(model, T.frozen_sources(cfg), T.every_phase_trainable(model))
    patterns = T.every_phase_trainable(model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns):
                p.add_(0.01 * torch.randn_like(p))
    return model.eval(), frozen


def unique_bytes(tensors):
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values())


def outputs(model):
    g = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, 96, 96, generator=g)                                 # (B, 3, H, W)
    ids = torch.randint(0, model.text_decoder.model.config.vocab_size, (2, 9), generator=g)   # (B, T)
    with torch.no_grad():
        return model(images, ids)["logits"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A slim and a full checkpoint of one tiny CheXQuery model."""
    root = tmp_path_factory.mktemp("checkpoints")
    cfg = config()
    model, frozen = built(cfg, seed=0)
    training.save_checkpoint(root / "slim.pt", model, None, None, 3, 0, 1, 0.5, cfg, frozen=frozen)
    training.save_checkpoint(root / "full.pt", model, None, None, 3, 0, 1, 0.5, cfg)
    return root, cfg, model, frozen


def test_slim_checkpoint_leaves_out_the_frozen_pretrained_tensors_and_loads_back_identical(saved):
    root, cfg, model, frozen = saved
    assert {k: g["source"] for k, g in frozen.items()} == {"vision_encoder.model.": "tiny-hub/siglip-cxr",
                                                          "text_decoder.model.": "tiny-hub/t5-span"}
    slim = torch.load(root / "slim.pt", weights_only=False)
    state = model.state_dict()
    left_out = [k for g in frozen.values() for k in g["keys"]]
    assert not set(left_out) & set(slim["model"]) and set(slim["model"]) | set(left_out) == set(state)
    assert slim["frozen"] == frozen and torch.load(root / "full.pt", weights_only=False)["frozen"] == {}
    # LoRA adapters, the decoder projection and the new modules stay; only frozen base weights go
    assert any("lora_B" in k for k in slim["model"]) and not any("lora_" in k for k in left_out)
    assert all(k.startswith(tuple(frozen)) for k in left_out)
    # the files differ by the frozen tensors' bytes (tied T5 embeddings counted once); tiny: ~30% remains
    full_size, slim_size = (root / "full.pt").stat().st_size, (root / "slim.pt").stat().st_size
    frozen_bytes = unique_bytes([state[k] for k in left_out])
    assert abs((full_size - slim_size) - frozen_bytes) < 0.02 * frozen_bytes
    assert slim_size < 0.4 * full_size
    # a fresh build (other random LoRA / heads) takes the rest from the checkpoint: identical weights, outputs
    fresh, _ = built(cfg, seed=1)
    assert not torch.equal(outputs(fresh), outputs(model))
    training.load_checkpoint(root / "slim.pt", fresh, restore_rng=False)
    assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in state.items())
    assert torch.equal(outputs(fresh), outputs(model))


def test_a_fingerprint_that_differs_is_one_error_naming_the_source_and_the_checkpoint(saved, tmp_path):
    root, cfg, _, _ = saved
    checkpoint = torch.load(root / "slim.pt", weights_only=False)
    checkpoint["frozen"]["text_decoder.model."]["fingerprint"] = "0" * 64
    with pytest.raises(training.ConfigError) as error:
        training.load_weights(built(cfg, 0)[0], checkpoint, "runs/x/best.pt")
    message = str(error.value)
    assert "\n" not in message and "'tiny-hub/t5-span'" in message and "runs/x/best.pt" in message
    assert "--export-full" in message
    # a model built with random weights (model.pretrained=false) has no source: the same error
    random_model = T.build_model(config("model.pretrained=false"))
    with pytest.raises(training.ConfigError, match="vision_encoder.model.* .* from 'tiny-hub/siglip-cxr'"):
        training.load_weights(random_model, torch.load(root / "slim.pt", weights_only=False), "slim.pt")
    # evaluate.py says it on one line too
    torch.save(checkpoint, tmp_path / "tampered.pt")
    with pytest.raises(SystemExit, match="evaluate.py: .*tampered.pt leaves out the frozen pretrained weights"):
        evaluate.main([str(tmp_path / "tampered.pt"), "--export-full", str(tmp_path / "out.pt")])
    assert not (tmp_path / "out.pt").exists()


def test_a_changed_source_file_is_caught(tmp_path):
    """The SigLIP weights named by a local path change after the checkpoint was written."""
    from transformers import SiglipModel
    source = tmp_path / "siglip"
    shutil.copytree(resolve_pretrained("tiny-hub/siglip-cxr"), source)
    cfg = config(f"model.vision.name={source}")
    model, frozen = built(cfg, 0)
    training.save_checkpoint(tmp_path / "slim.pt", model, None, None, 1, 0, 1, 0.0, cfg, frozen=frozen)
    training.load_weights(built(cfg, 1)[0], torch.load(tmp_path / "slim.pt", weights_only=False))   # unchanged: fine
    siglip = SiglipModel.from_pretrained(source)
    with torch.no_grad():
        siglip.vision_model.post_layernorm.weight.add_(1e-3)
    siglip.save_pretrained(source)
    with pytest.raises(training.ConfigError, match=f"slim.pt leaves out .* from '{source}'"):
        training.load_weights(built(cfg, 1)[0], torch.load(tmp_path / "slim.pt", weights_only=False),
                              tmp_path / "slim.pt")


def test_training_run_writes_slim_checkpoints_evaluate_rebuilds_them_and_the_full_export_needs_no_source(tmp_path,
                                                                                                         capsys):
    run = tmp_path / "run"
    T.main(["--phase", "1", "--out", str(run), "train.stop_after_steps=1"] + SMALL)
    slim = torch.load(run / "last.pt", weights_only=False)
    assert set(slim["frozen"]) == {"vision_encoder.model.", "text_decoder.model."}
    evaluate.main([str(run / "last.pt"), "--export-full", str(tmp_path / "full.pt")])
    assert "with the frozen weights of tiny-hub/siglip-cxr, tiny-hub/t5-span" in capsys.readouterr().out
    full = torch.load(tmp_path / "full.pt", weights_only=False)
    assert full["frozen"] == {} and set(slim["model"]) < set(full["model"])
    assert all(torch.equal(v, full["model"][k]) for k, v in slim["model"].items())
    assert set(full) == set(slim) and all(full[k] == slim[k] for k in ("step", "phase", "config", "tokenizer_files"))
    assert full["optimizer"]["param_groups"] == slim["optimizer"]["param_groups"]
    # evaluate's model: the slim checkpoint from the sources, the export from random weights (no source read)
    args = argparse.Namespace(device="cpu")
    _, from_sources, _, _ = T.model_for_checkpoint(slim, args)
    _, from_export, _, _ = T.model_for_checkpoint(full, args)
    assert not from_export.cfg.vision["pretrained"] and from_sources.cfg.vision["pretrained"]
    a, b = from_sources.state_dict(), from_export.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # a checkpoint that holds every weight is copied as it is
    evaluate.main([str(tmp_path / "full.pt"), "--export-full", str(tmp_path / "copy.pt")])
    assert (tmp_path / "copy.pt").read_bytes() == (tmp_path / "full.pt").read_bytes()


def test_concept_cam_frozen_backbone_is_left_out_through_the_stages(tmp_path):
    """stage1.freeze_backbone=true: the backbone is frozen in every stage and comes from model.backbone."""
    cfg = training.load_config(training.default_config_path("concept_cam"), [
        "model.image_size=64", "data.num_train=32", "data.num_val=16", "data.num_test=16", "train.batch_size=16",
        "stage1.epochs=1", "stage2.epochs=1", "train.warmup_steps=1", "stage1.freeze_backbone=true"])
    best1 = C.run_stage(cfg, 1, tmp_path / "s1", final_eval=False)
    best2 = C.run_stage(cfg, 2, tmp_path / "s2", resume=best1, final_eval=False)
    s1, s2 = (torch.load(p, weights_only=False) for p in (best1, best2))
    assert s1["frozen"] == s2["frozen"] and s1["frozen"]["backbone."]["source"] == "tiny-hub/mae-vit"
    assert not any(k.startswith("backbone.") for k in s2["model"])
    _, model, _, _ = C.model_for_checkpoint(s2, argparse.Namespace(device="cpu"))
    assert torch.equal(model.state_dict()["prototypes"], s2["model"]["prototypes"])
    # the default (the backbone trains in stage 1): stages 2-3 keep the stage-1 backbone in the checkpoint
    assert C.frozen_sources(training.load_config(training.default_config_path("concept_cam"))) == {}
