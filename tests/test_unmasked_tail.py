"""The unmasked fine-tuning tail (`mimo.unmasked_tail_steps`): its steps train as the CTF baseline does
(full history, no L_mask), it is logged, and a run stopped before or inside it resumes exactly."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from conftest import micro_config, randomize_zero_init
from mimo.config import ConfigError
from mimo.models import build_backbone
from mimo.objectives.objective import TrainingObjective
from mimo.train.checkpoint import find_checkpoint, load_tensors
from mimo.train.ema import share_of_last_updates
from mimo.train.logger import read_metrics
from mimo.train.trainer import Trainer, step_generator, train
from test_training import run_config

TAIL = ("train.steps=5", "mimo.unmasked_tail_steps=2")

pytestmark = pytest.mark.usefixtures("single_thread")


def test_tail_step_equals_the_baseline_step_with_the_same_weights(clips):
    video, _ = clips
    mimo = TrainingObjective(micro_config(), randomize_zero_init(build_backbone(micro_config())))
    baseline_config = micro_config("mimo.weight=0", "mimo.mask_ratio=0")
    baseline = TrainingObjective(baseline_config, build_backbone(baseline_config))
    baseline.backbone.load_state_dict(mimo.backbone.state_dict())
    tail = mimo(video, None, step_generator(0, 3), masked=False)
    reference = baseline(video, None, step_generator(0, 3))
    masked = mimo(video, None, step_generator(0, 3))
    assert "mask" not in tail and "mask" in masked
    assert torch.equal(tail["diffusion"], reference["diffusion"])
    assert torch.equal(tail["loss"], reference["loss"])
    assert not torch.equal(masked["diffusion"], reference["diffusion"])  # the masked step does see less history


def test_tail_switches_the_masking_off_for_the_last_steps_and_logs_it(tmp_path):
    train(run_config(tmp_path, *TAIL))
    records = read_metrics(tmp_path)
    assert [r["mask_ratio"] for r in records] == [0.5, 0.5, 0.5, 0.0, 0.0]
    assert ["mask" in r for r in records] == [True, True, True, False, False]


def _stopped_after(config, steps: int) -> None:
    """Train until `steps` steps are done, as a SIGTERM at that step boundary would stop it."""
    trainer = Trainer(config)
    step = trainer.train_step

    def stepping(batches):
        losses = step(batches)
        trainer.stop_requested = trainer.step + 1 >= steps
        return losses

    trainer.train_step = stepping
    assert trainer.train().interrupted


def _losses(run_dir: Path) -> list[dict[str, float]]:
    """The logged records without the timing (clips per second)."""
    return [{k: v for k, v in r.items() if k != "clips_per_second"} for r in read_metrics(run_dir)]


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    checkpoint = find_checkpoint(run_dir)
    return {**load_tensors(checkpoint / "model.safetensors"), **load_tensors(checkpoint / "ema.safetensors")}


@pytest.mark.parametrize("stop_at", [2, 4], ids=["before-the-tail", "inside-the-tail"])
def test_run_stopped_before_or_inside_the_tail_resumes_exactly(tmp_path, stop_at):
    straight, split = run_config(tmp_path / "straight", *TAIL), run_config(tmp_path / "split", *TAIL)
    train(straight)
    _stopped_after(split, stop_at)
    assert [r["step"] for r in read_metrics(tmp_path / "split")] == list(range(1, stop_at + 1))
    train(split)
    assert _losses(tmp_path / "split") == _losses(tmp_path / "straight")
    ours, theirs = _weights(tmp_path / "split"), _weights(tmp_path / "straight")
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


def test_negative_tail_is_rejected():
    with pytest.raises(ConfigError, match=r"mimo\.unmasked_tail_steps"):
        micro_config("mimo.unmasked_tail_steps=-1")


def test_decoder_has_the_papers_four_blocks_by_default():
    objective = TrainingObjective(micro_config(), build_backbone(micro_config()))
    assert len(objective.decoder.blocks) == 4


def test_a_tail_shorter_than_the_ema_horizon_warns_with_its_share_of_the_ema(tmp_path):
    """UCF presets: decay 0.9999, so a 1,000-step tail is 1 - 0.9999^1000 = 9.5 % of the EMA weights."""
    assert share_of_last_updates(1000, 0.9999) == pytest.approx(0.095, abs=5e-4)
    assert share_of_last_updates(10_000, 0.9999) == pytest.approx(0.632, abs=5e-4)
    with pytest.warns(UserWarning, match=r"tail will hold 9\.5% of the EMA weights"):
        Trainer(run_config(tmp_path, "mimo.unmasked_tail_steps=1000", "train.ema_decay=0.9999"))


@pytest.mark.parametrize("tail", [0, 10_000])
def test_no_tail_or_one_past_the_ema_horizon_does_not_warn(tmp_path, tail):
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        Trainer(run_config(tmp_path, f"mimo.unmasked_tail_steps={tail}", "train.ema_decay=0.9999", "train.steps=20000"))
