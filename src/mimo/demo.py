"""The main job a newcomer runs first: train a tiny MiMo on the built-in videos, sample, measure, picture.

It trains for a few CPU minutes, then continues held-out clips from their first frames — for the
training length and for twice that with the sliding-window cache — and compares the objects'
positions in the samples with the ground-truth motion (trajectory error) and against a trivial
predictor that repeats the last context frame.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from mimo.config import Config, load_config
from mimo.data.synthetic import MovingShapes
from mimo.diffusion.sampler import sample_video
from mimo.media import save_gif, video_grid
from mimo.metrics.frame_metrics import psnr
from mimo.metrics.trajectory import TrajectoryError, trajectory_error
from mimo.train.logger import read_metrics
from mimo.train.trainer import load_trained_model, train

DEMO_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"
EVAL_CLIPS = 32
SHOWN_CLIPS = 6
EVAL_SEED = 12345  # held-out clips: a seed no training clip uses


@dataclass
class DemoReport:
    train_seconds: float
    steps: int
    final_loss: float
    final_diffusion_loss: float
    final_mask_loss: float | None
    sample_seconds_per_frame: float
    trajectory_error_px: float
    trajectory_error_copy_last_px: float
    trajectory_miss_rate: float
    teacher_forced_trajectory_error_px: float
    long_trajectory_error_px: float
    long_trajectory_error_copy_last_px: float
    psnr_db: float
    psnr_copy_last_db: float
    files: dict[str, str]


def autoregressive(
    model, config: Config, clips: dict[str, torch.Tensor], num_frames: int, progress: bool = True
) -> tuple[torch.Tensor, float]:
    """Continue the clips' context frames to `num_frames`; returns samples and seconds per generated frame."""
    context = clips["video"][:, : config.context_frames]
    started = time.perf_counter()
    samples = sample_video(
        model,
        num_frames,
        context=context,
        steps=config.sample.steps,
        solver=config.sample.solver,
        window=config.data.num_frames - 1,
        generator=torch.Generator().manual_seed(0),
        progress=progress,
    )
    generated = (num_frames - config.context_frames) * context.shape[0]
    return samples, (time.perf_counter() - started) / generated


def teacher_forced(model, config: Config, video: torch.Tensor) -> torch.Tensor:
    """Frames k.. of `video` each sampled from the *true* frames before it: what the model learned of the
    motion, without the compounding of its own errors that autoregressive sampling adds."""
    k = config.context_frames
    generated = [
        sample_video(
            model,
            t + 1,
            context=video[:, :t],
            steps=config.sample.steps,
            solver=config.sample.solver,
            window=config.data.num_frames - 1,
            generator=torch.Generator().manual_seed(0),
        )[:, -1:]
        for t in range(k, video.shape[1])
    ]
    return torch.cat([video[:, :k], *generated], dim=1)


def held_out_clips(config: Config, num_frames: int, count: int = EVAL_CLIPS) -> dict[str, torch.Tensor]:
    """Built-in clips of a seed no training clip uses, stacked: video, positions, colors, valid, label."""
    dataset = MovingShapes(count, config.data.frame_size, num_frames, EVAL_SEED, config.data.max_objects)
    items = [dataset[i] for i in range(count)]
    return {key: torch.stack([item[key] for item in items]) for key in items[0]}


def copy_last_frame(video: torch.Tensor, context_frames: int) -> torch.Tensor:
    """The trivial predictor: the context frames, then the last of them repeated to the clip's length."""
    copied = video[:, context_frames - 1 : context_frames].expand_as(video).clone()
    copied[:, :context_frames] = video[:, :context_frames]
    return copied


def run_demo(
    out_dir: str | Path = "runs/demo", steps: int | None = None, overrides: list[str] | None = None
) -> DemoReport:
    """Train, sample, measure and picture; prints the figures and where the pictures are."""
    out_dir = Path(out_dir)
    settings = [f"train.out_dir={out_dir}", *(overrides or [])]
    if steps is not None:
        settings.append(f"train.steps={steps}")
    config = load_config(DEMO_CONFIG if DEMO_CONFIG.is_file() else None, settings)
    if config.data.dataset != "synthetic" or config.train.task != "prediction":
        raise ValueError(
            "the demo measures motion on the built-in videos: keep data.dataset=synthetic, task=prediction"
        )

    result = train(config)
    if result.interrupted:
        print(f"training was interrupted at step {result.step}; run the demo again to resume and finish it")
        return None
    model, config = load_trained_model(out_dir)
    length, long_length = config.data.num_frames, 2 * config.data.num_frames
    clips = held_out_clips(config, long_length)
    k = config.context_frames

    samples, seconds_per_frame = autoregressive(model, config, clips, length)
    long_samples, _ = autoregressive(model, config, clips, long_length)
    copy_last = copy_last_frame(clips["video"], k)
    forced = teacher_forced(model, config, clips["video"][:, :length])

    def trajectory(videos: torch.Tensor, frames: int) -> TrajectoryError:
        return trajectory_error(videos[:, k:frames], clips["positions"][:, k:frames], clips["colors"], clips["valid"])

    ours, ours_long = trajectory(samples, length), trajectory(long_samples, long_length)
    copied, copied_long = trajectory(copy_last, length), trajectory(copy_last, long_length)
    truth = clips["video"][:, k:length]

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
    metrics = read_metrics(out_dir)
    last = metrics[-1] if metrics else result.losses
    report = DemoReport(
        train_seconds=round(result.seconds, 1),
        steps=result.step,
        final_loss=round(last.get("loss", float("nan")), 4),
        final_diffusion_loss=round(last.get("diffusion", float("nan")), 4),
        final_mask_loss=round(last["mask"], 4) if "mask" in last else None,
        sample_seconds_per_frame=round(seconds_per_frame, 4),
        trajectory_error_px=round(ours.mean_error, 2),
        trajectory_error_copy_last_px=round(copied.mean_error, 2),
        trajectory_miss_rate=round(ours.miss_rate, 3),
        teacher_forced_trajectory_error_px=round(trajectory(forced, length).mean_error, 2),
        long_trajectory_error_px=round(ours_long.mean_error, 2),
        long_trajectory_error_copy_last_px=round(copied_long.mean_error, 2),
        psnr_db=round(psnr(samples[:, k:], truth).mean().item(), 2),
        psnr_copy_last_db=round(psnr(copy_last[:, k:length], truth).mean().item(), 2),
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
    print(
        f"trajectory error, frames {k + 1}-{t} (px, lower is better): samples {report.trajectory_error_px} "
        f"vs copy-last-frame {report.trajectory_error_copy_last_px}; objects missed {report.trajectory_miss_rate:.1%}"
    )
    print(
        "  each frame sampled from the true history instead (teacher-forced): "
        f"{report.teacher_forced_trajectory_error_px}"
    )
    print(
        f"trajectory error to frame {2 * t} (sliding window past the training length): "
        f"samples {report.long_trajectory_error_px} vs copy-last-frame {report.long_trajectory_error_copy_last_px}"
    )
    print(f"PSNR of generated frames: samples {report.psnr_db} dB vs copy-last-frame {report.psnr_copy_last_db} dB")
    for name, path in report.files.items():
        print(f"{name}: {path}")
