"""The main job a newcomer runs first: train a tiny MiMo on the built-in videos, sample, measure, picture.

It trains for a few CPU minutes, then continues held-out clips from their first frames — for the
training length and for twice that with the sliding-window cache — and compares the objects'
positions in the samples with the ground-truth motion (trajectory error) for three predictors: the
reference model shipped with mimo (the same recipe trained for about 70 CPU minutes: what the code
can do), the model the demo just trained (what a few minutes buy), and repeating the last context frame.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

from mimo.config import Config, load_config
from mimo.data.media import save_gif, video_grid
from mimo.errors import ConfigError, Interrupted
from mimo.evaluation.metrics import METRICS, build_metrics, metric_names
from mimo.evaluation.motion import copy_last_scores, motion_scores
from mimo.evaluation.protocols import autoregressive, copy_last_frame, held_out_clips
from mimo.models.dit import FrameCausalDiT
from mimo.train.checkpoint import REFERENCE_MODEL, load_trained_model, naming_the_checkpoint
from mimo.train.logger import read_metrics
from mimo.train.trainer import train

DEMO_CONFIG = "demo.yaml"  # package data beside this module
SHOWN_CLIPS = 6


ROWS = ("reference", "demo", "copy-last")  # the shipped model, the one just trained, repeating the last frame
ROW_LABELS = {"reference": "reference model", "demo": "this demo's model", "copy-last": "copy last frame"}


@dataclass
class DemoReport:
    train_seconds: float
    steps: int
    final_loss: float
    final_diffusion_loss: float
    final_mask_loss: float | None
    sample_seconds_per_frame: float
    # per row of ROWS (the reference only when it was trained on clips like the demo's):
    metrics: dict[str, dict[str, float]]  # eval.metrics (mimo.evaluation.metrics) at the training length
    motion: dict[str, dict[str, float]]  # mimo.evaluation.motion: autoregressive/teacher-forced, 1x and 2x
    files: dict[str, str]


def _comparable(reference: Config, config: Config) -> bool:
    """Whether the reference model can continue the demo's clips: same frames, same context."""
    keys = ("frame_size", "channels", "num_frames")
    same_frames = all(getattr(reference.data, key) == getattr(config.data, key) for key in keys)
    return same_frames and reference.context_frames == config.context_frames


def _demo_config(out_dir: Path, steps: int | None, overrides: list[str] | None) -> Config:
    """demo.yaml with the run folder, the steps and `overrides`; refused unless it trains on the built-in videos."""
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
    return config


def _trained_models(out_dir: Path) -> dict[str, tuple[FrameCausalDiT, Config, str | Path]]:
    """The demo's trained model and, when trained on the same frames, the shipped reference model before it."""
    demo_model, config = load_trained_model(out_dir)
    models = {"demo": (demo_model, config, out_dir)}
    reference, reference_config = load_trained_model(REFERENCE_MODEL)
    if _comparable(reference_config, config):
        return {"reference": (reference, reference_config, REFERENCE_MODEL), **models}
    print("the reference model was trained on other frames than these: it is left out of the comparison")
    return models


def run_demo(
    out_dir: str | Path = "runs/demo", steps: int | None = None, overrides: list[str] | None = None
) -> DemoReport:
    """Train, sample, measure and picture beside the shipped reference model; prints the figures and where
    the pictures are."""
    out_dir = Path(out_dir)
    result = train(_demo_config(out_dir, steps, overrides))
    if result.interrupted:
        raise Interrupted(
            f"training was interrupted at step {result.step} (checkpoint saved); run the demo again to resume and "
            "finish it",
            result.stop_signal,
        )
    models = _trained_models(out_dir)
    config = models["demo"][1]
    length, long_length = config.data.num_frames, 2 * config.data.num_frames
    clips = held_out_clips(config, long_length)
    k = config.context_frames
    metrics = build_metrics(metric_names(config), config, clips)

    scores, motion, long_samples = {}, {}, {}
    for name, (model, model_config, checkpoint) in models.items():
        with naming_the_checkpoint(checkpoint):
            samples, seconds_per_frame = autoregressive(model, model_config, clips, long_length)
            motion[name] = motion_scores(model, model_config, clips, teacher_forced_at=(1,), samples=samples)
        if name == "demo":
            sample_seconds_per_frame = seconds_per_frame
        long_samples[name] = samples
        scores[name] = {metric: round(score(samples[:, :length]), 4) for metric, score in metrics.items()}
    copy_last = copy_last_frame(clips["video"], k)
    scores["copy-last"] = {metric: round(score(copy_last[:, :length]), 4) for metric, score in metrics.items()}
    motion["copy-last"] = copy_last_scores(config, clips)

    shown = [clips["video"][:SHOWN_CLIPS], *(samples[:SHOWN_CLIPS] for samples in long_samples.values())]
    files = {
        "samples_gif": str(save_gif(video_grid(shown, upscale=3), out_dir / "demo_samples.gif")),
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
        sample_seconds_per_frame=round(sample_seconds_per_frame, 4),
        metrics=scores,
        motion=motion,
        files=files,
    )
    (out_dir / "demo_report.json").write_text(json.dumps(asdict(report), indent=1))
    _print(report, config)
    return report


def _print(report: DemoReport, config: Config) -> None:
    k, t = config.context_frames, config.data.num_frames
    rows = [row for row in ROWS if row in report.metrics]
    print("\n== mimo demo ==")
    print(
        f"trained {report.steps} steps in {report.train_seconds:.0f} s; final loss {report.final_loss} "
        f"(diffusion {report.final_diffusion_loss}, mask {report.final_mask_loss})"
    )
    sample = config.sample
    print(
        f"sampling: {report.sample_seconds_per_frame:.3f} s per frame ({sample.steps} {sample.solver} steps, KV cache)"
    )
    motion = report.motion
    table = [
        (f"{METRICS[name].label}, frames {k + 1}-{t}", [report.metrics[r][name] for r in rows])
        for name in report.metrics[rows[0]]
    ]
    table += [
        (f"trajectory error (px), frames {k + 1}-{2 * t}", [motion[r]["ar2_px"] for r in rows]),
        (f"objects lost, frames {k + 1}-{2 * t}", [motion[r]["ar2_lost"] for r in rows]),
        (f"teacher-forced trajectory error (px), frames {k + 1}-{t}", [motion[r].get("tf_px") for r in rows]),
    ]
    width = max(len(label) for label, _ in table) + 4
    print(f"held-out clips continued from {k} frames:".ljust(width) + "".join(f"{ROW_LABELS[r]:>20}" for r in rows))
    for label, values in table:
        print(f"  {label}".ljust(width) + "".join(f"{'-' if v is None else v:>20}" for v in values))
    print(f"  (frames {t + 1}-{2 * t} are past the training length: sliding window; teacher-forced frames are each")
    print("   sampled from the true frames before them, so the gap to the first row is what errors compound to)")
    for name, path in report.files.items():
        print(f"{name}: {path}")
