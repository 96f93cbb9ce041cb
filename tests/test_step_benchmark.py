"""benchmarks/step.py: every system's training step timed at tiny size, FLOPs as counted by hand, the phase's
freezing honoured by the benchmarked step."""
import json

import torch
from torch import nn

import training
from benchmarks import step as bench


def test_every_system_runs_two_steps_at_tiny_size():
    for system in bench.SYSTEMS:
        rows = bench.main([system, "--config", f"configs/tiny/{system}.yaml", "--steps", "2", "--warmup", "0",
                           "--variants", "default,channels_last", "--device", "cpu", "--gen-tokens", "4"])
        default = rows[0]
        assert default["system"] == system and default["variant"] == "default" and default["steps"] == 2
        assert default["samples_per_s"] > 0 and default["ms_per_step_p90"] >= default["ms_per_step_median"] > 0
        assert default["tflop_per_step"] > 0 and default["peak_rss_gb"] > 0
        assert "mfu" not in default                        # no stated CPU peak: no MFU
        assert [r["variant"] for r in rows] == (["default", "channels_last"] if system in bench.CNN_SYSTEMS
                                                else ["default"])
        if system == "chexquery":
            assert default["generation_reports_per_s"] > 0 and default["generation_tokens"] == 4


def test_flops_of_a_step_match_the_hand_count():
    """Linear 16 -> 8 without bias, batch 4: forward 2 * 4 * 16 * 8, backward the weight gradient only (the input
    needs none), 2 * 4 * 16 * 8 again."""
    layer = nn.Linear(16, 8, bias=False)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)

    def step(x, _):
        layer(x).square().mean().backward()
        optimizer.step()

    flops = bench.count_flops({"batch": lambda: torch.randn(4, 16), "step": step}, torch.device("cpu"))
    assert flops == 4 * 4 * 16 * 8


def test_the_benchmarked_step_trains_only_what_the_phase_trains():
    """Patch-IB's bottleneck phase freezes the towers: one benchmarked step changes the mask head only."""
    cfg = training.load_config("configs/tiny/patch_ib.yaml", ["train.batch_size=4"])
    device, ctx, scaler, _ = training.setup_device("cpu", "float32")
    import train_patch_ib
    b = bench.bench_patch_ib(train_patch_ib, cfg, "bottleneck", device, ctx, scaler)
    before = {n: p.detach().clone() for n, p in b["model"].named_parameters()}
    b["step"](b["batch"](), 0)
    changed = {n for n, p in b["model"].named_parameters() if not torch.equal(p, before[n])}
    assert any(n.startswith("mask_head.") for n in changed)
    assert not any(n.startswith(("image_tower.", "text_tower.")) for n in changed)


def test_peak_table_matches_device_names():
    assert bench.peak_tflops(torch.device("cpu"))[0] is None
    names = {"NVIDIA H100 80GB HBM3": 989.4, "NVIDIA H100 PCIe": 756.0, "NVIDIA A100-SXM4-80GB": 312.0}
    for name, peak in names.items():
        assert next(v for k, v in bench.PEAK_TFLOPS if k in name) == peak


def test_training_switches_channels_last_and_fused_adamw(tmp_path):
    """train.channels_last trains the same numbers in another memory layout; train.fused_adamw on a CPU run is one
    clear error."""
    import pytest
    import train_video_clip
    from tests.test_video_clip import SMALL
    losses = {}
    for layout in ("false", "true"):
        out = tmp_path / layout
        train_video_clip.main(["--out", str(out), *SMALL, "train.steps=2", "train.eval_interval=2", "train.log_interval=1",
                               "train.device=cpu", f"train.channels_last={layout}"])
        losses[layout] = [json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines()
                          if '"loss"' in line]
        weights = torch.load(out / "last.pt", weights_only=False)["model"]
    assert len(losses["true"]) == 2
    assert losses["true"] == pytest.approx(losses["false"], rel=1e-4)
    assert any(w.dim() == 5 and w.is_contiguous(memory_format=torch.channels_last_3d) and not w.is_contiguous()
               for w in weights.values())
    with pytest.raises(training.ConfigError, match="train.fused_adamw=true needs a CUDA device"):
        train_video_clip.main(["--out", str(tmp_path / "fused"), *SMALL, "train.steps=2", "train.device=cpu",
                               "train.fused_adamw=true"])
