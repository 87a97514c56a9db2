"""`mimo eval` and `mimo probe`: generate and measure, or probe the history features of a trained run.

Evaluation follows the run's task: held-out real clips give the context frames (prediction) or the
class labels (class-conditional), samples are generated per seed, and each metric is reported as
mean ± std over seeds. Given context frames stay in the videos that are scored (K-600 protocol).
The real set is always read from the video files (FVD against real pixels, as FAR and StyleGAN-V);
latent samples are decoded with the autoencoder named in the latents' manifest, and the VAE
reconstruction FVD is reported beside as the upper-bound row.

Probing feeds clean clips to the frozen EMA model; history features do not depend on noisy frames,
so they are deterministic. Tokens of each frame are averaged at every layer, frames are averaged
for the clip label, and a linear probe is fitted per layer (held-out accuracy); CKNNA compares the
features with a reference (another run, or on the built-in videos the proxy video classifier).
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mimo.config import MIN_PROBE_CLIPS, Config, with_sampling_overrides
from mimo.data.latents import latent_autoencoder
from mimo.data.media import plot_curves, save_gif, video_grid
from mimo.data.real_set import SOURCE_KEYS, pixel_size, with_real_videos
from mimo.diffusion.cost import sampling_cost
from mimo.errors import ConfigError
from mimo.evaluation.drift import DriftCurves
from mimo.evaluation.metrics import Metric, build_metrics, metric_names, proxy_config, score_trajectory
from mimo.evaluation.protocols import copy_last_frame, generate, history_features, load_clips
from mimo.evaluation.robustness import evaluate_robustness
from mimo.metrics.cknna import cknna
from mimo.metrics.fvd import FeatureExtractor
from mimo.metrics.fvd_protocol import (
    I3D_PORT_SOURCE,
    FVDProtocol,
    FVDProtocolError,
    extractor_identity,
    protocol_card,
)
from mimo.metrics.probe import linear_probe
from mimo.metrics.proxy_classifier import load_proxy_classifier
from mimo.models.autoencoder import to_model_space, to_pixels
from mimo.models.dit import FrameCausalDiT
from mimo.options import check_options
from mimo.train.checkpoint import load_trained_model, naming_the_checkpoint, output_folder

SHOWN_VIDEOS = 8
EVAL_KEYS = ("sample.", "eval.", "data.", "train.context_frames")  # the settings evaluation reads
PROBE_KEYS = ("eval.", "data.")  # probing reads clean clips: no sampling, no context


def _mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def evaluate_run(
    checkpoint: str | Path,
    overrides: list[str] | None = None,
    out_dir: str | Path | None = None,
    device: str = "cpu",
    extractor: FeatureExtractor | None = None,
    extractor_source: str | None = None,
) -> dict[str, Any]:
    """Generate per seed and compute the configured metrics; writes eval.json, eval.md and pictures to
    `out_dir` (default: RUN/eval, RUN being the run folder or exported model evaluated). Prints the cost first.

    The real clips are decoded from the video files (`mimo.data.real_set`), whatever space the model
    trains in; `extractor` replaces the I3D of FVD (`extractor_source` names it on the protocol card).
    Past the training length (`eval.num_frames`), quality is also scored along the video (drift).
    """
    model, config = load_trained_model(checkpoint, device=device)
    config = check_options(with_sampling_overrides(config, overrides or [], EVAL_KEYS))
    out = output_folder(checkpoint, out_dir, "eval")
    length = config.eval.num_frames or config.data.num_frames
    real_config = with_real_videos(config, length, pixel_size(config))
    protocol = _fvd_protocol(config, real_config, length)
    real = load_clips(real_config, config.eval.num_videos)  # pixels read from the video files
    context = to_model_space(real["video"], latent_autoencoder(config.data), config.eval.batch_size)
    clips = {**real, "video": context}
    options = {"fvd": {"extractor": extractor, "normaliser": protocol.normaliser}}
    options["proxy_fd"] = {"normaliser": protocol.normaliser}
    metrics = build_metrics(metric_names(config), config, real, device, **options)
    seeds = config.eval.seed_list()
    cost = sampling_cost(model, config, config.eval.num_videos, config.eval.batch_size, len(seeds), length)
    print(cost.describe("eval sampling"), file=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    drift = DriftCurves(
        metrics, real["video"], length, config.data.num_frames, config.eval.drift_hop, device, protocol.normaliser
    )
    per_seed, trajectory, fake = score_seeds(model, checkpoint, config, clips, real, metrics, drift, length)
    results = {
        "checkpoint": str(checkpoint),
        "out_dir": str(out),
        "num_videos": config.eval.num_videos,
        "seeds": seeds,
        "sample_steps": config.sample.steps,
        "num_frames": length,
        "metrics": {name: {**_mean_std(values), "per_seed": values} for name, values in per_seed.items()},
        "copy_last": _copy_last(real["video"], metrics, config.context_frames),
        "protocol": _protocol_card(protocol, real_config, len(real["video"]), metrics, extractor_source),
    }
    if drift.curves:
        results["drift"] = drift.report(config.context_frames, out)
    if config.eval.robustness:
        results["robustness"] = evaluate_robustness(model, config, clips, out)
    results |= _pictures(config, real["video"], fake, trajectory, out)
    _write_report(out, "eval", results)
    return results


def _copy_last(real: Tensor, metrics: dict[str, Metric], context_frames: int) -> dict[str, float]:
    """The metrics of the trivial predictor (the last given frame repeated) beside the model's: prediction only."""
    if not context_frames:
        return {}
    return {name: metric(copy_last_frame(real, context_frames)) for name, metric in metrics.items()}


def score_seeds(
    model: FrameCausalDiT,
    checkpoint: str | Path,
    config: Config,
    clips: dict[str, Tensor],
    real: dict[str, Tensor],
    metrics: dict[str, Metric],
    drift: DriftCurves,
    length: int,
) -> tuple[dict[str, list[float]], list[Tensor], Tensor]:
    """Generate `length` frames from `clips` (model space) with the `checkpoint`'s `model` once per seed of
    eval.seeds and score them against `real` (pixels): every metric, the drift curves, the trajectory error per
    generated frame. Returns each metric's score per seed, the trajectory curves and the last seed's videos."""
    batch, autoencoder = config.eval.batch_size, latent_autoencoder(config.data)  # latents: decoded to pixels
    per_seed: dict[str, list[float]] = {name: [] for name in metrics}
    trajectory: list[Tensor] = []  # per generated frame, one curve per seed
    for seed in config.eval.seed_list():
        with naming_the_checkpoint(checkpoint):
            fake = to_pixels(generate(model, config, clips, seed, length), autoencoder, batch)
        for name, metric in metrics.items():
            per_seed[name].append(metric(fake))
        drift.add(fake)
        if "trajectory" in metrics:
            trajectory.append(score_trajectory(fake, real, config.context_frames).per_frame_error)
    if "fvd" in metrics and config.data.dataset == "latents":  # the paper's "VAE reconstruction (upper bound)" row
        per_seed["fvd_vae_reconstruction"] = [metrics["fvd"](to_pixels(clips["video"], autoencoder, batch))]
    return per_seed, trajectory, fake


def _protocol_card(
    protocol: FVDProtocol, config: Config, clips: int, metrics: dict[str, Metric], extractor_source: str | None
) -> dict[str, Any]:
    """FVD's protocol card of an evaluation (`config` reading the real videos): the real set, the feature
    extractor, the sampler."""
    return protocol_card(
        protocol,
        _feature_extractor(metrics, extractor_source or config.eval.i3d_path),
        clips,
        clips,
        sampling_seeds=config.eval.seed_list(),
        real_videos={key: getattr(config.data, key) for key in SOURCE_KEYS},
        sample_steps=config.sample.steps,
        cfg_scale=config.sample.cfg_scale,
    )


def _pictures(config: Config, real: Tensor, fake: Tensor, trajectory: list[Tensor], out: Path) -> dict[str, str]:
    """A GIF of real against generated videos (pixels or decoded latents) and the mean trajectory error per
    generated frame (the built-in videos)."""
    pictures = {}
    if config.data.channels in (1, 3) or config.data.dataset == "latents":
        grid = video_grid([real[:SHOWN_VIDEOS], fake[:SHOWN_VIDEOS]], upscale=2)
        pictures["samples_gif"] = str(save_gif(grid, out / "samples.gif"))
    if trajectory:
        k, mean_curve = config.context_frames, torch.stack(trajectory).mean(dim=0).tolist()
        frames = list(range(k + 1, k + 1 + len(mean_curve)))
        pictures["trajectory_plot"] = str(
            plot_curves(
                {"samples": (frames, mean_curve)},
                out / "trajectory_error.png",
                "frame",
                "error (px)",
                "trajectory error per generated frame",
                log_y=False,
            )
        )
    return pictures


def _fvd_protocol(config: Config, real_config: Config, length: int) -> FVDProtocol:
    """What FVD's real and generated sets are: the card every report carries."""
    try:
        return FVDProtocol(
            num_frames=length,
            frame_stride=real_config.data.frame_stride,
            resolution=real_config.data.frame_size,
            max_videos=config.eval.num_videos,
            start_at_zero=config.eval.start_at_zero,
            seed=real_config.data.seed,
            normaliser=config.eval.fvd_normaliser,
        )
    except FVDProtocolError as error:
        raise ConfigError(f"eval.fvd_normaliser: {error}") from error


def _feature_extractor(metrics: dict[str, Metric], source: str | None) -> dict[str, str]:
    """The card's feature extractor: FVD's I3D (or its stand-in), else the proxy classifier, else none."""
    if "fvd" in metrics:
        return extractor_identity(metrics["fvd"].extractor, source or I3D_PORT_SOURCE)
    if "proxy_fd" in metrics:
        return extractor_identity(
            metrics["proxy_fd"].classifier, "proxy video classifier (mimo.metrics.proxy_classifier), not FVD"
        )
    return {"source": "none (no distribution metric)", "sha256": ""}


def probe_run(
    checkpoint: str | Path,
    overrides: list[str] | None = None,
    reference: str | Path | None = None,
    out_dir: str | Path | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Linear-probe accuracy and CKNNA of the history features at every layer; writes probe.json/.md and a plot
    to `out_dir` (default: RUN/probe)."""
    model, config = load_trained_model(checkpoint, device=device)
    config = check_options(with_sampling_overrides(config, overrides or [], PROBE_KEYS))
    out = output_folder(checkpoint, out_dir, "probe")
    other = load_trained_model(reference, device=device) if reference is not None else None  # refused before work
    if other is not None and (other[1].data.frame_size, other[1].data.channels) != (
        config.data.frame_size,
        config.data.channels,
    ):
        raise ConfigError(
            f"--reference {reference} takes frames of {other[1].data.channels}x{other[1].data.frame_size}^2, this run "
            f"{config.data.channels}x{config.data.frame_size}^2; CKNNA compares features of the same clips: give a "
            "run of the same data.frame_size and data.channels"
        )
    clips = load_clips(config, config.eval.probe_clips, "eval.probe_clips", MIN_PROBE_CLIPS)
    labels = clips["label"]
    if bool((labels < 0).any()):
        raise ConfigError(
            "data.dataset: probing needs class labels, but this dataset is unlabelled "
            "(use class_folders, ucf101 or kinetics600)"
        )
    out.mkdir(parents=True, exist_ok=True)
    features = history_features(model, clips["video"], config.eval.batch_size)
    clip_features = {layer: f.mean(dim=1) for layer, f in features.items()}
    reference_name = f"run {reference}" if reference is not None else None
    reference_features, reference_name = _reference_features(other, reference_name, config, clips, device)
    layers = sorted(clip_features)
    accuracy = {layer: linear_probe(clip_features[layer], labels).held_out_accuracy for layer in layers}
    alignment = (
        {layer: cknna(clip_features[layer], reference_features) for layer in layers}
        if reference_features is not None
        else {}
    )
    chosen = config.eval.probe_layer or config.decoder_layer
    results = {
        "checkpoint": str(checkpoint),
        "out_dir": str(out),
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
    reference: tuple[FrameCausalDiT, Config] | None,
    reference_name: str | None,
    config: Config,
    clips: dict[str, Tensor],
    device: str,
) -> tuple[Tensor | None, str]:
    """Clip features of the reference representation: another run's last layer, or the proxy classifier."""
    if reference is not None:
        other, other_config = reference
        features = history_features(other, clips["video"], other_config.eval.batch_size)
        return features[other.depth].mean(dim=1), f"{reference_name} (layer {other.depth})"
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
        lines += [f"| {metric} of copy-last | {value:.4g} | | |" for metric, value in results["copy_last"].items()]
        if "protocol" in results:
            lines += ["", "| protocol | value |", "|---|---|"]
            lines += [f"| {key} | {value} |" for key, value in results["protocol"].items()]
        for curve in results.get("drift", {}).values():
            if isinstance(curve, dict):
                lines += ["", f"![drift]({Path(curve['plot']).name})"]
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
