"""REPA (Yu et al. 2025, "Representation Alignment for Generation Made Easy"): the VFM baseline.

A projector MLP maps the backbone's tokens at layer l to a frozen encoder's feature size; the
loss is the negative cosine similarity between each projected token and the encoder's feature
at the same spatial position of the *clean* frame, averaged over tokens, at every noise level:
`L_total = L_diff + λ·L_repa` (λ = 0.5). The encoder's grid is resized (bilinear) to the
backbone's token grid. Modes of the MiMo paper's comparison:
- history: clean history tokens; under MiMo's tube mask only the kept positions exist and only
  they are aligned, each to its own position;
- future: noisy tokens of the generated frames, to the features of the same frames, clean;
- both: all of these tokens, one average.
Training-only, like MiMo's decoder: inference never builds the projector or the encoder.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor, nn

REPA_MODES_WITH_HISTORY = ("history", "both")
REPA_MODES_WITH_FUTURE = ("future", "both")


class RepaProjector(nn.Module):
    """REPA's h_φ: Linear(D, 2048) → SiLU → Linear(2048, 2048) → SiLU → Linear(2048, E)."""

    def __init__(self, width: int, feature_dim: int, hidden: int = 2048):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(width, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, feature_dim),
        )
        for layer in self.mlp[0::2]:  # SiT/REPA initialise every linear layer the Xavier way
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.mlp(tokens)


def negative_cosine_similarity(prediction: Tensor, target: Tensor) -> Tensor:
    """L_repa: −cos(prediction, target) per token (last axis), averaged over tokens; −1 when aligned."""
    cosine = (F.normalize(prediction.float(), dim=-1) * F.normalize(target.float(), dim=-1)).sum(dim=-1)
    return -cosine.mean()


def resize_grid(features: Tensor, size: int) -> Tensor:
    """Features (..., h, w, E) resized bilinearly to (..., size, size, E); unchanged when already that size.

    Antialiased, so that shrinking a fine encoder grid averages every encoder token under a backbone
    token instead of sampling a few of them.
    """
    if features.shape[-3:-1] == (size, size):
        return features
    *leading, height, width, dim = features.shape
    images = rearrange(features.reshape(-1, height, width, dim), "n h w e -> n e h w").float()
    resized = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return rearrange(resized, "n e h w -> n h w e").reshape(*leading, size, size, dim).to(features.dtype)


def kept_positions(tokens: Tensor, keep: Tensor | None) -> Tensor:
    """Tokens (B, T, N, E) at the kept spatial positions `keep` (B, n) of every frame: (B, T, n, E)."""
    if keep is None:
        return tokens
    index = repeat(keep, "b n -> b t n e", t=tokens.shape[1], e=tokens.shape[-1])
    return tokens.gather(2, index)


def aligned_pairs(
    mode: str,
    clean_hidden: Tensor,
    noisy_hidden: Tensor,
    targets: Tensor,
    keep: Tensor | None,
    first_noisy: int,
) -> tuple[Tensor, Tensor]:
    """The backbone tokens (M, D) that `mode` aligns and their encoder targets (M, E).

    `clean_hidden` (B, T-1, n, D) are the history tokens at the kept positions `keep`,
    `noisy_hidden` (B, T-k, N, D) the tokens of the generated frames k.., `targets` (B, T, N, E)
    the encoder's features of every clean frame on the backbone's grid.
    """
    tokens, target = [], []
    if mode in REPA_MODES_WITH_HISTORY:
        tokens.append(clean_hidden)
        target.append(kept_positions(targets[:, : clean_hidden.shape[1]], keep))
    if mode in REPA_MODES_WITH_FUTURE:
        tokens.append(noisy_hidden)
        target.append(targets[:, first_noisy:])
    if not tokens:
        raise ValueError(f"REPA mode '{mode}' aligns nothing; choose history, future or both")
    return (
        torch.cat([rearrange(t, "b t n d -> (b t n) d") for t in tokens]),
        torch.cat([rearrange(t, "b t n e -> (b t n) e") for t in target]),
    )
