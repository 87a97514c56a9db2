"""The frame-causal Diffusion Transformer of Complete Teacher Forcing (CTF).

One sequence per clip: [clean history tokens | noisy tokens]. Both copies of a frame share
rotary positions (ACDiT's layout); the frame-causal rules of `attention.FrameLayout` keep a noisy frame from seeing
its own clean copy or any later frame. Noisy tokens are modulated by adaLN-Zero with their
frame's noise level (+ class); clean tokens get their own plain LayerNorms (ACDiT, the paper's
"independent LN") or, as a switch, the shared adaLN with a clean noise level (FAR).

The same weights serve three ways of running:
- `forward`: a whole training sequence (or an uncached sampling step), under its layout's mask;
- `denoise_cached`: one noisy frame against the KV cache of the clean frames so far;
- `append_to_cache`: finished frames run as clean, their keys/values written into the static cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, NamedTuple, TypeVar

import torch
from einops import rearrange, repeat
from torch import Tensor, nn
from torch.nn.attention.flex_attention import BlockMask
from torch.utils.checkpoint import checkpoint

from mimo.config import ModelConfig
from mimo.errors import InputError
from mimo.models.attention import Attention, FrameLayout, KVCache, RotaryEmbedding3D
from mimo.models.checks import check_model_inputs
from mimo.models.flops import StepFlops, attention_flops, block_linear_flops, linear_flops
from mimo.models.layers import (
    FREQUENCY_DIM,
    LayerNorm,
    Mlp,
    NoiseLevelEmbedder,
    patchify,
    sincos_position_3d,
    token_positions,
    unpatchify,
)

NORM_EPS = 1e-6  # DiT
T = TypeVar("T")


def modulate(x: Tensor, shift: Tensor | None, scale: Tensor | None) -> Tensor:
    """DiT's adaLN modulation; no terms (independent clean LayerNorms) leave x as it is."""
    return x if shift is None else x * (1 + scale) + shift


def gated(x: Tensor, gate: Tensor | None) -> Tensor:
    """A residual update scaled by adaLN-Zero's gate; independent clean tokens are not gated."""
    return x if gate is None else gate * x


@dataclass(frozen=True)
class PerGroup(Generic[T]):
    """One thing for each token group of a `FrameLayout`: the clean (history) tokens' and the noisy tokens'."""

    clean: T
    noisy: T


class Modulation(NamedTuple):
    """adaLN-Zero's six terms, each per group: (B, frames, 1, D), one value per frame broadcast over the frame's
    tokens rather than repeated per token. None for a group with its own LayerNorms (or without tokens)."""

    shift_msa: PerGroup[Tensor | None]
    scale_msa: PerGroup[Tensor | None]
    gate_msa: PerGroup[Tensor | None]
    shift_mlp: PerGroup[Tensor | None]
    scale_mlp: PerGroup[Tensor | None]
    gate_mlp: PerGroup[Tensor | None]


def modulate_groups(
    x: Tensor, layout: FrameLayout, norm: PerGroup[nn.Module], shift: PerGroup, scale: PerGroup
) -> Tensor:
    """`modulate(norm(x), shift, scale)` on each token group of x (B, L, D), with the group's own norm and terms."""
    return layout.map(
        x,
        lambda clean: modulate(norm.clean(clean), shift.clean, scale.clean),
        lambda noisy: modulate(norm.noisy(noisy), shift.noisy, scale.noisy),
    )


def gate_groups(update: Tensor, layout: FrameLayout, gate: PerGroup) -> Tensor:
    """`gated(update, gate)` on each token group of a residual update (B, L, D), with the group's own gate."""
    return layout.map(update, lambda clean: gated(clean, gate.clean), lambda noisy: gated(noisy, gate.noisy))


class DiTBlock(nn.Module):
    """Shared attention and MLP over clean and noisy tokens; separate normalisation for each group."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, qk_norm: bool, independent_clean: bool):
        super().__init__()
        self.norm1 = LayerNorm(width, elementwise_affine=False, eps=NORM_EPS)
        self.attn = Attention(width, heads, qk_norm)
        self.norm2 = LayerNorm(width, elementwise_affine=False, eps=NORM_EPS)
        self.mlp = Mlp(width, int(width * mlp_ratio))
        self.adaLN = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))
        # clean tokens: their own affine LayerNorms (ACDiT), or the parameter-free ones shared with adaLN (FAR)
        self.clean_norm1 = LayerNorm(width, eps=NORM_EPS) if independent_clean else self.norm1
        self.clean_norm2 = LayerNorm(width, eps=NORM_EPS) if independent_clean else self.norm2

    def modulation(self, cond: PerGroup[Tensor | None]) -> Modulation:
        """adaLN's terms from each group's per-frame conditioning (B, frames, D); none for a group without it."""
        clean, noisy = (
            (None,) * 6 if c is None else self.adaLN(c)[:, :, None].chunk(6, dim=-1) for c in (cond.clean, cond.noisy)
        )
        return Modulation(*map(PerGroup, clean, noisy))

    def forward(
        self,
        x: Tensor,
        layout: FrameLayout,
        cond: PerGroup[Tensor | None],
        rope: tuple[Tensor, Tensor] | None,
        mask: Tensor | BlockMask | None,
        cache: KVCache | None = None,
        layer: int = 0,
    ) -> Tensor:
        """x (B, L, D): the clean tokens of `layout`, then its noisy tokens (either group may be empty);
        `cond`: each group's per-frame conditioning (B, frames, D), None for independent clean LayerNorms."""
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.modulation(cond)  # (B, T, 1, D)
        norm1, norm2 = PerGroup(self.clean_norm1, self.norm1), PerGroup(self.clean_norm2, self.norm2)
        attn_in = modulate_groups(x, layout, norm1, shift=shift_msa, scale=scale_msa)  # (B, L, D)
        x = x + gate_groups(self.attn(attn_in, rope, mask, cache, layer), layout, gate=gate_msa)  # (B, L, D)
        mlp_in = modulate_groups(x, layout, norm2, shift=shift_mlp, scale=scale_mlp)  # (B, L, D)
        return x + gate_groups(self.mlp(mlp_in), layout, gate=gate_mlp)  # (B, L, D)


class FinalLayer(nn.Module):
    """adaLN-modulated projection of noisy tokens to patch velocities (zero-initialised, as in DiT)."""

    def __init__(self, width: int, patch_dim: int):
        super().__init__()
        self.norm = LayerNorm(width, elementwise_affine=False, eps=NORM_EPS)
        self.adaLN = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.linear = nn.Linear(width, patch_dim)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        """Noisy tokens x (B, T, N, D) and per-frame conditioning (B, T, D) -> patches (B, T, N, patch_dim)."""
        shift, scale = self.adaLN(cond)[:, :, None].chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))


@dataclass
class DiTOutput:
    velocity: Tensor  # (B, Tn, C, H, W)
    clean_hidden: dict[int, Tensor]  # 1-based layer -> (B, Tc, tokens per clean frame, D)
    noisy_hidden: dict[int, Tensor]  # 1-based layer -> (B, Tn, N, D)


class FrameCausalDiT(nn.Module):
    """Frame-causal DiT over clips of `channels`×`frame_size`² frames (pixels or latents)."""

    def __init__(
        self,
        config: ModelConfig,
        channels: int,
        frame_size: int,
        num_classes: int = 0,
        history_conditioned: bool = False,
    ):
        """`history_conditioned`: clean frames may be noised (history noise augmentation, history guidance) and
        the model is told each one's noise level through an embedding added to its tokens."""
        super().__init__()
        self.depth, self.width, self.heads = config.size()
        self.patch_size = config.patch_size
        self.channels = channels
        self.grid = frame_size // config.patch_size
        self.tokens_per_frame = self.grid**2
        self.num_classes = num_classes
        self.activation_checkpointing = False
        self.attention = config.attention  # auto | sdpa | flex, see attention.uses_flex
        self.cache_masks = True  # False on fake tensors (the memory census): see FrameLayout.dense_mask
        patch_dim = channels * config.patch_size**2
        independent_clean = config.clean_conditioning == "independent_ln"
        self.independent_clean = independent_clean

        self.patch_embed = nn.Linear(patch_dim, self.width)
        self.noise_embed = NoiseLevelEmbedder(self.width)
        self.history_noise_embed = NoiseLevelEmbedder(self.width) if history_conditioned else None
        # index num_classes is the null class of classifier-free guidance
        self.class_embed = nn.Embedding(num_classes + 1, self.width) if num_classes else None
        self.rope = RotaryEmbedding3D(self.width // self.heads) if config.rope else None
        self.blocks = nn.ModuleList(
            DiTBlock(self.width, self.heads, config.mlp_ratio, config.qk_norm, independent_clean)
            for _ in range(self.depth)
        )
        self.final = FinalLayer(self.width, patch_dim)
        self.initialize()

    def initialize(self) -> None:
        """DiT's initialisation: Xavier linears, adaLN-Zero and a zero output layer."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        if self.class_embed is not None:
            nn.init.normal_(self.class_embed.weight, std=0.02)
        embedders = [self.noise_embed] + ([self.history_noise_embed] if self.history_noise_embed else [])
        for linear in (linear for embedder in embedders for linear in embedder.mlp[0::2]):
            nn.init.normal_(linear.weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN[-1].weight)
            nn.init.zeros_(block.adaLN[-1].bias)
        for layer in (self.final.adaLN[-1], self.final.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    @property
    def null_class(self) -> int:
        return self.num_classes

    def new_cache(self, window: int) -> KVCache:
        """An empty static cache for `window` clean frames."""
        return KVCache(self.depth, self.tokens_per_frame, window)

    def positions(self, first_frame: int, num_frames: int, keep: Tensor | None, batch: int) -> Tensor:
        """(B, frames × tokens, 3) integer (frame, row, column) of each token, kept tokens only."""
        if keep is None:
            keep = repeat(
                torch.arange(self.tokens_per_frame, device=self.patch_embed.weight.device), "n -> b n", b=batch
            )
        return token_positions(keep, self.grid, first_frame, num_frames)

    def embed(
        self, frames: Tensor, first_frame: int, keep: Tensor | None = None, history_level: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Patch tokens (B, T·n, D) and their positions; `keep` (B, n) selects spatial positions (MiMo).

        `history_level` (B, T): the noise level of clean frames, embedded into their tokens (history-conditioned
        models, see `history_levels`); None for noisy frames and models of clean histories."""
        patches = patchify(frames, self.patch_size)
        if keep is not None:
            index = repeat(keep, "b n -> b t n d", t=patches.shape[1], d=patches.shape[-1])
            patches = patches.gather(2, index)
        tokens = self.patch_embed(patches)  # (B, T, n, D)
        if history_level is not None:
            tokens = tokens + self.history_noise_embed(history_level)[:, :, None].to(tokens.dtype)
        tokens = rearrange(tokens, "b t n d -> b (t n) d")
        if torch.is_inference_mode_enabled():  # sampling: the residual stream in the weights' dtype (fp32) under
            tokens = tokens.to(self.patch_embed.weight.dtype)  # bf16 autocast halves its error (docs/distributed.md)
        positions = self.positions(first_frame, frames.shape[1], keep, frames.shape[0])
        if self.rope is None:
            tokens = tokens + sincos_position_3d(positions, self.width).to(tokens.dtype)
        return tokens, positions

    def history_levels(self, level: Tensor | None, frames: Tensor) -> Tensor | None:
        """The noise level (B, T) of clean frames (B, T, C, H, W) that `embed` adds to their tokens: as given, 0
        (a clean history) when not given, and None for a model trained on clean histories only."""
        if self.history_noise_embed is None:
            if level is not None:
                raise InputError(
                    "this model was trained on clean histories only: it has no history noise level to be told "
                    "(train with diffusion.history_noise_max > 0 to use noised histories)"
                )
            return None
        return frames.new_zeros(frames.shape[:2]) if level is None else level

    def condition(self, noise_level: Tensor, labels: Tensor | None) -> Tensor:
        """Per-frame conditioning (B, T, D): noise-level embedding plus class embedding."""
        cond = self.noise_embed(noise_level)
        if self.class_embed is not None:
            if labels is None:
                raise ValueError("this model is class-conditional: pass labels (use model.null_class for none)")
            cond = cond + self.class_embed(labels)[:, None]
        return cond

    def _clean_condition(self, clean_frames: int, batch: int, labels: Tensor | None, like: Tensor) -> Tensor | None:
        if self.independent_clean or clean_frames == 0:
            return None
        return self.condition(torch.zeros(batch, clean_frames, device=like.device), labels)

    def _run_blocks(
        self,
        x: Tensor,
        layout: FrameLayout,
        cond: PerGroup[Tensor | None],
        positions: Tensor,
        mask: Tensor | BlockMask | None,
        cache: KVCache | None,
        return_layers: tuple[int, ...] = (),
    ) -> tuple[Tensor, dict[int, Tensor]]:
        rope = self.rope(positions) if self.rope is not None else None
        hidden = {}
        for layer, block in enumerate(self.blocks):
            if self.activation_checkpointing and self.training:
                x = checkpoint(block, x, layout, cond, rope, mask, use_reentrant=False)
            else:
                x = block(x, layout, cond, rope, mask, cache, layer)
            if layer + 1 in return_layers:
                hidden[layer + 1] = x
        return x, hidden

    def forward(
        self,
        noisy: Tensor,
        noise_level: Tensor,
        labels: Tensor | None = None,
        clean: Tensor | None = None,
        clean_start: int = 0,
        noisy_start: int | None = None,
        keep: Tensor | None = None,
        return_layers: tuple[int, ...] = (),
        clean_noise_level: Tensor | None = None,
    ) -> DiTOutput:
        """Velocities for `noisy` (B, Tn, C, H, W) given clean history `clean` (B, Tc, C, H, W).

        Clean frames sit at positions clean_start.., noisy frames at noisy_start.. (default: right
        after the clean frames). `keep` (B, n) drops clean tokens (MiMo's tube mask).
        `clean_noise_level` (B, Tc): how noised each history frame is (history-conditioned models only).
        """
        check_model_inputs(self, noisy, noise_level, labels, clean, keep, return_layers)
        batch, noisy_frames = noisy.shape[:2]
        clean_frames = 0 if clean is None else clean.shape[1]
        noisy_start = clean_start + clean_frames if noisy_start is None else noisy_start
        clean_per_frame = self.tokens_per_frame if keep is None else keep.shape[1]
        layout = FrameLayout(
            clean_frames, clean_per_frame, noisy_frames, self.tokens_per_frame, noisy_start - clean_start
        )
        x, positions = self.embed(noisy, noisy_start)  # (B, Tn·N, D), (B, Tn·N, 3)
        if clean_frames:
            level = self.history_levels(clean_noise_level, clean)  # (B, Tc) or None
            clean_tokens, clean_positions = self.embed(clean, clean_start, keep, level)  # (B, Tc·n, D), (B, Tc·n, 3)
            x = torch.cat([clean_tokens, x], dim=1)  # (B, L, D), L = Tc·n + Tn·N
            positions = torch.cat([clean_positions, positions], dim=1)  # (B, L, 3)
        cond = PerGroup(
            clean=self._clean_condition(clean_frames, batch, labels, noisy),  # (B, Tc, D) or None
            noisy=self.condition(noise_level, labels),  # (B, Tn, D)
        )
        mask = layout.mask(self.attention, x.device, self.cache_masks)  # (L, L) dense, or its BlockMask
        x, hidden = self._run_blocks(x, layout, cond, positions, mask, None, return_layers)  # (B, L, D)
        out = self.final(layout.split(x)[1], cond.noisy)  # (B, Tn, N, patch_dim)
        velocity = unpatchify(out, self.patch_size, self.grid, self.channels)  # (B, Tn, C, H, W)
        split = {layer: layout.split(h) for layer, h in hidden.items()}  # (B, Tc, n, D), (B, Tn, N, D)
        return DiTOutput(
            velocity,
            clean_hidden={layer: clean for layer, (clean, _) in split.items()},
            noisy_hidden={layer: noisy for layer, (_, noisy) in split.items()},
        )

    def training_flops(self, layout: FrameLayout, batch: int) -> StepFlops:
        """FLOPs of a training step (forward + backward) of the backbone on `batch` sequences of `layout`,
        layer by layer as FlopCounterMode counts them (nanoGPT's estimate_mfu, exact): matmuls, and
        attention as dense SDPA and block-sparse FlexAttention execute it and as the rules allow it."""
        width, patch_dim = self.width, self.patch_embed.in_features
        hidden = self.blocks[0].mlp.fc1.out_features
        tokens = batch * layout.length
        noisy_frames = batch * layout.noisy_frames
        conditioned = noisy_frames + (0 if self.independent_clean else batch * layout.clean_frames)
        history_embedded = 0 if self.history_noise_embed is None else batch * layout.clean_frames
        flops = (
            linear_flops(history_embedded, FREQUENCY_DIM, width, input_grad=False)  # history noise-level embedder
            + linear_flops(history_embedded, width, width)
            + linear_flops(tokens, patch_dim, width, input_grad=False)  # patch embedding
            + linear_flops(conditioned, FREQUENCY_DIM, width, input_grad=False)  # noise-level embedder
            + linear_flops(conditioned, width, width)
            + linear_flops(noisy_frames, width, 2 * width)  # final adaLN
            + linear_flops(noisy_frames * layout.noisy_per_frame, width, patch_dim)  # final projection
        )
        per_block = (
            linear_flops(conditioned, width, 6 * width)  # adaLN
            + block_linear_flops(tokens, width, hidden)
            + attention_flops(layout, batch, self.heads, width // self.heads)
        )
        for _ in self.blocks:
            flops = flops + per_block
        return flops

    def denoise_cached(
        self, noisy: Tensor, noise_level: Tensor, frame_position: int, cache: KVCache, labels: Tensor | None = None
    ) -> Tensor:
        """Velocity of one noisy frame (B, 1, C, H, W) attending to every clean frame in `cache`.

        Its keys and values go to the cache's scratch slot, uncommitted: the next step overwrites them.
        """
        tokens, positions = self.embed(noisy, frame_position)  # (B, N, D), (B, N, 3)
        cond = self.condition(noise_level, labels)  # (B, 1, D)
        layout = FrameLayout(0, self.tokens_per_frame, 1, self.tokens_per_frame)
        x, _ = self._run_blocks(tokens, layout, PerGroup(None, cond), positions, None, cache)  # (B, N, D)
        out = self.final(layout.split(x)[1], cond)  # (B, 1, N, patch_dim)
        return unpatchify(out, self.patch_size, self.grid, self.channels)  # (B, 1, C, H, W)

    def append_to_cache(
        self,
        frames: Tensor,
        first_position: int,
        cache: KVCache,
        labels: Tensor | None = None,
        noise_level: Tensor | None = None,
    ) -> None:
        """Run finished frames (B, T, C, H, W) as clean history after the cache's frames and commit their
        keys/values. Several frames go in one block-causal pass (frame t sees frames <= t), which needs
        an empty cache: that is the sliding window's refill. `noise_level` (B, T): how noised the frames are
        (history-conditioned models)."""
        batch, num_frames = frames.shape[:2]
        if num_frames > 1 and cache.num_frames:
            raise ValueError(
                f"appending {num_frames} frames at once needs an empty cache (it holds {cache.num_frames}): "
                "clear it first, or append one frame at a time"
            )
        level = self.history_levels(noise_level, frames)  # (B, T) or None
        tokens, positions = self.embed(frames, first_position, None, level)  # (B, T·N, D), (B, T·N, 3)
        cond = PerGroup(clean=self._clean_condition(num_frames, batch, labels, frames), noisy=None)  # (B, T, D) or None
        layout = FrameLayout(num_frames, self.tokens_per_frame)
        one_frame = num_frames == 1  # one frame sees the whole cache: no mask
        mask = None if one_frame else layout.mask(self.attention, tokens.device, self.cache_masks)
        self._run_blocks(tokens, layout, cond, positions, mask, cache)
        cache.advance(num_frames)
