"""Clips from folders of real videos (UCF-101, Kinetics-600, any folder), decoded with PyAV.

A dataset is a list of `VideoRecord`s (a file and its label) plus a `ClipSampling` (how many frames,
which stride, which size, random or seeded starts). The listing functions turn the usual layouts
into records: any folder (unlabelled), class folders, UCF-101's official split files and
Kinetics' CSV annotations. Items follow the contract shared with the synthetic dataset:
`{"video": float32 (T, C, H, W) in [-1, 1], "label": int64}` (label -1 when unlabelled).

Decoding touches only the frames a clip needs: it seeks to the keyframe before the clip, counts
frames from there, stops after the clip's last frame, and lets libswscale resize each frame
before it becomes a numpy array.

Bad files (zero bytes, corrupt, truncated, shorter than a clip) are skipped with one warning
each: the item of the next valid index is returned instead, so one file never ends an epoch.
Their count is shared by all DataLoader workers through a status byte per file in shared memory
(see `VideoFolderDataset`), so the main process can print `dataset.failures` after an epoch and
the run stops with `TooManyBadVideosError` when the dataset is mostly unreadable.
"""

from __future__ import annotations

import csv
import itertools
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch
from av.video.reformatter import VideoReformatter
from einops import rearrange
from torch.utils.data import Dataset

from mimo.errors import TooManyBadVideosError

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v")

# Status byte of each file in `VideoFolderDataset._status` (shared by all workers).
_UNSEEN, _OK = 0, 1
_BAD_REASONS = ("empty", "too_short", "undecodable")  # codes 2, 3, 4
_FIRST_BAD = 2
_EXAMPLES_SHOWN = 5


class BadVideoError(Exception):
    """A file that cannot give a clip; `reason` is one of `_BAD_REASONS`."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class BadVideoWarning(UserWarning):
    """Issued once per skipped file, so that users can filter or escalate it."""


@dataclass(frozen=True)
class VideoRecord:
    path: Path
    label: int = -1  # -1: unlabelled


@dataclass(frozen=True)
class ClipSampling:
    """Which frames of a video make a clip, and at which size.

    `random_clips` draws a fresh start every time an item is read (training; torch's RNG, which
    DataLoader seeds per worker and per epoch). Otherwise the start is a pure function of
    (seed, index), or frame 0 with `start_at_zero`, so evaluation sees the same clips in every
    run and every worker layout.
    """

    num_frames: int = 16
    frame_stride: int = 1
    size: int | None = 64  # shorter side resized to `size`, then a centre crop to size × size
    random_clips: bool = True
    seed: int = 0
    start_at_zero: bool = False

    def __post_init__(self) -> None:
        if self.num_frames < 1 or self.frame_stride < 1:
            raise ValueError(
                f"ClipSampling needs num_frames >= 1 and frame_stride >= 1, got num_frames={self.num_frames}, "
                f"frame_stride={self.frame_stride}."
            )
        if self.size is not None and self.size < 1:
            raise ValueError(f"ClipSampling.size must be a positive number of pixels or None, got {self.size}.")

    @property
    def span(self) -> int:
        """Frames of the source video covered by one clip."""
        return (self.num_frames - 1) * self.frame_stride + 1


@dataclass(frozen=True)
class FailureSummary:
    """Files skipped so far, over all workers; `str()` is the line the trainer prints."""

    attempted: int
    failed: int
    by_reason: dict[str, int]
    examples: list[str]

    def __str__(self) -> str:
        if self.failed == 0:
            return f"no bad videos among {self.attempted} read"
        reasons = ", ".join(f"{reason}: {count}" for reason, count in self.by_reason.items() if count)
        return f"{self.failed} of {self.attempted} videos skipped ({reasons}); e.g. {', '.join(self.examples)}"


# ---------------------------------------------------------------------------------------------
# Decoding


def read_clip(
    path: str | Path,
    clips: ClipSampling,
    choose_start: Callable[[int], int] = lambda max_start: 0,
) -> np.ndarray:
    """Decode one clip of `path` as uint8 (T, H, W, 3).

    `choose_start(max_start)` picks the first frame in [0, max_start]. The frame count comes from
    the header; when the file holds fewer frames than it claims (truncated downloads), the start
    is chosen again from the true count. Raises `BadVideoError` or PyAV's errors.
    """
    path = Path(path)
    if path.stat().st_size == 0:
        raise BadVideoError("empty", "the file has zero bytes")
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise BadVideoError("undecodable", "the file has no video stream")
        stream = container.streams.video[0]
        claimed = claimed_num_frames(container, stream)
        frames, last_index = _decode(container, stream, _clip_indices(claimed, clips, choose_start), clips.size)
        if len(frames) < clips.num_frames:  # the header overstated the length: retry with the true one
            frames, _ = _decode(container, stream, _clip_indices(last_index + 1, clips, choose_start), clips.size)
        if len(frames) < clips.num_frames:
            raise BadVideoError("undecodable", f"decoded {len(frames)} of the {clips.num_frames} frames of a clip")
    return np.stack(frames)


def _clip_indices(num_frames: int, clips: ClipSampling, choose_start: Callable[[int], int]) -> range:
    if num_frames < clips.span:
        raise BadVideoError(
            "too_short",
            f"{num_frames} frames, a clip needs {clips.span} ({clips.num_frames} at stride {clips.frame_stride})",
        )
    start = choose_start(num_frames - clips.span)
    return range(start, start + clips.span, clips.frame_stride)


def claimed_num_frames(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> int:
    """Frame count from the header, else from the duration, else by counting packets (no decoding)."""
    if stream.frames > 0:
        return stream.frames
    rate = stream.average_rate or stream.guessed_rate
    if stream.duration and rate:
        return int(stream.duration * stream.time_base * rate)
    if container.duration and rate:
        return int(Fraction(container.duration, av.time_base) * rate)
    return sum(1 for packet in container.demux(stream) if packet.size > 0)


def _decode(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    wanted: range,
    size: int | None,
) -> tuple[list[np.ndarray], int]:
    """The frames at the indices in `wanted`, and the index of the last frame decoded.

    A frame's index counts the frames the decoder returned before it (presentation order). After
    a seek the count starts from the first frame's timestamp; if a seek lands after the clip
    (inexact seeking), decoding starts again from frame 0.
    """
    reformatter = VideoReformatter()
    for seek_to in dict.fromkeys((wanted.start, 0)):
        frames = _frames_from(container, stream, seek_to)
        first = next(frames, None)
        if first is None or first[0] > wanted.start:
            continue
        picked, index = [], first[0]
        for index, frame in itertools.chain([first], frames):
            if index in wanted:
                picked.append(frame_to_rgb(frame, size, reformatter))
            if index >= wanted[-1]:
                break
        return picked, index
    return [], -1


def _frames_from(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, index: int
) -> Iterator[tuple[int, av.VideoFrame]]:
    """(index, frame) pairs starting at the keyframe at or before frame `index`."""
    rate = stream.average_rate or stream.guessed_rate
    origin = stream.start_time or 0
    if index == 0 or not rate:
        container.seek(origin, stream=stream, backward=True)
        yield from enumerate(container.decode(stream))
        return
    container.seek(origin + int(index / (rate * stream.time_base)), stream=stream, backward=True)
    decoded = container.decode(stream)
    first = next(decoded, None)
    if first is None or first.pts is None:
        return
    first_index = round((first.pts - origin) * stream.time_base * rate)
    yield from enumerate(itertools.chain([first], decoded), start=first_index)


def frame_to_rgb(frame: av.VideoFrame, size: int | None, reformatter: VideoReformatter) -> np.ndarray:
    """uint8 (size, size, 3): shorter side resized to `size` by libswscale, then a centre crop.

    One reformatter per clip reuses its scaling context across frames, and one thread avoids
    libswscale's per-call thread pool: together 4-8× faster than `frame.to_ndarray(width=...)`.
    """
    if size is None:
        return reformatter.reformat(frame, format="rgb24", threads=1).to_ndarray()
    image = resize_shorter_side(frame, size, reformatter)
    top, left = (image.shape[0] - size) // 2, (image.shape[1] - size) // 2
    return image[top : top + size, left : left + size]


def resize_shorter_side(
    frame: av.VideoFrame, size: int, reformatter: VideoReformatter, multiple: int = 1
) -> np.ndarray:
    """uint8 (H', W', 3): the shorter side resized to `size`, the longer one in proportion, rounded to a
    multiple of `multiple` (an autoencoder's downsampling, so that latents can be cropped on their grid)."""
    scale = size / min(frame.height, frame.width)
    height = max(size, multiple * round(frame.height * scale / multiple))
    width = max(size, multiple * round(frame.width * scale / multiple))
    resized = reformatter.reformat(frame, width, height, "rgb24", interpolation="BILINEAR", threads=1)
    return resized.to_ndarray()


def clip_start(clips: ClipSampling, index: int, max_start: int) -> int:
    """First frame in [0, max_start] of the clip of item `index`, as `clips` says (see `ClipSampling`)."""
    if clips.start_at_zero:
        return 0
    if clips.random_clips:
        return int(torch.randint(0, max_start + 1, ()))
    return int(np.random.default_rng((clips.seed, index)).integers(0, max_start + 1))


def to_unit_range(clip: np.ndarray) -> torch.Tensor:
    """uint8 (T, H, W, C) -> float32 (T, C, H, W) in [-1, 1]."""
    video = rearrange(torch.from_numpy(np.ascontiguousarray(clip)), "t h w c -> t c h w")
    return video.float().div_(127.5).sub_(1.0)


# ---------------------------------------------------------------------------------------------
# Listing: layouts -> records


def find_videos(root: str | Path) -> list[Path]:
    """All video files under `root`, recursively, in sorted order."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"Video folder {root} does not exist (or is not a folder); check the data path.")
    return sorted(path for path in root.rglob("*") if path.suffix.lower() in VIDEO_EXTENSIONS and path.is_file())


def folder_records(root: str | Path) -> list[VideoRecord]:
    """Every video under `root`, unlabelled."""
    return [VideoRecord(path) for path in _nonempty(find_videos(root), root)]


def class_folder_records(root: str | Path) -> tuple[list[VideoRecord], list[str]]:
    """Videos in `root/<class>/...`; classes are the sorted folder names (UCF-101's, Kinetics' layouts)."""
    root = Path(root)
    videos = [path for path in find_videos(root) if len(path.relative_to(root).parts) > 1]
    classes = sorted({path.relative_to(root).parts[0] for path in videos})
    label = {name: index for index, name in enumerate(classes)}
    records = [VideoRecord(path, label[path.relative_to(root).parts[0]]) for path in videos]
    return _nonempty(records, root, hint="videos must sit in one folder per class"), classes


def ucf101_records(
    root: str | Path, split: str = "train", fold: int = 1, split_dir: str | Path | None = None
) -> tuple[list[VideoRecord], list[str]]:
    """UCF-101 from the official `classInd.txt` and `trainlist0{fold}.txt` / `testlist0{fold}.txt`.

    Labels are classInd's numbers minus one. `split_dir` defaults to `root/ucfTrainTestlist` when
    it exists, else `root`. List entries are matched case-insensitively on `<class>/<file>`, since
    the official lists and the video archive disagree on case (HandstandPushups).
    """
    if split not in ("train", "test") or fold not in (1, 2, 3):
        raise ValueError(f"UCF-101 has splits 'train'/'test' and folds 1-3, got split={split!r}, fold={fold}.")
    root = Path(root)
    if split_dir is None:
        split_dir = root / "ucfTrainTestlist" if (root / "ucfTrainTestlist").is_dir() else root
    split_dir = Path(split_dir)
    class_file, list_file = split_dir / "classInd.txt", split_dir / f"{split}list0{fold}.txt"
    for required in (class_file, list_file):
        if not required.is_file():
            raise FileNotFoundError(
                f"UCF-101 split file {required} not found. Get UCF101TrainTestSplits-RecognitionTask.zip from "
                "https://www.crcv.ucf.edu/data/UCF101.php and unpack it into the dataset folder (or pass "
                "split_dir), or list the classes from the folder names with class_folder_records."
            )
    classes = [line.split()[1] for line in non_empty_lines(class_file)]
    label = {name.lower(): index for index, name in enumerate(classes)}
    listed = [line.split()[0].lower() for line in non_empty_lines(list_file)]  # "Class/v_Class_g08_c01.avi [label]"
    entries = [(entry, _label_of(entry.split("/")[0], label, class_file)) for entry in listed]
    by_key = {"/".join(path.parts[-2:]).lower(): path for path in find_videos(root)}
    return _resolve(entries, by_key, list_file, root), classes


def kinetics_records(
    root: str | Path, annotations: str | Path, classes: Sequence[str] | None = None
) -> tuple[list[VideoRecord], list[str]]:
    """Kinetics from its CSV (label, youtube_id, time_start, time_end, split).

    Files are named `{youtube_id}_{time_start:06d}_{time_end:06d}.<ext>` anywhere under `root`
    (flat, per split or per class). Classes default to the CSV's sorted labels; pass the training
    CSV's classes when reading another split. A CSV without `label` (the test set) gives label -1.
    """
    with open(annotations, newline="") as file:
        rows = list(csv.DictReader(file))
    missing = {"youtube_id", "time_start", "time_end"} - set(rows[0] if rows else ())
    if missing:
        raise ValueError(
            f"{annotations} is not a Kinetics annotation CSV: it lacks the column(s) {sorted(missing)} "
            "(expected label,youtube_id,time_start,time_end,split)."
        )
    labelled = "label" in rows[0]
    if classes is None:
        classes = sorted({row["label"] for row in rows}) if labelled else []
    label = {name: index for index, name in enumerate(classes)}
    entries = [(kinetics_stem(row), _label_of(row["label"], label, annotations) if labelled else -1) for row in rows]
    by_key = {path.stem: path for path in find_videos(root)}
    return _resolve(entries, by_key, Path(annotations), Path(root)), list(classes)


def kinetics_stem(row: dict[str, str]) -> str:
    return f"{row['youtube_id']}_{int(float(row['time_start'])):06d}_{int(float(row['time_end'])):06d}"


def _label_of(name: str, label: dict[str, int], source: str | Path) -> int:
    if name not in label:
        raise ValueError(f"Class {name!r} is listed but is not among the {len(label)} classes of {source}.")
    return label[name]


def non_empty_lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _resolve(entries: list[tuple[str, int]], by_key: dict[str, Path], list_file: Path, root: Path) -> list[VideoRecord]:
    """Records for the listed entries found on disk; missing ones are left out with one warning."""
    records = [VideoRecord(by_key[key], label) for key, label in entries if key in by_key]
    absent = [key for key, _ in entries if key not in by_key]
    if absent:
        warnings.warn(
            f"{len(absent)} of {len(entries)} videos listed in {list_file} are not under {root} and are left out "
            f"(e.g. {', '.join(absent[:_EXAMPLES_SHOWN])}).",
            stacklevel=3,
        )
    return _nonempty(records, root, hint=f"none of the files listed in {list_file} were found")


def _nonempty(records: list, root: str | Path, hint: str = "") -> list:
    if not records:
        raise FileNotFoundError(
            f"No videos ({', '.join(VIDEO_EXTENSIONS)}) found under {root}" + (f": {hint}." if hint else ".")
        )
    return records


# ---------------------------------------------------------------------------------------------
# The dataset


class VideoFolderDataset(Dataset):
    """Clips of the videos in `records`; bad files are skipped, counted and bounded.

    Counting across DataLoader workers: each file has one status byte (unseen, ok, or a failure
    reason) in a tensor placed in shared memory at construction. Workers (forked or spawned; torch
    passes shared tensors by handle) write the byte of each file they try, so that
    - every worker skips a file another worker already found bad, and warns only for new ones
      (two workers meeting the same new bad file at once may both warn: harmless);
    - the main process reads the same bytes for `failures` after an epoch, with no messages to
      collect, and the counts survive workers being recreated each epoch;
    - the share of bad files is measured over distinct files, not over reads.
    A byte per file costs 1 MB per million videos. A failed file is replaced by the next index
    whose file decodes, so substitutes are deterministic given the clip sampling.

    `max_bad_fraction`: once at least `min_attempts` distinct files (or all of them, if fewer) have
    been tried, more than this share failing raises `TooManyBadVideosError` naming examples.
    """

    def __init__(
        self,
        records: Sequence[VideoRecord],
        clips: ClipSampling = ClipSampling(),
        classes: Sequence[str] = (),
        max_bad_fraction: float = 0.1,
        min_attempts: int = 50,
    ) -> None:
        if not records:
            raise ValueError("VideoFolderDataset needs at least one video record.")
        if not 0.0 <= max_bad_fraction <= 1.0:
            raise ValueError(f"max_bad_fraction is a share in [0, 1], got {max_bad_fraction}.")
        self.records = list(records)
        self.clips = clips
        self.classes = list(classes)
        self.max_bad_fraction = max_bad_fraction
        self.min_attempts = min(min_attempts, len(self.records))
        self._status = torch.zeros(len(self.records), dtype=torch.int8).share_memory_()

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} videos")
        for offset in range(len(self)):
            candidate = (index + offset) % len(self)
            if self._status[candidate] >= _FIRST_BAD:
                continue
            record = self.records[candidate]
            try:
                clip = read_clip(record.path, self.clips, lambda max_start, i=candidate: self._start(i, max_start))
            except Exception as error:  # any failure of one file must not end the epoch; see class docstring
                self._record_failure(candidate, error)
                continue
            self._status[candidate] = _OK
            self.check_failures()
            return {"video": to_unit_range(clip), "label": torch.tensor(record.label, dtype=torch.int64)}
        raise TooManyBadVideosError(f"None of the {len(self)} videos could be decoded: {self.failures}.")

    def _start(self, index: int, max_start: int) -> int:
        return clip_start(self.clips, index, max_start)

    def _record_failure(self, index: int, error: Exception) -> None:
        reason = error.reason if isinstance(error, BadVideoError) else "undecodable"
        self._status[index] = _FIRST_BAD + _BAD_REASONS.index(reason)
        warnings.warn(
            f"Skipping video {self.records[index].path} ({reason}: {type(error).__name__}: {error}).",
            BadVideoWarning,
            stacklevel=3,
        )
        self.check_failures()

    @property
    def failures(self) -> FailureSummary:
        """Bad files found so far by any process reading this dataset."""
        status = self._status.numpy()
        bad = np.flatnonzero(status >= _FIRST_BAD)
        return FailureSummary(
            attempted=int(np.count_nonzero(status != _UNSEEN)),
            failed=len(bad),
            by_reason={
                reason: int(np.count_nonzero(status == _FIRST_BAD + code)) for code, reason in enumerate(_BAD_REASONS)
            },
            examples=[str(self.records[i].path) for i in bad[:_EXAMPLES_SHOWN]],
        )

    def check_failures(self) -> None:
        """Raise `TooManyBadVideosError` when more than `max_bad_fraction` of the tried files failed."""
        status = self._status.numpy()
        attempted, failed = np.count_nonzero(status != _UNSEEN), np.count_nonzero(status >= _FIRST_BAD)
        if attempted >= self.min_attempts and failed > self.max_bad_fraction * attempted:
            raise TooManyBadVideosError(
                f"{self.failures}. That is more than max_bad_fraction={self.max_bad_fraction} of the videos tried, so "
                "the data is probably wrong: check the dataset path and the files (e.g. `ffprobe FILE`), or raise "
                "max_bad_fraction if these losses are expected."
            )

    def describe(self) -> dict[str, Any]:
        """What produced these clips, for manifests and logs."""
        return {"num_videos": len(self), "classes": self.classes, "clips": asdict(self.clips)}


__all__ = [
    "VIDEO_EXTENSIONS",
    "BadVideoError",
    "BadVideoWarning",
    "ClipSampling",
    "FailureSummary",
    "TooManyBadVideosError",
    "VideoFolderDataset",
    "VideoRecord",
    "class_folder_records",
    "clip_start",
    "find_videos",
    "folder_records",
    "kinetics_records",
    "read_clip",
    "to_unit_range",
    "ucf101_records",
]
