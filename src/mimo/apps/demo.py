"""The main job a newcomer runs first: train a tiny MiMo on the built-in videos, sample, measure, picture.

It trains for a few CPU minutes, then continues held-out clips from their first frames — for the
training length and for twice that with the sliding-window cache — and compares the objects'
positions in the samples with the ground-truth motion (trajectory error) and against a trivial
predictor that repeats the last context frame.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import torch

from mimo.config import Config, load_config
from mimo.data.media import save_gif, video_grid
from mimo.errors import ConfigError, Interrupted
from mimo.evaluation.metrics import METRICS, build_metrics, score_trajectory
from mimo.evaluation.protocols import autoregressive, copy_last_frame, held_out_clips, teacher_forced
from mimo.train.checkpoint import load_trained_model, naming_the_checkpoint
from mimo.train.logger import read_metrics
from mimo.train.trainer import train

DEMO_CONFIG = "demo.yaml"  # package data beside this module
SHOWN_CLIPS = 6


@dataclass
class DemoReport:
    train_seconds: float
    steps: int
    final_loss: float
    final_diffusion_loss: float
    final_mask_loss: float | None
    sample_seconds_per_frame: float
    metrics: dict[str, float]  # eval.metrics of the samples (the registry of mimo.evaluation.metrics)
    metrics_copy_last: dict[str, float]  # the same of the copy-last-frame predictor
    teacher_forced_trajectory_error_px: float
    long_trajectory_error_px: float
    long_trajectory_error_copy_last_px: float
    files: dict[str, str]


def run_demo(
    out_dir: str | Path = "runs/demo", steps: int | None = None, overrides: list[str] | None = None
) -> DemoReport:
    """Train, sample, measure and picture; prints the figures and where the pictures are."""
    out_dir = Path(out_dir)
    settings = [f"train.out_dir={out_dir}", *(overrides or [])]
    if steps is not None:
        settings.append(f"train.steps={steps}")
    with resources.as_file(resources.files(__package__) / DEMO_CONFIG) as path:
        config = load_config(path, settings)
    if config.data.dataset != "synthetic" or config.train.task != "prediction":
        raise ConfigError(
            "data.dataset: the demo measures motion on the built-in videos: keep data.dataset=synthetic, "
            "train.task=prediction"
        )
    if config.train.steps < 1:
        raise ConfigError("train.steps: the demo measures a trained model; give at least 1 step (--steps)")

    result = train(config)
    if result.interrupted:
        raise Interrupted(
            f"training was interrupted at step {result.step} (checkpoint saved); run the demo again to resume and "
            "finish it",
            result.stop_signal,
        )
    model, config = load_trained_model(out_dir)
    length, long_length = config.data.num_frames, 2 * config.data.num_frames
    clips = held_out_clips(config, long_length)
    k = config.context_frames

    with naming_the_checkpoint(out_dir):
        samples, seconds_per_frame = autoregressive(model, config, clips, length)
        long_samples, _ = autoregressive(model, config, clips, long_length)
        forced = teacher_forced(model, config, clips["video"][:, :length])
    copy_last = copy_last_frame(clips["video"], k)

    metrics = build_metrics(config.eval.metric_list(config.data.dataset), config, clips)

    def trajectory(videos: torch.Tensor) -> float:
        return round(score_trajectory(videos, clips, k).mean_error, 2)

    files = {
        "samples_gif": str(
            save_gif(
                video_grid([clips["video"][:SHOWN_CLIPS], long_samples[:SHOWN_CLIPS]], upscale=3),
                out_dir / "demo_samples.gif",
            )
        ),
        "loss_plot": str(out_dir / "loss.png"),
        "checkpoint": str(result.checkpoint),
    }
    logged = read_metrics(out_dir)
    last = logged[-1] if logged else result.losses
    report = DemoReport(
        train_seconds=round(result.seconds, 1),
        steps=result.step,
        final_loss=round(last.get("loss", float("nan")), 4),
        final_diffusion_loss=round(last.get("diffusion", float("nan")), 4),
        final_mask_loss=round(last["mask"], 4) if "mask" in last else None,
        sample_seconds_per_frame=round(seconds_per_frame, 4),
        metrics={name: round(metric(samples), 4) for name, metric in metrics.items()},
        metrics_copy_last={name: round(metric(copy_last[:, :length]), 4) for name, metric in metrics.items()},
        teacher_forced_trajectory_error_px=trajectory(forced),
        long_trajectory_error_px=trajectory(long_samples),
        long_trajectory_error_copy_last_px=trajectory(copy_last),
        files=files,
    )
    (out_dir / "demo_report.json").write_text(json.dumps(asdict(report), indent=1))
    _print(report, config)
    return report


def _print(report: DemoReport, config: Config) -> None:
    k, t = config.context_frames, config.data.num_frames
    print("\n== mimo demo ==")
    print(
        f"trained {report.steps} steps in {report.train_seconds:.0f} s; final loss {report.final_loss} "
        f"(diffusion {report.final_diffusion_loss}, mask {report.final_mask_loss})"
    )
    print(f"sampling: {report.sample_seconds_per_frame:.3f} s per frame ({config.sample.steps} Euler steps, KV cache)")
    print(f"frames {k + 1}-{t}:")
    for name, value in report.metrics.items():
        print(f"  {METRICS[name].label}: samples {value} vs copy-last-frame {report.metrics_copy_last[name]}")
    print(
        "  trajectory error of each frame sampled from the true history instead (teacher-forced): "
        f"{report.teacher_forced_trajectory_error_px}"
    )
    print(
        f"trajectory error to frame {2 * t} (sliding window past the training length): "
        f"samples {report.long_trajectory_error_px} vs copy-last-frame {report.long_trajectory_error_copy_last_px}"
    )
    for name, path in report.files.items():
        print(f"{name}: {path}")
