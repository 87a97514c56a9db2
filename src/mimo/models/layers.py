"""Small building blocks shared by the DiT backbone and the MiMo decoder."""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor, nn
from torch.nn.attention.flex_attention import BlockMask

from mimo.models.attention import Attention, split_rotary_dims

TIMESTEP_SCALE = 1000.0  # noise levels s in [0, 1] are embedded as s·1000, the range DiT's embedder expects
MAX_PERIOD = 10000.0  # DiT's sinusoidal timestep embedding


class LayerNorm(nn.LayerNorm):
    """LayerNorm in its input's dtype (the kernel keeps fp32 statistics): under autocast torch's would
    cast every block input to fp32 and keep that copy for the backward."""

    def forward(self, x: Tensor) -> Tensor:
        weight = None if self.weight is None else self.weight.to(x.dtype)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        device = x.device.type
        # leaving autocast has a cost (it clears its cast cache): only when it is on
        outside_autocast = torch.autocast(device, enabled=False) if torch.is_autocast_enabled(device) else nullcontext()
        with outside_autocast:
            return F.layer_norm(x, self.normalized_shape, weight, bias, self.eps)


class Mlp(nn.Module):
    """The transformer's position-wise feed-forward network (GELU, tanh approximation as in DiT)."""

    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


def sinusoidal(values: Tensor, dim: int, max_period: float = MAX_PERIOD) -> Tensor:
    """Sin-cos features (..., dim) of real values, the Transformer's positional encoding."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=values.device) / half)
    angles = values.float()[..., None] * freqs
    return torch.cat([angles.cos(), angles.sin()], dim=-1)


FREQUENCY_DIM = 256  # DiT's TimestepEmbedder


class NoiseLevelEmbedder(nn.Module):
    """Embeds a frame's noise level s in [0, 1] into the conditioning vector of adaLN."""

    def __init__(self, width: int, frequency_dim: int = FREQUENCY_DIM):
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, noise_level: Tensor) -> Tensor:
        features = sinusoidal(noise_level * TIMESTEP_SCALE, self.frequency_dim)
        return self.mlp(features.to(self.mlp[0].weight.dtype))


def token_positions(spatial: Tensor, grid: int, first_frame: int, num_frames: int) -> Tensor:
    """(B, T·n, 3) integer (frame, row, column) of tokens at spatial indices `spatial` (B, n) of frames
    first_frame.., frame-major: the position every token keeps whether or not others are dropped."""
    frames = torch.arange(first_frame, first_frame + num_frames, device=spatial.device)
    per_frame = spatial.shape[1]
    return torch.stack(
        [
            repeat(frames, "t -> b (t n)", b=spatial.shape[0], n=per_frame),
            repeat(spatial // grid, "b n -> b (t n)", t=num_frames),
            repeat(spatial % grid, "b n -> b (t n)", t=num_frames),
        ],
        dim=-1,
    )


def sincos_position_3d(positions: Tensor, width: int) -> Tensor:
    """Absolute (frame, row, column) sin-cos embeddings (B, L, width), used when rotary positions are off."""
    dims = split_rotary_dims(width)
    parts = [sinusoidal(positions[..., axis], dim) for axis, dim in enumerate(dims)]
    return torch.cat(parts, dim=-1)


class TransformerBlock(nn.Module):
    """A plain pre-norm transformer block (the MiMo decoder's block)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, qk_norm: bool = True):
        super().__init__()
        self.norm1 = LayerNorm(width)
        self.attn = Attention(width, heads, qk_norm)
        self.norm2 = LayerNorm(width)
        self.mlp = Mlp(width, int(width * mlp_ratio))

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None, mask: Tensor | BlockMask | None) -> Tensor:
        x = x + self.attn(self.norm1(x), rope, mask)
        return x + self.mlp(self.norm2(x))


def patchify(frames: Tensor, patch_size: int) -> Tensor:
    """Frames (B, T, C, H, W) as patch vectors (B, T, N, C·p·p), N in row-major order."""
    return rearrange(frames, "b t c (h p) (w q) -> b t (h w) (c p q)", p=patch_size, q=patch_size)


def unpatchify(patches: Tensor, patch_size: int, grid: int, channels: int) -> Tensor:
    """Inverse of `patchify` for a square grid of `grid` × `grid` patches."""
    return rearrange(
        patches, "b t (h w) (c p q) -> b t c (h p) (w q)", h=grid, w=grid, p=patch_size, q=patch_size, c=channels
    )
