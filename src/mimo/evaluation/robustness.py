"""Robustness to a perturbed history (the paper's claim for MiMo): perturb the given context, measure the rest.

The context frames of held-out clips are perturbed in one of four ways, at increasing strengths, and
the model continues them as usual; the generated frames are scored against the true continuation.
How much a score worsens from strength 0 is the model's sensitivity to that perturbation. Every
perturbation is drawn from a generator seeded per kind in the perturbation stream (mimo.evaluation.seeds:
never the seed of the evaluation's ε or of the sampler's noise), so two models see the very same
perturbed contexts and their curves compare pair by pair; the strengths of a kind share their draws
(the same noise scaled by σ, the same uniform numbers thresholded by p or by the share), so a stronger
perturbation contains every change of a weaker one. Pixels are clipped to [-1, 1] after the
perturbation, as an image of them would be, in both the sampled and the velocity-error path.

- noise: Gaussian noise of standard deviation σ added to every context frame;
- drop: each context frame after the first is lost with probability p, and replaced by a blank frame
  (zeros: mid-grey pixels, or the mean of unit-variance latents);
- repeat: each context frame after the first is, with probability p, a copy of the last frame kept
  before it (a freeze: the history shows no motion there; at p = 1, frames [0, 1, 2] become [0, 0, 0]);
- mask: a share of the patches of every context frame is blanked (the model's patch grid).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from einops import repeat
from torch import Tensor

from mimo.config import Config, DataConfig
from mimo.data.latents import latent_autoencoder
from mimo.data.media import plot_curves
from mimo.diffusion.sampler import sample_for_task
from mimo.evaluation.metrics import score_trajectory
from mimo.evaluation.seeds import Stream, stream_seed
from mimo.evaluation.velocity import velocity_error
from mimo.metrics.frame_metrics import psnr
from mimo.models.autoencoder import to_pixels
from mimo.models.dit import FrameCausalDiT

# strengths of each perturbation, 0 (the clean context) first: σ in pixel units of [-1, 1]; probabilities; shares
PERTURBATIONS: dict[str, tuple[float, ...]] = {
    "noise": (0.0, 0.1, 0.2, 0.4, 0.8),
    "drop": (0.0, 0.25, 0.5, 1.0),
    "repeat": (0.0, 0.25, 0.5, 1.0),
    "mask": (0.0, 0.25, 0.5, 0.75),
}
BLANK = 0.0
ROBUSTNESS_NOISE_LEVEL = 0.75  # of the velocity error under a perturbed history: noisy enough that history matters
PIXEL_RANGE = (-1.0, 1.0)
STRENGTH_LABEL = "strength (noise: σ; drop, repeat: probability per frame; mask: share of patches)"


def perturb_history(context: Tensor, kind: str, strength: float, patch_size: int, generator: torch.Generator) -> Tensor:
    """A perturbed copy of context frames (B, k, C, H, W); `generator` (CPU) draws every random choice."""
    if kind not in PERTURBATIONS:
        raise ValueError(f"unknown perturbation '{kind}'; choose one of {list(PERTURBATIONS)}")
    if strength < 0 or (kind != "noise" and strength > 1):
        raise ValueError(f"a '{kind}' strength must be in [0, {'inf' if kind == 'noise' else 1}], got {strength}")
    batch, frames, _, height, width = context.shape
    if kind == "noise":
        return context + strength * torch.randn(context.shape, generator=generator).to(context)
    if kind in ("drop", "repeat"):
        hit = torch.rand(batch, frames, generator=generator) < strength
        hit[:, 0] = False  # the first frame has no frame before it, and a history needs one frame
        hit = hit.to(context.device)
        if kind == "drop":
            return torch.where(hit[:, :, None, None, None], torch.full_like(context, BLANK), context)
        frame = torch.arange(frames, device=context.device).expand(batch, frames)
        last_kept = torch.where(hit, 0, frame).cummax(dim=1).values  # (B, k): the frame each one shows
        return context[torch.arange(batch, device=context.device)[:, None], last_kept]
    grid_h, grid_w = height // patch_size, width // patch_size
    count = round(strength * grid_h * grid_w)
    ranks = torch.rand(batch, frames, grid_h * grid_w, generator=generator).argsort(dim=-1).argsort(dim=-1)
    blanked = (ranks < count).reshape(batch, frames, grid_h, grid_w).to(context.device)
    blanked = repeat(blanked, "b t h w -> b t 1 (h p) (w q)", p=patch_size, q=patch_size)
    return torch.where(blanked, torch.full_like(context, BLANK), context)


def value_range(data: DataConfig) -> tuple[float, float] | None:
    """What a perturbed context is clipped to: pixels to [-1, 1]; latents are unbounded."""
    return PIXEL_RANGE if data.channels in (1, 3) else None


def continuation_scores(videos: Tensor, clips: Mapping[str, Tensor], context_frames: int) -> dict[str, float]:
    """PSNR (dB) of the generated frames against the truth; trajectory error (px) on the built-in videos."""
    k = context_frames
    truth = clips["video"][:, k : videos.shape[1]]
    scores = {"psnr": psnr(videos[:, k:].float(), truth.float()).mean().item()}
    if "positions" in clips:
        scores["trajectory_error"] = score_trajectory(videos, clips, k).mean_error
    return scores


def robustness_curves(
    score: Callable[[Tensor], dict[str, float]],
    context: Tensor,
    patch_size: int,
    perturbations: Mapping[str, Sequence[float]] = PERTURBATIONS,
    seed: int = 0,
    clip_to: tuple[float, float] | None = None,
) -> dict[str, list[dict[str, float]]]:
    """{kind: [{strength, score..., score_change...} per strength]}: `score` of each perturbed copy of
    `context` (B, k, C, H, W), clipped to `clip_to` (see `value_range`), and its change against the same
    kind at strength 0.

    `score` maps context frames to named scores of what a model makes of them: e.g. the generated
    frames against the truth (`continuation_scores`) or the velocity error given that history.
    """
    curves: dict[str, list[dict[str, float]]] = {}
    for kind, strengths in perturbations.items():
        substream = list(PERTURBATIONS).index(kind) if kind in PERTURBATIONS else 0  # perturb_history refuses others
        kind_seed = stream_seed(seed, Stream.PERTURBATION, substream)
        rows = []
        for strength in strengths:
            perturbed = perturb_history(context, kind, strength, patch_size, torch.Generator().manual_seed(kind_seed))
            if clip_to is not None:
                perturbed = perturbed.clamp(*clip_to)
            rows.append({"strength": float(strength), **score(perturbed)})
        reference = next((row for row in rows if row["strength"] == 0), rows[0])
        for row in rows:
            row.update({f"{name}_change": row[name] - reference[name] for name in list(row) if name != "strength"})
        curves[kind] = rows
    return curves


def velocity_error_curves(
    model: FrameCausalDiT,
    config: Config,
    video: Tensor,
    perturbations: Mapping[str, Sequence[float]] = PERTURBATIONS,
    noise_level: float = ROBUSTNESS_NOISE_LEVEL,
    seed: int = 0,
) -> dict[str, list[dict[str, float]]]:
    """Robustness without sampling: the held-out velocity error (`mimo.evaluation.velocity`) of frames k..
    of `video` when its context frames are perturbed (later frames of the history stay true). Cheap and
    paired across models (same clips, noise and perturbations), so small differences are measurable."""
    context_frames = config.context_frames
    later = video[:, context_frames:]

    def score(context: Tensor) -> dict[str, float]:
        history = torch.cat([context, later], dim=1)
        return {"velocity_error": velocity_error(model, history, context_frames, (noise_level,), seed).mean().item()}

    context = video[:, :context_frames]
    return robustness_curves(score, context, model.patch_size, perturbations, seed, value_range(config.data))


def plot_robustness(curves: Mapping[str, list[dict[str, Any]]], out_dir: str | Path) -> list[Path]:
    """One PNG per score: its change against the perturbation strength, a line per perturbation."""
    names = [name for name in next(iter(curves.values()))[0] if name != "strength" and not name.endswith("_change")]
    paths = []
    for name in names:
        lines = {
            kind: ([row["strength"] for row in rows], [row[f"{name}_change"] for row in rows])
            for kind, rows in curves.items()
        }
        paths.append(
            plot_curves(
                lines,
                Path(out_dir) / f"robustness_{name}.png",
                STRENGTH_LABEL,
                f"change of {name}",
                "generated frames with a perturbed history",
                log_y=False,
            )
        )
    return paths


def evaluate_robustness(
    model: FrameCausalDiT, config: Config, clips: Mapping[str, Tensor], out_dir: str | Path
) -> dict[str, Any]:
    """`mimo eval ... eval.robustness=noise,drop,repeat,mask`: the curves of the chosen perturbations for a
    trained prediction model on held-out `clips`, sampled as `mimo eval` samples; writes the plots."""
    kinds = config.eval.robustness_list()  # validated with the config
    device = model.patch_embed.weight.device
    num_frames = clips["video"].shape[1]
    seed = config.eval.seed_list()[0]
    autoencoder = latent_autoencoder(config.data)  # latents: decoded to pixels

    def continue_clips(context: Tensor) -> Tensor:
        generator = torch.Generator().manual_seed(stream_seed(seed, Stream.SAMPLING_NOISE))
        parts = [
            sample_for_task(model, config, part.to(device), None, generator, num_frames=num_frames).cpu()
            for part in context.split(config.eval.batch_size)
        ]
        return to_pixels(torch.cat(parts), autoencoder, config.eval.batch_size)

    pixel_clips = {**clips, "video": to_pixels(clips["video"], autoencoder, config.eval.batch_size)}
    curves = robustness_curves(
        lambda context: continuation_scores(continue_clips(context), pixel_clips, config.context_frames),
        clips["video"][:, : config.context_frames],
        model.patch_size,
        {kind: PERTURBATIONS[kind] for kind in kinds},
        seed,
        value_range(config.data),
    )
    plots = plot_robustness(curves, out_dir)
    return {"curves": curves, "plots": [str(path) for path in plots]}
