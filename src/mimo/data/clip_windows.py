"""Whole videos' latents on disk, and a fresh clip window drawn from them at every read.

FAR's loader draws a new start frame at every read of a video, so a 400K-step UCF-101 run sees
a different clip of each video nearly every epoch. Storing one encoded clip per video would
freeze that choice, so here the encoder runs once over every frame of every video (resized and
centre-cropped as the clips are), and `VideoLatentDataset` cuts a window of `num_frames` at
`frame_stride` out of the stored frames each time an item is read: random starts for training,
seeded (or frame 0) for evaluation, exactly as `VideoFolderDataset` does with the files.

Layout of an `out_dir` (layout "videos" in the manifest; the clip layout of `latents.py` stays
readable): `shard_00000.safetensors` holds `latents` (F, c, h, w) — the frames of its videos one
after another — `offsets` (n + 1,) int64 (video i is rows offsets[i]:offsets[i+1]) and `labels`
(n,). Writing is resumable shard by shard, like `encode_dataset`.

Disk cost: every stored frame costs `latent_bytes_per_frame` (c·h·w·2 bytes in float16); see
`latent_disk_bytes` and the table in README ("Real videos and latents").
"""

from __future__ import annotations

import bisect
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch
from av.video.reformatter import VideoReformatter
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from mimo.data.latents import (
    FORMAT_VERSION,
    _normalised,
    _resume_or_start,
    _write_atomically,
    _write_manifest,
    read_manifest,
    shard_name,
)
from mimo.data.video_folder import (
    BadVideoError,
    BadVideoWarning,
    ClipSampling,
    VideoRecord,
    _to_rgb,
    clip_start,
    to_unit_range,
)
from mimo.models.autoencoder import Autoencoder

LAYOUT = "videos"
FLOAT16_BYTES = 2


def latent_bytes_per_frame(latent_shape: Sequence[int], dtype_bytes: int = FLOAT16_BYTES) -> int:
    """Bytes one stored frame takes: c·h·w values of `dtype_bytes` each (float16 by default)."""
    channels, height, width = latent_shape
    return channels * height * width * dtype_bytes


def latent_disk_bytes(total_frames: int, latent_shape: Sequence[int], dtype_bytes: int = FLOAT16_BYTES) -> int:
    """Bytes of the whole-video latents of a dataset holding `total_frames` frames."""
    return total_frames * latent_bytes_per_frame(latent_shape, dtype_bytes)


def read_video(path: str | Path, size: int | None) -> np.ndarray:
    """Every frame of `path` as uint8 (F, size, size, 3), resized and centre-cropped as clips are."""
    path = Path(path)
    if path.stat().st_size == 0:
        raise BadVideoError("empty", "the file has zero bytes")
    reformatter = VideoReformatter()
    frames = []
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise BadVideoError("undecodable", "the file has no video stream")
        for frame in container.decode(container.streams.video[0]):
            frames.append(_to_rgb(frame, size, reformatter))
    if not frames:
        raise BadVideoError("undecodable", "no frame could be decoded")
    return np.stack(frames)


class _WholeVideos(Dataset):
    """Decoded whole videos for the encoder's DataLoader; a bad file gives None (skipped, counted)."""

    def __init__(self, records: Sequence[VideoRecord], size: int | None, min_frames: int) -> None:
        self.records, self.size, self.min_frames = list(records), size, min_frames

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        record = self.records[index]
        try:
            frames = read_video(record.path, self.size)
        except Exception as error:  # one bad file must not stop hours of encoding
            warnings.warn(f"Skipping video {record.path} ({type(error).__name__}: {error}).", BadVideoWarning, 2)
            return None
        if len(frames) < self.min_frames:
            warnings.warn(
                f"Skipping video {record.path}: {len(frames)} frames, a clip needs {self.min_frames}.",
                BadVideoWarning,
                2,
            )
            return None
        return {"video": to_unit_range(frames), "label": record.label}


def encode_videos(
    records: Sequence[VideoRecord],
    clips: ClipSampling,
    autoencoder: Autoencoder,
    out_dir: str | Path,
    videos_per_shard: int = 256,
    *,
    classes: Sequence[str] = (),
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    storage_dtype: torch.dtype = torch.float16,
    progress: bool = True,
) -> dict[str, Any]:
    """Encode every frame of every video (resized and cropped to `clips.size`) into `out_dir`; returns the manifest.

    Videos shorter than one clip (`clips.span` frames) or unreadable are skipped with a warning and
    listed in the manifest. Rerun the same call after an interruption to finish the missing shards.
    """
    if videos_per_shard < 1:
        raise ValueError(f"videos_per_shard must be >= 1, got {videos_per_shard}.")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = [min(videos_per_shard, len(records) - start) for start in range(0, len(records), videos_per_shard)]
    settings = _normalised(
        {
            "format_version": FORMAT_VERSION,
            "layout": LAYOUT,
            "autoencoder": autoencoder.describe(),
            "dataset": {"num_videos": len(records), "classes": list(classes), "size": clips.size},
            "min_frames": clips.span,
            "num_items": len(records),
            "shard_size": videos_per_shard,
            "dtype": str(storage_dtype).removeprefix("torch."),
        }
    )
    manifest = _resume_or_start(out_dir, settings, len(counts))
    autoencoder.to(device).eval()
    videos = _WholeVideos(records, clips.size, clips.span)
    for shard, count in enumerate(tqdm(counts, desc="encoding shards", disable=not progress)):
        path = out_dir / shard_name(shard)
        if path.exists() and shard_name(shard) in {entry["file"] for entry in manifest["shards"]}:
            continue
        path.unlink(missing_ok=True)  # written, but killed before the manifest listed it: encode it again
        start = shard * videos_per_shard
        subset = torch.utils.data.Subset(videos, range(start, start + count))
        loader = DataLoader(subset, batch_size=None, num_workers=num_workers)
        latents, lengths, labels, skipped = [], [0], [], []
        for offset, item in enumerate(loader):
            if item is None:
                skipped.append(str(records[start + offset].path))
                continue
            with torch.no_grad():
                encoded = autoencoder.encode(item["video"][None].to(device))[0].to("cpu", storage_dtype)
            latents.append(encoded)
            lengths.append(len(encoded))
            labels.append(item["label"])
            manifest.setdefault("shapes", {"latent_frame": list(encoded.shape[1:])})
        tensors = {
            "latents": torch.cat(latents).contiguous() if latents else torch.zeros(0, dtype=storage_dtype),
            "offsets": torch.tensor(np.cumsum(lengths), dtype=torch.int64),
            "labels": torch.tensor(labels, dtype=torch.int64),
        }
        _write_atomically(path, lambda temporary, t=tensors: save_file(t, temporary))
        written = {"file": shard_name(shard), "count": len(labels), "frames": sum(lengths), "skipped": skipped}
        manifest["shards"] = [*manifest["shards"], written]
        _write_manifest(out_dir, manifest)
    manifest["complete"] = True
    _write_manifest(out_dir, manifest)
    return manifest


class VideoLatentDataset(Dataset):
    """Clip windows of stored whole-video latents: {"video": (num_frames, c, h, w) float32, "label": int64}.

    One item per video. The start of a window is drawn afresh at every read when `clips.random_clips`
    (torch's RNG, seeded per DataLoader worker, as `VideoFolderDataset`), else it is a function of
    (seed, index), or frame 0 with `clips.start_at_zero`. `clips.size` is ignored: frames were
    resized when they were encoded.
    """

    def __init__(self, out_dir: str | Path, clips: ClipSampling) -> None:
        self.out_dir = Path(out_dir)
        self.manifest = read_manifest(self.out_dir)
        if self.manifest.get("layout") != LAYOUT:
            raise ValueError(f"{out_dir} holds one stored clip per video, not whole videos; read it with LatentDataset")
        self.clips = clips
        self.autoencoder = self.manifest["autoencoder"]
        self.classes = self.manifest["dataset"].get("classes", [])
        self._files = [self.out_dir / shard["file"] for shard in self.manifest["shards"]]
        offsets, labels = [], []
        for file in self._files:
            with safe_open(file, framework="pt") as handle:
                offsets.append(handle.get_tensor("offsets"))
                labels.append(handle.get_tensor("labels"))
        self._offsets = offsets
        self._first_video = np.cumsum([0] + [len(shard) for shard in labels]).tolist()
        self.labels = torch.cat(labels)
        self.lengths = torch.cat([o.diff() for o in offsets])
        too_short = int((self.lengths < clips.span).sum())
        if too_short:
            raise ValueError(
                f"{too_short} videos in {out_dir} hold fewer than the {clips.span} frames a clip needs "
                f"({clips.num_frames} at stride {clips.frame_stride}); they were encoded for shorter clips: "
                "encode again with these clip settings, or shorten data.num_frames / data.frame_stride."
            )
        self._handles: dict[int, Any] = {}

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} videos")
        shard = bisect.bisect_right(self._first_video, index) - 1
        position = index - self._first_video[shard]
        max_start = int(self.lengths[index]) - self.clips.span
        first = int(self._offsets[shard][position]) + clip_start(self.clips, index, max_start)
        if shard not in self._handles:
            self._handles[shard] = safe_open(self._files[shard], framework="pt")
        window = self._handles[shard].get_slice("latents")[first : first + self.clips.span]
        return {"video": window[:: self.clips.frame_stride].float(), "label": self.labels[index]}

    def describe(self) -> dict[str, Any]:
        return {"latents": str(self.out_dir), "num_videos": len(self), "classes": self.classes}

    def __getstate__(self) -> dict[str, Any]:
        """Open file handles stay in their process; each DataLoader worker opens its own."""
        return {**self.__dict__, "_handles": {}}


def open_latents(out_dir: str | Path, clips: ClipSampling) -> Dataset:
    """The dataset of an encoded folder: clip windows of whole videos, or the stored clips of `LatentDataset`."""
    from mimo.data.latents import LatentDataset

    if read_manifest(out_dir).get("layout") == LAYOUT:
        return VideoLatentDataset(out_dir, clips)
    return LatentDataset(out_dir)
