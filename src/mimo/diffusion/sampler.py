"""Autoregressive sampling: frame by frame, each frame integrated from noise by the flow ODE.

With the cache, a finished frame is run once as clean history and its keys/values are kept per
layer, so each ODE step of the next frame costs one frame's tokens. Without it, every step
re-runs the whole history; both give the same frames (a test). Past the training length a sliding
window attends to the last `window` clean frames only: rotary attention depends on frame offsets,
which the window keeps inside the trained range. When the window slides, the cache is re-encoded
from the window's frames (one block-causal pass over all of them, cheap next to the ODE steps),
because the deeper layers' keys of a cached frame still carry the frames that slid out. The cache
is static: preallocated for the window and written in place (`attention.KVCache`).

Guidance (classifier-free, or history guidance) wraps the velocity of either path (`Guidance`). Sampling
runs under inference_mode and, by default on CUDA, bf16 autocast (`sample.precision`).
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor
from tqdm.auto import tqdm

from mimo.config import SAMPLE_PRECISIONS, Config, SampleConfig
from mimo.diffusion.flow import VelocityFn, integrate, interpolate
from mimo.models.attention import KVCache
from mimo.models.checks import check_generated, check_history_options, check_sample_inputs
from mimo.models.dit import FrameCausalDiT


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of `sample.precision` on `device`: bf16, or None for fp32 (auto: bf16 on CUDA)."""
    if precision not in SAMPLE_PRECISIONS:
        raise ValueError(f"unknown sampling precision '{precision}'; choose one of {list(SAMPLE_PRECISIONS)}")
    bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return torch.bfloat16 if bf16 else None


def inference(device: torch.device, precision: str = "auto") -> contextlib.ExitStack:
    """inference_mode (no autograd bookkeeping at all) and, in bf16, autocast: how sampling runs the model
    (and so every evaluation that generates videos)."""
    stack = contextlib.ExitStack()
    stack.enter_context(torch.inference_mode())
    dtype = autocast_dtype(precision, device)
    if dtype is not None:
        stack.enter_context(torch.autocast(device.type, dtype=dtype))
    return stack


def _batch_size(batch_size: int | None, labels: Tensor | None, context: Tensor | None) -> int | None:
    """Videos to generate: one per context clip, else one per label, else `batch_size`."""
    if context is not None:
        return context.shape[0]
    return labels.shape[0] if labels is not None else batch_size


class Guidance:
    """Classifier-free guidance (towards the labels, away from the null class) or history guidance (towards the
    history, away from a history of pure noise; DFoT): the model runs on the batch twice, stacked as
    [conditional; unconditional], and v = v_u + w·(v_c - v_u). A scale of 1 is no guidance: one pass.

    `labels` are the ones the model sees: [labels; null class] under classifier-free guidance, the labels twice
    under history guidance (the history differs between the halves, see `History`)."""

    def __init__(self, labels: Tensor | None, null_class: int, options: SampleConfig, device: torch.device):
        self.on_labels = labels is not None and options.cfg_scale != 1.0
        self.on_history = options.history_guidance != 1.0
        self.scale = options.cfg_scale if self.on_labels else options.history_guidance
        if labels is not None:
            labels = labels.to(device)
            unconditional = torch.full_like(labels, null_class) if self.on_labels else labels
            labels = torch.cat([labels, unconditional]) if self.on_labels or self.on_history else labels
        self.labels = labels

    def __call__(self, velocity: VelocityFn) -> VelocityFn:
        """The guided velocity of `velocity` (itself when there is no guidance)."""
        if not (self.on_labels or self.on_history):
            return velocity

        def guided(z: Tensor, s: Tensor) -> Tensor:
            conditional, unconditional = velocity(torch.cat([z, z]), torch.cat([s, s])).chunk(2)
            return unconditional + self.scale * (conditional - unconditional)

        return guided


class History:
    """The clean frames as the model sees them: noised to `level` (history noise augmentation; 0: as they are),
    under history guidance stacked with a copy of pure noise (level 1: the history-free branch), and under
    classifier-free guidance repeated for both branches.

    Every frame's noise is drawn from the sampler's generator when the frame is added, so the cached and the
    uncached sampler see the same history."""

    def __init__(self, level: float, guidance: Guidance, generator: torch.Generator | None, device: torch.device):
        self.level, self.history_guided, self.generator, self.device = level, guidance.on_history, generator, device
        self.repeats = 2 if guidance.on_labels else 1
        self.frames: list[Tensor] = []  # (rows, 1, C, H, W) each

    def add(self, frame: Tensor) -> None:
        """Append a finished frame (B, 1, C, H, W)."""
        if self.level > 0 or self.history_guided:
            noise = torch.randn(frame.shape, generator=self.generator).to(self.device)
            frame = interpolate(frame, noise, torch.full(frame.shape[:2], self.level, device=self.device))
            if self.history_guided:
                frame = torch.cat([frame, noise])
        self.frames.append(torch.cat([frame] * self.repeats) if self.repeats > 1 else frame)

    def window(self, first: int, last: int) -> Tensor:
        """Frames first..last (inclusive) as (rows, n, C, H, W)."""
        return torch.cat(self.frames[first : last + 1], dim=1)

    def levels(self, num_frames: int) -> Tensor | None:
        """(rows, num_frames) noise levels of the frames the model is given; None for a clean history."""
        if self.level == 0 and not self.history_guided:
            return None
        rows = self.frames[0].shape[0]
        levels = torch.full((rows, num_frames), self.level, device=self.device)
        if self.history_guided:
            levels[rows // 2 :] = 1.0
        return levels


def uncached_velocity(
    model: FrameCausalDiT, history: History, position: int, window: int, labels: Tensor | None
) -> VelocityFn:
    """v(z, s) of frame `position` given the last `window` history frames, all re-run through the training-time
    `forward` at every call: the reference the cached path must equal."""
    first = max(0, position - window)
    clean = history.window(first, position - 1) if position > first else None
    levels = history.levels(position - first) if clean is not None else None

    def velocity(z: Tensor, s: Tensor) -> Tensor:
        out = model(
            z, s[:, None], labels, clean=clean, clean_start=first, noisy_start=position, clean_noise_level=levels
        )
        return out.velocity.float()

    return velocity


def cached_velocity(model: FrameCausalDiT, cache: KVCache, position: int, labels: Tensor | None) -> VelocityFn:
    """v(z, s) of frame `position` attending to the clean frames whose keys and values are in `cache`."""
    return lambda z, s: model.denoise_cached(z, s[:, None], position, cache, labels).float()


def encode_window(
    model: FrameCausalDiT, cache: KVCache, history: History, last: int, window: int, labels: Tensor | None
) -> None:
    """Encode the `window` history frames up to `last` into the cache from scratch, as training saw them: a clip
    starting at the window's first frame (older frames must not leak in through deeper layers' keys). One
    block-causal pass over all of them, written into the static cache in place."""
    cache.clear()
    first = max(0, last + 1 - window)
    model.append_to_cache(history.window(first, last), first, cache, labels, history.levels(last + 1 - first))


def cache_frame(
    model: FrameCausalDiT, cache: KVCache, history: History, position: int, window: int, labels: Tensor | None
) -> None:
    """Add the last history frame (at `position`) to the cache: appended while the window has room, else the
    window, slid by one frame, encoded again."""
    if cache.num_frames < window:
        model.append_to_cache(history.frames[-1], position, cache, labels, history.levels(1))
    else:
        encode_window(model, cache, history, position, window, labels)


def sample_video(
    model: FrameCausalDiT,
    num_frames: int,
    options: SampleConfig,
    *,
    context: Tensor | None = None,
    labels: Tensor | None = None,
    batch_size: int | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> Tensor:
    """Generate videos (B, num_frames, C, H, W); `context` (B, k, C, H, W) frames are given, not generated.

    `options` are the sampling settings (`sample.*`): steps, solver, grid and its time shift, guidance scales,
    history noise, cache, precision; `options.window` clean frames are attended to (None: all; `sample_for_task`
    sets the config's window). B is one video per context clip, else per label (`labels` (B,) of a
    class-conditional model), else `batch_size`. Noise comes from `generator`. Frames are returned in float32
    and are finite (a model giving NaN or infinite frames raises NonFiniteValuesError).
    """
    check_sample_inputs(model, num_frames, batch_size, labels, context, options, generator)
    check_history_options(model, options, class_guided=labels is not None and options.cfg_scale != 1.0)
    num_frames, device = int(num_frames), model.patch_embed.weight.device
    window = num_frames if options.window is None else options.window
    with inference(device, options.precision):
        guidance = Guidance(labels, model.null_class, options, device)
        history = History(options.history_noise, guidance, generator, device)
        frames = [] if context is None else list(context.to(device, torch.float32).split(1, dim=1))
        for frame in frames:
            history.add(frame)
        cache = model.new_cache(window) if options.use_cache else None
        if cache is not None and frames:
            encode_window(model, cache, history, len(frames) - 1, window, guidance.labels)
        size = model.grid * model.patch_size
        shape = (_batch_size(batch_size, labels, context), 1, model.channels, size, size)
        for position in tqdm(range(len(frames), num_frames), disable=not progress, desc="frames", leave=False):
            if cache is not None:
                velocity = cached_velocity(model, cache, position, guidance.labels)
            else:
                velocity = uncached_velocity(model, history, position, window, guidance.labels)
            noise = torch.randn(shape, generator=generator).to(device, non_blocking=True)
            frames.append(integrate(guidance(velocity), noise, options))
            if position + 1 < num_frames:
                history.add(frames[-1])
                if cache is not None:
                    cache_frame(model, cache, history, position, window, guidance.labels)
        videos = torch.cat(frames, dim=1)
    check_generated(videos)
    return videos


def sample_for_task(
    model: FrameCausalDiT,
    config: Config,
    video: Tensor,
    labels: Tensor | None,
    generator: torch.Generator | None = None,
    num_frames: int | None = None,
    progress: bool = False,
) -> Tensor:
    """Sample as the config's task asks, taking context frames and labels from real clips `video`."""
    context = video[:, : config.context_frames] if config.context_frames else None
    return sample_video(
        model,
        num_frames if num_frames is not None else config.sample.num_frames or config.data.num_frames,
        config.sampling,
        context=context,
        labels=labels if model.num_classes else None,
        batch_size=video.shape[0],
        generator=generator,
        progress=progress,
    )
