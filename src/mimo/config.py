"""Configuration as data: frozen dataclasses, YAML files that are small diffs, validation beside each section.

A YAML file may name a `base:` file (relative to itself) whose values it overrides; command-line
overrides `section.key=value` come last. Every impossible value is rejected by `validate` before
any work starts, with a message that names the key and the fix: each section's `validate` checks
its own keys (and how they meet other sections).

This module is the ground floor: it imports only `mimo.errors`, and every layer imports it. Option sets
that are plain names (precisions, attention backends, parallel modes, REPA modes, solvers, MiMo's targets)
are declared here and their implementations import them. Registries of functions (datasets, noise-level
samplers, sampling grids, metrics, perturbations) live beside their code, which checks the names it is
given; `mimo.options.check_options` checks them all once a config is loaded, before a job starts.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from mimo.errors import ConfigError

# DiT's model sizes (Peebles & Xie 2023, Table 1): depth, width, heads; plus small ones for CPUs.
PRESETS: dict[str, tuple[int, int, int]] = {
    "micro": (2, 64, 2),
    "tiny": (4, 128, 4),
    "S": (12, 384, 6),
    "B": (12, 768, 12),
    "L": (24, 1024, 16),
    "XL": (28, 1152, 16),
}
TASKS = ("unconditional", "class_conditional", "prediction")
CLEAN_CONDITIONING = ("independent_ln", "clean_timestep")
MASK_LOSS_ON = ("dropped", "all")
PRECISIONS = ("fp32", "bf16")
SAMPLE_PRECISIONS = ("auto", *PRECISIONS)  # sample.precision; auto: bf16 autocast on CUDA, fp32 on a CPU
LR_SCHEDULES = ("constant", "cosine")
# model.attention: flex = block-sparse FlexAttention, sdpa = dense-mask SDPA, auto = flex on CUDA only.
ATTENTION_BACKENDS = ("auto", "sdpa", "flex")
PARALLEL_MODES = ("ddp", "fsdp")  # train.parallel: replicated weights, or FSDP2-sharded (for L/XL)
REPA_MODES = ("none", "history", "future", "both")  # repa.mode: which tokens are aligned (mimo.objectives.repa)
SOLVERS = ("euler", "heun")  # sample.solver; mimo.diffusion.flow.integrate implements both
# mimo.targets: which frames history frame t reconstructs, as offsets from t (the paper's φ(t' - t)).
TARGET_OFFSETS = {"current": (0,), "next": (1,), "current+next": (0, 1)}


def _check(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{key}: {message}")


def _check_choice(value: str, choices, key: str) -> None:
    _check(value in choices, key, f"unknown value '{value}'; choose one of {list(choices)}")


def _check_heads(width: int, heads: int, rope: bool, width_key: str, heads_key: str) -> None:
    """Attention splits the width over the heads; rotary positions need an even head dimension of at least 6."""
    _check(width % heads == 0, width_key, f"width {width} must be divisible by {heads_key} {heads}")
    head_dim = width // heads
    _check(
        not rope or (head_dim % 2 == 0 and head_dim >= 6),
        heads_key,
        f"rotary positions need an even head dimension of at least 6, got {head_dim}; change {heads_key}",
    )


@dataclass(frozen=True)
class ModelConfig:
    preset: str = "tiny"
    depth: int | None = None  # None: from the preset
    width: int | None = None
    heads: int | None = None
    patch_size: int = 4
    mlp_ratio: float = 4.0
    qk_norm: bool = True
    rope: bool = True  # False: 3-D sin-cos absolute positions (the paper's "vanilla" ablation)
    clean_conditioning: str = "independent_ln"  # ACDiT default; "clean_timestep" is FAR's way
    attention: str = "auto"  # frame-causal masks as a FlexAttention BlockMask ("flex") or a dense mask ("sdpa")

    def size(self) -> tuple[int, int, int]:
        """(depth, width, heads) after applying explicit overrides to the preset."""
        explicit = (self.depth, self.width, self.heads)  # None: the preset's; 0 stays 0 and is refused
        return tuple(p if v is None else v for v, p in zip(explicit, PRESETS[self.preset], strict=True))

    def validate(self, config: Config) -> None:
        _check_choice(self.preset, PRESETS, "model.preset")
        depth, width, heads = self.size()
        for key, value in (("model.depth", depth), ("model.width", width), ("model.heads", heads)):
            _check(value >= 1, key, f"must be positive (or null for the preset's), got {value}")
        _check_heads(width, heads, self.rope, "model.width", "model.heads")
        _check(self.patch_size >= 1, "model.patch_size", "must be a positive integer")
        _check(
            self.mlp_ratio > 0,
            "model.mlp_ratio",
            f"the MLP width over the model width must be positive, got {self.mlp_ratio}",
        )
        _check_choice(self.attention, ATTENTION_BACKENDS, "model.attention")
        frame_size = config.data.frame_size
        _check(
            frame_size % self.patch_size == 0,
            "model.patch_size",
            f"patch size {self.patch_size} does not divide the frame size {frame_size}; "
            f"choose a divisor of {frame_size} or change data.frame_size",
        )
        _check_choice(self.clean_conditioning, CLEAN_CONDITIONING, "model.clean_conditioning")


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "synthetic"
    path: str | None = None  # folder of videos, or of encoded latents
    frame_size: int = 32  # pixels, or latent side for dataset=latents
    channels: int = 3
    num_frames: int = 8  # clip length T seen in training
    num_classes: int = 8  # the synthetic dataset has 8; set to 101 for UCF-101, 600 for Kinetics
    num_clips: int = 8192  # size of the synthetic dataset
    max_objects: int = 3  # synthetic: objects per clip, 1 to this many (the demo uses fewer)
    num_digits: int = 2  # moving_mnist: digits per clip (the standard: 2; labels are 10^num_digits classes)
    frame_stride: int = 1
    seed: int = 0
    num_workers: int = 0
    max_bad_fraction: float = 0.1  # stop when more than this share of video files fails to decode
    split: str = "train"  # ucf101: the official split file to read (train/test)
    fold: int = 1  # ucf101: split files trainlist0N / testlist0N, N in 1..3
    annotations: str | None = None  # kinetics600: the CSV (label,youtube_id,time_start,time_end,split)
    videos: str | None = None  # latents: the YAML naming the videos they were encoded from (FVD's real set by default)

    def validate(self, config: Config) -> None:
        _check(self.num_frames >= 2, "data.num_frames", f"a clip needs at least 2 frames, got {self.num_frames}")
        _check(self.frame_size >= 1 and self.channels >= 1, "data.frame_size/channels", "must be positive")
        _check(self.num_clips >= 1, "data.num_clips", "must be positive")
        _check(self.max_objects >= 1, "data.max_objects", "a clip shows at least 1 object")
        _check(self.num_digits >= 1, "data.num_digits", f"a clip needs at least 1 digit, got {self.num_digits}")
        classes = 10**self.num_digits  # a Moving MNIST label reads the digit classes as a number
        _check(
            self.dataset != "moving_mnist" or config.num_classes in (0, classes),
            "data.num_classes",
            f"Moving MNIST with {self.num_digits} digits has {classes} classes; set data.num_classes={classes}",
        )
        _check(self.frame_stride >= 1, "data.frame_stride", "must be at least 1")
        _check(self.num_workers >= 0, "data.num_workers", "must be 0 or more")
        _check(0 <= self.max_bad_fraction <= 1, "data.max_bad_fraction", "must be in [0, 1]")
        _check(self.split in ("train", "test"), "data.split", f"choose 'train' or 'test', got '{self.split}'")
        _check(1 <= self.fold <= 3, "data.fold", f"UCF-101 has folds 1 to 3, got {self.fold}")


@dataclass(frozen=True)
class DiffusionConfig:
    timestep_sampling: str = "logit_normal"  # SiT / FAR; "uniform" as in rectified flow
    logit_mean: float = 0.0
    logit_std: float = 1.0
    # Noise augmentation of the history against exposure bias (GameNGen, Diffusion Forcing): each clean history
    # frame is noised to its own level s ~ U[0, max] that the model is told. 0: the clean history of CTF (the paper).
    history_noise_max: float = 0.0
    # Share of clips whose whole history is pure noise (s = 1): the history-free branch of history guidance.
    history_dropout: float = 0.0
    # Share of clips whose history after the given frames is the model's own samples of those frames, each drawn
    # from the true frames before it (scheduled sampling; Self Forcing at one step): the model learns to continue
    # its own imperfect frames. 0: the true history (CTF, the paper). Costs own_history_steps forward passes.
    own_history: float = 0.0
    own_history_steps: int = 4  # Euler steps of those samples

    @property
    def history_conditioned(self) -> bool:
        """Whether the model is told its history's noise level (and so has an embedder for it)."""
        return self.history_noise_max > 0 or self.history_dropout > 0

    def validate(self, config: Config) -> None:
        _check(self.logit_std > 0, "diffusion.logit_std", "must be positive")
        _check(
            0 <= self.history_noise_max <= 1,
            "diffusion.history_noise_max",
            f"a noise level in [0, 1] (0: clean history), got {self.history_noise_max}",
        )
        _check(
            0 <= self.history_dropout < 1,
            "diffusion.history_dropout",
            f"a share of clips in [0, 1), got {self.history_dropout}",
        )
        _check(
            0 <= self.own_history <= 1, "diffusion.own_history", f"a share of clips in [0, 1], got {self.own_history}"
        )
        _check(self.own_history_steps >= 1, "diffusion.own_history_steps", "must be at least 1 Euler step")


@dataclass(frozen=True)
class MimoConfig:
    weight: float = 0.5  # λ in L_total = L_diff + λ·L_mask; 0 gives the CTF baseline
    mask_ratio: float = 0.5  # r, share of spatial positions dropped from every history frame
    decoder_layer: int | None = None  # l, 1-based backbone layer read by the decoder; None: last
    decoder_depth: int = 4  # METHOD.md: the paper's decoder has 4 DiT-style blocks
    decoder_width: int | None = None  # None: half the backbone width
    decoder_heads: int | None = None  # None: the backbone's heads
    targets: str = "current+next"
    loss_on: str = "dropped"
    normalize_targets: bool = False  # MAE's per-patch normalised pixels
    # The paper's unmasked fine-tuning: the last N of train.steps train with r = 0 and λ = 0 (full history,
    # no L_mask), so the model ends on the histories it sees at inference. 0: off.
    unmasked_tail_steps: int = 0

    def masked_at(self, step: int, total_steps: int) -> bool:
        """Whether training step `step` (0-based) of `total_steps` masks the history and adds L_mask."""
        return step < total_steps - self.unmasked_tail_steps

    @property
    def enabled(self) -> bool:
        return self.weight > 0

    def decoder_size(self, backbone_width: int, backbone_heads: int) -> tuple[int, int]:
        """(width, heads) of the decoder: half the backbone's width and its heads unless set."""
        width = backbone_width // 2 if self.decoder_width is None else self.decoder_width
        return width, backbone_heads if self.decoder_heads is None else self.decoder_heads

    def validate(self, config: Config) -> None:
        depth, width, heads = config.model.size()
        _check(self.weight >= 0, "mimo.weight", f"λ must be 0 (baseline) or positive, got {self.weight}")
        _check(0 <= self.mask_ratio < 1, "mimo.mask_ratio", f"r must be in [0, 1), got {self.mask_ratio}")
        _check(
            self.decoder_layer is None or 1 <= self.decoder_layer <= depth,
            "mimo.decoder_layer",
            f"l must be in 1..{depth} (the backbone depth), got {self.decoder_layer}",
        )
        _check_choice(self.targets, TARGET_OFFSETS, "mimo.targets")
        _check_choice(self.loss_on, MASK_LOSS_ON, "mimo.loss_on")
        _check(self.decoder_depth >= 1, "mimo.decoder_depth", "must be at least 1")
        _check(
            self.unmasked_tail_steps >= 0,
            "mimo.unmasked_tail_steps",
            f"must be 0 (off) or the number of final unmasked steps, got {self.unmasked_tail_steps}",
        )
        _check(
            self.unmasked_tail_steps < config.train.steps or not self.unmasked_tail_steps,
            "mimo.unmasked_tail_steps",
            f"{self.unmasked_tail_steps} final unmasked steps of train.steps={config.train.steps} leave no masked "
            "step (a plain baseline); give fewer, or mimo.weight=0 mimo.mask_ratio=0 for a baseline",
        )
        decoder_width, decoder_heads = self.decoder_size(width, heads)
        for key, value in (("mimo.decoder_width", decoder_width), ("mimo.decoder_heads", decoder_heads)):
            _check(value >= 1, key, f"must be positive (or null for the default), got {value}")
        _check_heads(decoder_width, decoder_heads, config.model.rope, "mimo.decoder_width", "mimo.decoder_heads")
        _check(
            not (self.enabled and self.loss_on == "dropped" and self.mask_ratio == 0),
            "mimo.mask_ratio",
            "with r = 0 nothing is dropped, so a loss on dropped positions is empty; set mimo.loss_on=all or r > 0",
        )


@dataclass(frozen=True)
class RepaConfig:
    mode: str = "none"  # "history" aligns clean tokens, "future" noisy tokens, "both" both
    layer: int = 2  # 1-based backbone layer whose features are aligned (REPA: block 8 of SiT-XL's 28)
    weight: float = 0.5  # REPA's λ
    encoder: str = "dinov2:vitb14"  # REPA's default; "timm:MODEL_NAME", or "random" (tests, CPU)
    encoder_path: str | None = None  # local weights file of a timm or DINOv2 encoder
    encoder_image_size: int | None = None  # encoder input side; None: 224 for DINOv2 (REPA), a timm model's own
    allow_download: bool = False  # without encoder_path, fetch weights (torch.hub / Hugging Face); needs internet
    features_path: str | None = None  # features cached by mimo.data.encoder_features; the encoder is then not run
    projector_dim: int = 2048  # REPA's projector width

    def validate(self, config: Config) -> None:
        depth = config.model.size()[0]
        _check_choice(self.mode, REPA_MODES, "repa.mode")
        _check(
            self.mode == "none" or 1 <= self.layer <= depth, "repa.layer", f"must be in 1..{depth}, got {self.layer}"
        )
        _check(self.weight >= 0, "repa.weight", "must be 0 or more")
        _check(self.projector_dim >= 1, "repa.projector_dim", "must be positive")
        _check(
            self.encoder_image_size is None or self.encoder_image_size >= 1,
            "repa.encoder_image_size",
            "must be positive",
        )
        kind, _, name = self.encoder.partition(":")
        _check(
            self.encoder == "random" or (kind in ("timm", "dinov2") and name != ""),
            "repa.encoder",
            f"unknown encoder '{self.encoder}'; use 'random', 'timm:MODEL_NAME' or 'dinov2:ARCH' (e.g. dinov2:vitb14)",
        )
        if self.mode == "none" or self.features_path:
            return
        _check(
            kind == "random" or self.encoder_path or self.allow_download,
            "repa.encoder_path",
            f"encoder '{self.encoder}' needs its weights: set repa.encoder_path=FILE (a local checkpoint), or "
            "repa.allow_download=true on a machine with internet, or repa.features_path=DIR of cached features",
        )
        _check(
            config.data.dataset != "latents",
            "repa.features_path",
            "the encoder sees pixels, but data.dataset=latents gives latents: extract features from the pixel "
            "dataset (mimo.data.encoder_features.extract_features) and set repa.features_path=DIR",
        )
        _check(
            kind == "random" or config.data.channels == 3,
            "repa.encoder",
            f"a ViT encoder needs RGB frames, but data.channels={config.data.channels}; cache features from RGB "
            "frames and set repa.features_path=DIR",
        )


@dataclass(frozen=True)
class TrainConfig:
    task: str = "prediction"
    context_frames: int = 2  # given frames for task=prediction, excluded from the loss
    label_dropout: float = 0.1  # FAR: 0.1, for classifier-free guidance
    batch_size: int = 16
    steps: int = 2000
    lr: float = 1e-4  # FAR: AdamW 1e-4 constant, no weight decay
    weight_decay: float = 0.0
    warmup_steps: int = 0
    lr_schedule: str = "constant"  # FAR's constant rate, or "cosine" decay to a tenth over train.steps (nanoGPT)
    grad_clip: float = 1.0
    ema_decay: float = 0.9999
    ema_warmup: bool = True  # decay min(ema_decay, (1+step)/(10+step)) so short runs still average
    grad_accumulation: int = 1
    parallel: str = "ddp"  # under torchrun: "ddp" (replicated weights) or "fsdp" (FSDP2-sharded, for L/XL)
    precision: str = "fp32"
    compile: bool = False
    activation_checkpointing: bool = False
    seed: int = 0
    out_dir: str = "runs/default"
    resume: bool = True  # continue from out_dir's latest checkpoint when there is one
    init_from: str | None = None  # a new run starts from this run's weights, or a preset's trained first (a .yaml)
    log_every: int = 10
    sample_every: int = 0  # 0: only at the end
    sample_at_end: bool = True  # a GIF of samples when training ends (its cost is printed first)
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    max_seconds: float | None = None  # stop (with a checkpoint) after this much training time; None: no limit
    on_nonfinite: str = "stop"  # or "skip" the step
    tensorboard: bool = True

    def validate(self, config: Config) -> None:
        _check_choice(self.task, TASKS, "train.task")
        num_frames = config.data.num_frames
        if self.task == "prediction":
            _check(
                1 <= self.context_frames < num_frames,
                "train.context_frames",
                f"context length {self.context_frames} must be at least 1 and less than the clip length "
                f"{num_frames} (data.num_frames), so that some frames are generated",
            )
        if self.task == "class_conditional":
            _check(
                config.data.num_classes >= 1, "data.num_classes", "class-conditional training needs num_classes >= 1"
            )
        _check(self.steps >= 0, "train.steps", f"must be 0 or more, got {self.steps}")
        _check(self.batch_size >= 1, "train.batch_size", f"must be at least 1, got {self.batch_size}")
        _check(self.lr > 0, "train.lr", f"must be positive, got {self.lr}")
        _check(self.weight_decay >= 0, "train.weight_decay", "must be 0 or more")
        _check(self.warmup_steps >= 0, "train.warmup_steps", f"must be 0 or more, got {self.warmup_steps}")
        _check_choice(self.lr_schedule, LR_SCHEDULES, "train.lr_schedule")
        _check(self.grad_clip >= 0, "train.grad_clip", "must be 0 (off) or positive")
        _check(0 <= self.ema_decay < 1, "train.ema_decay", f"must be in [0, 1), got {self.ema_decay}")
        _check(0 <= self.label_dropout < 1, "train.label_dropout", "must be in [0, 1)")
        _check(self.grad_accumulation >= 1, "train.grad_accumulation", "must be at least 1")
        _check_choice(self.precision, PRECISIONS, "train.precision")
        _check_choice(self.parallel, PARALLEL_MODES, "train.parallel")
        _check_choice(self.on_nonfinite, ("stop", "skip"), "train.on_nonfinite")
        for key in ("log_every", "sample_every", "checkpoint_every"):
            _check(getattr(self, key) >= 0, f"train.{key}", "must be 0 (off) or positive")
        _check(
            self.max_seconds is None or self.max_seconds > 0,
            "train.max_seconds",
            "must be positive (or null for no limit)",
        )
        _check(self.keep_checkpoints >= 1, "train.keep_checkpoints", "must be at least 1")


@dataclass(frozen=True)
class SampleConfig:
    steps: int = 50  # FAR: 50 Euler steps
    solver: str = "euler"
    cfg_scale: float = 2.0  # FAR on UCF-101
    window: int | None = None  # clean frames kept in the cache; None: num_frames - 1
    num_videos: int = 8
    num_frames: int | None = None  # None: the training clip length
    use_cache: bool = True
    grid: str = "uniform"  # the noise levels stepped through (mimo.diffusion.flow.SAMPLING_GRIDS)
    shift: float = 1.0  # SD3's time shift of the grid: > 1 spends more steps at high noise levels; 1: the grid as is
    precision: str = "auto"  # bf16 autocast (auto: on CUDA only) or fp32
    history_noise: float = 0.0  # every history frame noised to this level (needs diffusion.history_noise_max > 0)
    history_guidance: float = 1.0  # w of history guidance (DFoT); 1: off (needs diffusion.history_dropout > 0)

    def validate(self, config: Config) -> None:
        _check(self.steps >= 1, "sample.steps", f"must be at least 1, got {self.steps}")
        _check_choice(self.precision, SAMPLE_PRECISIONS, "sample.precision")
        _check_choice(self.solver, SOLVERS, "sample.solver")
        _check(self.cfg_scale >= 0, "sample.cfg_scale", "must be 0 or more (1 = no guidance)")
        _check(self.shift > 0, "sample.shift", f"must be positive (1: no shift), got {self.shift}")
        diffusion = config.diffusion
        _check(
            0 <= self.history_noise <= max(diffusion.history_noise_max, 0),
            "sample.history_noise",
            f"{self.history_noise} is outside the levels the model was trained on "
            f"(diffusion.history_noise_max={diffusion.history_noise_max}); choose 0 to {diffusion.history_noise_max}",
        )
        _check(self.history_guidance >= 0, "sample.history_guidance", "must be 0 or more (1 = no guidance)")
        _check(
            self.history_guidance == 1 or diffusion.history_dropout > 0,
            "sample.history_guidance",
            "history guidance needs a model trained without history on some clips: set diffusion.history_dropout "
            "(e.g. 0.1) when training, or sample.history_guidance=1",
        )
        _check(
            self.history_guidance == 1 or self.cfg_scale == 1 or config.num_classes == 0,
            "sample.history_guidance",
            "history guidance and classifier-free guidance together are not supported; set one of "
            "sample.history_guidance or sample.cfg_scale to 1",
        )
        _check(self.window is None or self.window >= 1, "sample.window", "must be at least 1 clean frame")
        _check(self.num_videos >= 1, "sample.num_videos", "must be at least 1")
        _check(
            self.num_frames is None or self.num_frames > config.context_frames,
            "sample.num_frames",
            f"must exceed the {config.context_frames} context frames",
        )


MIN_PROBE_CLIPS = 16  # fewer leave the probe's held-out split too small to measure an accuracy


@dataclass(frozen=True)
class EvalConfig:
    num_videos: int = 64  # generated videos per seed (FAR's UCF-101 protocol: 2048)
    seeds: str = "0"  # comma-separated sampling seeds; mean ± std over them (FAR: "0,2,4,6")
    metrics: str = "auto"  # comma-separated names of mimo.evaluation.metrics.METRICS; auto: each metric's `auto`
    batch_size: int = 16
    balanced_classes: bool = True  # real clips balanced over classes (FAR's UCF-101 protocol)
    start_at_zero: bool = False  # real clips start at the first frame (FAR's UCF-101 protocol)
    fvd_normaliser: str = "tf-gan"  # covariance divisor: n-1 (original FVD) or "stylegan-v" (n, FAR and DFoT)
    i3d_path: str | None = None  # StyleGAN-V's i3d_torchscript.pt instead of the built-in I3D port
    videos: str | None = None  # YAML whose data section names FVD's real videos; None: the training videos
    num_frames: int | None = None  # generated length; past data.num_frames the quality is also scored per window
    drift_hop: int | None = None  # frames between the scored windows of a long video; None: a quarter window
    probe_layer: int | None = None  # backbone layer whose history features are probed; None: mimo's decoder layer
    probe_clips: int = 512
    # perturbations of the context to measure robustness to (mimo.evaluation.robustness), comma-separated
    # from noise,drop,repeat,mask; empty: none
    robustness: str = ""

    def seed_list(self) -> list[int]:
        return [int(seed) for seed in str(self.seeds).split(",") if seed.strip()]

    def robustness_list(self) -> list[str]:
        return [kind.strip() for kind in self.robustness.split(",") if kind.strip()]

    def named_metrics(self) -> list[str]:
        """The metrics eval.metrics names ([] for auto: see mimo.evaluation.metrics.metric_names)."""
        return [] if self.metrics == "auto" else [name.strip() for name in self.metrics.split(",") if name.strip()]

    def validate(self, config: Config) -> None:
        depth = config.model.size()[0]
        _check(self.num_videos >= 1 and self.batch_size >= 1, "eval.num_videos/batch_size", "must be at least 1")
        try:
            seeds = self.seed_list()
        except ValueError:
            seeds = []
        _check(bool(seeds), "eval.seeds", f"give comma-separated integers, e.g. 0,2,4,6; got '{self.seeds}'")
        _check(self.probe_layer is None or 1 <= self.probe_layer <= depth, "eval.probe_layer", f"must be in 1..{depth}")
        _check(
            self.probe_clips >= MIN_PROBE_CLIPS, "eval.probe_clips", f"a probe needs at least {MIN_PROBE_CLIPS} clips"
        )
        _check(
            not self.robustness or config.context_frames > 0,
            "eval.robustness",
            "it perturbs the given context frames: it needs train.task=prediction",
        )
        _check(
            self.num_frames is None or self.num_frames > config.context_frames,
            "eval.num_frames",
            f"must exceed the {config.context_frames} context frames",
        )
        _check(self.drift_hop is None or self.drift_hop >= 1, "eval.drift_hop", "must be at least 1 frame")


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    mimo: MimoConfig = field(default_factory=MimoConfig)
    repa: RepaConfig = field(default_factory=RepaConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def context_frames(self) -> int:
        return self.train.context_frames if self.train.task == "prediction" else 0

    @property
    def sample_window(self) -> int:
        """Clean frames the sampler attends to: sample.window, else the training length's history (T - 1)."""
        return self.sample.window or self.data.num_frames - 1

    @property
    def sampling(self) -> SampleConfig:
        """The sampling options as `sample_video` takes them: sample.*, with the window resolved."""
        return dataclasses.replace(self.sample, window=self.sample_window)

    @property
    def decoder_layer(self) -> int:
        """l, the 1-based backbone layer MiMo's decoder (and by default the probes) read: the last unless set."""
        return self.mimo.decoder_layer or self.model.size()[0]

    @property
    def num_classes(self) -> int:
        """Classes the model embeds: only class-conditional models have a label embedding."""
        return self.data.num_classes if self.train.task == "class_conditional" else 0


def from_dict(values: dict[str, Any]) -> Config:
    """Build a Config from nested dicts, rejecting unknown sections and keys by name."""
    sections = {f.name: f.type for f in fields(Config)}
    built = {}
    for name, section_values in values.items():
        if name not in sections:
            raise ConfigError(f"unknown config section '{name}'; valid sections: {', '.join(sections)}")
        cls = type(getattr(Config(), name))
        known = {f.name for f in fields(cls)}
        section_values = {} if section_values is None else section_values
        if not isinstance(section_values, dict):
            raise ConfigError(f"config section '{name}' must be a mapping of keys, got {section_values!r}")
        for key in section_values:
            if key not in known:
                raise ConfigError(f"unknown key '{name}.{key}'; valid keys: {', '.join(sorted(known))}")
        types = {f.name: f.type for f in fields(cls)}
        built[name] = cls(**{k: _coerce(f"{name}.{k}", types[k], v) for k, v in section_values.items()})
    return Config(**built)


def _coerce(key: str, annotation: str, value: Any) -> Any:
    """A YAML value as the field's type: '5e-4' (a string to YAML) becomes 5e-4; a wrong type is an error."""
    allowed = [part.strip() for part in annotation.split("|")]
    if value is None:
        if "None" in allowed:
            return None
        raise ConfigError(f"{key}: a value is required (expected {annotation})")
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    if "bool" in allowed and isinstance(value, bool):
        return value
    if "int" in allowed and is_number and float(value).is_integer() and isinstance(value, int):
        return value
    if "float" in allowed and is_number:
        return float(value)
    if "float" in allowed and isinstance(value, str):
        with contextlib.suppress(ValueError):
            return float(value)
    if "str" in allowed and isinstance(value, str):
        return value
    if "str" in allowed and is_number:  # eval.seeds=3 is read by YAML as a number
        return str(value)
    raise ConfigError(f"{key}: expected {annotation}, got {value!r}")


def _merge(base: dict, update: dict) -> dict:
    merged = dict(base)
    for key, value in update.items():
        merged[key] = (
            _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
        )
    return merged


def names_a_preset(init_from: str | None) -> bool:
    """Whether `train.init_from` is a preset (a YAML file) to train first rather than a run folder."""
    return init_from is not None and init_from.endswith((".yaml", ".yml"))


def read_yaml(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A YAML config as nested dicts, with its `base:` chain resolved (`_chain`: the files that named it)."""
    path = Path(path)
    if path.is_dir():
        examples = ", ".join(str(p) for p in sorted(path.glob("*.y*ml"))[:3]) or "none here"
        raise ConfigError(f"config file '{path}' is a folder; give one of its YAML files ({examples})")
    if not path.is_file():
        named_by = f" (the base of {_chain[-1]})" if _chain else ""
        raise ConfigError(
            f"config file '{path}'{named_by} not found; presets are in configs/ (e.g. configs/synthetic/mimo.yaml)"
        )
    if path.resolve() in _chain:
        cycle = " -> ".join(str(p) for p in (*_chain, path.resolve()))
        raise ConfigError(f"config file '{path}': its base: chain is a cycle ({cycle}); remove one base: line")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ConfigError(f"config file '{path}' is not valid YAML: {error}") from error
    if not isinstance(values, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping of sections, got {type(values).__name__}")
    base = values.pop("base", None)
    for section, keys in values.items():  # a scalar would replace the base's section and the overrides' keys
        if keys is not None and not isinstance(keys, dict):
            raise ConfigError(f"config file '{path}': section '{section}' must be a mapping of keys, got {keys!r}")
    values = {section: keys for section, keys in values.items() if keys is not None}  # an empty section: no change
    init_from = values.get("train", {}).get("init_from")
    if isinstance(init_from, str) and names_a_preset(init_from):  # a preset to train first: beside this file
        values["train"]["init_from"] = str(path.parent / init_from)
    if base is not None:
        if not isinstance(base, str):
            raise ConfigError(f"config file '{path}': base: must name a YAML file beside it, got {base!r}")
        values = _merge(read_yaml(path.parent / base, (*_chain, path.resolve())), values)
    return values


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """`section.key=value` strings as nested dicts; values are parsed as YAML scalars."""
    nested: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ConfigError(f"override '{item}' must look like section.key=value, e.g. train.steps=100")
        dotted, raw = item.split("=", 1)
        section, key = dotted.split(".", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError as error:
            raise ConfigError(f"{dotted}: {raw!r} is not valid YAML; quote it: {dotted}='\"{raw}\"'") from error
        nested.setdefault(section, {})[key] = value
    return nested


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """The validated Config of a YAML file (or the defaults) with overrides applied."""
    values = read_yaml(path) if path is not None else {}
    values = _merge(values, parse_overrides(overrides or []))
    config = from_dict(values)
    validate(config)
    return config


def with_overrides(config: Config, overrides: list[str]) -> Config:
    """A validated copy of `config` with `section.key=value` overrides applied."""
    config = from_dict(_merge(config.to_dict(), parse_overrides(overrides)))
    validate(config)
    return config


FIXED_BY_WEIGHTS = ("data.frame_size", "data.channels", "data.num_classes")  # besides model.*, mimo.*, ...


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in values.items():
        flat.update(_flatten(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return flat


def with_sampling_overrides(config: Config, overrides: list[str], used: tuple[str, ...]) -> Config:
    """`with_overrides` for a trained run's config, where only keys starting with one of `used` (those the
    command reads) may change: any other override is refused by name, never silently ignored. Keys the
    weights fix (the model, the objective, the frame size) are refused as such."""
    updated = with_overrides(config, overrides)
    before, after = _flatten(config.to_dict()), _flatten(updated.to_dict())
    for key, value in after.items():
        if value == before[key]:
            continue
        if key in FIXED_BY_WEIGHTS or not key.startswith(("sample.", "eval.", "data.", "train.context_frames")):
            trained = "null (the default)" if before[key] is None else before[key]
            raise ConfigError(
                f"{key}={value} cannot be applied to a trained model: its weights were trained with "
                f"{key}={trained}; to change it, train another model with `mimo train`"
            )
        if not key.startswith(used):
            read = ", ".join(prefix + "*" if prefix.endswith(".") else prefix for prefix in used)
            raise ConfigError(f"{key} has no effect here: this command reads only {read}")
    return updated


def validate(config: Config) -> None:
    """Reject every impossible value before any work starts: each section checks its own keys."""
    for section in fields(Config):
        getattr(config, section.name).validate(config)
