"""`mimo fvd REAL FAKE`: folders of MP4s, .npz files and saved statistics, with a protocol card in every report.

The I3D's weights are not available offline, so a small stand-in feature extractor is passed in
(or patched in for the command line); the protocol, caching and card do not depend on which."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mimo.cli import main
from mimo.data.media import to_uint8, write_video
from mimo.data.synthetic import MovingShapes
from mimo.data.video_folder import ClipSampling, VideoFolderDataset, folder_records
from mimo.metrics import fvd_protocol
from mimo.metrics.fvd_protocol import FVDProtocol, FVDProtocolError, fvd_between
from test_fvd import RandomFeatures

VIDEOS, FRAMES, SIZE = 12, 10, 32
PROTOCOL = FVDProtocol(num_frames=8, frame_stride=1, resolution=SIZE)

pytestmark = pytest.mark.usefixtures("single_thread")


def _features(dim: int = 6) -> RandomFeatures:
    torch.manual_seed(0)  # the projection's bias comes from the global generator
    return RandomFeatures(dim)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MIMO_CACHE", str(tmp_path / "cache"))


def _folder(root: Path, seed: int, noise: float = 0.0) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    shapes = MovingShapes(VIDEOS, frame_size=SIZE, num_frames=FRAMES, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    for index in range(VIDEOS):
        video = shapes[index]["video"]
        video = video + noise * torch.randn(video.shape, generator=generator)
        write_video(root / f"video_{index:02d}.mp4", to_uint8(video))
    return root


@pytest.fixture(scope="module")
def real_folder(tmp_path_factory) -> Path:
    return _folder(tmp_path_factory.mktemp("real"), seed=0)


@pytest.fixture(scope="module")
def noisy_folder(tmp_path_factory) -> Path:
    return _folder(tmp_path_factory.mktemp("noisy"), seed=1, noise=0.5)


def test_fvd_of_a_folder_with_itself_is_zero_and_with_other_videos_is_not(real_folder, noisy_folder):
    same = fvd_between(real_folder, real_folder, PROTOCOL, _features(), "stand-in")
    other = fvd_between(real_folder, noisy_folder, PROTOCOL, _features(), "stand-in")
    assert abs(same["fvd"]) < 1e-6
    assert other["fvd"] > 1e-3


def test_an_npz_of_the_decoded_clips_is_the_same_set_as_the_folder(real_folder, tmp_path):
    clips = ClipSampling(num_frames=8, size=SIZE, random_clips=False, start_at_zero=True)
    dataset = VideoFolderDataset(folder_records(real_folder), clips)
    np.savez(tmp_path / "set.npz", samples=torch.stack([dataset[i]["video"] for i in range(VIDEOS)]).numpy())
    report = fvd_between(real_folder, tmp_path / "set.npz", PROTOCOL, _features(), "stand-in")
    assert abs(report["fvd"]) < 1e-4
    assert report["fake"] == {"path": str(tmp_path / "set.npz"), "kind": "npz", "clips": VIDEOS}


def test_real_statistics_are_cached_and_shareable_with_their_card(real_folder, noisy_folder, tmp_path):
    saved = tmp_path / "ucf-real"
    first = fvd_between(real_folder, noisy_folder, PROTOCOL, _features(), "stand-in", save_real_statistics=saved)
    again = fvd_between(real_folder, noisy_folder, PROTOCOL, _features(), "stand-in")
    assert "cache" in again["real"] and Path(again["real"]["cache"]).is_file()
    shared = fvd_between(first["real"]["saved"], noisy_folder, PROTOCOL, _features(), "stand-in")
    assert shared["real"]["kind"] == "statistics"
    assert again["fvd"] == pytest.approx(first["fvd"], rel=1e-6)
    assert shared["fvd"] == pytest.approx(first["fvd"], rel=1e-6)
    card = json.loads(saved.with_suffix(".json").read_text())
    assert card["real_clips"] == VIDEOS and card["feature_extractor"]["source"] == "stand-in"


def test_saved_statistics_of_another_protocol_or_extractor_are_refused(real_folder, noisy_folder, tmp_path):
    saved = tmp_path / "real"
    fvd_between(real_folder, noisy_folder, PROTOCOL, _features(), "stand-in", save_real_statistics=saved)
    stats = saved.with_suffix(".safetensors")
    with pytest.raises(FVDProtocolError, match="frame_stride"):
        fvd_between(stats, noisy_folder, FVDProtocol(8, 2, SIZE), _features(), "stand-in")
    with pytest.raises(FVDProtocolError, match="sha256"):
        fvd_between(stats, noisy_folder, PROTOCOL, _features(dim=7), "stand-in")


def test_every_report_carries_the_protocol_card(real_folder, noisy_folder, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("mimo.metrics.i3d.load_i3d", lambda *args, **kwargs: _features())
    out = tmp_path / "fvd.json"
    args = ["fvd", str(real_folder), str(noisy_folder), "--frames", "8", "--resolution", str(SIZE)]
    assert main([*args, "--normaliser", "stylegan-v", "--max-videos", "10", "--out", str(out)]) == 0
    card = json.loads(out.read_text())["protocol"]
    assert card["real_clips"] == card["fake_clips"] == 10
    assert (card["num_frames"], card["frame_stride"], card["resolution"]) == (8, 1, SIZE)
    assert card["start_at_zero"] is True and card["seed"] == 0
    assert card["covariance"] == "stylegan-v (divisor n - 0)"
    assert card["feature_extractor"]["source"] == fvd_protocol.I3D_PORT_SOURCE
    assert len(card["feature_extractor"]["sha256"]) == 64
    assert "| normaliser | stylegan-v |" in out.with_suffix(".md").read_text()


def test_latent_samples_in_an_npz_are_refused_with_the_fix(real_folder, tmp_path, capsys):
    np.savez(tmp_path / "latents.npz", samples=np.zeros((2, 8, 4, 4, 4), dtype=np.float32))
    assert main(["fvd", str(real_folder), str(tmp_path / "latents.npz"), "--frames", "8"]) == 2
    assert "decoded" in capsys.readouterr().err
