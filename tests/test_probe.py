from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from mimo.metrics.probe import (
    DEFAULT_C_GRID,
    fit_logistic_regression,
    linear_probe,
    split_indices,
    standardise,
)


def _blobs(num_per_class: int, spread: float, dim: int = 5, num_classes: int = 3, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_classes, dim, generator=generator, dtype=torch.float64) * 3
    labels = torch.arange(num_classes).repeat_interleave(num_per_class)
    features = centres[labels] + spread * torch.randn(len(labels), dim, generator=generator, dtype=torch.float64)
    return features, labels


def test_logistic_regression_reaches_scikit_learn_optimum():
    """Overlapping classes: the L2-penalised optimum is unique, so the coefficients themselves must agree."""
    features, labels = _blobs(60, spread=3.0)
    (x,) = standardise(features)
    ours = fit_logistic_regression(x, labels, num_classes=3, c=0.5)
    reference = LogisticRegression(C=0.5, tol=1e-10, max_iter=5000).fit(x.numpy(), labels.numpy())
    np.testing.assert_allclose(ours.weight.numpy(), reference.coef_, atol=1e-5)
    np.testing.assert_allclose(ours.bias.numpy(), reference.intercept_, atol=1e-5)


def test_probe_accuracy_agrees_with_scikit_learn_on_a_separable_problem():
    features, labels = _blobs(80, spread=0.8, seed=1)
    result = linear_probe(features, labels, c=1.0, seed=3)
    train, held_out = split_indices(len(labels), 0.2, seed=3)
    train_x, held_out_x = standardise(features[train], features[held_out])
    reference = LogisticRegression(C=1.0, max_iter=5000).fit(train_x.numpy(), labels[train].numpy())
    assert result.held_out_accuracy == pytest.approx(reference.score(held_out_x.numpy(), labels[held_out].numpy()))
    assert result.held_out_accuracy > 0.95


def test_probe_on_random_labels_is_at_chance():
    features = torch.randn(600, 16, generator=torch.Generator().manual_seed(4))
    labels = torch.randint(0, 4, (600,), generator=torch.Generator().manual_seed(5))
    result = linear_probe(features, labels)
    assert abs(result.held_out_accuracy - 0.25) < 0.1
    assert result.c in DEFAULT_C_GRID


def test_split_is_seeded_and_disjoint():
    train, held_out = split_indices(50, 0.2, seed=7)
    assert len(held_out) == 10
    assert set(train.tolist()).isdisjoint(held_out.tolist())
    assert set(train.tolist()) | set(held_out.tolist()) == set(range(50))
    torch.testing.assert_close(split_indices(50, 0.2, seed=7)[1], held_out)


def test_mismatched_labels_are_rejected():
    with pytest.raises(ValueError, match="labels"):
        linear_probe(torch.randn(10, 3), torch.zeros(9, dtype=torch.long))
