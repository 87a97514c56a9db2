"""`mimo sample RUN --context clip.mp4 [--label N]`: continue a person's own video with a trained run.

The clip's first frames are read as training read clips (the run's frame stride, shorter side
resized and centre-cropped to the run's pixel size), encoded when the run trains on latents, and
given to the sampler as context; any run can continue a video, whatever task it was trained for,
since every model is frame-causal. Past the training length the sampler slides its window.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import av
import numpy as np
import torch

from mimo.apps.sample import SAMPLE_KEYS
from mimo.config import with_sampling_overrides
from mimo.data.latents import latent_autoencoder
from mimo.data.media import save_gif, save_mp4, to_uint8, video_grid
from mimo.data.real_set import pixel_size
from mimo.data.video_folder import BadVideoError, ClipSampling, read_clip, to_unit_range
from mimo.diffusion.sampler import sample_for_task
from mimo.errors import InputError
from mimo.models.autoencoder import to_model_space, to_pixels
from mimo.options import check_options
from mimo.train.checkpoint import load_trained_model, naming_the_checkpoint, output_folder
from mimo.train.distributed import default_device


def continue_video(
    checkpoint: str | Path,
    video: str | Path,
    out_dir: str | Path | None = None,
    label: int | None = None,
    context_frames: int | None = None,
    num_frames: int | None = None,
    overrides: list[str] | None = None,
    seed: int = 0,
    use_ema: bool = True,
    device: str | None = None,
) -> dict[str, Path]:
    """Continue the first `context_frames` frames (default: the run's train.context_frames) of `video` to
    `num_frames` (default: the run's sample length); writes continued.mp4, continued.npz and a GIF
    with the given frames above the continuation, to `out_dir` (default: RUN/continued)."""
    device = default_device(device)
    model, config = load_trained_model(checkpoint, use_ema=use_ema, device=device)
    config = check_options(with_sampling_overrides(config, overrides or [], SAMPLE_KEYS))
    out = output_folder(checkpoint, out_dir, "continued")
    k = config.train.context_frames if context_frames is None else context_frames
    length = num_frames if num_frames is not None else config.sample.num_frames or config.data.num_frames
    if not 1 <= k < length:
        raise InputError(f"--context-frames must be at least 1 and below the {length} frames generated, got {k}")
    if model.num_classes and label is None:
        raise InputError(f"this run is class-conditional ({model.num_classes} classes): pass --label N")
    if label is not None and not 0 <= label < (model.num_classes or 0):
        allowed = f"0..{model.num_classes - 1}" if model.num_classes else "none: the run is unconditional"
        raise InputError(f"--label {label} is not a class of this run ({allowed})")
    clips = ClipSampling(
        num_frames=k, frame_stride=config.data.frame_stride, size=pixel_size(config), start_at_zero=True
    )
    try:
        frames = read_clip(video, clips)
    except BadVideoError as error:
        raise InputError(
            f"{video}: {error}; give a video of at least {clips.span} frames (context {k} at stride "
            f"{clips.frame_stride}), or fewer --context-frames"
        ) from error
    except av.error.FFmpegError as error:
        raise InputError(
            f"{video} is not a video that can be decoded ({error}); give a video file (MP4, AVI...)"
        ) from error
    given = to_unit_range(frames)[None]  # (1, k, 3, H, W) pixels
    # the context is given as a prediction task's clip: its first k frames are kept, the rest generated
    as_prediction = replace(config, train=replace(config.train, task="prediction", context_frames=k))
    labels = torch.tensor([label if label is not None else 0], device=device)
    generator = torch.Generator().manual_seed(seed)
    autoencoder = latent_autoencoder(config.data)
    context = to_model_space(given, autoencoder).to(device)
    with naming_the_checkpoint(checkpoint):
        samples = sample_for_task(model, as_prediction, context, labels, generator, num_frames=length, progress=True)
    continued = to_pixels(samples.cpu(), autoencoder)
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out / "continued.npz", samples=continued.numpy(), context=given.numpy())
    return {
        "mp4": save_mp4(to_uint8(continued[0]), out / "continued.mp4"),
        "gif": save_gif(video_grid([given, continued], upscale=2), out / "continued.gif"),
        "npz": out / "continued.npz",
    }
