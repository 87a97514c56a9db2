"""Quality along videos longer than the training clips (`eval.num_frames`): does it drift as the video goes on?

Each metric says whether it has a curve (`Metric.drift`): set distances (FVD, proxy FD) are scored on windows of
the training length, the real windows' statistics computed once for all seeds; frame metrics (PSNR, SSIM) at
every generated frame. Curves are collected per seed and reported as their mean, one plot per metric.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mimo.data.media import plot_curves
from mimo.evaluation.metrics import Metric
from mimo.metrics.drift import default_hop, per_frame, window_starts, window_statistics, windowed_distances


class DriftCurves:
    """The drift curves of `metrics` on generated videos of `length` frames, against the real `videos`."""

    def __init__(
        self,
        metrics: dict[str, Metric],
        videos: Tensor,
        length: int,
        window: int,
        hop: int | None,
        device: str,
        normaliser: str,
    ):
        self.window, self.device, self.normaliser = window, device, normaliser
        self.starts = window_starts(length, window, hop or default_hop(window)) if length > window else []
        self.metrics = {name: metric for name, metric in metrics.items() if metric.drift and self.starts}
        self.real = {
            name: window_statistics(videos, self.starts, window, metric.features, metric.batch_size, device)
            for name, metric in self.metrics.items()
            if metric.drift == "windows"
        }
        self.curves: dict[str, list[list[float]]] = {name: [] for name in self.metrics}

    def add(self, fake: Tensor) -> None:
        """Score one seed's generated videos (N, length, C, H, W) along their frames."""
        for name, metric in self.metrics.items():
            if metric.drift == "windows":
                curve = windowed_distances(
                    self.real[name], fake, self.starts, self.window, metric.features, metric.batch_size,
                    self.device, self.normaliser,
                )  # fmt: skip
            else:
                curve = per_frame(metric.per_frame(fake))
            self.curves[name].append(curve)

    def report(self, context: int, out: Path) -> dict[str, Any]:
        """Mean-over-seeds curves as JSON values, and one plot per metric in `out`.

        Window metrics are placed at the window's last frame; frame metrics at every generated frame
        (1-based frame numbers, so the first generated frame of a 5-frame context is frame 6).
        """
        window = self.window
        report: dict[str, Any] = {"window": window, "window_last_frame": [s + window for s in self.starts]}
        for name, per_seed in self.curves.items():
            mean = torch.tensor(per_seed).mean(dim=0).tolist()
            if self.metrics[name].drift == "windows":
                frames, title = report["window_last_frame"], f"{name} of {window}-frame windows along the video"
            else:
                frames, title = list(range(context + 1, context + 1 + len(mean))), f"{name} per generated frame"
            plot = plot_curves({name: (frames, mean)}, out / f"drift_{name}.png", "frame", name, title, log_y=False)
            report[name] = {"frame": frames, "mean": mean, "per_seed": per_seed, "plot": str(plot)}
        return report
