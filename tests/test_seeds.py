"""Seed streams: the perturbations, the evaluation's ε and the sampler's noise never share a seed, so no
measurement's random sources coincide (the robustness evaluation once perturbed clip 0's history with
its own target noise)."""

from __future__ import annotations

import pytest
import torch

from mimo.evaluation.robustness import PERTURBATIONS, robustness_curves
from mimo.evaluation.seeds import Stream, stream_seed


def test_every_stream_and_substream_gets_its_own_seeds():
    seeds = [
        stream_seed(seed, stream, substream)
        for seed in (0, 1, 2, 7, 2**24 - 1)
        for stream in Stream
        for substream in range(len(PERTURBATIONS))
    ]
    assert len(set(seeds)) == len(seeds)
    assert max(seeds) < 2**32  # torch's CPU generator reads no more: higher bits would collide again


def test_evaluation_noise_keeps_the_plain_seed_so_published_velocity_errors_hold():
    assert [stream_seed(seed, Stream.EVALUATION_NOISE) for seed in range(3)] == [0, 1, 2]


def test_the_noise_perturbation_of_a_history_is_not_the_evaluations_target_noise():
    context = torch.zeros(2, 3, 3, 8, 8)
    recorded = []
    robustness_curves(lambda c: recorded.append(c) or {"score": 0.0}, context, 4, {"noise": (0.0, 1.0)}, seed=0)
    perturbation = recorded[-1]  # σ = 1 on zeros: the drawn noise itself
    for stream in (Stream.EVALUATION_NOISE, Stream.SAMPLING_NOISE):
        other = torch.randn(context.shape, generator=torch.Generator().manual_seed(stream_seed(0, stream)))
        assert not torch.allclose(perturbation, other)
        assert abs(torch.corrcoef(torch.stack([perturbation.flatten(), other.flatten()]))[0, 1]) < 0.1


@pytest.mark.parametrize(("seed", "substream"), [(-1, 0), (2**24, 0), (0, 2**5)])
def test_seeds_outside_their_block_are_refused(seed, substream):
    with pytest.raises(ValueError, match="must be in"):
        stream_seed(seed, Stream.PERTURBATION, substream)
