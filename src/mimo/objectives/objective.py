"""The training objective: one Complete-Teacher-Forcing sequence per clip, L_total = L_diff + λ·L_mask.

A clip x of T frames gives clean history frames x_1..x_{T-1} (tube-masked when r > 0) and noisy
copies of the frames to generate, each with its own noise level. `L_diff` is flow matching on the
generated frames (context frames of the prediction task are not noised and carry no loss).
`L_mask` (MiMo) reconstructs, from the masked history features at layer l, frame t and frame t+1
at every history position t. The whole objective is one nn.Module so DDP can wrap it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mimo.config import Config
from mimo.diffusion.flow import interpolate, sample_noise_levels, velocity_target
from mimo.models.dit import FrameCausalDiT
from mimo.models.layers import patchify
from mimo.models.mimo_decoder import MimoDecoder
from mimo.objectives.masking import TubeMask, tube_mask

NORM_PIX_EPS = 1e-6  # MAE's per-patch normalisation


@dataclass
class CTFBatch:
    """The sequence that the backbone sees for one batch of clips, and the diffusion targets."""

    clean: Tensor  # (B, T-1, C, H, W) history frames
    noisy: Tensor  # (B, T-k, C, H, W) noised frames k..T-1
    noise_level: Tensor  # (B, T-k)
    velocity: Tensor  # (B, T-k, C, H, W) target ε - x
    labels: Tensor | None  # (B,) with dropped labels replaced by the null class
    mask: TubeMask | None
    first_noisy: int  # k: frames before it are given context


def build_ctf_batch(
    video: Tensor,
    labels: Tensor | None,
    config: Config,
    num_classes: int,
    generator: torch.Generator,
    grid: int,
) -> CTFBatch:
    """Noise levels, noise, label dropout and the tube mask for one batch, all drawn from `generator`."""
    batch, frames = video.shape[:2]
    first_noisy = config.context_frames
    target = video[:, first_noisy:]
    noise_level = sample_noise_levels(
        (batch, frames - first_noisy),
        config.diffusion.timestep_sampling,
        generator,
        config.diffusion.logit_mean,
        config.diffusion.logit_std,
    ).to(video.device)
    noise = torch.randn(target.shape, generator=generator).to(video.device)
    if num_classes:
        drop = torch.rand(batch, generator=generator).to(video.device) < config.train.label_dropout
        labels = torch.where(drop, torch.full_like(labels, num_classes), labels)
    else:
        labels = None
    mask = None
    if config.mimo.mask_ratio > 0:
        mask = tube_mask(batch, grid * grid, config.mimo.mask_ratio, generator)
        mask = TubeMask(mask.keep.to(video.device), mask.dropped.to(video.device))
    return CTFBatch(
        clean=video[:, :-1],
        noisy=interpolate(target, noise, noise_level),
        noise_level=noise_level,
        velocity=velocity_target(target, noise),
        labels=labels,
        mask=mask,
        first_noisy=first_noisy,
    )


def mimo_targets(video: Tensor, patch_size: int, targets: str, normalize: bool) -> Tensor:
    """(B, T-1, N, K, patch_dim): for history frame t, the patches of frame t and/or t+1."""
    patches = patchify(video, patch_size)
    if normalize:
        mean = patches.mean(dim=-1, keepdim=True)
        var = patches.var(dim=-1, keepdim=True)
        patches = (patches - mean) / (var + NORM_PIX_EPS).sqrt()
    chosen = {
        "current": [patches[:, :-1]],
        "next": [patches[:, 1:]],
        "current+next": [patches[:, :-1], patches[:, 1:]],
    }[targets]
    return torch.stack(chosen, dim=3)


def masked_reconstruction_loss(prediction: Tensor, target: Tensor, dropped: Tensor | None) -> Tensor:
    """L_mask: MSE per patch, averaged over dropped positions (all positions when `dropped` is None)."""
    per_position = (prediction - target).pow(2).mean(dim=(-1, -2))  # (B, T, N)
    if dropped is None:
        return per_position.mean()
    weight = dropped[:, None, :].expand_as(per_position).to(per_position.dtype)
    return (per_position * weight).sum() / weight.sum()


class TrainingObjective(nn.Module):
    """Backbone plus the training-only heads (MiMo decoder); forward returns the named losses."""

    def __init__(self, config: Config, backbone: FrameCausalDiT):
        super().__init__()
        self.config = config
        self.backbone = backbone
        mimo = config.mimo
        self.decoder_layer = mimo.decoder_layer or backbone.depth
        self.decoder = None
        if mimo.enabled:
            self.decoder = MimoDecoder(
                backbone_width=backbone.width,
                width=mimo.decoder_width or backbone.width // 2,
                depth=mimo.decoder_depth,
                heads=mimo.decoder_heads or backbone.heads,
                patch_dim=backbone.channels * backbone.patch_size**2,
                num_targets=2 if mimo.targets == "current+next" else 1,
                grid=backbone.grid,
                rope=config.model.rope,
                qk_norm=config.model.qk_norm,
            )

    def forward(self, video: Tensor, labels: Tensor | None, generator: torch.Generator) -> dict[str, Tensor]:
        """Losses for clips (B, T, C, H, W); `generator` (CPU) draws every random choice of the step."""
        backbone = self.backbone
        batch = build_ctf_batch(video, labels, self.config, backbone.num_classes, generator, backbone.grid)
        keep = batch.mask.keep if batch.mask is not None else None
        return_layers = (self.decoder_layer,) if self.decoder is not None else ()
        out = backbone(
            batch.noisy,
            batch.noise_level,
            labels=batch.labels,
            clean=batch.clean,
            noisy_start=batch.first_noisy,
            keep=keep,
            return_layers=return_layers,
        )
        losses = {"diffusion": (out.velocity - batch.velocity).pow(2).mean()}
        total = losses["diffusion"]
        if self.decoder is not None:
            mimo = self.config.mimo
            prediction = self.decoder(out.clean_hidden[self.decoder_layer], keep)
            target = mimo_targets(video, backbone.patch_size, mimo.targets, mimo.normalize_targets)
            dropped = batch.mask.dropped if batch.mask is not None and mimo.loss_on == "dropped" else None
            losses["mask"] = masked_reconstruction_loss(prediction, target, dropped)
            total = total + mimo.weight * losses["mask"]
        losses["loss"] = total
        return losses
