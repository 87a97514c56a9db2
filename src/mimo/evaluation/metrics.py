"""The one registry of metrics on generated videos: `mimo eval`, the demo and the benchmarks all read it.

A metric is prepared once on the held-out clips it is compared with, `METRICS[name](config, clips,
device)` (a network loaded, the real set's statistics computed), then scores samples continued from
those clips: `metric(samples) -> float`. Clips are dicts of stacked tensors with "video" in pixels
(N, T, C, H, W) and, for the built-in videos, the objects' true "positions", "colors" and "valid".
Samples are pixel videos (N, T', C, H, W) whose first `config.context_frames` frames were given;
only the generated frames are scored. A new metric is a class with `@register_metric("name")`; its class
attributes say whether `eval.metrics=auto` reports it and whether it has a curve along long videos (drift).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

from mimo.config import Config
from mimo.errors import ConfigError
from mimo.metrics.frame_metrics import load_lpips, lpips_distance, psnr, ssim, summed_squared_error
from mimo.metrics.frechet import DEFAULT_COVARIANCE_NORMALISER, CovarianceNormaliser, SqrtMethod
from mimo.metrics.fvd import FeatureExtractor, compute_fvd, extract_feature_statistics
from mimo.metrics.i3d import load_i3d
from mimo.metrics.proxy_classifier import ProxyClassifierConfig, load_proxy_classifier
from mimo.metrics.trajectory import TrajectoryError, trajectory_error


class Metric:
    """A score of samples against held-out clips; subclasses set what the class attributes say."""

    name: str = ""  # the registry key (set by register_metric)
    label: str = ""  # for tables and plots, with its unit and direction
    higher_is_better: bool = False
    needs_motion: bool = False  # needs the true object positions of the built-in videos
    auto: str = ""  # eval.metrics=auto reports it on "synthetic" (the built-in videos) or "real" data; "": never
    # its curve along videos past the training length (mimo.evaluation.evaluate): "windows", a score of each
    # window of the training length (set distances, through their `features`); "frames", `per_frame`; "": none
    drift: str = ""

    def __init__(self, config: Config, clips: dict[str, Tensor], device: str = "cpu", **options: Any):
        self.config, self.clips, self.device = config, clips, device
        self.context_frames = config.context_frames

    def __call__(self, samples: Tensor) -> float:
        raise NotImplementedError

    def generated(self, samples: Tensor) -> tuple[Tensor, Tensor]:
        """The generated frames of `samples` and the true frames at the same positions."""
        k, frames = self.context_frames, samples.shape[1]
        return samples[:, k:], self.clips["video"][:, k:frames]


METRICS: dict[str, type[Metric]] = {}


def register_metric(name: str) -> Callable[[type[Metric]], type[Metric]]:
    """Class decorator: `METRICS[name]` is the class; eval.metrics, the demo and the benchmarks can name it."""

    def register(cls: type[Metric]) -> type[Metric]:
        cls.name = name
        METRICS[name] = cls
        return cls

    return register


def metric_names(config: Config) -> list[str]:
    """The metrics eval.metrics names, checked against the registry and the data; auto: those whose `auto` is
    the config's kind of data (FVD on real videos; proxy FD, trajectory error and PSNR on the built-in ones)."""
    data = "synthetic" if config.data.dataset == "synthetic" else "real"
    if config.eval.metrics == "auto":
        return [name for name, metric in METRICS.items() if metric.auto == data]
    names = config.eval.named_metrics()
    for name in names:
        if name not in METRICS:
            raise ConfigError(f"eval.metrics: unknown value '{name}'; choose one of {list(METRICS)}")
        if METRICS[name].needs_motion and data != "synthetic":
            raise ConfigError(
                f"eval.metrics: '{name}' needs the true motion of the built-in videos (data.dataset=synthetic)"
            )
    return names


def build_metrics(
    names: list[str], config: Config, clips: dict[str, Tensor], device: str = "cpu", **options: dict[str, Any]
) -> dict[str, Metric]:
    """The named metrics prepared on `clips`; `options[name]` are keyword options of that metric."""
    unknown = [name for name in names if name not in METRICS]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; registered: {list(METRICS)}")
    return {name: METRICS[name](config, clips, device, **options.get(name, {})) for name in names}


def score_trajectory(samples: Tensor, clips: dict[str, Tensor], context_frames: int) -> TrajectoryError:
    """How far the objects in the generated frames of `samples` are from where the clips' objects truly are."""
    k, frames = context_frames, samples.shape[1]
    return trajectory_error(samples[:, k:], clips["positions"][:, k:frames], clips["colors"], clips["valid"])


class SetDistance(Metric):
    """A Fréchet distance between the features of the samples and of the real clips (FVD, proxy FD): the
    real set's statistics are computed once, here, and every call extracts the samples' features."""

    drift = "windows"

    def __init__(
        self,
        config: Config,
        clips: dict[str, Tensor],
        device: str,
        features: FeatureExtractor,
        normaliser: CovarianceNormaliser = DEFAULT_COVARIANCE_NORMALISER,
        method: SqrtMethod = "sqrtm",
        progress: bool = True,
    ):
        super().__init__(config, clips, device)
        self.features, self.normaliser, self.method, self.progress = features, normaliser, method, progress
        self.batch_size = config.eval.batch_size
        self.real = extract_feature_statistics(
            clips["video"], features, self.batch_size, device, "real features", progress
        )

    def __call__(self, samples: Tensor) -> float:
        return compute_fvd(
            self.real,
            samples,
            self.features,
            self.batch_size,
            self.device,
            self.normaliser,
            method=self.method,
            progress=self.progress,
        )


@register_metric("fvd")
class FVD(SetDistance):
    """Fréchet Video Distance with the Kinetics-400 I3D (eval.i3d_path: StyleGAN-V's TorchScript instead).

    Options: `extractor` replaces the I3D (a stand-in in tests: then it is not FVD), `normaliser` the
    covariance divisor (`mimo.metrics.frechet.COVARIANCE_DDOF`).
    """

    label = "FVD (lower is better)"
    auto = "real"

    def __init__(
        self,
        config: Config,
        clips: dict[str, Tensor],
        device: str = "cpu",
        extractor: FeatureExtractor | None = None,
        normaliser: CovarianceNormaliser = DEFAULT_COVARIANCE_NORMALISER,
    ):
        self.extractor = extractor or load_i3d(config.eval.i3d_path, device=device)
        super().__init__(config, clips, device, self.extractor, normaliser)


def proxy_config(config: Config, **settings: int) -> ProxyClassifierConfig:
    """The cached proxy classifier for this frame size and object count (trained once on 16-frame clips; any
    length works); `settings` override its training (steps, width)."""
    return ProxyClassifierConfig(frame_size=config.data.frame_size, max_objects=config.data.max_objects, **settings)


@register_metric("proxy_fd")
class ProxyFD(SetDistance):
    """Fréchet distance of a small classifier's features of the built-in videos (never reported as FVD).

    Options: `classifier` (ProxyClassifierConfig settings: steps, width), `method` of the matrix square
    root (eigh is exact for the rank-deficient covariances of a few hundred clips), `progress`, `normaliser`.
    """

    label = "proxy Fréchet distance (lower is better)"
    auto = "synthetic"

    def __init__(
        self,
        config: Config,
        clips: dict[str, Tensor],
        device: str = "cpu",
        classifier: dict[str, int] | None = None,
        method: SqrtMethod = "sqrtm",
        progress: bool = True,
        normaliser: CovarianceNormaliser = DEFAULT_COVARIANCE_NORMALISER,
    ):
        self.classifier = load_proxy_classifier(proxy_config(config, **(classifier or {})), device, progress=progress)
        super().__init__(config, clips, device, self.classifier.features, normaliser, method, progress)


class TrajectoryMetric(Metric):
    """A figure of the objects' trajectory error (`TrajectoryError.<figure>`) in the generated frames."""

    needs_motion = True
    figure = "mean_error"

    def __call__(self, samples: Tensor) -> float:
        return getattr(score_trajectory(samples, self.clips, self.context_frames), self.figure)


@register_metric("trajectory")
class Trajectory(TrajectoryMetric):
    """Mean distance (px) of the objects in the generated frames from their true positions."""

    label = "trajectory error (px, lower is better)"
    auto = "synthetic"


@register_metric("miss_rate")
class MissRate(TrajectoryMetric):
    """Share of the objects that the generated frames lost (no pixels of their colour)."""

    label = "objects lost (lower is better)"
    figure = "miss_rate"


class FrameMetric(Metric):
    """A per-frame comparison of the generated frames with the true ones, averaged."""

    def compare(self, fake: Tensor, real: Tensor) -> Tensor:
        raise NotImplementedError

    def per_frame(self, samples: Tensor) -> Tensor:
        """The comparison of each generated frame (N, T' - k)."""
        return self.compare(*self.generated(samples))

    def __call__(self, samples: Tensor) -> float:
        return self.per_frame(samples).mean().item()


@register_metric("psnr")
class PSNR(FrameMetric):
    label = "PSNR (dB, higher is better)"
    higher_is_better = True
    auto = "synthetic"
    drift = "frames"
    compare = staticmethod(psnr)


@register_metric("ssim")
class SSIM(FrameMetric):
    label = "SSIM (higher is better)"
    higher_is_better = True
    drift = "frames"
    compare = staticmethod(ssim)


@register_metric("mse")
class FrameMSE(FrameMetric):
    """Moving MNIST's per-frame MSE: squared error summed over a frame's pixels in [0, 1], averaged over the
    generated frames and clips (`summed_squared_error`); comparable with papers only at their frame size."""

    label = "MSE per frame (sum over pixels in [0, 1], lower is better)"
    compare = staticmethod(summed_squared_error)


@register_metric("lpips")
class LPIPS(FrameMetric):
    """LPIPS-AlexNet; needs `pip install lpips` and its weights locally (MetricUnavailableError says how)."""

    label = "LPIPS (lower is better)"

    def __init__(self, config: Config, clips: dict[str, Tensor], device: str = "cpu", **options: Any):
        super().__init__(config, clips, device)
        self.network = load_lpips(device=device)

    def compare(self, fake: Tensor, real: Tensor) -> Tensor:
        return lpips_distance(fake.to(self.device), real.to(self.device), self.network)
