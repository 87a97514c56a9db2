"""The training objective: one Complete-Teacher-Forcing sequence per clip, L_total = L_diff + λ·L_mask.

A clip x of T frames gives clean history frames x_1..x_{T-1} (tube-masked when r > 0) and noisy
copies of the frames to generate, each with its own noise level. `L_diff` is flow matching on the
generated frames (context frames of the prediction task are not noised and carry no loss).
`L_mask` (MiMo) reconstructs, from the masked history features at layer l, frame t and frame t+1
at every history position t. `L_repa` (the REPA baseline, `mimo.objectives.repa`) aligns clean and/or
noisy tokens with a frozen encoder's features of the clean frames; it adds to L_total with its own λ
and combines with MiMo. The whole objective is one nn.Module so DDP can wrap it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor, nn

from mimo.config import TARGET_OFFSETS, Config, DiffusionConfig, SampleConfig
from mimo.diffusion.flow import integrate, interpolate, sample_noise_levels, velocity_target
from mimo.models.attention import FrameLayout
from mimo.models.dit import DiTOutput, FrameCausalDiT
from mimo.models.encoders import build_encoder, resize_grid
from mimo.models.flops import StepFlops
from mimo.models.layers import patchify
from mimo.models.mimo_decoder import MimoDecoder
from mimo.models.repa import RepaProjector
from mimo.objectives.masking import TubeMask, kept_count, tube_mask
from mimo.objectives.repa import aligned_pairs, negative_cosine_similarity

NORM_PIX_EPS = 1e-6  # MAE's per-patch normalisation
# The own-history samples' seed is the step generator's plus this: a stream of their own, disjoint from every
# (step, micro-batch) seed of train.step_generator while the micro-batch index stays below it.
OWN_HISTORY_STREAM = 2**15


@dataclass
class CTFBatch:
    """The sequence that the backbone sees for one batch of clips, and the diffusion targets."""

    clean: Tensor  # (B, T-1, C, H, W) history frames (noised to history_level under noise augmentation)
    history_level: Tensor | None  # (B, T-1) noise level of each history frame; None: clean (CTF)
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
    history: Tensor | None = None,
) -> CTFBatch:
    """Noise levels, noise, label dropout and the tube mask for one batch, all drawn from `generator`
    on its own device (a CUDA generator draws on the GPU: nothing is copied from the host).

    `history` (B, T-1, C, H, W) replaces the true history frames (the model's own, `diffusion.own_history`).
    `masked=False` keeps the whole history (the unmasked fine-tuning tail); the mask is drawn after the noise
    and labels, so they are the same draw either way. The history's noise (diffusion.history_noise_max,
    history_dropout) comes last of all.
    """
    batch, frames = video.shape[:2]
    first_noisy = config.context_frames
    target = video[:, first_noisy:]
    noise_level = sample_noise_levels((batch, frames - first_noisy), config.diffusion, generator).to(video.device)
    noise = torch.randn(target.shape, generator=generator, device=generator.device).to(video.device)
    if num_classes:
        drop = (
            torch.rand(batch, generator=generator, device=generator.device).to(video.device)
            < config.train.label_dropout
        )
        labels = torch.where(drop, torch.full_like(labels, num_classes), labels)
    else:
        labels = None
    mask = None
    if masked and config.mimo.mask_ratio > 0:
        mask = tube_mask(batch, grid * grid, config.mimo.mask_ratio, generator)
        mask = TubeMask(mask.keep.to(video.device), mask.dropped.to(video.device))
    history = video[:, :-1] if history is None else history
    history_level = None
    if config.diffusion.history_conditioned:  # drawn after everything else: arms with and without it are paired
        history_level = history_noise_levels(batch, frames - 1, config.diffusion, generator).to(video.device)
        history_noise = torch.randn(history.shape, generator=generator, device=generator.device).to(video.device)
        history = interpolate(history, history_noise, history_level)
    return CTFBatch(
        clean=history,
        history_level=history_level,
        noisy=interpolate(target, noise, noise_level),
        noise_level=noise_level,
        velocity=velocity_target(target, noise),
        labels=labels,
        mask=mask,
        first_noisy=first_noisy,
    )


def history_noise_levels(batch: int, frames: int, diffusion: DiffusionConfig, generator: torch.Generator) -> Tensor:
    """(B, frames) noise levels of the history: s ~ U[0, history_noise_max] per frame, and s = 1 for every
    frame of the clips that history dropout draws (the history-free branch of history guidance)."""
    level = torch.rand(batch, frames, generator=generator, device=generator.device) * diffusion.history_noise_max
    dropped = torch.rand(batch, 1, generator=generator, device=generator.device) < diffusion.history_dropout
    return torch.where(dropped, torch.ones_like(level), level)


def mimo_targets(video: Tensor, patch_size: int, targets: str, normalize: bool) -> Tensor:
    """(B, T-1, N, K, patch_dim): for history frame t, the patches of frame t and/or t+1."""
    patches = patchify(video, patch_size)
    if normalize:
        mean = patches.mean(dim=-1, keepdim=True)
        var = patches.var(dim=-1, keepdim=True)
        patches = (patches - mean) / (var + NORM_PIX_EPS).sqrt()
    history = patches.shape[1] - 1  # frames 0..T-2 are history frames with a next frame
    return torch.stack([patches[:, offset : offset + history] for offset in TARGET_OFFSETS[targets]], dim=3)


def masked_reconstruction_loss(prediction: Tensor, target: Tensor, dropped: Tensor | None) -> Tensor:
    """L_mask: MSE per patch, averaged over dropped positions (all positions when `dropped` is None)."""
    per_position = (prediction - target).pow(2).mean(dim=(-1, -2))  # (B, T, N)
    if dropped is None:
        return per_position.mean()
    weight = dropped[:, None, :].expand_as(per_position).to(per_position.dtype)
    return (per_position * weight).sum() / weight.sum()


class TrainingObjective(nn.Module):
    """Backbone plus the training-only heads (MiMo decoder, REPA projector); forward returns the named losses."""

    def __init__(self, config: Config, backbone: FrameCausalDiT, encoder_feature_dim: int | None = None):
        """`encoder_feature_dim`: E of the cached encoder features that replace the encoder under
        repa.features_path (read where the features are loaded: mimo.data.encoder_features)."""
        super().__init__()
        self.config = config
        self.backbone = backbone
        mimo = config.mimo
        self.decoder_layer = config.decoder_layer
        self.decoder = None
        if mimo.enabled:
            decoder_width, decoder_heads = mimo.decoder_size(backbone.width, backbone.heads)
            self.decoder = MimoDecoder(
                backbone_width=backbone.width,
                width=decoder_width,
                depth=mimo.decoder_depth,
                heads=decoder_heads,
                patch_dim=backbone.channels * backbone.patch_size**2,
                num_targets=len(TARGET_OFFSETS[mimo.targets]),
                grid=backbone.grid,
                rope=config.model.rope,
                qk_norm=config.model.qk_norm,
                attention=config.model.attention,
            )
        repa = config.repa
        self.repa_projector = None
        self.repa_feature_dim = 0
        encoder = None
        if repa.mode != "none":
            if repa.features_path:
                if encoder_feature_dim is None:
                    raise ValueError(
                        f"repa.features_path={repa.features_path} replaces the encoder: pass encoder_feature_dim, "
                        "the size of the cached features (mimo.data.encoder_features.cached_feature_dim)"
                    )
                self.repa_feature_dim = encoder_feature_dim
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
        """Losses for clips (B, T, C, H, W); `generator` (on the clips' device) draws every random choice of the step.

        `encoder_features` (B, T, h, w, E): cached features of the clips' frames for REPA; without
        them the frozen encoder runs on `video`. `masked=False` (the unmasked fine-tuning tail,
        `mimo.unmasked_tail_steps`) trains with the full history and without L_mask.
        """
        history = self.own_history(video, labels, generator) if self.config.diffusion.own_history > 0 else None
        batch = build_ctf_batch(
            video, labels, self.config, self.backbone.num_classes, generator, self.backbone.grid, masked, history
        )
        decoding = self.decoder is not None and masked
        out = self.forward_backbone(batch, decoding)
        losses = {"diffusion": self.forward_diffusion_loss(out, batch)}
        total = losses["diffusion"]
        if decoding:
            losses["mask"] = self.forward_mask_loss(out, batch, video)
            total = total + self.config.mimo.weight * losses["mask"]
        elif self.decoder is not None:
            # DDP needs every parameter in the graph of every step: the idle decoder joins with weight 0
            total = total + 0.0 * sum(p.sum() for p in self.decoder.parameters())
        if self.repa_projector is not None:
            losses["repa"] = self.forward_repa_loss(out, batch, video, encoder_features)
            total = total + self.config.repa.weight * losses["repa"]
        losses["loss"] = total  # L_total = L_diff + λ·L_mask (+ λ_repa·L_repa)
        return losses

    @torch.no_grad()
    def own_history(self, video: Tensor, labels: Tensor | None, generator: torch.Generator) -> Tensor:
        """(B, T-1, C, H, W): the history with its frames after the given ones replaced, for a share
        `diffusion.own_history` of the clips, by the model's own samples of them. Each is sampled from the true
        frames before it (teacher-forced: all frames in one CTF sequence per Euler step), so the model trains on
        histories holding its own one-step errors, with the true frames as targets. Its random draws come from
        a stream of their own, so runs with and without it share every other draw."""
        diffusion, k = self.config.diffusion, self.config.context_frames
        history = video[:, :-1]
        replaced = history[:, k:]  # frames k..T-2: sampled from frames 0..t-1 each
        if replaced.shape[1] == 0:
            return history
        own = torch.Generator(generator.device).manual_seed(generator.initial_seed() + OWN_HISTORY_STREAM)
        noise = torch.randn(replaced.shape, generator=own, device=own.device).to(video.device)
        labels = labels if self.backbone.num_classes else None  # the true class: no label dropout here
        clean = history[:, : history.shape[1] - 1] if history.shape[1] > 1 else None  # frames 0..T-3

        def velocity(z: Tensor, s: Tensor) -> Tensor:  # s (B,): every frame at the same level
            level = s[:, None].expand(-1, replaced.shape[1])
            return self.backbone(z, level, labels=labels, clean=clean, noisy_start=k).velocity.float()

        z = integrate(velocity, noise, SampleConfig(steps=diffusion.own_history_steps, solver="euler"))
        chosen = torch.rand(video.shape[0], generator=own, device=own.device).to(video.device) < diffusion.own_history
        sampled = torch.cat([history[:, :k], z.clamp(-1, 1).to(history.dtype)], dim=1)
        return torch.where(chosen[:, None, None, None, None], sampled, history)

    def forward_backbone(self, batch: CTFBatch, decoding: bool = True) -> DiTOutput:
        """The backbone over the CTF sequence, returning the hidden states the heads read (the decoder's
        layer only while `decoding`)."""
        keep = batch.mask.keep if batch.mask is not None else None
        return_layers = {self.decoder_layer} if decoding and self.decoder is not None else set()
        if self.repa_projector is not None:
            return_layers.add(self.config.repa.layer)
        return self.backbone(
            batch.noisy,
            batch.noise_level,
            labels=batch.labels,
            clean=batch.clean,
            clean_noise_level=batch.history_level,
            noisy_start=batch.first_noisy,
            keep=keep,
            return_layers=tuple(sorted(return_layers)),
        )

    def layout(self) -> FrameLayout:
        """The CTF sequence of a training clip: T-1 clean frames of kept tokens, T-k noisy frames of N."""
        backbone, ratio, frames = self.backbone, self.config.mimo.mask_ratio, self.config.data.num_frames
        kept = kept_count(backbone.tokens_per_frame, ratio) if ratio > 0 else backbone.tokens_per_frame
        first_noisy = self.config.context_frames
        return FrameLayout(frames - 1, kept, frames - first_noisy, backbone.tokens_per_frame, first_noisy)

    def training_flops(self, batch_size: int) -> StepFlops:
        """FLOPs of one training step (forward + backward) on `batch_size` clips: backbone and MiMo decoder
        (flops.StepFlops: executed by dense SDPA or block-sparse FlexAttention, and useful)."""
        if self.repa_projector is not None:
            raise ValueError("training_flops covers the backbone and the MiMo decoder, not REPA; set repa.mode=none")
        layout = self.layout()
        flops = self.backbone.training_flops(layout, batch_size)
        if self.decoder is not None:
            flops = flops + self.decoder.training_flops(layout.clean_frames, layout.clean_per_frame, batch_size)
        return flops

    def forward_diffusion_loss(self, out: DiTOutput, batch: CTFBatch) -> Tensor:
        """L_diff: flow matching, the predicted velocity against ε - x on the generated frames."""
        return (out.velocity - batch.velocity).pow(2).mean()

    def forward_mask_loss(self, out: DiTOutput, batch: CTFBatch, video: Tensor) -> Tensor:
        """L_mask: the decoder's reconstruction of frames t (and t+1) from the masked history at layer l."""
        mimo = self.config.mimo
        keep = batch.mask.keep if batch.mask is not None else None
        prediction = self.decoder(out.clean_hidden[self.decoder_layer], keep)
        target = mimo_targets(video, self.backbone.patch_size, mimo.targets, mimo.normalize_targets)
        dropped = batch.mask.dropped if batch.mask is not None and mimo.loss_on == "dropped" else None
        return masked_reconstruction_loss(prediction, target, dropped)

    def forward_repa_loss(
        self, out: DiTOutput, batch: CTFBatch, video: Tensor, encoder_features: Tensor | None
    ) -> Tensor:
        """L_repa: the tokens of `config.repa.mode` aligned with the encoder's features of the clean frames."""
        repa = self.config.repa
        if encoder_features is None:
            if self.encoder is None:
                raise ValueError(
                    f"repa.features_path={repa.features_path} is set, so the batch must carry the cached features: "
                    "wrap the dataset in mimo.data.encoder_features.WithEncoderFeatures and pass them to the objective"
                )
            encoder_features = self.encoder.to(video.device).encode_video(video)
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
