"""Exponential moving average of the backbone's weights, the weights that sampling and probes use."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """A frozen copy of a module updated as θ_ema ← d·θ_ema + (1 - d)·θ.

    With `warmup`, d = min(decay, (1 + step) / (10 + step)) so that short runs (the CPU demo) are not
    dominated by the random initialisation; long runs reach the configured decay after ~10/(1-d) steps.
    """

    def __init__(self, module: nn.Module, decay: float, warmup: bool = True):
        self.module = copy.deepcopy(module).eval().requires_grad_(False)
        self.decay = decay
        self.warmup = warmup

    def decay_at(self, step: int) -> float:
        return min(self.decay, (1 + step) / (10 + step)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, module: nn.Module, step: int) -> None:
        decay = self.decay_at(step)
        ema_params = list(self.module.parameters())
        params = [p.detach().to(e.dtype) for p, e in zip(module.parameters(), ema_params, strict=True)]
        torch._foreach_lerp_(ema_params, params, 1 - decay)
