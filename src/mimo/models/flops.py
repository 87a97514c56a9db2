"""FLOPs of the matmuls in a training step, counted from the modules' own shapes (nanoGPT's `estimate_flops`,
but exact): each model adds up its linears and attentions in `training_flops`. Element-wise work
(norms, rotary, the optimizer) is not counted, as in FlopCounterMode and in model-FLOP-utilisation figures.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn
from torch.utils.flop_counter import sdpa_backward_flop_count, sdpa_flop_count

Flops = tuple[int, int]  # (forward, backward)


def linear_flops(linear: nn.Linear, rows: int, input_grad: bool = True) -> Flops:
    """A linear layer applied to `rows` vectors; the backward skips the input gradient of a leaf input."""
    forward = 2 * rows * linear.in_features * linear.out_features
    return forward, forward * (2 if input_grad else 1)


def attention_flops(batch: int, heads: int, length: int, head_dim: int) -> Flops:
    """Dense attention over `length` tokens: QKᵀ and AV over the whole (masked) matrix, as the kernel computes it."""
    shape = (batch, heads, length, head_dim)
    return sdpa_flop_count(shape, shape, shape), sdpa_backward_flop_count(shape, shape, shape, shape)


def add(parts: Iterable[Flops]) -> Flops:
    forward, backward = zip(*parts, strict=True)
    return sum(forward), sum(backward)
