"""Autoregressive sampling: frame by frame, each frame integrated from noise by the flow ODE.

With the cache, a finished frame is run once as clean history and its keys/values are kept per
layer, so each ODE step of the next frame costs one frame's tokens. Without it, every step
re-runs the whole history; both give the same frames (a test). Past the training length a sliding
window attends to the last `window` clean frames only: rotary attention depends on frame offsets,
which the window keeps inside the trained range. When the window slides, the cache is re-encoded
from the window's frames (one block-causal pass over all of them, cheap next to the ODE steps),
because the deeper layers' keys of a cached frame still carry the frames that slid out. The cache
is static: preallocated for the window and written in place (`attention.KVCache`).

Sampling runs under inference_mode and, by default on CUDA, bf16 autocast (`sample.precision`).
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor
from tqdm.auto import tqdm

from mimo.config import SAMPLE_PRECISIONS, Config
from mimo.diffusion.flow import integrate, interpolate
from mimo.models.checks import check_generated, check_history_options, check_sample_inputs
from mimo.models.dit import FrameCausalDiT


def _guided(velocity: Tensor, scale: float, guided: bool) -> Tensor:
    """Guidance on a batch stacked as [conditional; unconditional]: classifier-free (the null class) or history
    guidance (a history of pure noise)."""
    if not guided:
        return velocity
    conditional, unconditional = velocity.chunk(2)
    return unconditional + scale * (conditional - unconditional)


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


def _guidance_labels(
    labels: Tensor | None, null_class: int, class_guided: bool, history_guided: bool, device: torch.device
) -> Tensor | None:
    """The labels the model sees: under classifier-free guidance stacked as [conditional; null class], under
    history guidance the same labels twice, as `_guided` splits them."""
    if labels is None:
        return None
    labels = labels.to(device)
    if class_guided:
        return torch.cat([labels, torch.full_like(labels, null_class)])
    return torch.cat([labels, labels]) if history_guided else labels


class History:
    """The clean frames as the model sees them: noised to `level` (history noise augmentation; 0: as they are),
    under history guidance stacked with a copy of pure noise (level 1: the history-free branch), and under
    classifier-free guidance repeated for both branches.

    Every frame's noise is drawn from the sampler's generator when the frame is added, so the cached and the
    uncached sampler see the same history."""

    def __init__(
        self, level: float, history_guided: bool, class_guided: bool, generator: torch.Generator | None, device
    ):
        self.level, self.history_guided, self.generator, self.device = level, history_guided, generator, device
        self.repeats = 2 if class_guided else 1
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


def sample_video(
    model: FrameCausalDiT,
    num_frames: int,
    batch_size: int | None = None,
    labels: Tensor | None = None,
    context: Tensor | None = None,
    steps: int = 50,
    solver: str = "euler",
    grid: str = "uniform",
    cfg_scale: float = 1.0,
    window: int | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    progress: bool = False,
    precision: str = "auto",
    shift: float = 1.0,
    history_noise: float = 0.0,
    history_guidance: float = 1.0,
) -> Tensor:
    """Generate videos (B, num_frames, C, H, W); `context` (B, k, C, H, W) frames are given, not generated.

    `labels` (B,) for class-conditional models; with cfg_scale != 1 the unconditional branch uses
    the null class. `solver` and `grid` name entries of mimo.diffusion.flow's SOLVERS and SAMPLING_GRIDS;
    `shift` time-shifts the grid. `window`: clean frames attended to (None: all). Noise comes from `generator`.
    `precision`: bf16 autocast or fp32 (auto: bf16 on CUDA); frames are returned in float32, and are finite
    (a model giving NaN or infinite frames raises NonFiniteValuesError).
    `history_noise`: every history frame (given or generated) is noised to this level, which the model is
    told; `history_guidance` w != 1 guides away from a history of pure noise (DFoT). Both need a model
    trained for them (diffusion.history_noise_max, diffusion.history_dropout).
    """
    check_sample_inputs(model, num_frames, batch_size, labels, context, steps, window, generator, cfg_scale)
    check_history_options(model, history_noise, history_guidance, labels is not None and cfg_scale != 1.0)
    num_frames = int(num_frames)
    device = model.patch_embed.weight.device
    with inference(device, precision):
        size = model.grid * model.patch_size
        batch_size = _batch_size(batch_size, labels, context)
        frames = [] if context is None else list(context.to(device, torch.float32).split(1, dim=1))
        class_guided, history_guided = labels is not None and cfg_scale != 1.0, history_guidance != 1.0
        guided, scale = class_guided or history_guided, cfg_scale if class_guided else history_guidance
        labels = _guidance_labels(labels, model.null_class, class_guided, history_guided, device)

        def doubled(x: Tensor) -> Tensor:
            return torch.cat([x, x]) if guided else x

        history = History(history_noise, history_guided, class_guided, generator, device)
        for frame in frames:
            history.add(frame)
        window = num_frames if window is None else window
        cache = model.new_cache(window) if use_cache else None

        def refill_cache(last: int) -> None:
            """Encode the `window` clean frames up to position `last` from scratch, as training saw them: a clip
            starting at the window's first frame (older frames must not leak in through deeper layers' keys).
            One block-causal pass over all of them, written into the static cache in place."""
            cache.clear()
            first = max(0, last + 1 - window)
            model.append_to_cache(history.window(first, last), first, cache, labels, history.levels(last + 1 - first))

        if cache is not None and frames:
            refill_cache(len(frames) - 1)
        shape = (batch_size, 1, model.channels, size, size)
        for position in tqdm(range(len(frames), num_frames), disable=not progress, desc="frames", leave=False):
            if cache is not None:

                def velocity(z: Tensor, s: Tensor, position: int = position) -> Tensor:
                    v = model.denoise_cached(doubled(z), doubled(s[:, None]), position, cache, labels)
                    return _guided(v.float(), scale, guided)

            else:
                first = max(0, position - window)
                clean = history.window(first, position - 1) if position > first else None
                levels = history.levels(position - first) if clean is not None else None

                def velocity(
                    z: Tensor, s: Tensor, clean=clean, levels=levels, first=first, position=position
                ) -> Tensor:
                    out = model(
                        doubled(z),
                        doubled(s[:, None]),
                        labels,
                        clean=clean,
                        clean_start=first,
                        noisy_start=position,
                        clean_noise_level=levels,
                    )
                    return _guided(out.velocity.float(), scale, guided)

            noise = torch.randn(shape, generator=generator).to(device, non_blocking=True)
            frames.append(integrate(velocity, noise, steps, solver, grid, shift))
            if position + 1 < num_frames:
                history.add(frames[-1])
            if cache is not None and position + 1 < num_frames:
                if cache.num_frames < window:
                    model.append_to_cache(history.frames[-1], position, cache, labels, history.levels(1))
                else:
                    refill_cache(position)
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
    sample = config.sample
    context = video[:, : config.context_frames] if config.context_frames else None
    return sample_video(
        model,
        num_frames if num_frames is not None else sample.num_frames or config.data.num_frames,
        batch_size=video.shape[0],
        labels=labels if model.num_classes else None,
        context=context,
        steps=sample.steps,
        solver=sample.solver,
        grid=sample.grid,
        cfg_scale=sample.cfg_scale,
        window=config.sample_window,
        generator=generator,
        use_cache=sample.use_cache,
        progress=progress,
        precision=sample.precision,
        shift=sample.shift,
        history_noise=sample.history_noise,
        history_guidance=sample.history_guidance,
    )
