"""Built-in moving-shapes videos: the dataset on which history understanding is measurable.

Every clip holds 1 to `max_objects` shapes of one kind that move at constant speed and bounce
off the walls; later objects are drawn over earlier ones (occlusion). A single frame shows where
objects are but not where they go: the next frame is predictable only from the velocity seen in
at least two history frames. The class label combines the shape kind with a speed band, so a
linear probe on a single frame's features can find the shape but needs motion to find the band.

Clips are generated procedurally from (seed, index), so there is nothing to download and any
clip can be regenerated exactly. Pixels are in [-1, 1]; edges are anti-aliased so that
sub-pixel motion is visible.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

SHAPE_KINDS = ("square", "disk", "triangle", "cross")
SPEED_BANDS = ((0.6, 1.2), (1.8, 2.6))  # pixels per frame at 32 px; scaled with the frame size
REFERENCE_SIZE = 32  # the frame size the speeds and object sizes above are tuned for
BACKGROUND = -0.8  # a dark grey rather than -1, so black objects would still be visible
PALETTE = np.array(
    [
        [1.0, 0.2, 0.2],
        [0.2, 1.0, 0.3],
        [0.3, 0.5, 1.0],
        [1.0, 0.9, 0.2],
        [1.0, 0.3, 1.0],
        [0.2, 1.0, 1.0],
        [1.0, 0.6, 0.1],
        [0.9, 0.9, 0.9],
    ],
    dtype=np.float32,
)  # distinct colours in [0, 1], so each object of a clip can be found again by colour


@dataclass(frozen=True)
class ClipParams:
    """Everything that determines one clip; positions are object centres in pixels (x, y)."""

    kind: int
    speed_band: int
    start: np.ndarray  # (K, 2)
    velocity: np.ndarray  # (K, 2)
    radius: np.ndarray  # (K,)
    color: np.ndarray  # (K, 3) in [0, 1]


def draw_params(rng: np.random.Generator, frame_size: int, max_objects: int) -> ClipParams:
    """Draw a clip's shape kind, speed band and per-object start, velocity, size and colour."""
    scale = frame_size / REFERENCE_SIZE
    kind = int(rng.integers(len(SHAPE_KINDS)))
    band = int(rng.integers(len(SPEED_BANDS)))
    count = int(rng.integers(1, max_objects + 1))
    radius = rng.uniform(3.0, 5.5, size=count) * scale
    start = rng.uniform(radius[:, None], frame_size - radius[:, None], size=(count, 2))
    low, high = SPEED_BANDS[band]
    speed = rng.uniform(low, high, size=count) * scale
    angle = rng.uniform(0, 2 * np.pi, size=count)
    velocity = np.stack([np.cos(angle), np.sin(angle)], axis=1) * speed[:, None]
    color = PALETTE[rng.choice(len(PALETTE), size=count, replace=False)]
    return ClipParams(kind, band, start, velocity, radius, color)


def trajectories(params: ClipParams, num_frames: int, frame_size: int) -> np.ndarray:
    """Centres (T, K, 2) of objects moving at constant velocity and bouncing off the walls.

    The bounce is a reflection of the unbounded straight-line path into [r, size - r], so
    positions are exact at any frame rather than accumulated step by step.
    """
    time = np.arange(num_frames, dtype=np.float64)[:, None, None]
    low = params.radius[None, :, None]
    span = frame_size - 2 * params.radius[None, :, None]
    free = params.start[None] + params.velocity[None] * time - low
    folded = np.mod(free, 2 * span)
    return (low + np.where(folded > span, 2 * span - folded, folded)).astype(np.float32)


def shape_coverage(kind: int, dx: np.ndarray, dy: np.ndarray, radius: float) -> np.ndarray:
    """Fraction of each pixel covered by a shape centred at the origin (soft, anti-aliased edge)."""
    if SHAPE_KINDS[kind] == "square":
        distance = np.maximum(np.abs(dx), np.abs(dy)) - radius * 0.85
    elif SHAPE_KINDS[kind] == "disk":
        distance = np.hypot(dx, dy) - radius
    elif SHAPE_KINDS[kind] == "triangle":  # apex pointing down (image rows grow downwards)
        edge = np.maximum(np.abs(dx) * 0.866 + dy * 0.5, -dy)
        # apex r + 0.5 px below the centre with its anti-aliased edge, as far as a disk reaches: inside the walls
        distance = edge - (radius * 0.5 - 0.25)
    else:  # cross: union of two bars
        bar = radius * 0.35
        horizontal = np.maximum(np.abs(dx) - radius, np.abs(dy) - bar)
        vertical = np.maximum(np.abs(dy) - radius, np.abs(dx) - bar)
        distance = np.minimum(horizontal, vertical)
    return np.clip(0.5 - distance, 0.0, 1.0)


def render(params: ClipParams, centres: np.ndarray, frame_size: int) -> np.ndarray:
    """Frames (T, 3, H, W) in [-1, 1]; later objects occlude earlier ones."""
    grid = np.arange(frame_size, dtype=np.float32) + 0.5
    frames = np.full((centres.shape[0], frame_size, frame_size, 3), BACKGROUND, dtype=np.float32)
    for k in range(centres.shape[1]):
        dx = grid[None, None, :] - centres[:, k, 0, None, None]
        dy = grid[None, :, None] - centres[:, k, 1, None, None]
        alpha = shape_coverage(params.kind, dx, dy, float(params.radius[k]))[..., None]
        colour = params.color[k] * 2 - 1
        frames = frames * (1 - alpha) + colour * alpha
    return frames.transpose(0, 3, 1, 2)


MIN_FRAME_SIZE = 16  # pixels: smaller frames leave no room for the shapes to move


class MovingShapes(Dataset):
    """Deterministic procedural clips: item i of a given seed is always the same video.

    Items are dicts: `video` (T, 3, H, W) in [-1, 1], `label` (shape kind × speed band),
    `positions` (T, max_objects, 2) ground-truth centres (x = column, y = row, pixels),
    `valid` (max_objects,) which object slots exist, `colors` (max_objects, 3) in [-1, 1].
    """

    num_classes = len(SHAPE_KINDS) * len(SPEED_BANDS)
    channels = 3

    def __init__(self, num_clips: int, frame_size: int = 32, num_frames: int = 16, seed: int = 0, max_objects: int = 3):
        if num_clips < 1:
            raise ValueError(f"MovingShapes needs num_clips >= 1, got {num_clips}.")
        if frame_size < MIN_FRAME_SIZE:
            raise ValueError(f"MovingShapes frame_size must be at least {MIN_FRAME_SIZE} pixels, got {frame_size}.")
        if num_frames < 2:
            raise ValueError(f"MovingShapes needs at least 2 frames to show motion, got {num_frames}.")
        if not 1 <= max_objects <= len(PALETTE):
            raise ValueError(f"max_objects must be in 1..{len(PALETTE)}, got {max_objects}.")
        self.num_clips = num_clips
        self.frame_size = frame_size
        self.num_frames = num_frames
        self.seed = seed
        self.max_objects = max_objects

    def __len__(self) -> int:
        return self.num_clips

    def describe(self) -> dict[str, Any]:
        """What produced these clips, for manifests: encoded latents of other settings are never resumed."""
        settings = ("num_clips", "frame_size", "num_frames", "seed", "max_objects")
        return {"type": type(self).__name__, **{name: getattr(self, name) for name in settings}}

    def params(self, index: int) -> ClipParams:
        rng = np.random.default_rng([self.seed, index])
        return draw_params(rng, self.frame_size, self.max_objects)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < self.num_clips:
            raise IndexError(f"clip index {index} out of range for {self.num_clips} clips")
        params = self.params(index)
        centres = trajectories(params, self.num_frames, self.frame_size)
        count = centres.shape[1]
        positions = np.zeros((self.num_frames, self.max_objects, 2), dtype=np.float32)
        positions[:, :count] = centres
        colors = np.zeros((self.max_objects, 3), dtype=np.float32)
        colors[:count] = params.color * 2 - 1
        return {
            "video": torch.from_numpy(render(params, centres, self.frame_size)),
            "label": torch.tensor(params.kind * len(SPEED_BANDS) + params.speed_band),
            "positions": torch.from_numpy(positions),
            "valid": torch.arange(self.max_objects) < count,
            "colors": torch.from_numpy(colors),
        }
