"""Trajectory error on the built-in moving-shapes videos: did the objects go where physics says?

Every object of a `MovingShapes` clip has its own colour, so it can be found again in generated
frames: its position is the centroid of the pixels within `tolerance` of that colour (RGB distance
in [−1, 1] units), taken at pixel centres (column + 0.5, row + 0.5) as the renderer draws them.
The error is the Euclidean distance in pixels to the ground-truth continuation.

Objects that are not found (fewer than `min_pixels` matching pixels: the model dropped, faded or
recoloured them — or another object hides them) count as a miss. A miss scores a fixed penalty,
the mean distance between two uniformly random points in the frame (≈ 0.52 × side): a missing
object is treated as a random guess, so dropping objects never beats tracking them badly. The
miss rate is reported beside the error, and so is the error over found objects only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from einops import rearrange

COLOR_TOLERANCE = 0.3  # half the smallest distance between two palette colours (≈ 0.63) in [−1, 1] RGB
MIN_PIXELS = 2  # fewer matching pixels than this: the object is not in the frame
# Mean distance between two uniform random points in the unit square, (2 + √2 + 5·ln(1 + √2)) / 15.
RANDOM_GUESS_DISTANCE = (2 + math.sqrt(2) + 5 * math.log(1 + math.sqrt(2))) / 15


@dataclass(frozen=True)
class TrajectoryError:
    mean_error: float  # pixels, over every (clip, frame, object), misses scored as `miss_penalty`
    found_error: float  # pixels, over found objects only (nan when none was found)
    miss_rate: float
    miss_penalty: float
    per_frame_error: torch.Tensor  # (T,) mean error at each scored frame, misses included
    num_objects: int  # (clip, frame, object) triples scored


def locate_objects(
    videos: torch.Tensor,
    colors: torch.Tensor,
    tolerance: float = COLOR_TOLERANCE,
    min_pixels: int = MIN_PIXELS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Centres (B, T, K, 2) as (x, y) pixels and a found mask (B, T, K) of coloured objects.

    videos (B, T, 3, H, W) in [−1, 1]; colors (B, K, 3) in [−1, 1].
    """
    height, width = videos.shape[-2:]
    distance = torch.linalg.vector_norm(
        rearrange(videos.float(), "b t c h w -> b t 1 h w c") - colors.float()[:, None, :, None, None, :], dim=-1
    )
    matches = (distance < tolerance).float()  # (B, T, K, H, W)
    count = matches.sum(dim=(-2, -1))
    columns = torch.arange(width, dtype=torch.float32, device=videos.device) + 0.5
    rows = torch.arange(height, dtype=torch.float32, device=videos.device) + 0.5
    x = (matches.sum(dim=-2) * columns).sum(dim=-1) / count.clamp(min=1)
    y = (matches.sum(dim=-1) * rows).sum(dim=-1) / count.clamp(min=1)
    return torch.stack([x, y], dim=-1), count >= min_pixels


def trajectory_error(
    videos: torch.Tensor,
    positions: torch.Tensor,
    colors: torch.Tensor,
    valid: torch.Tensor,
    tolerance: float = COLOR_TOLERANCE,
    min_pixels: int = MIN_PIXELS,
) -> TrajectoryError:
    """Error of the objects in generated frames against their true positions.

    videos (B, T, 3, H, W) are the frames to score (e.g. only the generated ones), positions
    (B, T, K, 2) the matching ground-truth centres (x, y), colors (B, K, 3) and valid (B, K) as
    the `MovingShapes` items give them.
    """
    if videos.shape[:2] != positions.shape[:2] or positions.shape[2] != colors.shape[1]:
        raise ValueError(
            f"videos {tuple(videos.shape)}, positions {tuple(positions.shape)} and colors {tuple(colors.shape)} "
            "must agree on clips (B), frames (T) and objects (K); slice positions to the scored frames."
        )
    found_positions, found = locate_objects(videos, colors.to(videos.device), tolerance, min_pixels)
    distance = torch.linalg.vector_norm(found_positions - positions.to(videos.device).float(), dim=-1)
    miss_penalty = RANDOM_GUESS_DISTANCE * math.sqrt(videos.shape[-2] * videos.shape[-1])
    scored = valid.to(videos.device)[:, None, :].expand_as(found)  # (B, T, K)
    error = torch.where(found, distance, torch.full_like(distance, miss_penalty))
    num_scored = int(scored.sum())
    if num_scored == 0:
        raise ValueError("no valid objects to score; `valid` is all False")
    found_and_scored = found & scored
    per_frame = (error * scored).sum(dim=(0, 2)) / scored.sum(dim=(0, 2)).clamp(min=1)
    return TrajectoryError(
        mean_error=float(error[scored].mean()),
        found_error=float(distance[found_and_scored].mean()) if found_and_scored.any() else math.nan,
        miss_rate=1.0 - float(found_and_scored.sum()) / num_scored,
        miss_penalty=miss_penalty,
        per_frame_error=per_frame.cpu(),
        num_objects=num_scored,
    )
