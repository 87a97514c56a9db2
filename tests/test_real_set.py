"""Evaluation against real pixels, and along long videos, on a latent run trained from small MP4s.

The run: moving-shapes MP4s → whole-video latents of a random tiny AutoencoderKL → one training
step. FVD uses a small stand-in feature extractor (the I3D's weights are not available offline).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml

import mimo.evaluation.metrics
from mimo.cli import main
from mimo.config import ConfigError, load_config
from mimo.data.latents import latent_autoencoder
from mimo.data.media import to_uint8, write_video
from mimo.data.real_set import evaluation_videos
from mimo.data.synthetic import MovingShapes
from mimo.data.video_folder import ClipSampling, VideoFolderDataset, class_folder_records
from mimo.evaluation.evaluate import evaluate_run
from mimo.metrics.fvd import extract_feature_statistics
from mimo.models.autoencoder import to_model_space, to_pixels
from mimo.train.checkpoint import load_trained_model
from test_fvd import RandomFeatures

VIDEOS, SIZE, FRAMES, LONG = 6, 16, 4, 10
MICRO = ["model.preset=micro", "model.patch_size=4", "train.batch_size=2", "train.tensorboard=false"]

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def videos_yaml(tmp_path_factory) -> Path:
    """Class folders of 12-frame MP4s, and the YAML that names them (as configs/ucf101/pixels.yaml does)."""
    root = tmp_path_factory.mktemp("videos")
    shapes = MovingShapes(VIDEOS, frame_size=SIZE, num_frames=12, seed=3)
    for index in range(VIDEOS):
        (root / f"class_{index % 2}").mkdir(exist_ok=True)
        write_video(root / f"class_{index % 2}" / f"clip_{index}.mp4", to_uint8(shapes[index]["video"]))
    path = root / "videos.yaml"
    data = {"dataset": "class_folders", "path": str(root), "frame_size": SIZE, "num_frames": FRAMES, "num_classes": 2}
    path.write_text(yaml.safe_dump({"data": data}))
    return path


@pytest.fixture(scope="module")
def latent_run(videos_yaml, vae_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("latent_run")
    latents = out / "latents"
    assert main(["data", "encode", str(videos_yaml), "--vae", str(vae_dir), "--out", str(latents)]) == 0
    data = ["data.dataset=latents", f"data.path={latents}", f"data.videos={videos_yaml}", "data.frame_size=8"]
    data += ["data.channels=4", f"data.num_frames={FRAMES}"]
    assert main(["train", *data, *MICRO, "train.steps=1", f"train.out_dir={out / 'run'}", "sample.steps=1"]) == 0
    return out / "run"


def _clips_of_the_files(videos_yaml: Path, num_frames: int) -> list[torch.Tensor]:
    """Every evaluation clip the MP4s give, read straight from the files."""
    root = Path(load_config(videos_yaml).data.path)
    dataset = VideoFolderDataset(
        class_folder_records(root)[0], ClipSampling(num_frames=num_frames, size=SIZE, random_clips=False)
    )
    return [dataset[index]["video"] for index in range(len(dataset))]


def test_the_real_set_of_a_latent_run_is_the_videos_pixels_not_decoded_latents(
    latent_run, videos_yaml, tmp_path, monkeypatch
):
    compared: list[torch.Tensor] = []

    def recording_statistics(videos, *args, **kwargs):
        compared.append(videos)
        return extract_feature_statistics(videos, *args, **kwargs)

    monkeypatch.setattr(mimo.evaluation.metrics, "extract_feature_statistics", recording_statistics)
    overrides = ["eval.num_videos=6", "eval.metrics=fvd", "sample.steps=1"]
    results = evaluate_run(latent_run, overrides, tmp_path, extractor=RandomFeatures(), extractor_source="stand-in")
    real = compared[0]
    files = _clips_of_the_files(videos_yaml, FRAMES)
    assert all(any(torch.equal(clip, candidate) for candidate in files) for clip in real)
    _, config = load_trained_model(latent_run)
    autoencoder = latent_autoencoder(config.data)
    decoded = to_pixels(to_model_space(real, autoencoder), autoencoder)
    assert (decoded - real).abs().mean() > 0.05  # the random VAE reconstructs badly: decoded latents differ
    # the VAE-reconstruction FVD is the separate upper-bound row, and the card says what was compared
    assert results["metrics"]["fvd_vae_reconstruction"]["mean"] > 0
    card = results["protocol"]
    assert card["real_videos"]["path"] == load_config(videos_yaml).data.path
    assert (card["real_clips"], card["num_frames"], card["resolution"]) == (6, FRAMES, SIZE)
    assert card["feature_extractor"]["source"] == "stand-in"
    assert "| covariance |" in (tmp_path / "eval.md").read_text()


def test_long_generations_are_scored_per_window_and_per_frame(latent_run, tmp_path):
    overrides = ["eval.num_videos=6", "eval.metrics=fvd,psnr", f"eval.num_frames={LONG}", "eval.drift_hop=3"]
    results = evaluate_run(latent_run, [*overrides, "sample.steps=1"], tmp_path, extractor=RandomFeatures())
    drift = results["drift"]
    assert drift["window"] == FRAMES
    assert drift["fvd"]["frame"] == [4, 7, 10]  # windows of 4 every 3 frames, the last one ending the video
    assert len(drift["fvd"]["mean"]) == 3 and all(value >= 0 for value in drift["fvd"]["mean"])
    context = 2
    assert drift["psnr"]["frame"] == list(range(context + 1, LONG + 1))
    assert Path(drift["fvd"]["plot"]).is_file() and Path(drift["psnr"]["plot"]).is_file()
    assert results["num_frames"] == LONG and results["protocol"]["num_frames"] == LONG


def test_a_latent_run_without_its_videos_says_which_key_names_them(latent_run):
    _, config = load_trained_model(latent_run)
    anonymous = replace(config, data=replace(config.data, videos=None))
    with pytest.raises(ConfigError, match=r"eval\.videos"):
        evaluation_videos(anonymous)
