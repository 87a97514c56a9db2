"""Quality along videos longer than the training clips: drift as a curve, not a guess.

A long generation (sliding-window sampling past `data.num_frames`) is cut into windows of the
training length; each window is compared with the real videos' window at the same frames, and
its distance is plotted at the window's last frame. Frame metrics (PSNR, SSIM) need no window:
they are averaged over videos at every frame index.
"""

from __future__ import annotations

from torch import Tensor

from mimo.metrics.frechet import DEFAULT_COVARIANCE_NORMALISER, CovarianceNormaliser, FeatureStatistics
from mimo.metrics.fvd import FeatureExtractor, compute_fvd, extract_feature_statistics

WINDOWS_PER_TRAINING_LENGTH = 4  # default hop: a quarter of the window, so each frame is scored in ~4 windows


def default_hop(window: int) -> int:
    return max(1, window // WINDOWS_PER_TRAINING_LENGTH)


def window_starts(length: int, window: int, hop: int) -> list[int]:
    """First frames of the windows of `window` frames every `hop` frames, the last one ending at `length`."""
    if not 1 <= window <= length or hop < 1:
        raise ValueError(f"need 1 <= window <= length and hop >= 1, got window={window}, length={length}, hop={hop}")
    starts = list(range(0, length - window + 1, hop))
    return starts if starts[-1] == length - window else [*starts, length - window]


def window_statistics(
    videos: Tensor, starts: list[int], window: int, extractor: FeatureExtractor, batch_size: int, device: str
) -> list[FeatureStatistics]:
    """Feature statistics of each window of `videos` (B, T, 3, H, W): the real side, computed once for all seeds."""
    return [
        extract_feature_statistics(videos[:, s : s + window], extractor, batch_size, device, progress=False)
        for s in starts
    ]


def windowed_distances(
    real: list[FeatureStatistics],
    fake: Tensor,
    starts: list[int],
    window: int,
    extractor: FeatureExtractor,
    batch_size: int,
    device: str,
    normaliser: CovarianceNormaliser = DEFAULT_COVARIANCE_NORMALISER,
) -> list[float]:
    """The Fréchet distance of each window of `fake` to the real window at the same frames."""
    return [
        compute_fvd(stats, fake[:, s : s + window], extractor, batch_size, device, normaliser, progress=False)
        for stats, s in zip(real, starts, strict=True)
    ]


def per_frame(values: Tensor) -> list[float]:
    """A per-frame metric (B, T) averaged over videos: one value per frame index."""
    return values.float().mean(dim=0).tolist()
