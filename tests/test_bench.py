"""Benchmarks: each runs in its --tiny mode and writes what it measured with the machine it ran on; the
analytic FLOP count agrees with torch's FlopCounterMode; convergence resumes instead of re-running."""

from __future__ import annotations

import json
import statistics

import pytest
import torch

from bench_utilization import counted_flops
from harness import convergence_summary, run_benchmark, steps_to_reach
from mimo.config import ConfigError
from mimo.models import build_backbone
from mimo.objectives.objective import TrainingObjective

MACHINE_KEYS = {"cpu", "cores", "torch_threads", "torch", "date", "load_average_at_start", "cpu_share"}


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """run_benchmark --threads sets torch's thread count for the process; later tests get theirs back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _tiny(name: str, tmp_path, *extra: str) -> dict:
    """Run a benchmark's --tiny mode (one thread: tiny ops only pay for thread hand-offs) into tmp_path;
    it must have written what it returned."""
    payload = run_benchmark(name, ["--tiny", "--threads", "1", "--out", str(tmp_path), *extra])
    result = "convergence-cpu-tiny" if name == "convergence" else f"{name}-tiny"
    assert json.loads((tmp_path / f"{result}.json").read_text()) == payload
    assert payload["machine"].keys() >= MACHINE_KEYS
    return payload


@pytest.mark.parametrize(
    "overrides",
    [  # the default MiMo arm is cross-checked by the utilisation benchmark's test
        ("mimo.weight=0", "mimo.mask_ratio=0", "model.clean_conditioning=clean_timestep", "train.task=unconditional"),
        ("mimo.mask_ratio=0.75", "mimo.targets=current", "mimo.decoder_depth=1", "mimo.decoder_width=32"),
        ("diffusion.history_noise_max=0.3", "diffusion.history_dropout=0.1"),  # the history noise-level embedder
    ],
)
def test_analytic_flops_match_flop_counter(make_config, clips, overrides):
    config = make_config(*overrides)
    video = clips[0]
    torch.manual_seed(0)
    objective = TrainingObjective(config, build_backbone(config))

    def step():
        objective(video, None, torch.Generator().manual_seed(0))["loss"].backward()

    analytic = objective.training_flops(video.shape[0])
    assert counted_flops(step) == pytest.approx(analytic.dense, rel=1e-6)
    assert analytic.useful < analytic.block_sparse <= analytic.dense  # masked-out pairs are not useful


def test_step_benchmark_compares_arms_round_by_round(tmp_path):
    payload = _tiny("step", tmp_path, "--ratios", "0.5")
    arms = payload["results"]
    baseline = arms["baseline"]
    assert baseline["wall_ratio_to_baseline"] == 1.0
    mimo = arms["mimo_r0.5"]
    rounds = [w / b for w, b in zip(mimo["wall_s"], baseline["wall_s"], strict=True)]
    assert mimo["wall_ratio_to_baseline"] == pytest.approx(statistics.median(rounds), abs=2e-3)
    # 16×16 frames, patch 4: N = 16 positions; r = 0.5 drops 8 of them from each of the T-1 = 3 history frames.
    assert baseline["tokens_per_clip"] - mimo["tokens_per_clip"] == 3 * 8
    assert "Training step" in (tmp_path / "README.md").read_text()


def test_sampling_benchmark_reports_frames_per_second_and_marginal_cost(tmp_path):
    payload = _tiny("sampling", tmp_path)
    lengths, marginal = payload["results"]["lengths"], payload["results"]["marginal_cost"]
    for frames, row in lengths.items():
        assert row["cached_frames_per_s"] == pytest.approx(int(frames) / row["cached_s"], rel=1e-2)
        assert row["cached_speedup"] == pytest.approx(row["uncached_s"] / row["cached_s"], rel=2e-2)
    short, long = sorted(lengths, key=int)
    expected = (lengths[long]["uncached_s"] - lengths[short]["uncached_s"]) / (int(long) - int(short))
    assert marginal[0]["uncached_s_per_frame"] == pytest.approx(expected, abs=1e-3)


def test_utilization_benchmark_counts_flops_and_memory(tmp_path):
    results = _tiny("utilization", tmp_path)["results"]
    for arm in ("baseline", "mimo_r0.5"):
        row = results[arm]
        assert row["counted_over_analytic"] == pytest.approx(1.0, abs=1e-3)
        achieved = row["flops_analytic"] / row["median_wall_s"]
        # the benchmark rounds the fraction to 4 decimals: half a unit of the last one, or 1 % of a larger value
        expected = achieved / (results["peak"]["gflops"] * 1e9)
        assert row["fraction_of_peak"] == pytest.approx(expected, rel=1e-2, abs=5e-5)
        assert row["memory"]["peak_mib"] > 0
    assert results["baseline"]["flops_analytic"] > results["mimo_r0.5"]["flops_analytic"] * 0.5
    if not torch.cuda.is_available():
        assert "skipped" in results["gpu_bf16"]


def test_convergence_benchmark_resumes_and_extends_its_budget(tmp_path, monkeypatch):
    monkeypatch.setenv("MIMO_CACHE", str(tmp_path / "cache"))  # the tiny proxy classifier is trained here
    runs = ["--runs-dir", str(tmp_path / "runs")]
    first = _tiny("convergence", tmp_path, *runs, "--set", "train.steps=2")["results"]["evaluations"]
    assert set(first["baseline"]) == set(first["mimo"]) == {"2"}
    second = _tiny("convergence", tmp_path, *runs)["results"]
    evaluations = second["evaluations"]
    for arm in ("baseline", "mimo"):
        assert evaluations[arm]["2"] == first[arm]["2"]  # not re-trained or re-evaluated
        assert set(evaluations[arm]) == {"2", "4"}
        assert (tmp_path / "runs" / "convergence-cpu-tiny" / arm / "checkpoints" / "step_00000004").is_dir()
    for row in second["summary"].values():
        if row["speedup"] is not None:
            ratio = row["baseline_steps_to_reach"] / row["mimo_steps_to_reach"]
            assert row["speedup"] == pytest.approx(ratio, abs=0.01)
    assert (tmp_path / "convergence-cpu-tiny.png").is_file()
    with pytest.raises(ConfigError, match="another configuration"):
        run_benchmark("convergence", ["--tiny", "--out", str(tmp_path), *runs, "--set", "train.lr=0.001"])


def test_steps_to_reach_interpolates_the_last_crossing():
    steps = [100, 200, 300, 400]
    falling = [10.0, 8.0, 6.0, 4.0]
    assert steps_to_reach(steps, falling, 7.0, higher_is_better=False) == pytest.approx(250.0)
    assert steps_to_reach(steps, falling, 12.0, higher_is_better=False) == 100.0
    assert steps_to_reach(steps, falling, 3.0, higher_is_better=False) is None
    rising = [0.2, 0.5, 0.6, 0.9]
    assert steps_to_reach(steps, rising, 0.75, higher_is_better=True) == pytest.approx(350.0)
    # good by accident at first, then worse, then good for good: the crossing that counts is the last one
    dipping = [5.0, 9.0, 8.0, 4.0]
    assert steps_to_reach(steps, dipping, 6.0, higher_is_better=False) == pytest.approx(350.0)
    assert steps_to_reach(steps, [5.0, 4.0, 9.0, 9.0], 6.0, higher_is_better=False) is None


def test_speedup_does_not_credit_mimo_for_a_baseline_that_got_worse():
    def curve(values):
        return {str(step): {"trajectory": v, "proxy_fd": v, "probe_accuracy": -v} for step, v in values.items()}

    # The baseline reached 6 by step 180 (interpolated) and ended there; MiMo reaches 6 only at step 250.
    baseline = curve({100: 10.0, 200: 5.0, 300: 6.0})
    mimo = curve({100: 9.0, 200: 7.0, 300: 5.0})
    row = convergence_summary({"baseline": baseline, "mimo": mimo})["trajectory"]
    assert row["baseline_steps_to_reach"] == pytest.approx(180.0)
    assert row["mimo_steps_to_reach"] == pytest.approx(250.0)
    assert row["speedup"] == pytest.approx(180 / 250, abs=0.01)
    assert not row["speedup_is_lower_bound"] and not row["speedup_is_upper_bound"]


def test_a_mimo_that_never_catches_up_is_measured_against_the_baseline_at_its_own_final_value():
    def curve(values):
        return {str(step): {"trajectory": v, "proxy_fd": v, "probe_accuracy": -v} for step, v in values.items()}

    # MiMo ends at 7, which the baseline reached at step 250 (interpolated): MiMo is 250 / 400 as fast.
    baseline = curve({100: 10.0, 200: 8.0, 300: 6.0, 400: 4.0})
    mimo = curve({100: 10.0, 200: 9.0, 300: 8.0, 400: 7.0})
    row = convergence_summary({"baseline": baseline, "mimo": mimo})["trajectory"]
    assert row["mimo_steps_to_reach"] is None
    assert row["baseline_steps_to_mimo_final"] == pytest.approx(250.0)
    assert row["speedup"] == pytest.approx(250 / 400, abs=0.01)
    assert not row["speedup_is_lower_bound"] and not row["speedup_is_upper_bound"]
    # a baseline already better than MiMo's final value at its first evaluation: only an upper bound
    early = convergence_summary({"baseline": curve({100: 6.0, 200: 4.0}), "mimo": curve({100: 9.0, 200: 7.0})})
    assert early["trajectory"]["speedup_is_upper_bound"]
