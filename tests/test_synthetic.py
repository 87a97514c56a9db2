"""The built-in moving-shapes videos: deterministic, in range, with ground truth that matches the pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mimo.data.synthetic import BACKGROUND, SHAPE_KINDS, SPEED_BANDS, MovingShapes, render, trajectories

CENTROID_TOLERANCE = 1.0  # pixels
KIND_SAMPLE = 25  # clips of each shape kind rendered on a larger canvas
ON_COLOUR_LINE = 0.05  # a pixel belongs to an object when it lies on the segment background → object colour


def test_clips_are_a_function_of_seed_and_index_alone():
    dataset = MovingShapes(10, frame_size=32, num_frames=6, seed=3)
    later = dataset[7]
    fresh = MovingShapes(10, frame_size=32, num_frames=6, seed=3)
    _ = fresh[2]  # reading other items first changes nothing
    for key, value in fresh[7].items():
        assert torch.equal(value, later[key]), key
    assert not torch.equal(dataset[6]["video"], later["video"])
    assert not torch.equal(MovingShapes(10, frame_size=32, num_frames=6, seed=4)[7]["video"], later["video"])


@pytest.mark.parametrize("size", [32, 64])
def test_frames_are_float_images_in_the_unit_range(size):
    dataset = MovingShapes(6, frame_size=size, num_frames=16)
    for index in range(len(dataset)):
        item = dataset[index]
        video = item["video"]
        assert video.shape == (16, 3, size, size) and video.dtype == torch.float32
        assert video.min() >= -1 and video.max() <= 1
        assert item["positions"].shape == (16, dataset.max_objects, 2)
        assert 1 <= int(item["valid"].sum()) <= dataset.max_objects


def test_labels_cover_every_class_and_encode_shape_and_speed_band():
    dataset = MovingShapes(200, frame_size=32, num_frames=2)
    labels = [int(dataset[i]["label"]) for i in range(len(dataset))]
    assert set(labels) == set(range(dataset.num_classes))
    assert dataset.num_classes == len(SHAPE_KINDS) * len(SPEED_BANDS)
    for index in range(20):
        params = dataset.params(index)
        assert labels[index] == params.kind * len(SPEED_BANDS) + params.speed_band


def _object_alpha(frame: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """Coverage (H, W) of pixels that are a blend of the background and `colour`, found by colour alone."""
    direction = colour - BACKGROUND
    offset = frame.transpose(1, 2, 0) - BACKGROUND
    alpha = offset @ direction / (direction @ direction)
    residual = np.linalg.norm(offset - alpha[..., None] * direction, axis=-1)
    return np.where(residual < ON_COLOUR_LINE, np.clip(alpha, 0, 1), 0.0)


@pytest.mark.parametrize("size", [32, 64])
def test_ground_truth_positions_are_the_centroids_of_the_rendered_objects(size):
    dataset = MovingShapes(24, frame_size=size, num_frames=8, seed=1)
    centres = np.arange(size) + 0.5  # render samples coverage at pixel centres
    checked = 0
    for index in range(len(dataset)):
        item, params = dataset[index], dataset.params(index)
        count = int(item["valid"].sum())
        for t in range(item["video"].shape[0]):
            positions = item["positions"][t, :count].numpy()
            for k in range(count):
                gaps = np.linalg.norm(positions - positions[k], axis=1) - 1.5 * (params.radius + params.radius[k])
                if (np.delete(gaps, k) < 2).any():  # an overlapping neighbour would hide part of the object
                    continue
                alpha = _object_alpha(item["video"][t].numpy(), item["colors"][k].numpy())
                centroid = np.array([(alpha.sum(0) * centres).sum(), (alpha.sum(1) * centres).sum()]) / alpha.sum()
                assert np.abs(centroid - positions[k]).max() < CENTROID_TOLERANCE, (index, t, k, centroid)
                checked += 1
    assert checked > 100


def test_objects_move_at_constant_velocity_between_bounces_and_stay_inside_the_walls():
    size, frames = 32, 40
    dataset = MovingShapes(40, frame_size=size, num_frames=frames)
    bounced = 0
    for index in range(len(dataset)):
        params = dataset.params(index)
        path = trajectories(params, frames, size)  # (T, K, 2)
        radius = params.radius[None, :, None]
        assert (path >= radius - 1e-4).all() and (path <= size - radius + 1e-4).all()
        step = np.diff(path, axis=0)
        speed = np.abs(step)
        # off the walls each coordinate moves by |velocity| per frame; a bounce only flips its sign
        torch.testing.assert_close(
            torch.from_numpy(speed.max(axis=0)), torch.from_numpy(np.abs(params.velocity)).float(), atol=1e-3, rtol=0
        )
        bounced += int((np.sign(step[1:]) != np.sign(step[:-1])).sum())
        # away from the walls (farther than one step), two history frames give the next position
        room = np.minimum(path - radius, size - radius - path) > np.abs(params.velocity)[None]
        steady = room[:-2] & room[1:-1] & room[2:]
        predicted = 2 * path[1:-1] - path[:-2]
        assert np.abs(predicted - path[2:])[steady].max() < 1e-3
    assert bounced > 10


@pytest.mark.parametrize("kind", SHAPE_KINDS)
def test_bouncing_objects_are_drawn_entirely_inside_the_frame(kind):
    """Render each clip on a larger canvas: nothing may appear beyond the frame's walls."""
    size, frames, pad = 32, 24, 8
    dataset = MovingShapes(400, frame_size=size, num_frames=frames)
    checked = 0
    for index in range(len(dataset)):
        params = dataset.params(index)
        if SHAPE_KINDS[params.kind] != kind:
            continue
        path = trajectories(params, frames, size)
        canvas = render(params, path + pad, size + 2 * pad)
        inside = np.zeros(canvas.shape[-2:], dtype=bool)
        inside[pad:-pad, pad:-pad] = True
        outside = np.abs(canvas - BACKGROUND)[..., ~inside]
        assert outside.max() < 1e-6, f"clip {index}: a {kind} reaches {outside.max():.2f} beyond the walls"
        checked += 1
        if checked == KIND_SAMPLE:
            break
    assert checked == KIND_SAMPLE


def test_the_configured_object_count_reaches_the_dataset():
    from mimo.config import load_config
    from mimo.data import build_dataset

    for most in (1, 5):
        dataset = build_dataset(load_config(None, [f"data.max_objects={most}", "data.num_clips=40"]).data)
        counts = {int(dataset[index]["valid"].sum()) for index in range(len(dataset))}
        assert max(counts) == most and min(counts) == 1
