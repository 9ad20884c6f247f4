"""The SD v1.4 benchmark's accounting: FLOPs counted by hand, per-part sums, the 10-epoch projection."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
sys.path[:0] = [str(REPO / "runners"), str(REPO / "tests" / "bench")]
os.environ["HF_HUB_OFFLINE"] = "1"

torch = pytest.importorskip("torch")
torch.set_num_threads(1)

import bench_sd14  # noqa: E402
import profile_sd14_step  # noqa: E402
import make_tiny_fixtures  # noqa: E402
import sdkit_lora  # noqa: E402

# The benchmark compares the runner with diffusers 0.20's upstream loop, LoRA attention processors included.
tutorial_flow_only = pytest.mark.skipif(sdkit_lora.uses_peft(), reason="benchmarks the tutorial flow's LoRA attention "
                                        "processors (diffusers 0.20); diffusers 0.29 has none")


def test_count_flops_matches_a_hand_count_and_skips_frozen_weight_gradients():
    """x (3x8) -> frozen W1 (8->4) plus LoRA A (8->2), B (2->4) -> frozen W2 (4->5) -> sum.

    2 FLOPs per multiply-add. Forward: W1 2*3*8*4 = 192, A 2*3*8*2 = 96, B 2*3*2*4 = 48,
    W2 2*3*4*5 = 120: 456. Backward: input gradient of W2 120 (its weight is frozen: no weight
    gradient), weight gradient of B 48 and its input gradient 48, weight gradient of A 96; nothing
    for W1 or x, which need no gradient: 312.
    """
    torch.manual_seed(0)
    x = torch.randn(3, 8)
    w1, w2 = torch.randn(4, 8), torch.randn(5, 4)
    a = torch.randn(2, 8, requires_grad=True)
    b = torch.randn(4, 2, requires_grad=True)

    forward, total = bench_sd14.count_flops(lambda: ((x @ w1.T + (x @ a.T) @ b.T) @ w2.T).sum())

    assert (forward, total - forward) == (456, 312)
    assert a.grad is not None and b.grad is not None


def test_count_flops_without_gradients_counts_the_forward_only():
    x, w = torch.randn(3, 8), torch.randn(4, 8)
    assert bench_sd14.count_flops(lambda: (x @ w.T).sum()) == (192, 192)


def test_step_flops_of_both_loops_differ_by_the_encoders_exactly():
    models = bench_sd14.lora_models(make_tiny_fixtures.TINY)
    table = {name: bench_sd14.step_flops(models, make_tiny_fixtures.TINY, 16, cached=(name == "runner"))
             for name in ("runner", "upstream_loop")}
    runner, upstream = table["runner"], table["upstream_loop"]

    assert set(runner) == {"unet_forward", "unet_backward", "step"}
    assert runner["unet_forward"] == upstream["unet_forward"] > 0
    assert runner["unet_backward"] == upstream["unet_backward"] > 0
    assert upstream["vae_encode"] > 0 and upstream["text_encoder"] > 0
    assert upstream["step"] == runner["step"] + upstream["vae_encode"] + upstream["text_encoder"]
    # Only meta tensors were used: nothing was allocated or computed.
    assert all(p.device.type == "meta" for p in models[0].parameters())


def test_ceiling_is_peak_over_flops_per_step():
    # 1.6 TFLOP per cached step at 16 TFLOPS fp16: 10 steps/s, the figure.
    assert bench_sd14.ceiling_steps_per_s(1.6e12, bench_sd14.CHIP_PEAKS["fp16"]) == pytest.approx(10.0)


def test_summary_projects_a_seed_like_run_from_the_measured_epochs():
    metrics = [{"epoch": e, "step": i, "loss": 1.0, "step_time_s": t}
               for i, (e, t) in enumerate([(0, 3.0), (0, 3.0), (1, 2.0), (1, 1.0), (2, 1.0), (2, 1.0)])]
    summary = bench_sd14.summarise({"wall_s": 20.0, "max_rss_kib": 2048, "metrics": metrics})

    assert summary["epoch_s"] == [6.0, 3.0, 2.0]
    assert summary["s_per_step_steady"] == 1.0  # epoch 2 on: the cache is warm despite --random_flip
    assert summary["s_per_step_steady_min_max"] == [1.0, 1.0]
    assert summary["overhead_s"] == 9.0
    # overhead + the three measured epochs + 7 more like the last one
    assert summary["projected_10_epochs_s"] == 9.0 + 11.0 + 7 * 2.0
    assert summary["peak_rss_mib"] == 2


@tutorial_flow_only
def test_flop_table_counts_the_runner_with_its_sdpa_processor_and_the_same_unet_work():
    table = bench_sd14.flop_table(16, make_tiny_fixtures.TINY)
    runner, upstream = table["runner"], table["upstream_loop"]

    # SDPA changes the kernel, not the arithmetic: the UNet's FLOPs are the same in both loops.
    assert runner["unet_forward"] == upstream["unet_forward"]
    assert runner["unet_backward"] == upstream["unet_backward"]
    models = bench_sd14.lora_models(make_tiny_fixtures.TINY, sdpa=True)
    assert {type(p).__name__ for p in models[0].attn_processors.values()} == {"LoRAAttnProcessor2_0"}


def test_write_results_writes_json_that_reads_back(tmp_path):
    out = tmp_path / "sub" / "bench.json"
    bench_sd14.write_results(out, {"a": 1.5, "b": [1, 2]})
    assert json.loads(out.read_text()) == {"a": 1.5, "b": [1, 2]}


@tutorial_flow_only
def test_step_profile_times_every_phase_and_variant_on_the_tiny_model(tmp_path):
    model = make_tiny_fixtures.build_tiny_pipeline(tmp_path / "tiny-sd")
    times = profile_sd14_step.profile(model, 16, profile_sd14_step.VARIANTS, repeats=1)

    assert set(times) == {"vae_encode", "text_encoder"} | {
        f"unet_{part}_{variant}" for part in ("forward", "forward_backward") for variant in profile_sd14_step.VARIANTS}
    assert all(seconds > 0 for seconds in times.values())
