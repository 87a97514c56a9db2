"""MiMo's light decoder: from masked history features at backbone layer l to pixels of frames t and t+1.

MAE-style: a linear map into a narrow width, a learned mask token at every dropped position
(which keeps its true (frame, row, column) through rotary or sin-cos positions), a few
frame-causal transformer blocks (history frame t never sees frames after t, so reconstructing
t + 1 is a prediction, not a copy), and a linear head giving one patch per target frame.
Training-only: inference never builds it.
"""

from __future__ import annotations

import torch
from einops import rearrange, repeat
from torch import Tensor, nn

from mimo.models.attention import FrameLayout, RotaryEmbedding3D
from mimo.models.flops import StepFlops, attention_flops, block_linear_flops, linear_flops
from mimo.models.layers import (
    LayerNorm,
    TransformerBlock,
    sincos_position_3d,
    token_positions,
)

MASK_TOKEN_STD = 0.02  # MAE's initialisation of the mask token


class MimoDecoder(nn.Module):
    def __init__(
        self,
        backbone_width: int,
        width: int,
        depth: int,
        heads: int,
        patch_dim: int,
        num_targets: int,
        grid: int,
        rope: bool = True,
        qk_norm: bool = True,
        attention: str = "auto",
    ):
        super().__init__()
        self.grid = grid
        self.width = width
        self.num_targets = num_targets
        self.patch_dim = patch_dim
        self.attention = attention  # auto | sdpa | flex, see attention.uses_flex
        self.cache_masks = True  # False on fake tensors (the memory census): see FrameLayout.dense_mask
        self.embed = nn.Linear(backbone_width, width)
        self.mask_token = nn.Parameter(torch.randn(1, 1, 1, width) * MASK_TOKEN_STD)
        self.rope = RotaryEmbedding3D(width // heads) if rope else None
        self.blocks = nn.ModuleList(TransformerBlock(width, heads, qk_norm=qk_norm) for _ in range(depth))
        self.norm = LayerNorm(width)
        self.head = nn.Linear(width, num_targets * patch_dim)

    def training_flops(self, frames: int, kept: int, batch: int) -> StepFlops:
        """FLOPs of a training step (forward + backward) on `batch` clips of `frames` history frames with
        `kept` tokens each (see FrameCausalDiT.training_flops); mask tokens restore every grid position."""
        grid_tokens = batch * frames * self.grid**2
        heads, hidden = self.blocks[0].attn.heads, self.blocks[0].mlp.fc1.out_features
        flops = linear_flops(batch * frames * kept, self.embed.in_features, self.width)
        flops = flops + linear_flops(grid_tokens, self.width, self.head.out_features)
        per_block = block_linear_flops(grid_tokens, self.width, hidden) + attention_flops(
            FrameLayout(frames, self.grid**2), batch, heads, self.width // heads
        )
        for _ in self.blocks:
            flops = flops + per_block
        return flops

    def forward(self, features: Tensor, keep: Tensor | None) -> Tensor:
        """Patch predictions (B, T, N, targets, patch_dim) from kept-token features (B, T, n_keep, D).

        `keep` (B, n_keep) are the kept spatial positions (None: nothing was dropped).
        """
        batch, frames = features.shape[:2]
        positions_per_frame = self.grid**2
        tokens = self.embed(features)
        if keep is None:
            grid_tokens = tokens
        else:
            mask_token = self.mask_token.to(tokens.dtype)  # bf16 under autocast
            grid_tokens = mask_token.expand(batch, frames, positions_per_frame, self.width).clone()
            index = repeat(keep, "b n -> b t n d", t=frames, d=self.width)
            grid_tokens = grid_tokens.scatter(2, index, tokens)
        x = rearrange(grid_tokens, "b t n d -> b (t n) d")
        spatial = repeat(torch.arange(positions_per_frame, device=x.device), "n -> b n", b=batch)
        positions = token_positions(spatial, self.grid, 0, frames)
        if self.rope is None:
            x = x + sincos_position_3d(positions, self.width).to(x.dtype)
            rope = None
        else:
            rope = self.rope(positions)
        layout = FrameLayout(frames, positions_per_frame)  # history only: block-causal
        mask = layout.mask(self.attention, x.device, self.cache_masks)
        for block in self.blocks:
            x = block(x, rope, mask)
        out = self.head(self.norm(x))
        return rearrange(out, "b (t n) (k d) -> b t n k d", t=frames, k=self.num_targets)
