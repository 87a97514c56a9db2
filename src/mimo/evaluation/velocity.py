"""Held-out velocity error with the full history: the diffusion loss at fixed noise levels, paired.

The training loss is noisy (random noise levels, noise and masks) and differs between arms (masked
arms see less history). This measures what every arm must do at inference: predict the velocity
of the generated frames given the *whole* clean history, at fixed noise levels s, on fixed
held-out clips with fixed noise. The noise is drawn once from `seed`'s evaluation-noise stream
(mimo.evaluation.seeds), so two models are scored on the same (clip, noise) pairs and their per-clip
errors can be compared pair by pair.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mimo.diffusion.flow import interpolate, velocity_target
from mimo.evaluation.seeds import Stream, stream_seed
from mimo.models.dit import FrameCausalDiT

NOISE_LEVELS = (0.5, 0.75, 0.9)  # s = 1 is pure noise; the history matters most at high s


@torch.no_grad()
def velocity_error(
    model: FrameCausalDiT,
    video: Tensor,
    context_frames: int,
    noise_levels: Sequence[float] = NOISE_LEVELS,
    seed: int = 0,
    batch_size: int = 32,
) -> Tensor:
    """Per-clip MSE (len(noise_levels), N) of the velocity of frames k.. of `video` (N, T, C, H, W).

    Every generated frame is at noise level s and sees all clean frames before it (no mask).
    """
    if not 1 <= context_frames < video.shape[1]:
        raise ValueError(f"context_frames must be in 1..{video.shape[1] - 1} for clips of {video.shape[1]} frames")
    device = model.patch_embed.weight.device
    target = video[:, context_frames:]
    generator = torch.Generator().manual_seed(stream_seed(seed, Stream.EVALUATION_NOISE))
    noise = torch.randn(target.shape, generator=generator)
    errors = torch.empty(len(noise_levels), video.shape[0])
    for index, level in enumerate(noise_levels):
        start = 0
        for clips, frames, eps in zip(
            video.split(batch_size), target.split(batch_size), noise.split(batch_size), strict=True
        ):
            clips, frames, eps = clips.to(device), frames.to(device), eps.to(device)
            levels = torch.full(frames.shape[:2], float(level), device=device)
            labels = torch.full((clips.shape[0],), model.null_class, device=device) if model.num_classes else None
            out = model(
                interpolate(frames, eps, levels), levels, labels, clean=clips[:, :-1], noisy_start=context_frames
            )
            per_clip = (out.velocity - velocity_target(frames, eps)).pow(2).mean(dim=(1, 2, 3, 4))
            errors[index, start : start + len(clips)] = per_clip.cpu()
            start += len(clips)
    return errors
