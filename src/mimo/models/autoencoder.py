"""Autoencoders between pixel clips and the latent clips the diffusion model works on.

Every autoencoder maps frames (B, T, C, H, W) in [-1, 1] to latents (B, T', c, h, w) scaled to
roughly unit variance, `latents = (z - shift) · scale` (the diffusers convention: SD uses scale
0.18215 and no shift, SD3/FLUX both), and back. Image VAEs run frame by frame (T' = T); a video
VAE sets `temporal_downsample` and sees the whole clip. New kinds register in `AUTOENCODERS`.

Weights are never downloaded: `DiffusersAutoencoderKL` reads a local directory.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import torch
from einops import rearrange
from torch import nn

from mimo.errors import ArgumentError

# Frames per VAE call: bounds activation memory of a 256 px SD-VAE to a few GB.
DEFAULT_FRAMES_PER_CALL = 32

_HOW_TO_GET_A_VAE = (
    "Weights are never downloaded by mimo. On a machine with internet, save a VAE to a folder, e.g. "
    "stabilityai/sd-vae-ft-ema: `hf download stabilityai/sd-vae-ft-ema --local-dir sd-vae-ft-ema`, or in Python "
    "`AutoencoderKL.from_pretrained('stabilityai/sd-vae-ft-ema').save_pretrained('sd-vae-ft-ema')`; then copy the "
    "folder here and pass its path. It must hold config.json and diffusion_pytorch_model.safetensors (or .bin)."
)
_WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


class Autoencoder(nn.Module, ABC):
    """Frames (B, T, C, H, W) in [-1, 1] <-> latents (B, T', c, h, w) of roughly unit variance."""

    name: str
    latent_channels: int
    downsample: int  # spatial: h = H / downsample
    temporal_downsample: int = 1  # T' = T / temporal_downsample (video VAEs)
    scale: float = 1.0
    shift: float = 0.0

    @abstractmethod
    def encode(self, frames: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def decode(self, latents: torch.Tensor) -> torch.Tensor: ...

    def latent_shape(self, frames_shape: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
        """(T', c, h, w) of the latents of a clip of shape (T, C, H, W)."""
        frames, _, height, width = frames_shape
        for length, factor, axis in (
            (frames, self.temporal_downsample, "T"),
            (height, self.downsample, "H"),
            (width, self.downsample, "W"),
        ):
            if length % factor:
                raise ValueError(
                    f"{self.name} downsamples {axis} by {factor}, but the clip has {axis}={length}: choose a clip "
                    f"size that is a multiple of {factor}."
                )
        return (
            frames // self.temporal_downsample,
            self.latent_channels,
            height // self.downsample,
            width // self.downsample,
        )

    def describe(self) -> dict[str, Any]:
        """What a reader of stored latents must know to decode them."""
        return {
            "name": self.name,
            "latent_channels": self.latent_channels,
            "downsample": self.downsample,
            "temporal_downsample": self.temporal_downsample,
            "scale": self.scale,
            "shift": self.shift,
        }


class IdentityAutoencoder(Autoencoder):
    """Pixel space: the 'latents' are the frames themselves."""

    name = "identity"
    downsample = 1

    def __init__(self, channels: int = 3) -> None:
        super().__init__()
        self.latent_channels = channels

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        return frames

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return latents


class DiffusersAutoencoderKL(Autoencoder):
    """diffusers' `AutoencoderKL` (SD-VAE and kin) from a local directory, applied frame by frame.

    `sample_posterior=False` encodes to the posterior mode, so stored latents are reproducible and
    resumed encodings agree with uninterrupted ones; True draws z ~ q(z|x) as DiT's training does.
    `scale`/`shift` default to the checkpoint's `scaling_factor`/`shift_factor`.
    """

    name = "autoencoder_kl"

    def __init__(
        self,
        path: str | Path,
        *,
        sample_posterior: bool = False,
        frames_per_call: int = DEFAULT_FRAMES_PER_CALL,
        dtype: torch.dtype = torch.float32,
        scale: float | None = None,
        shift: float | None = None,
    ) -> None:
        super().__init__()
        self.path = Path(path)
        self.vae = load_autoencoder_kl(self.path, dtype).eval().requires_grad_(False)
        config = self.vae.config
        self.latent_channels = config.latent_channels
        self.downsample = 2 ** (len(config.block_out_channels) - 1)  # one 2× downsampling per block but the last
        self.scale = float(config.scaling_factor if scale is None else scale)
        self.shift = float((config.shift_factor or 0.0) if shift is None else shift)
        self.sample_posterior = sample_posterior
        self.frames_per_call = frames_per_call

    @torch.no_grad()
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        images = rearrange(frames, "b t c h w -> (b t) c h w").to(self.vae.dtype)
        z = torch.cat([self._encode_images(chunk) for chunk in images.split(self.frames_per_call)])
        latents = (z.float() - self.shift) * self.scale
        return rearrange(latents, "(b t) c h w -> b t c h w", b=frames.shape[0])

    def _encode_images(self, images: torch.Tensor) -> torch.Tensor:
        posterior = self.vae.encode(images).latent_dist
        return posterior.sample() if self.sample_posterior else posterior.mode()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        z = rearrange(latents, "b t c h w -> (b t) c h w") / self.scale + self.shift
        z = z.to(self.vae.dtype)
        images = torch.cat([self.vae.decode(chunk).sample for chunk in z.split(self.frames_per_call)])
        return rearrange(images.float().clamp(-1.0, 1.0), "(b t) c h w -> b t c h w", b=latents.shape[0])

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "path": str(self.path), "sample_posterior": self.sample_posterior}


def load_autoencoder_kl(path: str | Path, dtype: torch.dtype = torch.float32) -> nn.Module:
    """diffusers' AutoencoderKL from `path`, offline, with messages that say how to fix a bad setup."""
    try:
        from diffusers import AutoencoderKL
    except ImportError as error:
        raise ImportError(
            "Loading an AutoencoderKL needs diffusers, an optional dependency of mimo: "
            "`pip install 'mimo[vae]'` (or `pip install diffusers`)."
        ) from error
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"VAE directory {path} does not exist. {_HOW_TO_GET_A_VAE}")
    if not (path / "config.json").is_file():
        nested = " It has a vae/ subfolder: pass that." if (path / "vae" / "config.json").is_file() else ""
        raise FileNotFoundError(f"VAE directory {path} has no config.json.{nested} {_HOW_TO_GET_A_VAE}")
    if not any((path / name).is_file() for name in _WEIGHT_FILES):
        raise FileNotFoundError(
            f"VAE directory {path} has a config.json but no weights ({' or '.join(_WEIGHT_FILES)}): the copy is "
            f"incomplete. {_HOW_TO_GET_A_VAE}"
        )
    return AutoencoderKL.from_pretrained(path, torch_dtype=dtype, local_files_only=True, low_cpu_mem_usage=False)


# Name -> class; a video VAE adds itself here (its constructor takes keyword arguments from the config).
AUTOENCODERS: dict[str, type[Autoencoder]] = {
    IdentityAutoencoder.name: IdentityAutoencoder,
    DiffusersAutoencoderKL.name: DiffusersAutoencoderKL,
}


def build_autoencoder(name: str, **options: Any) -> Autoencoder:
    """The autoencoder called `name` in `AUTOENCODERS`, e.g. build_autoencoder("autoencoder_kl", path=...)."""
    if name not in AUTOENCODERS:
        raise ArgumentError(f"unknown autoencoder {name!r}; choose one of {', '.join(AUTOENCODERS)}")
    return AUTOENCODERS[name](**options)


def autoencoder_from_description(description: dict[str, Any]) -> Autoencoder:
    """Rebuild the autoencoder that `describe()` described (as stored in a latents manifest), to decode samples."""
    name = description["name"]
    if name == IdentityAutoencoder.name:
        return IdentityAutoencoder(description["latent_channels"])
    if name == DiffusersAutoencoderKL.name:
        return DiffusersAutoencoderKL(description["path"], scale=description["scale"], shift=description["shift"])
    common = {"name", "latent_channels", "downsample", "temporal_downsample"}  # facts, not constructor options
    return build_autoencoder(name, **{k: v for k, v in description.items() if k not in common})


def to_pixels(videos: torch.Tensor, autoencoder: dict[str, Any] | None, batch_size: int = 16) -> torch.Tensor:
    """Videos in [-1, 1] pixels: latent clips (B, T, c, h, w) decoded by the autoencoder `autoencoder` describes
    (`mimo.data.latents.latent_autoencoder`); None: pixels already, returned as they are."""
    if autoencoder is None:
        return videos
    decoder = autoencoder_from_description(autoencoder)
    with torch.no_grad():
        return torch.cat([decoder.decode(chunk.cpu()) for chunk in videos.split(batch_size)]).clamp(-1, 1)


def to_model_space(videos: torch.Tensor, autoencoder: dict[str, Any] | None, batch_size: int = 16) -> torch.Tensor:
    """Pixel videos (B, T, 3, H, W) as the model sees them: encoded by the autoencoder `autoencoder` describes
    (latent runs); None: pixels, returned as they are."""
    if autoencoder is None:
        return videos
    encoder = autoencoder_from_description(autoencoder)
    with torch.no_grad():
        return torch.cat([encoder.encode(chunk) for chunk in videos.split(batch_size)])
