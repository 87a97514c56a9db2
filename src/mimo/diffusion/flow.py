"""Rectified flow: the interpolant, its velocity target, the noise-level samplers, sampling grids and solvers.

Noise level s ∈ [0, 1]: z_s = (1 - s)·x + s·ε, so s = 0 is the clean frame and s = 1 pure noise;
the network predicts the velocity dz/ds = ε - x. Sampling integrates from s = 1 down to s = 0.
A new noise-level sampler or sampling grid is a function here and an entry in its registry; a grid gets the
sampling options (SampleConfig), so a grid with a parameter reads it from there.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from mimo.config import SOLVERS, DiffusionConfig, SampleConfig
from mimo.errors import InputError


def interpolate(clean: Tensor, noise: Tensor, noise_level: Tensor) -> Tensor:
    """z_s = (1 - s)·x + s·ε with one noise level per frame: s (B, T) against frames (B, T, C, H, W)."""
    s = noise_level[..., None, None, None]
    return (1 - s) * clean + s * noise


def velocity_target(clean: Tensor, noise: Tensor) -> Tensor:
    return noise - clean


def logit_normal_levels(
    shape: tuple[int, ...], generator: torch.Generator | None, diffusion: DiffusionConfig
) -> Tensor:
    """s = sigmoid(m + σ·n), n ~ N(0, 1): most levels in the middle of [0, 1] (SD3, SiT, FAR)."""
    noise = torch.randn(shape, generator=generator, device=_device_of(generator))
    return torch.sigmoid(diffusion.logit_mean + diffusion.logit_std * noise)


def uniform_levels(shape: tuple[int, ...], generator: torch.Generator | None, diffusion: DiffusionConfig) -> Tensor:
    """s ~ U[0, 1], as in rectified flow."""
    return torch.rand(shape, generator=generator, device=_device_of(generator))


NoiseLevelSampler = Callable[[tuple[int, ...], "torch.Generator | None", DiffusionConfig], Tensor]
# Training noise levels by name (diffusion.timestep_sampling); config validation imports this.
NOISE_LEVEL_SAMPLERS: dict[str, NoiseLevelSampler] = {"logit_normal": logit_normal_levels, "uniform": uniform_levels}


def sample_noise_levels(
    shape: tuple[int, ...], diffusion: DiffusionConfig, generator: torch.Generator | None = None
) -> Tensor:
    """Independent noise levels, one per frame, drawn on the generator's device by the sampler
    `diffusion.timestep_sampling` names."""
    if diffusion.timestep_sampling not in NOISE_LEVEL_SAMPLERS:
        raise ValueError(
            f"unknown noise-level sampling '{diffusion.timestep_sampling}'; choose one of {list(NOISE_LEVEL_SAMPLERS)}"
        )
    return NOISE_LEVEL_SAMPLERS[diffusion.timestep_sampling](shape, generator, diffusion)


def _device_of(generator: torch.Generator | None) -> torch.device | None:
    return generator.device if generator is not None else None


def uniform_grid(steps: int, options: SampleConfig) -> Tensor:
    """`steps` equal steps from s = 1 to s = 0."""
    return torch.linspace(1.0, 0.0, steps + 1)


SamplingGrid = Callable[[int, SampleConfig], Tensor]
# Noise levels the sampler steps through, by name (sample.grid): (steps, sampling options) -> (steps + 1,) levels
# from 1 down to 0. A grid with a parameter reads it from the options, where it is a field of SampleConfig.
SAMPLING_GRIDS: dict[str, SamplingGrid] = {"uniform": uniform_grid}


def shift_levels(levels: Tensor, shift: float) -> Tensor:
    """SD3's time shift (Esser et al. 2024, eq. 23): s' = shift·s / (1 + (shift - 1)·s). It keeps 0 and 1 and,
    for shift > 1, moves every level towards noise, so more of the steps decide the coarse layout."""
    return shift * levels / (1 + (shift - 1) * levels)


def sampling_levels(options: SampleConfig) -> list[float]:
    """The `options.steps + 1` noise levels of the grid `options.grid`, time-shifted by `options.shift` (1: as
    the grid is), as host numbers: the solver's loop then never waits on a device."""
    if options.solver not in SOLVERS:
        raise InputError(f"unknown solver '{options.solver}'; choose one of {list(SOLVERS)}")
    if options.grid not in SAMPLING_GRIDS:
        raise InputError(f"unknown sampling grid '{options.grid}'; choose one of {list(SAMPLING_GRIDS)}")
    if not options.shift > 0:
        raise InputError(f"the grid's time shift must be positive (1: none), got {options.shift}")
    levels = SAMPLING_GRIDS[options.grid](options.steps, options).double()
    return shift_levels(levels, options.shift).tolist()


VelocityFn = Callable[[Tensor, Tensor], Tensor]


def integrate(velocity: VelocityFn, noise: Tensor, options: SampleConfig) -> Tensor:
    """Integrate dz/ds = v(z, s) from s = 1 (noise) to s = 0 with `options.solver` over `sampling_levels`.

    `velocity(z, s)` gets s as a (B,) tensor. Heun is second order (one extra evaluation per step,
    none on the last step, which lands on s = 0 where Heun's corrector would need v at s = 0).
    Each step's s is filled on z's device in fp32 from host numbers: no host-device sync in the loop.
    """
    levels = sampling_levels(options)
    z = noise

    def level(index: int) -> Tensor:  # (B,)
        return torch.full(noise.shape[:1], levels[index], device=noise.device)

    for i in range(options.steps):
        dt = levels[i + 1] - levels[i]
        v_now = velocity(z, level(i))
        z_euler = z + dt * v_now
        if options.solver == "heun" and i < options.steps - 1:
            z = z + dt * 0.5 * (v_now + velocity(z_euler, level(i + 1)))
        else:
            z = z_euler
    return z
