"""Evaluation protocols: held-out clips; continuing them autoregressively or teacher-forced, against the
trivial predictor that repeats the last context frame; the history features that probes read."""

from __future__ import annotations

import time

import torch
from einops import reduce
from torch import Tensor
from tqdm.auto import tqdm

from mimo.config import Config
from mimo.data import build_dataset, stack_clips
from mimo.data.synthetic import MovingShapes
from mimo.diffusion.sampler import sample_for_task, sample_video
from mimo.errors import ConfigError
from mimo.models.dit import FrameCausalDiT

EVAL_CLIPS = 32
EVAL_SEED = 12345  # held-out clips: a seed no training clip uses


ROLLOUT_SEED = 0  # the noise every rollout starts from


def autoregressive(
    model, config: Config, clips: dict[str, torch.Tensor], num_frames: int, progress: bool = True
) -> tuple[torch.Tensor, float]:
    """Continue the clips' context frames to `num_frames`; returns samples and seconds per generated frame."""
    context = clips["video"][:, : config.context_frames]
    started = time.perf_counter()
    generator = torch.Generator().manual_seed(ROLLOUT_SEED)
    samples = sample_video(model, num_frames, config.sampling, context=context, generator=generator, progress=progress)
    generated = (num_frames - config.context_frames) * context.shape[0]
    return samples, (time.perf_counter() - started) / generated


def teacher_forced(model, config: Config, video: torch.Tensor) -> torch.Tensor:
    """Frames k.. of `video` each sampled from the *true* frames before it: what the model learned of the
    motion, without the compounding of its own errors that autoregressive sampling adds."""
    k = config.context_frames
    generated = [
        sample_video(
            model, t + 1, config.sampling, context=video[:, :t], generator=torch.Generator().manual_seed(ROLLOUT_SEED)
        )[:, -1:]
        for t in range(k, video.shape[1])
    ]
    return torch.cat([video[:, :k], *generated], dim=1)


def held_out_clips(
    config: Config, num_frames: int, count: int = EVAL_CLIPS, seed: int = EVAL_SEED
) -> dict[str, torch.Tensor]:
    """Built-in clips of a seed no training clip uses, stacked: video, positions, colors, valid, label."""
    dataset = MovingShapes(count, config.data.frame_size, num_frames, seed, config.data.max_objects)
    return stack_clips(dataset, count)


def copy_last_frame(video: torch.Tensor, context_frames: int) -> torch.Tensor:
    """The trivial predictor: the context frames, then the last of them repeated to the clip's length."""
    copied = video[:, context_frames - 1 : context_frames].expand_as(video).clone()
    copied[:, :context_frames] = video[:, :context_frames]
    return copied


def balanced_indices(labels: Tensor, count: int) -> list[int]:
    """`count` indices taking classes in turn (round robin), so every class is equally represented."""
    by_class: dict[int, list[int]] = {}
    for index, label in enumerate(labels.tolist()):
        by_class.setdefault(label, []).append(index)
    queues = [iter(indices) for _, indices in sorted(by_class.items())]
    chosen: list[int] = []
    while len(chosen) < count and queues:
        for queue in list(queues):
            index = next(queue, None)
            if index is None:
                queues.remove(queue)
            elif len(chosen) < count:
                chosen.append(index)
    return chosen


def load_clips(config: Config, count: int, key: str = "eval.num_videos", minimum: int = 1) -> dict[str, Tensor]:
    """`count` held-out clips (deterministic), class-balanced when the dataset has labels and asks for it;
    too few clips are refused naming `key`, the setting that asked for them (at least `minimum`)."""
    synthetic = config.data.dataset == "synthetic"
    dataset = build_dataset(config.data, "eval", count if synthetic else None, config.eval.start_at_zero)
    if len(dataset) < count:
        raise ConfigError(
            f"{key}: the evaluation data has {len(dataset)} clips, fewer than the {count} requested; "
            + (
                f"set {key}={len(dataset)} or fewer, or "
                if len(dataset) >= minimum
                else f"{key} must be {minimum} or more: "
            )
            + "evaluate on a dataset with more clips (data.path)"
        )
    labels = getattr(dataset, "labels", None)
    if isinstance(labels, Tensor) and config.eval.balanced_classes and bool((labels >= 0).all()):
        indices = balanced_indices(labels, count)
    else:
        indices = list(range(count))
    return stack_clips(dataset, tqdm(indices, desc="real clips", leave=False))


def generate(
    model: FrameCausalDiT, config: Config, clips: dict[str, Tensor], seed: int, num_frames: int | None = None
) -> Tensor:
    """Samples of `num_frames` (default: the training length) for every clip, batched; one generator per seed."""
    generator = torch.Generator().manual_seed(seed)
    device = model.patch_embed.weight.device
    batches = zip(
        clips["video"].split(config.eval.batch_size), clips["label"].split(config.eval.batch_size), strict=True
    )
    samples = [
        sample_for_task(model, config, video.to(device), label.to(device), generator, num_frames).cpu()
        for video, label in tqdm(list(batches), desc=f"sampling (seed {seed})")
    ]
    return torch.cat(samples)


@torch.no_grad()
def history_features(model: FrameCausalDiT, video: Tensor, batch_size: int = 16) -> dict[int, Tensor]:
    """Per-frame features (N, T, D) of clean clips at every layer: tokens averaged within each frame.

    The clean tokens never see noisy ones, so a single dummy noisy frame is enough to run the model.
    """
    layers = tuple(range(1, model.depth + 1))
    device = model.patch_embed.weight.device
    collected: dict[int, list[Tensor]] = {layer: [] for layer in layers}
    for chunk in tqdm(video.split(batch_size), desc="history features", leave=False):
        chunk = chunk.to(device)
        dummy = torch.zeros_like(chunk[:, :1])
        labels = torch.full((chunk.shape[0],), model.null_class, device=device) if model.num_classes else None
        out = model(dummy, torch.ones(chunk.shape[0], 1, device=device), labels, clean=chunk, return_layers=layers)
        for layer in layers:
            collected[layer].append(reduce(out.clean_hidden[layer], "b t n d -> b t d", "mean").cpu())
    return {layer: torch.cat(parts) for layer, parts in collected.items()}
