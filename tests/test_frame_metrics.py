from __future__ import annotations

import sys

import numpy as np
import pytest
import skimage.data
import skimage.metrics
import skimage.transform
import torch

from mimo.metrics.frame_metrics import PSNR_CAP_DB, MetricUnavailableError, load_lpips, psnr, ssim


def _natural_frames() -> torch.Tensor:
    """Three 64×64 RGB photographs in [−1, 1], (3, 3, 64, 64)."""
    images = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea()]
    frames = [skimage.transform.resize(image, (64, 64), anti_aliasing=True) for image in images]
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2) * 2 - 1


def _degraded(frames: torch.Tensor) -> torch.Tensor:
    noise = torch.randn(frames.shape, generator=torch.Generator().manual_seed(0), dtype=frames.dtype)
    return (frames.roll(1, dims=-1) * 0.9 + 0.1 * noise).clamp(-1, 1)


def _to_skimage(frame: torch.Tensor) -> np.ndarray:
    return frame.permute(1, 2, 0).numpy()


def test_psnr_matches_scikit_image():
    frames = _natural_frames()
    degraded = _degraded(frames)
    expected = [
        skimage.metrics.peak_signal_noise_ratio(_to_skimage(t), _to_skimage(p), data_range=2.0)
        for t, p in zip(frames, degraded, strict=True)
    ]
    np.testing.assert_allclose(psnr(degraded, frames).numpy(), expected, rtol=1e-10)


def test_ssim_matches_scikit_image_gaussian_ssim():
    frames = _natural_frames()
    degraded = _degraded(frames)
    expected = [
        skimage.metrics.structural_similarity(
            _to_skimage(t),
            _to_skimage(p),
            data_range=2.0,
            channel_axis=-1,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
        )
        for t, p in zip(frames, degraded, strict=True)
    ]
    np.testing.assert_allclose(ssim(degraded, frames).numpy(), expected, rtol=1e-6)


def test_metrics_keep_the_leading_video_axes():
    videos = torch.rand(2, 4, 3, 16, 16) * 2 - 1
    other = videos.flip(-1)
    assert psnr(videos, other).shape == (2, 4)
    assert ssim(videos, other).shape == (2, 4)
    torch.testing.assert_close(ssim(videos, videos), torch.ones(2, 4, dtype=torch.float64))
    torch.testing.assert_close(psnr(videos, videos), torch.full((2, 4), PSNR_CAP_DB, dtype=torch.float64))


def test_lpips_without_the_package_says_how_to_get_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "lpips", None)  # makes `import lpips` fail
    with pytest.raises(MetricUnavailableError, match="pip install lpips"):
        load_lpips()
