"""Autoencoders and latents on disk: folder -> clips -> small AutoencoderKL -> shards -> LatentDataset.

The AutoencoderKL is a random tiny one saved with diffusers' save_pretrained, then loaded
through mimo's loader; its outputs are checked against diffusers called directly.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from einops import rearrange
from torch.utils.data import DataLoader

from conftest import VAE_SCALE as SCALE
from conftest import VAE_SHIFT as SHIFT
from mimo.data.latents import MANIFEST, LatentDataset, encode_dataset, read_manifest, shard_name
from mimo.data.media import write_video
from mimo.data.video_folder import ClipSampling, VideoFolderDataset, class_folder_records
from mimo.models.autoencoder import (
    Autoencoder,
    DiffusersAutoencoderKL,
    IdentityAutoencoder,
    build_autoencoder,
    load_autoencoder_kl,
)

NUM_VIDEOS, NUM_FRAMES, SIZE = 5, 4, 16


pytestmark = pytest.mark.usefixtures("single_thread")  # tiny tensors gain nothing from threads


@pytest.fixture(scope="module")
def clips_dataset(tmp_path_factory: pytest.TempPathFactory) -> VideoFolderDataset:
    root = tmp_path_factory.mktemp("videos")
    rng = np.random.default_rng(0)
    for i in range(NUM_VIDEOS):
        (root / f"class_{i % 2}").mkdir(exist_ok=True)
        smooth = rng.integers(0, 256, (12, 3, 4, 3)).repeat(8, axis=1).repeat(8, axis=2).astype(np.uint8)
        write_video(root / f"class_{i % 2}" / f"video_{i}.mp4", smooth)
    records, classes = class_folder_records(root)
    clips = ClipSampling(num_frames=NUM_FRAMES, frame_stride=2, size=SIZE, random_clips=False, seed=3)
    return VideoFolderDataset(records, clips, classes)


class Interrupted(Exception):
    pass


class InterruptingAutoencoder(Autoencoder):
    """`inner`, but stopping after `calls_allowed` batches as a killed run would; counts its calls."""

    def __init__(self, inner: Autoencoder, calls_allowed: int | None = None) -> None:
        super().__init__()
        self.inner, self.calls_allowed, self.calls = inner, calls_allowed, 0

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        if self.calls == self.calls_allowed:
            raise Interrupted
        self.calls += 1
        return self.inner.encode(frames)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.inner.decode(latents)

    def describe(self) -> dict:
        return self.inner.describe()


def test_identity_autoencoder_is_the_pixels() -> None:
    frames = torch.rand(2, 3, 3, 8, 8) * 2 - 1
    autoencoder = build_autoencoder("identity")
    assert torch.equal(autoencoder.decode(autoencoder.encode(frames)), frames)
    assert autoencoder.latent_shape((3, 3, 8, 8)) == (3, 3, 8, 8)
    with pytest.raises(ValueError, match="autoencoder_kl"):
        build_autoencoder("sd-vae")


def test_autoencoder_kl_matches_diffusers_with_scale_and_shift(vae_dir: Path) -> None:
    frames = torch.rand(2, 3, 3, SIZE, SIZE) * 2 - 1
    autoencoder = build_autoencoder("autoencoder_kl", path=vae_dir, frames_per_call=4)
    reference_vae = load_autoencoder_kl(vae_dir)
    images = rearrange(frames, "b t c h w -> (b t) c h w")
    with torch.no_grad():
        z = reference_vae.encode(images).latent_dist.mode()
        decoded = reference_vae.decode(z).sample.clamp(-1, 1)

    latents = autoencoder.encode(frames)
    assert (autoencoder.scale, autoencoder.shift, autoencoder.downsample) == (SCALE, SHIFT, 2)
    assert latents.shape == (2, 3, *autoencoder.latent_shape((3, 3, SIZE, SIZE))[1:]) == (2, 3, 4, 8, 8)
    torch.testing.assert_close(latents, rearrange((z - SHIFT) * SCALE, "(b t) c h w -> b t c h w", b=2))
    torch.testing.assert_close(autoencoder.decode(latents), rearrange(decoded, "(b t) c h w -> b t c h w", b=2))
    with pytest.raises(ValueError, match="multiple of 2"):
        autoencoder.latent_shape((3, 3, 15, 16))


def test_missing_diffusers_says_which_extra_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "diffusers", None)
    with pytest.raises(ImportError, match=r"mimo\[vae\]"):
        DiffusersAutoencoderKL(tmp_path)


def test_missing_or_incomplete_vae_directories_say_how_to_get_one(vae_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"does not exist.*sd-vae-ft-ema"):
        load_autoencoder_kl(tmp_path / "nowhere")
    (tmp_path / "pipeline" / "vae").mkdir(parents=True)
    (tmp_path / "pipeline" / "vae" / "config.json").write_bytes((vae_dir / "config.json").read_bytes())
    with pytest.raises(FileNotFoundError, match="vae/ subfolder"):
        load_autoencoder_kl(tmp_path / "pipeline")
    with pytest.raises(FileNotFoundError, match=r"no weights.*incomplete"):
        load_autoencoder_kl(tmp_path / "pipeline" / "vae")


def test_latents_on_disk_read_back_as_the_encoded_clips(
    clips_dataset: VideoFolderDataset, vae_dir: Path, tmp_path: Path
) -> None:
    autoencoder = DiffusersAutoencoderKL(vae_dir)
    manifest = encode_dataset(clips_dataset, autoencoder, tmp_path, shard_size=2, batch_size=3, progress=False)
    latents = LatentDataset(tmp_path)

    assert [shard["file"] for shard in manifest["shards"]] == [shard_name(i) for i in range(3)]
    assert manifest == read_manifest(tmp_path)
    assert manifest["autoencoder"]["scale"] == SCALE and manifest["autoencoder"]["shift"] == SHIFT
    assert manifest["shapes"] == {"clip": [NUM_FRAMES, 3, SIZE, SIZE], "latent": [NUM_FRAMES, 4, SIZE // 2, SIZE // 2]}
    assert manifest["dataset"]["clips"]["seed"] == 3 and manifest["num_items"] == NUM_VIDEOS
    assert len(latents) == NUM_VIDEOS and latents.classes == clips_dataset.classes
    for index in range(NUM_VIDEOS):
        item, source = latents[index], clips_dataset[index]
        expected = autoencoder.encode(source["video"][None])[0]
        assert item["video"].dtype == torch.float32 and item["label"].dtype == torch.int64
        torch.testing.assert_close(item["video"], expected, atol=2e-3, rtol=2e-3)  # stored as float16
        assert item["label"] == source["label"]
    batches = list(DataLoader(latents, batch_size=2, num_workers=2))
    assert torch.equal(torch.cat([batch["label"] for batch in batches]), latents.labels)


def test_an_interrupted_encoding_resumes_where_it_stopped(
    clips_dataset: VideoFolderDataset, vae_dir: Path, tmp_path: Path
) -> None:
    vae = DiffusersAutoencoderKL(vae_dir)
    interrupted, fresh = tmp_path / "interrupted", tmp_path / "fresh"
    options = {"shard_size": 2, "batch_size": 1, "progress": False}
    with pytest.raises(Interrupted):
        encode_dataset(clips_dataset, InterruptingAutoencoder(vae, calls_allowed=3), interrupted, **options)
    assert sorted(path.name for path in interrupted.iterdir()) == [MANIFEST, shard_name(0)]
    with pytest.raises(RuntimeError, match="incomplete: 1 of 3 shards"):
        LatentDataset(interrupted)
    first_shard = (interrupted / shard_name(0)).stat()

    resumed = InterruptingAutoencoder(vae)
    encode_dataset(clips_dataset, resumed, interrupted, **options)
    encode_dataset(clips_dataset, vae, fresh, **options)

    assert resumed.calls == NUM_VIDEOS - 2  # only the clips of the unfinished shards
    assert (interrupted / shard_name(0)).stat().st_mtime_ns == first_shard.st_mtime_ns
    for index in range(NUM_VIDEOS):
        assert torch.equal(LatentDataset(interrupted)[index]["video"], LatentDataset(fresh)[index]["video"])


def test_encoding_refuses_a_directory_made_with_other_settings(
    clips_dataset: VideoFolderDataset, tmp_path: Path
) -> None:
    encode_dataset(clips_dataset, IdentityAutoencoder(), tmp_path, shard_size=2, progress=False)
    with pytest.raises(ValueError, match="shard_size"):
        encode_dataset(clips_dataset, IdentityAutoencoder(), tmp_path, shard_size=4, progress=False)
    (tmp_path / MANIFEST).unlink()
    with pytest.raises(ValueError, match=r"no manifest\.json"):
        encode_dataset(clips_dataset, IdentityAutoencoder(), tmp_path, shard_size=2, progress=False)


def test_reading_latents_that_were_never_encoded_says_how_to_encode(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="mimo data encode"):
        LatentDataset(tmp_path)
    (tmp_path / MANIFEST).write_text(json.dumps({"format_version": 0}))
    with pytest.raises(ValueError, match="format version"):
        LatentDataset(tmp_path)
