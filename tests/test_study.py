"""The study runner's own arithmetic (benchmarks/mimo_study.py): the speed-up factor and what a mask hides."""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from mimo.metrics.proxy_classifier import ProxyClassifierConfig

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "mimo_study.py"
TINY_STUDY = ("model.preset=micro", "data.frame_size=16", "data.num_frames=4", "train.batch_size=2", "sample.steps=1")
TINY_PROXY = ProxyClassifierConfig(frame_size=16, num_frames=4, width=8, steps=4, batch_size=8, validation_clips=16)
TINY_SIZES = {"velocity_clips": 4, "trajectory_clips": 2, "probe_clips": 16, "probe_seeds": (0,)}


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("mimo_study", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def test_speedup_above_one_when_the_arm_reaches_the_baselines_final_value_early(study):
    steps, baseline = [1, 2, 3, 4], [1.0, 0.8, 0.6, 0.5]
    factor, bound = study.speedup(steps, baseline, [0.9, 0.6, 0.5, 0.4], higher_is_better=False)
    assert factor == pytest.approx(4 / 3) and bound == ""


def test_speedup_below_one_when_the_baseline_had_the_arms_final_value_earlier(study):
    steps, baseline = [1, 2, 3, 4], [1.0, 0.8, 0.6, 0.5]
    factor, _ = study.speedup(steps, baseline, [1.0, 0.9, 0.8, 0.7], higher_is_better=False)
    assert factor == pytest.approx(2.5 / 4)  # the baseline crossed 0.7 half-way between steps 2 and 3
    factor, bound = study.speedup(steps, [0.1, 0.2, 0.3, 0.4], [0.0, 0.05, 0.08, 0.1], higher_is_better=True)
    assert factor == pytest.approx(1 / 4) and bound == "≤"  # already there at the first evaluation: a bound


def test_no_mask_hides_nothing_and_more_tokens_per_frame_hide_less(study):
    assert study.hidden_object_fractions(16, 4, 0.0, 6, 2, clips=100)["hidden_in_whole_history"] == 0
    coarse = study.hidden_object_fractions(16, 4, 0.5, 6, 2, clips=300)
    fine = study.hidden_object_fractions(32, 4, 0.5, 6, 2, clips=300)
    for key in ("hidden_in_all_context_frames", "hidden_in_frame_before_a_generated_one"):
        assert coarse[key] > fine[key] > 0 or coarse[key] > fine[key] == 0


@pytest.mark.usefixtures("fresh_masks", "flex_backward_on_cpu")
def test_one_worker_runs_baseline_then_mimo_in_one_process_under_flex(study, tmp_path, monkeypatch):
    """`--workers 1` is one process: the baseline trains, its checkpoints are evaluated (sampling builds masks
    under inference_mode), then MiMo trains with the same cached masks, as a GPU runs the study (flex)."""
    monkeypatch.setattr(study, "proxy_config", lambda config: TINY_PROXY)
    monkeypatch.setattr(study, "Sizes", functools.partial(study.Sizes, **TINY_SIZES))
    args = argparse.Namespace(
        config=study.CONFIG,
        steps=2,
        evaluations=2,
        seeds=[0],
        arms=["baseline", "mimo-r0.5"],
        sample_every=1,
        tail_fraction=0.0,
        runs=tmp_path,
        robustness=False,
        set=[*TINY_STUDY, "model.attention=flex"],
    )
    for job in study.build_jobs(args):
        record = json.loads(study.run_job(job).read_text())
        assert list(record["evaluations"]) == ["1", "2"] and record["evaluations"]["2"]["trajectory_error"] >= 0
