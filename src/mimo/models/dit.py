"""The frame-causal Diffusion Transformer of Complete Teacher Forcing (CTF).

One sequence per clip: [clean history tokens | noisy tokens]. Both copies of a frame share
rotary positions (ACDiT's layout); `attention.frame_causal_mask` keeps a noisy frame from seeing
its own clean copy or any later frame. Noisy tokens are modulated by adaLN-Zero with their
frame's noise level (+ class); clean tokens get their own plain LayerNorms (ACDiT, the paper's
"independent LN") or, as a switch, the shared adaLN with a clean noise level (FAR).

The same weights serve three ways of running:
- `forward`: a whole training sequence (or an uncached sampling step), with an explicit mask;
- `denoise_cached`: one noisy frame against the KV cache of the clean frames so far;
- `append_to_cache`: one finished frame run as clean, its keys/values appended to the cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange, repeat
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from mimo.config import ModelConfig
from mimo.models.attention import Attention, KVCache, RotaryEmbedding3D, frame_causal_mask
from mimo.models.checks import check_model_inputs
from mimo.models.flops import Flops, add, attention_flops, linear_flops
from mimo.models.layers import (
    Mlp,
    NoiseLevelEmbedder,
    patchify,
    sincos_position_3d,
    token_positions,
    unpatchify,
)

NORM_EPS = 1e-6  # DiT


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale) + shift


@dataclass
class TokenGroups:
    """How a block's sequence splits into clean and noisy tokens, with per-frame conditioning."""

    num_clean: int
    clean_per_frame: int
    noisy_per_frame: int
    noisy_cond: Tensor | None  # (B, frames, D)
    clean_cond: Tensor | None  # (B, frames, D) when clean tokens share adaLN, else None


class DiTBlock(nn.Module):
    """Shared attention and MLP over clean and noisy tokens; separate normalisation for each group."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, qk_norm: bool, independent_clean: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=NORM_EPS)
        self.attn = Attention(width, heads, qk_norm)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=NORM_EPS)
        self.mlp = Mlp(width, int(width * mlp_ratio))
        self.adaLN = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))
        self.independent_clean = independent_clean
        if independent_clean:
            self.clean_norm1 = nn.LayerNorm(width, eps=NORM_EPS)
            self.clean_norm2 = nn.LayerNorm(width, eps=NORM_EPS)

    def _modulation(self, cond: Tensor | None, tokens_per_frame: int) -> list[Tensor] | None:
        """adaLN's six (B, L, D) tensors, computed per frame and repeated over the frame's tokens."""
        if cond is None:
            return None
        return self.adaLN(cond).repeat_interleave(tokens_per_frame, dim=1).chunk(6, dim=-1)

    def _normalise(self, x: Tensor, num_clean: int, stage: int, clean_mod, noisy_mod) -> Tensor:
        """Pre-norm of stage 0 (attention) or 1 (MLP): own LayerNorm or adaLN for clean, adaLN for noisy."""
        clean, noisy = x[:, :num_clean], x[:, num_clean:]
        norm = (self.norm1, self.norm2)[stage]
        if num_clean and clean_mod is None:
            clean = (self.clean_norm1, self.clean_norm2)[stage](clean)
        elif num_clean:
            clean = modulate(norm(clean), clean_mod[3 * stage], clean_mod[3 * stage + 1])
        if noisy_mod is not None:
            noisy = modulate(norm(noisy), noisy_mod[3 * stage], noisy_mod[3 * stage + 1])
        return torch.cat([clean, noisy], dim=1)

    @staticmethod
    def _gate(update: Tensor, num_clean: int, stage: int, clean_mod, noisy_mod) -> Tensor:
        """adaLN-Zero's gates on the residual update; independent clean tokens are not gated."""
        clean, noisy = update[:, :num_clean], update[:, num_clean:]
        if clean_mod is not None:
            clean = clean_mod[3 * stage + 2] * clean
        if noisy_mod is not None:
            noisy = noisy_mod[3 * stage + 2] * noisy
        return torch.cat([clean, noisy], dim=1)

    def forward(
        self,
        x: Tensor,
        groups: TokenGroups,
        rope: tuple[Tensor, Tensor] | None,
        mask: Tensor | None,
        prefix: tuple[Tensor, Tensor] | None,
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        n = groups.num_clean
        noisy_mod = self._modulation(groups.noisy_cond, groups.noisy_per_frame) if x.shape[1] > n else None
        clean_mod = self._modulation(groups.clean_cond, groups.clean_per_frame)
        attended, kv = self.attn(self._normalise(x, n, 0, clean_mod, noisy_mod), rope, mask, prefix)
        x = x + self._gate(attended, n, 0, clean_mod, noisy_mod)
        x = x + self._gate(self.mlp(self._normalise(x, n, 1, clean_mod, noisy_mod)), n, 1, clean_mod, noisy_mod)
        return x, kv


class FinalLayer(nn.Module):
    """adaLN-modulated projection of noisy tokens to patch velocities (zero-initialised, as in DiT)."""

    def __init__(self, width: int, patch_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=NORM_EPS)
        self.adaLN = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.linear = nn.Linear(width, patch_dim)

    def forward(self, x: Tensor, cond: Tensor, tokens_per_frame: int) -> Tensor:
        shift, scale = self.adaLN(cond).repeat_interleave(tokens_per_frame, dim=1).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))


@dataclass
class DiTOutput:
    velocity: Tensor  # (B, Tn, C, H, W)
    clean_hidden: dict[int, Tensor]  # 1-based layer -> (B, Tc, tokens per clean frame, D)
    noisy_hidden: dict[int, Tensor]  # 1-based layer -> (B, Tn, N, D)


class FrameCausalDiT(nn.Module):
    """Frame-causal DiT over clips of `channels`×`frame_size`² frames (pixels or latents)."""

    def __init__(self, config: ModelConfig, channels: int, frame_size: int, num_classes: int = 0):
        super().__init__()
        self.depth, self.width, self.heads = config.size()
        self.patch_size = config.patch_size
        self.channels = channels
        self.grid = frame_size // config.patch_size
        self.tokens_per_frame = self.grid**2
        self.num_classes = num_classes
        self.activation_checkpointing = False
        patch_dim = channels * config.patch_size**2
        independent_clean = config.clean_conditioning == "independent_ln"
        self.independent_clean = independent_clean

        self.patch_embed = nn.Linear(patch_dim, self.width)
        self.noise_embed = NoiseLevelEmbedder(self.width)
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
        for linear in self.noise_embed.mlp[0::2]:
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

    def new_cache(self) -> KVCache:
        return KVCache(self.depth, self.tokens_per_frame)

    def positions(self, first_frame: int, num_frames: int, keep: Tensor | None, batch: int) -> Tensor:
        """(B, frames × tokens, 3) integer (frame, row, column) of each token, kept tokens only."""
        if keep is None:
            keep = repeat(
                torch.arange(self.tokens_per_frame, device=self.patch_embed.weight.device), "n -> b n", b=batch
            )
        return token_positions(keep, self.grid, first_frame, num_frames)

    def embed(self, frames: Tensor, first_frame: int, keep: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Patch tokens (B, T·n, D) and their positions; `keep` (B, n) selects spatial positions (MiMo)."""
        patches = patchify(frames, self.patch_size)
        if keep is not None:
            index = repeat(keep, "b n -> b t n d", t=patches.shape[1], d=patches.shape[-1])
            patches = patches.gather(2, index)
        tokens = rearrange(self.patch_embed(patches), "b t n d -> b (t n) d")
        positions = self.positions(first_frame, frames.shape[1], keep, frames.shape[0])
        if self.rope is None:
            tokens = tokens + sincos_position_3d(positions, self.width).to(tokens.dtype)
        return tokens, positions

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
        groups: TokenGroups,
        positions: Tensor,
        mask: Tensor | None,
        cache: KVCache | None,
        write_cache: bool,
        return_layers: tuple[int, ...] = (),
    ) -> tuple[Tensor, dict[int, Tensor]]:
        rope = self.rope(positions) if self.rope is not None else None
        hidden = {}
        for index, block in enumerate(self.blocks):
            prefix = cache.get(index) if cache is not None else None
            if self.activation_checkpointing and self.training:
                x, kv = checkpoint(block, x, groups, rope, mask, prefix, use_reentrant=False)
            else:
                x, kv = block(x, groups, rope, mask, prefix)
            if write_cache:
                cache.append(index, *kv)
            if index + 1 in return_layers:
                hidden[index + 1] = x
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
    ) -> DiTOutput:
        """Velocities for `noisy` (B, Tn, C, H, W) given clean history `clean` (B, Tc, C, H, W).

        Clean frames sit at positions clean_start.., noisy frames at noisy_start.. (default: right
        after the clean frames). `keep` (B, n) drops clean tokens (MiMo's tube mask).
        """
        check_model_inputs(self, noisy, noise_level, labels, clean, keep)
        batch, noisy_frames = noisy.shape[:2]
        clean_frames = 0 if clean is None else clean.shape[1]
        noisy_start = clean_start + clean_frames if noisy_start is None else noisy_start
        noisy_tokens, noisy_pos = self.embed(noisy, noisy_start)
        clean_per_frame = self.tokens_per_frame if keep is None else keep.shape[1]
        if clean_frames:
            clean_tokens, clean_pos = self.embed(clean, clean_start, keep)
            x = torch.cat([clean_tokens, noisy_tokens], dim=1)
            positions = torch.cat([clean_pos, noisy_pos], dim=1)
        else:
            x, positions = noisy_tokens, noisy_pos
        num_clean = clean_frames * clean_per_frame
        frame = positions[0, :, 0]
        is_clean = torch.arange(frame.shape[0], device=frame.device) < num_clean
        mask = frame_causal_mask(frame, is_clean, frame, is_clean)
        noisy_cond = self.condition(noise_level, labels)
        groups = TokenGroups(
            num_clean,
            clean_per_frame,
            self.tokens_per_frame,
            noisy_cond,
            self._clean_condition(clean_frames, batch, labels, noisy),
        )
        x, hidden = self._run_blocks(x, groups, positions, mask, None, False, return_layers)
        out = self.final(x[:, num_clean:], noisy_cond, self.tokens_per_frame)
        velocity = unpatchify(
            rearrange(out, "b (t n) d -> b t n d", t=noisy_frames), self.patch_size, self.grid, self.channels
        )
        clean_hidden = {
            layer: rearrange(h[:, :num_clean], "b (t n) d -> b t n d", t=clean_frames) for layer, h in hidden.items()
        }
        noisy_hidden = {
            layer: rearrange(h[:, num_clean:], "b (t n) d -> b t n d", t=noisy_frames) for layer, h in hidden.items()
        }
        return DiTOutput(velocity, clean_hidden, noisy_hidden)

    def denoise_cached(
        self, noisy: Tensor, noise_level: Tensor, frame_position: int, cache: KVCache, labels: Tensor | None = None
    ) -> Tensor:
        """Velocity of one noisy frame (B, 1, C, H, W) attending to every clean frame in `cache`."""
        tokens, positions = self.embed(noisy, frame_position)
        cond = self.condition(noise_level, labels)
        groups = TokenGroups(0, self.tokens_per_frame, self.tokens_per_frame, cond, None)
        x, _ = self._run_blocks(tokens, groups, positions, None, cache, write_cache=False)
        out = rearrange(self.final(x, cond, self.tokens_per_frame), "b (t n) d -> b t n d", t=1)
        return unpatchify(out, self.patch_size, self.grid, self.channels)

    def append_to_cache(self, frame: Tensor, frame_position: int, cache: KVCache, labels: Tensor | None = None) -> None:
        """Run a finished frame (B, 1, C, H, W) as clean history and append its keys/values to `cache`."""
        tokens, positions = self.embed(frame, frame_position)
        groups = TokenGroups(
            tokens.shape[1],
            self.tokens_per_frame,
            self.tokens_per_frame,
            None,
            self._clean_condition(1, frame.shape[0], labels, frame),
        )
        self._run_blocks(tokens, groups, positions, None, cache, write_cache=True)

    def training_flops(self, batch: int, clean_frames: int, clean_tokens: int, noisy_frames: int) -> Flops:
        """(forward, backward) matmul FLOPs of one training forward over a CTF sequence of `clean_tokens`
        history tokens in `clean_frames` frames and `noisy_frames` full noisy frames, per batch of `batch`."""
        noisy_tokens = noisy_frames * self.tokens_per_frame
        length = clean_tokens + noisy_tokens  # the sequence every block attends over
        conditioned = noisy_frames + (0 if self.independent_clean else clean_frames)  # frames with adaLN inputs
        head_dim = self.width // self.heads
        parts = [
            linear_flops(self.patch_embed, batch * length, input_grad=False),
            linear_flops(self.noise_embed.mlp[0], batch * conditioned, input_grad=False),
            linear_flops(self.noise_embed.mlp[2], batch * conditioned),
            linear_flops(self.final.adaLN[-1], batch * noisy_frames),
            linear_flops(self.final.linear, batch * noisy_tokens),
        ]
        for block in self.blocks:
            parts += [
                linear_flops(block.adaLN[-1], batch * conditioned),
                linear_flops(block.attn.qkv, batch * length),
                attention_flops(batch, self.heads, length, head_dim),
                linear_flops(block.attn.proj, batch * length),
                linear_flops(block.mlp.fc1, batch * length),
                linear_flops(block.mlp.fc2, batch * length),
            ]
        return add(parts)
