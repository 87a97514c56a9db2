"""A data order that can be resumed exactly: an endless stream of per-epoch permutations.

Epoch e's order is a permutation drawn from (seed, e), sharded across ranks, so the position in
the stream (step × per-rank batch) determines every future batch; resuming needs no saved state.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class ResumableShuffle(Sampler[int]):
    def __init__(self, num_items: int, seed: int = 0, start: int = 0, rank: int = 0, world_size: int = 1):
        if num_items < world_size:
            raise ValueError(f"{num_items} clips cannot be shared among {world_size} ranks; use more data")
        self.num_items = num_items
        self.seed = seed
        self.start = start
        self.rank = rank
        self.world_size = world_size
        self.per_rank = num_items // world_size  # equal shares so ranks stay in step

    def epoch_order(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(self.num_items, generator=generator)
        return order[self.rank : self.per_rank * self.world_size : self.world_size]

    def epoch_of(self, position: int) -> int:
        return position // self.per_rank

    def __iter__(self) -> Iterator[int]:
        epoch, offset = divmod(self.start, self.per_rank)
        while True:
            yield from self.epoch_order(epoch)[offset:].tolist()
            epoch, offset = epoch + 1, 0

    def __len__(self) -> int:  # endless; DataLoader only needs this for its own bookkeeping
        return self.per_rank
