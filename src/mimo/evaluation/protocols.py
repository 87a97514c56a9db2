"""Evaluation protocols on the built-in videos: held-out clips, and continuing them autoregressively or
teacher-forced, against the trivial predictor that repeats the last context frame."""

from __future__ import annotations

import time

import torch

from mimo.config import Config
from mimo.data.synthetic import MovingShapes
from mimo.diffusion.sampler import sample_video

EVAL_CLIPS = 32
EVAL_SEED = 12345  # held-out clips: a seed no training clip uses


def autoregressive(
    model, config: Config, clips: dict[str, torch.Tensor], num_frames: int, progress: bool = True
) -> tuple[torch.Tensor, float]:
    """Continue the clips' context frames to `num_frames`; returns samples and seconds per generated frame."""
    context = clips["video"][:, : config.context_frames]
    started = time.perf_counter()
    samples = sample_video(
        model,
        num_frames,
        context=context,
        steps=config.sample.steps,
        solver=config.sample.solver,
        window=config.data.num_frames - 1,
        generator=torch.Generator().manual_seed(0),
        progress=progress,
    )
    generated = (num_frames - config.context_frames) * context.shape[0]
    return samples, (time.perf_counter() - started) / generated


def teacher_forced(model, config: Config, video: torch.Tensor) -> torch.Tensor:
    """Frames k.. of `video` each sampled from the *true* frames before it: what the model learned of the
    motion, without the compounding of its own errors that autoregressive sampling adds."""
    k = config.context_frames
    generated = [
        sample_video(
            model,
            t + 1,
            context=video[:, :t],
            steps=config.sample.steps,
            solver=config.sample.solver,
            window=config.data.num_frames - 1,
            generator=torch.Generator().manual_seed(0),
        )[:, -1:]
        for t in range(k, video.shape[1])
    ]
    return torch.cat([video[:, :k], *generated], dim=1)


def held_out_clips(config: Config, num_frames: int, count: int = EVAL_CLIPS) -> dict[str, torch.Tensor]:
    """Built-in clips of a seed no training clip uses, stacked: video, positions, colors, valid, label."""
    dataset = MovingShapes(count, config.data.frame_size, num_frames, EVAL_SEED, config.data.max_objects)
    items = [dataset[i] for i in range(count)]
    return {key: torch.stack([item[key] for item in items]) for key in items[0]}


def copy_last_frame(video: torch.Tensor, context_frames: int) -> torch.Tensor:
    """The trivial predictor: the context frames, then the last of them repeated to the clip's length."""
    copied = video[:, context_frames - 1 : context_frames].expand_as(video).clone()
    copied[:, :context_frames] = video[:, :context_frames]
    return copied
