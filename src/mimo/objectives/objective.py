"""The training objective: one Complete-Teacher-Forcing sequence per clip, L_total = L_diff + λ·L_mask.

A clip x of T frames gives clean history frames x_1..x_{T-1} (tube-masked when r > 0) and noisy
copies of the frames to generate, each with its own noise level. `L_diff` is flow matching on the
generated frames (context frames of the prediction task are not noised and carry no loss).
`L_mask` (MiMo) reconstructs, from the masked history features at layer l, frame t and frame t+1
at every history position t. `L_repa` (the REPA baseline, `mimo.models.repa`) aligns clean and/or
noisy tokens with a frozen encoder's features of the clean frames; it adds to L_total with its own λ
and combines with MiMo. The whole objective is one nn.Module so DDP can wrap it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor, nn

from mimo.config import Config
from mimo.data.encoder_features import cached_feature_dim
from mimo.diffusion.flow import interpolate, sample_noise_levels, velocity_target
from mimo.models.dit import DiTOutput, FrameCausalDiT
from mimo.models.encoders import build_encoder, encode_video
from mimo.models.layers import patchify
from mimo.models.mimo_decoder import MimoDecoder
from mimo.models.repa import RepaProjector, aligned_pairs, negative_cosine_similarity, resize_grid
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
    masked: bool = True,
) -> CTFBatch:
    """Noise levels, noise, label dropout and the tube mask for one batch, all drawn from `generator`.

    `masked=False` keeps the whole history (the unmasked fine-tuning tail); the mask is drawn last, so
    everything else is the same draw either way.
    """
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
    if masked and config.mimo.mask_ratio > 0:
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
    """Backbone plus the training-only heads (MiMo decoder, REPA projector); forward returns the named losses."""

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
        repa = config.repa
        self.repa_projector = None
        self.repa_feature_dim = 0
        encoder = None
        if repa.mode != "none":
            if repa.features_path:
                self.repa_feature_dim = cached_feature_dim(repa.features_path)
            else:
                encoder = build_encoder(repa, backbone.channels)
                self.repa_feature_dim = encoder.feature_dim
            self.repa_projector = RepaProjector(backbone.width, self.repa_feature_dim, repa.projector_dim)
        # The frozen encoder is not a submodule: it is never trained, never in the optimizer or a
        # checkpoint, and `.to()` does not move it (forward does).
        object.__setattr__(self, "encoder", encoder)

    def forward(
        self,
        video: Tensor,
        labels: Tensor | None,
        generator: torch.Generator,
        encoder_features: Tensor | None = None,
        masked: bool = True,
    ) -> dict[str, Tensor]:
        """Losses for clips (B, T, C, H, W); `generator` (CPU) draws every random choice of the step.

        `encoder_features` (B, T, h, w, E): cached features of the clips' frames for REPA; without
        them the frozen encoder runs on `video`. `masked=False` (the unmasked fine-tuning tail,
        `mimo.unmasked_tail_steps`) trains with the full history and without L_mask.
        """
        backbone = self.backbone
        batch = build_ctf_batch(video, labels, self.config, backbone.num_classes, generator, backbone.grid, masked)
        keep = batch.mask.keep if batch.mask is not None else None
        decoding = self.decoder is not None and masked
        return_layers = {self.decoder_layer} if decoding else set()
        if self.repa_projector is not None:
            return_layers.add(self.config.repa.layer)
        out = backbone(
            batch.noisy,
            batch.noise_level,
            labels=batch.labels,
            clean=batch.clean,
            noisy_start=batch.first_noisy,
            keep=keep,
            return_layers=tuple(sorted(return_layers)),
        )
        losses = {"diffusion": (out.velocity - batch.velocity).pow(2).mean()}
        total = losses["diffusion"]
        if self.decoder is not None and not decoding:
            # DDP needs every parameter in the graph of every step: the idle decoder joins with weight 0
            total = total + 0.0 * sum(p.sum() for p in self.decoder.parameters())
        if decoding:
            mimo = self.config.mimo
            prediction = self.decoder(out.clean_hidden[self.decoder_layer], keep)
            target = mimo_targets(video, backbone.patch_size, mimo.targets, mimo.normalize_targets)
            dropped = batch.mask.dropped if batch.mask is not None and mimo.loss_on == "dropped" else None
            losses["mask"] = masked_reconstruction_loss(prediction, target, dropped)
            total = total + mimo.weight * losses["mask"]
        if self.repa_projector is not None:
            losses["repa"] = self.repa_loss(out, batch, video, encoder_features)
            total = total + self.config.repa.weight * losses["repa"]
        losses["loss"] = total
        return losses

    def repa_loss(self, out: DiTOutput, batch: CTFBatch, video: Tensor, encoder_features: Tensor | None) -> Tensor:
        """L_repa: the tokens of `config.repa.mode` aligned with the encoder's features of the clean frames."""
        repa = self.config.repa
        if encoder_features is None:
            if self.encoder is None:
                raise ValueError(
                    f"repa.features_path={repa.features_path} is set, so the batch must carry the cached features: "
                    "wrap the dataset in mimo.data.encoder_features.WithEncoderFeatures and pass them to the objective"
                )
            encoder_features = encode_video(self.encoder.to(video.device), video)
        shape = encoder_features.shape
        if len(shape) != 5 or shape[:2] != video.shape[:2] or shape[-1] != self.repa_feature_dim:
            raise ValueError(
                f"encoder features must be (B, T, h, w, E={self.repa_feature_dim}) for clips of shape "
                f"{tuple(video.shape)}, got {tuple(shape)}"
            )
        grid = self.backbone.grid
        targets = rearrange(resize_grid(encoder_features, grid), "b t h w e -> b t (h w) e")
        layer = repa.layer
        keep = batch.mask.keep if batch.mask is not None else None
        tokens, target = aligned_pairs(
            repa.mode, out.clean_hidden[layer], out.noisy_hidden[layer], targets, keep, batch.first_noisy
        )
        return negative_cosine_similarity(self.repa_projector(tokens), target)
