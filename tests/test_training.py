"""Tests of the shared training module (training.py) and the resumable loaders (data/loader.py).

Run: pytest -q tests/test_training.py   (CPU, a few seconds)
"""
import json
import math

import pytest
import torch
from torch import nn

import training
from data.loader import SeededDataset, batches_per_epoch, epoch_loader, table_batches
from training import (Config, ConfigError, NonFiniteLoss, apply_overrides, build_optimizer, check_finite,
                      get_lr, load_checkpoint, load_config, param_groups, save_checkpoint, set_lr,
                      set_trainable)


# ---------------------------------------------------------------------------------------------------
# config

def write(path, text):
    path.write_text(text)
    return path


def test_overrides_are_parsed_as_yaml_and_type_checked(tmp_path):
    cfg = load_config(write(tmp_path / "c.yaml", "model:\n  dim: 8\n  name: x\n  drop: 0.1\n"
                                                 "  tags: [a]\ntrain:\n  lr: 0.001\n  amp: true\n"),
                      ["model.dim=16", "train.lr=3e-4", "model.drop=1", "model.tags=[b, c]", "train.amp=false"])
    assert cfg.model.dim == 16 and cfg.train.lr == 3e-4 and cfg.model.tags == ["b", "c"]
    assert cfg.model.drop == 1.0 and isinstance(cfg.model.drop, float)  # int accepted where float expected
    assert cfg.train.amp is False
    with pytest.raises(ConfigError, match="expected int"):
        apply_overrides(cfg, ["model.dim=abc"])
    with pytest.raises(ConfigError, match="expected a bool"):
        apply_overrides(cfg, ["train.amp=1"])


def test_unknown_key_suggests_close_matches(tmp_path):
    path = write(tmp_path / "c.yaml", "model:\n  lambda_token: 0.1\n  clip_embed_dim: 64\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'model.lambda_tokn'.*model.lambda_token"):
        load_config(path, ["model.lambda_tokn=0.5"])
    with pytest.raises(ConfigError, match="key.path=value"):
        load_config(path, ["model.lambda_token"])


def test_inherit_merges_and_rejects_unknown_keys(tmp_path):
    write(tmp_path / "base.yaml", "model:\n  dim: 768\n  layers: 12\ndata:\n  root: /data\n")
    child = write(tmp_path / "child.yaml", "inherit: base.yaml\nmodel:\n  dim: 32\n")
    cfg = load_config(child)
    assert cfg.model.dim == 32 and cfg.model.layers == 12 and cfg.data.root == "/data"
    bad = write(tmp_path / "bad.yaml", "inherit: base.yaml\nmodel:\n  dims: 32\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown config key 'model.dims'.*model.dim"):
        load_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


# ---------------------------------------------------------------------------------------------------
# freezing, param groups, lr

class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16))
        self.queries = nn.Parameter(torch.randn(4, 16))
        self.head = nn.Linear(16, 1)
        self.drop = nn.Dropout(0.3)

    def forward(self, x):  # x: (B, 8)
        h = self.drop(self.encoder(x))                           # (B, 16)
        attn = (h @ self.queries.t()).softmax(-1)                # (B, 4)
        return self.head(h + attn @ self.queries).squeeze(-1)    # (B,)


def test_frozen_parameters_stay_bit_identical_after_a_step(capsys):
    torch.manual_seed(0)
    model = Toy()
    params = set_trainable(model, ["queries", "head.*"])
    table = capsys.readouterr().out
    assert "encoder" in table and "total" in table
    assert {id(p) for p in params} == {id(model.queries), id(model.head.weight), id(model.head.bias)}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = build_optimizer(model, lr=0.1, weight_decay=0.1)
    model(torch.randn(5, 8)).pow(2).mean().backward()
    opt.step()
    for n, p in model.named_parameters():
        same = torch.equal(p, before[n])
        assert same == n.startswith("encoder"), n
    # idempotent and total: a second call with "*" turns everything back on
    assert len(set_trainable(model, "*", verbose=False)) == len(list(model.parameters()))
    with pytest.raises(ValueError, match="match no parameter"):
        set_trainable(model, ["decoder.*"], verbose=False)


def test_param_groups_no_decay_on_1d_and_named_tokens():
    model = Toy()
    set_trainable(model, "*", verbose=False)
    groups = param_groups(model, 0.05, no_weight_decay=["queries"], lr_scales={"encoder.*": 0.01},
                          verbose=False)
    by_name = {n: (g["weight_decay"], g["lr_scale"]) for g in groups for n in g["names"]}
    assert by_name == {"encoder.0.weight": (0.05, 0.01), "encoder.0.bias": (0.0, 0.01),
                       "encoder.1.weight": (0.0, 0.01), "encoder.1.bias": (0.0, 0.01),
                       "queries": (0.0, 1.0), "head.weight": (0.05, 1.0), "head.bias": (0.0, 1.0)}
    opt = build_optimizer(model, lr=1.0, weight_decay=0.05, lr_scales={"encoder.*": 0.01})
    set_lr(opt, 2.0)
    assert sorted(g["lr"] for g in opt.param_groups) == [0.02, 0.02, 2.0, 2.0]


def test_warmup_cosine_values():
    lr, warm, total, low = 1e-3, 10, 110, 1e-5
    assert get_lr(0, lr, warm, total, low) == pytest.approx(1e-4)
    assert get_lr(9, lr, warm, total, low) == pytest.approx(1e-3)
    assert get_lr(10, lr, warm, total, low) == pytest.approx(1e-3)
    assert get_lr(60, lr, warm, total, low) == pytest.approx(low + 0.5 * (lr - low))
    assert get_lr(85, lr, warm, total, low) == pytest.approx(low + 0.5 * (1 + math.cos(math.pi * 0.75)) * (lr - low))
    assert get_lr(500, lr, warm, total, low) == low


def test_cpu_defaults_to_fp32_without_scaler():
    device, ctx, scaler, dtype = training.setup_device("cpu", "auto")
    assert device.type == "cpu" and dtype == "float32" and not scaler.is_enabled()
    with pytest.raises(ConfigError, match="float16 needs a CUDA"):
        training.setup_device("cpu", "float16")


# ---------------------------------------------------------------------------------------------------
# checkpoint round trip, exact resume, non-finite stop

class NoisyPairs(torch.utils.data.Dataset):
    """x fixed per index plus random augmentation noise drawn from torch's RNG (like a transform)."""

    def __len__(self):
        return 24

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        x = torch.randn(8, generator=g)
        return {"x": x + 0.1 * torch.randn(8), "y": x.sum()}


def run(out_dir, total_steps, stop_after=None, resume=None, poison_step=None, num_workers=0):
    """A miniature of the train_*.py loop; returns {step: loss} of the steps it ran."""
    cfg = Config.wrap({"seed": 3, "train": {"lr": 0.05, "batch_size": 4}})
    training.seed_everything(cfg.seed)
    data = SeededDataset(NoisyPairs(), cfg.seed)
    steps_per_epoch = batches_per_epoch(data, cfg.train.batch_size)
    model = Toy()
    set_trainable(model, "*", verbose=False)
    opt = build_optimizer(model, cfg.train.lr, 0.01)
    _, ctx, scaler, _ = training.setup_device("cpu")
    step = 0
    if resume:
        step = load_checkpoint(resume, model, opt, scaler)["step"]
    losses = {}
    while step < total_steps:
        epoch, first = divmod(step, steps_per_epoch)
        for batch in epoch_loader(data, cfg.train.batch_size, cfg.seed, epoch, start_batch=first,
                                  num_workers=num_workers):
            set_lr(opt, get_lr(step, cfg.train.lr, 2, total_steps))
            with ctx:
                loss = (model(batch["x"]) - batch["y"]).pow(2).mean()
            if step == poison_step:
                loss = loss * float("nan")
            check_finite({"mse": loss}, step)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            scaler.step(opt)
            scaler.update()
            opt.zero_grad(set_to_none=True)
            losses[step] = loss.item()
            step += 1
            save_checkpoint(out_dir / "last.pt", model, opt, scaler, step, epoch, "phase1", None, cfg)
            if step == stop_after or step == total_steps:
                return losses
    return losses


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_continues_exactly(tmp_path, num_workers):
    # 6 batches per epoch; stop at step 4, resume, and go over the epoch boundary to step 9
    full = run(tmp_path / "full", 9, num_workers=num_workers)
    first = run(tmp_path / "part", 9, stop_after=4, num_workers=num_workers)
    second = run(tmp_path / "part", 9, resume=tmp_path / "part" / "last.pt", num_workers=num_workers)
    assert sorted(first) == [0, 1, 2, 3] and sorted(second) == [4, 5, 6, 7, 8]
    for s in range(9):
        assert (first | second)[s] == full[s], s  # bit-identical, not approximately equal


def test_seeded_dataset_depends_on_seed_epoch_index_only_and_keeps_the_caller_rng():
    data = SeededDataset(NoisyPairs(), seed=5)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    first = data[3]["x"]
    assert torch.equal(torch.get_rng_state(), state)      # loading a sample did not consume the caller's RNG
    torch.manual_seed(123)
    torch.randn(100)                          # the caller's stream moved on: the sample is still the same
    assert torch.equal(data[3]["x"], first)
    data.epoch = 1
    assert not torch.equal(data[3]["x"], first)           # a new epoch gives new augmentation noise
    assert not torch.equal(SeededDataset(NoisyPairs(), seed=6)[3]["x"], first)


def test_table_batches_are_the_batches_of_epoch_loader():
    """The in-memory table path gives the rows of the DataLoader path: same order, same resume point."""
    class Rows(torch.utils.data.Dataset):
        def __len__(self):
            return 23

        def __getitem__(self, i):
            return {"x": torch.tensor([float(i), -i]), "id": f"row{i}"}

    table = {"x": torch.stack([Rows()[i]["x"] for i in range(23)]), "id": [f"row{i}" for i in range(23)]}
    for epoch, start, drop_last in ((0, 0, True), (3, 2, True), (1, 1, False)):
        expected = list(epoch_loader(Rows(), 5, seed=4, epoch=epoch, start_batch=start, drop_last=drop_last))
        got = list(table_batches(table, 5, seed=4, epoch=epoch, start_batch=start, drop_last=drop_last))
        assert len(got) == len(expected) == (4 - start if drop_last else 5 - start)
        for a, b in zip(got, expected):
            assert torch.equal(a["x"], b["x"]) and a["id"] == b["id"]
    assert [b["id"][0] for b in table_batches(table, 5, seed=4, epoch=0)] != \
        [b["id"][0] for b in table_batches(table, 5, seed=4, epoch=1)]  # a new epoch, a new order


def test_checkpoint_round_trip_keeps_every_field(tmp_path):
    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models, pre_tokenizers
    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "heart": 1, "normal": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")
    model, cfg = Toy(), Config.wrap({"a": {"b": 1}})
    opt = build_optimizer(model, 0.1, 0.0)
    model(torch.randn(2, 8)).sum().backward()
    opt.step()
    save_checkpoint(tmp_path / "best.pt", model, opt, None, 7, 2, "phase2", 0.5, cfg, tokenizer=tokenizer)
    fresh = Toy()
    opt2 = build_optimizer(fresh, 0.1, 0.0)
    ckpt = load_checkpoint(tmp_path / "best.pt", fresh, opt2)
    assert (ckpt["step"], ckpt["epoch"], ckpt["phase"], ckpt["best_metric"]) == (7, 2, "phase2", 0.5)
    assert ckpt["config"] == {"a": {"b": 1}}
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values()))
    assert opt2.state_dict()["state"][0]["exp_avg"].equal(opt.state_dict()["state"][0]["exp_avg"])
    tok_dir = training.write_tokenizer_files(ckpt["tokenizer_files"], tmp_path / "tok")
    reloaded = PreTrainedTokenizerFast.from_pretrained(tok_dir)
    assert reloaded("heart normal")["input_ids"] == [1, 2]


def test_non_finite_loss_stops_and_leaves_last_checkpoint(tmp_path):
    run(tmp_path, 10, stop_after=3)
    good = (tmp_path / "last.pt").read_bytes()
    with pytest.raises(NonFiniteLoss, match=r"step 6 \(mse\)"):
        run(tmp_path, 10, resume=tmp_path / "last.pt", poison_step=5)
    # steps 4 and 5 ran and were saved; the poisoned 6th step (log.jsonl's step 6) wrote nothing
    assert load_checkpoint(tmp_path / "last.pt", restore_rng=False)["step"] == 5
    assert good != (tmp_path / "last.pt").read_bytes()
    with pytest.raises(NonFiniteLoss):
        check_finite({"a": torch.tensor(1.0), "b": torch.tensor(float("inf"))}, 0)


def test_non_finite_gradient_and_weights_are_never_committed(tmp_path):
    """A finite loss can still give a NaN gradient: check_gradient stops before optimizer.step (without fp16's
    scaler, which skips such steps itself); save_checkpoint refuses non-finite weights, the old file stays."""
    _, _, scaler, _ = training.setup_device("cpu")
    with pytest.raises(NonFiniteLoss, match=r"non-finite gradient norm \(nan\) at step 3"):
        training.check_gradient(torch.tensor(float("nan")), scaler, 2)
    training.check_gradient(torch.tensor(0.5), scaler, 2)
    enabled = torch.amp.GradScaler("cpu", enabled=True)
    training.check_gradient(torch.tensor(float("inf")), enabled, 2)      # the fp16 scaler skips the step itself
    model, path = Toy(), tmp_path / "last.pt"
    opt = build_optimizer(model, 0.1, 0.0)
    training.save_checkpoint(path, model, opt, None, 4, 0, 1, 0.0, {})
    good = path.read_bytes()
    with torch.no_grad():
        next(model.parameters())[0] = float("nan")
    with pytest.raises(NonFiniteLoss, match=r"non-finite weights after step 5 in 1 tensors .*last.pt was not written"):
        training.save_checkpoint(path, model, opt, None, 5, 0, 1, 0.0, {})
    assert path.read_bytes() == good and [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_atomic_write_keeps_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    training.atomic_write_bytes(path, b"good")

    def fail(*args):
        raise OSError("disk full")
    monkeypatch.setattr(training.os, "replace", fail)
    with pytest.raises(OSError):
        training.atomic_write_bytes(path, b"half")
    assert path.read_bytes() == b"good"
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind


def test_run_processes_runs_each_command_logs_it_and_reports_exit_codes(tmp_path):
    commands = [(f"job{i}", ["-c", f"import sys; print('out {i}'); sys.exit({i % 2})"], tmp_path / f"job{i}.log")
                for i in range(3)]
    codes = training.run_processes(commands, jobs=2, poll_seconds=0.05)
    assert codes == {"job0": 0, "job1": 1, "job2": 0}
    assert [(tmp_path / f"job{i}.log").read_text().strip() for i in range(3)] == ["out 0", "out 1", "out 2"]
    with pytest.raises(RuntimeError, match=r"job1 failed \(exit 1\); see .*job1\.log"):
        training.run_processes(commands, jobs=1, stop_on_failure=True, poll_seconds=0.05)


def test_run_logger_prints_a_compact_line_and_writes_every_value(tmp_path, capsys):
    from training import RunLogger
    record = {"step": 7, "loss": 0.25, "val/map": 0.5}
    record.update({f"val/ap@0.5/class{k}": k / 100 for k in range(40)})          # per-class: JSONL only
    record.update({f"term{k}": float(k) for k in range(20)})
    RunLogger(tmp_path).log(**record)
    printed = capsys.readouterr().out.strip()
    assert printed.startswith("step 7 | loss 0.25 | val/map 0.5 | term0 0 |")
    assert "class" not in printed and printed.count(" | ") == 14                # 14 values + the remainder note
    assert printed.endswith(f"(+{len(record) - 14} more in log.jsonl)")
    assert json.loads((tmp_path / "log.jsonl").read_text()) == record
