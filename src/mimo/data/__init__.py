"""Datasets: every one yields dicts with `video` (T, C, H, W) in model space and `label` (int64)."""

from __future__ import annotations

from torch import Tensor
from torch.utils.data import Dataset

from mimo.config import ConfigError, DataConfig
from mimo.data.synthetic import MovingShapes

EVAL_SEED_OFFSET = 1_000_000  # held-out synthetic clips come from a disjoint seed
VIDEO_KINDS = {
    "video_folder": "folder",
    "class_folders": "class_folders",
    "ucf101": "ucf101",
    "kinetics600": "kinetics600",
}


def _check_latents(dataset, config: DataConfig) -> None:
    """Latent clips must have the shape the model is configured for; say which key to change."""
    frames, channels, height, width = dataset[0]["video"].shape
    expected = {"data.num_frames": (frames, config.num_frames), "data.channels": (channels, config.channels)}
    expected["data.frame_size"] = (height, config.frame_size)
    for key, (stored, configured) in expected.items():
        if stored != configured:
            raise ConfigError(
                f"{key}: the latents in {config.path} have {stored}, the config says {configured}; set {key}={stored}"
            )
    if height != width:
        raise ConfigError(f"data.path: latents in {config.path} are {height}x{width}; only square frames are supported")


def build_dataset(
    config: DataConfig, split: str = "train", num_clips: int | None = None, start_at_zero: bool = False
) -> Dataset:
    """The dataset a config names; `split` is "train" (random clips) or "eval" (deterministic clips,
    from each video's first frame with `start_at_zero`, as FAR's UCF-101 protocol takes them).

    Real videos and whole-video latents: training clips start at random frames (torch's RNG, seeded
    per DataLoader worker), so unlike the synthetic data and stored clips their order is not
    bit-exact across a resume.
    """
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    if config.dataset == "synthetic":
        seed = config.seed + (EVAL_SEED_OFFSET if split == "eval" else 0)
        return MovingShapes(
            num_clips or config.num_clips, config.frame_size, config.num_frames, seed, config.max_objects
        )
    from mimo.data.video_folder import ClipSampling, video_dataset

    clips = ClipSampling(
        num_frames=config.num_frames,
        frame_stride=config.frame_stride,
        size=config.frame_size,
        random_clips=split == "train",
        seed=config.seed,
        start_at_zero=start_at_zero,
    )
    if config.dataset == "latents":
        from mimo.data.clip_windows import open_latents

        dataset = open_latents(config.path, clips)
        _check_latents(dataset, config)
        return dataset
    return video_dataset(
        VIDEO_KINDS[config.dataset],
        config.path,
        clips,
        split=config.split,
        fold=config.fold,
        annotations=config.annotations,
        max_bad_fraction=config.max_bad_fraction,
    )


def to_pixels(videos: Tensor, config: DataConfig, batch_size: int = 16) -> Tensor:
    """Videos in [-1, 1] pixels: latent clips are decoded with the autoencoder of their manifest."""
    if config.dataset != "latents":
        return videos
    from mimo.data.latents import decode_latents

    return decode_latents(videos, config.path, batch_size)
