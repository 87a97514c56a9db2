"""`mimo eval` and `mimo probe`: generate and measure, or probe the history features of a trained run.

Evaluation follows the run's task: held-out real clips give the context frames (prediction) or the
class labels (class-conditional), samples are generated per seed, and each metric is reported as
mean ± std over seeds. Given context frames stay in the videos that are scored (K-600 protocol).
Latent runs are decoded to pixels with the autoencoder named in the latents' manifest.

Probing feeds clean clips to the frozen EMA model; history features do not depend on noisy frames,
so they are deterministic. Tokens of each frame are averaged at every layer, frames are averaged
for the clip label, and a linear probe is fitted per layer (held-out accuracy); CKNNA compares the
features with a reference (another run, or on the built-in videos the proxy video classifier).
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

import torch
from einops import reduce
from torch import Tensor
from tqdm.auto import tqdm

from mimo.config import Config, with_overrides
from mimo.data import build_dataset, to_pixels
from mimo.diffusion.sampler import sample_for_task
from mimo.evaluation.robustness import evaluate_robustness
from mimo.media import plot_curves, save_gif, video_grid
from mimo.metrics.cknna import cknna
from mimo.metrics.frame_metrics import psnr, ssim
from mimo.metrics.fvd import compute_fvd
from mimo.metrics.i3d import load_i3d
from mimo.metrics.probe import linear_probe
from mimo.metrics.proxy_classifier import ProxyClassifierConfig, load_proxy_classifier
from mimo.metrics.trajectory import trajectory_error
from mimo.models.dit import FrameCausalDiT
from mimo.train.trainer import load_trained_model

SHOWN_VIDEOS = 8


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


def load_clips(config: Config, count: int) -> dict[str, Tensor]:
    """`count` held-out clips (deterministic), class-balanced when the dataset has labels and asks for it."""
    synthetic = config.data.dataset == "synthetic"
    dataset = build_dataset(config.data, "eval", count if synthetic else None, config.eval.start_at_zero)
    if len(dataset) < count:
        raise ValueError(f"the evaluation data has {len(dataset)} clips, fewer than eval.num_videos={count}")
    labels = getattr(dataset, "labels", None)
    if isinstance(labels, Tensor) and config.eval.balanced_classes and bool((labels >= 0).all()):
        indices = balanced_indices(labels, count)
    else:
        indices = list(range(count))
    items = [dataset[i] for i in tqdm(indices, desc="real clips", leave=False)]
    return {key: torch.stack([item[key] for item in items]) for key in items[0]}


def generate(model: FrameCausalDiT, config: Config, clips: dict[str, Tensor], seed: int) -> Tensor:
    """Samples for every clip, batched; one generator per seed so runs are reproducible."""
    generator = torch.Generator().manual_seed(seed)
    device = model.patch_embed.weight.device
    batches = zip(
        clips["video"].split(config.eval.batch_size), clips["label"].split(config.eval.batch_size), strict=True
    )
    samples = [
        sample_for_task(model, config, video.to(device), label.to(device), generator).cpu()
        for video, label in tqdm(list(batches), desc=f"sampling (seed {seed})")
    ]
    return torch.cat(samples)


def _mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def evaluate_run(
    checkpoint: str | Path, overrides: list[str] | None = None, out_dir: str | Path | None = None, device: str = "cpu"
) -> dict[str, Any]:
    """Generate per seed and compute the configured metrics; writes eval.json, eval.md and pictures."""
    model, config = load_trained_model(checkpoint, device=device)
    config = with_overrides(config, overrides or [])
    out = Path(out_dir) if out_dir is not None else Path(config.train.out_dir) / "eval"
    out.mkdir(parents=True, exist_ok=True)
    metrics = config.eval.metric_list(config.data.dataset)
    if "trajectory" in metrics and config.data.dataset != "synthetic":
        raise ValueError("eval.metrics: the trajectory error needs the built-in videos (data.dataset=synthetic)")
    clips = load_clips(config, config.eval.num_videos)
    real = to_pixels(clips["video"], config.data, config.eval.batch_size)
    k = config.context_frames
    extractor = load_i3d(config.eval.i3d_path, device=device) if "fvd" in metrics else None
    proxy = load_proxy_classifier(proxy_config(config), device=device) if "proxy_fd" in metrics else None
    per_seed: dict[str, list[float]] = {name: [] for name in metrics}
    per_frame: list[Tensor] = []
    for seed in config.eval.seed_list():
        fake = to_pixels(generate(model, config, clips, seed), config.data, config.eval.batch_size)
        if "fvd" in metrics:
            per_seed["fvd"].append(compute_fvd(real, fake, extractor, config.eval.batch_size, device))
        if "proxy_fd" in metrics:
            per_seed["proxy_fd"].append(compute_fvd(real, fake, proxy.features, config.eval.batch_size, device))
        if "trajectory" in metrics:
            error = trajectory_error(fake[:, k:], clips["positions"][:, k:], clips["colors"], clips["valid"])
            per_seed["trajectory"].append(error.mean_error)
            per_frame.append(error.per_frame_error)
        if "psnr" in metrics:
            per_seed["psnr"].append(psnr(fake[:, k:], real[:, k:]).mean().item())
        if "ssim" in metrics:
            per_seed["ssim"].append(ssim(fake[:, k:], real[:, k:]).mean().item())
    results = {
        "checkpoint": str(checkpoint),
        "num_videos": config.eval.num_videos,
        "seeds": config.eval.seed_list(),
        "sample_steps": config.sample.steps,
        "metrics": {name: {**_mean_std(values), "per_seed": values} for name, values in per_seed.items()},
    }
    if config.data.channels in (1, 3) or config.data.dataset == "latents":
        results["samples_gif"] = str(
            save_gif(video_grid([real[:SHOWN_VIDEOS], fake[:SHOWN_VIDEOS]], upscale=2), out / "samples.gif")
        )
    if per_frame:
        mean_curve = torch.stack(per_frame).mean(dim=0).tolist()
        frames = list(range(k + 1, k + 1 + len(mean_curve)))
        results["trajectory_plot"] = str(
            plot_curves(
                {"samples": (frames, mean_curve)},
                out / "trajectory_error.png",
                "frame",
                "error (px)",
                "trajectory error per generated frame",
                log_y=False,
            )
        )
    if config.eval.robustness:
        results["robustness"] = evaluate_robustness(model, config, clips, out)
    _write_report(out, "eval", results)
    return results


def proxy_config(config: Config, **settings: int) -> ProxyClassifierConfig:
    """The cached proxy classifier for this frame size and object count (trained once on 16-frame clips; any
    length works); `settings` override its training (steps, width)."""
    return ProxyClassifierConfig(frame_size=config.data.frame_size, max_objects=config.data.max_objects, **settings)


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


def probe_run(
    checkpoint: str | Path,
    overrides: list[str] | None = None,
    reference: str | Path | None = None,
    out_dir: str | Path | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Linear-probe accuracy and CKNNA of the history features at every layer; writes probe.json/.md and a plot."""
    model, config = load_trained_model(checkpoint, device=device)
    config = with_overrides(config, overrides or [])
    out = Path(out_dir) if out_dir is not None else Path(config.train.out_dir) / "probe"
    out.mkdir(parents=True, exist_ok=True)
    clips = load_clips(config, config.eval.probe_clips)
    labels = clips["label"]
    if bool((labels < 0).any()):
        raise ValueError("probing needs class labels; this dataset is unlabelled (use class folders, UCF-101 or K-600)")
    features = history_features(model, clips["video"], config.eval.batch_size)
    clip_features = {layer: f.mean(dim=1) for layer, f in features.items()}
    reference_features, reference_name = _reference_features(reference, config, clips, device)
    layers = sorted(clip_features)
    accuracy = {layer: linear_probe(clip_features[layer], labels).held_out_accuracy for layer in layers}
    alignment = (
        {layer: cknna(clip_features[layer], reference_features) for layer in layers}
        if reference_features is not None
        else {}
    )
    chosen = config.eval.probe_layer or config.mimo.decoder_layer or model.depth
    results = {
        "checkpoint": str(checkpoint),
        "num_clips": len(labels),
        "chance_accuracy": 1 / int(labels.max() + 1),
        "layer": chosen,
        "accuracy": accuracy[chosen],
        "cknna": alignment.get(chosen, math.nan),
        "reference": reference_name,
        "per_layer": {str(layer): {"accuracy": accuracy[layer], "cknna": alignment.get(layer)} for layer in layers},
    }
    curves = {"probe accuracy": (layers, [accuracy[layer] for layer in layers])}
    if alignment:
        curves[f"CKNNA vs {reference_name}"] = (layers, [alignment[layer] for layer in layers])
    results["plot"] = str(plot_curves(curves, out / "probe.png", "layer", "value", "history features", log_y=False))
    _write_report(out, "probe", results)
    return results


def _reference_features(
    reference: str | Path | None, config: Config, clips: dict[str, Tensor], device: str
) -> tuple[Tensor | None, str]:
    """Clip features of the reference representation: another run's last layer, or the proxy classifier."""
    if reference is not None:
        other, other_config = load_trained_model(reference, device=device)
        features = history_features(other, clips["video"], other_config.eval.batch_size)
        return features[other.depth].mean(dim=1), f"run {reference} (layer {other.depth})"
    if config.data.dataset == "synthetic":
        proxy = load_proxy_classifier(proxy_config(config), device=device)
        with torch.no_grad():
            parts = [proxy.features(chunk.to(device)).cpu() for chunk in clips["video"].split(config.eval.batch_size)]
        return torch.cat(parts), "proxy video classifier"
    return None, "none"


def _write_report(out: Path, name: str, results: dict[str, Any]) -> None:
    (out / f"{name}.json").write_text(json.dumps(results, indent=1, default=str))
    lines = [f"# mimo {name}", "", f"checkpoint: `{results['checkpoint']}`", ""]
    if name == "eval":
        lines += ["| metric | mean | std | per seed |", "|---|---|---|---|"]
        for metric, values in results["metrics"].items():
            seeds = ", ".join(f"{v:.4g}" for v in values["per_seed"])
            lines.append(f"| {metric} | {values['mean']:.4g} | {values['std']:.3g} | {seeds} |")
    else:
        lines += [f"chance accuracy {results['chance_accuracy']:.3f}; CKNNA reference: {results['reference']}", ""]
        lines += ["| layer | probe accuracy | CKNNA |", "|---|---|---|"]
        for layer, values in results["per_layer"].items():
            alignment = "" if values["cknna"] is None else f"{values['cknna']:.3f}"
            lines.append(f"| {layer} | {values['accuracy']:.3f} | {alignment} |")
    for key in ("samples_gif", "trajectory_plot", "plot"):
        if key in results:
            lines += ["", f"![{key}]({Path(results[key]).name})"]
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
