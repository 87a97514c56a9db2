"""Exponential moving average of the backbone's weights, the weights that sampling and probes use."""

from __future__ import annotations

import copy
import warnings

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


def share_of_last_updates(steps: int, decay: float) -> float:
    """Share of the EMA weights that the last `steps` updates hold at decay d: 1 - d^steps (the rest, d^steps,
    is what the average held before them)."""
    return 1 - decay**steps


def warn_if_tail_is_outweighed(tail_steps: int, decay: float) -> None:
    """The unmasked tail (mimo.unmasked_tail_steps) shorter than the EMA's horizon 1/(1 - d) leaves the sampled
    weights mostly the masked-phase model's: say so, with the share the tail will hold."""
    horizon = round(1 / (1 - decay))  # whole steps (1 - 0.9999 is not exact in binary)
    if 0 < tail_steps < horizon:
        share = share_of_last_updates(tail_steps, decay)
        warnings.warn(
            f"mimo.unmasked_tail_steps={tail_steps} is shorter than the EMA's horizon 1/(1 - train.ema_decay) = "
            f"{horizon} steps: the tail will hold {share:.1%} of the EMA weights that sampling and probes use; "
            f"lengthen the tail or lower train.ema_decay",
            UserWarning,
            stacklevel=2,
        )
