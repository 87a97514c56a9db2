"""Rectified flow: the interpolant's endpoints and ODE solvers against analytic solutions."""

from __future__ import annotations

import pytest
import torch

from mimo.config import DiffusionConfig, SampleConfig
from mimo.diffusion.flow import (
    integrate,
    interpolate,
    sample_noise_levels,
    shift_levels,
    uniform_grid,
    velocity_target,
)

SHAPE = (3, 2, 1, 4, 4)  # (B, T, C, H, W)


def _pair(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    clean = torch.randn(SHAPE, generator=generator, dtype=torch.float64)
    return clean, torch.randn(SHAPE, generator=generator, dtype=torch.float64)


def test_interpolate_is_clean_at_zero_noise_at_one_and_linear_per_frame():
    clean, noise = _pair()
    zeros = torch.zeros(SHAPE[:2], dtype=torch.float64)
    assert torch.equal(interpolate(clean, noise, zeros), clean)
    assert torch.equal(interpolate(clean, noise, zeros + 1), noise)
    levels = torch.tensor([[0.25, 0.5], [0.0, 1.0], [0.9, 0.1]], dtype=torch.float64)
    mixed = interpolate(clean, noise, levels)
    for b in range(SHAPE[0]):
        for t in range(SHAPE[1]):
            s = levels[b, t].item()
            torch.testing.assert_close(mixed[b, t], (1 - s) * clean[b, t] + s * noise[b, t])


def test_velocity_target_is_the_derivative_of_the_interpolant():
    clean, noise = _pair()
    s, ds = 0.3, 1e-3
    levels = torch.full(SHAPE[:2], s, dtype=torch.float64)
    finite_difference = (interpolate(clean, noise, levels + ds) - interpolate(clean, noise, levels)) / ds
    torch.testing.assert_close(velocity_target(clean, noise), finite_difference, atol=1e-9, rtol=0)


@pytest.mark.parametrize("solver", ["euler", "heun"])
@pytest.mark.parametrize("steps", [1, 4, 7])
def test_integrating_the_true_velocity_of_a_straight_path_recovers_the_clean_endpoint(solver, steps):
    clean, noise = _pair()
    clean, noise = clean[:, 0], noise[:, 0]
    # the rectified-flow velocity of a single straight path is constant: both solvers are exact
    out = integrate(lambda z, s: velocity_target(clean, noise), noise, SampleConfig(steps=steps, solver=solver))
    torch.testing.assert_close(out, clean, atol=1e-12, rtol=0)


def test_euler_and_heun_on_a_velocity_linear_in_the_noise_level():
    # dz/ds = a + b·s from z(1) = z1 gives z(0) = z1 - a - b/2 exactly
    a, b, z1 = torch.tensor([0.7, -1.3]), torch.tensor([2.0, 0.5]), torch.tensor([0.1, 0.4])
    exact = z1 - a - b / 2
    steps = 5
    dt = 1.0 / steps
    calls = []

    def velocity(z: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        calls.append(s.clone())
        return a + b * s  # z is (B,) here, so s lines up with it

    euler = integrate(velocity, z1, SampleConfig(steps=steps, solver="euler"))
    assert len(calls) == steps
    # left Riemann sum of a + b·s over a decreasing grid: error b·dt/2 (first order)
    torch.testing.assert_close(euler, exact - b * dt / 2, atol=1e-6, rtol=0)
    calls.clear()
    heun = integrate(velocity, z1, SampleConfig(steps=steps, solver="heun"))
    # the trapezoid rule is exact for a linear integrand on every step with a corrector; the last step
    # is a plain Euler step (no evaluation at s = 0), leaving one step's error b·dt²/2
    assert len(calls) == 2 * steps - 1
    assert min(level.min().item() for level in calls) > 0
    torch.testing.assert_close(heun, exact - b * dt**2 / 2, atol=1e-6, rtol=0)


def test_unknown_solver_is_rejected():
    with pytest.raises(ValueError, match="euler"):
        integrate(lambda z, s: z, torch.zeros(1, 1), SampleConfig(steps=2, solver="rk4"))


@pytest.mark.parametrize("method", ["uniform", "logit_normal"])
def test_noise_levels_are_in_the_unit_interval_independent_per_frame_and_reproducible(method):
    diffusion = DiffusionConfig(timestep_sampling=method)
    levels = sample_noise_levels((4000, 3), diffusion, torch.Generator().manual_seed(0))
    assert levels.shape == (4000, 3)
    assert ((levels > 0) & (levels < 1)).all()
    assert torch.equal(levels, sample_noise_levels((4000, 3), diffusion, torch.Generator().manual_seed(0)))
    correlation = torch.corrcoef(levels.T)[0, 1].abs().item()
    assert correlation < 0.1  # frames draw their own levels
    assert abs(levels.mean().item() - 0.5) < 0.02  # both are symmetric about 1/2
    if method == "logit_normal":  # concentrated in the middle, unlike uniform's std 1/sqrt(12) ≈ 0.289
        assert levels.std().item() < 0.25


def test_logit_normal_levels_follow_their_mean_and_std():
    diffusion = DiffusionConfig(timestep_sampling="logit_normal", logit_mean=0.5, logit_std=0.7)
    levels = sample_noise_levels((20000,), diffusion, torch.Generator().manual_seed(1))
    logits = torch.logit(levels.double())
    assert abs(logits.mean().item() - 0.5) < 0.03
    assert abs(logits.std().item() - 0.7) < 0.03


@pytest.mark.parametrize("shift", [1.0, 3.0, 0.5])
def test_time_shift_keeps_the_endpoints_and_moves_levels_towards_noise_above_one(shift):
    levels = uniform_grid(8, SampleConfig()).double()
    shifted = shift_levels(levels, shift)
    assert shifted[0] == 1 and shifted[-1] == 0
    assert (shifted.diff() < 0).all()  # still a grid from noise to clean
    inner = slice(1, -1)
    if shift == 1:
        assert torch.equal(shifted, levels)
    elif shift > 1:
        assert (shifted[inner] > levels[inner]).all()
    else:
        assert (shifted[inner] < levels[inner]).all()


def test_the_solver_steps_through_the_shifted_grid():
    seen = []

    def velocity(z: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        seen.append(s[0].item())
        return torch.zeros_like(z)

    integrate(velocity, torch.zeros(1, 2), SampleConfig(steps=4, solver="euler", shift=3.0))
    expected = shift_levels(uniform_grid(4, SampleConfig()).double(), 3.0)[:-1].tolist()
    assert seen == pytest.approx(expected, abs=1e-7)
