"""Video folders: clips, sampling, resizing, bad files, UCF-101 split files and Kinetics CSVs.

The videos are written here with PyAV. Frame t of a "ramp" video is uniformly grey at level
RAMP_BASE + RAMP_STEP·t, so a decoded clip tells which frames it holds.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from mimo.config import ConfigError, DataConfig
from mimo.data import build_dataset, video_folder
from mimo.data.media import write_video
from mimo.data.video_folder import (
    BadVideoWarning,
    ClipSampling,
    TooManyBadVideosError,
    VideoFolderDataset,
    VideoRecord,
    class_folder_records,
    folder_records,
    kinetics_records,
    read_clip,
    ucf101_records,
)

RAMP_BASE, RAMP_STEP, RAMP_FRAMES = 10, 6, 40
HEIGHT, WIDTH = 48, 64


def ramp(num_frames: int = RAMP_FRAMES, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    levels = RAMP_BASE + RAMP_STEP * np.arange(num_frames, dtype=np.uint8)
    return np.broadcast_to(levels[:, None, None, None], (num_frames, height, width, 3)).copy()


def frame_indices(video: torch.Tensor) -> list[int]:
    """Which ramp frames a (T, C, H, W) clip in [-1, 1] holds."""
    levels = (video + 1).mul(127.5).mean(dim=(1, 2, 3))
    return [round((level.item() - RAMP_BASE) / RAMP_STEP) for level in levels]


# One file per kind of damage, and the reason it should be reported under.
BAD_FILES = {
    "zero.mp4": "empty",
    "corrupt.mp4": "undecodable",
    "two_frames.mp4": "too_short",
    "truncated.mp4": "undecodable",
}


def write_bad_files(folder: Path) -> None:
    (folder / "zero.mp4").write_bytes(b"")
    (folder / "corrupt.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    write_video(folder / "two_frames.mp4", ramp(2))
    write_video(folder / "whole.mp4", ramp())
    whole = (folder / "whole.mp4").read_bytes()
    (folder / "truncated.mp4").write_bytes(whole[: len(whole) // 2])
    (folder / "whole.mp4").unlink()


pytestmark = pytest.mark.usefixtures("single_thread")  # tiny tensors gain nothing from threads


@pytest.fixture(scope="module")
def class_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("classes")
    for name in ("walk", "jump"):
        (root / name).mkdir()
        for i in range(2):
            write_video(root / name / f"{name}_{i}.mp4", ramp())
    return root


@pytest.fixture(scope="module")
def damaged_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("damaged")
    for i in range(3):
        write_video(root / f"good_{i}.mp4", ramp())
    write_bad_files(root)
    return root


def test_items_follow_the_dataset_contract(class_root: Path) -> None:
    records, classes = class_folder_records(class_root)
    dataset = VideoFolderDataset(records, ClipSampling(num_frames=8, size=32), classes)
    assert classes == ["jump", "walk"]
    for index, record in enumerate(records):
        item = dataset[index]
        assert item["video"].shape == (8, 3, 32, 32) and item["video"].dtype == torch.float32
        assert item["video"].min() >= -1 and item["video"].max() <= 1
        assert item["label"].dtype == torch.int64
        assert classes[item["label"]] == record.path.parent.name


def test_clips_start_at_zero_and_step_by_the_stride(class_root: Path) -> None:
    clips = ClipSampling(num_frames=6, frame_stride=3, size=32, random_clips=False, start_at_zero=True)
    dataset = VideoFolderDataset(folder_records(class_root), clips)
    assert frame_indices(dataset[0]["video"]) == list(range(0, 16, 3))


def test_clips_hold_consecutive_strided_frames_inside_the_video(class_root: Path) -> None:
    clips = ClipSampling(num_frames=5, frame_stride=4, size=32, random_clips=False)
    dataset = VideoFolderDataset(folder_records(class_root), clips)
    for index in range(len(dataset)):
        frames = frame_indices(dataset[index]["video"])
        assert np.all(np.diff(frames) == 4) and frames[0] >= 0 and frames[-1] < RAMP_FRAMES


def test_evaluation_clips_depend_only_on_seed_and_index(class_root: Path) -> None:
    records = folder_records(class_root)

    def starts(seed: int, workers: int) -> list[int]:
        dataset = VideoFolderDataset(records, ClipSampling(num_frames=4, size=32, random_clips=False, seed=seed))
        loader = DataLoader(dataset, batch_size=2, num_workers=workers)
        return [frame_indices(video)[0] for batch in loader for video in batch["video"]]

    in_process = starts(seed=1, workers=0)
    assert starts(seed=1, workers=2) == in_process
    assert starts(seed=1, workers=0) == in_process
    assert any(starts(seed=seed, workers=0) != in_process for seed in (2, 3, 4))


def test_training_clips_are_drawn_afresh(class_root: Path) -> None:
    torch.manual_seed(0)
    dataset = VideoFolderDataset(folder_records(class_root), ClipSampling(num_frames=4, size=32))
    assert len({frame_indices(dataset[0]["video"])[0] for _ in range(10)}) > 1


def test_resize_and_centre_crop_match_an_antialiased_torch_reference(tmp_path: Path) -> None:
    rows, columns = np.mgrid[0:48, 0:96]
    image = np.stack([rows * 5, columns * 2, (rows + columns) * 2], axis=-1).clip(0, 255).astype(np.uint8)
    write_video(tmp_path / "wide.mp4", np.stack([image] * 4))
    clip = read_clip(tmp_path / "wide.mp4", ClipSampling(num_frames=1, size=32))
    full = torch.from_numpy(read_clip(tmp_path / "wide.mp4", ClipSampling(num_frames=1, size=None)))
    resized = torch.nn.functional.interpolate(
        full.permute(0, 3, 1, 2).float(), size=(32, 64), mode="bilinear", antialias=True
    ).permute(0, 2, 3, 1)
    reference = resized[:, :, 16:48]
    assert clip.shape == (1, 32, 32, 3)
    assert (torch.from_numpy(clip).float() - reference).abs().mean() < 3.0


def test_a_header_that_overstates_the_length_gives_a_clip_from_the_true_length(
    class_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(video_folder, "claimed_num_frames", lambda container, stream: 3 * RAMP_FRAMES)
    path = folder_records(class_root)[0].path
    clip = read_clip(path, ClipSampling(num_frames=4, frame_stride=2, size=32), lambda max_start: max_start)
    levels = frame_indices(video_folder.to_unit_range(clip))
    assert levels == list(range(RAMP_FRAMES - 7, RAMP_FRAMES, 2))


def damaged_dataset(root: Path, max_bad_fraction: float) -> VideoFolderDataset:
    clips = ClipSampling(num_frames=8, size=32)
    return VideoFolderDataset(folder_records(root), clips, max_bad_fraction=max_bad_fraction)


def test_bad_files_are_skipped_counted_and_warned_about_once(damaged_root: Path) -> None:
    dataset = damaged_dataset(damaged_root, max_bad_fraction=0.9)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _epoch in range(2):
            videos = [dataset[index]["video"] for index in range(len(dataset))]
    warned = sorted(Path(str(w.message).split()[2]).name for w in caught if w.category is BadVideoWarning)
    assert warned == sorted(BAD_FILES)
    assert all(np.all(np.diff(frame_indices(video)) == 1) for video in videos)
    summary = dataset.failures
    assert (summary.attempted, summary.failed) == (len(dataset), len(BAD_FILES))
    assert summary.by_reason == {reason: list(BAD_FILES.values()).count(reason) for reason in summary.by_reason}
    assert "4 of 7 videos skipped" in str(summary)


def test_failures_in_workers_are_counted_in_the_main_process(damaged_root: Path) -> None:
    dataset = damaged_dataset(damaged_root, max_bad_fraction=0.9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BadVideoWarning)
        batches = list(DataLoader(dataset, batch_size=2, num_workers=2))
    assert sum(len(batch["video"]) for batch in batches) == len(dataset)
    assert dataset.failures.failed == 4 and dataset.failures.attempted == len(dataset)


def test_too_many_bad_files_stop_the_run_naming_examples(damaged_root: Path) -> None:
    batches = iter(DataLoader(damaged_dataset(damaged_root, max_bad_fraction=0.1), batch_size=7, num_workers=2))
    message = ""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BadVideoWarning)
        try:
            next(batches)
        except TooManyBadVideosError as error:
            message = str(error)
            error.__traceback__ = None  # else torch's re-raise keeps the workers in a cycle, and exit waits 5 s
    assert "max_bad_fraction=0.1" in message
    assert any(name in message for name in BAD_FILES)


def test_a_dataset_of_only_bad_files_fails_clearly(tmp_path: Path) -> None:
    write_bad_files(tmp_path)
    dataset = VideoFolderDataset(folder_records(tmp_path), ClipSampling(num_frames=8), min_attempts=100)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BadVideoWarning)
        with pytest.raises(TooManyBadVideosError, match="4 of 4 videos skipped"):
            dataset[0]


def test_ucf101_split_files_give_zero_based_labels_and_match_case_insensitively(tmp_path: Path) -> None:
    splits = tmp_path / "ucfTrainTestlist"
    splits.mkdir()
    (splits / "classInd.txt").write_text("1 ApplyEyeMakeup\n2 HandstandPushups\n")
    (splits / "trainlist01.txt").write_text(
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\nHandstandPushups/v_HandStandPushups_g08_c01.avi 2\n"
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g09_c01.avi 1\n"
    )
    (splits / "testlist01.txt").write_text("HandstandPushups/v_HandStandPushups_g01_c01.avi\n")
    for name in (
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi",
        "HandstandPushups/v_HandStandPushups_g08_c01.avi",
        "HandstandPushups/v_HandStandPushups_g01_c01.avi",
    ):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).touch()

    with pytest.warns(UserWarning, match="1 of 3 videos listed"):
        train, classes = ucf101_records(tmp_path, split="train", fold=1)
    test, _ = ucf101_records(tmp_path, split="test", fold=1)
    assert classes == ["ApplyEyeMakeup", "HandstandPushups"]
    assert [(record.path.name, record.label) for record in train] == [
        ("v_ApplyEyeMakeup_g08_c01.avi", 0),
        ("v_HandStandPushups_g08_c01.avi", 1),
    ]
    assert [(record.path.name, record.label) for record in test] == [("v_HandStandPushups_g01_c01.avi", 1)]
    with pytest.raises(FileNotFoundError, match="UCF101TrainTestSplits"):
        ucf101_records(tmp_path, split="test", fold=2)


def test_kinetics_csv_names_files_by_youtube_id_and_times(tmp_path: Path) -> None:
    rows = [
        ("abseiling", "aaa", 0, 10),
        ("zumba", "bbb", 31, 41),
        ("abseiling", "ccc", 5, 15),
        ("zumba", "gone", 1, 11),
    ]
    (tmp_path / "train.csv").write_text(
        "label,youtube_id,time_start,time_end,split\n"
        + "".join(f"{label},{yid},{start},{end},train\n" for label, yid, start, end in rows)
    )
    (tmp_path / "test.csv").write_text("youtube_id,time_start,time_end,split\nbbb,31,41,test\n")
    for label, yid, start, end in rows[:3]:
        (tmp_path / "videos" / label).mkdir(parents=True, exist_ok=True)
        (tmp_path / "videos" / label / f"{yid}_{start:06d}_{end:06d}.mp4").touch()

    with pytest.warns(UserWarning, match="1 of 4 videos listed"):
        records, classes = kinetics_records(tmp_path / "videos", tmp_path / "train.csv")
    assert classes == ["abseiling", "zumba"]
    assert [(record.path.name, record.label) for record in records] == [
        ("aaa_000000_000010.mp4", 0),
        ("bbb_000031_000041.mp4", 1),
        ("ccc_000005_000015.mp4", 0),
    ]
    unlabelled, _ = kinetics_records(tmp_path / "videos", tmp_path / "test.csv", classes)
    assert [record.label for record in unlabelled] == [-1]
    (tmp_path / "bad.csv").write_text("name,start\nx,1\n")
    with pytest.raises(ValueError, match="youtube_id"):
        kinetics_records(tmp_path / "videos", tmp_path / "bad.csv")


def test_the_dataset_registry_builds_each_video_layout(class_root: Path) -> None:
    def dataset(name: str, root: Path):
        config = DataConfig(dataset=name, path=str(root), num_frames=4, frame_size=32)
        return build_dataset(config, "eval")

    assert dataset("video_folder", class_root)[0]["label"] == -1
    labelled = dataset("class_folders", class_root)
    assert labelled.classes == ["jump", "walk"] and labelled.describe()["clips"]["num_frames"] == 4
    assert dataset("kinetics600", class_root).classes == ["jump", "walk"]  # no annotations: class folders
    with pytest.raises(ConfigError, match="kinetics600"):
        dataset("ucf", class_root)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        dataset("video_folder", class_root / "nowhere")
    assert VideoRecord(class_root).label == -1
