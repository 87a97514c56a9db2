"""Tube masks (VideoMAE): one random set of spatial positions, dropped from every history frame of a clip.

MAE's bookkeeping: rank random noise per position, keep the lowest ranks. Every clip keeps the
same number of positions, so the batch stays rectangular and dropped tokens can leave the
sequence instead of being replaced, which makes a MiMo step cheaper than a baseline step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class TubeMask:
    keep: Tensor  # (B, n_keep) spatial positions kept in every history frame, ascending
    dropped: Tensor  # (B, N) True where a position is dropped

    @property
    def num_kept(self) -> int:
        return self.keep.shape[1]


def kept_count(num_positions: int, ratio: float) -> int:
    """Positions kept for mask ratio r: N - round(r·N), at least one."""
    if not 0 <= ratio < 1:
        raise ValueError(f"mask ratio must be in [0, 1), got {ratio}")
    return max(1, num_positions - math.floor(ratio * num_positions + 0.5))


def tube_mask(batch: int, num_positions: int, ratio: float, generator: torch.Generator | None = None) -> TubeMask:
    """A fresh tube mask per clip, drawn from `generator` on its device."""
    device = generator.device if generator is not None else None
    noise = torch.rand(batch, num_positions, generator=generator, device=device)
    keep = noise.argsort(dim=1)[:, : kept_count(num_positions, ratio)].sort(dim=1).values
    dropped = torch.ones(batch, num_positions, dtype=torch.bool, device=noise.device)
    dropped.scatter_(1, keep, False)
    return TubeMask(keep, dropped)
