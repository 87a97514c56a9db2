"""The real videos of an evaluation: decoded from the video files, whatever space the model trains in.

FAR, DFoT and StyleGAN-V compare samples with pixel videos. A latent run compared with decoded
latents would be compared with VAE reconstructions, which sit closer to its samples, and its FVD
would come out lower than theirs for the same model. So the real clips (and a prediction run's
context frames) are always read from the video files; a latent run encodes them with the
autoencoder of its latents to get its context, and FVD(real, reconstruction) is reported beside
the result as the paper's "VAE reconstruction (upper bound)" row.

Which videos: `eval.videos` (a YAML whose data section names them: the Kinetics-600 test split),
else the run's own videos (pixel runs; `data.videos` for latent runs: UCF-101, where FAR and
StyleGAN-V take the real set from the training videos). A prediction preset must evaluate on
other videos than it trains on (tests/test_protocols.py checks every preset).
"""

from __future__ import annotations

from dataclasses import replace

from mimo.config import Config, ConfigError, DataConfig, load_config
from mimo.data import GENERATED_DATASETS, VIDEO_DATASETS

# What makes two video sources the same videos (frame size and clip length do not).
SOURCE_KEYS = ("dataset", "path", "split", "fold", "annotations")


def training_videos(config: Config) -> DataConfig | None:
    """The videos a run trains on: its own data, or the YAML its latents were encoded from (None if unknown)."""
    if config.data.dataset == "latents":
        return load_config(config.data.videos).data if config.data.videos else None
    return config.data


def evaluation_videos(config: Config) -> DataConfig:
    """The videos of FVD's real set (and of the context frames): eval.videos, else the training videos."""
    if config.eval.videos:
        return load_config(config.eval.videos).data
    videos = training_videos(config)
    if videos is None:
        raise ConfigError(
            f"eval.videos: FVD's real set is decoded from video files, but this run trains on latents "
            f"(data.path={config.data.path}) and neither eval.videos nor data.videos names the videos; set "
            "eval.videos=YAML whose data section names them (e.g. configs/ucf101/pixels.yaml)"
        )
    return videos


def same_videos(first: DataConfig | None, second: DataConfig | None) -> bool:
    """Whether two data sections name the same videos (same dataset, folder, split and annotations)."""
    if first is None or second is None:
        return False
    return all(getattr(first, key) == getattr(second, key) for key in SOURCE_KEYS)


def with_real_videos(config: Config, num_frames: int, pixel_size: int) -> Config:
    """`config` with its data section replaced by the real videos, clips of `num_frames` at `pixel_size`."""
    videos = evaluation_videos(config)
    if videos.dataset not in (*VIDEO_DATASETS, *GENERATED_DATASETS):
        raise ConfigError(f"eval.videos: {config.eval.videos} names data.dataset={videos.dataset}, not video files")
    if videos.frame_size != pixel_size:
        raise ConfigError(
            f"eval.videos: the real videos are read at {videos.frame_size} px, the model's samples have "
            f"{pixel_size} px; set data.frame_size={pixel_size} in the YAML naming the real videos"
        )
    return replace(config, data=replace(videos, num_frames=num_frames, num_workers=config.data.num_workers))


def pixel_size(config: Config) -> int:
    """Side in pixels of the run's frames once decoded (latent side × the autoencoder's downsampling)."""
    if config.data.dataset != "latents":
        return config.data.frame_size
    from mimo.data.latents import latent_autoencoder

    return config.data.frame_size * latent_autoencoder(config.data)["downsample"]
