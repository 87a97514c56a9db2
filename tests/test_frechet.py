from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import scipy.stats
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mimo.metrics.frechet import (
    FeatureStatistics,
    frechet_distance,
    frechet_distance_from_statistics,
    trace_sqrt_product,
)


def _random_covariance(rng: np.random.Generator, dim: int) -> np.ndarray:
    a = rng.standard_normal((dim, 2 * dim))
    return a @ a.T / (2 * dim) + 0.1 * np.eye(dim)


def test_statistics_match_numpy_mean_and_covariance():
    features = torch.randn(300, 7, generator=torch.Generator().manual_seed(0)) * 3 + 5
    stats = FeatureStatistics(7)
    for chunk in features.split(64):
        stats.update(chunk)
    reference = features.double().numpy()
    np.testing.assert_allclose(stats.mean().numpy(), reference.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(
        stats.covariance("stylegan-v").numpy(), np.cov(reference, rowvar=False, ddof=0), atol=1e-10
    )
    np.testing.assert_allclose(stats.covariance("tf-gan").numpy(), np.cov(reference, rowvar=False, ddof=1), atol=1e-10)


def _numpy_frechet_distance(a: np.ndarray, b: np.ndarray, ddof: int) -> float:
    """FD computed another way: np.cov with an explicit ddof and scipy's sqrtm of the product."""
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    sigma_a, sigma_b = np.cov(a, rowvar=False, ddof=ddof), np.cov(b, rowvar=False, ddof=ddof)
    root = np.real(scipy.linalg.sqrtm(sigma_a @ sigma_b))
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(sigma_a + sigma_b - 2 * root))


def test_default_normaliser_is_the_original_fvd_and_stylegan_v_divides_by_n():
    rng = np.random.default_rng(5)
    real, fake = rng.standard_normal((40, 6)), 0.8 * rng.standard_normal((40, 6)) + 0.3
    statistics = []
    for features in (real, fake):
        stats = FeatureStatistics(6)
        stats.update(torch.from_numpy(features))
        statistics.append(stats)
    tf_gan, stylegan_v = _numpy_frechet_distance(real, fake, ddof=1), _numpy_frechet_distance(real, fake, ddof=0)
    assert frechet_distance_from_statistics(*statistics) == pytest.approx(tf_gan, rel=1e-10)
    stylegan_v_distance = frechet_distance_from_statistics(*statistics, normaliser="stylegan-v")
    assert stylegan_v_distance == pytest.approx(stylegan_v, rel=1e-10)
    assert tf_gan != pytest.approx(stylegan_v, rel=1e-3)  # the choice is visible at n = 40
    with pytest.raises(ValueError, match="normaliser"):
        statistics[0].covariance("unbiased")


def test_merged_shards_equal_the_whole_set():
    features = torch.randn(100, 4, generator=torch.Generator().manual_seed(1))
    whole, first, second = FeatureStatistics(4), FeatureStatistics(4), FeatureStatistics(4)
    whole.update(features)
    first.update(features[:37])
    second.update(features[37:])
    merged = first.merge(second)
    assert merged.num_samples == 100
    torch.testing.assert_close(merged.outer_sum, whole.outer_sum)
    torch.testing.assert_close(merged.covariance(), whole.covariance())


def _all_reduce_worker(rank: int, init_file: str, features: torch.Tensor, results: dict) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    stats = FeatureStatistics(features.shape[1])
    stats.update(features[rank::2])
    stats.all_reduce()
    results[rank] = (stats.mean(), stats.covariance())
    dist.destroy_process_group()


@pytest.mark.slow
def test_all_reduce_across_two_ranks_gives_global_statistics(tmp_path):
    features = torch.randn(50, 3, generator=torch.Generator().manual_seed(2))
    results = mp.Manager().dict()
    mp.spawn(_all_reduce_worker, args=(str(tmp_path / "init"), features, results), nprocs=2)
    reference = features.double().numpy()
    for rank in range(2):
        mean, covariance = results[rank]
        np.testing.assert_allclose(mean.numpy(), reference.mean(axis=0), atol=1e-12)
        np.testing.assert_allclose(covariance.numpy(), np.cov(reference, rowvar=False, ddof=1), atol=1e-12)


@pytest.mark.parametrize("method", ["sqrtm", "eigh"])
def test_diagonal_gaussians_match_closed_form(method):
    rng = np.random.default_rng(3)
    mu1, mu2 = rng.standard_normal(16), rng.standard_normal(16)
    a, b = rng.uniform(0.1, 4.0, 16), rng.uniform(0.1, 4.0, 16)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b), method=method) == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("method", ["sqrtm", "eigh"])
def test_rotated_commuting_gaussians_match_closed_form(method):
    """Same eigenvectors, any rotation: the diagonal formula still holds on the eigenvalues."""
    rng = np.random.default_rng(4)
    rotation = scipy.stats.special_ortho_group.rvs(12, random_state=5)
    a, b = rng.uniform(0.1, 4.0, 12), rng.uniform(0.1, 4.0, 12)
    sigma1, sigma2 = rotation @ np.diag(a) @ rotation.T, rotation @ np.diag(b) @ rotation.T
    mu = rng.standard_normal(12)
    expected = np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu, sigma1, mu, sigma2, method=method) == pytest.approx(expected, rel=1e-9)


def test_sqrtm_and_eigendecomposition_routes_agree_on_non_commuting_covariances():
    rng = np.random.default_rng(6)
    sigma1, sigma2 = _random_covariance(rng, 64), _random_covariance(rng, 64)
    assert trace_sqrt_product(sigma1, sigma2, "sqrtm") == pytest.approx(
        trace_sqrt_product(sigma1, sigma2, "eigh"), rel=1e-9
    )


def test_distance_of_a_set_to_itself_is_zero_and_grows_with_a_shift():
    features = torch.randn(500, 8, generator=torch.Generator().manual_seed(7))
    same, shifted = FeatureStatistics(8), FeatureStatistics(8)
    same.update(features)
    shifted.update(features + 0.5)
    assert abs(frechet_distance_from_statistics(same, same)) < 1e-8
    # A pure shift leaves the covariance unchanged: FD = |Δμ|² exactly.
    assert frechet_distance_from_statistics(same, shifted) == pytest.approx(8 * 0.25, rel=1e-8)


def test_save_and_load_round_trip(tmp_path):
    stats = FeatureStatistics(5)
    stats.update(torch.randn(20, 5))
    stats.save(tmp_path / "stats.safetensors")
    loaded = FeatureStatistics.load(tmp_path / "stats.safetensors")
    assert loaded.num_samples == 20
    torch.testing.assert_close(loaded.covariance(), stats.covariance())


def test_wrong_feature_shape_is_rejected_with_the_expected_shape():
    with pytest.raises(ValueError, match=r"\(N, 5\)"):
        FeatureStatistics(5).update(torch.randn(3, 4))
