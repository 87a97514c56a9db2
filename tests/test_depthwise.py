"""Depth-wise analysis: each layer's scores are the single-layer probe and CKNNA at that layer."""

from __future__ import annotations

import statistics

import pytest
import torch

from mimo.metrics.cknna import cknna
from mimo.metrics.depthwise import depthwise_scores
from mimo.metrics.probe import linear_probe


def _layers(num_samples: int = 60, num_classes: int = 3) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
    """Three 'layers' whose features carry the labels more and more clearly."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(num_samples) % num_classes
    centres = torch.randn(num_classes, 6, generator=generator)
    features = {
        layer: centres[labels] * layer / 3 + torch.randn(num_samples, 6, generator=generator) for layer in (1, 2, 3)
    }
    return features, labels


def test_per_layer_probe_equals_the_single_layer_probe_at_that_layer():
    features, labels = _layers()
    seeds = (0, 1, 2)
    scores = depthwise_scores(features, labels, seeds, c=(0.1, 1.0))
    for layer, x in features.items():
        expected = [linear_probe(x, labels, c=(0.1, 1.0), seed=seed).held_out_accuracy for seed in seeds]
        assert list(scores[layer].accuracies) == expected
        assert scores[layer].mean == pytest.approx(statistics.fmean(expected))
        assert scores[layer].std == pytest.approx(statistics.stdev(expected))
    assert len(set(scores[1].accuracies)) > 1  # the seeds do give different splits


def test_per_layer_cknna_equals_cknna_at_that_layer():
    features, labels = _layers()
    reference = torch.nn.functional.one_hot(labels).double() + 0.1 * torch.randn(len(labels), 3)
    scores = depthwise_scores(features, labels, (0,), c=1.0, reference=reference, k=5)
    assert [scores[layer].cknna for layer in (1, 2, 3)] == [cknna(features[layer], reference, 5) for layer in (1, 2, 3)]
    assert depthwise_scores(features, labels, (0,), c=1.0)[1].cknna is None


def test_no_probe_seed_is_rejected():
    features, labels = _layers()
    with pytest.raises(ValueError, match="probe seed"):
        depthwise_scores(features, labels, ())
