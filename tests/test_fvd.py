from __future__ import annotations

import pytest
import torch

from mimo.data.synthetic import MovingShapes
from mimo.metrics.frechet import FeatureStatistics, frechet_distance_from_statistics
from mimo.metrics.fvd import compute_fvd, extract_feature_statistics
from mimo.metrics.i3d import load_i3d
from mimo.metrics.i3d_weights import i3d_weights_path


class RandomFeatures(torch.nn.Module):
    """A cheap stand-in for the I3D: a fixed random projection of pooled frames, then tanh."""

    def __init__(self, dim: int = 6) -> None:
        super().__init__()
        self.projection = torch.nn.Linear(3 * 8 * 8, dim)
        torch.nn.init.normal_(self.projection.weight, generator=torch.Generator().manual_seed(0))

    def forward(self, videos: torch.Tensor) -> torch.Tensor:
        frames = torch.nn.functional.adaptive_avg_pool2d(videos.flatten(0, 1), 8)  # (B·T, 3, 8, 8)
        clips = frames.reshape(*videos.shape[:2], -1).mean(dim=1)
        return torch.tanh(self.projection(clips))


def _videos(count: int) -> torch.Tensor:
    dataset = MovingShapes(count, frame_size=16, num_frames=4)
    return torch.stack([dataset[i]["video"] for i in range(count)])


def test_fvd_of_a_set_with_itself_is_zero_and_grows_with_noise():
    videos = _videos(64)
    extractor = RandomFeatures()
    noise = torch.randn(videos.shape, generator=torch.Generator().manual_seed(1))
    distances = [
        compute_fvd(videos, videos + level * noise, extractor=extractor, progress=False)
        for level in (0.0, 0.2, 0.5, 1.0)
    ]
    assert abs(distances[0]) < 1e-6
    assert distances == sorted(distances) and distances[1] > 0


def test_precomputed_statistics_and_batching_do_not_change_the_distance():
    real, fake = _videos(40), _videos(40).flip(-1)
    extractor = RandomFeatures()
    direct = compute_fvd(real, fake, extractor=extractor, batch_size=7, progress=False)
    real_statistics = extract_feature_statistics(real, extractor, batch_size=16, progress=False)
    loader = torch.utils.data.DataLoader(MovingShapes(40, frame_size=16, num_frames=4), batch_size=9)
    from_loader = extract_feature_statistics(loader, extractor, progress=False)  # dict batches
    # The float32 features of a video depend on its batch by a few ulps (kernels block by batch
    # size); the Fréchet distance amplifies that to ~1e-6 relative. 1e-5 allows float32, not more.
    assert compute_fvd(real_statistics, fake, extractor=extractor, progress=False) == pytest.approx(direct, rel=1e-5)
    assert compute_fvd(from_loader, fake, extractor=extractor, progress=False) == pytest.approx(direct, rel=1e-5)


def test_float64_statistics_do_not_depend_on_how_the_features_were_split():
    features = torch.randn(40, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    other = torch.randn(40, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(4)) + 0.5
    distances = []
    for chunk in (1, 7, 40):
        stats, reference = FeatureStatistics(6), FeatureStatistics(6)
        for part in features.split(chunk):
            stats.update(part)
        reference.update(other)
        distances.append(frechet_distance_from_statistics(stats, reference))
    assert distances == pytest.approx([distances[0]] * 3, rel=1e-12)


@pytest.mark.slow
@pytest.mark.skipif(not i3d_weights_path().is_file(), reason="I3D weights not cached (mimo weights fetch i3d)")
def test_i3d_fvd_is_zero_on_the_same_set_and_grows_with_noise():
    dataset = MovingShapes(5, frame_size=32, num_frames=9)
    videos = torch.stack([dataset[i]["video"] for i in range(len(dataset))])
    noise = torch.randn(videos.shape, generator=torch.Generator().manual_seed(2))
    extractor = load_i3d(allow_download=False)
    real = extract_feature_statistics(videos, extractor, progress=False)
    same = compute_fvd(real, videos, extractor=extractor, progress=False, method="eigh")
    small_noise, large_noise = (
        compute_fvd(real, (videos + level * noise).clamp(-1, 1), extractor=extractor, progress=False, method="eigh")
        for level in (0.1, 0.5)
    )
    assert abs(same) < 1e-3 * small_noise
    assert small_noise < large_noise
