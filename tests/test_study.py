"""The study runner's own arithmetic (benchmarks/mimo_study.py): the speed-up factor, what a mask hides, and
statistics at the seed level that benchmarks/recompute_pvalues.py recomputes from the published JSON."""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

import recompute_pvalues
from mimo.metrics.proxy_classifier import ProxyClassifierConfig
from study_statistics import holm

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


def test_speedup_is_not_measured_from_a_single_shared_evaluation(study):
    assert study.speedup([360], [1.0], [0.9], higher_is_better=False) == (None, "n/a")


def test_holm_multiplies_the_smallest_p_by_the_family_size_and_never_lets_a_larger_p_drop_below():
    assert holm([0.01, 0.04, 0.03, math.nan]) == pytest.approx([0.03, 0.06, 0.06, math.nan], nan_ok=True)
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1


# ----- a tiny fake study: seeds 0, 1, 2; the arm is worse on seeds 0 and 1 and better on seed 2 --------------
VELOCITY_GAPS = {0: 0.01, 1: 0.02, 2: -0.005}  # arm − baseline per seed, every clip alike up to a small spread
CLIPS = 8


def fake_evaluation(seed: int, step: int, gap: float) -> dict:
    rng = np.random.default_rng(seed * 10 + step + (100 if gap else 0))  # the arms' clips differ
    velocity = 0.1 + gap + rng.normal(0, 1e-3, CLIPS)  # one noise level
    trajectory = 5.0 + 10 * gap + rng.normal(0, 0.1, 4)
    evaluation = {
        "velocity_error": {"0.75": float(velocity.mean())},
        "velocity_error_per_clip": [velocity.tolist()],
        "probe_per_layer": {"1": [0.3 + gap, 0.31], "2": [0.25, 0.26 - gap]},
        "cknna_per_layer": {"1": 0.1, "2": 0.1 + gap},
    }
    if step == 2:  # sampled at the last evaluation only: no speed-up can be measured for those metrics
        evaluation |= {
            "trajectory_error": float(trajectory.mean()),
            "teacher_forced_trajectory_error": float(trajectory.mean()) - 1,
            "trajectory_error_per_clip": trajectory.tolist(),
            "teacher_forced_trajectory_error_per_clip": (trajectory - 1).tolist(),
            "proxy_fd": 20 + 100 * gap,
        }
    return evaluation


def fake_curves(seed: int, gap: float) -> dict:
    rows = [(0.0, 0.0), (1.0, 0.01 + gap + 0.001 * seed)]  # (strength, change)
    return {"drop": [{"strength": s, "velocity_error": 0.1 + c, "velocity_error_change": c} for s, c in rows]}


def fake_study() -> dict:
    arms = {"baseline": dict.fromkeys(VELOCITY_GAPS, 0.0), "mimo-r0.5": VELOCITY_GAPS}
    return {
        "settings": {
            "machine": "a test",
            "wall": "no time",
            "model": "none",
            "eval_steps": [1, 2],
            "sizes": {"velocity_clips": CLIPS, "trajectory_clips": 4, "probe_clips": 4, "probe_seeds": [0, 1]},
            "sample_steps": 1,
            "copy_last_px": 3.0,
        },
        "hidden_objects": [],
        "evaluations": {
            arm: {
                str(seed): {str(step): fake_evaluation(seed, step, gap) for step in (1, 2)}
                for seed, gap in gaps.items()
            }
            for arm, gaps in arms.items()
        },
        "robustness_per_seed": {
            arm: {str(seed): fake_curves(seed, gap) for seed, gap in gaps.items()} for arm, gaps in arms.items()
        },
    }


def report_from_results(study, results: Path, name: str, monkeypatch) -> tuple[str, dict]:
    argv = ["mimo_study.py", "--from-results", "--results", str(results), "--name", name]
    monkeypatch.setattr(sys, "argv", argv)
    study.main()
    return (results / f"{name}.md").read_text(), json.loads((results / f"{name}.json").read_text())


def test_the_arms_test_is_over_seeds_and_each_seeds_clip_test_shows_its_direction(study, tmp_path, monkeypatch):
    (tmp_path / "mimo_study_fake.json").write_text(json.dumps(fake_study()))
    report, payload = report_from_results(study, tmp_path, "mimo_study_fake", monkeypatch)
    velocity = payload["summary"]["mimo-r0.5"]["paired"]["velocity_error"]
    expected = stats.ttest_1samp(velocity["per_seed"], 0.0).pvalue
    assert velocity["per_seed"] == pytest.approx(list(VELOCITY_GAPS.values()), abs=2e-3)
    assert velocity["t_test_p"] == pytest.approx(expected) and velocity["t_test_p"] > 0.05  # 3 seeds, mixed signs
    directions = [math.copysign(1, t["difference"]) for t in velocity["within_seed"]]
    assert directions == [1, 1, -1] and all(t["t_test_p"] < 1e-3 for t in velocity["within_seed"])
    assert "sign_test_p" not in json.dumps(payload) and "seed 2: -0.005" in report
    assert payload["summary"]["mimo-r0.5"]["speedup"]["proxy_fd"] == {
        "per_seed": [None] * 3,
        "bounds": ["n/a"] * 3,
        "mean_std": None,
    }
    drop = payload["robustness"]["mimo-r0.5"]["drop"][1]
    assert drop["per_seed"] == pytest.approx({"0": 0.02, "1": 0.031, "2": 0.007}) and "holm_p" in drop["paired"]


def test_every_printed_p_value_is_recomputed_from_the_published_json(study, tmp_path, monkeypatch):
    (tmp_path / "mimo_study_fake.json").write_text(json.dumps(fake_study()))
    report, payload = report_from_results(study, tmp_path, "mimo_study_fake", monkeypatch)
    quoted = payload["summary"]["mimo-r0.5"]["paired"]["velocity_error"]["t_test_p"]
    readme = tmp_path / "README.md"
    readme.write_text(f"# mimo\n\n## Does MiMo help?\n\nThe gap (p = {quoted:.2g}).\n\n## Next\n\np = 0.123\n")
    assert recompute_pvalues.main(["--results", str(tmp_path), "--readme", str(readme)]) == 0
    assert report.count("p = ") > 20
    readme.write_text(f"## Does MiMo help?\n\nThe gap (p = {quoted:.2g}), robust (p = 0.0123).\n")
    assert recompute_pvalues.main(["--results", str(tmp_path), "--readme", str(readme)]) == 1
    (tmp_path / "mimo_study_fake.md").write_text(report.replace(f"p = {quoted:.2g}", "p = 0.0123"))
    readme.write_text("## Does MiMo help?\n")
    assert recompute_pvalues.main(["--results", str(tmp_path), "--readme", str(readme)]) == 1


def test_robustness_without_per_seed_curves_is_reported_as_pending_with_its_rerun(study, tmp_path, monkeypatch):
    published = fake_study()
    del published["robustness_per_seed"]
    published["robustness"] = {"baseline": {"drop": [{"strength": 1.0, "change": 0.1, "change_std": 0.01}]}}
    (tmp_path / "mimo_study_old.json").write_text(json.dumps(published))
    report, payload = report_from_results(study, tmp_path, "mimo_study_old", monkeypatch)
    assert "Pending a rerun" in report and payload["robustness"] == {}
    assert "robustness.json; python benchmarks/mimo_study.py" in payload["robustness_pending"]["command"]
    assert "--robustness" in payload["robustness_pending"]["command"]
    again, _ = report_from_results(study, tmp_path, "mimo_study_old", monkeypatch)  # the rebuilt JSON rebuilds alike
    assert again == report


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
