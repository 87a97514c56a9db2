"""Frozen-encoder features of a dataset, cached on disk so that REPA training need not run the encoder.

The features are stored by `extract_features` through `mimo.data.latents.encode_dataset`, the same
resumable shards and manifest as latents, with each clip's features (T, h, w, E) in place of its latents and the
encoder's description in place of the autoencoder's. One entry per clip, in the dataset's
order, so the dataset must give the same clip for the same index every time (no random clips
or augmentation). With `grid` set, features are resized to the backbone's token grid once, at
extraction, with the same function the objective applies to live features.

`WithEncoderFeatures` pairs a dataset (pixels, or the latents of the same pixel clips) with its
cached features under `ENCODER_FEATURES_KEY`, which the training objective takes in place of
running the encoder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import Tensor, nn
from torch.utils.data import Dataset

from mimo.data.latents import LatentDataset, encode_dataset, read_manifest

ENCODER_FEATURES_KEY = "encoder_features"
FEATURES_NAME = "encoder_features"  # the manifest's "autoencoder.name" of cached features


def read_features_manifest(out_dir: str | Path) -> dict[str, Any]:
    """The manifest of cached features, refusing a directory of latents."""
    manifest = read_manifest(out_dir)
    if manifest["autoencoder"].get("name") != FEATURES_NAME:
        raise ValueError(
            f"{out_dir} holds latents of '{manifest['autoencoder'].get('name')}', not encoder features; "
            "extract features with mimo.data.encoder_features.extract_features"
        )
    return manifest


def cached_feature_dim(out_dir: str | Path) -> int:
    """E, the feature size of the features cached in `out_dir`."""
    return read_features_manifest(out_dir)["autoencoder"]["feature_dim"]


class _FeatureExtractor(nn.Module):
    """A frozen encoder seen as an autoencoder's `encode`/`describe`, which is what encode_dataset calls."""

    def __init__(self, encoder: nn.Module, grid: int | None):
        super().__init__()
        self.encoder = encoder
        self.grid = grid

    def encode(self, video: Tensor) -> Tensor:
        return self.encoder.encode_video(video, self.grid)

    def describe(self) -> dict[str, Any]:
        return {"name": FEATURES_NAME, **self.encoder.describe(), "grid": self.grid}


def extract_features(
    dataset: Dataset, encoder: nn.Module, out_dir: str | Path, grid: int | None = None, **options: Any
) -> dict[str, Any]:
    """Store `encoder`'s features of every clip of `dataset` (pixels in [-1, 1]) under `out_dir`.

    `encoder` is a frozen encoder (`mimo.models.encoders.FrameEncoder`, e.g. from `build_encoder`). `grid`:
    resize to the backbone's token grid (frame_size / patch_size) now, which makes the cache smaller when the
    encoder's grid is finer; None keeps the encoder's grid. `options` are those of `encode_dataset`
    (shard_size, batch_size, device, storage_dtype, ...). Rerun the same call after an interruption to
    finish the missing shards. Returns the manifest.
    """
    return encode_dataset(dataset, _FeatureExtractor(encoder, grid), out_dir, **options)


def _source_description(dataset: Dataset) -> dict[str, Any] | None:
    """What produced a dataset's clips, as JSON reads it back; None when the dataset does not say."""
    if isinstance(dataset, LatentDataset):
        return dataset.manifest["dataset"]
    if hasattr(dataset, "describe"):
        return json.loads(json.dumps(dataset.describe()))
    return None


class WithEncoderFeatures(Dataset):
    """The items of `dataset`, each with its cached features (T, h, w, E) under ENCODER_FEATURES_KEY.

    `encoder`, when given, must be the encoder the features were extracted with (a config string).
    """

    def __init__(self, dataset: Dataset, features_dir: str | Path, encoder: str | None = None):
        read_features_manifest(features_dir)
        self.dataset = dataset
        self.features = LatentDataset(features_dir)
        recorded = self.features.autoencoder["encoder"]
        if encoder is not None and recorded != encoder:
            raise ValueError(
                f"{features_dir} holds features of encoder '{recorded}', but the config asks for '{encoder}'; "
                "extract features with that encoder or change repa.encoder"
            )
        if len(self.features) != len(dataset):
            raise ValueError(
                f"{features_dir} holds features of {len(self.features)} clips, the dataset has {len(dataset)}; "
                "extract features from this very dataset"
            )
        source = _source_description(dataset)
        if source is not None and source != self.features.manifest["dataset"]:
            raise ValueError(
                f"{features_dir} was extracted from another dataset ({self.features.manifest['dataset']}) than "
                f"this one ({source}); extract features from this very dataset"
            )

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return {**self.dataset[index], ENCODER_FEATURES_KEY: self.features[index]["video"]}
