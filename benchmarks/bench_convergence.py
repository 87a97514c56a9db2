"""Baseline and MiMo trained on the built-in videos, evaluated every K steps; the speed-up factor.
Resumable: rerun the same command to continue (run folders in runs/bench/, evaluations in the result JSON).

    nohup python benchmarks/bench_convergence.py --config configs/bench/convergence-cpu.yaml --threads 1 \\
        --out benchmarks/results > benchmarks/results/convergence-cpu.log 2>&1 &

Writes RESULTS/CONFIG_NAME.json (with the machine it ran on) and refreshes RESULTS/README.md, RESULTS being --out
(default runs/bench-results; the published ones: --out benchmarks/results); also `mimo bench convergence`;
`--help` lists the options.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP (see mimo.cli)

import torch

from harness import (
    BASELINE_OVERRIDES,
    PROBE,
    REPO_ROOT,
    convergence_summary,
    evaluation_steps,
    main,
    metric_label,
    speedup_text,
    summarised,
)
from mimo.config import Config, ConfigError, from_dict, read_yaml, with_overrides
from mimo.evaluation.metrics import build_metrics, metric_names, proxy_config
from mimo.evaluation.protocols import generate, history_features, load_clips
from mimo.metrics.probe import DEFAULT_C_GRID, linear_probe
from mimo.metrics.proxy_classifier import ProxyClassifierConfig
from mimo.models.dit import FrameCausalDiT
from mimo.train.checkpoint import find_checkpoint, load_trained_model
from mimo.train.distributed import default_device
from mimo.train.trainer import train

CONVERGENCE_CPU_CONFIG = REPO_ROOT / "configs" / "bench" / "convergence-cpu.yaml"
CONVERGENCE_METRICS = ("trajectory", "miss_rate", "proxy_fd")  # of the registry, unless eval.metrics names others
# --tiny: a seconds-long smoke run (tests) of the same code; its figures mean nothing.
TINY_CONVERGENCE_OVERRIDES = (
    "model.preset=micro",
    "model.depth=null",
    "model.width=null",
    "model.heads=null",
    "mimo.decoder_layer=null",
    "data.frame_size=16",
    "model.patch_size=4",
    "data.num_frames=4",
    "train.batch_size=2",
    "train.steps=4",
    "train.log_every=1",
    "sample.steps=2",
)
TINY_CONVERGENCE_SETTINGS = {
    "eval_every": 2,
    "eval_clips": 4,
    "probe_clips": 20,
    "proxy_classifier_steps": 2,
    "proxy_classifier_width": 8,
    "probe_c": 0.1,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=CONVERGENCE_CPU_CONFIG, help="the MiMo arm's config")
    parser.add_argument("--set", nargs="*", default=[], metavar="SECTION.KEY=VALUE", help="config overrides")
    parser.add_argument("--name", default=None, help="result name (default: the config's file name)")
    parser.add_argument("--runs-dir", type=Path, default=REPO_ROOT / "runs" / "bench", help="arms' run folders")


def result_name(args: argparse.Namespace) -> str:
    return args.name or Path(args.config).stem


# ----- 4. convergence -----------------------------------------------------------------------------
@dataclass(frozen=True)
class ConvergenceSettings:
    """The `benchmark:` section of a convergence config: when and on what both arms are evaluated."""

    eval_every: int = 100  # K: training steps between evaluations
    eval_clips: int = 64  # held-out clips continued from their context frames (trajectory error, proxy FD)
    probe_clips: int = 512  # held-out clips whose history features are probed
    proxy_classifier_steps: int | None = None  # proxy-FD classifier's training steps; None: its own default
    proxy_classifier_width: int | None = None  # its width; None: its own default
    probe_c: float | None = None  # inverse L2 strength of the probe; None sweeps mimo.metrics.probe.DEFAULT_C_GRID
    seed: int = 0  # noise of the evaluation samples


def load_convergence_config(path: str | Path, overrides: Sequence[str] = ()) -> tuple[Config, ConvergenceSettings]:
    """A training config (the MiMo arm) plus its `benchmark:` section, validated."""
    values = read_yaml(path)
    section = values.pop("benchmark", None) or {}
    known = {f.name for f in fields(ConvergenceSettings)}
    for key in section:
        if key not in known:
            raise ConfigError(f"unknown key 'benchmark.{key}' in {path}; valid keys: {', '.join(sorted(known))}")
    settings = ConvergenceSettings(**section)
    for key in ("eval_every", "proxy_classifier_steps", "proxy_classifier_width"):
        if getattr(settings, key) is not None and getattr(settings, key) < 1:
            raise ConfigError(f"benchmark.{key} must be at least 1, got {getattr(settings, key)}")
    if settings.eval_clips < 2 or settings.probe_clips < 10:
        raise ConfigError("benchmark.eval_clips must be at least 2 and benchmark.probe_clips at least 10")
    config = with_overrides(from_dict(values), list(overrides))
    if config.data.dataset != "synthetic" or config.train.task != "prediction":
        raise ConfigError(
            "the convergence benchmark measures motion on the built-in videos: set data.dataset=synthetic "
            "and train.task=prediction"
        )
    if not config.mimo.enabled:
        raise ConfigError("the config is the MiMo arm (the baseline is derived from it): set mimo.weight > 0")
    return config, settings


def _classifier_settings(settings: ConvergenceSettings) -> dict[str, int]:
    chosen = {"steps": settings.proxy_classifier_steps, "width": settings.proxy_classifier_width}
    return {key: value for key, value in chosen.items() if value is not None}


def proxy_classifier_config(config: Config, settings: ConvergenceSettings) -> ProxyClassifierConfig:
    """The project's proxy-FD classifier for this frame size, as `mimo eval` uses it (any clip length).

    Proxy FDs compare only under the same classifier, so its cache key is part of the fingerprint.
    """
    return proxy_config(config, **_classifier_settings(settings))


class ConvergenceEvaluator:
    """Held-out clips and the metrics of the registry (mimo.evaluation.metrics) prepared on them, once.

    Clips, sampling and history features are those of `mimo eval` / `mimo probe` (mimo.evaluation.protocols).
    """

    def __init__(self, config: Config, settings: ConvergenceSettings, device: torch.device):
        self.settings = settings
        self.clips = load_clips(config, max(settings.eval_clips, settings.probe_clips))
        self.held_out = {key: value[: settings.eval_clips] for key, value in self.clips.items()}
        names = CONVERGENCE_METRICS if config.eval.metrics == "auto" else metric_names(config)
        # eigh: exact for the rank-deficient covariances of a few hundred clips
        proxy = {"classifier": _classifier_settings(settings), "method": "eigh", "progress": False}
        self.metrics = build_metrics(list(names), config, self.held_out, str(device), proxy_fd=proxy)
        self.layer = config.decoder_layer

    def __call__(self, model: FrameCausalDiT, config: Config) -> dict[str, float]:
        samples = generate(model, config, self.held_out, self.settings.seed)
        scores = {name: round(metric(samples), 4) for name, metric in self.metrics.items()}
        probe_clips = self.clips["video"][: self.settings.probe_clips]
        per_frame = history_features(model, probe_clips, config.eval.batch_size)[self.layer]  # (N, T, D)
        labels = self.clips["label"][: self.settings.probe_clips]
        c = DEFAULT_C_GRID if self.settings.probe_c is None else self.settings.probe_c
        probe = linear_probe(per_frame.mean(dim=1), labels, c=c, seed=self.settings.seed)
        return scores | {PROBE: round(probe.held_out_accuracy, 4)}


def _fingerprint(config: Config, settings: ConvergenceSettings) -> str:
    """What the cached evaluations depend on: the config, the benchmark section and the proxy classifier.

    The config enters as its values that differ from the dataclass defaults, so a key added to the config
    later does not orphan a run. Not the output folder, and not train.steps: a larger budget continues
    the same runs.
    """
    defaults = Config().to_dict()
    values = {
        section: {key: value for key, value in entries.items() if value != defaults[section].get(key)}
        for section, entries in config.to_dict().items()
    }
    for key in ("out_dir", "steps"):
        values["train"].pop(key, None)
    classifier = proxy_classifier_config(config, settings).cache_key()
    text = json.dumps(
        {"config": values, "benchmark": dataclasses.asdict(settings), "classifier": classifier}, sort_keys=True
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def measure(args: argparse.Namespace, publish: Callable[[dict[str, Any]], Any]) -> dict[str, Any]:
    """Train both arms in chunks of K steps (each a resumable `mimo` run folder), evaluating after each chunk.

    Evaluations are kept in the result JSON: a restarted benchmark skips what is there and resumes each
    run from its last checkpoint. Arms alternate chunk by chunk, so both curves grow together.
    """
    config, settings = load_convergence_config(
        args.config, [*(TINY_CONVERGENCE_OVERRIDES if args.tiny else ()), *args.set]
    )
    if args.tiny:
        settings = dataclasses.replace(settings, **TINY_CONVERGENCE_SETTINGS)
    fingerprint = _fingerprint(config, settings)
    previous_path = args.results_dir / f"{args.result_name}.json"
    evaluations: dict[str, dict[str, dict[str, float]]] = {"baseline": {}, "mimo": {}}
    if previous_path.is_file():
        previous = json.loads(previous_path.read_text())
        if previous["settings"].get("fingerprint") != fingerprint:
            raise ConfigError(
                f"{previous_path} holds evaluations of another configuration; delete it (and its run folders in "
                f"{args.runs_dir}) to start over, or pass --name to keep both"
            )
        evaluations = previous["results"]["evaluations"]
    runs_dir = args.runs_dir / args.result_name
    arms = {"baseline": with_overrides(config, list(BASELINE_OVERRIDES)), "mimo": config}
    depth, width, heads = config.model.size()
    settings_json = {
        "config": str(args.config),
        "fingerprint": fingerprint,
        "runs": str(runs_dir),
        "model": f"{config.model.preset} (depth {depth}, width {width}, heads {heads})",
        "frame_size": config.data.frame_size,
        "patch_size": config.model.patch_size,
        "num_frames": config.data.num_frames,
        "context_frames": config.context_frames,
        "batch_size": config.train.batch_size,
        "steps": config.train.steps,
        "mask_ratio": config.mimo.mask_ratio,
        "mimo_weight": config.mimo.weight,
        "sample_steps": config.sample.steps,
        **dataclasses.asdict(settings),
    }

    def payload() -> dict[str, Any]:
        summary = convergence_summary(evaluations)
        return {"settings": settings_json, "results": {"evaluations": evaluations, "summary": summary}}

    device = torch.device(default_device())  # where Trainer trains
    evaluate = ConvergenceEvaluator(config, settings, device)
    if "proxy_fd" in evaluate.metrics:
        accuracy = evaluate.metrics["proxy_fd"].classifier.validation_accuracy
        settings_json["proxy_classifier_accuracy"] = round(accuracy, 4)
    for step in evaluation_steps(config.train.steps, settings.eval_every):
        if all(str(step) in evaluations[arm] for arm in arms):
            continue
        for arm, arm_config in arms.items():
            if str(step) in evaluations[arm]:
                continue
            run_dir = runs_dir / arm
            chunk = with_overrides(arm_config, [f"train.steps={step}", f"train.out_dir={run_dir}"])
            wall, cpu = time.perf_counter(), time.process_time()
            trained = train(chunk)
            train_wall, train_cpu = time.perf_counter() - wall, time.process_time() - cpu
            if trained.interrupted:  # SIGINT/SIGTERM: the trainer saved a checkpoint mid-chunk
                print(f"[convergence] interrupted at {arm} step {trained.step}; rerun the same command to resume")
                return payload()
            checkpoint = find_checkpoint(run_dir)
            if checkpoint is None or checkpoint.name != f"step_{step:08d}":
                raise RuntimeError(
                    f"{run_dir} should end at step {step} after training but its latest checkpoint is {checkpoint}: "
                    f"the run is ahead of the evaluations in {previous_path}; delete {run_dir} to train this arm again"
                )
            model, trained_config = load_trained_model(checkpoint, device=str(device))
            started = time.perf_counter()
            metrics = evaluate(model, trained_config)
            evaluations[arm][str(step)] = metrics | {
                "train_wall_s": round(train_wall, 1),
                "train_cpu_s": round(train_cpu, 1),
                "eval_wall_s": round(time.perf_counter() - started, 1),
            }
            print(f"[convergence] {arm} step {step}: " + json.dumps(evaluations[arm][str(step)]), flush=True)
            publish(payload())
            plot_convergence(evaluations, args.results_dir / f"{args.result_name}.png")
    plot_convergence(evaluations, args.results_dir / f"{args.result_name}.png")  # also when nothing was left to do
    return payload()


def plot_convergence(evaluations: dict[str, dict[str, dict[str, float]]], path: Path) -> Path:
    """One panel per metric, both arms, the baseline's final value dashed and MiMo's crossing marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = convergence_summary(evaluations)
    colors = {"baseline": "tab:blue", "mimo": "tab:orange"}
    metrics = list(dict.fromkeys(m for arm in evaluations.values() for v in arm.values() for m in summarised(v)))
    metrics = metrics or [PROBE]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.6), dpi=110, squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        for arm, style in (("baseline", "o-"), ("mimo", "s-")):
            points = sorted((int(s), v[metric]) for s, v in evaluations.get(arm, {}).items())
            if points:
                ax.plot(*zip(*points, strict=True), style, label=arm, markersize=3, color=colors[arm])
        if metric in summary:
            ax.axhline(summary[metric]["baseline_final"], color="grey", linestyle="--", linewidth=0.8)
            row = summary[metric]
            for arm, reached in (("baseline", row["baseline_steps_to_reach"]), ("mimo", row["mimo_steps_to_reach"])):
                if reached is not None:
                    ax.axvline(reached, color=colors[arm], linestyle=":", linewidth=0.9)
            if row["baseline_steps_to_mimo_final"] is not None:  # MiMo fell short: where the baseline was as good
                ax.axhline(row["mimo_at_same_step"], color=colors["mimo"], linestyle="--", linewidth=0.8)
                ax.axvline(row["baseline_steps_to_mimo_final"], color=colors["baseline"], linestyle=":", linewidth=0.9)
            speed = "–" if row["speedup"] is None else f"speed-up {speedup_text(row)}"
            ax.set_title(f"MiMo vs the baseline's final value: {speed}", fontsize=9)
        if metric == "proxy_fd":
            ax.set_yscale("log")  # it falls by orders of magnitude early, then the arms differ by a few units
        ax.set_xlabel("training step")
        ax.set_ylabel(metric_label(metric), fontsize=8)
        ax.legend(fontsize=8)
    fig.subplots_adjust(left=0.06, right=0.99, bottom=0.15, top=0.9, wspace=0.3)  # tight_layout costs ~1 s a call
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


if __name__ == "__main__":
    main("convergence")
