"""The whole real-data path through the CLI: a folder of MP4s (with bad files) → clips → a random tiny
AutoencoderKL → latents on disk → a few training steps → sampling decoded back to pixels."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from mimo.cli import main
from mimo.data.latents import read_manifest
from mimo.data.media import to_uint8, write_video
from mimo.data.synthetic import MovingShapes

pytestmark = pytest.mark.usefixtures("single_thread")

GOOD_VIDEOS, SIZE, FRAMES = 6, 16, 4
MICRO_MODEL = ["model.preset=micro", "model.patch_size=4", "train.batch_size=2", "train.tensorboard=false"]


@pytest.fixture(scope="module")
def video_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two class folders of moving-shapes MP4s, plus a corrupt and a two-frame file."""
    root = tmp_path_factory.mktemp("videos")
    shapes = MovingShapes(GOOD_VIDEOS, frame_size=32, num_frames=12, seed=3)
    for index in range(GOOD_VIDEOS):
        folder = root / f"class_{index % 2}"
        folder.mkdir(exist_ok=True)
        write_video(folder / f"clip_{index}.mp4", to_uint8(shapes[index]["video"]))
    (root / "class_0" / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(2048))
    write_video(root / "class_1" / "short.mp4", to_uint8(shapes[0]["video"][:2]))
    return root


def _video_data(root: Path) -> list[str]:
    return ["data.dataset=class_folders", f"data.path={root}", f"data.frame_size={SIZE}", f"data.num_frames={FRAMES}"]


def test_folder_to_latents_to_training_to_decoded_samples(video_root, vae_dir, tmp_path, capsys):
    latents = tmp_path / "latents"
    data = [*_video_data(video_root), "data.max_bad_fraction=0.5"]
    assert main(["data", "encode", *data, "--vae", str(vae_dir), "--out", str(latents), "--shard-size", "3"]) == 0
    assert f"{GOOD_VIDEOS} whole videos" in capsys.readouterr().out  # the corrupt and the short file skipped
    assert read_manifest(latents)["dataset"]["classes"] == ["class_0", "class_1"]
    run = tmp_path / "run"
    latent_data = ["data.dataset=latents", f"data.path={latents}", "data.frame_size=8", "data.channels=4"]
    train = [*latent_data, f"data.num_frames={FRAMES}", *MICRO_MODEL, "train.steps=2", f"train.out_dir={run}"]
    assert main(["train", *train, "sample.steps=2"]) == 0
    assert (run / "checkpoints").is_dir() and list((run / "samples").glob("*.gif"))
    out = tmp_path / "samples"
    assert main(["sample", str(run), "--out", str(out), "--num-videos", "2", "sample.steps=2"]) == 0
    stored = np.load(out / "samples.npz")["samples"]
    assert stored.shape == (2, FRAMES, 4, 8, 8)  # latents are stored as sampled
    assert (out / "grid.gif").is_file() and (out / "sample_000.mp4").is_file()  # pictures are decoded pixels


def test_a_configured_latent_shape_that_differs_from_the_files_names_the_key(video_root, vae_dir, tmp_path, capsys):
    latents = tmp_path / "latents"
    main(
        [
            "data",
            "encode",
            *_video_data(video_root),
            "data.max_bad_fraction=0.5",
            "--vae",
            str(vae_dir),
            "--out",
            str(latents),
        ]
    )
    code = main(
        [
            "train",
            "data.dataset=latents",
            f"data.path={latents}",
            "data.frame_size=16",
            "data.channels=4",
            f"data.num_frames={FRAMES}",
            *MICRO_MODEL,
            "train.steps=1",
            f"train.out_dir={tmp_path / 'run'}",
        ]
    )
    assert code == 2
    assert "data.frame_size" in capsys.readouterr().err


def test_the_bad_videos_skipped_are_reported_when_their_count_changes(video_root, tmp_path, capsys):
    run = tmp_path / "run"
    # 8 files, 2 clips a step: an epoch every 4 steps; every bad file is met in the first epoch
    args = [
        *_video_data(video_root),
        "data.max_bad_fraction=0.5",
        *MICRO_MODEL,
        "train.steps=9",
        f"train.out_dir={run}",
        "sample.steps=1",
    ]
    assert main(["train", *args]) == 0
    captured = capsys.readouterr()
    assert "epoch 1 done: 2 of 8 videos skipped" in captured.out + captured.err
    assert "epoch 2 done" not in captured.out + captured.err  # nothing new to report


def test_too_many_bad_videos_end_the_command_with_one_line_naming_them(video_root, tmp_path, capsys):
    from mimo.data.video_folder import TooManyBadVideosError

    args = [*_video_data(video_root), *MICRO_MODEL, "train.steps=5", f"train.out_dir={tmp_path / 'run'}"]
    assert main(["train", *args]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("mimo train: error:") and re.search(r"corrupt\.mp4|short\.mp4", error)
    with pytest.raises(TooManyBadVideosError, match=r"corrupt\.mp4|short\.mp4"):  # --debug: the traceback
        main(["train", "--debug", *args])
