"""Whole videos' latents on disk, and a fresh clip window (and crop) drawn from them at every read.

FAR's loader draws a new start frame and a new crop at every read of a video, so a 400K-step
UCF-101 run sees a different clip of each video nearly every epoch. Storing one encoded clip per
video would freeze both choices, so here the encoder runs once over every frame of every video,
and `VideoLatentDataset` cuts a window of `num_frames` at `frame_stride` out of the stored frames
each time an item is read: random starts for training, seeded (or frame 0) for evaluation,
exactly as `VideoFolderDataset` does with the files. With `crop="random"` (the default) frames are
stored uncropped (shorter side resized to the clip size, the longer one rounded to the
autoencoder's downsampling) and each read takes a random square crop on the latent grid (the
centre one for evaluation), as FAR's RandomCrop / CenterCrop; `crop="centre"` stores the centre
crop only (less disk, no crop diversity).

Layout of an `out_dir` (layout "videos" in the manifest; the clip layout of `latents.py` stays
readable): `shard_00000.safetensors` holds `video_0`, `video_1`, ... (F, c, h, w), one tensor per
video since aspect ratios differ, and `labels` (n,). Writing is resumable shard by shard, like
`encode_dataset`.

Disk cost: every stored frame costs `latent_bytes_per_frame` (c·h·w·2 bytes in float16); see
`latent_disk_bytes` and the table in README ("Real videos and latents").
"""

from __future__ import annotations

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
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from mimo.data.atomic import write_atomically
from mimo.data.latents import (
    FORMAT_VERSION,
    normalised_settings,
    read_manifest,
    resume_or_start,
    shard_name,
    write_manifest,
)
from mimo.data.video_folder import (
    BadVideoError,
    BadVideoWarning,
    ClipSampling,
    VideoRecord,
    clip_start,
    frame_to_rgb,
    resize_shorter_side,
    to_unit_range,
)

LAYOUT = "videos"
FLOAT16_BYTES = 2
CROPS = ("random", "centre")  # where the square of a clip is cut: a fresh place at every read, or stored cut


def latent_bytes_per_frame(latent_shape: Sequence[int], dtype_bytes: int = FLOAT16_BYTES) -> int:
    """Bytes one stored frame takes: c·h·w values of `dtype_bytes` each (float16 by default)."""
    channels, height, width = latent_shape
    return channels * height * width * dtype_bytes


def latent_disk_bytes(total_frames: int, latent_shape: Sequence[int], dtype_bytes: int = FLOAT16_BYTES) -> int:
    """Bytes of the whole-video latents of a dataset holding `total_frames` frames."""
    return total_frames * latent_bytes_per_frame(latent_shape, dtype_bytes)


def read_video(path: str | Path, size: int | None, multiple: int | None = None) -> np.ndarray:
    """Every frame of `path` as uint8 (F, H, W, 3): resized and centre-cropped to size × size as clips are,
    or with `multiple` uncropped (shorter side `size`, the longer one a multiple of `multiple`)."""
    path = Path(path)
    if path.stat().st_size == 0:
        raise BadVideoError("empty", "the file has zero bytes")
    reformatter = VideoReformatter()
    frames = []
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise BadVideoError("undecodable", "the file has no video stream")
        for frame in container.decode(container.streams.video[0]):
            if multiple is None or size is None:
                frames.append(frame_to_rgb(frame, size, reformatter))
            else:
                frames.append(resize_shorter_side(frame, size, reformatter, multiple))
    if not frames:
        raise BadVideoError("undecodable", "no frame could be decoded")
    return np.stack(frames)


class _WholeVideos(Dataset):
    """Decoded whole videos for the encoder's DataLoader; a bad file gives None (skipped, counted)."""

    def __init__(self, records: Sequence[VideoRecord], size: int | None, min_frames: int, multiple: int | None) -> None:
        self.records, self.size, self.min_frames, self.multiple = list(records), size, min_frames, multiple

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        record = self.records[index]
        try:
            frames = read_video(record.path, self.size, self.multiple)
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
    autoencoder: nn.Module,  # with encode(), describe() and downsample (mimo.models.autoencoder)
    out_dir: str | Path,
    videos_per_shard: int = 256,
    *,
    crop: str = "random",
    classes: Sequence[str] = (),
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    storage_dtype: torch.dtype = torch.float16,
    progress: bool = True,
) -> dict[str, Any]:
    """Encode every frame of every video into `out_dir` (shorter side `clips.size`; `crop` says whether the
    square is cut at every read, "random", or once now, "centre"); returns the manifest.

    Videos shorter than one clip (`clips.span` frames) or unreadable are skipped with a warning and
    listed in the manifest. Rerun the same call after an interruption to finish the missing shards.
    """
    if videos_per_shard < 1:
        raise ValueError(f"videos_per_shard must be >= 1, got {videos_per_shard}.")
    if crop not in CROPS:
        raise ValueError(f"crop must be one of {CROPS}, got {crop!r}.")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = [min(videos_per_shard, len(records) - start) for start in range(0, len(records), videos_per_shard)]
    settings = normalised_settings(
        {
            "format_version": FORMAT_VERSION,
            "layout": LAYOUT,
            "autoencoder": autoencoder.describe(),
            "dataset": {"num_videos": len(records), "classes": list(classes), "size": clips.size, "crop": crop},
            "min_frames": clips.span,
            "num_items": len(records),
            "shard_size": videos_per_shard,
            "dtype": str(storage_dtype).removeprefix("torch."),
        }
    )
    manifest = resume_or_start(out_dir, settings, len(counts))
    autoencoder.to(device).eval()
    videos = _WholeVideos(records, clips.size, clips.span, autoencoder.downsample if crop == "random" else None)
    for shard, count in enumerate(tqdm(counts, desc="encoding shards", disable=not progress)):
        path = out_dir / shard_name(shard)
        if path.exists() and shard_name(shard) in {entry["file"] for entry in manifest["shards"]}:
            continue
        path.unlink(missing_ok=True)  # written, but killed before the manifest listed it: encode it again
        start = shard * videos_per_shard
        loader = DataLoader(Subset(videos, range(start, start + count)), batch_size=None, num_workers=num_workers)
        tensors, skipped = _encode_shard(loader, autoencoder, device, storage_dtype)
        write_atomically(path, lambda temporary, t=tensors: save_file(t, temporary))
        count, frames = len(tensors["labels"]), sum(len(t) for name, t in tensors.items() if name != "labels")
        skipped = [str(records[start + offset].path) for offset in skipped]
        written = {"file": shard_name(shard), "count": count, "frames": frames, "skipped": skipped}
        manifest["shards"] = [*manifest["shards"], written]
        write_manifest(out_dir, manifest)
    manifest["complete"] = True
    write_manifest(out_dir, manifest)
    return manifest


def _encode_shard(
    loader: DataLoader, autoencoder: nn.Module, device: str | torch.device, storage_dtype: torch.dtype
) -> tuple[dict[str, torch.Tensor], list[int]]:
    """The tensors of one shard (`video_i` (F, c, h, w) each, and `labels`) and the offsets of the videos skipped."""
    tensors: dict[str, torch.Tensor] = {}
    labels, skipped = [], []
    for offset, item in enumerate(loader):
        if item is None:
            skipped.append(offset)
            continue
        with torch.no_grad():
            encoded = autoencoder.encode(item["video"][None].to(device))[0].to("cpu", storage_dtype)
        tensors[f"video_{len(labels)}"] = encoded.contiguous()
        labels.append(item["label"])
    tensors["labels"] = torch.tensor(labels, dtype=torch.int64)
    return tensors, skipped


class VideoLatentDataset(Dataset):
    """Clip windows of stored whole-video latents: {"video": (num_frames, c, s, s) float32, "label": int64}.

    One item per video. The window's first frame and, for uncropped storage, the place of the s × s
    square (s: the shorter stored side) are drawn afresh at every read when `clips.random_clips`
    (torch's RNG, seeded per DataLoader worker, as `VideoFolderDataset`); otherwise the start is a
    function of (seed, index), or frame 0 with `clips.start_at_zero`, and the square is the centre
    one. `clips.size` is ignored: frames were resized when they were encoded.
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
        self._videos: list[tuple[int, str]] = []  # (shard, tensor name) of each video
        self.shapes: list[tuple[int, ...]] = []  # (F, c, h, w) of each video
        labels = []
        for shard, file in enumerate(self._files):
            with safe_open(file, framework="pt") as handle:
                labels.append(handle.get_tensor("labels"))
                for position in range(len(labels[-1])):
                    self._videos.append((shard, f"video_{position}"))
                    self.shapes.append(tuple(handle.get_slice(f"video_{position}").get_shape()))
        self.labels = torch.cat(labels)
        too_short = sum(shape[0] < clips.span for shape in self.shapes)
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
        shard, name = self._videos[index]
        frames, _, height, width = self.shapes[index]
        first = clip_start(self.clips, index, frames - self.clips.span)
        side = min(height, width)
        top, left = self._crop_offset(height - side), self._crop_offset(width - side)
        if shard not in self._handles:
            self._handles[shard] = safe_open(self._files[shard], framework="pt")
        window = self._handles[shard].get_slice(name)[
            first : first + self.clips.span, :, top : top + side, left : left + side
        ]
        return {"video": window[:: self.clips.frame_stride].float(), "label": self.labels[index]}

    def _crop_offset(self, slack: int) -> int:
        """Where the square starts along an axis with `slack` extra latents: random for training, else centred."""
        return int(torch.randint(0, slack + 1, ())) if self.clips.random_clips and slack else slack // 2

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
