"""Held-out velocity error: the diffusion loss at a fixed noise level with the full history, per clip,
on noise drawn once from a seed, so that two models are scored on the same (clip, noise) pairs."""

from __future__ import annotations

import pytest
import torch

from conftest import micro_model
from mimo.diffusion.flow import interpolate, velocity_target
from mimo.evaluation.velocity import velocity_error

pytestmark = pytest.mark.usefixtures("single_thread")


def test_error_is_the_velocity_mse_of_each_clip_given_its_whole_history(clips):
    video, _ = clips
    model = micro_model()
    errors = velocity_error(model, video, 1, (0.5, 0.9), seed=3, batch_size=3)
    assert errors.shape == (2, video.shape[0])
    noise = torch.randn(video[:, 1:].shape, generator=torch.Generator().manual_seed(3))
    for row, level in enumerate((0.5, 0.9)):
        levels = torch.full(noise.shape[:2], level)
        with torch.no_grad():
            out = model(interpolate(video[:, 1:], noise, levels), levels, clean=video[:, :-1], noisy_start=1)
        expected = (out.velocity - velocity_target(video[:, 1:], noise)).pow(2).mean(dim=(1, 2, 3, 4))
        torch.testing.assert_close(errors[row], expected, rtol=1e-5, atol=1e-6)


def test_error_does_not_depend_on_the_batching_or_on_other_clips(clips):
    video, _ = clips
    model = micro_model()
    together = velocity_error(model, video, 2, seed=0, batch_size=4)
    torch.testing.assert_close(velocity_error(model, video, 2, seed=0, batch_size=1), together, rtol=1e-5, atol=1e-6)
    assert not torch.equal(velocity_error(model, video, 2, seed=1), together)  # the seed draws the noise


def test_context_length_outside_the_clip_is_rejected(clips):
    video, _ = clips
    with pytest.raises(ValueError, match="context_frames"):
        velocity_error(micro_model(), video, video.shape[1])
