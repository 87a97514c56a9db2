"""Bring your own input: continue a video file with `mimo sample --context`, start a run from another's weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mimo.cli import main
from mimo.data.media import to_uint8, write_video
from mimo.data.synthetic import MovingShapes
from mimo.data.video_folder import ClipSampling, read_clip, to_unit_range
from mimo.train.checkpoint import find_checkpoint, load_tensors

SIZE, FRAMES = 16, 4
MICRO = ["model.preset=micro", "model.patch_size=4", "train.batch_size=2", "train.tensorboard=false", "sample.steps=1"]

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("videos")
    shapes = MovingShapes(4, frame_size=SIZE, num_frames=12, seed=5)
    for index in range(4):
        (root / f"class_{index % 2}").mkdir(exist_ok=True)
        write_video(root / f"class_{index % 2}" / f"clip_{index}.mp4", to_uint8(shapes[index]["video"]))
    return root


def _data(videos: Path) -> list[str]:
    return ["data.dataset=class_folders", f"data.path={videos}", f"data.frame_size={SIZE}", f"data.num_frames={FRAMES}"]


@pytest.fixture(scope="module")
def conditional_run(videos, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "run"
    args = [*_data(videos), "data.num_classes=2", "train.task=class_conditional", *MICRO]
    assert main(["train", *args, "train.steps=1", f"train.out_dir={out}"]) == 0
    return out


def test_sample_continues_a_users_video_from_its_first_frames(conditional_run, videos, tmp_path):
    clip = videos / "class_1" / "clip_1.mp4"
    out = tmp_path / "continued"
    args = ["sample", str(conditional_run), "--context", str(clip), "--context-frames", "2", "--frames", "6"]
    assert main([*args, "--label", "1", "--out", str(out), "sample.steps=1"]) == 0
    continued = np.load(out / "continued.npz")["samples"]
    assert continued.shape == (1, 6, 3, SIZE, SIZE)
    given = to_unit_range(read_clip(clip, ClipSampling(num_frames=2, size=SIZE, start_at_zero=True)))
    torch.testing.assert_close(torch.from_numpy(continued[0, :2]), given)  # the user's frames are kept as given
    assert (out / "continued.mp4").is_file() and (out / "continued.gif").is_file()


def test_a_class_conditional_continuation_asks_for_its_label(conditional_run, videos, tmp_path, capsys):
    clip = videos / "class_0" / "clip_0.mp4"
    assert main(["sample", str(conditional_run), "--context", str(clip), "--out", str(tmp_path)]) == 2
    assert "--label" in capsys.readouterr().err
    assert main(["sample", str(conditional_run), "--context", str(clip), "--label", "7", "--out", str(tmp_path)]) == 2
    assert "0..1" in capsys.readouterr().err


def test_a_video_shorter_than_the_context_says_how_long_it_must_be(conditional_run, tmp_path, capsys):
    short = tmp_path / "short.mp4"
    write_video(short, to_uint8(MovingShapes(1, frame_size=SIZE, num_frames=2, seed=0)[0]["video"]))
    args = ["sample", str(conditional_run), "--context", str(short), "--context-frames", "3", "--label", "0"]
    assert main([*args, "--frames", "5", "--out", str(tmp_path)]) == 2
    assert "at least 3 frames" in capsys.readouterr().err


def _backbone(run: Path) -> dict[str, torch.Tensor]:
    tensors = load_tensors(find_checkpoint(run) / "model.safetensors")
    return {key: value for key, value in tensors.items() if key.startswith("backbone.")}


def test_a_run_starts_from_another_runs_weights_for_an_unmasked_tail(conditional_run, videos, tmp_path):
    tail = tmp_path / "tail"
    args = [*_data(videos), "data.num_classes=2", "train.task=class_conditional", *MICRO, "train.steps=1"]
    # the unmasked tail: MiMo's weights, trained on without the masked-history loss; a step too small to move them
    tail_args = [*args, f"train.out_dir={tail}", f"train.init_from={conditional_run}", "mimo.weight=0"]
    assert main(["train", *tail_args, "train.lr=1e-12"]) == 0
    source, started = _backbone(conditional_run), _backbone(tail)
    assert source.keys() == started.keys()
    for key in source:
        torch.testing.assert_close(started[key], source[key], rtol=0, atol=1e-6)
    fresh = tmp_path / "fresh"
    assert main(["train", *args, f"train.out_dir={fresh}", "mimo.weight=0", "train.lr=1e-12"]) == 0
    assert any(not torch.allclose(_backbone(fresh)[key], source[key]) for key in source)


def test_init_from_another_architecture_names_the_key(conditional_run, videos, tmp_path, capsys):
    args = [*_data(videos), "data.num_classes=2", "train.task=class_conditional", *MICRO, "model.preset=tiny"]
    code = main(["train", *args, "train.steps=1", f"train.out_dir={tmp_path}", f"train.init_from={conditional_run}"])
    assert code == 2
    assert "train.init_from" in capsys.readouterr().err
