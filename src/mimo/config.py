"""Configuration as data: frozen dataclasses, YAML files that are small diffs, one validation.

A YAML file may name a `base:` file (relative to itself) whose values it overrides; command-line
overrides `section.key=value` come last. Every impossible value is rejected by `validate` before
any work starts, with a message that names the key and the fix.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

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
# video_folder: any folder of videos (unlabelled); class_folders: one sub-folder per class
DATASETS = ("synthetic", "video_folder", "class_folders", "ucf101", "kinetics600", "latents")
MAX_SYNTHETIC_OBJECTS = 8  # the palette of mimo.data.synthetic: every object of a clip has its own colour
CLEAN_CONDITIONING = ("independent_ln", "clean_timestep")
MIMO_TARGETS = ("current", "next", "current+next")
MASK_LOSS_ON = ("dropped", "all")
TIMESTEP_SAMPLING = ("logit_normal", "uniform")
SOLVERS = ("euler", "heun")
PRECISIONS = ("fp32", "bf16")
REPA_MODES = ("none", "history", "future", "both")


class ConfigError(ValueError):
    """An impossible or unknown configuration value; the message names the key and the fix."""


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

    def size(self) -> tuple[int, int, int]:
        """(depth, width, heads) after applying explicit overrides to the preset."""
        depth, width, heads = PRESETS[self.preset]
        return self.depth or depth, self.width or width, self.heads or heads


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
    frame_stride: int = 1
    seed: int = 0
    num_workers: int = 0
    max_bad_fraction: float = 0.1  # stop when more than this share of video files fails to decode
    split: str = "train"  # ucf101: the official split file to read (train/test)
    fold: int = 1  # ucf101: split files trainlist0N / testlist0N, N in 1..3
    annotations: str | None = None  # kinetics600: the CSV (label,youtube_id,time_start,time_end,split)


@dataclass(frozen=True)
class DiffusionConfig:
    timestep_sampling: str = "logit_normal"  # SiT / FAR; "uniform" as in rectified flow
    logit_mean: float = 0.0
    logit_std: float = 1.0


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
    log_every: int = 10
    sample_every: int = 0  # 0: only at the end
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    max_seconds: float | None = None  # stop (with a checkpoint) after this much training time; None: no limit
    on_nonfinite: str = "stop"  # or "skip" the step
    tensorboard: bool = True


@dataclass(frozen=True)
class SampleConfig:
    steps: int = 50  # FAR: 50 Euler steps
    solver: str = "euler"
    cfg_scale: float = 2.0  # FAR on UCF-101
    window: int | None = None  # clean frames kept in the cache; None: num_frames - 1
    num_videos: int = 8
    num_frames: int | None = None  # None: the training clip length
    use_cache: bool = True


EVAL_METRICS = ("fvd", "proxy_fd", "trajectory", "psnr", "ssim")


@dataclass(frozen=True)
class EvalConfig:
    num_videos: int = 64  # generated videos per seed (FAR's UCF-101 protocol: 2048)
    seeds: str = "0"  # comma-separated sampling seeds; mean ± std over them (FAR: "0,2,4,6")
    metrics: str = "auto"  # comma-separated of EVAL_METRICS; auto: fvd on real data, proxy_fd + trajectory on synthetic
    batch_size: int = 16
    balanced_classes: bool = True  # real clips balanced over classes (FAR's UCF-101 protocol)
    start_at_zero: bool = False  # real clips start at the first frame (FAR's UCF-101 protocol)
    i3d_path: str | None = None  # StyleGAN-V's i3d_torchscript.pt instead of the built-in I3D port
    probe_layer: int | None = None  # backbone layer whose history features are probed; None: mimo's decoder layer
    probe_clips: int = 512
    # perturbations of the context to measure robustness to (mimo.evaluation.robustness), comma-separated
    # from noise,drop,repeat,mask; empty: none
    robustness: str = ""

    def seed_list(self) -> list[int]:
        return [int(seed) for seed in str(self.seeds).split(",") if seed.strip()]

    def metric_list(self, dataset: str) -> list[str]:
        if self.metrics == "auto":
            return ["proxy_fd", "trajectory", "psnr"] if dataset == "synthetic" else ["fvd"]
        return [metric.strip() for metric in self.metrics.split(",") if metric.strip()]


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
        section_values = section_values or {}
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
    raise ConfigError(f"{key}: expected {annotation}, got {value!r}")


def _merge(base: dict, update: dict) -> dict:
    merged = dict(base)
    for key, value in update.items():
        merged[key] = (
            _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
        )
    return merged


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML config as nested dicts, with its `base:` chain resolved."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file '{path}' not found; the presets are in configs/ (e.g. configs/demo.yaml)")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"config file '{path}' is not valid YAML: {error}") from error
    if not isinstance(values, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping of sections, got {type(values).__name__}")
    base = values.pop("base", None)
    if base is not None:
        values = _merge(read_yaml(path.parent / base), values)
    return values


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """`section.key=value` strings as nested dicts; values are parsed as YAML scalars."""
    nested: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ConfigError(f"override '{item}' must look like section.key=value, e.g. train.steps=100")
        dotted, raw = item.split("=", 1)
        section, key = dotted.split(".", 1)
        nested.setdefault(section, {})[key] = yaml.safe_load(raw) if raw != "" else None
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


def _check(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{key}: {message}")


def validate(config: Config) -> None:
    """Reject every impossible value before any work starts."""
    m, d, t, s, k, r = config.model, config.data, config.train, config.sample, config.mimo, config.repa
    _check(m.preset in PRESETS, "model.preset", f"unknown preset '{m.preset}'; choose one of {list(PRESETS)}")
    depth, width, heads = m.size()
    _check(depth >= 1 and width >= 1 and heads >= 1, "model.depth/width/heads", "must be positive")
    _check(width % heads == 0, "model.width", f"width {width} must be divisible by heads {heads}")
    head_dim = width // heads
    _check(
        not m.rope or (head_dim % 2 == 0 and head_dim >= 6),
        "model.heads",
        f"rotary embedding needs an even head dimension of at least 6, got {head_dim}; change model.heads",
    )
    _check(m.patch_size >= 1, "model.patch_size", "must be a positive integer")
    _check(
        d.frame_size % m.patch_size == 0,
        "model.patch_size",
        f"patch size {m.patch_size} does not divide the frame size {d.frame_size}; "
        f"choose a divisor of {d.frame_size} or change data.frame_size",
    )
    _check(
        m.clean_conditioning in CLEAN_CONDITIONING,
        "model.clean_conditioning",
        f"unknown value '{m.clean_conditioning}'; choose one of {list(CLEAN_CONDITIONING)}",
    )
    _check(d.dataset in DATASETS, "data.dataset", f"unknown dataset '{d.dataset}'; choose one of {list(DATASETS)}")
    _check(d.dataset == "synthetic" or d.path, "data.path", f"dataset '{d.dataset}' needs data.path=FOLDER")
    _check(d.num_frames >= 2, "data.num_frames", f"a clip needs at least 2 frames, got {d.num_frames}")
    _check(d.frame_size >= 1 and d.channels >= 1, "data.frame_size/channels", "must be positive")
    _check(d.num_clips >= 1, "data.num_clips", "must be positive")
    _check(1 <= d.max_objects <= MAX_SYNTHETIC_OBJECTS, "data.max_objects", f"choose 1 to {MAX_SYNTHETIC_OBJECTS}")
    _check(d.frame_stride >= 1, "data.frame_stride", "must be at least 1")
    _check(d.num_workers >= 0, "data.num_workers", "must be 0 or more")
    _check(0 <= d.max_bad_fraction <= 1, "data.max_bad_fraction", "must be in [0, 1]")
    _check(d.split in ("train", "test"), "data.split", f"choose 'train' or 'test', got '{d.split}'")
    _check(1 <= d.fold <= 3, "data.fold", f"UCF-101 has folds 1 to 3, got {d.fold}")
    _check(t.task in TASKS, "train.task", f"unknown task '{t.task}'; choose one of {list(TASKS)}")
    if t.task == "prediction":
        _check(
            1 <= t.context_frames < d.num_frames,
            "train.context_frames",
            f"context length {t.context_frames} must be at least 1 and less than the clip length "
            f"{d.num_frames} (data.num_frames), so that some frames are generated",
        )
    if t.task == "class_conditional":
        _check(d.num_classes >= 1, "data.num_classes", "class-conditional training needs num_classes >= 1")
    _check(t.steps >= 0, "train.steps", f"must be 0 or more, got {t.steps}")
    _check(t.batch_size >= 1, "train.batch_size", f"must be at least 1, got {t.batch_size}")
    _check(t.lr > 0, "train.lr", f"must be positive, got {t.lr}")
    _check(t.weight_decay >= 0, "train.weight_decay", "must be 0 or more")
    _check(t.warmup_steps >= 0, "train.warmup_steps", f"must be 0 or more, got {t.warmup_steps}")
    _check(t.grad_clip >= 0, "train.grad_clip", "must be 0 (off) or positive")
    _check(0 <= t.ema_decay < 1, "train.ema_decay", f"must be in [0, 1), got {t.ema_decay}")
    _check(0 <= t.label_dropout < 1, "train.label_dropout", "must be in [0, 1)")
    _check(t.grad_accumulation >= 1, "train.grad_accumulation", "must be at least 1")
    _check(t.precision in PRECISIONS, "train.precision", f"choose one of {list(PRECISIONS)}")
    _check(t.parallel in ("ddp", "fsdp"), "train.parallel", f"unknown mode '{t.parallel}'; choose 'ddp' or 'fsdp'")
    _check(t.on_nonfinite in ("stop", "skip"), "train.on_nonfinite", "choose 'stop' or 'skip'")
    for key in ("log_every", "sample_every", "checkpoint_every"):
        _check(getattr(t, key) >= 0, f"train.{key}", "must be 0 (off) or positive")
    _check(t.max_seconds is None or t.max_seconds > 0, "train.max_seconds", "must be positive (or null for no limit)")
    _check(t.keep_checkpoints >= 1, "train.keep_checkpoints", "must be at least 1")
    _check(
        config.diffusion.timestep_sampling in TIMESTEP_SAMPLING,
        "diffusion.timestep_sampling",
        f"choose one of {list(TIMESTEP_SAMPLING)}",
    )
    _check(config.diffusion.logit_std > 0, "diffusion.logit_std", "must be positive")
    _check(k.weight >= 0, "mimo.weight", f"λ must be 0 (baseline) or positive, got {k.weight}")
    _check(0 <= k.mask_ratio < 1, "mimo.mask_ratio", f"r must be in [0, 1), got {k.mask_ratio}")
    _check(
        k.decoder_layer is None or 1 <= k.decoder_layer <= depth,
        "mimo.decoder_layer",
        f"l must be in 1..{depth} (the backbone depth), got {k.decoder_layer}",
    )
    _check(k.targets in MIMO_TARGETS, "mimo.targets", f"choose one of {list(MIMO_TARGETS)}")
    _check(
        "next" not in k.targets or d.num_frames >= 2,
        "mimo.targets",
        "a 'next' target needs clips of at least 2 frames",
    )
    _check(k.loss_on in MASK_LOSS_ON, "mimo.loss_on", f"choose one of {list(MASK_LOSS_ON)}")
    _check(k.decoder_depth >= 1, "mimo.decoder_depth", "must be at least 1")
    _check(
        k.unmasked_tail_steps >= 0,
        "mimo.unmasked_tail_steps",
        f"must be 0 (off) or the number of final unmasked steps, got {k.unmasked_tail_steps}",
    )
    decoder_width, decoder_heads = k.decoder_width or width // 2, k.decoder_heads or heads
    _check(
        decoder_width % decoder_heads == 0,
        "mimo.decoder_width",
        f"decoder width {decoder_width} must be divisible by mimo.decoder_heads {decoder_heads}",
    )
    decoder_head_dim = decoder_width // decoder_heads
    _check(
        not m.rope or (decoder_head_dim % 2 == 0 and decoder_head_dim >= 6),
        "mimo.decoder_heads",
        f"rotary positions need an even decoder head dimension of at least 6, got {decoder_head_dim}",
    )
    _check(
        not (k.enabled and k.loss_on == "dropped" and k.mask_ratio == 0),
        "mimo.mask_ratio",
        "with r = 0 nothing is dropped, so a loss on dropped positions is empty; set mimo.loss_on=all or r > 0",
    )
    _check(r.mode in REPA_MODES, "repa.mode", f"choose one of {list(REPA_MODES)}")
    _check(r.mode == "none" or 1 <= r.layer <= depth, "repa.layer", f"must be in 1..{depth}, got {r.layer}")
    _check(r.weight >= 0, "repa.weight", "must be 0 or more")
    _check(r.projector_dim >= 1, "repa.projector_dim", "must be positive")
    _check(r.encoder_image_size is None or r.encoder_image_size >= 1, "repa.encoder_image_size", "must be positive")
    kind, _, name = r.encoder.partition(":")
    _check(
        r.encoder == "random" or (kind in ("timm", "dinov2") and name != ""),
        "repa.encoder",
        f"unknown encoder '{r.encoder}'; use 'random', 'timm:MODEL_NAME' or 'dinov2:ARCH' (e.g. dinov2:vitb14)",
    )
    if r.mode != "none" and not r.features_path:
        _check(
            kind == "random" or r.encoder_path or r.allow_download,
            "repa.encoder_path",
            f"encoder '{r.encoder}' needs its weights: set repa.encoder_path=FILE (a local checkpoint), or "
            "repa.allow_download=true on a machine with internet, or repa.features_path=DIR of cached features",
        )
        _check(
            d.dataset != "latents",
            "repa.features_path",
            "the encoder sees pixels, but data.dataset=latents gives latents: extract features from the pixel "
            "dataset (mimo.data.encoder_features.extract_features) and set repa.features_path=DIR",
        )
        _check(
            kind == "random" or d.channels == 3,
            "repa.encoder",
            f"a ViT encoder needs RGB frames, but data.channels={d.channels}; cache features from RGB frames "
            "and set repa.features_path=DIR",
        )
    e = config.eval
    _check(e.num_videos >= 1 and e.batch_size >= 1, "eval.num_videos/batch_size", "must be at least 1")
    try:
        seeds = e.seed_list()
    except ValueError:
        seeds = []
    _check(bool(seeds), "eval.seeds", f"give comma-separated integers, e.g. 0,2,4,6; got '{e.seeds}'")
    unknown_metrics = set(e.metric_list(d.dataset)) - set(EVAL_METRICS)
    _check(not unknown_metrics, "eval.metrics", f"unknown {sorted(unknown_metrics)}; choose from {list(EVAL_METRICS)}")
    _check(e.probe_layer is None or 1 <= e.probe_layer <= depth, "eval.probe_layer", f"must be in 1..{depth}")
    _check(e.probe_clips >= 16, "eval.probe_clips", "a probe needs at least 16 clips")
    _check(s.steps >= 1, "sample.steps", f"must be at least 1, got {s.steps}")
    _check(s.solver in SOLVERS, "sample.solver", f"choose one of {list(SOLVERS)}")
    _check(s.cfg_scale >= 0, "sample.cfg_scale", "must be 0 or more (1 = no guidance)")
    _check(s.window is None or s.window >= 1, "sample.window", "must be at least 1 clean frame")
    _check(s.num_videos >= 1, "sample.num_videos", "must be at least 1")
    _check(
        s.num_frames is None or s.num_frames > config.context_frames,
        "sample.num_frames",
        f"must exceed the {config.context_frames} context frames",
    )


def replace_section(config: Config, section: str, **values: Any) -> Config:
    """A copy of `config` with some keys of one section replaced (validated)."""
    config = replace(config, **{section: replace(getattr(config, section), **values)})
    validate(config)
    return config
