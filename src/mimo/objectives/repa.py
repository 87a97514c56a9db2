"""REPA's loss (Yu et al. 2025, "Representation Alignment for Generation Made Easy"): the VFM baseline.

The projector (`mimo.models.repa.RepaProjector`) maps the backbone's tokens at layer l to a frozen
encoder's feature size; the loss is the negative cosine similarity between each projected token and
the encoder's feature at the same spatial position of the *clean* frame, averaged over tokens, at
every noise level: `L_total = L_diff + λ·L_repa` (λ = 0.5). The encoder's grid is resized (bilinear,
`mimo.models.encoders.resize_grid`) to the backbone's token grid. Modes of the MiMo paper's comparison:
- history: clean history tokens; under MiMo's tube mask only the kept positions exist and only
  they are aligned, each to its own position;
- future: noisy tokens of the generated frames, to the features of the same frames, clean;
- both: all of these tokens, one average.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor

REPA_MODES_WITH_HISTORY = ("history", "both")
REPA_MODES_WITH_FUTURE = ("future", "both")


def negative_cosine_similarity(prediction: Tensor, target: Tensor) -> Tensor:
    """L_repa: −cos(prediction, target) per token (last axis), averaged over tokens; −1 when aligned."""
    cosine = (F.normalize(prediction.float(), dim=-1) * F.normalize(target.float(), dim=-1)).sum(dim=-1)
    return -cosine.mean()


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
