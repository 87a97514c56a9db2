"""Whole-video latents: every frame encoded once, a fresh clip window cut at every read.

The videos are ramps (frame t is grey level 10 + 6t, see test_video_folder), encoded with the
identity autoencoder, so a latent window tells which frames it holds.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from mimo.config import DataConfig
from mimo.data import build_dataset
from mimo.data.clip_windows import VideoLatentDataset, encode_videos, latent_bytes_per_frame, latent_disk_bytes
from mimo.data.latents import read_manifest
from mimo.data.media import write_video
from mimo.data.video_folder import ClipSampling, class_folder_records
from mimo.models.autoencoder import IdentityAutoencoder
from test_video_folder import frame_indices, ramp

LENGTHS = (40, 24, 31)  # frames of each video
SIZE = 16

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def latents_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("videos")
    for index, length in enumerate(LENGTHS):
        (root / f"class_{index % 2}").mkdir(exist_ok=True)
        write_video(root / f"class_{index % 2}" / f"video_{index}.mp4", ramp(length, 32, 48))
    write_video(root / "class_0" / "short.mp4", ramp(3, 32, 48))  # shorter than a clip: skipped
    records, classes = class_folder_records(root)
    clips = ClipSampling(num_frames=4, frame_stride=2, size=SIZE)
    out = tmp_path_factory.mktemp("latents")
    with pytest.warns(UserWarning, match="short.mp4"):
        encode_videos(records, clips, IdentityAutoencoder(), out, videos_per_shard=2, classes=classes, progress=False)
    return out


@pytest.fixture(scope="module")
def columns_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One 12-frame video whose columns are grey levels 0, 8, 16, ... stored uncropped (16 x 24)."""
    root = tmp_path_factory.mktemp("columns")
    columns = np.broadcast_to((np.arange(48, dtype=np.uint8) * 5)[None, None, :, None], (12, 32, 48, 3)).copy()
    (root / "class_0").mkdir()
    write_video(root / "class_0" / "columns.mp4", columns)
    records, _ = class_folder_records(root)
    out = tmp_path_factory.mktemp("column_latents")
    encode_videos(records, ClipSampling(num_frames=4, size=SIZE), IdentityAutoencoder(), out, progress=False)
    return out


def test_whole_videos_are_stored_frame_by_frame(latents_dir: Path) -> None:
    manifest = read_manifest(latents_dir)
    assert sum(shard["count"] for shard in manifest["shards"]) == len(LENGTHS)
    assert sum(shard["frames"] for shard in manifest["shards"]) == sum(LENGTHS)
    assert any("short.mp4" in path for shard in manifest["shards"] for path in shard["skipped"])


def test_every_read_draws_a_fresh_window_of_strided_frames(latents_dir: Path) -> None:
    torch.manual_seed(0)
    dataset = VideoLatentDataset(latents_dir, ClipSampling(num_frames=4, frame_stride=2, size=None))
    assert len(dataset) == len(LENGTHS)
    starts = set()
    for _ in range(12):
        item = dataset[0]
        assert item["video"].shape == (4, 3, SIZE, SIZE)
        frames = frame_indices(item["video"])
        assert np.all(np.diff(frames) == 2) and frames[-1] < LENGTHS[0]
        starts.add(frames[0])
    assert len(starts) > 3  # 33 possible starts: fixed clips would give one


def test_evaluation_windows_depend_only_on_seed_and_index(latents_dir: Path) -> None:
    def first_frames(clips: ClipSampling) -> list[int]:
        dataset = VideoLatentDataset(latents_dir, clips)
        return [frame_indices(dataset[i]["video"])[0] for i in range(len(dataset))]

    seeded = ClipSampling(num_frames=4, frame_stride=2, random_clips=False, seed=5)
    assert first_frames(seeded) == first_frames(seeded)
    assert first_frames(ClipSampling(num_frames=4, random_clips=False, start_at_zero=True)) == [0, 0, 0]


def test_training_on_latents_reads_windows_through_the_config(latents_dir: Path) -> None:
    config = DataConfig(dataset="latents", path=str(latents_dir), frame_size=SIZE, num_frames=4, frame_stride=3)
    item = build_dataset(config, "train")[1]
    assert np.all(np.diff(frame_indices(item["video"])) == 3)


def test_clips_longer_than_a_stored_video_name_the_fix(latents_dir: Path) -> None:
    with pytest.raises(ValueError, match=r"data\.num_frames"):
        VideoLatentDataset(latents_dir, ClipSampling(num_frames=20, frame_stride=2))


def test_each_read_cuts_a_fresh_square_out_of_uncropped_frames(columns_dir: Path) -> None:
    torch.manual_seed(0)
    dataset = VideoLatentDataset(columns_dir, ClipSampling(num_frames=4, size=None))
    assert dataset.shapes[0][2:] == (SIZE, 24)  # shorter side resized, the longer one kept in proportion
    left_columns = {round(dataset[0]["video"][0, 0, 0, 0].item(), 2) for _ in range(20)}
    assert len(left_columns) > 3  # 9 possible places: a stored centre crop would give one
    evaluation = VideoLatentDataset(columns_dir, ClipSampling(num_frames=4, random_clips=False))
    assert evaluation[0]["video"].shape == (4, 3, SIZE, SIZE)
    with safe_open(next(columns_dir.glob("shard_*.safetensors")), framework="pt") as handle:
        stored = handle.get_tensor("video_0")
    assert torch.equal(evaluation[0]["video"], stored[:4, :, :, 4:20].float())  # the centre square


def test_disk_cost_is_stored_frames_times_the_latent_frame_size(latents_dir: Path) -> None:
    stored = 0
    for file in sorted(latents_dir.glob("shard_*.safetensors")):
        with safe_open(file, framework="pt") as handle:
            stored += sum(handle.get_tensor(key).nbytes for key in handle.keys() if key.startswith("video_"))  # noqa: SIM118
    assert stored == latent_disk_bytes(sum(LENGTHS), (3, SIZE, 24))  # 32 x 48 videos: stored 16 x 24, uncropped
    # UCF-101 through the SD-VAE at 256 px: 4 x 32 x 32 float16 latents, 8 KiB a frame
    assert latent_bytes_per_frame((4, 32, 32)) == 8192


def test_encoding_resumes_the_shards_an_interruption_left(latents_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "latents"
    shutil.copytree(latents_dir, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["shards"], manifest["complete"] = manifest["shards"][:1], False  # killed after the first shard
    (copy / "manifest.json").write_text(json.dumps(manifest))
    records, classes = class_folder_records(Path(read_manifest(latents_dir)["shards"][0]["skipped"][0]).parents[1])
    clips = ClipSampling(num_frames=4, frame_stride=2, size=SIZE)
    # the second shard's file is there but unlisted (killed before the manifest was written): encoded again
    encode_videos(records, clips, IdentityAutoencoder(), copy, videos_per_shard=2, classes=classes, progress=False)
    assert read_manifest(copy)["shards"] == read_manifest(latents_dir)["shards"]
