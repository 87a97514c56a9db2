from __future__ import annotations

import itertools

import pytest
import scipy.stats
import torch

from mimo.metrics.cknna import cknna, hsic_unbiased, nearest_neighbour_mask


def _features(m: int = 400, d: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(m, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_unbiased_hsic_matches_the_u_statistic_over_distinct_quadruples():
    """Song et al. 2012: HSIC_u = mean over distinct (i, j, q, r) of k_ij l_ij + k_ij l_qr − 2 k_ij l_iq."""
    x, y = _features(7, 3, seed=1), _features(7, 2, seed=2)
    k, l = torch.exp(-(torch.cdist(x, x) ** 2)), x @ x.T + y @ y.T
    kk, ll = k.tolist(), l.tolist()
    total, count = 0.0, 0
    for i, j, q, r in itertools.permutations(range(7), 4):
        total += kk[i][j] * ll[i][j] + kk[i][j] * ll[q][r] - 2 * kk[i][j] * ll[i][q]
        count += 1
    assert hsic_unbiased(k, l).item() == pytest.approx(total / count, rel=1e-10)


def test_neighbour_mask_excludes_self_and_keeps_k_per_row():
    features = _features(20, 4)
    mask = nearest_neighbour_mask(features @ features.T, k=5)
    assert (mask.sum(dim=1) == 5).all()
    assert (mask.diagonal() == 0).all()


def test_identical_features_give_one():
    features = _features()
    assert cknna(features, features) == pytest.approx(1.0, abs=1e-9)


def test_rotated_features_give_one():
    features = _features()
    rotation = torch.from_numpy(scipy.stats.special_ortho_group.rvs(32, random_state=3))
    assert cknna(features, features @ rotation) == pytest.approx(1.0, abs=1e-9)


def test_independent_features_give_about_zero():
    assert abs(cknna(_features(seed=4), _features(seed=5))) < 0.05


def test_alignment_decreases_as_a_shared_signal_is_drowned():
    shared = _features(seed=6)
    scores = [cknna(shared, shared + level * _features(seed=7)) for level in (0.3, 1.0, 3.0)]
    assert 1 > scores[0] > scores[1] > scores[2]


def test_k_must_leave_room_for_neighbours():
    with pytest.raises(ValueError, match="k must be"):
        cknna(_features(10), _features(10), k=10)
