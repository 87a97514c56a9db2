"""The main job (`mimo demo`) end to end at a toy size, and its teacher-forced measurement."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from conftest import MICRO, micro_config, micro_model
from mimo.apps.demo import run_demo
from mimo.data.media import GRID_PAD
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
    assert saved["motion"] == report.motion and saved["metrics"] == report.metrics
    assert report.metrics["copy-last"]["trajectory"] < report.metrics["demo"]["trajectory"]  # three steps: nothing
    # 4-frame clips: the reference model (8 frames) cannot continue them and is left out, not failed
    assert set(report.metrics) == {"demo", "copy-last"}
    out = capsys.readouterr().out
    assert "teacher-forced" in out and "left out" in out


def test_the_demo_shows_the_reference_model_beside_the_one_it_trains(tmp_path, capsys):
    """Clips like the reference's (16×16, 8 frames, 2 given): three rows in the table and in the GIF."""
    overrides = ["model.preset=micro", "train.batch_size=2", "sample.steps=2", "train.tensorboard=false"]
    report = run_demo(tmp_path / "demo", steps=1, overrides=overrides)
    assert list(report.metrics) == ["reference", "demo", "copy-last"]
    assert report.motion["reference"]["ar_px"] < report.motion["demo"]["ar_px"]  # 90 CPU minutes against one step
    gif = Image.open(report.files["samples_gif"])
    assert gif.height == 3 * 3 * (16 + 2 * GRID_PAD)  # real clips, reference, demo model; upscaled 3×
    assert gif.n_frames == 16  # twice the training length
    assert "reference model" in capsys.readouterr().out


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
