"""Sampling from trained runs: videos to MP4/GIF/.npz, and inference-only exports."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from mimo.config import with_sampling_overrides
from mimo.data import build_dataset, stack_clips
from mimo.data.latents import latent_autoencoder
from mimo.data.media import save_gif, save_mp4, to_uint8, video_grid
from mimo.diffusion.cost import sampling_cost
from mimo.diffusion.sampler import sample_for_task
from mimo.errors import ArgumentError, ConfigError
from mimo.models.autoencoder import to_pixels
from mimo.options import check_options
from mimo.train.checkpoint import (
    find_trained_checkpoint,
    load_trained_model,
    naming_the_checkpoint,
    output_folder,
    read_state,
    save_json,
    save_tensors,
)
from mimo.train.distributed import default_device

SAMPLES_DIR = "samples_cli"  # under the run folder (or the exported model) sampled from
SAMPLE_KEYS = ("sample.", "data.", "train.context_frames")  # the settings sampling reads


def sample_from_checkpoint(
    checkpoint: str | Path,
    out_dir: str | Path | None = None,
    num_videos: int | None = None,
    num_frames: int | None = None,
    overrides: list[str] | None = None,
    seed: int = 0,
    use_ema: bool = True,
    device: str | None = None,
) -> dict[str, Path]:
    """Generate videos as the run's task asks (context and labels from held-out clips) and save them.

    Writes `samples.npz` (videos in [-1, 1], labels, and the real clips they were conditioned on),
    one MP4 per video, and `grid.gif` with the real clips above the samples, to `out_dir` (default:
    RUN/samples_cli, RUN being the run folder or exported model sampled from). `num_videos` and
    `num_frames` are sample.num_videos and sample.num_frames (None: the run's). Prints the cost first.
    """
    device = default_device(device)
    model, config = load_trained_model(checkpoint, use_ema=use_ema, device=device)
    out = output_folder(checkpoint, out_dir, SAMPLES_DIR)
    given = {"sample.num_videos": num_videos, "sample.num_frames": num_frames}
    settings = [f"{key}={value}" for key, value in given.items() if value is not None]
    config = check_options(with_sampling_overrides(config, [*(overrides or []), *settings], SAMPLE_KEYS))
    count = config.sample.num_videos
    eval_set = build_dataset(config.data, "eval", num_clips=count)
    if len(eval_set) < count:
        raise ConfigError(
            f"sample.num_videos: the evaluation split has {len(eval_set)} clips, fewer than the {count} videos "
            f"requested (one per clip); ask for at most {len(eval_set)} (--num-videos)"
        )
    print(sampling_cost(model, config, count).describe(), file=sys.stderr)
    clips = stack_clips(eval_set, count)
    video, labels = clips["video"].to(device), clips["label"].to(device)
    generator = torch.Generator().manual_seed(seed)
    with naming_the_checkpoint(checkpoint):
        samples = sample_for_task(model, config, video, labels, generator, progress=True).cpu()
    out.mkdir(parents=True, exist_ok=True)
    paths = {"npz": out / "samples.npz"}
    np.savez_compressed(paths["npz"], samples=samples.numpy(), labels=labels.cpu().numpy(), real=video.cpu().numpy())
    real = video.cpu()
    autoencoder = latent_autoencoder(config.data)
    samples, real = to_pixels(samples, autoencoder), to_pixels(real, autoencoder)  # latents: decoded
    if samples.shape[2] in (1, 3):
        paths["gif"] = save_gif(video_grid([real, samples], upscale=2), out / "grid.gif")
        for index, clip in enumerate(to_uint8(samples)):
            paths[f"mp4_{index}"] = save_mp4(clip, out / f"sample_{index:03d}.mp4")
    return paths


def export_inference_checkpoint(checkpoint: str | Path, out_dir: str | Path, half: bool = False) -> Path:
    """An inference checkpoint: the EMA backbone and the config, without the MiMo decoder or optimizer;
    `half` stores the weights in float16 (half the size; loading casts them back to the model's float32).

    `out_dir` must be new (or empty): an export never overwrites a run, a checkpoint or another export.
    """
    source = find_trained_checkpoint(checkpoint)
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ArgumentError(f"{out} already exists and is not an empty folder; export to a new folder")
    model, _ = load_trained_model(source, use_ema=True)
    state = read_state(source)
    out.mkdir(parents=True, exist_ok=True)
    weights = {name: value.half() if half else value for name, value in model.state_dict().items()}
    save_tensors(out / "ema.safetensors", weights)
    exported = {"config": state["config"], "step": state["step"], "exported_from": str(source)}
    save_json(out / "state.json", exported)
    return out
