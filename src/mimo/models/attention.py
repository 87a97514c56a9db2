"""Attention with the frame-causal rules of Complete Teacher Forcing, 3-D rotary positions, a KV cache.

Every token carries a frame position and a flag "clean" (history) or "noisy" (being denoised).
The attention rules of docs/method.md are a pure function of those two per-token values
(`frame_causal_rule`). A `FrameLayout` describes a sequence by them and yields both forms of the
rules: the dense boolean mask (the reference, and what SDPA takes on a CPU) and FlexAttention's
`BlockMask`, which skips every tile of the attention matrix that the rules mask out entirely (at
256 tokens per frame only ~27 % of the clean+noisy matrix is allowed). Both are built once per
layout and device. The training sequence, the uncached sampler, the cache refill and the MiMo
decoder all take their mask from a layout; the cached sampler needs none, because everything in
the cache is visible by construction. The DiT also splits its tokens into the clean and the noisy
group by the layout, to normalise and modulate each group its own way.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.attention.flex_attention as flex_module
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

from mimo.config import ATTENTION_BACKENDS
from mimo.errors import ConfigError

ROPE_BASE = 10000.0  # RoFormer (Su et al. 2021)
FLEX_BLOCK_SIZE = 128  # FlexAttention's tile: at 256 (or 128) tokens per frame every tile is all or nothing
PADDING_FRAME = -1  # frame of the padding tokens that fill a sequence up to whole tiles: no real token sees them


def frame_causal_rule(query_frame: Tensor, query_clean: Tensor, key_frame: Tensor, key_clean: Tensor) -> Tensor:
    """True where a query token may attend to a key token (element-wise, broadcasting):

    - clean frame i sees clean frames j <= i, never a noisy token;
    - noisy frame i sees clean frames j < i (never its own clean copy) and noisy frame i only.
    """
    clean_to_clean = query_clean & key_clean & (key_frame <= query_frame)
    noisy_to_clean = ~query_clean & key_clean & (key_frame < query_frame)
    noisy_to_noisy = ~query_clean & ~key_clean & (key_frame == query_frame)
    return clean_to_clean | noisy_to_clean | noisy_to_noisy


def frame_causal_mask(query_frame: Tensor, query_clean: Tensor, key_frame: Tensor, key_clean: Tensor) -> Tensor:
    """Boolean (Lq, Lk) mask of `frame_causal_rule` for per-token frames and clean flags."""
    return frame_causal_rule(query_frame[:, None], query_clean[:, None], key_frame[None, :], key_clean[None, :])


@dataclass(frozen=True)
class FrameLayout:
    """A sequence of `clean_frames` clean frames of `clean_per_frame` tokens, then `noisy_frames` noisy
    frames of `noisy_per_frame` tokens, frame-major. Noisy frame j sits at frame `noisy_offset + j`,
    counted from the first clean frame (only offsets matter to the rules)."""

    clean_frames: int
    clean_per_frame: int
    noisy_frames: int = 0
    noisy_per_frame: int = 0
    noisy_offset: int = 0

    @property
    def num_clean(self) -> int:
        return self.clean_frames * self.clean_per_frame

    @property
    def length(self) -> int:
        return self.num_clean + self.noisy_frames * self.noisy_per_frame

    def tokens(self, device: torch.device | str = "cpu", padded_length: int | None = None) -> tuple[Tensor, Tensor]:
        """Per-token frame (L,) and clean flag (L,); padding tokens up to `padded_length` see only padding."""
        clean_frame = torch.arange(self.clean_frames, device=device).repeat_interleave(self.clean_per_frame)
        noisy_frame = torch.arange(self.noisy_frames, device=device).repeat_interleave(self.noisy_per_frame)
        padding = (padded_length or self.length) - self.length
        frame = torch.cat(
            [clean_frame, noisy_frame + self.noisy_offset, torch.full((padding,), PADDING_FRAME, device=device)]
        )
        clean = torch.arange(frame.shape[0], device=device) < self.num_clean
        return frame, clean

    def split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Tokens (B, L, D) of this layout -> clean (B, Tc, n, D) and noisy (B, Tn, N, D)."""
        clean = x[:, : self.num_clean].unflatten(1, (self.clean_frames, self.clean_per_frame))
        noisy = x[:, self.num_clean :].unflatten(1, (self.noisy_frames, self.noisy_per_frame))
        return clean, noisy

    def map(self, x: Tensor, clean_fn: Callable[[Tensor], Tensor], noisy_fn: Callable[[Tensor], Tensor]) -> Tensor:
        """(B, L, D) -> (B, L, D): `clean_fn` on the clean tokens (B, Tc, n, D), `noisy_fn` on the noisy ones
        (B, Tn, N, D); an empty group (a cached step, frames appended to the cache) costs nothing."""
        clean, noisy = self.split(x)
        parts = [fn(group).flatten(1, 2) for fn, group in ((clean_fn, clean), (noisy_fn, noisy)) if group.shape[1]]
        return torch.cat(parts, dim=1) if len(parts) == 2 else parts[0]

    # `cached=False` builds a mask afresh and keeps nothing: for a forward on fake tensors (the memory census),
    # whose masks must not be handed to later real runs.
    def dense_mask(self, device: torch.device | str = "cpu", cached: bool = True) -> Tensor:
        """Boolean (L, L) mask, True where attention is allowed (built once per layout and device)."""
        build = _dense_mask if cached else _dense_mask.__wrapped__
        return build(self, torch.device(device))

    def block_mask(
        self, device: torch.device | str = "cpu", block_size: int = FLEX_BLOCK_SIZE, cached: bool = True
    ) -> BlockMask:
        """FlexAttention's BlockMask of the same rules (built once per layout, device and tile size)."""
        build = _block_mask if cached else _block_mask.__wrapped__
        return build(self, torch.device(device), block_size)

    def mask(self, attention: str, device: torch.device, cached: bool = True) -> Tensor | BlockMask:
        """The mask form `attention` (auto | sdpa | flex) asks for on `device`."""
        if uses_flex(attention, device):
            return self.block_mask(device, cached=cached)
        return self.dense_mask(device, cached=cached)


def uses_flex(attention: str, device: torch.device) -> bool:
    """`model.attention`: flex = block-sparse FlexAttention, sdpa = dense-mask SDPA, auto = flex on CUDA only
    (on a CPU, FlexAttention without torch.compile materialises the scores and is slower than SDPA)."""
    if attention not in ATTENTION_BACKENDS:
        raise ValueError(f"unknown attention '{attention}'; choose one of {list(ATTENTION_BACKENDS)} (model.attention)")
    return attention == "flex" or (attention == "auto" and device.type == "cuda")


def check_flex_trains(attention: str, device: torch.device) -> None:
    """Refuse, in one line, to train with FlexAttention where this torch has no backward for it (a CPU).

    Asks torch's own guard (`flex_attention._validate_device`), so the answer is exactly what the first
    backward would meet; the tests lift that guard (tests/conftest.py) and then train flex on a CPU."""
    if not uses_flex(attention, device):
        return
    probe = torch.empty(0, device=device, requires_grad=True)
    try:
        flex_module._validate_device(probe, probe, probe)
    except NotImplementedError:
        raise ConfigError(
            f"model.attention={attention} cannot train on {device.type}: FlexAttention has no {device.type} "
            "backward in this torch; use model.attention=auto (dense-mask SDPA there) or sdpa"
        ) from None


# Cached per layout and device. Always built outside inference_mode: a mask first built by the sampler is
# reused by training in the same process, and FlexAttention saves its tensors for the backward, which
# inference tensors cannot be.
@functools.lru_cache(maxsize=64)
@torch.inference_mode(False)
def _dense_mask(layout: FrameLayout, device: torch.device) -> Tensor:
    frame, clean = layout.tokens(device)
    return frame_causal_mask(frame, clean, frame, clean)


@functools.lru_cache(maxsize=64)
@torch.inference_mode(False)
def _block_mask(layout: FrameLayout, device: torch.device, block_size: int) -> BlockMask:
    # mask_mod may be evaluated on whole tiles, so the per-token tables cover them (padding sees only padding)
    padded = -(-layout.length // block_size) * block_size
    frame, clean = layout.tokens(device, padded)

    def mask_mod(batch: Tensor, head: Tensor, query: Tensor, key: Tensor) -> Tensor:
        return frame_causal_rule(frame[query], clean[query], frame[key], clean[key])

    length = layout.length
    return create_block_mask(mask_mod, None, None, length, length, device=device, BLOCK_SIZE=block_size)


def clear_mask_caches() -> None:
    """Forget every cached mask, as a new process starts: tests replay a job's sequence from its beginning."""
    _dense_mask.cache_clear()
    _block_mask.cache_clear()


@functools.cache
def _compiled_flex_attention():
    """FlexAttention compiled once: without compile it materialises the whole score matrix (on a GPU
    as on a CPU); under a compiled block it is compiled with the block anyway."""
    return torch.compile(flex_attention, dynamic=False)


def attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | BlockMask | None) -> Tensor:
    """Scaled dot-product attention of (B, H, L, head_dim) tensors under a dense mask, a BlockMask or none."""
    if isinstance(mask, BlockMask):
        if q.device.type == "cpu" and torch.is_grad_enabled() and q.requires_grad:
            check_flex_trains("flex", q.device)
        compile_here = q.device.type == "cuda" and not torch.compiler.is_compiling()  # a compiled block fuses it
        flex = _compiled_flex_attention() if compile_here else flex_attention
        return flex(q, k.to(q.dtype), v.to(q.dtype), block_mask=mask)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


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
        """cos and signed sin (B, 1, L, head_dim) for integer positions (B, L, 3), laid out for `apply_rotary`:
        each angle twice (one per element of its pair), sin as (-sin, sin)."""
        positions = positions.float()
        angles = torch.cat(
            [
                positions[..., 0, None] * self.inv_freq_frame,
                positions[..., 1, None] * self.inv_freq_row,
                positions[..., 2, None] * self.inv_freq_col,
            ],
            dim=-1,
        )
        cos, sin = angles.cos(), angles.sin()
        return cos.repeat_interleave(2, dim=-1)[:, None], torch.stack([-sin, sin], dim=-1).flatten(-2)[:, None]


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate consecutive pairs (a, b) of x (B, H, L, head_dim) by their angle θ:
    (a cos θ - b sin θ, a sin θ + b cos θ) = (a, b)·cos θ + (b, a)·(-sin θ, sin θ)."""
    pairs = x.float()  # the rotation in fp32 (bf16 would blur large angles)
    swapped = pairs.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)  # (b, a) for each pair (a, b)
    return (pairs * cos + swapped * sin).to(x.dtype)


class KVCache:
    """Keys and values of the clean frames in the sampling window, preallocated per layer as
    (B, H, (capacity + 1)·tokens_per_frame, head_dim) and written in place: no per-step concatenation.

    `extend(layer, k, v)` writes new keys after the `num_frames` committed frames and returns a view of
    everything up to them; `advance(frames)` commits what the last pass wrote (a finished clean frame),
    while the keys of a noisy frame being denoised stay uncommitted scratch, overwritten at the next step.
    """

    def __init__(self, depth: int, tokens_per_frame: int, capacity: int):
        self.tokens_per_frame = tokens_per_frame
        self.capacity = capacity  # committed frames; one more frame of room for the frame being denoised
        self.num_frames = 0
        self.keys: list[Tensor | None] = [None] * depth
        self.values: list[Tensor | None] = [None] * depth

    def extend(self, layer: int, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor]:
        """Write `key`, `value` (B, H, new, head_dim) after the committed frames; return views of all the
        keys and values up to them (B, H, committed + new, head_dim)."""
        start = self.num_frames * self.tokens_per_frame
        end = start + key.shape[2]
        room = (self.capacity + 1) * self.tokens_per_frame
        if end > room:
            raise ValueError(
                f"the KV cache holds {self.capacity} frames (+1 being denoised) and has {self.num_frames}; "
                f"{key.shape[2] // self.tokens_per_frame} more do not fit: clear it (the sliding window) first"
            )
        if self.keys[layer] is None:
            batch, heads, _, head_dim = key.shape
            self.keys[layer] = key.new_empty(batch, heads, room, head_dim)
            self.values[layer] = value.new_empty(batch, heads, room, head_dim)
        self.keys[layer][:, :, start:end] = key
        self.values[layer][:, :, start:end] = value
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def advance(self, frames: int) -> None:
        """Commit the `frames` clean frames the last pass wrote."""
        self.num_frames += frames

    def clear(self) -> None:
        """Forget every frame (the buffers stay allocated for the refill)."""
        self.num_frames = 0


class QKNorm(nn.RMSNorm):
    """RMSNorm of queries or keys (QK-normalisation) that keeps them in their own dtype: the mean square
    is accumulated in fp32, the scaling is done in the input's dtype. torch's RMSNorm, given bf16 under
    autocast, upcasts and saves three fp32 copies of q and k for the backward (~20 % of a step's memory)."""

    def forward(self, x: Tensor) -> Tensor:
        eps = torch.finfo(torch.float32).eps if self.eps is None else self.eps
        mean_square = (x * x).mean(dim=-1, keepdim=True, dtype=torch.float32)
        return x * torch.rsqrt(mean_square + eps).to(x.dtype) * self.weight.to(x.dtype)


class Attention(nn.Module):
    """Multi-head self-attention with QK-normalisation, optional rotary positions and a KV cache."""

    def __init__(self, width: int, heads: int, qk_norm: bool = True):
        super().__init__()
        self.heads = heads
        head_dim = width // heads
        self.qkv = nn.Linear(width, 3 * width)
        self.q_norm = QKNorm(head_dim) if qk_norm else nn.Identity()
        self.k_norm = QKNorm(head_dim) if qk_norm else nn.Identity()
        self.proj = nn.Linear(width, width)

    def forward(
        self,
        x: Tensor,
        rope: tuple[Tensor, Tensor] | None = None,
        mask: Tensor | BlockMask | None = None,
        cache: KVCache | None = None,
        layer: int = 0,
    ) -> Tensor:
        """Attend x (B, L, D) to itself, after the frames of `cache` (its `layer`) when one is given.

        `mask` (L, L_cached + L), dense or block-sparse, says where attention is allowed; None allows everything.
        """
        # (B, L, 3·D) -> three (B, H, L, head_dim); a plain permute: this runs at every ODE step of sampling
        q, k, v = self.qkv(x).unflatten(-1, (3, self.heads, -1)).permute(2, 0, 3, 1, 4)
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        if cache is not None:
            k, v = cache.extend(layer, k, v)
        out = attend(q, k, v, mask)
        return self.proj(out.transpose(1, 2).flatten(2))  # (B, H, L, head_dim) -> (B, L, D)
