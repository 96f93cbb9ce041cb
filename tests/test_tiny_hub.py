"""Tests of the tiny model hub (hub/tiny_hub*.py) and the loading entry point (hub/pretrained.py).

Run:  /work/venv/bin/pytest -q tests/test_tiny_hub.py            (fast: all but T5, ~38 s on 2 cores)
      /work/venv/bin/pytest -q -m slow tests/test_tiny_hub.py    (the T5 build test, ~10 s)

Each family is built with a small step budget on small phantom corpora into a temp cache, then
(a) reloaded through its library's own loader with outputs identical to the in-memory model, and
(b) scored on held-out phantoms from a different seed, where its objective must be clearly lower than
    that of its random-init twin (same inputs, same masks).
"""
import json
import os
import subprocess
import sys

import pytest
import torch
import timm
from transformers import (AutoModel, AutoModelForMaskedLM, AutoTokenizer, BertForMaskedLM, SiglipModel,
                          T5ForConditionalGeneration)

from hub import pretrained, tiny_hub, tiny_hub_text as text, tiny_hub_vision as vision

IMAGE_SIZE = 64     # 4x4 patch grid: fast
HELD_OUT_SEED = 7   # not a split seed of data/phantom.py, and not the hub's


@pytest.fixture(scope="module")
def corpora():
    train = tiny_hub.phantom_corpus(192, IMAGE_SIZE, 0, "test train")
    held_out = tiny_hub.phantom_corpus(64, IMAGE_SIZE, 0, "test held-out", seed=HELD_OUT_SEED)
    return train, held_out


def build(name, tmp_path, corpora, steps):
    """Run the entry's build into tmp_path; returns (path, measurements, in-memory model)."""
    entry = tiny_hub.hub_entry(name)
    out = str(tmp_path / entry.filename)
    if "." not in entry.filename:
        os.makedirs(out)
    extra = dict(image_size=IMAGE_SIZE) if entry.uses_image_size else {}
    torch.manual_seed(0)
    measurements, model = entry.build(out, *corpora, steps=steps, seed=0, **extra)
    return out, measurements, model


# --------------------------------------------------------------------------------------------------
# families

def test_bert_mlm_reloads_and_beats_random_twin(tmp_path, corpora):
    path, m, model = build("tiny-hub/bert-mlm", tmp_path, corpora, steps=40)
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert type(tokenizer).__name__ == "BertTokenizer" and tokenizer.mask_token == "[MASK]"
    reloaded = AutoModelForMaskedLM.from_pretrained(path)
    batch = tokenizer(corpora[1]["reports"][:4], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, reloaded(**batch).logits)
        # the encoder alone loads through AutoModel too (how frozen text encoders are used)
        assert torch.allclose(AutoModel.from_pretrained(path)(**batch).last_hidden_state,
                              model.bert(**batch).last_hidden_state, atol=1e-6)
    held = corpora[1]["reports"]
    batches = lambda idx, gen: text.mlm_batch(tokenizer, [held[i] for i in idx], gen)  # noqa: E731
    torch.manual_seed(1)
    twin = pretrained.random_init_twin("tiny-hub/bert-mlm")
    loss_trained = text.evaluate_loss(reloaded, batches, len(held), 32)
    loss_twin = text.evaluate_loss(twin, batches, len(held), 32)
    assert loss_twin > 5.5                       # about ln(512) = 6.2 for random weights
    assert loss_trained < loss_twin - 1.0, (loss_trained, loss_twin)
    assert m["after"] < m["random_twin"] - 1.0


def test_densenet_reloads_with_load_state_dict_and_beats_random_twin(tmp_path, corpora):
    path, m, model = build("tiny-hub/densenet-small", tmp_path, corpora, steps=30)
    fresh = vision.tiny_densenet()
    fresh.load_state_dict(torch.load(path))      # the torchvision way, strict
    fresh.eval()
    images, labels = corpora[1]["images"], corpora[1]["labels"]
    with torch.no_grad():
        assert torch.equal(fresh(vision.imagenet_normalize(images[:4])), model(vision.imagenet_normalize(images[:4])))
    assert set(dict(fresh.features.named_children())) >= {"denseblock4", "norm5"}
    torch.manual_seed(1)
    bce_trained, _ = vision.densenet_eval(fresh, images, labels)
    bce_twin, _ = vision.densenet_eval(pretrained.random_init_twin("tiny-hub/densenet-small"), images, labels)
    assert bce_trained < bce_twin - 0.2, (bce_trained, bce_twin)


@pytest.mark.slow
def test_t5_span_reloads_and_beats_random_twin(tmp_path, corpora):
    path, m, model = build("tiny-hub/t5-span", tmp_path, corpora, steps=40)
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert tokenizer.convert_tokens_to_ids("<extra_id_0>") != tokenizer.unk_token_id
    assert tokenizer.tokenize("effusion <extra_id_0> left")[1] == "<extra_id_0>"
    reloaded = T5ForConditionalGeneration.from_pretrained(path)
    held = corpora[1]["reports"]
    batches = lambda idx, gen: text.span_corruption_batch(tokenizer, [held[i] for i in idx], gen)  # noqa: E731
    batch = batches([0, 1, 2], torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, reloaded(**batch).logits)
    torch.manual_seed(1)
    twin = pretrained.random_init_twin("tiny-hub/t5-span")
    loss_trained = text.evaluate_loss(reloaded, batches, len(held), 32)
    loss_twin = text.evaluate_loss(twin, batches, len(held), 32)
    assert loss_trained < loss_twin - 1.5, (loss_trained, loss_twin)


VOCAB_SCRIPT = """
import hashlib, json
from hub import tiny_hub, tiny_hub_text as text
reports = tiny_hub.phantom_corpus(192, 64, 0, "")["reports"]
siglip = text.siglip_tokenizer(dict(reports=reports), "tiny-hub/siglip")
t5 = text.counted_unigram_tokenizer(reports, text.T5_VOCAB_SIZE, text.T5_SENTINELS, 128)
bert = text.counted_wordpiece_tokenizer(reports)
digest = lambda tok: hashlib.sha1(tok.backend_tokenizer.to_str().encode()).hexdigest()
print(json.dumps(dict(siglip=digest(siglip), t5=digest(t5), bert=digest(bert))))
"""


def test_tokenizers_are_the_same_in_every_process():
    """The hub's SigLIP, T5 and BERT tokenizers (pieces, ids and scores) come out identical in separate
    processes. The `tokenizers` trainers do not: UnigramTrainer gives its required characters scores 1e-4 apart
    in hash order, WordPieceTrainer breaks merge ties in hash order."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    runs = [subprocess.run([sys.executable, "-c", VOCAB_SCRIPT], cwd=root, capture_output=True, text=True,
                           check=True).stdout.strip().splitlines()[-1] for _ in range(2)]
    assert runs[0] == runs[1], runs


def test_t5_tokenizer_keeps_phantom_words_whole(tmp_path, corpora):
    """The counted Unigram vocabulary: one piece per word or punctuation mark of held-out phantom reports
    (UnigramTrainer's vocabulary took ~2.8 pieces per word), exact round trip, characters for unseen words."""
    train, held = corpora[0]["reports"], corpora[1]["reports"]
    tokenizer = text.counted_unigram_tokenizer(train, text.T5_VOCAB_SIZE, text.T5_SENTINELS, 128)
    assert len(tokenizer) <= text.T5_VOCAB_SIZE
    tokenizer.save_pretrained(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    for report in held[:20]:
        words = report.split()
        pieces = tokenizer.tokenize(report)
        marks = sum(len(w) - len(w.rstrip(".,:;|")) for w in words) + sum(w == "|" for w in words)
        assert len(pieces) <= len(words) + marks + 2, (report, pieces)     # a held-out word may be new
        assert tokenizer.decode(tokenizer(report).input_ids, skip_special_tokens=True) == report
    assert tokenizer.tokenize("Findings: pleural effusion.") == ["\u2581Findings", ":", "\u2581pleural",
                                                                  "\u2581effusion", "."]
    assert tokenizer.tokenize("zebrafish")[0] == "\u2581z" and tokenizer.unk_token_id not in tokenizer("lungs").input_ids
    assert tokenizer.convert_tokens_to_ids("<extra_id_99>") == len(tokenizer) - 1


def test_bert_tokenizer_keeps_phantom_words_whole(tmp_path, corpora):
    """The counted WordPiece vocabulary: [PAD] at id 0, one piece per lower-cased word or punctuation mark of
    held-out phantom reports (numbers aside), "##" characters for unseen words (no [UNK]), the same ids after a
    save and load."""
    train, held = corpora[0]["reports"], corpora[1]["reports"]
    tokenizer = text.counted_wordpiece_tokenizer(train)
    assert len(tokenizer) <= text.BERT_VOCAB_SIZE and tokenizer.pad_token_id == 0
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded.get_vocab() == tokenizer.get_vocab()
    for report in held[:20]:
        pieces = reloaded.tokenize(report)
        # every phantom word is whole; a number the small corpus never had may split into digits
        assert not any(p.startswith("##") and not p[2:].isdigit() for p in pieces), (report, pieces)
        assert reloaded.unk_token not in pieces
    assert reloaded.tokenize("Findings: Pleural effusion.") == ["findings", ":", "pleural", "effusion", "."]
    assert reloaded.tokenize("zebrafish")[:2] == ["z", "##e"]


def test_siglip_reloads_and_beats_random_twin(tmp_path, corpora):
    path, m, model = build("tiny-hub/siglip", tmp_path, corpora, steps=40)
    tokenizer = AutoTokenizer.from_pretrained(path)
    reloaded = SiglipModel.from_pretrained(path)
    held = corpora[1]
    batch = text.siglip_batch(tokenizer, held["reports"][:8], held["images"][:8])
    assert batch["input_ids"].shape == (8, text.SIGLIP_TEXT_LENGTH)
    with torch.no_grad():
        assert torch.equal(model(**batch).logits_per_image, reloaded(**batch).logits_per_image)
    batches = text.siglip_batches(tokenizer, held)
    torch.manual_seed(1)
    twin = pretrained.random_init_twin("tiny-hub/siglip", image_size=IMAGE_SIZE)
    loss_trained = text.evaluate_loss(reloaded, batches, len(held["reports"]), 32)
    loss_twin = text.evaluate_loss(twin, batches, len(held["reports"]), 32)
    assert loss_trained < 0.5 * loss_twin, (loss_trained, loss_twin)


def test_siglip_cxr_reloads_as_plain_siglip_and_its_labels_learn(tmp_path, corpora):
    """The label-supervised build saves only the SigLIP pair (the 14-label head is build-time only): it
    reloads with SiglipModel.from_pretrained, and its build objective and label head beat the random twin's."""
    path, m, model = build("tiny-hub/siglip-cxr", tmp_path, corpora, steps=150)     # ~25 s on 2 cores
    assert isinstance(model, SiglipModel) and "head.weight" not in model.state_dict()
    tokenizer = AutoTokenizer.from_pretrained(path)
    reloaded = SiglipModel.from_pretrained(path)
    held = corpora[1]
    batch = text.siglip_batch(tokenizer, held["reports"][:8], held["images"][:8])
    with torch.no_grad():
        assert torch.equal(model(**batch).logits_per_image, reloaded(**batch).logits_per_image)
    assert m["after"] < 0.5 * m["random_twin"], m
    assert m["auroc_label_head"] > 0.6, m     # 0.63-0.65 over 4 runs (150 steps, 64 px); an untrained head is ~0.5
    assert m["objective"].startswith("sigmoid contrastive + 4 x 14-label BCE"), m


def test_mae_file_loads_into_timm_vit_and_beats_random_twin(tmp_path, corpora):
    path, m, model = build("tiny-hub/mae-vit", tmp_path, corpora, steps=60)
    checkpoint = torch.load(path)
    assert {"cls_token", "pos_embed", "patch_embed.proj.weight", "norm.weight", "mask_token",
            "decoder_pred.weight", "blocks.0.attn.qkv.weight"} <= set(checkpoint["model"])
    kwargs = vision.timm_vit_kwargs(vision.TinyMaeConfig(image_size=IMAGE_SIZE))
    name = kwargs.pop("model_name")
    # route 1: timm's own pretrained-file path (MedMAE: research/concept_cam_datasets.md §6)
    vit = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=path), **kwargs).eval()
    # route 2: the documented manual path, with the exact key differences asserted
    manual = timm.create_model(name, pretrained=False, **kwargs).eval()
    encoder = {k: v for k, v in checkpoint["model"].items() if not k.startswith("decoder") and k != "mask_token"}
    result = manual.load_state_dict(encoder, strict=False)
    assert result.missing_keys == [] and result.unexpected_keys == []
    images = vision.medmae_normalize(corpora[1]["images"][:4])
    with torch.no_grad():
        tokens = vit.forward_features(images)                                                  # (B, 1+P, D)
        assert tokens.shape == (4, 1 + (IMAGE_SIZE // 16) ** 2, 128)
        assert torch.equal(tokens, manual.forward_features(images))
        keep = torch.arange(tokens.shape[1] - 1).expand(4, -1)      # all patches visible = plain ViT
        assert torch.allclose(model.forward_encoder(images, keep), tokens, atol=1e-5)
    # held-out masked-patch loss with fixed masks, trained (reloaded into a MAE) vs random twin
    reloaded = vision.MaskedAutoencoderViT(vision.TinyMaeConfig(image_size=IMAGE_SIZE))
    reloaded.load_state_dict(checkpoint["model"])
    torch.manual_seed(1)
    twin = pretrained.random_init_twin("tiny-hub/mae-vit", image_size=IMAGE_SIZE)
    loss_trained = vision.mae_eval_loss(reloaded, corpora[1]["images"])
    loss_twin = vision.mae_eval_loss(twin, corpora[1]["images"])
    assert loss_trained < loss_twin - 0.1, (loss_trained, loss_twin)


# --------------------------------------------------------------------------------------------------
# pieces

def test_span_corruption_example_by_hand():
    generator = torch.Generator().manual_seed(3)
    tokens = list(range(10, 30))                       # 20 tokens -> 3 noise tokens in 1 span
    inputs, targets = text.span_corruption_example(tokens, [900, 901, 902], 1, generator)
    assert targets[0] == 900 and targets[-1] == 1 and len(targets) == 3 + 2
    span = targets[1:-1]
    assert span == list(range(span[0], span[0] + 3))   # one contiguous span of 3
    start = inputs.index(900)
    assert inputs == tokens[:start] + [900] + tokens[start + 3:] + [1]


def test_mae_patchify_and_masking():
    model = vision.MaskedAutoencoderViT(vision.TinyMaeConfig(image_size=32))  # 2x2 patches of 16
    images = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).reshape(2, 3, 32, 32)
    patches = model.patchify(images)                                           # (2, 4, 768)
    assert patches.shape == (2, 4, 16 * 16 * 3)
    assert patches[1, 1, 0] == images[1, 0, 0, 16]     # patch 1 = top right; first pixel, channel 0
    assert patches[1, 2, 5 * 3 + 2] == images[1, 2, 16, 5]
    keep, mask = model.random_masking(5, torch.Generator().manual_seed(0))
    assert keep.shape == (5, 1) and mask.sum(dim=1).tolist() == [3.0] * 5
    assert torch.all(mask.gather(1, keep) == 0)


def test_macro_auroc_by_hand():
    scores = torch.tensor([[0.9], [0.1], [0.5], [0.5]])
    labels = torch.tensor([[1.0], [0.0], [1.0], [0.0]])
    # positives {0.9, 0.5} vs negatives {0.1, 0.5}: pairs 1, 1, 1, 0.5 -> 0.875
    assert vision.macro_auroc(scores, labels) == pytest.approx(0.875)


# --------------------------------------------------------------------------------------------------
# cache, marker, rebuild, resolve, errors

def fake_build(calls):
    def build(out_path, corpus, held_out, steps, seed, progress=None):
        calls.append(steps)
        if len(calls) == 1 and steps == 13:
            raise RuntimeError("interrupted mid-build")
        torch.save({"w": torch.full((2,), float(steps))}, out_path)
        return dict(objective="fake", random_twin=2.0, before=2.0, after=1.0), None
    return build


def test_marker_written_last_and_half_built_model_rebuilt(tmp_path, monkeypatch):
    calls = []
    entry = tiny_hub.HubEntry("tiny-hub/fake", "fake.pth", fake_build(calls), 5, False, "nothing")
    monkeypatch.setitem(tiny_hub.HUB, entry.name, entry)
    cache = str(tmp_path / "hub")
    corpora = ({}, {})
    with pytest.raises(RuntimeError, match="interrupted"):
        tiny_hub.build_model("tiny-hub/fake", cache, steps=13, corpora=corpora, verbose=False)
    assert not tiny_hub.is_built("tiny-hub/fake", cache)
    # a stale half-written file without marker is replaced
    with open(tiny_hub.hub_path("tiny-hub/fake", cache), "w") as f:
        f.write("half")
    path = tiny_hub.build_model("tiny-hub/fake", cache, corpora=corpora, verbose=False)
    assert torch.load(path)["w"].tolist() == [5.0, 5.0]
    marker = json.load(open(tiny_hub.marker_path("tiny-hub/fake", cache)))
    assert marker["steps"] == 5 and marker["measurements"]["after"] == 1.0
    assert os.path.getmtime(tiny_hub.marker_path("tiny-hub/fake", cache)) >= os.path.getmtime(path)
    assert [p for p in os.listdir(cache) if p.startswith(".tmp")] == []
    # built: reused, not rebuilt; force: rebuilt
    tiny_hub.build_model("tiny-hub/fake", cache, steps=7, corpora=corpora, verbose=False)
    assert calls == [13, 5]
    tiny_hub.build_model("tiny-hub/fake", cache, steps=7, force=True, corpora=corpora, verbose=False)
    assert calls == [13, 5, 7] and torch.load(path)["w"].tolist() == [7.0, 7.0]


def test_cache_dir_from_argument_env_and_default(monkeypatch, tmp_path):
    monkeypatch.delenv("CXR_TINY_HUB", raising=False)
    assert tiny_hub.hub_cache_dir() == os.path.expanduser("~/.cache/cxr-vlm/tiny-hub")
    monkeypatch.setenv("CXR_TINY_HUB", str(tmp_path / "env"))
    assert tiny_hub.hub_cache_dir() == str(tmp_path / "env")
    assert tiny_hub.hub_cache_dir(str(tmp_path / "arg")) == str(tmp_path / "arg")
    assert tiny_hub.hub_path("tiny-hub/mae-vit") == str(tmp_path / "env" / "mae-vit.pth")


def test_resolve_builds_once_then_reuses(tmp_path, monkeypatch):
    calls = []
    entry = tiny_hub.HubEntry("tiny-hub/fake", "fake.pth", fake_build(calls), 4, False, "nothing")
    monkeypatch.setitem(tiny_hub.HUB, entry.name, entry)
    monkeypatch.setattr(tiny_hub, "default_corpora", lambda image_size: ({}, {}))
    monkeypatch.setenv("CXR_TINY_HUB", str(tmp_path))
    path = pretrained.resolve_pretrained("tiny-hub/fake")
    assert path == str(tmp_path / "fake.pth") and os.path.isfile(path)
    assert pretrained.resolve_pretrained("tiny-hub/fake") == path and calls == [4]
    assert pretrained.load_checkpoint_file("tiny-hub/fake")["w"].tolist() == [4.0, 4.0]
    assert pretrained.resolve_pretrained("google/flan-t5-base") == "google/flan-t5-base"
    with pytest.raises(KeyError, match="tiny-hub/bert-mlm"):
        pretrained.resolve_pretrained("tiny-hub/no-such-model")


def test_first_use_inside_no_grad_still_trains(tmp_path, monkeypatch):
    """A hub model first asked for inside torch.no_grad() (a query initialization does that) is built with grad on."""
    def build(out_path, corpus, held_out, steps, seed, progress=None):
        w = torch.zeros(2, requires_grad=True)
        ((w - 3.0) ** 2).sum().backward()    # fails with "does not require grad" if grad is off
        torch.save({"w": -w.grad}, out_path)
        return dict(objective="fake", random_twin=2.0, before=2.0, after=1.0), None
    monkeypatch.setitem(tiny_hub.HUB, "tiny-hub/fake", tiny_hub.HubEntry("tiny-hub/fake", "fake.pth", build, 1, False, "-"))
    monkeypatch.setattr(tiny_hub, "default_corpora", lambda image_size: ({}, {}))
    monkeypatch.setenv("CXR_TINY_HUB", str(tmp_path))
    with torch.no_grad():
        path = pretrained.resolve_pretrained("tiny-hub/fake")
        assert not torch.is_grad_enabled()          # the caller's mode is back
    assert torch.load(path)["w"].tolist() == [6.0, 6.0]


def test_load_hf_offline_gives_one_clear_error(monkeypatch, tmp_path):
    import huggingface_hub.constants
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(pretrained.PretrainedLoadError) as info:
        pretrained.load_hf(BertForMaskedLM, "emilyalsentzer/Bio_ClinicalBERT-does-not-exist")
    message = str(info.value)
    assert "emilyalsentzer/Bio_ClinicalBERT-does-not-exist" in message
    assert huggingface_hub.constants.HF_HUB_CACHE in message
    assert "configs/tiny/wsrpn_vl.yaml" in message
    with pytest.raises(pretrained.PretrainedLoadError, match="configs/tiny/chexquery.yaml"):
        pretrained.load_hf(T5ForConditionalGeneration, "google/flan-t5-base", system="chexquery")


def test_load_checkpoint_file_missing_file_and_torchvision_cache(monkeypatch, tmp_path):
    with pytest.raises(pretrained.PretrainedLoadError, match="vit-b_CXR_0.5M_mae.pth.*configs/tiny/concept_cam.yaml"):
        pretrained.load_checkpoint_file(str(tmp_path / "vit-b_CXR_0.5M_mae.pth"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(pretrained.PretrainedLoadError, match="torch hub cache.*configs/tiny/wsrpn_vl.yaml"):
        pretrained.load_checkpoint_file("torchvision/densenet121")


def test_torchvision_densenet_old_key_names_are_renamed():
    model = vision.tiny_densenet()
    current = model.state_dict()
    old_style = {k.replace("norm1.", "norm.1.").replace("conv2.", "conv.2."): v for k, v in current.items()}
    assert old_style.keys() != current.keys()
    assert pretrained.densenet_keys_to_current(old_style).keys() == current.keys()


def test_random_init_twin_has_the_tiny_architecture():
    bert = pretrained.random_init_twin("tiny-hub/bert-mlm")
    assert isinstance(bert, BertForMaskedLM) and bert.config.hidden_size == 128
    assert pretrained.random_init_twin("tiny-hub/densenet-small").classifier.out_features == 14
    with pytest.raises(ValueError, match="cls="):
        pretrained.random_init_twin("google/flan-t5-base")


def test_model_built_with_other_step_count_is_rebuilt(tmp_path, monkeypatch):
    """A cache from an older version (marker names another step count than the entry) is rebuilt once by
    ensure_built and by `build`, then reused."""
    calls = []
    entry = tiny_hub.HubEntry("tiny-hub/fake", "fake.pth", fake_build(calls), 5, False, "nothing")
    monkeypatch.setitem(tiny_hub.HUB, entry.name, entry)
    monkeypatch.setattr(tiny_hub, "default_corpora", lambda *a, **k: ({}, {}))
    cache = str(tmp_path / "hub")
    tiny_hub.build_model("tiny-hub/fake", cache, steps=3, verbose=False)         # the "old version"
    assert tiny_hub.read_marker("tiny-hub/fake", cache)["steps"] == 3
    path = tiny_hub.ensure_built("tiny-hub/fake", cache)
    assert calls == [3, 5] and torch.load(path)["w"].tolist() == [5.0, 5.0]
    tiny_hub.ensure_built("tiny-hub/fake", cache)
    tiny_hub.build_all(cache, only="tiny-hub/fake")
    assert calls == [3, 5]
    tiny_hub.build_model("tiny-hub/fake", cache, steps=2, force=True, verbose=False)
    tiny_hub.build_all(cache, only="tiny-hub/fake")
    assert calls == [3, 5, 2, 5] and tiny_hub.read_marker("tiny-hub/fake", cache)["steps"] == 5
    # a new build version (same steps) is rebuilt once too
    monkeypatch.setitem(tiny_hub.HUB, entry.name, tiny_hub.HubEntry("tiny-hub/fake", "fake.pth", fake_build(calls),
                                                                     5, False, "nothing", version=2))
    assert tiny_hub.is_stale("tiny-hub/fake", cache)
    tiny_hub.ensure_built("tiny-hub/fake", cache)
    tiny_hub.ensure_built("tiny-hub/fake", cache)
    assert calls == [3, 5, 2, 5, 5] and tiny_hub.read_marker("tiny-hub/fake", cache)["version"] == 2


def test_a_build_on_first_use_leaves_the_callers_random_streams_as_they_were(tmp_path, corpora):
    """A run that builds a hub model on first use draws the same numbers afterwards as a run whose hub was built
    before (the builds seed torch; without this a first run on an empty hub trained from other weights)."""
    import random

    import numpy as np

    def draws():
        return torch.rand(4), np.random.rand(3), random.random()

    def seed_all():
        torch.manual_seed(123), np.random.seed(5), random.seed(7)

    seed_all()
    expected = draws()
    seed_all()
    tiny_hub.build_model("tiny-hub/bert-mlm", cache=str(tmp_path), steps=2, corpora=corpora, verbose=False)
    got = draws()
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]) and got[2] == expected[2]
    assert tiny_hub.is_built("tiny-hub/bert-mlm", str(tmp_path))
