"""Tests of the CheXbert labeler (models/chexbert.py), its tiny-hub stand-in (hub/tiny_hub_chexbert.py), the
CheXbert CE metrics (metrics/clinical.py) and the labels-CSV command (train_chexquery.py --chexbert-labels).

Run:  .venv/bin/pytest -q tests/test_chexbert.py            (fast, ~20 s on 2 cores)
      .venv/bin/pytest -q -m slow tests/test_chexbert.py    (the full tiny-hub/chexbert build, ~1 min)

A small BERT is saved in the published checkpoint layout ({"model_state_dict": {"module.bert.*",
"module.linear_heads.K.*"}}) with a WordPiece vocab.txt; loading + `label` must equal a forward pass written
out here on the same tensors, with the head order and class coding of the public code typed in by hand.
"""
import contextlib
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertModel, BertTokenizer

from data.labels import CHEXPERT_LABELS
from evals import chexbert_labels
from hub import tiny_hub, tiny_hub_chexbert
from hub.pretrained import PretrainedLoadError
from metrics.clinical import ce_scores, chexbert_binary, chexbert_metrics
from models import chexbert
from models.chexbert import ChexbertLoadError, load_chexbert

# stanfordmlgroup/CheXbert src/constants.py CONDITIONS (No Finding is the last head), typed in by hand
TINY_CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "tiny" / "chexquery.yaml")
PUBLISHED_HEAD_ORDER = [
    "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema", "Consolidation",
    "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture", "Support Devices",
    "No Finding",
]
WORDS = ["no", "pleural", "effusion", "heart", "size", "is", "normal", "possible", "pneumothorax", "the", "findings",
         "impression", "mild", "cardiomegaly", "edema", "left", "right", "small", "there", "a", "rib", "fracture",
         ".", ",", ":", "|", "##s", "##es"]
REPORTS = [
    "Findings: No pleural effusion. Heart size is normal. | Impression: Normal.",
    "  Possible  small left\n\npneumothorax.\tMild   cardiomegaly.  ",
    "",
    "There is a right rib fracture. " * 120,             # > 512 word pieces: cut as CheXbert cuts
    "MILD EDEMA, small effusions.",
    "Findings: Small right pleural effusion. | Impression: Pleural effusion.",
]


@contextlib.contextmanager
def one_thread():
    """This 2-core box is shared: two intra-op threads on a busy core cost several times the CPU of one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def write_tokenizer(folder):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "vocab.txt"), "w") as f:
        f.write("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS) + "\n")
    return BertTokenizer.from_pretrained(folder)


def small_state_dict(seed=0, vocab_size=40):
    """A random CheXbert-layout state dict: 2 layers, width 64 (1 head of 64), 512 positions; heads scaled up so
    the argmax classes vary between reports."""
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=1,
                        intermediate_size=96, max_position_embeddings=512)
    model = chexbert.CheXbert(chexbert.ChexbertConfig(config))
    with torch.no_grad():
        for head in model.linear_heads:
            head.weight.mul_(20.0)
    return model.state_dict()


def save_published_layout(path, state_dict, position_ids=True):
    """As CheXbert's run_bert.py saves an nn.DataParallel model (transformers 3.x kept position_ids)."""
    state = {f"module.{k}": v for k, v in state_dict.items()}
    if position_ids:
        state["module.bert.embeddings.position_ids"] = torch.arange(512)[None]
    torch.save({"epoch": 3, "model_state_dict": state, "optimizer_state_dict": {"state": {}, "param_groups": []}}, path)
    return path


@pytest.fixture()
def small_checkpoint(tmp_path):
    folder = tmp_path / "chexbert"
    tokenizer = write_tokenizer(folder)
    state_dict = small_state_dict(vocab_size=len(tokenizer) + 3)
    save_published_layout(folder / "chexbert.pth", state_dict)
    return folder, tokenizer, state_dict


def hand_forward(state_dict, tokenizer, report):
    """One report, unbatched (as f1chexbert's get_label): clean, [CLS] pieces [SEP] cut to 512, BertModel,
    last-layer [CLS], each head's argmax -> {condition: class} in the published head order."""
    bert_weights = {k[len("bert."):]: v for k, v in state_dict.items() if k.startswith("bert.")}
    config = BertConfig(vocab_size=bert_weights["embeddings.word_embeddings.weight"].shape[0], hidden_size=64,
                        num_hidden_layers=2, num_attention_heads=1, intermediate_size=96, max_position_embeddings=512)
    bert = BertModel(config).eval()
    bert.load_state_dict(bert_weights)
    text = " ".join(report.split())
    ids = tokenizer(text, truncation=True, max_length=512)["input_ids"]
    with torch.no_grad():
        cls = bert(input_ids=torch.tensor([ids])).last_hidden_state[0, 0]                      # (D,)
    classes = {}
    for head, name in enumerate(PUBLISHED_HEAD_ORDER):
        logits = state_dict[f"linear_heads.{head}.weight"] @ cls + state_dict[f"linear_heads.{head}.bias"]
        classes[name] = int(logits.argmax())
    return classes


# --------------------------------------------------------------------------------------------------
# the network and its loading

def test_label_equals_a_hand_written_forward_pass(small_checkpoint):
    folder, tokenizer, state_dict = small_checkpoint
    model = load_chexbert(folder / "chexbert.pth", tokenizer)
    assert model.bert.config.num_attention_heads == 1 and len(model.linear_heads) == 14
    assert [h.out_features for h in model.linear_heads] == [4] * 13 + [2]
    classes = model.label(REPORTS, tokenizer, batch_size=4)
    assert classes.dtype == torch.long and classes.shape == (len(REPORTS), 14)
    for row, report in enumerate(REPORTS):
        expected = hand_forward(state_dict, tokenizer, report)
        assert classes[row].tolist() == [expected[name] for name in CHEXPERT_LABELS], report[:40]
    assert len(set(classes.flatten().tolist())) >= 3          # the comparison is not all one class
    # the folder form and the order of the reports do not matter
    again = load_chexbert(folder).label(REPORTS[::-1], tokenizer, batch_size=2)
    assert torch.equal(again.flip(0), classes)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_label_on_gpu_equals_cpu(small_checkpoint):
    folder, tokenizer, _ = small_checkpoint
    on_cpu = load_chexbert(folder).label(REPORTS, tokenizer)
    on_gpu = chexbert_labels.build_labeler(folder, device="cuda")(REPORTS)
    assert on_gpu.device.type == "cpu" and torch.equal(on_gpu, on_cpu)


def test_encoding_cuts_long_reports_as_chexbert(tmp_path):
    tokenizer = write_tokenizer(tmp_path / "tokenizer")
    long, empty, spaced = chexbert.encode_reports([REPORTS[3], "", "  \n "], tokenizer)
    assert len(long) == 512 and long[0] == tokenizer.cls_token_id and long[-1] == tokenizer.sep_token_id
    pieces = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(REPORTS[3]))
    assert long[:511] == ([tokenizer.cls_token_id] + pieces)[:511]
    assert empty == spaced == [tokenizer.cls_token_id, tokenizer.sep_token_id]


def test_missing_or_extra_head_is_one_clear_error(small_checkpoint, tmp_path):
    state_dict = small_checkpoint[2]
    missing = {k: v for k, v in state_dict.items() if not k.startswith("linear_heads.13.")}
    path = save_published_layout(tmp_path / "missing.pth", missing)
    with pytest.raises(ChexbertLoadError) as info:
        load_chexbert(path)
    message = str(info.value)
    assert str(path) in message and "missing: linear_heads.13.bias, linear_heads.13.weight" in message
    assert len(message) < 600 and isinstance(info.value, PretrainedLoadError)

    extra = dict(state_dict, **{"linear_heads.14.weight": torch.zeros(4, 64), "linear_heads.14.bias": torch.zeros(4)})
    path = save_published_layout(tmp_path / "extra.pth", extra)
    with pytest.raises(ChexbertLoadError, match=r"unexpected: linear_heads\.14\.bias, linear_heads\.14\.weight"):
        load_chexbert(path)

    wrong = dict(state_dict, **{"linear_heads.13.weight": torch.zeros(4, 64), "linear_heads.13.bias": torch.zeros(4)})
    with pytest.raises(ChexbertLoadError, match=r"wrong shape: linear_heads\.13\.bias \(4,\) \(expected \(2,\)\)"):
        load_chexbert(save_published_layout(tmp_path / "wrong.pth", wrong))

    bert_only = {k: v for k, v in state_dict.items() if k.startswith("bert.")}
    torch.save(bert_only, tmp_path / "plain.pth")      # a bare state dict, not the published layout
    with pytest.raises(ChexbertLoadError, match="model_state_dict"):
        load_chexbert(tmp_path / "plain.pth")
    with pytest.raises(ChexbertLoadError, match=re.escape(str(tmp_path / "nowhere" / "chexbert.pth"))):
        load_chexbert(tmp_path / "nowhere" / "chexbert.pth")


# --------------------------------------------------------------------------------------------------
# metrics

def test_chexbert_metrics_by_hand_for_both_uncertain_rules():
    blank, pos, neg, unc = 0, 1, 2, 3
    edema, effusion, cardiomegaly = (CHEXPERT_LABELS.index(n) for n in ("Edema", "Pleural Effusion", "Cardiomegaly"))
    pred = np.zeros((2, 14), int)
    ref = np.zeros((2, 14), int)
    pred[0, [edema, effusion, cardiomegaly]] = [pos, unc, neg]
    ref[0, [edema, effusion, cardiomegaly]] = [pos, pos, pos]
    pred[1, [edema, effusion]] = [unc, blank]
    ref[1, [edema, effusion]] = [neg, unc]
    # "positive": pred 1s = (0,edema) (0,effusion) (1,edema); ref 1s = (0,edema) (0,effusion) (0,cardio) (1,effusion)
    # TP 2, FP 1, FN 2 -> P 2/3, R 1/2, F1 4/7
    out = chexbert_metrics(pred, ref, uncertain="positive")
    assert out["chexbert/micro_precision"] == pytest.approx(2 / 3)
    assert out["chexbert/micro_recall"] == pytest.approx(1 / 2)
    assert out["chexbert/micro_f1"] == pytest.approx(4 / 7)
    assert out["chexbert/f1/Edema"] == pytest.approx(2 / 3)           # TP 1, FP 1
    assert out["chexbert/f1/Pleural Effusion"] == pytest.approx(2 / 3)  # TP 1, FN 1
    assert out["chexbert/f1/Cardiomegaly"] == 0.0
    assert out["chexbert/macro_f1"] == pytest.approx((2 / 3 + 2 / 3) / 14)
    assert out["chexbert/uncertain_as_positive"] == 1.0
    # "negative": pred 1s = (0,edema); ref 1s = (0,edema) (0,effusion) (0,cardio) -> TP 1, FP 0, FN 2
    out = chexbert_metrics(pred, ref, uncertain="negative")
    assert out["chexbert/micro_precision"] == 1.0
    assert out["chexbert/micro_recall"] == pytest.approx(1 / 3)
    assert out["chexbert/micro_f1"] == pytest.approx(1 / 2)
    assert out["chexbert/example_f1"] == pytest.approx((2 / 4 + 0) / 2)
    assert out["chexbert/uncertain_as_positive"] == 0.0
    assert out == {k.replace("clinical_rule/", "chexbert/"): v for k, v in ce_scores(
        chexbert_binary(pred, "negative"), chexbert_binary(ref, "negative")).items()} | {
        "chexbert/uncertain_as_positive": 0.0}
    with pytest.raises(ValueError, match="uncertain"):
        chexbert_metrics(pred, ref, uncertain="ignore")
    with pytest.raises(ValueError, match="0..3"):
        chexbert_binary(np.full((1, 14), -1))


# --------------------------------------------------------------------------------------------------
# the tiny-hub stand-in

def test_phantom_targets_come_from_the_generator():
    corpus = tiny_hub.phantom_corpus(64, 64, 0, "test", seed=7)
    head = tiny_hub_chexbert.HEAD
    plain, targets = tiny_hub_chexbert.edited_corpus(corpus, 0, hedge_probability=0.0, negation_probability=0.0)
    assert plain == corpus["reports"]
    for report, labels, row in zip(corpus["reports"], corpus["labels"], targets):
        for j, name in enumerate(CHEXPERT_LABELS):
            if name != "No Finding" and labels[j] == 1:
                assert row[head[name]] == 1
        if "No pneumothorax." in report or "There is no pneumothorax." in report:
            assert row[head["Pneumothorax"]] == 2
        assert row[head["Cardiomegaly"]] in (1, 2)          # the heart is always described
        assert row[head["No Finding"]] == labels[CHEXPERT_LABELS.index("No Finding")]
    edited, targets = tiny_hub_chexbert.edited_corpus(corpus, 0, hedge_probability=1.0)
    assert (targets == 3).any(1).all()                     # every report got one uncertain condition
    assert "cannot be excluded" in " ".join(edited) and "Possible" in " ".join(edited)


def test_stand_in_loads_in_the_published_layout_and_beats_the_majority(tmp_path):
    train = tiny_hub.phantom_corpus(512, 64, 0, "test train")
    held_out = tiny_hub.phantom_corpus(96, 64, 0, "test held-out", seed=7)
    out = tmp_path / "chexbert"
    out.mkdir()
    with one_thread():
        m, net = tiny_hub_chexbert.build_chexbert(str(out), train, held_out, steps=100, seed=0)
    assert m["after"] < 0.5 * m["random_twin"]
    assert m["acc_head_mean"] > m["acc_head_mean_majority"] + 0.06
    contents = torch.load(out / "chexbert.pth")
    assert set(contents) == {"model_state_dict"}
    assert all(k.startswith(("module.bert.", "module.linear_heads.")) for k in contents["model_state_dict"])
    # the file and tokenizer load through the real loader and label as the build's own network
    tokenizer = BertTokenizer.from_pretrained(out)
    model = load_chexbert(out, tokenizer)
    texts = held_out["reports"][:16]
    ours = model.label(texts, tokenizer, batch_size=8)
    theirs = tiny_hub_chexbert.predict(net, tokenizer, texts)
    assert torch.equal(ours, theirs[:, [tiny_hub_chexbert.HEAD[n] for n in CHEXPERT_LABELS]])


@pytest.mark.slow
def test_full_stand_in_build_reads_phantom_reports(tmp_path):
    train = tiny_hub.phantom_corpus(tiny_hub.NUM_TRAIN_SAMPLES, 64, 0, "hub phantoms")
    held_out = tiny_hub.phantom_corpus(tiny_hub.NUM_HELD_OUT_SAMPLES, 64, tiny_hub.HELD_OUT_START, "held-out")
    with one_thread():
        m, _ = tiny_hub_chexbert.build_chexbert(str(tmp_path), train, held_out,
                                                steps=tiny_hub.hub_entry("tiny-hub/chexbert").steps)
    assert m["acc_head_mean"] > 0.95 and m["acc_exact_match_unedited"] > 0.85


# --------------------------------------------------------------------------------------------------
# the labels-CSV command

def write_iu_phantoms(root, n=6):
    from data.iu_xray import write_iu_xray
    from data.phantom import ChestPhantomDataset
    return write_iu_xray(root, ChestPhantomDataset(n, image_size=64, seed=11), labels_csv=False)


def command(config, out, *overrides):
    """python train_chexquery.py --config CONFIG --chexbert-labels OUT [overrides] -> exit status."""
    import train_chexquery
    try:
        train_chexquery.main(["--config", str(config), "--chexbert-labels", str(out), *overrides])
    except SystemExit as stop:
        return stop.code
    return 0


def test_command_writes_a_csv_the_labels_reader_loads(small_checkpoint, tmp_path, capsys):
    from data.io import make_policy, read_label_table
    from data.iu_xray import IUXrayDataset
    folder = small_checkpoint[0]
    written = write_iu_phantoms(tmp_path / "iu")
    out = tmp_path / "labels" / "chexbert_labels.csv"
    rc = command(TINY_CONFIG, out, f"eval.chexbert_checkpoint={folder}", "eval.batch_size=4", "train.device=cpu",
                 "data.source=iu_xray", f"data.root={tmp_path / 'iu'}")
    assert rc == 0 and "6 studies labelled" in capsys.readouterr().out
    assert [p.name for p in out.parent.iterdir()] == ["chexbert_labels.csv"]          # no temp file left
    header = out.read_text().splitlines()[0].split(",")
    assert header[0] == "uid" and header[1:15] == PUBLISHED_HEAD_ORDER and header[15] == "Report Impression"

    dataset = IUXrayDataset(tmp_path / "iu", "all", frontal_only=False)
    reports = {r["patient_id"]: r["report"] for r in dataset.records}
    classes = chexbert_labels.build_labeler(folder)([reports[u] for u in written["uids"]])
    as_read = {0: 0.0, 1: 1.0, 2: 0.0, 3: -1.0}           # blank is read as 0 (data/io.read_label_table)
    table = read_label_table(out, "uid", CHEXPERT_LABELS, make_policy("stop", "test"))
    for uid, row in zip(written["uids"], classes.tolist()):
        assert table[uid].tolist() == [as_read[c] for c in row]
    assert len(set(classes.flatten().tolist())) >= 3
    labelled = IUXrayDataset(tmp_path / "iu", "all", labels_csv=out)       # the dataset reads it as labels_csv
    assert {r["patient_id"]: r["labels"].tolist() for r in labelled.records} == {u: table[u].tolist() for u in table}


def test_command_without_weights_says_where_it_looked(tmp_path, capsys):
    write_iu_phantoms(tmp_path / "iu", n=2)
    data = ["data.source=iu_xray", f"data.root={tmp_path / 'iu'}"]
    missing = tmp_path / "weights" / "chexbert.pth"
    rc = command(TINY_CONFIG, tmp_path / "x.csv", f"eval.chexbert_checkpoint={missing}", *data)
    err = capsys.readouterr().err
    assert rc == 2 and str(missing) in err and "model_state_dict" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "x.csv").exists()
    assert command(TINY_CONFIG, tmp_path / "x.csv", "eval.chexbert_checkpoint=null", *data) == 2
    assert "eval.chexbert_checkpoint" in capsys.readouterr().err


def test_unavailable_reason_and_default_tokenizer(small_checkpoint, tmp_path):
    folder, _, _ = small_checkpoint
    assert chexbert_labels.chexbert_unavailable(folder) is None
    assert chexbert_labels.chexbert_unavailable(folder / "chexbert.pth", tokenizer=str(folder)) is None
    reason = chexbert_labels.chexbert_unavailable(tmp_path / "none")
    assert reason.startswith(f"CheXbert weights missing at {tmp_path / 'none'}")
    assert "null" in chexbert_labels.chexbert_unavailable(None)
    assert chexbert_labels.default_tokenizer("tiny-hub/chexbert") == "tiny-hub/chexbert"
    assert chexbert_labels.default_tokenizer(str(folder / "chexbert.pth")) == "bert-base-uncased"
