"""The main job (`mimo demo`) end to end at a toy size, and its teacher-forced measurement."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import MICRO, micro_config, micro_model
from mimo.apps.demo import run_demo
from mimo.evaluation.protocols import autoregressive, copy_last_frame, held_out_clips, teacher_forced

pytestmark = pytest.mark.usefixtures("single_thread")

ATOL = 1e-5


def test_the_demo_trains_samples_measures_and_writes_its_pictures(tmp_path, capsys):
    overrides = [*MICRO, "train.batch_size=2", "sample.steps=2", "train.log_every=1", "train.tensorboard=false"]
    report = run_demo(tmp_path / "demo", steps=3, overrides=overrides)
    assert report.steps == 3
    for name in ("samples_gif", "loss_plot"):
        assert (tmp_path / "demo" / report.files[name].split("/")[-1]).stat().st_size > 0
    saved = json.loads((tmp_path / "demo" / "demo_report.json").read_text())
    assert saved["teacher_forced_trajectory_error_px"] == report.teacher_forced_trajectory_error_px
    assert report.metrics_copy_last["trajectory"] < report.metrics["trajectory"]  # three steps learn nothing
    assert "teacher-forced" in capsys.readouterr().out


def test_teacher_forced_frames_follow_the_true_history_and_nothing_later():
    config = micro_config("sample.steps=2")
    model = micro_model(config)
    video = held_out_clips(config, 4, count=2)["video"]
    forced = teacher_forced(model, config, video)
    k = config.context_frames
    assert torch.equal(forced[:, :k], video[:, :k])
    # the first generated frame has the true context either way: it is the autoregressive one
    samples, _ = autoregressive(model, config, {"video": video}, 4, progress=False)
    assert torch.allclose(forced[:, k], samples[:, k], atol=ATOL)
    # a changed true frame 2 changes the frame generated after it, not the ones before
    changed = video.clone()
    changed[:, 2] = -changed[:, 2]
    again = teacher_forced(model, config, changed)
    assert torch.allclose(again[:, : k + 1], forced[:, : k + 1], atol=ATOL)
    assert not torch.allclose(again[:, 3], forced[:, 3], atol=1e-3)
    # ...while autoregressive sampling never looks at it
    samples_changed, _ = autoregressive(model, config, {"video": changed}, 4, progress=False)
    assert torch.allclose(samples_changed, samples, atol=ATOL)


def test_copy_last_repeats_the_last_context_frame():
    video = torch.randn(2, 5, 3, 4, 4)
    copied = copy_last_frame(video, 2)
    assert torch.equal(copied[:, :2], video[:, :2])
    assert all(torch.equal(copied[:, t], video[:, 1]) for t in range(2, 5))
