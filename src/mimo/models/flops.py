"""FLOPs of a training step, counted layer by layer as torch's FlopCounterMode counts them.

nanoGPT's `estimate_mfu`, made exact: each model owns its count (`FrameCausalDiT.training_flops`,
`MimoDecoder.training_flops`, summed by `TrainingObjective.training_flops`) and builds it from the
pieces here: the matmuls of linear layers and of a transformer block, and attention over a
`FrameLayout` three ways, since the frame-causal rules leave much of the attention matrix unused.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass

import torch.nn.functional as F
from torch.utils.flop_counter import sdpa_backward_flop_count, sdpa_flop_count

from mimo.models.attention import FLEX_BLOCK_SIZE, FrameLayout


@dataclass(frozen=True)
class StepFlops:
    """FLOPs of one training step (forward + backward) of a module: matmuls, plus attention three ways:
    as dense-mask SDPA executes it (the whole L×L matrix), as block-sparse FlexAttention executes it
    (whole tiles that hold an allowed pair), and the useful part (allowed pairs only)."""

    linear: int = 0
    attention_dense: int = 0
    attention_block_sparse: int = 0
    attention_useful: int = 0

    def __add__(self, other: StepFlops) -> StepFlops:
        return StepFlops(*(a + b for a, b in zip(astuple(self), astuple(other), strict=True)))

    @property
    def dense(self) -> int:
        return self.linear + self.attention_dense

    @property
    def block_sparse(self) -> int:
        return self.linear + self.attention_block_sparse

    @property
    def useful(self) -> int:
        return self.linear + self.attention_useful

    def executed(self, flex: bool) -> int:
        return self.block_sparse if flex else self.dense


def linear_flops(rows: int, fan_in: int, fan_out: int, input_grad: bool = True) -> StepFlops:
    """Forward + backward FLOPs of a linear layer on `rows` rows; a leaf input needs no input gradient."""
    forward = 2 * rows * fan_in * fan_out
    return StepFlops(linear=forward * (3 if input_grad else 2))


def block_linear_flops(tokens: int, width: int, hidden: int) -> StepFlops:
    """The matmuls of a transformer block on `tokens` rows: qkv, output projection, the MLP's two layers."""
    return (
        linear_flops(tokens, width, 3 * width)
        + linear_flops(tokens, width, width)
        + linear_flops(tokens, width, hidden)
        + linear_flops(tokens, hidden, width)
    )


def attention_flops(
    layout: FrameLayout, batch: int, heads: int, head_dim: int, block_size: int = FLEX_BLOCK_SIZE
) -> StepFlops:
    """QKᵀ and AV of a training step (torch's FlopCounterMode formulas) over `layout`, three ways (StepFlops)."""
    shape = (batch, heads, layout.length, head_dim)
    dense = sdpa_flop_count(shape, shape, shape) + sdpa_backward_flop_count(shape, shape, shape, shape)
    allowed = layout.dense_mask()
    tiles = -(-layout.length // block_size)
    padded = F.pad(allowed, (0, tiles * block_size - layout.length) * 2)
    computed_tiles = padded.view(tiles, block_size, tiles, block_size).any(dim=(1, 3))
    computed = computed_tiles.repeat_interleave(block_size, 0).repeat_interleave(block_size, 1)
    computed_pairs = int(computed[: layout.length, : layout.length].sum())
    pairs = layout.length**2
    return StepFlops(
        attention_dense=dense,
        attention_block_sparse=dense * computed_pairs // pairs,
        attention_useful=dense * int(allowed.sum()) // pairs,
    )
