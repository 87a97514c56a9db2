"""Robustness to a perturbed history: each perturbation hurts a model with a known response (copy the last
context frame) more as it grows, the draws are shared across models, and `mimo eval` reports the curves."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from conftest import micro_config
from mimo.cli import main
from mimo.data.synthetic import MovingShapes
from mimo.evaluation.robustness import (
    PERTURBATIONS,
    continuation_scores,
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
        expected = torch.zeros_like(context[:, 1:]) if kind == "drop" else context[:, :-1]
        assert torch.equal(perturbed[:, 1:], expected)


def test_mask_blanks_the_given_share_of_patches_in_every_frame(shapes):
    context = shapes["video"][:, :CONTEXT] + 3.0  # no pixel is 0 before blanking
    perturbed = perturb_history(context, "mask", 0.25, PATCH, torch.Generator().manual_seed(0))
    blank_patches = (perturbed == 0).all(dim=2).unfold(2, PATCH, PATCH).unfold(3, PATCH, PATCH).all(-1).all(-1)
    assert (blank_patches.sum(dim=(-2, -1)) == 4).all()  # 25 % of the 16 patches of each frame
    assert ((perturbed == 0) | (perturbed == context)).all()


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
    model, _ = load_trained_model(run)
    dataset = MovingShapes(16, frame_size=16, num_frames=4, seed=5)
    video = torch.stack([dataset[i]["video"] for i in range(16)])
    curves = velocity_error_curves(model, video, 2, {"noise": (0.0, 0.5, 2.0)})
    errors = [row["velocity_error"] for row in curves["noise"]]
    assert errors[0] < errors[1] < errors[2], errors
