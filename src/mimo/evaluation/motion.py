"""Did the objects keep moving? Rollouts of the built-in videos scored against the true motion and copy-last.

A model's held-out clips are continued from their context frames autoregressively (each frame from the
model's own frames) and teacher-forced (each frame from the true frames), at the training length and at
multiples of it (the sliding window past it), and scored by trajectory error and the share of objects lost
(mimo.metrics.trajectory); repeating the last context frame is the bar every model must clear. Used by the
demo, the reference model's card and its quality test, and the fading study.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mimo.config import Config
from mimo.evaluation.metrics import score_trajectory
from mimo.evaluation.protocols import autoregressive, copy_last_frame, teacher_forced
from mimo.models.dit import FrameCausalDiT


def _scores(videos: torch.Tensor, clips: dict[str, torch.Tensor], k: int, prefix: str) -> dict[str, float]:
    error = score_trajectory(videos, clips, k)
    return {f"{prefix}_px": round(error.mean_error, 3), f"{prefix}_lost": round(error.miss_rate, 3)}


def length_suffix(multiple: int) -> str:
    """Metric names carry the length they were measured at: '' at the training length, '2' at twice it, ..."""
    return "" if multiple == 1 else str(multiple)


def motion_scores(
    model: FrameCausalDiT,
    config: Config,
    clips: dict[str, torch.Tensor],
    multiples: Sequence[int] = (1, 2),
    teacher_forced_at: Sequence[int] = (1, 2),
    samples: torch.Tensor | None = None,
) -> dict[str, float]:
    """Trajectory error (`ar_px`, `tf_px`) and objects lost (`ar_lost`, `tf_lost`) of autoregressive rollouts at
    each multiple of the training length, and of teacher-forced ones at `teacher_forced_at`, with their gap
    (`gap_px`); names end in the multiple past 1 (`ar2_px`). `clips` are built-in clips at least that long
    (held_out_clips). One autoregressive rollout to the longest length is scored at every length: frame t
    depends only on the frames and noise before it. `samples`: that rollout, when the caller has it already."""
    k, length = config.context_frames, config.data.num_frames
    if samples is None:
        samples, _ = autoregressive(model, config, clips, max(multiples) * length, progress=False)
    row: dict[str, float] = {}
    for multiple in multiples:
        frames, suffix = multiple * length, length_suffix(multiple)
        row |= _scores(samples[:, :frames], clips, k, f"ar{suffix}")
        if multiple in teacher_forced_at:
            row |= _scores(teacher_forced(model, config, clips["video"][:, :frames]), clips, k, f"tf{suffix}")
            row[f"gap{suffix}_px"] = round(row[f"ar{suffix}_px"] - row[f"tf{suffix}_px"], 3)
    return row


def _predictor_scores(
    videos: torch.Tensor, config: Config, clips: dict[str, torch.Tensor], multiples: Sequence[int]
) -> dict[str, float]:
    """The autoregressive scores (`ar_px`, `ar_lost`, `ar2_px`, ...) of `videos` that no model sampled."""
    k, length = config.context_frames, config.data.num_frames
    row: dict[str, float] = {}
    for multiple in multiples:
        row |= _scores(videos[:, : multiple * length], clips, k, f"ar{length_suffix(multiple)}")
    return row


def real_frame_scores(
    config: Config, clips: dict[str, torch.Tensor], multiples: Sequence[int] = (1, 2)
) -> dict[str, float]:
    """The same scores of the real frames themselves: the ceiling. Objects the metric cannot find there (too
    small at this frame size, or hidden by another) count as lost for every predictor."""
    return _predictor_scores(clips["video"], config, clips, multiples)


def copy_last_scores(
    config: Config, clips: dict[str, torch.Tensor], multiples: Sequence[int] = (1, 2)
) -> dict[str, float]:
    """The autoregressive scores of repeating the last context frame: a rollout that never looks at the true
    frames either."""
    return _predictor_scores(copy_last_frame(clips["video"], config.context_frames), config, clips, multiples)
