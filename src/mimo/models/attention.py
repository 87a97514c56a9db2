"""Attention with the frame-causal rules of Complete Teacher Forcing, 3-D rotary positions, a KV cache.

Every token carries a frame position and a flag "clean" (history) or "noisy" (being denoised).
The attention rules of docs/method.md are a pure function of those two per-token values, so the
training mask, the uncached sampler and the MiMo decoder all use `frame_causal_mask`; the cached
sampler needs no mask at all because everything in the cache is visible by construction.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

ROPE_BASE = 10000.0  # RoFormer (Su et al. 2021)


def frame_causal_mask(query_frame: Tensor, query_clean: Tensor, key_frame: Tensor, key_clean: Tensor) -> Tensor:
    """Boolean (Lq, Lk) mask, True where a query token may attend to a key token.

    - clean frame i sees clean frames j <= i, never a noisy token;
    - noisy frame i sees clean frames j < i (never its own clean copy) and noisy frame i only.
    """
    qf, kf = query_frame[:, None], key_frame[None, :]
    qc, kc = query_clean[:, None], key_clean[None, :]
    clean_to_clean = qc & kc & (kf <= qf)
    noisy_to_clean = ~qc & kc & (kf < qf)
    noisy_to_noisy = ~qc & ~kc & (kf == qf)
    return clean_to_clean | noisy_to_clean | noisy_to_noisy


def split_rotary_dims(head_dim: int) -> tuple[int, int, int]:
    """Head dimensions given to (frame, row, column); each even, space sharing the remainder equally."""
    spatial = (head_dim // 3) // 2 * 2
    return head_dim - 2 * spatial, spatial, spatial


class RotaryEmbedding3D(nn.Module):
    """Rotary position embedding over (frame, row, column): attention depends on relative offsets only,
    so dropped tokens keep their true positions and a sliding window never leaves the trained range."""

    def __init__(self, head_dim: int, base: float = ROPE_BASE):
        super().__init__()
        dims = split_rotary_dims(head_dim)
        for axis, dim in zip(("frame", "row", "col"), dims, strict=True):
            inv_freq = base ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)
            self.register_buffer(f"inv_freq_{axis}", inv_freq.float(), persistent=False)

    def forward(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """cos and sin of shape (B, 1, L, head_dim / 2) for integer positions (B, L, 3)."""
        positions = positions.float()
        angles = torch.cat(
            [
                positions[..., 0, None] * self.inv_freq_frame,
                positions[..., 1, None] * self.inv_freq_row,
                positions[..., 2, None] * self.inv_freq_col,
            ],
            dim=-1,
        )
        return angles.cos()[:, None], angles.sin()[:, None]


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate consecutive pairs of x (B, H, L, head_dim) by the position angles."""
    pairs = rearrange(x.float(), "... (d two) -> ... d two", two=2)
    first, second = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack([first * cos - second * sin, first * sin + second * cos], dim=-1)
    return rearrange(rotated, "... d two -> ... (d two)").type_as(x)


@dataclass
class KVCache:
    """Per-layer keys and values (B, H, L, head_dim) of the clean frames generated so far.

    Each frame adds `tokens_per_frame` tokens per layer (see the sampler for the sliding window).
    """

    depth: int
    tokens_per_frame: int
    keys: list[Tensor | None] = field(default_factory=list)
    values: list[Tensor | None] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.keys = [None] * self.depth
        self.values = [None] * self.depth

    @property
    def num_frames(self) -> int:
        first = self.keys[0]
        return 0 if first is None else first.shape[2] // self.tokens_per_frame

    def get(self, layer: int) -> tuple[Tensor, Tensor] | None:
        if self.keys[layer] is None:
            return None
        return self.keys[layer], self.values[layer]

    def append(self, layer: int, key: Tensor, value: Tensor) -> None:
        if self.keys[layer] is None:
            self.keys[layer], self.values[layer] = key, value
        else:
            self.keys[layer] = torch.cat([self.keys[layer], key], dim=2)
            self.values[layer] = torch.cat([self.values[layer], value], dim=2)


class Attention(nn.Module):
    """Multi-head self-attention with QK-normalisation, optional rotary positions and cached prefixes."""

    def __init__(self, width: int, heads: int, qk_norm: bool = True):
        super().__init__()
        self.heads = heads
        head_dim = width // heads
        self.qkv = nn.Linear(width, 3 * width)
        self.q_norm = nn.RMSNorm(head_dim) if qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(head_dim) if qk_norm else nn.Identity()
        self.proj = nn.Linear(width, width)

    def forward(
        self,
        x: Tensor,
        rope: tuple[Tensor, Tensor] | None = None,
        mask: Tensor | None = None,
        prefix: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """Attend x (B, L, D) to [prefix, x]; returns the output and this call's (key, value).

        `mask` (L, L_prefix + L) is True where attention is allowed; None allows everything.
        """
        q, k, v = rearrange(self.qkv(x), "b l (three h d) -> three b h l d", three=3, h=self.heads)
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        new_kv = (k, v)
        if prefix is not None:
            k = torch.cat([prefix[0], k], dim=2)
            v = torch.cat([prefix[1], v], dim=2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(rearrange(out, "b h l d -> b l (h d)")), new_kv
