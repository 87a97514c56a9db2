"""Rectified flow: the interpolant, its velocity target, noise-level sampling and ODE steps.

Noise level s ∈ [0, 1]: z_s = (1 - s)·x + s·ε, so s = 0 is the clean frame and s = 1 pure noise;
the network predicts the velocity dz/ds = ε - x. Sampling integrates from s = 1 down to s = 0.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def interpolate(clean: Tensor, noise: Tensor, noise_level: Tensor) -> Tensor:
    """z_s = (1 - s)·x + s·ε with one noise level per frame: s (B, T) against frames (B, T, C, H, W)."""
    s = noise_level[..., None, None, None]
    return (1 - s) * clean + s * noise


def velocity_target(clean: Tensor, noise: Tensor) -> Tensor:
    return noise - clean


def sample_noise_levels(
    shape: tuple[int, ...],
    method: str,
    generator: torch.Generator | None = None,
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
) -> Tensor:
    """Independent noise levels, one per frame: logit-normal (SiT, FAR) or uniform, on the generator's device."""
    device = generator.device if generator is not None else None
    if method == "uniform":
        return torch.rand(shape, generator=generator, device=device)
    if method == "logit_normal":
        return torch.sigmoid(logit_mean + logit_std * torch.randn(shape, generator=generator, device=device))
    raise ValueError(f"unknown noise-level sampling '{method}'; use 'logit_normal' or 'uniform'")


VelocityFn = Callable[[Tensor, Tensor], Tensor]


def integrate(velocity: VelocityFn, noise: Tensor, steps: int, solver: str = "euler") -> Tensor:
    """Integrate dz/ds = v(z, s) from s = 1 (noise) to s = 0 on a uniform grid of `steps` steps.

    `velocity(z, s)` gets s as a (B,) tensor. Heun is second order (one extra evaluation per step,
    none on the last step, which lands on s = 0 where Heun's corrector would need v at s = 0).
    The grid lives on z's device and the step is a Python number: no host-device sync in the loop.
    """
    if solver not in ("euler", "heun"):
        raise ValueError(f"unknown solver '{solver}'; use 'euler' or 'heun'")
    levels = torch.linspace(1.0, 0.0, steps + 1, device=noise.device).repeat(noise.shape[0], 1)  # (B, steps + 1)
    dt = -1.0 / steps
    z = noise
    for i in range(steps):
        s_now, s_next = levels[:, i], levels[:, i + 1]
        v_now = velocity(z, s_now)
        z_euler = z + dt * v_now
        if solver == "heun" and i < steps - 1:
            z = z + dt * 0.5 * (v_now + velocity(z_euler, s_next))
        else:
            z = z_euler
    return z
