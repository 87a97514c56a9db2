"""A data order that can be resumed exactly, on any number of ranks: one endless stream of clips.

The stream is the concatenation of per-epoch permutations, epoch e's drawn from (seed, e). Every
optimiser step consumes the next global batch of G = world_size × clips_per_rank consecutive
clips; rank r takes the r-th block of `clips_per_rank` and splits it into its micro-batches. So
micro-batch m of rank r is global micro-batch r·A + m (A = gradient-accumulation steps), the same
clips that one process accumulating world_size·A micro-batches gets at index r·A + m. A run is
resumed from its position in the stream (clips seen so far), which needs no saved sampler state
and stays valid when the next run splits the global batch over another number of ranks.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class ResumableShuffle(Sampler[int]):
    """Rank `rank`'s clips of the shuffled stream, from global position `start` on (endless)."""

    def __init__(
        self,
        num_items: int,
        seed: int = 0,
        start: int = 0,
        rank: int = 0,
        world_size: int = 1,
        clips_per_rank: int = 1,
    ):
        if num_items < 1:
            raise ValueError("the dataset is empty; check data.path or data.num_clips")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
        if start < 0 or clips_per_rank < 1:
            raise ValueError(f"start must be >= 0 and clips_per_rank >= 1, got {start} and {clips_per_rank}")
        self.num_items = num_items
        self.seed = seed
        self.start = start
        self.rank = rank
        self.world_size = world_size
        self.clips_per_rank = clips_per_rank

    def epoch_order(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.num_items, generator=generator)

    def stream_position(self, k: int) -> int:
        """Global stream position of this rank's k-th clip."""
        step, within = divmod(k, self.clips_per_rank)
        global_batch = self.clips_per_rank * self.world_size
        return self.start + step * global_batch + self.rank * self.clips_per_rank + within

    def __iter__(self) -> Iterator[int]:
        epoch, order = -1, None
        k = 0
        while True:
            position = self.stream_position(k)
            if position // self.num_items != epoch:
                epoch = position // self.num_items
                order = self.epoch_order(epoch)
            yield int(order[position % self.num_items])
            k += 1

    def __len__(self) -> int:  # endless; DataLoader only needs a length for its own bookkeeping
        return self.num_items
