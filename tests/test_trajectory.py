from __future__ import annotations

import pytest
import torch

from mimo.data.synthetic import MovingShapes
from mimo.metrics.trajectory import RANDOM_GUESS_DISTANCE, locate_objects, trajectory_error


def _batch(num_clips: int, **settings) -> dict[str, torch.Tensor]:
    dataset = MovingShapes(num_clips, **settings)
    items = [dataset[i] for i in range(num_clips)]
    return {key: torch.stack([item[key] for item in items]) for key in items[0]}


def test_objects_are_found_at_their_true_positions_in_real_clips():
    batch = _batch(40, max_objects=1)
    found_positions, found = locate_objects(batch["video"], batch["colors"])
    assert found[:, :, 0].all()
    # Anti-aliased edges bias the thresholded centroid by a fraction of a pixel, no more.
    assert (found_positions - batch["positions"]).norm(dim=-1)[:, :, 0].max() < 0.75


def test_displaced_ground_truth_gives_the_displacement():
    batch = _batch(40, max_objects=1)
    displaced = batch["positions"] + torch.tensor([3.0, 4.0])
    result = trajectory_error(batch["video"], displaced, batch["colors"], batch["valid"])
    assert result.miss_rate == 0
    assert result.mean_error == pytest.approx(5.0, abs=0.3)
    assert result.per_frame_error.shape == (16,)


def test_missing_objects_score_the_random_guess_penalty():
    batch = _batch(8)
    blank = torch.full_like(batch["video"], -0.8)
    result = trajectory_error(blank, batch["positions"], batch["colors"], batch["valid"])
    assert result.miss_rate == 1
    assert result.mean_error == pytest.approx(RANDOM_GUESS_DISTANCE * 32)
    assert result.num_objects == 16 * int(batch["valid"].sum())


def test_random_guess_constant_is_the_mean_distance_of_random_points_in_a_square():
    points = torch.rand(2, 1_000_000, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert (points[0] - points[1]).norm(dim=-1).mean().item() == pytest.approx(RANDOM_GUESS_DISTANCE, abs=2e-3)


def test_invalid_object_slots_are_ignored():
    batch = _batch(20, max_objects=3)
    reference = trajectory_error(batch["video"], batch["positions"], batch["colors"], batch["valid"])
    scrambled = batch["positions"].clone()
    scrambled[~batch["valid"][:, None, :].expand(-1, 16, -1)] = 1000.0
    again = trajectory_error(batch["video"], scrambled, batch["colors"], batch["valid"])
    assert again.mean_error == reference.mean_error
    assert reference.found_error < 1.0  # occlusions between objects cost a little
