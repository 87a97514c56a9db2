"""`mimo data check`: are the videos a config names all there and readable, before hours of encoding?

The check lists the videos as training would (split files, annotation CSV or class folders),
compares the count with what the dataset should hold, opens every file's header and decodes its
first frame, and counts frames (for the disk cost of whole-video latents). It reads no more than
that, so a whole UCF-101 takes minutes; a file broken after its first frame is still caught
later, by the training's bad-file accounting.
"""

from __future__ import annotations

import csv
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import av

from mimo.config import Config, ConfigError, DataConfig
from mimo.data import VIDEO_DATASETS
from mimo.data.clip_windows import latent_disk_bytes
from mimo.data.video_folder import (
    VideoRecord,
    claimed_num_frames,
    class_folder_records,
    folder_records,
    kinetics_records,
    kinetics_stem,
    non_empty_lines,
    ucf101_records,
)

# UCF-101 (Soomro et al. 2012): 13,320 videos of 101 classes; the official splits' list sizes per fold.
UCF101_VIDEOS, UCF101_CLASSES = 13_320, 101
UCF101_SPLIT_VIDEOS = {(1, "train"): 9_537, (1, "test"): 3_783, (2, "train"): 9_586, (2, "test"): 3_734}
UCF101_SPLIT_VIDEOS |= {(3, "train"): 9_624, (3, "test"): 3_696}
# Kinetics-600 (Carreira et al. 2018): the annotation CSV of a split is the list of its videos; YouTube
# removals mean a copy downloaded today holds fewer, which the check reports as missing.
KINETICS600_CLASSES = 600
SD_VAE_CHANNELS, SD_VAE_DOWNSAMPLE = 4, 8  # the latents of the paper's presets (SD-VAE, kl-f8)
EXAMPLES_SHOWN = 5


@dataclass
class DataCheckReport:
    """What was found against what the dataset should hold; `ok` when nothing is missing or unreadable."""

    dataset: str
    path: str
    expected_videos: int | None
    found_videos: int  # files present (readable or not)
    missing: list[str] = field(default_factory=list)
    unreadable: dict[str, str] = field(default_factory=dict)  # path -> reason
    too_short: list[str] = field(default_factory=list)  # readable but shorter than one clip
    expected_classes: int | None = None
    found_classes: int = 0
    total_frames: int = 0
    clip_span: int = 1
    latent_disk_bytes: int = 0  # whole-video SD-VAE latents, stored uncropped (mimo data encode's default)
    centre_crop_disk_bytes: int = 0  # the same with --crop centre
    expectation: str = ""

    @property
    def ok(self) -> bool:
        counts_match = self.expected_videos in (None, self.found_videos)
        classes_match = self.expected_classes in (None, self.found_classes)
        return counts_match and classes_match and not self.missing and not self.unreadable and not self.too_short

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}

    def __str__(self) -> str:
        expected = "?" if self.expected_videos is None else f"{self.expected_videos:,}"
        lines = [
            f"{self.dataset} at {self.path} ({self.expectation})",
            f"videos: {self.found_videos:,} found of {expected} expected; {len(self.missing):,} missing, "
            f"{len(self.unreadable):,} unreadable, {len(self.too_short):,} shorter than a clip "
            f"({self.clip_span} frames)",
            f"classes: {self.found_classes} found of {self.expected_classes or '?'} expected",
            f"frames: {self.total_frames:,}; whole-video SD-VAE latents (float16): "
            f"{self.latent_disk_bytes / 1e9:.2f} GB ({self.centre_crop_disk_bytes / 1e9:.2f} GB with --crop centre)",
        ]
        for name, paths in (("missing", self.missing), ("too short", self.too_short), ("unreadable", self.unreadable)):
            if paths:
                shown = [
                    f"{p} ({self.unreadable[p]})" if name == "unreadable" else p for p in list(paths)[:EXAMPLES_SHOWN]
                ]
                lines.append(f"{name}, e.g.: {', '.join(shown)}")
        lines.append("OK" if self.ok else "NOT OK: fix the data (or the config's data.path) before encoding")
        return "\n".join(lines)


def _listed_and_found(data: DataConfig) -> tuple[list[VideoRecord], list[str], list[str], int | None, str]:
    """(records found, classes, names listed but missing, expected count, where the expectation comes from)."""
    kind = data.dataset
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # missing files are reported below, by name
        if kind == "ucf101":
            records, classes = ucf101_records(data.path, data.split, data.fold)
            split_dir = Path(data.path) / "ucfTrainTestlist"
            split_dir = split_dir if split_dir.is_dir() else Path(data.path)
            split_file = split_dir / f"{data.split}list0{data.fold}.txt"
            listed = [line.split()[0].lower() for line in non_empty_lines(split_file)]
            found = {"/".join(r.path.parts[-2:]).lower() for r in records}
            expected = UCF101_SPLIT_VIDEOS[(data.fold, data.split)]
            return (
                records,
                classes,
                [e for e in listed if e not in found],
                expected,
                f"UCF-101 {data.split}list0{data.fold}",
            )
        if kind == "kinetics600" and data.annotations:
            records, classes = kinetics_records(data.path, data.annotations)
            with open(data.annotations, newline="") as file:
                listed = [kinetics_stem(row) for row in csv.DictReader(file)]
            found = {r.path.stem for r in records}
            missing = [stem for stem in listed if stem not in found]
            return records, classes, missing, len(listed), f"Kinetics-600, rows of {data.annotations}"
    if kind == "video_folder":
        return folder_records(data.path), [], [], None, "any folder of videos"
    records, classes = class_folder_records(data.path)
    if data.num_classes == UCF101_CLASSES:
        return records, classes, [], UCF101_VIDEOS, "UCF-101, all videos (train + test, as FAR and StyleGAN-V train)"
    return records, classes, [], None, "class folders"


def _probe(path: Path) -> tuple[int, float, str | None]:
    """(frame count, aspect ratio, None) of a readable file, or (0, 1, reason): header opened, first frame decoded."""
    try:
        if path.stat().st_size == 0:
            return 0, 1.0, "empty"
        with av.open(str(path)) as container:
            if not container.streams.video:
                return 0, 1.0, "no video stream"
            stream = container.streams.video[0]
            first = next(container.decode(stream), None)
            if first is None:
                return 0, 1.0, "no frame decodes"
            aspect = max(first.width, first.height) / min(first.width, first.height)
            return claimed_num_frames(container, stream), aspect, None
    except Exception as error:  # any failure is a finding to report, not a crash
        return 0, 1.0, f"{type(error).__name__}: {error}"


def check_config(config: Config, workers: int = 4) -> DataCheckReport:
    """`check_data` of a config's videos: its own, or for latents the videos `data.videos` names."""
    from mimo.data.real_set import training_videos

    videos = training_videos(config)
    if videos is None or videos.dataset not in VIDEO_DATASETS:
        raise ConfigError(
            f"data.dataset={config.data.dataset!r} is not a folder of videos; check the config of the videos "
            f"(one of {', '.join(VIDEO_DATASETS)}), or set data.videos=YAML naming the videos of these latents"
        )
    # data.num_classes's default is the built-in videos' count, no statement about a folder of videos: it is
    # expected only when set, or when a class-conditional model will embed that many classes
    stated = bool(config.num_classes) or videos.num_classes != DataConfig().num_classes
    return check_data(videos, workers, expect_classes=stated)


def check_data(data: DataConfig, workers: int = 4, expect_classes: bool = True) -> DataCheckReport:
    """Found / missing / unreadable videos and classes of the video dataset `data` names (`expect_classes`:
    compare the classes found with data.num_classes)."""
    if not data.path or not Path(data.path).is_dir():
        raise FileNotFoundError(f"data.path={data.path!r} is not a folder; point it at the dataset's videos")
    records, classes, missing, expected, expectation = _listed_and_found(data)
    with ThreadPoolExecutor(max(1, workers)) as pool:
        probes = list(pool.map(_probe, [record.path for record in records]))
    span = (data.num_frames - 1) * data.frame_stride + 1
    unreadable = {str(r.path): reason for r, (_, _, reason) in zip(records, probes, strict=True) if reason}
    too_short = [
        str(r.path) for r, (frames, _, reason) in zip(records, probes, strict=True) if not reason and frames < span
    ]
    total_frames = sum(frames for frames, _, _ in probes)
    side = data.frame_size // SD_VAE_DOWNSAMPLE  # whole-video latents: shorter side, longer one uncropped
    uncropped = sum(
        latent_disk_bytes(frames, (SD_VAE_CHANNELS, side, round(side * aspect))) for frames, aspect, _ in probes
    )
    expected_classes = data.num_classes if classes and expect_classes else None
    if data.dataset == "kinetics600" and classes:
        expected_classes = KINETICS600_CLASSES
    labels = {r.label for r, (_, _, reason) in zip(records, probes, strict=True) if not reason}
    return DataCheckReport(
        dataset=data.dataset,
        path=str(data.path),
        expected_videos=expected,
        found_videos=len(records),
        missing=missing,
        unreadable=unreadable,
        too_short=too_short,
        expected_classes=expected_classes,
        found_classes=len(labels - {-1}),
        total_frames=total_frames,
        clip_span=span,
        latent_disk_bytes=uncropped,
        centre_crop_disk_bytes=latent_disk_bytes(total_frames, (SD_VAE_CHANNELS, side, side)),
        expectation=expectation,
    )
