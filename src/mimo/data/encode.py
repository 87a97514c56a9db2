"""`mimo data encode`: a dataset stored once through an autoencoder, as whole videos or as fixed clips.

Folders of video files are stored as whole videos by default (`clip_windows.encode_videos`: every frame,
and a fresh clip window cut at every read, as FAR's loader); any other dataset one clip per item
(`latents.encode_dataset`). The autoencoder is given (`mimo.models.autoencoder.build_autoencoder`):
data code never builds a model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from mimo.config import DataConfig
from mimo.data import build_dataset
from mimo.data.clip_windows import LAYOUT as WHOLE_VIDEOS
from mimo.data.clip_windows import encode_videos
from mimo.data.latents import encode_dataset
from mimo.errors import ConfigError

LAYOUTS = (WHOLE_VIDEOS, "clips")


def encode_data(
    data: DataConfig,
    autoencoder: nn.Module,
    out_dir: str | Path,
    layout: str | None = None,
    *,
    crop: str = "random",
    shard_size: int = 1024,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Encode the dataset `data` names into `out_dir` with `autoencoder`; returns the manifest.

    `layout`: "videos" (the default for folders of video files) or "clips" (the default otherwise);
    `crop` ("random" or "centre") is the videos layout's, `batch_size` the clips layout's. Rerun the same call
    after an interruption to finish the missing shards.
    """
    if layout not in (None, *LAYOUTS):
        raise ValueError(f"layout must be one of {LAYOUTS} (or None: by the dataset), got {layout!r}")
    dataset = build_dataset(data, "eval")  # deterministic clips: the same latents on every run
    video_files = hasattr(dataset, "records")
    if layout == WHOLE_VIDEOS and not video_files:
        raise ConfigError(f"data.dataset={data.dataset} is not a folder of videos; encode it as clips (--layout clips)")
    common = {"num_workers": data.num_workers, "device": device}
    if layout == WHOLE_VIDEOS or (layout is None and video_files):
        records, clips, classes = dataset.records, dataset.clips, dataset.classes
        return encode_videos(records, clips, autoencoder, out_dir, shard_size, crop=crop, classes=classes, **common)
    return encode_dataset(dataset, autoencoder, out_dir, shard_size, batch_size, **common)


def describe_encoding(manifest: dict[str, Any]) -> str:
    """What an encoding's manifest holds, in one line: whole videos (and their frames) or clips, in shards."""
    shards = manifest["shards"]
    count = sum(shard["count"] for shard in shards)
    if manifest.get("layout") == WHOLE_VIDEOS:
        frames = sum(shard["frames"] for shard in shards)
        return f"{count} whole videos ({frames} frames) in {manifest['num_shards']} shards"
    return f"{count} clips in {manifest['num_shards']} shards"
