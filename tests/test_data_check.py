"""`mimo data check`: found / missing / unreadable videos and classes, on small MP4s written here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mimo.cli import main
from mimo.config import DataConfig
from mimo.data.check import UCF101_SPLIT_VIDEOS, UCF101_VIDEOS, check_data
from mimo.data.media import write_video
from test_video_folder import ramp

pytestmark = pytest.mark.usefixtures("single_thread")


def _videos(root: Path, names: list[str], frames: int = 12) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        write_video(root / name, ramp(frames, 16, 16))


def test_ucf101_split_reports_missing_unreadable_and_short_videos_by_name(tmp_path: Path) -> None:
    _videos(tmp_path, ["Walk/v_Walk_g01_c01.avi", "Jump/v_Jump_g01_c01.avi"])
    _videos(tmp_path, ["Jump/v_Jump_g02_c01.avi"], frames=2)
    (tmp_path / "Walk" / "v_Walk_g02_c01.avi").write_bytes(np.random.default_rng(0).bytes(1024))
    (tmp_path / "classInd.txt").write_text("1 Jump\n2 Walk\n")
    listed = ["Walk/v_Walk_g01_c01.avi", "Walk/v_Walk_g02_c01.avi", "Jump/v_Jump_g01_c01.avi"]
    listed += ["Jump/v_Jump_g02_c01.avi", "Jump/v_Jump_g03_c01.avi"]
    (tmp_path / "trainlist01.txt").write_text("\n".join(listed))
    data = DataConfig(dataset="ucf101", path=str(tmp_path), num_frames=4, num_classes=2)
    report = check_data(data)
    assert report.expected_videos == UCF101_SPLIT_VIDEOS[(1, "train")]
    assert report.found_videos == 4
    assert report.missing == ["jump/v_jump_g03_c01.avi"]
    assert list(report.unreadable) == [str(tmp_path / "Walk" / "v_Walk_g02_c01.avi")]
    assert report.too_short == [str(tmp_path / "Jump" / "v_Jump_g02_c01.avi")]
    assert report.found_classes == 2 and not report.ok


def test_all_of_ucf101_is_expected_to_hold_13320_videos(tmp_path: Path) -> None:
    _videos(tmp_path, [f"Class{i}/v_{i}.mp4" for i in range(3)])
    report = check_data(DataConfig(dataset="class_folders", path=str(tmp_path), num_classes=101, num_frames=4))
    assert report.expected_videos == UCF101_VIDEOS and report.expected_classes == 101
    assert report.found_videos == 3 and report.found_classes == 3 and not report.ok
    assert "13,320 expected" in str(report)


def test_kinetics_rows_without_a_file_are_missing(tmp_path: Path) -> None:
    _videos(tmp_path, ["abc_000001_000011.mp4", "def_000002_000012.mp4"])
    rows = ["label,youtube_id,time_start,time_end,split", "run,abc,1,11,test", "swim,def,2,12,test"]
    (tmp_path / "test.csv").write_text("\n".join([*rows, "run,ghi,3,13,test"]))
    data = DataConfig(dataset="kinetics600", path=str(tmp_path), annotations=str(tmp_path / "test.csv"), num_frames=4)
    report = check_data(data)
    assert report.expected_videos == 3 and report.found_videos == 2
    assert report.missing == ["ghi_000003_000013"]
    assert report.expected_classes == 600 and report.found_classes == 2


def test_the_command_exits_zero_only_when_the_data_is_complete(tmp_path: Path, capsys) -> None:
    _videos(tmp_path / "videos", ["a/1.mp4", "b/2.mp4"])
    data = ["data.dataset=class_folders", f"data.path={tmp_path / 'videos'}", "data.num_frames=4"]
    out = tmp_path / "report.json"
    assert main(["data", "check", *data, "data.num_classes=2", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["total_frames"] == 24
    assert "OK" in capsys.readouterr().out
    assert main(["data", "check", *data, "data.num_classes=3"]) == 1  # a class has no videos
    assert "NOT OK" in capsys.readouterr().out


def test_a_path_that_is_not_a_folder_says_which_key(tmp_path: Path, capsys) -> None:
    assert main(["data", "check", "data.dataset=class_folders", f"data.path={tmp_path / 'nowhere'}"]) == 2
    assert "data.path" in capsys.readouterr().err


def test_a_latent_config_is_checked_through_the_videos_it_names(tmp_path: Path, capsys) -> None:
    _videos(tmp_path / "videos", ["a/1.mp4", "b/2.mp4"])
    videos = tmp_path / "videos.yaml"
    videos.write_text(f"data: {{dataset: class_folders, path: {tmp_path / 'videos'}, num_frames: 4, num_classes: 2}}")
    latents = ["data.dataset=latents", f"data.path={tmp_path / 'latents'}"]
    assert main(["data", "check", *latents, f"data.videos={videos}"]) == 0
    assert main(["data", "check", *latents]) == 2
    assert "data.videos" in capsys.readouterr().err


def test_the_disk_cost_of_whole_video_latents_follows_the_frames_and_their_aspect(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    write_video(tmp_path / "a" / "wide.mp4", ramp(12, 16, 32))  # 2:1, 12 frames
    report = check_data(DataConfig(dataset="class_folders", path=str(tmp_path), frame_size=32, num_frames=4))
    assert report.total_frames == 12
    # SD-VAE latents of a 32 px clip: 4 x 4 x 4 centre squares, 4 x 4 x 8 uncropped; 2 bytes a value
    assert report.centre_crop_disk_bytes == 12 * 4 * 4 * 4 * 2
    assert report.latent_disk_bytes == 12 * 4 * 4 * 8 * 2
