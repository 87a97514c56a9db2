"""Fréchet Video Distance: I3D features of two video sets → Gaussian fits → Fréchet distance.

Either side may be given as videos (a tensor or an iterable of batches) or as already-accumulated
`FeatureStatistics`, so a real set's statistics can be computed once, saved and reused. Under DDP
each rank extracts features of its own share and the sums are all-reduced before the distance.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping

import torch
import torch.distributed as dist
from tqdm import tqdm

from mimo.metrics.frechet import (
    DEFAULT_COVARIANCE_NORMALISER,
    CovarianceNormaliser,
    FeatureStatistics,
    SqrtMethod,
    frechet_distance_from_statistics,
)
from mimo.metrics.i3d import load_i3d

FeatureExtractor = Callable[[torch.Tensor], torch.Tensor]
# A tensor (N, T, 3, H, W), or batches of them (a DataLoader; dict batches use their "video" entry).
VideoBatches = torch.Tensor | Iterable[torch.Tensor] | Iterable[Mapping[str, torch.Tensor]]
DEFAULT_BATCH_SIZE = 16


def _batches(videos: VideoBatches, batch_size: int) -> Iterator[torch.Tensor]:
    if isinstance(videos, torch.Tensor):
        yield from videos.split(batch_size)
        return
    for batch in videos:
        yield batch["video"] if isinstance(batch, Mapping) else batch


def extract_feature_statistics(
    videos: VideoBatches,
    extractor: FeatureExtractor,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: torch.device | str = "cpu",
    description: str = "features",
    progress: bool = True,
) -> FeatureStatistics:
    """Run `extractor` over all videos (batched, with a progress bar) and accumulate its features.

    Statistics are all-reduced across ranks when torch.distributed is initialised, so every rank
    must call this with its own share of the set.
    """
    distributed = dist.is_available() and dist.is_initialized()
    show_bar = progress and (not distributed or dist.get_rank() == 0)
    total = len(videos) if isinstance(videos, torch.Tensor) else None
    statistics: FeatureStatistics | None = None
    with tqdm(total=total, desc=description, unit="video", disable=not show_bar) as bar:
        for batch in _batches(videos, batch_size):
            with torch.no_grad():
                features = extractor(batch.to(device)).flatten(1)
            if statistics is None:
                statistics = FeatureStatistics(features.shape[1], device=features.device)
            statistics.update(features)
            bar.update(batch.shape[0])
    if statistics is None:
        raise ValueError(f"no videos to extract {description} from; every rank needs at least one batch")
    statistics.all_reduce().check_finite(description)
    return statistics


def compute_fvd(
    real: VideoBatches | FeatureStatistics,
    fake: VideoBatches | FeatureStatistics,
    extractor: FeatureExtractor | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: torch.device | str = "cpu",
    normaliser: CovarianceNormaliser = DEFAULT_COVARIANCE_NORMALISER,
    method: SqrtMethod = "sqrtm",
    progress: bool = True,
) -> float:
    """FVD between a real and a generated set of videos (B, T, 3, H, W) in [−1, 1].

    `extractor` defaults to the Kinetics-400 I3D (`mimo.metrics.i3d.load_i3d`); pass another
    (e.g. StyleGAN-V's TorchScript through `load_i3d(path)`) to change it — but a distance is FVD
    only with the I3D. `normaliser` picks the covariance divisor (TF-GAN's n − 1 by default, as the
    original FVD; "stylegan-v" for n), see `FeatureStatistics.covariance`.
    """
    needs_extractor = not (isinstance(real, FeatureStatistics) and isinstance(fake, FeatureStatistics))
    if extractor is None and needs_extractor:
        extractor = load_i3d(device=device)

    def statistics(source: VideoBatches | FeatureStatistics, name: str) -> FeatureStatistics:
        if isinstance(source, FeatureStatistics):
            return source
        return extract_feature_statistics(source, extractor, batch_size, device, f"{name} features", progress)

    return frechet_distance_from_statistics(
        statistics(real, "real"), statistics(fake, "generated"), normaliser=normaliser, method=method
    )
