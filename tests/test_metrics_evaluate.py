"""evaluate.py's frame with a tiny fake system registered in sys.modules (the real systems have their own tests):
dispatch on config["system"], the args contract, table, atomic metrics.json beside the checkpoint, vis/ folder,
and one clear error for a missing file, a checkpoint without config, an unknown system.
Run: python -m pytest -q tests/test_metrics_evaluate.py"""
import json
import sys
import types

import pytest
import torch

import evaluate


@pytest.fixture
def fake_system(monkeypatch):
    calls = []

    def evaluate_checkpoint(checkpoint, args):
        calls.append((checkpoint, args))
        weight = float(checkpoint["model"]["w"].sum())
        if args.visualize:
            from metrics.visualize import heatmap_overlay
            for i in range(args.visualize):
                heatmap_overlay(torch.rand(3, 16, 16), torch.rand(4, 4), f"{args.out_dir}/map_{i}.png", f"map {i}")
        return {"score/total": weight, "count": torch.tensor(3), "nan_metric": float("nan")}
    module = types.ModuleType("train_fakesys")
    module.evaluate_checkpoint = evaluate_checkpoint
    monkeypatch.setitem(sys.modules, "train_fakesys", module)
    return calls


def write_checkpoint(path, config):
    model = torch.nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.fill_(1.0)
        model.bias.fill_(0.5)
    state = {"w": model.weight.detach().clone()}
    torch.save({"model": state, "config": config, "step": 1}, path)


def test_dispatch_table_and_metrics_json(tmp_path, fake_system, capsys):
    path = tmp_path / "run" / "best.pt"
    path.parent.mkdir()
    write_checkpoint(path, {"system": "fakesys", "train": {"seed": 0}})
    metrics = evaluate.main(["--checkpoint", str(path), "--split", "test", "--bootstrap", "5", "--visualize", "2",
                             "--device", "cpu"])
    checkpoint, args = fake_system[0]
    assert checkpoint["config"]["system"] == "fakesys"
    assert (args.split, args.bootstrap, args.visualize, args.images, args.device) == ("test", 5, 2, None, "cpu")
    assert args.checkpoint == str(path) and args.out_dir == str(tmp_path / "run" / "vis")
    assert sorted(p.name for p in (tmp_path / "run" / "vis").iterdir()) == ["map_0.png", "map_1.png"]
    written = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert written.pop("checkpoint") == "best.pt" and written.pop("checkpoint_step") == 1   # what it scored
    assert written["score/total"] == 2.0 and written["count"] == 3.0 and written["nan_metric"] is None  # strict JSON
    assert metrics == pytest.approx({**written, "nan_metric": float("nan")}, nan_ok=True)
    out = capsys.readouterr().out
    assert "| score/total" in out and "2.0000" in out and "nan" in out
    # positional form and another split -> metrics_val.json, metrics.json untouched
    evaluate.main([str(path), "--split", "val"])
    assert (tmp_path / "run" / "metrics_val.json").is_file()
    assert fake_system[-1][1].split == "val"
    # another checkpoint of the run (last.pt) gets its own file: the run's metrics.json stays best.pt's
    last = path.with_name("last.pt")
    write_checkpoint(last, {"system": "fakesys", "train": {"seed": 0}})
    before = (tmp_path / "run" / "metrics.json").read_bytes()
    evaluate.main([str(last)])
    assert json.loads((tmp_path / "run" / "metrics_last.json").read_text())["checkpoint"] == "last.pt"
    assert (tmp_path / "run" / "metrics.json").read_bytes() == before


def test_clear_errors(tmp_path, fake_system):
    with pytest.raises(SystemExit, match="checkpoint not found"):
        evaluate.main(["--checkpoint", str(tmp_path / "missing.pt")])
    no_config = tmp_path / "no_config.pt"
    torch.save({"model": {}}, no_config)
    with pytest.raises(SystemExit, match="no 'config'"):
        evaluate.main([str(no_config)])
    no_system = tmp_path / "no_system.pt"
    write_checkpoint(no_system, {"train": {}})
    with pytest.raises(SystemExit, match="no 'system' key"):
        evaluate.main([str(no_system)])
    unknown = tmp_path / "unknown.pt"
    write_checkpoint(unknown, {"system": "does_not_exist"})
    with pytest.raises(SystemExit, match="unknown system 'does_not_exist'.*wsrpn_vl"):
        evaluate.main([str(unknown)])
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit, match="cannot be read"):
        evaluate.main([str(garbage)])
    good = tmp_path / "good.pt"
    write_checkpoint(good, {"system": "fakesys"})
    with pytest.raises(SystemExit, match="--images .*no such file"):
        evaluate.main([str(good), "--images", str(tmp_path / "nothing_here")])
    assert not fake_system                                        # the system was never called


def test_non_numeric_metric_is_an_error(tmp_path, monkeypatch):
    module = types.ModuleType("train_badsys")
    module.evaluate_checkpoint = lambda checkpoint, args: {"report": "text"}
    monkeypatch.setitem(sys.modules, "train_badsys", module)
    path = tmp_path / "best.pt"
    write_checkpoint(path, {"system": "badsys"})
    with pytest.raises(SystemExit, match="'report' = 'text' is not a number"):
        evaluate.main([str(path)])

