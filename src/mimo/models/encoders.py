"""Frozen image encoders: frames (B, C, H, W) in [-1, 1] → a grid of token features (B, h, w, E).

REPA aligns the backbone with such an encoder, and the representation metrics compare against
one. Any `FrameEncoder` subclass plugs in; three kinds are built from a config string:

- `random`: `RandomEncoder`, random convolutional features that need no weights (tests, CPU);
- `timm:MODEL_NAME`: a timm ViT, weights from a local file (`encoder_path`);
- `dinov2:ARCH` (vits14, vitb14, vitl14, vitg14, with `_reg` for the register variants): DINOv2,
  REPA's default encoder. Meta's original checkpoint file (`dinov2_vitb14_pretrain.pth`) or timm's
  port loads into timm's DINOv2 ViT, whose checkpoint filter renames Meta's keys and resamples
  the 37×37 position table to the input size; torch.hub's own DINOv2 only when downloading is allowed.

Weights are never fetched unless `allow_download` is set. ViT encoders return the final-norm
patch tokens (no class or register tokens), as REPA's `x_norm_patchtokens`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from mimo.config import RepaConfig

# DINOv2 and most timm ViTs normalise with the ImageNet statistics.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# REPA feeds DINOv2 224² inputs for 256² images (a 16×16 grid of 14-pixel patches).
REPA_IMAGE_SIZE = 224
DINOV2_HUB_REPO = "facebookresearch/dinov2"
DINOV2_TIMM_MODELS = {
    "vits14": "vit_small_patch14_dinov2",
    "vitb14": "vit_base_patch14_dinov2",
    "vitl14": "vit_large_patch14_dinov2",
    "vitg14": "vit_giant_patch14_dinov2",
    "vits14_reg": "vit_small_patch14_reg4_dinov2",
    "vitb14_reg": "vit_base_patch14_reg4_dinov2",
    "vitl14_reg": "vit_large_patch14_reg4_dinov2",
    "vitg14_reg": "vit_giant_patch14_reg4_dinov2",
}
# The random stand-in: 2-pixel patches give a finer grid than the backbone's, so resizing is exercised.
RANDOM_ENCODER_DIM = 32
RANDOM_ENCODER_PATCH = 2
RANDOM_ENCODER_SEED = 0


class FrameEncoder(nn.Module):
    """A frozen map from frames (B, C, H, W) in [-1, 1] to token features (B, h, w, E)."""

    spec: str  # the config string that builds it, recorded next to cached features
    feature_dim: int

    def freeze(self) -> FrameEncoder:
        self.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True) -> FrameEncoder:
        """Always in eval mode: a frozen target keeps its dropout off and its normalisation fixed."""
        return super().train(False)

    def describe(self) -> dict[str, Any]:
        """What produced these features, for manifests of cached features."""
        return {"encoder": self.spec, "feature_dim": self.feature_dim}

    @torch.no_grad()
    def encode_video(self, video: Tensor, grid: int | None = None) -> Tensor:
        """Features (B, T, h, w, E) of every frame of clips (B, T, C, H, W), without gradients; resized to the
        backbone's `grid` × `grid` tokens when given (what the REPA loss and the feature cache both need)."""
        frames = rearrange(video, "b t c h w -> (b t) c h w")
        features = rearrange(self(frames), "(b t) h w e -> b t h w e", b=video.shape[0])
        return features if grid is None else resize_grid(features, grid)


def resize_grid(features: Tensor, size: int) -> Tensor:
    """Features (..., h, w, E) resized bilinearly to (..., size, size, E); unchanged when already that size.

    Antialiased, so that shrinking a fine encoder grid averages every encoder token under a backbone
    token instead of sampling a few of them.
    """
    if features.shape[-3:-1] == (size, size):
        return features
    *leading, height, width, dim = features.shape
    images = rearrange(features.reshape(-1, height, width, dim), "n h w e -> n e h w").float()
    resized = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return rearrange(resized, "n e h w -> n h w e").reshape(*leading, size, size, dim).to(features.dtype)


class RandomEncoder(FrameEncoder):
    """Random convolutional features with the encoder interface: REPA runs without any weights.

    Odd (bias-free convolutions around tanh), so that features of varied content point in varied
    directions rather than sharing one offset that a constant projection could match.
    """

    def __init__(
        self,
        channels: int = 3,
        feature_dim: int = RANDOM_ENCODER_DIM,
        patch_size: int = RANDOM_ENCODER_PATCH,
        seed: int = RANDOM_ENCODER_SEED,
    ):
        super().__init__()
        self.spec = "random"
        self.feature_dim = feature_dim
        self.patchify = nn.Conv2d(channels, feature_dim, patch_size, stride=patch_size, bias=False)
        self.mix = nn.Conv2d(feature_dim, feature_dim, 1, bias=False)
        # Its own generator: the same encoder on every rank and in every run, whatever the training seed.
        generator = torch.Generator().manual_seed(seed)
        for conv in (self.patchify, self.mix):
            nn.init.normal_(conv.weight, std=conv.weight[0].numel() ** -0.5, generator=generator)
        self.freeze()

    def forward(self, frames: Tensor) -> Tensor:
        return rearrange(self.mix(torch.tanh(self.patchify(frames))), "b e h w -> b h w e")


class ViTEncoder(FrameEncoder):
    """A ViT's final-norm patch tokens as a grid: a timm VisionTransformer or DINOv2's own."""

    def __init__(
        self,
        vit: nn.Module,
        spec: str,
        feature_dim: int,
        image_size: int,
        num_prefix_tokens: int,
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
        weights: str = "",
    ):
        super().__init__()
        self.vit = vit
        self.spec = spec
        self.feature_dim = feature_dim
        self.image_size = image_size
        self.num_prefix_tokens = num_prefix_tokens  # class and register tokens ahead of the patches
        self.weights = weights
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)
        self.freeze()

    def forward(self, frames: Tensor) -> Tensor:
        if frames.shape[1] != self.mean.shape[1]:
            raise ValueError(
                f"{self.spec} expects {self.mean.shape[1]}-channel images, got frames of shape {tuple(frames.shape)}; "
                "encode pixel frames, not latents"
            )
        size = (self.image_size, self.image_size)
        images = F.interpolate((frames + 1) / 2, size=size, mode="bicubic", align_corners=False)
        features = self.vit.forward_features((images - self.mean) / self.std)
        if isinstance(features, dict):  # DINOv2's own ViT (torch.hub)
            tokens = features["x_norm_patchtokens"]
        else:
            tokens = features[:, self.num_prefix_tokens :]
        side = math.isqrt(tokens.shape[1])
        if side * side != tokens.shape[1]:
            raise ValueError(f"{self.spec} returned {tokens.shape[1]} patch tokens, not a square grid")
        return rearrange(tokens, "b (h w) e -> b h w e", h=side)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "image_size": self.image_size, "weights": self.weights}


def _import_timm(spec: str):
    try:
        import timm
    except ImportError as error:
        raise ImportError(
            f"encoder '{spec}' needs timm, which is not installed: `pip install timm`; or train from features "
            "cached elsewhere (repa.features_path)"
        ) from error
    return timm


def _weights_file(path: str | None, allow_download: bool, spec: str, how_to: str) -> Path | None:
    """The local weights file, checked; None only when downloading is allowed."""
    if path is None:
        if not allow_download:
            raise ValueError(f"encoder '{spec}' needs repa.encoder_path=FILE (or repa.allow_download=true). {how_to}")
        return None
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"weights file {file} of encoder '{spec}' not found. {how_to}")
    return file


def _timm_vit(spec: str, model_name: str, weights: Path | None, image_size: int | None) -> nn.Module:
    """A timm model with weights from `weights` (timm's own filter adapts the keys), or from its hub."""
    timm = _import_timm(spec)
    size = {"img_size": image_size} if image_size else {}
    source = {"pretrained_cfg_overlay": {"file": str(weights)}} if weights else {}
    return timm.create_model(model_name, pretrained=True, num_classes=0, **source, **size)


def _from_timm(vit: nn.Module, spec: str, weights: str) -> ViTEncoder:
    if not hasattr(vit, "num_prefix_tokens"):
        raise ValueError(f"encoder '{spec}' is not a timm VisionTransformer (it has no num_prefix_tokens)")
    config = vit.pretrained_cfg
    return ViTEncoder(
        vit,
        spec,
        vit.num_features,
        vit.patch_embed.img_size[0],
        vit.num_prefix_tokens,
        tuple(config.get("mean", IMAGENET_MEAN)),
        tuple(config.get("std", IMAGENET_STD)),
        weights,
    )


def timm_encoder(
    model_name: str, path: str | None, image_size: int | None = None, allow_download: bool = False
) -> ViTEncoder:
    """A timm ViT (`timm.list_models()` names) from a local weights file (.safetensors, .pth, .bin)."""
    spec = f"timm:{model_name}"
    how_to = (
        f"On a machine with internet: `timm.create_model('{model_name}', pretrained=True)` and save its "
        "state_dict with safetensors, or download model.safetensors of timm/<model name> from Hugging Face."
    )
    weights = _weights_file(path, allow_download, spec, how_to)
    vit = _timm_vit(spec, model_name, weights, image_size)
    return _from_timm(vit, spec, str(weights or "download"))


def dinov2_encoder(
    arch: str, path: str | None, image_size: int | None = None, allow_download: bool = False
) -> ViTEncoder:
    """DINOv2 (`arch` vitb14 etc.) from Meta's checkpoint file or timm's port; torch.hub when allowed."""
    spec = f"dinov2:{arch}"
    if arch not in DINOV2_TIMM_MODELS:
        raise ValueError(f"unknown DINOv2 architecture '{arch}'; choose one of {list(DINOV2_TIMM_MODELS)}")
    base = arch.removesuffix("_reg")
    file_name = f"dinov2_{base}{'_reg4' if arch != base else ''}_pretrain.pth"
    how_to = (
        f"Meta publishes it as https://dl.fbaipublicfiles.com/dinov2/dinov2_{base}/{file_name}; download it on "
        "a machine with internet and pass its path."
    )
    weights = _weights_file(path, allow_download, spec, how_to)
    image_size = image_size or REPA_IMAGE_SIZE
    if weights is not None:
        return _from_timm(_timm_vit(spec, DINOV2_TIMM_MODELS[arch], weights, image_size), spec, str(weights))
    vit = torch.hub.load(DINOV2_HUB_REPO, f"dinov2_{arch}")  # positions are interpolated on the fly
    return ViTEncoder(vit, spec, vit.embed_dim, image_size, num_prefix_tokens=0, weights="torch.hub")


def build_encoder(config: RepaConfig, channels: int = 3) -> FrameEncoder:
    """The frozen encoder `config.encoder` names; `channels` is what the random encoder reads."""
    kind, _, name = config.encoder.partition(":")
    # Building an encoder (timm initialises weights before loading them) must not shift the training's RNG.
    with torch.random.fork_rng(devices=[]):
        if config.encoder == "random":
            return RandomEncoder(channels)
        if kind == "timm":
            return timm_encoder(name, config.encoder_path, config.encoder_image_size, config.allow_download)
        if kind == "dinov2":
            return dinov2_encoder(name, config.encoder_path, config.encoder_image_size, config.allow_download)
    raise ValueError(f"unknown encoder '{config.encoder}'; use 'random', 'timm:MODEL_NAME' or 'dinov2:ARCH'")
