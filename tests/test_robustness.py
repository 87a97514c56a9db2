"""Robustness to a perturbed history: each perturbation hurts a model with a known response (copy the last
context frame) more as it grows, the draws are shared across models, repeat freezes the history, both
paths clip noisy pixels alike, and `mimo eval` reports the curves."""

from __future__ import annotations

import itertools
import json
from types import SimpleNamespace

import pytest
import torch

from conftest import micro_config
from mimo.cli import main
from mimo.data.synthetic import MovingShapes
from mimo.evaluation import robustness
from mimo.evaluation.robustness import (
    PERTURBATIONS,
    continuation_scores,
    evaluate_robustness,
    perturb_history,
    robustness_curves,
    velocity_error_curves,
)
from mimo.train.checkpoint import load_trained_model
from mimo.train.trainer import train

CONTEXT = 3
PATCH = 4


@pytest.fixture(scope="module")
def shapes() -> dict[str, torch.Tensor]:
    dataset = MovingShapes(24, frame_size=16, num_frames=6, seed=3)
    items = [dataset[i] for i in range(len(dataset))]
    return {key: torch.stack([item[key] for item in items]) for key in items[0]}


def copy_last(context: torch.Tensor, num_frames: int = 6) -> torch.Tensor:
    """The stub model: the context, then its last frame repeated."""
    return torch.cat([context, context[:, -1:].expand(-1, num_frames - context.shape[1], -1, -1, -1)], dim=1)


@pytest.mark.parametrize("kind", list(PERTURBATIONS))
def test_each_perturbation_degrades_copy_last_monotonically(shapes, kind):
    curves = robustness_curves(
        lambda context: continuation_scores(copy_last(context), shapes, CONTEXT),
        shapes["video"][:, :CONTEXT],
        PATCH,
        {kind: PERTURBATIONS[kind]},
    )
    rows = curves[kind]
    psnr = [row["psnr"] for row in rows]
    error = [row["trajectory_error"] for row in rows]
    assert rows[0]["strength"] == 0 and rows[0]["psnr_change"] == 0
    assert all(a > b for a, b in itertools.pairwise(psnr)), psnr
    assert error[-1] > error[0]  # found by colour: a faint noise can move a centroid either way, a strong one hurts


def test_zero_strength_is_the_clean_context(shapes):
    context = shapes["video"][:, :CONTEXT]
    for kind in PERTURBATIONS:
        assert torch.equal(perturb_history(context, kind, 0.0, PATCH, torch.Generator().manual_seed(0)), context)


def test_drop_and_repeat_keep_the_first_frame_and_change_whole_frames(shapes):
    context = shapes["video"][:, :CONTEXT]
    for kind in ("drop", "repeat"):
        perturbed = perturb_history(context, kind, 1.0, PATCH, torch.Generator().manual_seed(0))
        assert torch.equal(perturbed[:, 0], context[:, 0])
        expected = torch.zeros_like(context[:, 1:]) if kind == "drop" else context[:, :1].expand_as(context[:, 1:])
        assert torch.equal(perturbed[:, 1:], expected)


def numbered_frames(batch: int, frames: int) -> torch.Tensor:
    """Clips (B, T, 1, 4, 4) whose frame t is filled with t: which frame a perturbed one shows is readable."""
    return torch.arange(frames, dtype=torch.float32)[None, :, None, None, None].expand(batch, frames, 1, 4, 4)


def shown_frames(perturbed: torch.Tensor) -> torch.Tensor:
    return perturbed[:, :, 0, 0, 0].long()  # (B, T)


def test_repeat_at_p_1_freezes_the_whole_history_on_the_first_frame():
    perturbed = perturb_history(numbered_frames(2, 5), "repeat", 1.0, PATCH, torch.Generator().manual_seed(0))
    assert shown_frames(perturbed).tolist() == [[0, 0, 0, 0, 0]] * 2


def test_repeated_frames_show_the_last_kept_frame_not_the_one_before():
    context = numbered_frames(64, 5)
    shown = shown_frames(perturb_history(context, "repeat", 0.5, PATCH, torch.Generator().manual_seed(0)))
    kept = shown == torch.arange(5)
    for clip, frames in zip(kept, shown, strict=True):
        expected = [max(t for t in range(i + 1) if clip[t]) for i in range(5)]  # forward fill from the kept frames
        assert frames.tolist() == expected
    frozen_twice = (~kept[:, 1:-1] & ~kept[:, 2:]).any()  # a delay would show frame t-1 there, not a kept one
    assert frozen_twice


def test_mask_blanks_the_given_share_of_patches_in_every_frame(shapes):
    context = shapes["video"][:, :CONTEXT] + 3.0  # no pixel is 0 before blanking
    perturbed = perturb_history(context, "mask", 0.25, PATCH, torch.Generator().manual_seed(0))
    blank_patches = (perturbed == 0).all(dim=2).unfold(2, PATCH, PATCH).unfold(3, PATCH, PATCH).all(-1).all(-1)
    assert (blank_patches.sum(dim=(-2, -1)) == 4).all()  # 25 % of the 16 patches of each frame
    assert ((perturbed == 0) | (perturbed == context)).all()


def test_sampled_and_velocity_paths_clip_the_same_noisy_pixels(shapes, tmp_path, monkeypatch):
    """`mimo eval`'s sampled curves and the study's velocity-error curves see the very same perturbed
    contexts, clipped to [-1, 1], for the same seed."""
    video, seen = shapes["video"], {"sampled": [], "velocity": []}
    config = micro_config(
        "data.num_frames=6", f"train.context_frames={CONTEXT}", "eval.robustness=noise", f"eval.batch_size={len(video)}"
    )

    def sample(model, config, context, labels, generator, num_frames):
        seen["sampled"].append(context)
        return copy_last(context, num_frames)

    def error(model, history, context_frames, noise_levels, seed):
        seen["velocity"].append(history[:, :context_frames])
        return torch.zeros(len(noise_levels), history.shape[0])

    monkeypatch.setattr(robustness, "sample_for_task", sample)
    monkeypatch.setattr(robustness, "velocity_error", error)
    model = SimpleNamespace(patch_size=PATCH, patch_embed=SimpleNamespace(weight=torch.zeros(1)))
    evaluate_robustness(model, config, shapes, tmp_path)
    velocity_error_curves(model, config, video, {"noise": PERTURBATIONS["noise"]})
    assert len(seen["sampled"]) == len(seen["velocity"]) == len(PERTURBATIONS["noise"])
    for sampled, scored in zip(seen["sampled"], seen["velocity"], strict=True):
        assert torch.equal(sampled, scored) and sampled.abs().max() <= 1
    assert not torch.equal(seen["velocity"][-1], video[:, :CONTEXT].clamp(-1, 1))  # σ = 0.8 changed them


def test_the_same_seed_gives_the_same_perturbed_contexts(shapes):
    context = shapes["video"][:, :CONTEXT]
    for kind in PERTURBATIONS:
        first = perturb_history(context, kind, 0.5, PATCH, torch.Generator().manual_seed(7))
        assert torch.equal(first, perturb_history(context, kind, 0.5, PATCH, torch.Generator().manual_seed(7)))


def test_unknown_perturbation_and_strength_are_rejected(shapes):
    context = shapes["video"][:, :CONTEXT]
    with pytest.raises(ValueError, match="unknown perturbation 'blur'"):
        perturb_history(context, "blur", 0.5, PATCH, torch.Generator())
    with pytest.raises(ValueError, match="strength"):
        perturb_history(context, "drop", 1.5, PATCH, torch.Generator())


def test_eval_reports_robustness_curves_and_plots_for_a_trained_run(tmp_path):
    run = tmp_path / "run"
    train(micro_config("train.steps=1", f"train.out_dir={run}", "train.tensorboard=false", "sample.steps=1"))
    out = tmp_path / "eval"
    code = main(
        [
            "eval",
            str(run),
            "--out",
            str(out),
            "eval.num_videos=4",
            "eval.metrics=psnr",
            "sample.steps=1",
            "eval.robustness=noise,mask",
        ]
    )
    assert code == 0
    curves = json.loads((out / "eval.json").read_text())["robustness"]["curves"]
    assert list(curves) == ["noise", "mask"]
    assert [row["strength"] for row in curves["mask"]] == list(PERTURBATIONS["mask"])
    assert {"psnr", "psnr_change", "trajectory_error", "trajectory_error_change"} <= set(curves["noise"][1])
    assert (out / "robustness_psnr.png").is_file() and (out / "robustness_trajectory_error.png").is_file()


def test_eval_rejects_an_unknown_perturbation_naming_the_key(tmp_path, capsys):
    run = tmp_path / "run"
    train(micro_config("train.steps=1", f"train.out_dir={run}", "train.tensorboard=false", "sample.steps=1"))
    code = main(["eval", str(run), "eval.num_videos=2", "eval.metrics=psnr", "sample.steps=1", "eval.robustness=blur"])
    assert code != 0
    assert "eval.robustness" in capsys.readouterr().err


def test_velocity_error_grows_with_the_noise_on_the_history_of_a_trained_model(tmp_path):
    run = tmp_path / "run"
    overrides = ("train.steps=30", "train.lr=3e-3", "train.batch_size=4", "mimo.weight=0", "mimo.mask_ratio=0")
    train(micro_config(*overrides, f"train.out_dir={run}", "train.tensorboard=false", "sample.steps=1"))
    model, config = load_trained_model(run)
    dataset = MovingShapes(16, frame_size=16, num_frames=4, seed=5)
    video = torch.stack([dataset[i]["video"] for i in range(16)])
    curves = velocity_error_curves(model, config, video, {"noise": (0.0, 0.5, 2.0)})
    errors = [row["velocity_error"] for row in curves["noise"]]
    assert errors[0] < errors[1] < errors[2], errors
